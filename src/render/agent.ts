import { readFileSync } from "node:fs";
import { dirname, relative } from "node:path";
import { NEWEST_FILES_CHECKED } from "../health.js";
import { dataVolumeDevice, PG_DATA_MOUNT, paths, pgBinDir, pgConfDir, pgDataDir } from "../layout.js";
import { projectFile } from "../project-files.js";
import {
  type NodeSpec,
  nodesWithRole,
  peerOf,
  pgDialect,
  routeBrokerOf,
  storagePair,
  type Topology,
} from "../topology.js";
import { apacheConfDir, indexDbPasswordFile } from "./apache.js";
import { bootstrapIncomingDir } from "./cloud-init.js";
import { DRBD_RESOURCE, drbdPaths } from "./drbd.js";
import { HAPROXY_CONF_PATH, UPLOAD_BACKEND } from "./haproxy.js";
import { HEALTH_TABLE_PATH } from "./health.js";
import { heartbeatPaths, resourceScriptPath } from "./heartbeat.js";
import { mountUnitName, nfsPaths } from "./nfs.js";
import { NGINX_CONF_PATH, NGINX_ERROR_LOG, NGINX_PID_PATH } from "./nginx.js";
import { PGBACKREST_CONF_PATH, PGBACKREST_SCRATCH_DIR, SCRATCH_PG_PORT } from "./pgbackrest.js";
import { PG_LOG_DIR, PG_SOCKET_DIR, PGPASS_PATH, STANDBY_SILENT_SECONDS } from "./postgres.js";
import { uploadWatchUnitPath } from "./ssh-limits.js";
import { uploadHostKeyPath } from "./sshd.js";
import { appEnvPath, indexScriptPath } from "./systemd.js";

/** POSIX shell single-quoting: the only escaping node.env needs. */
export function shQuote(value: string): string {
  return `'${value.replaceAll("'", `'"'"'`)}'`;
}

/** The agent's scripts: a library and the tools, Heartbeat resource scripts and DRBD handler that source it. */
export type AgentScript =
  | "lib"
  | "pypi-node"
  | "pypi-db"
  | "pypi-app"
  | "pypi-balancer"
  | "pypi-volume"
  | "pypi-health"
  | "pypi-fip"
  | "pypi-nfs"
  | "pypi-overlay"
  | "pypi-drbd";

/** Where each script is installed; the resource scripts live where Heartbeat looks for them. */
export const agentScriptPaths: Record<AgentScript, string> = {
  lib: paths.agentLib,
  "pypi-node": paths.agent,
  "pypi-db": paths.dbTool,
  "pypi-app": paths.appTool,
  "pypi-balancer": paths.balancerTool,
  "pypi-volume": paths.volumeTool,
  "pypi-health": paths.healthTool,
  "pypi-fip": resourceScriptPath("pypi-fip"),
  "pypi-nfs": resourceScriptPath("pypi-nfs"),
  "pypi-overlay": resourceScriptPath("pypi-overlay"),
  "pypi-drbd": drbdPaths.tool,
};

const sourceFile = (name: AgentScript): string => `src/agent/${name}.sh`;

/**
 * One agent script as shipped. The line that locates the library is rendered here, so its path
 * is written once: tools in the agent's own directory find it relative to themselves (so the
 * bootstrap can run them from an unpacked bundle), resource scripts at its installed path.
 */
export function agentScript(name: AgentScript = "pypi-node"): string {
  const source = readFileSync(projectFile(sourceFile(name)), "utf8");
  if (name === "lib") return source;
  const [shebang, ...rest] = source.split("\n");
  const own = agentScriptPaths[name];
  const lib =
    dirname(own) === dirname(paths.agent)
      ? `PYPI_LIB="$(dirname "$0")/${relative(dirname(own), paths.agentLib)}"`
      : `PYPI_LIB=${shQuote(paths.agentLib)}`;
  return [shebang, lib, ...rest].join("\n");
}

export const PG_PASSFILE = PGPASS_PATH;
/** The app's database credentials as a pgpass file, readable by the app's user only. */
export const APP_PASSFILE = indexDbPasswordFile;

/** An app server's part in the storage pair: `home` forces DRBD's first sync, `peer`, or `none`. */
function storageRole(t: Topology, node: NodeSpec): "home" | "peer" | "none" {
  const [home, peer] = storagePair(t);
  if (home.name === node.name) return "home";
  return peer.name === node.name ? "peer" : "none";
}

/**
 * `paths.agentConfig`: everything the agent needs to know about this node, every path it uses that
 * a renderer or the bundle also writes included, so each such path is written once, here in
 * TypeScript (tests/agent/paths.test.ts holds the scripts to that). The path of this file itself
 * is the one exception: lib.sh defaults PYPI_NODE_CONFIG to it.
 */
