/**
 * Lab nodes that run the real node agent: each is a network namespace (see netns.ts) plus a
 * holder process with private mount, UTS and IPC namespaces. Inside, /etc, /var/lib, /var/log and
 * /usr/local/sbin are copy-on-write overlays of the host's (upper layers on a tmpfs), /run,
 * /etc/postgresql and /var/lib/postgresql are empty tmpfs, and the hostname is the node's name,
 * so `pypi-node apply` installs into the node and nothing reaches the host.
 */
import { type ChildProcess, execFileSync, spawn, spawnSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import type { ExecResult } from "./postgres-cluster.js";

/** Host trees a node sees copy-on-write. */
const OVERLAY_TREES = ["/etc", "/var/lib", "/var/log", "/usr/local/sbin"] as const;
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

const shq = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;

export class LabNode {
  private constructor(
    readonly name: string,
    readonly ns: string,
    private readonly holder: ChildProcess,
  ) {}

  /**
   * Start the holder in network namespace `ns`. `scratch` is an empty host directory the node
   * mounts a tmpfs on for its overlay layers (so the layers vanish with the node).
   */
  static async start(name: string, ns: string, scratch: string): Promise<LabNode> {
    const postgresUid = execFileSync("id", ["-u", "postgres"], { encoding: "utf8" }).trim();
    const postgresGid = execFileSync("id", ["-g", "postgres"], { encoding: "utf8" }).trim();
    const script = [
      "set -e",
      `mount -t tmpfs -o mode=0700,size=2g labnode ${shq(scratch)}`,
      ...OVERLAY_TREES.flatMap((tree, i) => [
        `mkdir ${shq(`${scratch}/u${i}`)} ${shq(`${scratch}/w${i}`)}`,
        `mount -t overlay overlay -o ${shq(`lowerdir=${tree},upperdir=${scratch}/u${i},workdir=${scratch}/w${i}`)} ${shq(tree)}`,
      ]),
      ...EMPTY_DIRS.map(([dir, owner]) =>
        owner === "postgres"
          ? `mkdir -p ${dir} && mount -t tmpfs -o mode=0755,uid=${postgresUid},gid=${postgresGid} labnode ${dir}`
          : `mkdir -p ${dir} && mount -t tmpfs -o mode=0755 labnode ${dir}`,
      ),
      "mkdir -p /run/lock",
      `hostname ${shq(name)}`,
      "echo ready",
      "exec sleep infinity",
    ].join("\n");
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
        script,
      ],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    await new Promise<void>((resolve, reject) => {
      let err = "";
      const timer = setTimeout(() => reject(new Error(`${name}: node not ready: ${err}`)), 10_000);
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
    holder.removeAllListeners("exit");
    return new LabNode(name, ns, holder);
  }

  /** argv that runs `command` inside the node (its network, mount, UTS and IPC namespaces). */
  argv(command: readonly string[]): string[] {
    const pid = this.holder.pid;
    if (pid === undefined || this.holder.exitCode !== null) throw new Error(`${this.name}: node is down`);
    return ["nsenter", "-t", String(pid), "-m", "-n", "-u", "-i", "--", ...command];
  }

  exec(command: readonly string[], opts: LabExecOptions = {}): ExecResult {
    const [cmd, ...args] = this.argv(command);
    const r = spawnSync(cmd as string, args, {
      input: opts.input ?? "",
      encoding: "utf8",
      cwd: "/",
      timeout: opts.timeoutMs ?? 60_000,
      env: { ...process.env, ...opts.env },
    });
    return { status: r.status ?? -1, stdout: r.stdout ?? "", stderr: r.stderr ?? String(r.error ?? "") };
  }

  /** Like exec, but without blocking the event loop (so monitors keep sampling meanwhile). */
  execAsync(command: readonly string[], opts: LabExecOptions = {}): Promise<ExecResult> {
    const [cmd, ...args] = this.argv(command);
    return new Promise((resolve) => {
      const child = spawn(cmd as string, args, {
        cwd: "/",
        env: { ...process.env, ...opts.env },
        stdio: ["pipe", "pipe", "pipe"],
      });
      let stdout = "";
      let stderr = "";
      const timer = setTimeout(() => child.kill("SIGKILL"), opts.timeoutMs ?? 60_000);
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

  /** Start a long-running command in the node; the caller stops it. */
  spawn(command: readonly string[]): ChildProcess {
    const [cmd, ...args] = this.argv(command);
    return spawn(cmd as string, args, { cwd: "/", stdio: ["ignore", "pipe", "pipe"] });
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
