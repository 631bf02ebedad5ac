/**
 * Lab nodes that run the real node agent: each is a network namespace (see netns.ts) plus a
 * holder process with private mount, UTS, IPC and PID namespaces, so the node's init is PID 1
 * and killing it ends every process of the node at once.
 *
 * A node has a root disk: a host directory holding the upper layers of its copy-on-write views
 * of /etc, /var/lib, /var/log, /usr/local, /srv and /opt, and its own (first empty)
 * /etc/postgresql and /var/lib/postgresql. Starting a node again on the same disk is a reboot:
 * those trees keep what the node wrote, /run starts empty. A node may have a data volume, a loop
 * device on a sparse file in its disk, under the /dev/disk/by-id name AWS gives the EBS volume.
 * The node's init (lab/node/init.pl) runs the lab's stand-in for systemd
 * (lab/node/pypi-supervise.sh), which starts what the agent enabled and restarts per Restart=.
 */
import { type ChildProcess, execFileSync, spawn, spawnSync } from "node:child_process";
import {
  chownSync,
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readlinkSync,
  rmSync,
  truncateSync,
  writeFileSync,
} from "node:fs";
import { dirname, join, relative } from "node:path";
import { dataVolumeDevice, paths } from "../../src/layout.js";
import { projectFile } from "../../src/project-files.js";
import { spawnHolder } from "./holder.js";
import { enterArgv, type Isolation, namespacePids, setLinks, shq } from "./netns.js";

export { shq };

