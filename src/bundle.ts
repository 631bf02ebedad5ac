import { posix } from "node:path";
import { indexAppScript } from "./app-artifact.js";
import type { BundleFile, NodeBundle, SecretFetch, ServiceName } from "./bundle-types.js";
import { paths } from "./layout.js";
import {
  type AgentScript,
  APP_PASSFILE,
  agentScript,
  agentScriptPaths,
  renderAgentEnv,
} from "./render/agent.js";
import {
  apacheModules,
  apacheModulesOfOtherRuntimes,
  apachePortsPath,
  apacheSecurityConfPath,
  apacheSitePath,
  renderApachePorts,
  renderApacheSecurityConf,
  renderApacheSite,
  renderRobotsTxt,
  robotsTxtPath,
} from "./render/apache.js";
import { drbdPaths, renderDrbdGlobalCommon, renderDrbdResource } from "./render/drbd.js";
import { HAPROXY_CONF_PATH, renderHaproxyCfg } from "./render/haproxy.js";
import {
  HEALTH_TABLE_PATH,
  HEALTH_UNIT,
  healthUnitPath,
  renderHealthService,
  renderHealthTimer,
  renderNodeHealthTable,
} from "./render/health.js";
import {
  heartbeatPaths,
  renderBalancerHaCf,
  renderBalancerHaresources,
  renderStorageHaCf,
  renderStorageHaresources,
} from "./render/heartbeat.js";
import {
  nfsPaths,
  packageMountUnitPath,
  renderExports,
  renderNfsConf,
  renderPackageMount,
} from "./render/nfs.js";
import { NGINX_CONF_PATH, renderNginxConf } from "./render/nginx.js";
import {
  BACKUP_UNITS,
  type BackupUnit,
  PGBACKREST_CONF_PATH,
  renderBackupUnits,
  renderPgbackrestConf,
} from "./render/pgbackrest.js";
import { PGPASS_PATH, renderPostgresFiles, renderRecoveryConf } from "./render/postgres.js";
import {
  renderSshLimitsDropIn,
  renderUploadWatchService,
  sshLimitsDropInPath,
  UPLOAD_WATCH_UNIT,
  uploadWatchUnitPath,
} from "./render/ssh-limits.js";
import {
  authorizedKeysPath,
  renderAuthorizedKeys,
  renderSshdConfig,
  sshdConfigPath,
  uploadHostKeyPath,
} from "./render/sshd.js";
import {
  APP_SERVER_UNIT,
  appEnvPath,
  appServerUnitPath,
  CDN_PURGE_UNIT,
  cdnPurgeUnitFiles,
  cdnPurgeUnitPath,
  FILE_COPY_UNIT,
  fileCopyUnitFiles,
  indexScriptPath,
  REGISTER_UNIT,
  renderAppEnv,
  renderAppServerService,
  renderRegisterPath,
  renderRegisterService,
  renderRegisterTimer,
} from "./render/systemd.js";
import { parseTopology } from "./schema.js";
import { type NodeSpec, pgDialect, storagePair, type Topology } from "./topology.js";

/** Where db nodes keep the recovery.conf the agent installs when it re-attaches a standby. */
export const RECOVERY_TEMPLATE_PATH = paths.pgRecoveryTemplate;

/** Modules whose Debian package ships a `.conf` next to the `.load`. */
const APACHE_MODULES_WITH_CONF = new Set(["alias", "fcgid", "mime", "proxy", "setenvif"]);

const moduleLinks = (module: string): string[] =>
  (APACHE_MODULES_WITH_CONF.has(module) ? ["load", "conf"] : ["load"]).map(
    (ext) => `/etc/apache2/mods-enabled/${module}.${ext}`,
  );

const root = { owner: "root", group: "root" } as const;

function file(path: string, content: string, extra: Partial<BundleFile> = {}): BundleFile {
  return { path, mode: "0644", ...root, content, reloads: [], ...extra };
}

function secret(
  parameter: string,
  path: string,
  format: SecretFetch["format"],
  reloads: readonly ServiceName[],
  extra: Partial<SecretFetch> = {},
): SecretFetch {
  return { parameter, path, mode: "0600", ...root, format, reloads, ...extra };
}

