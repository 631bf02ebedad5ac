import { nodesWithRole, type Topology } from "../topology.js";

/**
 * NFS for the package volume: the storage primary exports the DRBD-backed mount, every app
 * server (the primary included) mounts it through the storage overlay address.
 *
 * NFSv3 over TCP, not v4: a v3 server keeps no client state, so after a failover the new primary
 * answers the same file handles (same fsid) as soon as the overlay address moves. A v4 server
 * would start a grace period (90 s by default) refusing new opens, because the old primary's
 * client state died with it.
 */
export const nfsPaths = {
  exports: "/etc/exports",
  /** Pins mountd to a fixed port so the security group can name it. */
  conf: "/etc/nfs.conf.d/pypi.conf",
} as const;

/** Same number on both storage nodes, so file handles stay valid across a failover. */
export const PACKAGE_EXPORT_FSID = 7001;
export const MOUNTD_PORT = 20048;
/** Ports the storage pair must accept from app servers: rpcbind, nfsd, mountd (TCP). */
export const NFS_SERVER_PORTS = [111, 2049, MOUNTD_PORT] as const;

/**
 * `hard`: I/O blocks and retries across a failover instead of surfacing EIO to Apache or sftp.
 * `timeo=100` (10 s) with 3 retransmissions: a retry reaches the new primary soon after the
 * address moves. `nolock`: NLM lock state would not survive a failover, and nothing coordinates
 * through file locks on the package root (the database does).
 */
export const NFS_MOUNT_OPTIONS = [
  "vers=3",
  "proto=tcp",
  "hard",
  "timeo=100",
  "retrans=3",
  "nolock",
  "noatime",
] as const;

/**
 * The single value helper for /etc/exports, nfs.conf and the mount unit: all three take bare
 * tokens, where whitespace, quotes, `#`, `%`, `(`, `)` and `,` would change the meaning, so values
 * carrying them are rejected.
 */
export function nfsToken(field: string, value: string | number): string {
  const text = String(value);
  if (!/^[A-Za-z0-9._/:=-]+$/.test(text)) {
    throw new Error(`nfs: ${field} must be a plain token ([A-Za-z0-9._/:=-]); got ${JSON.stringify(text)}`);
  }
  return text;
}

/** `/etc/exports` of the storage pair (whichever node is primary serves it). */
export function renderExports(t: Topology): string {
  const apps = nodesWithRole(t, "app");
  const options = `rw,sync,no_subtree_check,root_squash,fsid=${nfsToken("fsid", PACKAGE_EXPORT_FSID)}`;
  const clients = [
    ...apps.map((n) => `${nfsToken(`${n.name}.privateIp`, n.privateIp)}/32(${options})`),
    // The primary mounts its own export through the overlay address, which is then also the source.
    `${nfsToken("overlay.storage", t.overlay.storage)}/32(${options})`,
  ];
  return [
    `# Package volume of ${t.environment}: app servers only, root squashed, synchronous.`,
    `${nfsToken("storage.volumeMount", t.storage.volumeMount)} ${clients.join(" ")}`,
    "",
  ].join("\n");
}

/** `/etc/nfs.conf.d/pypi.conf`: v3 only, mountd on a fixed port. */
export function renderNfsConf(): string {
  return [
    "[nfsd]",
    "vers3=y",
    "vers4=n",
    "[mountd]",
    `port=${nfsToken("mountd port", MOUNTD_PORT)}`,
    "",
  ].join("\n");
}

/** `<overlay>:<volumeMount>`, what every app server mounts. */
export function nfsMountSource(t: Topology): string {
  return `${nfsToken("overlay.storage", t.overlay.storage)}:${nfsToken("storage.volumeMount", t.storage.volumeMount)}`;
}

/** systemd's unit-name escaping of a mount point (`/srv/pypi` -> `srv-pypi`). */
export function mountUnitName(where: string): string {
  const path = nfsToken("mount point", where).replace(/\/+$/, "").replace(/^\/+/, "");
  if (path === "") return "-.mount";
  const escaped = path
    .split("/")
    .filter((s) => s !== "")
    .map((seg) =>
      seg.replace(/^\./, "\\x2e").replace(/[^A-Za-z0-9:_.]/g, (c) => `\\x${c.charCodeAt(0).toString(16)}`),
    )
    .join("-");
  return `${escaped}.mount`;
}

/** Path of the mount unit on every app server. */
export const packageMountUnitPath = (t: Topology): string =>
  `/etc/systemd/system/${mountUnitName(t.storage.packageRoot)}`;

/** The mount unit that puts the package volume at `storage.packageRoot` on every app server. */
export function renderPackageMount(t: Topology): string {
  return [
    "[Unit]",
    `Description=PyPI package volume (${nfsToken("environment", t.environment)})`,
    "After=network-online.target",
    "Wants=network-online.target",
    "",
    "[Mount]",
    `What=${nfsMountSource(t)}`,
    `Where=${nfsToken("storage.packageRoot", t.storage.packageRoot)}`,
    "Type=nfs",
    `Options=${NFS_MOUNT_OPTIONS.join(",")}`,
    "",
    "[Install]",
    "WantedBy=remote-fs.target",
    "",
  ].join("\n");
}
