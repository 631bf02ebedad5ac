/**
 * Network-namespace plumbing for the lab, the real-daemon tests and the bench. Every node is a
 * network namespace with one veth (`eth0`) whose other end sits on a bridge that lives in a
 * namespace of its own, so no packet ever touches the host's interfaces. All operations are
 * idempotent: creating what exists replaces it, destroying what is gone is a no-op. Code outside
 * lab/lib/ builds on these instead of calling `ip netns`, `unshare` or `nsenter` itself
 * (tests/lab/toolkit.test.ts).
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";

const BRIDGE = "br0";

function ip(...args: string[]): string {
  return execFileSync("ip", args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
}

export function namespaceExists(name: string): boolean {
  return ip("netns", "list")
    .split("\n")
    .some((line) => line.split(" ")[0] === name);
}

/** Process ids living in a namespace (empty when it does not exist). */
export function namespacePids(name: string): number[] {
  if (!namespaceExists(name)) return [];
  return ip("netns", "pids", name)
    .split("\n")
    .filter((s) => s.trim() !== "")
    .map(Number);
}

/** SIGKILL every process in the namespace: a node that dies without warning. */
export function killNamespace(name: string): void {
  for (const pid of namespacePids(name)) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // already gone
    }
  }
}

/** Kill whatever runs in the namespace, then delete it (veth peers go with it). */
export function destroyNamespace(name: string): void {
  if (!namespaceExists(name)) return;
  killNamespace(name);
  ip("netns", "del", name);
}

/** Set every link of a namespace but loopback up or down (a machine that stops dead goes dark). */
export function setLinks(ns: string, up: boolean): void {
  if (!namespaceExists(ns)) return;
  const links = ip("-n", ns, "-o", "link", "show")
    .split("\n")
    .map((line) => /^\d+: ([^:@]+)/.exec(line)?.[1])
    .filter((name): name is string => name !== undefined && name !== "lo");
  for (const link of links) ip("-n", ns, "link", "set", link, up ? "up" : "down");
}

/** A fresh, empty namespace with loopback up (an existing one of that name is destroyed first). */
export function createNamespace(name: string): void {
  destroyNamespace(name);
  ip("netns", "add", name);
  ip("-n", name, "link", "set", "lo", "up");
}

/** A namespace holding only a bridge (`br0`) that node namespaces attach to. */
export function createBridgeNamespace(name: string): void {
  createNamespace(name);
  ip("-n", name, "link", "add", BRIDGE, "type", "bridge");
  ip("-n", name, "link", "set", BRIDGE, "up");
}

export interface NodeNetwork {
  /** Namespace name of the node. */
  readonly ns: string;
  /** Namespace made by `createBridgeNamespace`. */
  readonly bridgeNs: string;
  /** Address with prefix length, e.g. `10.98.0.11/24`. */
  readonly address: string;
  /** Interface name inside the node. @default "eth0" */
  readonly iface?: string;
  /**
   * Bridge-side name of the veth (at most 15 characters, unique per bridge).
   * @default `v-<ns>` cut to 15 characters (give one when names share a long prefix)
   */
  readonly port?: string;
}

/** A fresh node namespace whose `eth0` is plugged into the bridge and carries `address`. */
export function createNode(node: NodeNetwork): void {
  const iface = node.iface ?? "eth0";
  // Bridge-side names are per bridge namespace and limited to 15 characters.
  const port = node.port ?? `v-${node.ns}`.slice(0, 15);
  createNamespace(node.ns);
  try {
    ip("-n", node.bridgeNs, "link", "del", port);
  } catch {
    // no leftover port
  }
  ip("-n", node.bridgeNs, "link", "add", port, "type", "veth", "peer", "name", iface, "netns", node.ns);
  ip("-n", node.bridgeNs, "link", "set", port, "master", BRIDGE, "up");
  ip("-n", node.ns, "addr", "add", node.address, "dev", iface);
  ip("-n", node.ns, "link", "set", iface, "up");
}

/** argv that runs `command` in the network namespace `ns` (root mount namespace). */
export function inNamespace(ns: string, command: readonly string[]): string[] {
  return ["ip", "netns", "exec", ns, ...command];
}

/** Namespaces a process gets of its own on top of a private mount namespace. */
export interface Isolation {
  /** Named network namespace to run in (createNamespace, createNode). */
  readonly netns?: string;
  /** A fresh anonymous network namespace instead: loopback only, gone with its last process. */
  readonly net?: boolean;
  readonly uts?: boolean;
  readonly ipc?: boolean;
  /** A PID namespace whose PID 1 is the script: every process in it dies with that one. */
  readonly pid?: boolean;
  /** With `pid`: PID 1 also dies when the unshare process that forked it is killed. */
  readonly killChild?: boolean;
}

