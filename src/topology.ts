/**
 * The fully resolved description of one deployment. The stack builds it from resolved
 * Pulumi outputs, the lab from `lab/topology.json`; `buildBundles` turns it into files.
 * Secrets appear only as references (SSM parameter names), never as values.
 */

export type NodeRole = "balancer" | "app" | "db";
export type AgentBackend = "aws" | "lab";
/**
 * How Apache runs the index app: `appserver`, its own systemd service (pypi-index.service) that
 * Apache reaches through mod_proxy_fcgi; or `fcgid`, processes mod_fcgid starts on demand.
 */
export const APP_RUNTIMES = ["appserver", "fcgid"] as const;
export type AppRuntime = (typeof APP_RUNTIMES)[number];

export interface NodeSpec {
  /** Hostname; Heartbeat and DRBD match it against `uname -n`. */
  readonly name: string;
  readonly role: NodeRole;
  readonly az: string;
  readonly privateIp: string;
  /** Balancers only: one spare secondary private IP per floating IP, in floating-IP order. */
  readonly secondaryIps: readonly string[];
  /** Network interface that carries `privateIp` (ens5 on Nitro, eth0 in the lab). */
  readonly interface: string;
  /** EC2 instance id, when known; the runbooks print it. */
  readonly instanceId?: string;
  /** Pulumi URN of the node's instance, when known; the rebuild runbook replaces it. */
  readonly urn?: string;
  /**
   * EBS volume id of the node's data volume (db nodes: Postgres; the storage pair: DRBD's
   * backing disk). The agent finds it by its stable NVMe name, never by probe order.
   */
  readonly dataVolumeId?: string;
}

export interface FloatingIp {
  readonly address: string;
  /** EIP allocation id (`eipalloc-…`); the lab uses a placeholder. */
  readonly allocationId: string;
  /** Name of the balancer that holds this address while it is up. */
  readonly home: string;
}

export interface SecretRef {
  /** SSM SecureString parameter name (AWS) or key in the lab secret store. */
  readonly parameter: string;
}