export interface ExecResult {
  readonly status: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** Host trees a node sees copy-on-write; their upper layers are the node's root disk. */
const OVERLAY_TREES = ["/etc", "/var/lib", "/var/log", "/usr/local", "/srv", "/opt"] as const;
/** Trees a node's disk starts with empty (the host's own Postgres cluster must not show). */
const EMPTY_TREES = [
  ["/etc/postgresql", "root"],
  ["/var/lib/postgresql", "postgres"],
] as const;
/** The PATH systemd gives services; the node's init and everything it starts get it too. */
const NODE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/** Where a booted node keeps the lab's init and supervisor (its "image"), and their state. */
const NODE_LAB_DIR = "/run/pypi-lab";
const SUPERVISOR_RUN = "/run/pypi-supervise";
const DEFAULT_VOLUME_BYTES = 1024 ** 3;

export interface LabExecOptions {
  readonly input?: string;
  readonly env?: Readonly<Record<string, string>>;
  readonly timeoutMs?: number;
}

/** The node's data volume: an EBS volume on AWS, a loop device in the lab. */
export interface LabVolume {
  /** EBS volume id (`vol-…`); the node sees the device as `dataVolumeDevice(id)`. */
  readonly id: string;
  /** Size of the sparse backing file. @default 1 GiB */
  readonly sizeBytes?: number;
  /**
   * Where the node's agent mounts it. That tree then starts as the host's (hidden once the
   * agent mounts the volume over it), not as an empty tree of the node's disk, so the node
   * runs on its volume as on AWS. @default - the agent does not mount it (DRBD's backing disk)
   */
  readonly mountPoint?: string;
}

/** What the node's network setup does at every boot (DHCP and ifupdown on AWS). */
export interface LabNodeNetwork {
  readonly iface: string;
  /** Primary address with prefix length, e.g. `10.90.0.11/24`. */
  readonly address: string;
  /** Ranges routed on-link through `iface`. */
  readonly routes?: readonly string[];
}

export interface LabNodeOptions {
  /** Host directories bind-mounted into the node after the overlays: `[hostPath, nodePath]`. */
  readonly binds?: readonly (readonly [string, string])[];
  /** Environment every command in the node gets (on top of the caller's); the init gets it too. */
  readonly env?: Readonly<Record<string, string>>;
  /** How long the holder may take to come up. @default 10 s */
  readonly readyTimeoutMs?: number;
  readonly volume?: LabVolume;
  /** Read-only trees (each holding `usr/`) laid over the host's /usr, first on top. */
  readonly usrLayers?: readonly string[];
  /**
   * Interface configuration applied at every boot: addresses from before the boot are flushed.
   * @default - every link is brought up, addresses are left as they are
   */
  readonly network?: LabNodeNetwork;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const treeName = (tree: string): string => tree.slice(1).replaceAll("/", "-");

/** Where a node's disk keeps each piece (all under one host directory). */
export function diskLayout(disk: string) {
  return {
    upper: (tree: string) => join(disk, "overlay", treeName(tree), "upper"),
    work: (tree: string) => join(disk, "overlay", treeName(tree), "work"),
    tree: (tree: string) => join(disk, "trees", treeName(tree)),
    volume: (id: string) => join(disk, `volume-${id}.img`),
  };
}

export function userIds(user: string): [number, number] {
  try {
    const uid = Number(execFileSync("id", ["-u", user], { encoding: "utf8" }).trim());
    const gid = Number(execFileSync("id", ["-g", user], { encoding: "utf8" }).trim());
    return [uid, gid];
  } catch {
    return [0, 0];
  }
}

/** The disk's directories; existing ones (a reboot) are kept as they are. */
function prepareDisk(disk: string): void {
  const layout = diskLayout(disk);
  for (const tree of OVERLAY_TREES) {
    mkdirSync(layout.upper(tree), { recursive: true });
    mkdirSync(layout.work(tree), { recursive: true });
  }
  for (const [tree, owner] of EMPTY_TREES) {
    const dir = layout.tree(tree);
    if (existsSync(dir)) continue;
    mkdirSync(dir, { recursive: true, mode: 0o755 });
    const [uid, gid] = userIds(owner);
    chownSync(dir, uid, gid);
  }
}

/** `losetup --list` rows: device and backing file (a deleted file keeps its old path). */
function loopDevices(): { device: string; file: string }[] {
  const out = execFileSync("losetup", ["--list", "--noheadings", "--raw", "--output", "NAME,BACK-FILE"], {
    encoding: "utf8",
  });
  return out
    .split("\n")
    .filter((l) => l.trim() !== "")
    .map((line) => {
      const [device = "", ...rest] = line.split(" ");
      // --raw escapes blanks as \x20.
      const file = rest
        .join(" ")
        .replace(/\\x([0-9a-f]{2})/gi, (_, h: string) => String.fromCharCode(Number.parseInt(h, 16)))
        .replace(/ \(deleted\)$/, "");
      return { device, file };
    });
}

/** The loop device backed by `file`, attached (and the file created sparse) if need be. */
export function attachVolume(file: string, sizeBytes = DEFAULT_VOLUME_BYTES): string {
  const attached = loopDevices().find((l) => l.file === file);
  if (attached) return attached.device;
  if (!existsSync(file)) {
    mkdirSync(dirname(file), { recursive: true });
    closeSync(openSync(file, "w", 0o600));
    truncateSync(file, sizeBytes);
  }
  return execFileSync("losetup", ["--find", "--show", file], { encoding: "utf8" }).trim();
}

/** Detach every loop device whose backing file lies under `dir`; returns the devices. */
export function detachVolumes(dir: string): string[] {
  const under = (file: string) => !relative(dir, file).startsWith("..") && file.startsWith("/");
  const devices = loopDevices()
    .filter((l) => under(l.file))
    .map((l) => l.device);
  // A device still mounted somewhere is detached as soon as it is unmounted (autoclear).
  for (const device of devices) spawnSync("losetup", ["--detach", device]);
  return devices;
}

interface BootPlan {
  readonly name: string;
  readonly disk: string;
  readonly loop?: { readonly device: string; readonly byId: string };
  readonly opts: LabNodeOptions;
}

/** The node's namespaces; the holder's death is the node's death. */
const NODE_ISOLATION: Isolation = { uts: true, ipc: true, pid: true, killChild: true };

/** The holder's setup: PID 1 of the node until its mounts are done (then the node's init). */
function holderSetup(p: BootPlan): string[] {
  const layout = diskLayout(p.disk);
  const trees = OVERLAY_TREES.filter((tree) => existsSync(tree));
  const usr = (p.opts.usrLayers ?? []).map((l) => join(l, "usr"));
  const net = p.opts.network;
  return [
    ...(usr.length
      ? [`mount -t overlay overlay -o ${shq(`lowerdir=${[...usr, "/usr"].join(":")}`)} /usr`]
      : []),
    ...trees.map(
      (tree) =>
        `mount -t overlay overlay -o ${shq(`lowerdir=${tree},upperdir=${layout.upper(tree)},workdir=${layout.work(tree)}`)} ${shq(tree)}`,
    ),
    ...EMPTY_TREES.filter(([tree]) => tree !== p.opts.volume?.mountPoint).map(
      ([tree]) => `mkdir -p ${tree} && mount --bind ${shq(layout.tree(tree))} ${tree}`,
    ),
    "mount -t tmpfs -o mode=0755,nosuid,nodev labnode /run",
    "mkdir -p /run/lock",
    // What boot does for /run on a real node (e.g. Heartbeat's /run/heartbeat).
    "systemd-tmpfiles --create --prefix=/run >/dev/null 2>&1 || true",
    // Only the node's own disks show under /dev/disk.
    "if [ -d /dev/disk ]; then mount -t tmpfs -o mode=0755,size=1m labdisk /dev/disk; fi",
    "mkdir -p /dev/disk/by-id",
    ...(p.loop ? [`ln -s ${shq(`../..${p.loop.device.replace(/^\/dev/, "")}`)} ${shq(p.loop.byId)}`] : []),
    // Targets are created inside the overlays, so nothing appears on the host.
    ...(p.opts.binds ?? []).map(
      ([src, dst]) => `mkdir -p ${shq(dst)} && mount --bind ${shq(src)} ${shq(dst)}`,
    ),
    `hostname ${shq(p.name)}`,
    "ip link set lo up",
    ...(net
      ? [
          `ip addr flush dev ${shq(net.iface)}`,
          `ip addr add ${shq(net.address)} dev ${shq(net.iface)}`,
          `ip link set ${shq(net.iface)} up`,
          ...(net.routes ?? []).map((r) => `ip route replace ${shq(r)} dev ${shq(net.iface)}`),
        ]
      : ['for l in $(ls /sys/class/net); do ip link set "$l" up; done']),
    `mkdir -p ${NODE_LAB_DIR}`,
    `cp ${shq(projectFile("lab/node/init.pl"))} ${shq(projectFile("lab/node/pypi-supervise.sh"))} ${NODE_LAB_DIR}/`,
  ];
}

/** What the holder becomes once the node is set up: the node's init. */
function initCommand(p: BootPlan): string {
  const initEnv: Record<string, string> = {
    PATH: NODE_PATH,
    LANG: "C.UTF-8",
    ...p.opts.env,
    PYPI_SUPERVISE_LIB: paths.agentLib,
    PYPI_NODE_CONFIG: paths.agentConfig,
  };
  return [
    // The init's output has no reader once the node is up.
    "exec </dev/null >/dev/null 2>&1",
    `exec env -i ${Object.entries(initEnv)
      .map(([k, v]) => shq(`${k}=${v}`))
      .join(" ")} perl ${NODE_LAB_DIR}/init.pl ${NODE_LAB_DIR}/pypi-supervise.sh ${SUPERVISOR_RUN}`,
  ].join("\n");
}

function pidNamespaceOf(pid: number): string | undefined {
  try {
    return readlinkSync(`/proc/${pid}/ns/pid`);
  } catch {
    return undefined;
  }
}

export class LabNode {
  private holder: ChildProcess | undefined;
  private init: { readonly pid: number; readonly pidNs: string } | undefined;
  private loop: string | undefined;

