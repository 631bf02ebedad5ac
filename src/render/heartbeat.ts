import { paths } from "../layout.js";
import { type NodeSpec, nodesWithRole, storagePair, type Topology } from "../topology.js";
import { DRBD_RESOURCE, dopdHaCfLines } from "./drbd.js";

/** Heartbeat 3 (R1 mode, `crm no`) configuration for the balancer pair and the storage pair. */
export const heartbeatPaths = {
  haCf: "/etc/ha.d/ha.cf",
  haresources: "/etc/ha.d/haresources",
  /** Written by the agent from a secret (`auth 1` / `1 sha1 <secret>`, mode 0600); never in a bundle. */
  authkeys: "/etc/ha.d/authkeys",
  resourceDir: "/etc/ha.d/resource.d",
  logfile: "/var/log/ha-log",
} as const;

export type ResourceScript = "pypi-fip" | "pypi-nfs" | "pypi-overlay";

/** Shipped by drbd-utils: makes the named DRBD resource primary on start, secondary on stop. */
export const DRBD_DISK_SCRIPT = "drbddisk";
/** Shipped by heartbeat (wraps the OCF agent from resource-agents). */
export const FILESYSTEM_SCRIPT = "Filesystem";

export const resourceScriptPath = (name: ResourceScript): string => `${heartbeatPaths.resourceDir}/${name}`;

/**
 * The single value helper for ha.cf and haresources. Neither format has quoting: a value is a
 * whitespace-delimited token, `#` starts a comment and `::` separates resource arguments, so any
 * value carrying those is rejected rather than escaped.
 */
export function haToken(field: string, value: string | number): string {
  const text = String(value);
  if (text === "" || /[\s#:]/.test(text) || [...text].some((c) => c.charCodeAt(0) < 0x20 || c === "\x7f")) {
    throw new Error(
      `heartbeat: ${field} must be a non-empty token without whitespace, "#" or ":"; got ${JSON.stringify(text)}`,
    );
  }
  return text;
}

const ms = (field: string, value: number): string => haToken(field, `${value}ms`);

function renderHaCf(
  t: Topology,
  node: NodeSpec,
  members: readonly NodeSpec[],
  cluster: string,
  extra: readonly string[] = [],
): string {
  const hb = t.heartbeat;
  const peers = members.filter((m) => m.name !== node.name);
  return [
    `# Heartbeat ${cluster} cluster of ${t.environment}, as seen from ${node.name}.`,
    `logfile ${haToken("logfile", heartbeatPaths.logfile)}`,
    "logfacility local0",
    `keepalive ${ms("heartbeat.keepaliveMs", hb.keepaliveMs)}`,
    `warntime ${ms("heartbeat.warntimeMs", hb.warntimeMs)}`,
    `deadtime ${ms("heartbeat.deadtimeMs", hb.deadtimeMs)}`,
    `initdead ${ms("heartbeat.initdeadMs", hb.initdeadMs)}`,
    // udpport only applies to media lines that follow it.
    `udpport ${haToken("heartbeat.udpPort", hb.udpPort)}`,
    // A VPC has no broadcast or multicast.
    ...peers.map(
      (p) =>
        `ucast ${haToken(`${node.name}.interface`, node.interface)} ${haToken(`${p.name}.privateIp`, p.privateIp)}`,
    ),
    `auto_failback ${hb.autoFailback ? "on" : "off"}`,
    // Only the nodes listed here may join; nobody is added on the fly.
    "autojoin none",
    ...members.map((m) => `node ${haToken("node name", m.name)}`),
    // R1 mode: resources come from haresources, no Pacemaker.
    "crm no",
    ...extra,
    "",
  ].join("\n");
}

/** The agent loop Heartbeat keeps running on each balancer (see `pypi-balancer watch`). */
export const BALANCER_WATCH_COMMAND = `${paths.balancerTool} watch`;

/**
 * ha.cf of one balancer: unicast to the other balancer. Heartbeat v1 does not monitor its
 * resources, so it respawns the agent's watchdog, which keeps nginx up under the floating IPs.
 */
export function renderBalancerHaCf(t: Topology, node: NodeSpec): string {
  const watch = BALANCER_WATCH_COMMAND.split(" ").map((part) => haToken("respawn command", part));
  return renderHaCf(t, node, nodesWithRole(t, "balancer"), "balancer", [`respawn root ${watch.join(" ")}`]);
}

/** haresources of the balancer pair: one group per floating IP, on its home balancer. */
export function renderBalancerHaresources(t: Topology): string {
  return [
    "# <home balancer> <resource>::<argument>; the peer takes a group over while its home is down.",
    ...t.floatingIps.map(
      (fip) =>
        `${haToken("floatingIps.home", fip.home)} pypi-fip::${haToken("floatingIps.address", fip.address)}`,
    ),
    "",
  ].join("\n");
}

/** ha.cf of one storage-pair app server: unicast to the other one. */
export function renderStorageHaCf(t: Topology, node: NodeSpec): string {
  // dopd carries DRBD's fence-peer requests over Heartbeat's links; the lab has no DRBD to fence.
  return renderHaCf(t, node, storagePair(t), "storage", t.backend === "aws" ? dopdHaCfLines : []);
}

/**
 * haresources of the storage pair: one group, homed on the first app server, started left to
 * right (DRBD primary, mount, NFS server, storage overlay IP) and stopped right to left. The lab's
 * kernel has no DRBD, so its group starts at the NFS server, on the directory the lab shares.
 */
export function renderStorageHaresources(t: Topology): string {
  const [home] = storagePair(t);
  const s = t.storage;
  const volume = [
    `${DRBD_DISK_SCRIPT}::${haToken("DRBD resource", DRBD_RESOURCE)}`,
    [
      FILESYSTEM_SCRIPT,
      haToken("DRBD device", `/dev/drbd${s.drbdMinor}`),
      haToken("storage.volumeMount", s.volumeMount),
      "ext4",
    ].join("::"),
  ];
  const resources = [
    ...(t.backend === "aws" ? volume : []),
    "pypi-nfs",
    `pypi-overlay::${haToken("overlay.storage", t.overlay.storage)}`,
  ];
  return [`${haToken("storage pair home", home.name)} ${resources.join(" ")}`, ""].join("\n");
}
