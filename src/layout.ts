/**
 * Where things live on a node and which ports they use: one module for every fixed on-node path
 * and port, shared by the plan, the renderers, the agent, the runbooks and the lab.
 */

/** Fixed ports of the deployment. */
export const ports = {
  http: 80,
  https: 443,
  /** Upload SFTP at the floating IPs (HAProxy) and at the app servers' upload sshd. */
  upload: 22,
  uploadBackend: 22,
  heartbeatUdp: 694,
  postgres: 5432,
  drbd: 7788,
} as const;

/** Postgres connections each index app worker's pool may open. */
/** The app's environment on an app server (systemd EnvironmentFile format), written by the agent. */
export const APP_ENV_FILE = "/etc/pypi-index/env";

/** Upload form fields besides the file (metadata text, a long description included). */
export const UPLOAD_FORM_OVERHEAD_BYTES = 1024 * 1024;

/** The largest upload request body; nginx, Apache and the app are all set from this one figure. */
export const uploadBodyLimit = (maxFileBytes: number): number => maxFileBytes + UPLOAD_FORM_OVERHEAD_BYTES;

export const APP_DB_POOL = 2;

/** Network interface of the primary address on Nitro instances. */
export const NITRO_INTERFACE = "ens5";

/** Fixed parts of every AWS deployment's topology that no config key sets. */
export const layout = {
  postgres: {
    database: "pypi",
    appUser: "pypi_app",
    replicationUser: "replicator",
    slotName: "standby_slot",
    walKeepMb: 1024,
    maxSlotWalKeepMb: 8192,
  },
  storage: {
    /** Before the volume id is known; the agent uses the volume's by-id name. */
    device: "/dev/nvme1n1",
    drbdMinor: 0,
    volumeMount: "/srv/pypi-volume",
    packageRoot: "/srv/pypi",
  },
  tls: { certificatePath: "/etc/pypi/tls/fullchain.pem", keyPath: "/etc/pypi/tls/privkey.pem" },
  backup: { stanza: "pypi" },
} as const;

/** Paths shared by renderers, the node agent and the runbooks. */
export const paths = {
  agent: "/usr/local/sbin/pypi-node",
  /** The shell library every agent script sources. */
  agentLib: "/usr/local/lib/pypi-node/lib.sh",
  /** The database tool (db nodes). */
  dbTool: "/usr/local/sbin/pypi-db",
  /** The app server tool: converge, checks and the index app's jobs (app nodes). */
  appTool: "/usr/local/sbin/pypi-app",
  /** The balancer tool: the nginx watchdog and the upload backends (balancers). */
  balancerTool: "/usr/local/sbin/pypi-balancer",
  /** Filesystem use and online grow, on every node. */
  volumeTool: "/usr/local/sbin/pypi-volume",
  /** The health model's probes (`pypi-node health`), on every node. */
  healthTool: "/usr/local/sbin/pypi-health",
  agentConfig: "/etc/pypi-node/node.env",
  agentState: "/var/lib/pypi-node",
  /** recovery.conf (Postgres before 12) as the agent installs it when it makes a standby. */
  pgRecoveryTemplate: "/etc/pypi-node/postgres/recovery.conf",
  haproxySocket: "/run/haproxy/admin.sock",
  staticRoot: "/srv/www/pypi-static",
  appRoot: "/opt/pypi-index",
  /** The app server's socket (appserver runtime), in its unit's RuntimeDirectory. */
  appSocket: "/run/pypi-index/app.sock",
} as const;

/**
 * The udev name of an attached EBS volume on a Nitro instance: the NVMe serial is the volume id
 * without its dash. `/dev/nvme1n1` and friends are numbered in probe order and can swap at boot.
 */
export function dataVolumeDevice(volumeId: string): string {
  return `/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_${volumeId.replace("-", "")}`;
}

export const pgBinDir = (version: number): string => `/usr/lib/postgresql/${version}/bin`;
export const pgDataDir = (version: number): string => `/var/lib/postgresql/${version}/main`;
/** Where a db node mounts its data volume: it holds every cluster of the node (Debian's layout below it). */
export const PG_DATA_MOUNT = "/var/lib/postgresql";
export const pgConfDir = (version: number): string => `/etc/postgresql/${version}/main`;
