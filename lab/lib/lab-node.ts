/**
 * Lab nodes that run the real node agent: each is a network namespace (see netns.ts) plus a
 * holder process with private mount, UTS and IPC namespaces. Inside, /etc, /var/lib, /var/log,
 * /usr/local/sbin (and /srv, /opt where the host has them) are copy-on-write overlays of the
 * host's (upper layers on a tmpfs), /run, /etc/postgresql and /var/lib/postgresql are empty tmpfs,
 * and the hostname is the node's name, so `pypi-node apply` installs into the node and nothing
 * reaches the host. Extra host directories can be bind-mounted in (the lab's bundle store, the
 * shared package volume).
 */
import { type ChildProcess, execFileSync, spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";

export interface ExecResult {
  readonly status: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** Host trees a node sees copy-on-write. */
const OVERLAY_TREES = ["/etc", "/var/lib", "/var/log", "/usr/local/sbin", "/srv", "/opt"] as const;
/** Paths a node gets empty (`[path, owner]`), above the overlays. */
const EMPTY_DIRS = [
  ["/run", "root"],
  ["/etc/postgresql", "root"],
  ["/var/lib/postgresql", "postgres"],
] as const;

export interface LabExecOptions {
  readonly input?: string;
  readonly env?: Readonly<Record<string, string>>;
  readonly timeoutMs?: number;
}

export interface LabNodeOptions {
  /** Host directories bind-mounted into the node after the overlays: `[hostPath, nodePath]`. */
  readonly binds?: readonly (readonly [string, string])[];
  /** Environment every command in the node gets (on top of the caller's). */
  readonly env?: Readonly<Record<string, string>>;
  /** How long the holder may take to come up. @default 10 s */
  readonly readyTimeoutMs?: number;
}

export const shq = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;

function holderScript(name: string, scratch: string, binds: LabNodeOptions["binds"]): string {
  const postgresUid = execFileSync("id", ["-u", "postgres"], { encoding: "utf8" }).trim();
  const postgresGid = execFileSync("id", ["-g", "postgres"], { encoding: "utf8" }).trim();
  const trees = OVERLAY_TREES.filter((tree) => existsSync(tree));
  return [
    "set -e",
    `mount -t tmpfs -o mode=0700,size=2g labnode ${shq(scratch)}`,
    ...trees.flatMap((tree, i) => [
      `mkdir ${shq(`${scratch}/u${i}`)} ${shq(`${scratch}/w${i}`)}`,
      `mount -t overlay overlay -o ${shq(`lowerdir=${tree},upperdir=${scratch}/u${i},workdir=${scratch}/w${i}`)} ${shq(tree)}`,
    ]),
    ...EMPTY_DIRS.map(([dir, owner]) =>
      owner === "postgres"
        ? `mkdir -p ${dir} && mount -t tmpfs -o mode=0755,uid=${postgresUid},gid=${postgresGid} labnode ${dir}`
        : `mkdir -p ${dir} && mount -t tmpfs -o mode=0755 labnode ${dir}`,
    ),
    // Targets are created inside the overlays, so nothing appears on the host.
    ...(binds ?? []).map(([src, dst]) => `mkdir -p ${shq(dst)} && mount --bind ${shq(src)} ${shq(dst)}`),
    "mkdir -p /run/lock",
    // What boot does for /run on a real node (e.g. Heartbeat's /run/heartbeat); /run is the node's own.
    "systemd-tmpfiles --create --prefix=/run >/dev/null 2>&1 || true",
    `hostname ${shq(name)}`,
    "echo ready",
    "exec sleep infinity",
  ].join("\n");
}

function waitReady(name: string, holder: ChildProcess, timeoutMs: number): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    let err = "";
    const timer = setTimeout(() => reject(new Error(`${name}: node not ready: ${err}`)), timeoutMs);
    holder.stderr?.on("data", (d: Buffer) => {
      err += d.toString();
    });
    holder.stdout?.on("data", (d: Buffer) => {
      if (d.toString().includes("ready")) {
        clearTimeout(timer);
        resolve();
      }
    });
    holder.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`${name}: node holder exited (${code}): ${err}`));
    });
  });
}

export class LabNode {
  private constructor(
    readonly name: string,
    readonly ns: string,
    private readonly holder: ChildProcess,
    private readonly env: Readonly<Record<string, string>>,
  ) {}