function agentFiles(t: Topology, node: NodeSpec, services: readonly ServiceName[]): BundleFile[] {
  return [
    script("lib"),
    script("pypi-node"),
    script("pypi-volume"),
    ...roleScripts[node.role].map(script),
    file(paths.agentConfig, renderAgentEnv(t, node, services)),
  ];
}

/** Where an older bundle installed the DRBD handler; an upgraded node removes it. */
export const RETIRED_DRBD_HANDLER = `${posix.dirname(paths.agentLib)}/pypi-drbd-fence`;

/** The role's own tools; the storage pair's resource scripts come with its Heartbeat files. */
const roleScripts: Record<NodeSpec["role"], AgentScript[]> = {
  balancer: ["pypi-balancer", "pypi-fip"],
  app: ["pypi-app"],
  // The writer address moves with the primary; no Heartbeat runs here, pypi-db calls the script.
  db: ["pypi-db", "pypi-overlay"],
};

/** An agent script or Heartbeat resource script, checked by `sh -n` before install. */
const script = (name: AgentScript): BundleFile =>
  file(agentScriptPaths[name], agentScript(name), {
    mode: name === "lib" ? "0644" : "0755",
    validator: "sh",
  });

function balancerBundle(t: Topology, node: NodeSpec): NodeBundle {
  const services: ServiceName[] = ["haproxy", "nginx", "heartbeat"];
  return {
    node: node.name,
    role: "balancer",
    packages: ["nginx", "haproxy", "heartbeat", "socat", "iputils-arping", "curl", "awscli"],
    services,
    stopped: [],
    files: [
      ...agentFiles(t, node, services),
      file(NGINX_CONF_PATH, renderNginxConf(t, node), { validator: "nginx", reloads: ["nginx"] }),
      file(HAPROXY_CONF_PATH, renderHaproxyCfg(t, node), { validator: "haproxy", reloads: ["haproxy"] }),
      file(heartbeatPaths.haCf, renderBalancerHaCf(t, node), { reloads: ["heartbeat"] }),
      file(heartbeatPaths.haresources, renderBalancerHaresources(t), { reloads: ["heartbeat"] }),
    ],
    absent: [],
    secrets: [
      secret(t.secrets.balancerAuthkey.parameter, heartbeatPaths.authkeys, "heartbeat-authkeys", [
        "heartbeat",
      ]),
      secret(t.secrets.tlsCertificate.parameter, t.tls.certificatePath, "raw", ["nginx"], { mode: "0644" }),
      secret(t.secrets.tlsKey.parameter, t.tls.keyPath, "raw", ["nginx"]),
    ],
  };
}

function apacheFiles(t: Topology, node: NodeSpec): BundleFile[] {
  const apache = { validator: "apache", reloads: ["apache2"] } as const;
  const modules = apacheModules(t.app.runtime).flatMap((module) =>
    moduleLinks(module).map((path) =>
      file(path, "", {
        symlinkTo: `../mods-available/${path.slice(path.lastIndexOf("/") + 1)}`,
        reloads: ["apache2"],
      }),
    ),
  );
  return [
    file(apacheSitePath, renderApacheSite(t, node), apache),
    file("/etc/apache2/sites-enabled/pypi.conf", "", {
      symlinkTo: "../sites-available/pypi.conf",
      ...apache,
    }),
    file(apachePortsPath, renderApachePorts(t, node), apache),
    file(apacheSecurityConfPath, renderApacheSecurityConf(t, node), apache),
    file(robotsTxtPath, renderRobotsTxt()),
    ...modules,
  ];
}