/** argv that runs `sh -c script` (then `args` as $0, $1, ...) in the namespaces of `iso`. */
export function isolatedArgv(iso: Isolation, script: string, args: readonly string[] = []): string[] {
  const unshare = [
    "unshare",
    "--mount",
    ...(iso.net ? ["--net"] : []),
    ...(iso.uts ? ["--uts"] : []),
    ...(iso.ipc ? ["--ipc"] : []),
    ...(iso.pid ? ["--pid", "--fork"] : []),
    ...(iso.pid && iso.killChild ? ["--kill-child"] : []),
    "--propagation",
    "private",
    "sh",
    "-c",
    script,
    ...args,
  ];
  return iso.netns ? inNamespace(iso.netns, unshare) : unshare;
}

/**
 * argv that runs `command` in the mount and network namespaces of host process `pid`, plus those
 * `iso` made private. With `pid`, nsenter forks into the PID namespace and waits for the command.
 */
export function enterArgv(pid: number, iso: Isolation, command: readonly string[]): string[] {
  return [
    "nsenter",
    "-t",
    String(pid),
    "-m",
    "-n",
    ...(iso.uts ? ["-u"] : []),
    ...(iso.ipc ? ["-i"] : []),
    ...(iso.pid ? ["-p"] : []),
    "--",
    ...command,
  ];
}

export interface NodeProcess {
  /** Namespace to run in. */
  readonly ns: string;
  /** Hostname inside the node's own UTS namespace (what `uname -n` answers). */
  readonly hostname: string;
  /**
   * Host directories bind-mounted over paths inside the node: `[source, target]`. A target the
   * host lacks is made in a copy-on-write view of its nearest existing parent, whose layers sit
   * next to the source (`<source>.cow/`), so nothing is created on the host's tree.
   */
  readonly binds?: readonly (readonly [string, string])[];
  /** Paths that get an empty tmpfs inside the node (e.g. `/run`). */
  readonly tmpfs?: readonly string[];
  /** Shell run after the mounts, before the command (e.g. creating runtime directories). */
  readonly setup?: string;
}

/** Single-quoted for sh. */
export const shq = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;

/** Shell that makes `dst` exist inside a private mount namespace without touching the host. */
function bindTarget(src: string, dst: string): string {
  const cow = shq(`${src}.cow`);
  return [
    `if [ ! -e ${shq(dst)} ]; then`,
    `  parent=${shq(dst)}`,
    '  while [ ! -e "$parent" ]; do parent=$(dirname "$parent"); done',
    `  mkdir -p ${cow}/upper ${cow}/work`,
    `  mount -t overlay overlay -o "lowerdir=$parent,upperdir="${cow}"/upper,workdir="${cow}"/work" "$parent"`,
    `  mkdir -p ${shq(dst)}`,
    "fi",
  ].join("\n");
}

/** argv that runs `command` in the node with private mount, UTS and IPC namespaces. */
export function nodeArgv(p: NodeProcess, command: readonly string[]): string[] {
  const script = [
    "set -e",
    ...(p.binds ?? []).flatMap(([src, dst]) => [
      bindTarget(src, dst),
      `mount --bind ${shq(src)} ${shq(dst)}`,
    ]),
    ...(p.tmpfs ?? []).map((dst) => `mount -t tmpfs -o mode=0755 tmpfs ${shq(dst)}`),
    `hostname ${shq(p.hostname)}`,
    p.setup ?? ":",
    `exec ${command.map(shq).join(" ")}`,
  ].join("\n");
  return isolatedArgv({ netns: p.ns, uts: true, ipc: true }, script);
}

/** Start a long-running command in the node; its pid is the command itself (exec chain). */
export function spawnInNode(p: NodeProcess, command: readonly string[]): ChildProcess {
  const [cmd, ...args] = nodeArgv(p, command);
  return spawn(cmd as string, args, { stdio: ["ignore", "pipe", "pipe"] });
}

/** Run a short command in the node's network namespace only and return its stdout. */
export function execInNamespace(ns: string, command: readonly string[]): string {
  const [cmd, ...args] = inNamespace(ns, command);
  return execFileSync(cmd as string, args, {
    encoding: "utf8",
    stdio: ["ignore", "pipe", "pipe"],
  });
}

/** IPv4 addresses (without prefix) configured on an interface of a namespace. */
export function addressesOf(ns: string, iface: string): string[] {
  if (!namespaceExists(ns)) return [];
  return ip("-n", ns, "-o", "-4", "addr", "show", "dev", iface)
    .split("\n")
    .map((line) => /\binet ([0-9.]+)\//.exec(line)?.[1])
    .filter((a): a is string => a !== undefined);
}

/** Namespaces whose name starts with `prefix` (what a crashed run may have left behind). */
export function namespacesWithPrefix(prefix: string): string[] {
  return ip("netns", "list")
    .split("\n")
    .map((line) => line.split(" ")[0] ?? "")
    .filter((name) => name.startsWith(prefix));
}