export function renderAgentEnv(t: Topology, node: NodeSpec, services: readonly string[]): string {
  const vars: [string, string][] = [
    ["PYPI_ENVIRONMENT", t.environment],
    ["PYPI_BACKEND", t.backend],
    ["PYPI_SERVICE_MANAGER", t.backend === "aws" ? "systemd" : "direct"],
    ["PYPI_NODE", node.name],
    ["PYPI_ROLE", node.role],
    ["PYPI_IFACE", node.interface],
    ["PYPI_REGION", t.region],
    ["PYPI_SERVICES", services.join(" ")],
    ["PYPI_AGENT_STATE", paths.agentState],
    // `pypi-node apply` without an argument applies what the bootstrap fetched last.
    ["PYPI_BUNDLE_DIR", bootstrapIncomingDir],
    ["PYPI_OVERLAY_DB", t.overlay.dbWriter],
    ["PYPI_OVERLAY_STORAGE", t.overlay.storage],
    ["PYPI_ROUTE_TABLES", t.overlay.routeTableIds.join(" ")],
    ...[routeBrokerOf(t, node)].flatMap((fn): [string, string][] => (fn ? [["PYPI_ROUTE_BROKER", fn]] : [])),
    ["PYPI_HEALTH_TOOL", agentScriptPaths["pypi-health"]],
    ["PYPI_VOLUME_TOOL", agentScriptPaths["pypi-volume"]],
    ["PYPI_HEALTH_TABLE", HEALTH_TABLE_PATH],
    ["PYPI_HEALTH_NAMESPACE", t.health.namespace],
    // Where the bundles install units and drop-ins; the lab's direct start reads them from there.
    ["PYPI_UNIT_DIR", dirname(uploadWatchUnitPath)],
  ];
  if (t.backend === "lab")
    vars.push(
      ["PYPI_SECRETS_DIR", `${t.bundleLocation}/secrets`],
      // The lab's stand-in for the route tables, shared by every node (see pypi-overlay holder).
      ["PYPI_LAB_CLOUD", `${t.bundleLocation}/cloud`],
    );
  if (node.dataVolumeId !== undefined) vars.push(["PYPI_DATA_DEVICE", dataVolumeDevice(node.dataVolumeId)]);
  if (services.includes("heartbeat"))
    vars.push(["PYPI_HA_CF", heartbeatPaths.haCf], ["PYPI_HA_LOG", heartbeatPaths.logfile]);
  if (node.role === "balancer") {
    const fips = t.floatingIps.map(
      (fip, i) => `${fip.address}=${fip.allocationId}=${node.secondaryIps[i] ?? ""}`,
    );
    vars.push(
      ["PYPI_BALANCER_TOOL", agentScriptPaths["pypi-balancer"]],
      ["PYPI_FIP_SCRIPT", agentScriptPaths["pypi-fip"]],
      ["PYPI_FIPS", fips.join(" ")],
      ["PYPI_UPLOAD_BACKEND", UPLOAD_BACKEND],
      ["PYPI_HAPROXY_SOCKET", paths.haproxySocket],
      ["PYPI_HAPROXY_CONF", HAPROXY_CONF_PATH],
      ["PYPI_NGINX_CONF", NGINX_CONF_PATH],
      ["PYPI_NGINX_PID", NGINX_PID_PATH],
      ["PYPI_NGINX_ERROR_LOG", NGINX_ERROR_LOG],
      ["PYPI_PEER_NODE", peerOf(t, node).name],
      [
        "PYPI_PEER_FIPS",
        t.floatingIps
          .filter((f) => f.home === peerOf(t, node).name)
          .map((f) => f.address)
          .join(" "),
      ],
      ["PYPI_TLS_CERT", t.tls.certificatePath],
    );
  }
  if (node.role === "db") {
    const pg = t.postgres;
    const peer = peerOf(t, node);
    vars.push(
      ["PYPI_DB_TOOL", agentScriptPaths["pypi-db"]],
      ["PYPI_OVERLAY_SCRIPT", agentScriptPaths["pypi-overlay"]],
      ["PYPI_PG_VERSION", String(pg.version)],
      ["PYPI_PG_DIALECT", pgDialect(pg.version)],
      ["PYPI_PG_BIN", pg.binDir],
      ["PYPI_PG_DATA", pgDataDir(pg.version)],
      ["PYPI_PG_CONF", pgConfDir(pg.version)],
      ["PYPI_PG_PORT", String(pg.port)],
      ["PYPI_PG_PEER", peer.privateIp],
      ["PYPI_PG_REPL_USER", pg.replicationUser],
      ["PYPI_PG_SLOT", pg.slotName],
      ["PYPI_PG_PASSFILE", PG_PASSFILE],
      ["PYPI_PG_SOCKET_DIR", PG_SOCKET_DIR],
      // Where pg_ctlcluster logs; the lab's direct start logs there too.
      ["PYPI_PG_LOG", `${PG_LOG_DIR}/postgresql-${pg.version}-main.log`],
      // Debian's versions side by side: clients come from the newest when PYPI_PG_BIN lacks one.
      ["PYPI_PG_LIB_DIR", dirname(dirname(pgBinDir(pg.version)))],
      ["PYPI_PG_RECOVERY_TEMPLATE", paths.pgRecoveryTemplate],
      // `db-init` bootstraps the first db node as primary and base-backs-up the other from it.
      ["PYPI_PG_INITIAL_ROLE", nodesWithRole(t, "db")[0]?.name === node.name ? "primary" : "standby"],
      ["PYPI_PG_DATABASE", pg.database],
      ["PYPI_PG_APP_USER", pg.appUser],
      ["PYPI_SECRET_PG_REPLICATION", t.secrets.postgresReplicationPassword.parameter],
      ["PYPI_SECRET_PG_APP", t.secrets.postgresAppPassword.parameter],
      // The data volume holds every cluster of the node (Debian's layout below it).
      ["PYPI_DATA_MOUNT", PG_DATA_MOUNT],
      ["PYPI_PGBR_CONF", PGBACKREST_CONF_PATH],
      ["PYPI_PGBR_STANZA", t.backup.stanza],
      ["PYPI_PGBR_SCRATCH", PGBACKREST_SCRATCH_DIR],
      ["PYPI_PGBR_SCRATCH_PORT", String(SCRATCH_PG_PORT)],
      ["PYPI_PG_MAX_SLOT_WAL_MB", String(pg.maxSlotWalKeepMb)],
      ["PYPI_PG_STANDBY_SILENT_SECONDS", String(STANDBY_SILENT_SECONDS)],
    );
  }
  if (node.role === "app") {
    vars.push(
      ["PYPI_APP_TOOL", agentScriptPaths["pypi-app"]],
      [
        "PYPI_APP_SERVERS",
        nodesWithRole(t, "app")
          .map((n) => n.name)
          .join(" "),
      ],
      // For `db-writer-check`, which connects through the writer address as the app does.
      ["PYPI_PG_PORT", String(t.postgres.port)],
      ["PYPI_PG_DATABASE", t.postgres.database],
      ["PYPI_PG_APP_USER", t.postgres.appUser],
      ["PYPI_APP_PASSFILE", APP_PASSFILE],
      ["PYPI_PACKAGE_ROOT", t.storage.packageRoot],
      ["PYPI_VOLUME_MOUNT", t.storage.volumeMount],
      ["PYPI_UPLOAD_USERS", t.upload.users.map((u) => `${u.name}:${u.uid}`).join(" ")],
      ["PYPI_STORAGE_ROLE", storageRole(t, node)],
      ["PYPI_DRBD_RESOURCE", DRBD_RESOURCE],
      ["PYPI_DRBD_MINOR", String(t.storage.drbdMinor)],
      ["PYPI_PACKAGE_MOUNT_UNIT", t.backend === "aws" ? mountUnitName(t.storage.packageRoot) : ""],
      ["PYPI_APP_ENV", appEnvPath],
      ["PYPI_APP_SCRIPT", indexScriptPath],
      ["PYPI_APP_SOCKET", paths.appSocket],
      ["PYPI_APACHE_DIR", apacheConfDir],
      ["PYPI_UPLOAD_HOST_KEY", uploadHostKeyPath],
      ["PYPI_DOMAIN", t.domain],
      ["PYPI_HEALTH_NEWEST_FILES", String(NEWEST_FILES_CHECKED)],
      ["PYPI_APP_HEALTH_URL", `http://${node.privateIp}:${t.app.httpPort}/_health`],
    );
    if (storageRole(t, node) !== "none")
      vars.push(
        ["PYPI_OVERLAY_SCRIPT", agentScriptPaths["pypi-overlay"]],
        ["PYPI_NFS_SCRIPT", agentScriptPaths["pypi-nfs"]],
        ["PYPI_DRBD_TOOL", agentScriptPaths["pypi-drbd"]],
        ["PYPI_DRBD_DIR", dirname(drbdPaths.resource)],
        ["PYPI_NFS_EXPORTS", nfsPaths.exports],
      );
  }
  return `${vars.map(([key, value]) => `${key}=${shQuote(value)}`).join("\n")}\n`;
}