function appBundle(t: Topology, node: NodeSpec): NodeBundle {
  const inStoragePair = storagePair(t).some((n) => n.name === node.name);
  const appServer = t.app.runtime === "appserver";
  // What runs the app code: a new script or environment restarts it.
  const appRunner: ServiceName = appServer ? APP_SERVER_UNIT : "apache2";
  const services: ServiceName[] = [
    // Before ssh: its drop-in requires the watcher (an upload it cannot see could be registered open).
    UPLOAD_WATCH_UNIT,
    "ssh",
    // Before apache2: on a switch to this runtime the socket is there before Apache sends to it.
    ...(appServer ? [APP_SERVER_UNIT] : []),
    "apache2",
    ...(inStoragePair ? (["heartbeat"] as const) : []),
    "pypi-index-register",
    FILE_COPY_UNIT,
    ...(t.cdnInvalidations ? ([CDN_PURGE_UNIT] as const) : []),
  ];
  const storageFiles = inStoragePair
    ? [
        file(heartbeatPaths.haCf, renderStorageHaCf(t, node), { reloads: ["heartbeat"] }),
        file(heartbeatPaths.haresources, renderStorageHaresources(t), { reloads: ["heartbeat"] }),
        script("pypi-nfs"),
        script("pypi-overlay"),
        script("pypi-drbd"),
        file(drbdPaths.globalCommon, renderDrbdGlobalCommon(), { validator: "drbd" }),
        file(drbdPaths.resource, renderDrbdResource(t), { validator: "drbd", reloads: ["drbd"] }),
        file(nfsPaths.exports, renderExports(t), { validator: "exportfs", reloads: ["nfs-server"] }),
        file(nfsPaths.conf, renderNfsConf(), { reloads: ["nfs-server"] }),
      ]
    : [];
  return {
    node: node.name,
    role: "app",
    packages: [
      "apache2",
      ...(appServer ? [] : ["libapache2-mod-fcgid"]),
      "nodejs",
      "openssh-server",
      "postgresql-client",
      "nfs-common",
      ...(inStoragePair ? ["heartbeat", "drbd-utils", "nfs-kernel-server"] : []),
      "curl",
      "awscli",
    ],
    services,
    files: [
      ...agentFiles(t, node, services),
      ...apacheFiles(t, node),
      file(sshdConfigPath, renderSshdConfig(t, node), { validator: "sshd", reloads: ["ssh"] }),
      ...t.upload.users.map((u) => file(authorizedKeysPath(u.name), renderAuthorizedKeys(t, u.name))),
      ...storageFiles,
      // Every app server mounts the storage pair's export; the lab shares a directory instead.
      ...(t.backend === "aws" ? [file(packageMountUnitPath(t), renderPackageMount(t))] : []),
      // The watcher runs the same script with the same environment: a new one restarts it.
      file(indexScriptPath, indexAppScript(), { mode: "0755", reloads: [appRunner, UPLOAD_WATCH_UNIT] }),
      file(appEnvPath, renderAppEnv(t), {
        reloads: appServer ? [APP_SERVER_UNIT, UPLOAD_WATCH_UNIT] : [UPLOAD_WATCH_UNIT],
      }),
      ...(appServer
        ? [file(appServerUnitPath, renderAppServerService(t), { reloads: [APP_SERVER_UNIT] })]
        : []),
      file(uploadWatchUnitPath, renderUploadWatchService(t, node), { reloads: [UPLOAD_WATCH_UNIT] }),
      // A new LimitFSIZE needs sshd restarted, not reloaded; the agent's svc_reload sees to that.
      file(sshLimitsDropInPath, renderSshLimitsDropIn(t), { reloads: ["ssh"] }),
      file(`/etc/systemd/system/${REGISTER_UNIT}.service`, renderRegisterService(t), {
        reloads: [REGISTER_UNIT],
      }),
      file(`/etc/systemd/system/${REGISTER_UNIT}.path`, renderRegisterPath(t), { reloads: [REGISTER_UNIT] }),
      file(`/etc/systemd/system/${REGISTER_UNIT}.timer`, renderRegisterTimer(), { reloads: [REGISTER_UNIT] }),
      ...fileCopyUnitFiles(t).map((u) => file(u.path, u.content, { reloads: [FILE_COPY_UNIT] })),
      ...(t.cdnInvalidations
        ? cdnPurgeUnitFiles(t).map((u) => file(u.path, u.content, { reloads: [CDN_PURGE_UNIT] }))
        : []),
    ],
    // A stack that drops its CDN stops the purge job and removes its units.
    stopped: [
      ...(appServer ? [] : [APP_SERVER_UNIT]),
      ...(t.cdnInvalidations ? [] : ([CDN_PURGE_UNIT] as const)),
    ],
    absent: [
      "/etc/apache2/sites-enabled/000-default.conf",
      "/etc/apache2/mods-enabled/status.load",
      "/etc/apache2/mods-enabled/status.conf",
      ...apacheModulesOfOtherRuntimes(t.app.runtime).flatMap(moduleLinks),
      ...(appServer ? [] : [appServerUnitPath]),
      ...(t.cdnInvalidations ? [] : (["service", "path", "timer"] as const).map(cdnPurgeUnitPath)),
      // The DRBD handler's name before it carried the first bring-up too (now pypi-drbd).
      RETIRED_DRBD_HANDLER,
    ],
    secrets: [
      secret(t.secrets.uploadHostKey.parameter, uploadHostKeyPath, "raw", ["ssh"]),
      secret(t.secrets.postgresAppPassword.parameter, APP_PASSFILE, "pgpass", [appRunner], {
        owner: "www-data",
        group: "www-data",
        mode: "0400",
        pgpassEntry: `${t.overlay.dbWriter}:${t.postgres.port}:${t.postgres.database}:${t.postgres.appUser}`,
      }),
      ...(inStoragePair
        ? [
            secret(t.secrets.storageAuthkey.parameter, heartbeatPaths.authkeys, "heartbeat-authkeys", [
              "heartbeat",
            ]),
            secret(t.secrets.drbdSecret.parameter, drbdPaths.secret, "drbd-shared-secret", ["drbd"]),
          ]
        : []),
    ],
  };
}

