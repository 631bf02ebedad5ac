/**
 * The pure plan of one stack: nodes and their addresses from the config, the topology built from
 * them, and each node's bundle. No Pulumi resources; the stack, the lab and the tests share it.
 */
import { buildBundles } from "./bundle.js";
import { bundleDirEntries } from "./bundle-dir.js";
import type { PlannedNode } from "./components/node.js";
import type { BundleEntries } from "./components/rollout.js";
import type { StackConfig } from "./config.js";
import { layout, NITRO_INTERFACE, pgBinDir, ports } from "./layout.js";
import { azLetter, hostIp, subnetCidr } from "./network.js";
import type { FloatingIp, NodeRole, Topology } from "./topology.js";

/** AWS ids the topology needs that exist only after `up`. */
export interface ResolvedIds {
  readonly floatingIps: readonly { readonly address: string; readonly allocationId: string }[];
  readonly routeTableIds: readonly string[];
  readonly bucket: string;
  /** pgBackRest's repository bucket and the package file copy bucket. */
  readonly backupBucket: string;
  readonly fileCopyBucket: string;
  /** Instance id and URN per node name; absent while planning. */
  readonly instances?: Readonly<Record<string, { readonly instanceId: string; readonly urn: string }>>;
  /** EBS data volume id per node name (db nodes, the storage pair); absent while planning. */
  readonly dataVolumes?: Readonly<Record<string, string>>;
  /** The CloudFront distribution, when `cdn` is on. */
  readonly cdnDistributionId?: string;
}

/**
 * Stand-ins with the shape of the real ids. The topology built from them has the same nodes,
 * files and secrets as the real one, which is what lets the stack create every resource
 * before any output resolves.
 */
export function placeholderIds(cfg: StackConfig): ResolvedIds {
  return {
    floatingIps: Array.from({ length: cfg.floatingIps }, (_, i) => ({
      address: `192.0.2.${10 + i}`,
      allocationId: `eipalloc-pending${i}`,
    })),
    routeTableIds: ["rtb-pending-a", "rtb-pending-b"],
    bucket: `pypi-${cfg.environment}-bundles-pending`,
    backupBucket: `pypi-${cfg.environment}-backups-pending`,
    fileCopyBucket: `pypi-${cfg.environment}-files-pending`,
    ...(cfg.edge.cdn.enabled ? { cdnDistributionId: "EPENDING" } : {}),
  };
}

export const secretRefs = (environment: string): Topology["secrets"] => ({
  balancerAuthkey: { parameter: `/pypi/${environment}/heartbeat/balancer-authkey` },
  storageAuthkey: { parameter: `/pypi/${environment}/heartbeat/storage-authkey` },
  postgresReplicationPassword: { parameter: `/pypi/${environment}/postgres/replication-password` },
  postgresAppPassword: { parameter: `/pypi/${environment}/postgres/app-password` },
  tlsKey: { parameter: `/pypi/${environment}/tls/key` },
  tlsCertificate: { parameter: `/pypi/${environment}/tls/certificate` },
  uploadHostKey: { parameter: `/pypi/${environment}/upload/host-key` },
  drbdSecret: { parameter: `/pypi/${environment}/drbd/secret` },
});

/**
 * Every node with its AZ and fixed private addresses, from the config alone: host .10, .11, ...
 * of its tier's /24 in its AZ; balancer spares (one per floating IP) from .20.
 */
export function planNodes(cfg: StackConfig): PlannedNode[] {
  const node = (role: NodeRole, prefix: string, i: number, tier: "public" | "app" | "db"): PlannedNode => {
    const azIndex = (i % 2) as 0 | 1;
    const cidr = subnetCidr(cfg.vpcCidr, tier, azIndex);
    return {
      name: `${prefix}-${azLetter(i)}`,
      role,
      az: cfg.availabilityZones[azIndex],
      azIndex,
      privateIp: hostIp(cidr, 10 + Math.floor(i / 2)),
      secondaryIps:
        role === "balancer" ? Array.from({ length: cfg.floatingIps }, (_, f) => hostIp(cidr, 20 + f)) : [],
    };
  };
  return [
    node("balancer", "lb", 0, "public"),
    node("balancer", "lb", 1, "public"),
    ...Array.from({ length: cfg.appServers }, (_, i) => node("app", "app", i, "app")),
    node("db", "db", 0, "db"),
    node("db", "db", 1, "db"),
  ];
}

