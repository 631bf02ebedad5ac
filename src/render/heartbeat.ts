import { type NodeSpec, nodesWithRole, paths, storagePair, type Topology } from "../topology.js";
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

/** Rejects timings Heartbeat refuses (or that make no sense), naming the field and value. */
export function validateHeartbeatTimings(hb: Topology["heartbeat"]): void {
  const fields = ["keepaliveMs", "warntimeMs", "deadtimeMs", "initdeadMs"] as const;
  for (const f of fields) {
    if (!Number.isInteger(hb[f]) || hb[f] <= 0) {
      throw new Error(
        `heartbeat.${f} must be a positive integer of milliseconds; got ${JSON.stringify(hb[f])}`,
      );
    }
  }
  if (!Number.isInteger(hb.udpPort) || hb.udpPort < 1 || hb.udpPort > 65535) {
    throw new Error(`heartbeat.udpPort must be a port number; got ${JSON.stringify(hb.udpPort)}`);
  }
  // Heartbeat itself refuses to start on the next two ("Dead time ... too small compared to keepalive").
  if (hb.deadtimeMs <= 2 * hb.keepaliveMs) {
    throw new Error(
      `heartbeat.deadtimeMs must be more than twice keepaliveMs (${hb.keepaliveMs}); got ${hb.deadtimeMs}`,
    );
  }
  if (hb.initdeadMs < hb.deadtimeMs) {
    throw new Error(
      `heartbeat.initdeadMs must be at least deadtimeMs (${hb.deadtimeMs}); got ${hb.initdeadMs}`,
    );
  }
  if (hb.warntimeMs <= hb.keepaliveMs || hb.warntimeMs >= hb.deadtimeMs) {
    throw new Error(
      `heartbeat.warntimeMs must lie between keepaliveMs (${hb.keepaliveMs}) and deadtimeMs (${hb.deadtimeMs}); got ${hb.warntimeMs}`,
    );
  }
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
  validateHeartbeatTimings(hb);
  if (!members.some((m) => m.name === node.name)) {
    throw new Error(`heartbeat: node "${node.name}" is not a member of the ${cluster} cluster`);
  }
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

function balancers(t: Topology): [NodeSpec, NodeSpec] {
  const lbs = nodesWithRole(t, "balancer");
  const [a, b] = lbs;
  if (!a || !b || lbs.length !== 2) {
    throw new Error(`heartbeat: topology ${t.environment} needs exactly two balancers; got ${lbs.length}`);
  }
  return [a, b];
}

/** The agent loop Heartbeat keeps running on each balancer (see `pypi-node watch`). */
export const BALANCER_WATCH_COMMAND = `${paths.agent} watch`;

/**
 * ha.cf of one balancer: unicast to the other balancer. Heartbeat v1 does not monitor its
 * resources, so it respawns the agent's watchdog, which keeps nginx up under the floating IPs.
 */
export function renderBalancerHaCf(t: Topology, node: NodeSpec): string {
  const watch = BALANCER_WATCH_COMMAND.split(" ").map((part) => haToken("respawn command", part));
  return renderHaCf(t, node, balancers(t), "balancer", [`respawn root ${watch.join(" ")}`]);
}

/** haresources of the balancer pair: one group per floating IP, on its home balancer. */
export function renderBalancerHaresources(t: Topology): string {
  const names = balancers(t).map((n) => n.name);
  if (t.floatingIps.length === 0) throw new Error(`heartbeat: topology ${t.environment} has no floating IPs`);
  return [
    "# <home balancer> <resource>::<argument>; the peer takes a group over while its home is down.",
    ...t.floatingIps.map((fip) => {
      if (!names.includes(fip.home)) {
        throw new Error(
          `heartbeat: floating IP ${fip.address} has home "${fip.home}", which is not a balancer`,
        );
      }
      return `${haToken("floatingIps.home", fip.home)} pypi-fip::${haToken("floatingIps.address", fip.address)}`;
    }),
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
  if (!Number.isInteger(s.drbdMinor) || s.drbdMinor < 0) {
    throw new Error(
      `heartbeat: storage.drbdMinor must be a non-negative integer; got ${JSON.stringify(s.drbdMinor)}`,
    );
  }
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