  /**
   * A node in network namespace `ns` whose root disk is the host directory `disk` (created if
   * need be); `boot()` powers it on. Use `LabNode.start` for both at once.
   */
  constructor(
    readonly name: string,
    readonly ns: string,
    readonly disk: string,
    private readonly opts: LabNodeOptions = {},
  ) {}

  /** Boot a node; on a disk an earlier node of the same name used, this is a reboot. */
  static async start(name: string, ns: string, disk: string, opts: LabNodeOptions = {}): Promise<LabNode> {
    const node = new LabNode(name, ns, disk, opts);
    await node.boot();
    return node;
  }

  /** Power on: mount the disk and volume, run the node's init. */
  async boot(): Promise<void> {
    if (this.up) throw new Error(`${this.name}: already up`);
    prepareDisk(this.disk);
    const volume = this.opts.volume;
    let loop: BootPlan["loop"];
    if (volume) {
      this.loop = attachVolume(diskLayout(this.disk).volume(volume.id), volume.sizeBytes);
      loop = { device: this.loop, byId: dataVolumeDevice(volume.id) };
    }
    const plan: BootPlan = { name: this.name, disk: this.disk, loop, opts: this.opts };
    const { child: holder, pid } = await spawnHolder({
      name: `${this.name}: node`,
      iso: { ...NODE_ISOLATION, netns: this.ns },
      setup: holderSetup(plan),
      afterReady: initCommand(plan),
      env: { PATH: NODE_PATH, LANG: "C.UTF-8" },
      readyTimeoutMs: this.opts.readyTimeoutMs,
    });
    // The holder outlives this process with --keep: its pipes must not hold the event loop.
    holder.stdout?.destroy();
    holder.stderr?.destroy();
    holder.unref();
    const pidNs = pidNamespaceOf(pid);
    if (!pidNs) throw new Error(`${this.name}: the node's init (pid ${pid}) is gone`);
    this.holder = holder;
    this.init = { pid, pidNs };
  }

  /** Whether the node's init runs. */
  get up(): boolean {
    return this.init !== undefined && pidNamespaceOf(this.init.pid) === this.init.pidNs;
  }