export interface Topology {
  /** Stack name: `staging`, `prod`, `lab`. Used in names and in the runbooks. */
  readonly environment: string;
  readonly backend: AgentBackend;
  readonly region: string;
  readonly vpcCidr: string;
  /** Public host name served by nginx and put in the runbooks. */
  readonly domain: string;
  readonly nodes: readonly NodeSpec[];
  readonly floatingIps: readonly FloatingIp[];
  readonly overlay: {
    /** Writer address that follows the Postgres primary; outside the VPC CIDR. */
    readonly dbWriter: string;
    /** NFS address that follows the DRBD primary; outside the VPC CIDR. */
    readonly storage: string;
    /** Route tables that carry the overlay routes (AWS backend); the agent reads them for status. */
    readonly routeTableIds: readonly string[];
    /**
     * Lambda functions that move the overlay routes on failover, by name (AWS backend only): a
     * node never holds ec2:ReplaceRoute, it invokes the broker of the address it may hold.
     */
    readonly routeBrokers?: { readonly writer: string; readonly storage: string };
  };
  readonly postgres: {
    /** Major version: 9.6, 10 and 11 render recovery.conf; 12 and later standby.signal. */
    readonly version: number;
    readonly synchronous: boolean;
    readonly port: number;
    readonly database: string;
    readonly appUser: string;
    readonly replicationUser: string;
    readonly slotName: string;
    /** WAL kept for a lagging standby, in MB (wal_keep_size, or segments before 13). */
    readonly walKeepMb: number;
    /**
     * WAL a replication slot may hold back, in MB (`max_slot_wal_keep_size`, 13+). A standby gone
     * for longer loses its slot and must be re-seeded, instead of the primary's disk filling up.
     */
    readonly maxSlotWalKeepMb: number;
    /** Directory of the server binaries; Debian's layout unless overridden (the lab's Postgres 11). */
    readonly binDir: string;
  };
  readonly heartbeat: {
    readonly udpPort: number;
    readonly keepaliveMs: number;
    readonly warntimeMs: number;
    readonly deadtimeMs: number;
    readonly initdeadMs: number;
    readonly autoFailback: boolean;
  };
  readonly upload: {
    /** Port HAProxy listens on at the floating IPs. */
    readonly port: number;
    /** Port of the upload sshd on the app servers. */
    readonly backendPort: number;
    /** Fixed uids: uploads land on the shared volume, so every app server must agree. */
    readonly users: readonly { readonly name: string; readonly uid: number; readonly publicKey: string }[];
    readonly maxFileBytes: number;
    /** A refused SFTP upload is kept this long in rejected/, then removed. */
    readonly rejectedRetentionDays: number;
  };
  readonly app: {
    readonly runtime: AppRuntime;
    readonly httpPort: number;
    readonly maxProcesses: number;
    readonly requestTimeoutSeconds: number;
  };
  readonly storage: {
    /** Block device DRBD sits on (the EBS data volume). */
    readonly device: string;
    readonly drbdPort: number;
    readonly drbdMinor: number;
    /** Where the DRBD primary mounts the volume. */
    readonly volumeMount: string;
    /** Where every app server mounts the NFS export (the package root). */
    readonly packageRoot: string;
  };
  readonly tls: {
    readonly certificatePath: string;
    readonly keyPath: string;
  };
  readonly secrets: {
    readonly balancerAuthkey: SecretRef;
    readonly storageAuthkey: SecretRef;
    readonly postgresReplicationPassword: SecretRef;
    readonly postgresAppPassword: SecretRef;
    readonly tlsKey: SecretRef;
    /** The certificate chain is public, but travels the same way as the key. */
    readonly tlsCertificate: SecretRef;
    /** One ed25519 host key shared by all app servers, so clients see one host behind HAProxy. */
    readonly uploadHostKey: SecretRef;
    /** DRBD peer authentication (`shared-secret`). */
    readonly drbdSecret: SecretRef;
  };
  /** Where nodes fetch their bundle from: `s3://bucket/prefix` (AWS) or a directory (lab). */
  readonly bundleLocation: string;
  readonly backup: {
    /**
     * pgBackRest's repository: `s3://bucket/path` (AWS) or a directory (lab: a directory shared
     * by the db nodes, standing in for the bucket).
     */
    readonly repository: string;
    /** Where every registered package file is copied: `s3://bucket/path` or a directory (lab). */
    readonly fileCopies: string;
    /** pgBackRest stanza of the database cluster. */
    readonly stanza: string;
    /** Full backups kept (pgBackRest `repo1-retention-full`, by count). */
    readonly retentionFull: number;
    /** Differential backups kept (`repo1-retention-diff`). */
    readonly retentionDiff: number;
    /** systemd OnCalendar= of the full and differential backups, and of the restore test. */
    readonly fullSchedule: string;
    readonly diffSchedule: string;
    readonly restoreTestSchedule: string;
    /** Postgres `archive_timeout`: the longest a committed write waits to reach the repository. */
    readonly archiveTimeoutSeconds: number;
    /** The file copy job's timer; registration also starts it at once. */
    readonly fileCopyIntervalSeconds: number;
  };
  /** The health model's settings: how often nodes publish, and the critical thresholds. */
  readonly health: {
    /** CloudWatch namespace of the nodes' metrics (`PyPI/<environment>`); the IAM grant is scoped to it. */
    readonly namespace: string;
    /** The publish timer. */
    readonly intervalSeconds: number;
    /** Alarm period: one period with a critical value fires an alarm. */
    readonly periodSeconds: number;
    readonly diskUsePercent: number;
    readonly certDaysLeft: number;
    readonly replayLagSeconds: number;
    /** Received but not yet replayed WAL on a standby, in MiB. */
    readonly replayLagMb: number;
    readonly registerQueueSeconds: number;
    readonly backupAgeHours: number;
  };
  /**
   * Where the app servers send the CDN purge after a page change: `cloudfront:<distribution id>`
   * (AWS) or a directory standing in for CloudFront (lab). Absent without a CDN.
   */
  readonly cdnInvalidations?: string;
}

export const nodesWithRole = (t: Topology, role: NodeRole): NodeSpec[] =>
  t.nodes.filter((n) => n.role === role);

export function nodeByName(t: Topology, name: string): NodeSpec {
  const node = t.nodes.find((n) => n.name === name);
  if (!node) throw new Error(`no node named "${name}" in topology ${t.environment}`);
  return node;
}

/** The other member of a two-node pair. */
export function peerOf(t: Topology, node: NodeSpec): NodeSpec {
  const peers = nodesWithRole(t, node.role).filter((n) => n.name !== node.name);
  const peer = peers[0];
  if (!peer) throw new Error(`node "${node.name}" has no peer of role ${node.role}`);
  return peer;
}

/** The two app servers that form the DRBD/NFS storage pair: the first two by name order. */
export function storagePair(t: Topology): [NodeSpec, NodeSpec] {
  const [a, b] = nodesWithRole(t, "app");
  if (!a || !b) throw new Error(`topology ${t.environment} needs at least two app servers`);
  return [a, b];
}

/**
 * The route broker `node` invokes to take its overlay address: the writer's for the databases,
 * the storage address's for the storage pair; none for other nodes, nor in the lab.
 */
export function routeBrokerOf(t: Topology, node: NodeSpec): string | undefined {
  const brokers = t.overlay.routeBrokers;
  if (t.backend !== "aws" || brokers === undefined) return undefined;
  if (node.role === "db") return brokers.writer;
  return storagePair(t).some((n) => n.name === node.name) ? brokers.storage : undefined;
}

export const pgDialect = (version: number): "recovery.conf" | "standby.signal" =>
  version < 12 ? "recovery.conf" : "standby.signal";
