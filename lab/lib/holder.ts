/**
 * Holders: a process that keeps a set of fresh namespaces (netns.ts `isolatedArgv`) alive, so
 * commands can enter them (`enterArgv`) until it is killed. Lab nodes, the real tier's Postgres
 * hosts and the app sandbox are holders with different setups.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import type { ExecResult } from "./lab-node.js";
import { enterArgv, type Isolation, isolatedArgv, shq } from "./netns.js";

export type { ExecResult };

export interface ExecOptions {
  /** OS user to run as (runuser); root when omitted. */
  readonly user?: string;
  readonly input?: string;
  /** Environment added inside, after runuser, so it reaches the command whoever runs it. */
  readonly env?: Readonly<Record<string, string>>;
  /** Return a non-zero status instead of throwing. */
  readonly allowFail?: boolean;
  /** @default 60 s */
  readonly timeoutMs?: number;
}

/** `argv` prefixed to run as `opts.user` with `opts.env` on top. */
export function asUser(argv: readonly string[], opts: Pick<ExecOptions, "user" | "env">): string[] {
  const env = Object.entries(opts.env ?? {}).map(([k, v]) => `${k}=${v}`);
  const inner = env.length > 0 ? ["env", ...env, ...argv] : [...argv];
  return opts.user ? ["runuser", "-u", opts.user, "--", ...inner] : inner;
}

/** Run `argv` to completion; throws with both streams (labelled `what`) on failure unless allowFail. */
export function runArgv(what: string, argv: readonly string[], opts: ExecOptions = {}): ExecResult {
  const [cmd, ...args] = argv;
  if (!cmd) throw new Error(`${what}: empty command`);
  const r = spawnSync(cmd, args, {
    input: opts.input ?? "",
    encoding: "utf8",
    cwd: "/",
    timeout: opts.timeoutMs ?? 60_000,
    maxBuffer: 64 * 1024 * 1024,
  });
  const result = {
    status: r.status ?? -1,
    stdout: r.stdout ?? "",
    stderr: r.stderr ?? String(r.error ?? ""),
  };
  if (result.status !== 0 && !opts.allowFail)
    throw new Error(`${what} failed (${result.status})\n${result.stderr}${result.stdout}`);
  return result;
}

/** Mount lines for a copy-on-write view of each tree; the upper layers go under `dir`. */
export function copyOnWriteMounts(trees: readonly string[], dir: string): string[] {
  return trees.map((tree, i) => {
    const upper = join(dir, `upper${i}`);
    const work = join(dir, `work${i}`);
    mkdirSync(upper, { recursive: true });
    mkdirSync(work, { recursive: true });
    return `mount -t overlay overlay -o ${shq(`lowerdir=${tree},upperdir=${upper},workdir=${work}`)} ${shq(tree)}`;
  });
}

export interface HolderSpec {
  /** Names the holder in errors. */
  readonly name: string;
  readonly iso: Isolation;
  /** Shell (under `set -e`) run as root inside the namespaces before the holder is ready. */
  readonly setup?: readonly string[];
  /** What the holder execs once ready. @default sleep, holding the namespaces open */
  readonly afterReady?: string;
  /** Environment of the holder. @default this process's */
  readonly env?: NodeJS.ProcessEnv;
  /** @default 10 s */
  readonly readyTimeoutMs?: number;
}

/** What fresh namespaces need first: /proc of the PID namespace, loopback of an anonymous network. */
export function namespaceSetup(iso: Isolation): string[] {
  return [
    ...(iso.pid ? ["mount -t proc -o nosuid,nodev,noexec proc /proc"] : []),
    ...(iso.net ? ["ip link set lo up"] : []),
  ];
}

/** The holder's script: it reports `ready <host pid>` between setup and `afterReady`. */
export function holderScript(spec: Pick<HolderSpec, "iso" | "setup" | "afterReady">): string {
  return [
    "set -e",
    // The host's pid of this process, before /proc shows the node's own PID namespace only.
    "read -r hostpid _ </proc/self/stat",
    ...namespaceSetup(spec.iso),
    ...(spec.setup ?? []),
    'echo "ready $hostpid"',
    spec.afterReady ?? "exec sleep infinity",
  ].join("\n");
}

export interface SpawnedHolder {
  /** What was spawned (unshare, or `ip netns exec` become unshare). */
  readonly child: ChildProcess;
  /** Host pid of the process inside the namespaces (PID 1 of a PID namespace): what to enter. */
  readonly pid: number;
}

/** Start a holder and wait until its setup is done. */
export function spawnHolder(spec: HolderSpec): Promise<SpawnedHolder> {
  const [cmd, ...args] = isolatedArgv(spec.iso, holderScript(spec));
  const child = spawn(cmd as string, args, { stdio: ["ignore", "pipe", "pipe"], env: spec.env });
  const timeoutMs = spec.readyTimeoutMs ?? 10_000;
  return new Promise<SpawnedHolder>((resolve, reject) => {
    let err = "";
    let out = "";
    const fail = (why: string) => {
      clearTimeout(timer);
      child.kill("SIGKILL");
      reject(new Error(`${spec.name}: ${why}: ${err}`));
    };
    const timer = setTimeout(() => fail(`not ready within ${timeoutMs} ms`), timeoutMs);
    child.stderr?.on("data", (d: Buffer) => {
      err += d.toString();
    });
    child.stdout?.on("data", (d: Buffer) => {
      out += d.toString();
      const m = /ready (\d+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        child.removeAllListeners("exit");
        resolve({ child, pid: Number(m[1]) });
      }
    });
    child.on("exit", (code) => fail(`holder exited (${code})`));
  });
}

/** Whether a host pid is gone (a zombie counts: it runs nothing and holds no mount). */
function gone(pid: number): boolean {
  try {
    return /^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, "utf8"));
  } catch {
    return true;
  }
}

const sleepSync = (ms: number): void => {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
};

/** A holder that commands are run in, one at a time, until `stop()`. */
export class NamespaceHolder {
  private constructor(
    readonly name: string,
    readonly iso: Isolation,
    private readonly child: ChildProcess,
    /** Host pid of the process whose namespaces commands enter. */
    readonly pid: number,
  ) {}

  static async start(spec: HolderSpec): Promise<NamespaceHolder> {
    const { child, pid } = await spawnHolder(spec);
    return new NamespaceHolder(spec.name, spec.iso, child, pid);
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null && !gone(this.pid);
  }

  /** argv that runs `command` inside the holder's namespaces. */
  argv(command: readonly string[]): string[] {
    return enterArgv(this.pid, this.iso, command);
  }

  exec(argv: readonly string[], opts: ExecOptions = {}): ExecResult {
    if (!this.running) throw new Error(`${this.name}: not running`);
    return runArgv(`${this.name}: ${argv.join(" ")}`, this.argv(asUser(argv, opts)), opts);
  }

  /**
   * Kill the holder. With a PID namespace every process in it dies too, and this waits until
   * its PID 1 is gone, so its private mounts are released when it returns.
   */
  stop(): void {
    for (const pid of new Set([this.pid, this.child.pid])) {
      if (pid === undefined) continue;
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // already gone
      }
    }
    if (!this.iso.pid) return;
    const deadline = Date.now() + 5_000;
    while (!gone(this.pid) && Date.now() < deadline) sleepSync(20);
  }
}