  /** Host pid of the node's init (PID 1 inside): the process whose namespaces commands enter. */
  get pid(): number {
    if (!this.init || !this.up) throw new Error(`${this.name}: node is down`);
    return this.init.pid;
  }

  /** Host path of the loop device backing the data volume (while attached). */
  get volumeDevice(): string | undefined {
    return this.loop;
  }

  /** Host pids of every process in the node's PID namespace. */
  processes(): number[] {
    const ns = this.init?.pidNs;
    if (!ns) return [];
    return readdirSync("/proc")
      .filter((e) => /^\d+$/.test(e))
      .map(Number)
      .filter((pid) => pidNamespaceOf(pid) === ns);
  }

  /**
   * A crash: every process of the node dies at once (SIGKILL to its init ends its PID
   * namespace), then its links go down, as a machine that stops dead. Disk and volume stay.
   * Resolves with how many processes the node had.
   */
  async crash(): Promise<number> {
    const had = namespacePids(this.ns).length;
    this.kill();
    // Left over: processes in the network namespace outside the PID namespace (the holder,
    // nsenter parents); they cannot start anything in the node any more.
    const deadline = Date.now() + 5_000;
    for (;;) {
      const left = namespacePids(this.ns);
      if (left.length === 0) break;
      if (Date.now() > deadline)
        throw new Error(`${this.name}: processes ${left.join(" ")} survive the crash`);
      for (const pid of left) {
        try {
          process.kill(pid, "SIGKILL");
        } catch {
          // already gone
        }
      }
      await sleep(20);
    }
    setLinks(this.ns, false);
    return had;
  }

  /**
   * The disk and the data volume are gone, as when an instance and its volumes are replaced:
   * the next boot starts on empty ones. The node must be down.
   */
  discardDisk(): void {
    if (this.up) throw new Error(`${this.name}: discarding the disk of a running node`);
    detachVolumes(this.disk);
    this.loop = undefined;
    rmSync(this.disk, { recursive: true, force: true });
  }

  /** Crash and boot again on the same disk. */
  async reboot(): Promise<void> {
    await this.crash();
    await this.boot();
  }

  /**
   * Stop every process of the node where it is (SIGSTOP, repeated until no new one shows),
   * as a hung machine: its addresses stay, nothing answers. `thaw()` resumes it.
   */
  freeze(): number {
    const stopped = new Set<number>();
    for (;;) {
      const fresh = this.processes().filter((p) => !stopped.has(p));
      if (fresh.length === 0) return stopped.size;
      for (const pid of fresh) {
        try {
          process.kill(pid, "SIGSTOP");
        } catch {
          // gone
        }
        stopped.add(pid);
      }
    }
  }

  thaw(): void {
    for (const pid of this.processes()) {
      try {
        process.kill(pid, "SIGCONT");
      } catch {
        // gone
      }
    }
  }

  /** Until the node's supervisor has started what the agent enabled (boot is over). */
  async waitBooted(timeoutMs = 60_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      const r = await this.execAsync(["test", "-e", `${SUPERVISOR_RUN}/booted`], { timeoutMs: 5_000 });
      if (r.status === 0) return;
      await sleep(100);
    }
    throw new Error(`${this.name}: boot not finished within ${timeoutMs / 1000} s`);
  }

  /**
   * argv that runs `command` inside the node (its network, mount, UTS, IPC and PID namespaces).
   * nsenter forks into the PID namespace and waits; the command dies with it, so killing what
   * `spawn` returns still ends the command.
   */
  argv(command: readonly string[]): string[] {
    return enterArgv(this.pid, NODE_ISOLATION, ["setpriv", "--pdeathsig", "KILL", "--", ...command]);
  }

  private childEnv(opts: LabExecOptions): NodeJS.ProcessEnv {
    return { ...process.env, ...this.opts.env, ...opts.env };
  }

  exec(command: readonly string[], opts: LabExecOptions = {}): ExecResult {
    const [cmd, ...args] = this.argv(command);
    const r = spawnSync(cmd as string, args, {
      input: opts.input ?? "",
      encoding: "utf8",
      cwd: "/",
      timeout: opts.timeoutMs ?? 60_000,
      killSignal: "SIGKILL",
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

  private kill(): void {
    for (const pid of [this.init?.pid, this.holder?.pid]) {
      if (pid === undefined) continue;
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // already gone
      }
    }
    this.init = undefined;
    this.holder = undefined;
  }

  /** End the node now (every process, as crash does) without waiting or touching its links. */
  stop(): void {
    this.kill();
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