  /**
   * Start the holder in network namespace `ns`. `scratch` is an empty host directory the node
   * mounts a tmpfs on for its overlay layers (so the layers vanish with the node).
   */
  static async start(name: string, ns: string, scratch: string, opts: LabNodeOptions = {}): Promise<LabNode> {
    const holder = spawn(
      "ip",
      [
        "netns",
        "exec",
        ns,
        "unshare",
        "--mount",
        "--uts",
        "--ipc",
        "--propagation",
        "private",
        "sh",
        "-c",
        holderScript(name, scratch, opts.binds),
      ],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    await waitReady(name, holder, opts.readyTimeoutMs ?? 10_000);
    holder.removeAllListeners("exit");
    // The holder outlives this process with --keep: its pipes must not hold the event loop.
    holder.stdout?.destroy();
    holder.stderr?.destroy();
    holder.unref();
    return new LabNode(name, ns, holder, opts.env ?? {});
  }

  /** Pid of the process whose namespaces the node's commands enter. */
  get pid(): number {
    const pid = this.holder.pid;
    if (pid === undefined || this.holder.exitCode !== null) throw new Error(`${this.name}: node is down`);
    return pid;
  }

  /** argv that runs `command` inside the node (its network, mount, UTS and IPC namespaces). */
  argv(command: readonly string[]): string[] {
    return ["nsenter", "-t", String(this.pid), "-m", "-n", "-u", "-i", "--", ...command];
  }

  private childEnv(opts: LabExecOptions): NodeJS.ProcessEnv {
    return { ...process.env, ...this.env, ...opts.env };
  }

  exec(command: readonly string[], opts: LabExecOptions = {}): ExecResult {
    const [cmd, ...args] = this.argv(command);
    const r = spawnSync(cmd as string, args, {
      input: opts.input ?? "",
      encoding: "utf8",
      cwd: "/",
      timeout: opts.timeoutMs ?? 60_000,
      env: this.childEnv(opts),
    });
    return { status: r.status ?? -1, stdout: r.stdout ?? "", stderr: r.stderr ?? String(r.error ?? "") };
  }

  /** Like exec, but without blocking the event loop (so monitors keep sampling meanwhile). */
  execAsync(command: readonly string[], opts: LabExecOptions = {}): Promise<ExecResult> {
    const [cmd, ...args] = this.argv(command);
    return new Promise((resolve) => {
      const child = spawn(cmd as string, args, {
        cwd: "/",
        env: this.childEnv(opts),
        stdio: ["pipe", "pipe", "pipe"],
      });
      let stdout = "";
      let stderr = "";
      let timedOut = false;
      const timer = setTimeout(() => {
        timedOut = true;
        child.kill("SIGKILL");
      }, opts.timeoutMs ?? 60_000);
      child.stdout.on("data", (d: Buffer) => {
        stdout += d.toString();
      });
      child.stderr.on("data", (d: Buffer) => {
        stderr += d.toString();
      });
      child.on("error", (e) => {
        stderr += String(e);
      });
      child.on("close", (code) => {
        clearTimeout(timer);
        if (timedOut) stderr += `\n(killed after ${opts.timeoutMs ?? 60_000} ms)`;
        resolve({ status: code ?? -1, stdout, stderr });
      });
      // A command that exits without reading its input must not crash the caller.
      child.stdin.on("error", () => {});
      child.stdin.end(opts.input ?? "");
    });
  }

  /** exec that throws on a non-zero status, with both streams in the message. */
  run(command: readonly string[], opts: LabExecOptions = {}): string {
    const r = this.exec(command, opts);
    if (r.status !== 0)
      throw new Error(`${this.name}: ${command.join(" ")} failed (${r.status})\n${r.stderr}${r.stdout}`);
    return r.stdout;
  }

  /** execAsync that rejects on a non-zero status, with both streams in the message. */
  async runAsync(command: readonly string[], opts: LabExecOptions = {}): Promise<string> {
    const r = await this.execAsync(command, opts);
    if (r.status !== 0)
      throw new Error(`${this.name}: ${command.join(" ")} failed (${r.status})\n${r.stderr}${r.stdout}`);
    return r.stdout;
  }

  /** `sh -c script` in the node, rejecting on failure. */
  sh(script: string, opts: LabExecOptions = {}): Promise<string> {
    return this.runAsync(["sh", "-c", script], opts);
  }

  /** Start a long-running command in the node; the caller stops it. */
  spawn(command: readonly string[], opts: LabExecOptions = {}): ChildProcess {
    const [cmd, ...args] = this.argv(command);
    return spawn(cmd as string, args, {
      cwd: "/",
      env: this.childEnv(opts),
      stdio: ["ignore", "pipe", "pipe"],
    });
  }

  /** End the holder; processes left in the network namespace go with destroyNamespace. */
  stop(): void {
    if (this.holder.exitCode === null) this.holder.kill("SIGKILL");
  }
}

/** Write a bundle directory (bundleDirEntries) or secret store under `root` on the host. */
export function writeTree(root: string, entries: ReadonlyMap<string, string>): void {
  for (const [rel, content] of entries) {
    const path = join(root, rel);
    mkdirSync(dirname(path), { recursive: true });
    writeFileSync(path, content, { mode: 0o600 });
  }
}