function dbBundle(t: Topology, node: NodeSpec): NodeBundle {
  // Timers on both nodes: the jobs themselves skip on the node whose role is not theirs.
  const services: ServiceName[] = ["postgresql", ...Object.values(BACKUP_UNITS)];
  const v = t.postgres.version;
  // Role-independent on purpose: the standby marker is installed by `pypi-node db-reattach`,
  // so re-applying a bundle after a failover never demotes the new primary.
  const pgFiles = renderPostgresFiles(t, node, "primary");
  return {
    node: node.name,
    role: "db",
    packages: [`postgresql-${v}`, "postgresql-client", "pgbackrest", "python3", "curl", "awscli"],
    services,
    stopped: [],
    files: [
      ...agentFiles(t, node, services),
      ...pgFiles,
      file(PGBACKREST_CONF_PATH, renderPgbackrestConf(t, node), { mode: "0640", group: "postgres" }),
      ...renderBackupUnits(t).map(([path, content]) => {
        const unit = path.slice(path.lastIndexOf("/") + 1).replace(/\.(service|timer)$/, "") as BackupUnit;
        return file(path, content, { reloads: [unit] });
      }),
      ...(pgDialect(v) === "recovery.conf"
        ? [file(RECOVERY_TEMPLATE_PATH, renderRecoveryConf(t, node), { mode: "0640", group: "postgres" })]
        : []),
    ],
    absent: [],
    secrets: [
      secret(t.secrets.postgresReplicationPassword.parameter, PGPASS_PATH, "pgpass", [], {
        owner: "postgres",
        group: "postgres",
        pgpassEntry: `*:*:*:${t.postgres.replicationUser}`,
      }),
    ],
  };
}

/**
 * Every node's bundle. Pure and deterministic: the same topology gives byte-identical output.
 * Validates the topology first, so a bad input fails with the field, value and what is allowed.
 */
export function buildBundles(topology: Topology): NodeBundle[] {
  const t = parseTopology(topology);
  const byRole = { balancer: balancerBundle, app: appBundle, db: dbBundle } as const;
  return t.nodes.map((node) => withHealth(t, node, byRole[node.role](t, node)));
}

/** Every node measures and publishes its health: the table, the probe script and its timer. */
function withHealth(t: Topology, node: NodeSpec, bundle: NodeBundle): NodeBundle {
  return {
    ...bundle,
    services: [...bundle.services, HEALTH_UNIT],
    files: [
      ...bundle.files,
      script("pypi-health"),
      file(HEALTH_TABLE_PATH, renderNodeHealthTable(t, node)),
      file(healthUnitPath("service"), renderHealthService(t, paths.agent), { reloads: [HEALTH_UNIT] }),
      file(healthUnitPath("timer"), renderHealthTimer(t), { reloads: [HEALTH_UNIT] }),
    ],
  };
}
