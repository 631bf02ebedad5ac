/**
 * The lab: every node of a lab-shaped topology plus a client, each a network namespace with its
 * own mount, UTS and IPC namespaces, on one bridge that lives in a namespace of its own. Bundles
 * come from the stack's buildBundles and are applied by the node agent inside each node.
 */
import { chmodSync, chownSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { buildBundles } from "../../src/bundle.js";
import { bundleDirEntries } from "../../src/bundle-dir.js";
import { PG_DATA_MOUNT, paths } from "../../src/layout.js";
import { type NodeSpec, nodesWithRole, type Topology } from "../../src/topology.js";
import type { ExpectedAlarm } from "../drills/alarms.js";
import { startCloud } from "./cloud.js";
import { AlarmCollector } from "./collector.js";
import { type ExecResult, type LabExecOptions, LabNode, shq, userIds, writeTree } from "./lab-node.js";
import { addressesOf, createBridgeNamespace, createNode } from "./netns.js";
import { DEBIAN_NODE_MAJOR, ensureDebianNode } from "./preflight.js";
import type { ClientMaterial } from "./secrets.js";
import { NS_PREFIX, type StateFile } from "./state.js";

export const CLIENT = "client";
/** Where the client sees the run's client directory (inside its /srv overlay, never on the host). */
export const CLIENT_DIR = "/srv/lab";

/**
 * A client command with a clean environment, as on a user's machine: nothing of this host's
 * (CA bundle overrides, pip find-links) leaks in, and its tools keep away from the host's home.
 */
export const clientCommand = (argv: readonly string[]): string[] => [
  "env",
  "-i",
  "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
  `HOME=${CLIENT_DIR}`,
  "LANG=C.UTF-8",
  "PIP_CONFIG_FILE=/dev/null",
  ...argv,
];

/** An HTTPS response through a floating IP: status (0 when none came) and body, or curl's error. */
export interface HttpsResult {
  readonly code: number;
  readonly body: string;
}

/** curl from the client to `https://<domain>` through `fip`, verified against the lab CA: the argv before its own options. */
export const curlVia = (lab: Lab, fip: string, maxSeconds = 5): string[] => [
  "curl",
  "-sS",
  "--max-time",
  String(maxSeconds),
  "--cacert",
  `${CLIENT_DIR}/ca.pem`,
  "--resolve",
  `${lab.t.domain}:443:${fip}`,
];

/** GET `https://<domain><path>` from the client through `fip`, verified against the lab CA. */
export async function httpsVia(lab: Lab, fip: string, path: string, maxSeconds = 5): Promise<HttpsResult> {
  const r = await lab.client.execAsync(
    clientCommand([
      ...curlVia(lab, fip, maxSeconds),
      "-w",
      "\n%{http_code}",
      `https://${lab.t.domain}${path}`,
    ]),
    { timeoutMs: (maxSeconds + 5) * 1000 },
  );
  const lines = r.stdout.trimEnd().split("\n");
  const code = Number(lines.pop() ?? 0);
  return { code, body: lines.join("\n") || r.stderr };
}

/**
 * sftp in batch mode as the first upload user to a floating IP, with the lab's key and the
 * upload host key pinned: the same client a PyPI uploader runs. Commands come on stdin.
 */
export function sftpArgv(t: Topology, fip: string, connectTimeoutSeconds: number): string[] {
  const user = t.upload.users[0]?.name ?? "";
  const options = [
    `UserKnownHostsFile=${CLIENT_DIR}/known_hosts`,
    "GlobalKnownHostsFile=/dev/null",
    "StrictHostKeyChecking=yes",
    "BatchMode=yes",
    `ConnectTimeout=${connectTimeoutSeconds}`,
  ];
  return clientCommand([
    "sftp",
    "-b",
    "-",
    "-i",
    `${CLIENT_DIR}/upload_key`,
    ...options.flatMap((o) => ["-o", o]),
    "-P",
    String(t.upload.port),
    `${user}@${fip}`,
  ]);
}

const BRIDGE_NS = `${NS_PREFIX}br`;
/** Services the lab's kernel cannot run: DRBD and nfsd (the storage Heartbeat runs without them). */
const APP_DIRECT_SKIP = "drbd nfs-server";
/** A db node's data volume (sparse): room for max_slot_wal_keep_size and the clusters. */
export const DB_VOLUME_BYTES = 4 * 1024 ** 3;

export interface LabDirs {
  /** Everything of one run; removed on teardown. */
  readonly run: string;
  /** Host side of `bundleLocation`: bundles/<node>/ and secrets/. */
  readonly store: string;
  /** Keys, certificates and the built app, on the host only. */
  readonly work: string;
  /** The shared package volume (stand-in for the NFS export). */
  readonly packages: string;
  /** Scratch for the node overlays (a tmpfs inside each node). */
  readonly nodes: string;
  /**
   * Stand-ins for the two backup buckets: pgBackRest's repository (bound into the db nodes) and
   * the package file copies (bound into the app servers). On AWS these are S3 buckets.
   */
  readonly backupRepository: string;
  readonly fileCopies: string;
  /** Stand-in for CloudFront: the app servers' purge job writes each invalidation here. */
  readonly cdnInvalidations: string;
  /** What the client writes (pip downloads, load logs). */
  readonly client: string;
}

export const labDirs = (runDir: string): LabDirs => ({
  run: runDir,
  store: join(runDir, "store"),
  work: join(runDir, "work"),
  packages: join(runDir, "packages"),
  nodes: join(runDir, "nodes"),
  client: join(runDir, "client"),
  backupRepository: join(runDir, "backup", "pgbackrest"),
  fileCopies: join(runDir, "backup", "files"),
  cdnInvalidations: join(runDir, "cdn", "invalidations"),
});

export const nsOf = (name: string): string => `${NS_PREFIX}${name}`;

/** The client sits on the nodes' subnet at the last usable host address of a /24. */
export function clientAddress(t: Topology): string {
  const [a, b, c] = t.vpcCidr.split("/")[0]?.split(".") ?? [];
  return `${a}.${b}.${c}.250`;
}

const prefixLen = (t: Topology): string => t.vpcCidr.split("/")[1] ?? "24";

/** The /24s of the floating and overlay addresses: on-link everywhere, as EIPs and routes are. */
export function onLinkRanges(t: Topology): string[] {
  const net = (ip: string) => `${ip.split(".").slice(0, 3).join(".")}.0/24`;
  return [
    ...new Set([
      ...t.floatingIps.map((f) => net(f.address)),
      net(t.overlay.dbWriter),
      net(t.overlay.storage),
    ]),
  ];
}

export class Lab {
  readonly nodes = new Map<string, LabNode>();
  /** The CloudWatch stand-in, once the lab is up (see collector.ts). */
  collector: AlarmCollector | undefined;
  /** When the running drill caused its fault (epoch ms); detection is timed from it. */
  faultAt: number | undefined;
  /** Alarms the running drill expects beyond drills/alarms.ts (known only at run time). */
  expectedAlarms: ExpectedAlarm[] = [];

  /** Start the alarm collector over the nodes' published health. */
  startCollector(): AlarmCollector {
    this.collector ??= new AlarmCollector(this.t, join(this.dirs.store, "cloud", "metrics"));
    this.collector.start();
    return this.collector;
  }

  constructor(
    readonly t: Topology,
    readonly dirs: LabDirs,
    readonly material: ClientMaterial,
    private readonly state: StateFile,
  ) {}

  node(name: string): LabNode {
    const n = this.nodes.get(name);
    if (!n) throw new Error(`lab node ${name} is not up`);
    return n;
  }

  get client(): LabNode {
    return this.node(CLIENT);
  }

  nodesOf(role: NodeSpec["role"]): NodeSpec[] {
    return nodesWithRole(this.t, role);
  }

  /** Host path of a node's bundle, and the same path as the node sees it. */
  bundleDir(name: string): { host: string; node: string } {
    // The layout the bootstrap fetches from: `<bundleLocation>/<node>/`, as on S3.
    return { host: join(this.dirs.store, name), node: `${this.t.bundleLocation}/${name}` };
  }

  /** `pypi-node ARGS` on a node (the installed agent); rejects with its output on failure. */
  agent(name: string, args: string, opts: LabExecOptions = {}): Promise<string> {
    return this.node(name).sh(`${paths.agent} ${args}`, { timeoutMs: 120_000, ...opts });
  }

  /** `sh -c` on a node, resolved with status and output (never rejects). */
  exec(name: string, script: string, opts: LabExecOptions = {}): Promise<ExecResult> {
    return this.node(name).execAsync(["sh", "-c", script], opts);
  }

  /** Addresses a node holds on its lab interface (for floating/overlay IP checks). */
  addresses(name: string): string[] {
    return addressesOf(nsOf(name), "eth0");
  }

  /** Command lines that get a shell inside each node, for `--keep`. */
  enterCommands(): string[] {
    return [...this.nodes.values()].map(
      (n) =>
        `${n.name.padEnd(6)}  nsenter -t ${n.pid} -m -n -u -i -p -- bash    # or: ip netns exec ${n.ns} bash (network only)`,
    );
  }

  // ------------------------------------------------------------------ bring-up

  /**
   * Bundles as the stack would hand them over, on the host side of bundleLocation. `t` other
   * than the lab's own is a stack config change, as `pulumi up` would upload it.
   */
  writeBundles(t: Topology = this.t): void {
    for (const bundle of buildBundles(t)) {
      const dir = this.bundleDir(bundle.node).host;
      rmSync(dir, { recursive: true, force: true });
      writeTree(dir, bundleDirEntries(bundle));
    }
  }

  /** The bridge, every node's namespace with its address and on-link routes, and the client's. */
  createNetwork(): void {
    this.state.add("namespaces", BRIDGE_NS);
    createBridgeNamespace(BRIDGE_NS);
    const members = [
      ...this.t.nodes.map((n) => [n.name, n.privateIp] as const),
      [CLIENT, clientAddress(this.t)] as const,
    ];
    for (const [name, ip] of members) {
      this.state.add("namespaces", nsOf(name));
      createNode({ ns: nsOf(name), bridgeNs: BRIDGE_NS, address: `${ip}/${prefixLen(this.t)}` });
    }
    startCloud(this.t, BRIDGE_NS, this.dirs.store, nsOf);
  }

  /** Start every node's holder: overlays, the bundle store at bundleLocation, the package volume on apps. */
  async startNodes(): Promise<void> {
    const names = [...this.t.nodes.map((n) => n.name), CLIENT];
    mkdirSync(this.dirs.client, { recursive: true });
    // The app servers run the index app on Debian 12's nodejs, as on AWS.
    const debianNode = ensureDebianNode((msg) => process.stdout.write(`lab: ${msg}\n`));
    await Promise.all(
      names.map(async (name) => {
        const spec = this.t.nodes.find((n) => n.name === name);
        // The node's root disk: it outlives a crash, so a restart on it is a reboot.
        const disk = join(this.dirs.nodes, name);
        const binds: [string, string][] = [[this.dirs.store, this.t.bundleLocation]];
        // One shared directory stands in for the DRBD volume on the storage pair and for its NFS
        // export on every app server.
        if (spec?.role === "app")
          binds.push(
            [this.dirs.packages, this.t.storage.packageRoot],
            [this.dirs.packages, this.t.storage.volumeMount],
          );
        if (spec?.role === "app") binds.push([this.dirs.fileCopies, this.t.backup.fileCopies]);
        if (spec?.role === "app" && this.t.cdnInvalidations)
          binds.push([this.dirs.cdnInvalidations, this.t.cdnInvalidations]);
        if (spec?.role === "db") binds.push([this.dirs.backupRepository, this.t.backup.repository]);
        if (name === CLIENT) binds.push([this.dirs.client, CLIENT_DIR]);
        const env: Record<string, string> = spec?.role === "app" ? { PYPI_DIRECT_SKIP: APP_DIRECT_SKIP } : {};
        const node = await LabNode.start(name, nsOf(name), disk, {
          binds,
          env,
          volume: spec?.dataVolumeId
            ? spec.role === "db"
              ? { id: spec.dataVolumeId, sizeBytes: DB_VOLUME_BYTES, mountPoint: PG_DATA_MOUNT }
              : { id: spec.dataVolumeId }
            : undefined,
          usrLayers: spec?.role === "app" ? [debianNode] : [],
          network: {
            iface: spec?.interface ?? "eth0",
            address: `${spec?.privateIp ?? clientAddress(this.t)}/${prefixLen(this.t)}`,
            routes: onLinkRanges(this.t),
          },
        });
        this.nodes.set(name, node);
        if (spec?.role === "app") {
          const version = (await node.runAsync(["node", "--version"])).trim();
          if (!version.startsWith(`v${DEBIAN_NODE_MAJOR}.`))
            throw new Error(`${name}: node --version is ${version}, not Debian 12's v${DEBIAN_NODE_MAJOR}`);
        }
      }),
    );
  }

  /**
   * The package volume's root on the host (the DRBD volume and NFS export on AWS); the storage
   * pair's Heartbeat lays it out through the pypi-nfs resource, as on AWS.
   */
  preparePackageVolume(): void {
    mkdirSync(this.dirs.packages, { recursive: true });
    chownSync(this.dirs.packages, 0, 0);
    chmodSync(this.dirs.packages, 0o755);
  }

  /**
   * The backup buckets' stand-ins, as the stack creates the buckets: empty, writable only by the
   * user that writes each (postgres for pgBackRest, www-data for the file copy job).
   */
  prepareBackupStores(): void {
    const owners: [string, string][] = [
      [this.dirs.backupRepository, "postgres"],
      [this.dirs.fileCopies, "www-data"],
      // CloudFront's stand-in: the purge job runs as www-data.
      [this.dirs.cdnInvalidations, "www-data"],
    ];
    for (const [dir, user] of owners) {
      mkdirSync(dir, { recursive: true });
      const [uid, gid] = userIds(user);
      chownSync(dir, uid, gid);
      chmodSync(dir, 0o750);
    }
  }

  /** Client side: CA, upload key, known_hosts, and the domain resolving to the first floating IP. */
  async prepareClient(): Promise<void> {
    mkdirSync(this.dirs.client, { recursive: true });
    const files: [string, string, number][] = [
      ["ca.pem", this.material.caPem, 0o644],
      ["upload_key", this.material.uploadKey, 0o600],
      ["known_hosts", this.material.knownHosts, 0o644],
    ];
    for (const [file, content, mode] of files) writeFileSync(join(this.dirs.client, file), content, { mode });
    const fip = this.t.floatingIps[0]?.address;
    if (!fip) throw new Error("the lab topology has no floating IP");
    await this.client.sh(`printf '%s %s\\n' ${shq(fip)} ${shq(this.t.domain)} >>/etc/hosts`);
  }

  stopNodes(): void {
    for (const node of this.nodes.values()) node.stop();
  }
}