/** The whole deployment as plain data. Pure: the same inputs give the same topology. */
export function buildTopology(cfg: StackConfig, nodes: readonly PlannedNode[], ids: ResolvedIds): Topology {
  const balancers = nodes.filter((n) => n.role === "balancer");
  return {
    environment: cfg.environment,
    backend: "aws",
    region: cfg.region,
    vpcCidr: cfg.vpcCidr,
    domain: cfg.domain,
    nodes: nodes.map((n) => ({
      name: n.name,
      role: n.role,
      az: n.az,
      privateIp: n.privateIp,
      secondaryIps: n.secondaryIps,
      interface: NITRO_INTERFACE,
      ...(ids.instances?.[n.name] ?? {}),
      ...(ids.dataVolumes?.[n.name] ? { dataVolumeId: ids.dataVolumes[n.name] } : {}),
    })),
    floatingIps: ids.floatingIps.map(
      (f, i): FloatingIp => ({
        address: f.address,
        allocationId: f.allocationId,
        home: balancers[i % 2]?.name ?? "",
      }),
    ),
    overlay: {
      ...cfg.overlay,
      routeTableIds: ids.routeTableIds,
      routeBrokers: {
        writer: routeBrokerName(cfg.environment, "writer"),
        storage: routeBrokerName(cfg.environment, "storage"),
      },
    },
    postgres: {
      ...layout.postgres,
      version: cfg.postgres.version,
      synchronous: cfg.postgres.synchronous,
      port: ports.postgres,
      binDir: pgBinDir(cfg.postgres.version),
    },
    heartbeat: { udpPort: ports.heartbeatUdp, ...cfg.heartbeat },
    upload: {
      port: ports.upload,
      backendPort: ports.uploadBackend,
      users: cfg.upload.users,
      maxFileBytes: cfg.upload.maxFileBytes,
      rejectedRetentionDays: cfg.upload.rejectedRetentionDays,
    },
    app: { ...cfg.app, httpPort: ports.http },
    storage: { ...layout.storage, drbdPort: ports.drbd },
    tls: layout.tls,
    secrets: secretRefs(cfg.environment),
    bundleLocation: `s3://${ids.bucket}/bundles`,
    backup: {
      repository: `s3://${ids.backupBucket}/pgbackrest`,
      fileCopies: `s3://${ids.fileCopyBucket}/packages`,
      stanza: layout.backup.stanza,
      retentionFull: cfg.backup.retentionFull,
      retentionDiff: cfg.backup.retentionDiff,
      fullSchedule: cfg.backup.fullSchedule,
      diffSchedule: cfg.backup.diffSchedule,
      restoreTestSchedule: cfg.backup.restoreTestSchedule,
      archiveTimeoutSeconds: cfg.backup.archiveTimeoutSeconds,
      fileCopyIntervalSeconds: cfg.backup.fileCopyIntervalSeconds,
    },
    health: { namespace: metricNamespace(cfg.environment), ...cfg.health },
    ...(cfg.edge.cdn.enabled ? { cdnInvalidations: `cloudfront:${cdnDistributionId(ids)}` } : {}),
  };
}

/** A CDN stack's bundles must name a distribution: a missing id is the program's error, never a placeholder. */
function cdnDistributionId(ids: ResolvedIds): string {
  if (!ids.cdnDistributionId)
    throw new Error("buildTopology: cdn is on but no CloudFront distribution id was given");
  return ids.cdnDistributionId;
}

/**
 * A route broker's Lambda function name: stack-scoped and known before `up`, so bundles and node
 * policies name it while the function needs the nodes' interfaces first. At most 51 characters
 * (environment names are at most 32), under Lambda's 64.
 */
export const routeBrokerName = (environment: string, address: "writer" | "storage"): string =>
  `pypi-${environment}-route-${address}`;

/** The CloudWatch namespace of a stack's health metrics. */
export const metricNamespace = (environment: string): string => `PyPI/${environment}`;

/** Each node's bundle as `relative path -> content`. */
export function bundleEntriesOf(t: Topology): Record<string, BundleEntries> {
  return Object.fromEntries(buildBundles(t).map((b) => [b.node, Object.fromEntries(bundleDirEntries(b))]));
}

/** Each node's bundle file list; from the planned topology, so it is known before `up`. */
export const bundleFileLists = (t: Topology): Record<string, string[]> =>
  Object.fromEntries(Object.entries(bundleEntriesOf(t)).map(([node, e]) => [node, Object.keys(e)]));

/** The SSM parameters each node fetches, from its bundle: what its role may read. */
export const parametersByNode = (t: Topology): Record<string, string[]> =>
  Object.fromEntries(buildBundles(t).map((b) => [b.node, b.secrets.map((s) => s.parameter)]));
