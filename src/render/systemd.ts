import { cdnPurgeMarkerPath, RETRY_AFTER_FAILURE_MS } from "../app/cdn.js";
import { copyMarkerPath } from "../app/copies.js";
import { APP_ENV_FILE, paths } from "../layout.js";
import { nodesWithRole, type Topology } from "../topology.js";
import { indexAppEnv } from "./apache.js";
import { uploadDir } from "./sshd.js";

export const REGISTER_UNIT = "pypi-index-register";
/** The app server of the appserver runtime. */
export const APP_SERVER_UNIT = "pypi-index" as const;
export const appServerUnitPath = `/etc/systemd/system/${APP_SERVER_UNIT}.service`;
export const appEnvPath = APP_ENV_FILE;
export const indexScriptPath = `${paths.appRoot}/index.fcgi`;

/**
 * systemd's quoting for one word of a unit setting (and an EnvironmentFile value): double quotes
 * with `\` and `"` escaped; `%` doubled, because systemd expands specifiers even inside quotes.
 */
export function systemdQuote(value: string): string {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters cannot be quoted
  if (/[\u0000-\u001f\u007f]/.test(value))
    throw new Error(`systemd: control character in ${JSON.stringify(value)}`);
  return `"${value.replace(/[\\"]/g, "\\$&").replaceAll("%", "%%")}"`;
}

/**
 * The index app's environment, for the register job and the upload watcher (Apache passes the
 * same through FcgidInitialEnv). Only the registrar reads PYPI_UPLOAD_HOSTS: every app server's
 * watcher must have published before an upload counts as closed.
 */
export function renderAppEnv(t: Topology): string {
  const hosts = nodesWithRole(t, "app").map((n) => n.name);
  const env = [...indexAppEnv(t), ["PYPI_UPLOAD_HOSTS", hosts.join(",")] as const];
  return `${env.map(([k, v]) => `${k}=${systemdQuote(v)}`).join("\n")}\n`;
}

/** A oneshot job of the index app: as www-data, confined to the package root (and `writable`). */
function appJobService(
  t: Topology,
  description: string,
  command: string,
  writable: readonly string[] = [],
  unitLines: readonly string[] = [],
): string {
  return `${[
    "[Unit]",
    `Description=${description}`,
    ...unitLines,
    "",
    "[Service]",
    "Type=oneshot",
    "User=www-data",
    "Group=www-data",
    `EnvironmentFile=${appEnvPath}`,
    `ExecStart=${indexScriptPath} ${command}`,
    "NoNewPrivileges=yes",
    "ProtectSystem=strict",
    `ReadWritePaths=${systemdQuote(t.storage.packageRoot)}`,
    ...writable,
    "PrivateTmp=yes",
  ].join("\n")}\n`;
}

export function renderRegisterService(t: Topology): string {
  return appJobService(t, "Register uploaded distributions in the package index", "register");
}

/** Runs the job as soon as an upload directory is not empty. */
export function renderRegisterPath(t: Topology): string {
  return `${[
    "[Unit]",
    "Description=Watch the SFTP upload directories",
    "",
    "[Path]",
    ...t.upload.users.map((u) => `DirectoryNotEmpty=${uploadDir(t, u.name)}`),
    `Unit=${REGISTER_UNIT}.service`,
    "",
    "[Install]",
    "WantedBy=multi-user.target",
  ].join("\n")}\n`;
}

/** register skips uploads still open for writing; the timer picks them up. */
export function renderRegisterTimer(): string {
  return `${[
    "[Unit]",
    "Description=Retry upload registration for files that were still being written",
    "",
    "[Timer]",
    "OnBootSec=1min",
    "OnUnitInactiveSec=30s",
    `Unit=${REGISTER_UNIT}.service`,
    "",
    "[Install]",
    "WantedBy=timers.target",
  ].join("\n")}\n`;
}

export const FILE_COPY_UNIT = "pypi-file-copy";

/** The lab's store is a directory, not a bucket: the job must be able to write there. */
const fileCopyDirectory = (t: Topology): string | undefined =>
  t.backup.fileCopies.startsWith("s3://") ? undefined : t.backup.fileCopies;

/** Copies registered files to the backup store; a second app server running it too is safe. */
export function renderFileCopyService(t: Topology): string {
  const dir = fileCopyDirectory(t);
  return appJobService(
    t,
    "Copy registered package files to the backup store and verify them",
    "copy-files",
    // "-": a missing store directory is the job's error to report, not a namespace failure.
    dir === undefined ? [] : [`ReadWritePaths=-${systemdQuote(dir)}`],
  );
}

/**
 * A job's wake-up: the path unit starts `unit` while `marker` exists; the job removes the marker
 * before it looks for work, so a request made during a run starts another.
 */
function markerPathUnit(description: string, marker: string, unit: string): string {
  return `${[
    "[Unit]",
    `Description=${description}`,
    "",
    "[Path]",
    `PathExists=${marker}`,
    `Unit=${unit}.service`,
    "",
    "[Install]",
    "WantedBy=multi-user.target",
  ].join("\n")}\n`;
}

/** A job's retry: `unit` again `seconds` after its last run ended (and after boot). */
function retryTimerUnit(description: string, seconds: number, unit: string): string {
  const every = `${seconds}s`;
  return `${[
    "[Unit]",
    `Description=${description}`,
    "",
    "[Timer]",
    `OnBootSec=${every}`,
    `OnUnitInactiveSec=${every}`,
    `Unit=${unit}.service`,
    "",
    "[Install]",
    "WantedBy=timers.target",
  ].join("\n")}\n`;
}

/** A registration creates the marker. */
export const renderFileCopyPath = (t: Topology): string =>
  markerPathUnit(
    "Start the package file copy when a registration asks for it",
    copyMarkerPath(t.storage.packageRoot),
    FILE_COPY_UNIT,
  );

/** Catches what the marker missed: the backfill, failed copies, a marker that could not be made. */
export const renderFileCopyTimer = (t: Topology): string =>
  retryTimerUnit("Retry the package file copy", t.backup.fileCopyIntervalSeconds, FILE_COPY_UNIT);

/** The copy job's three units, as installed on every app server. */
export function fileCopyUnitFiles(t: Topology): { path: string; content: string }[] {
  const at = (suffix: string): string => `/etc/systemd/system/${FILE_COPY_UNIT}.${suffix}`;
  return [
    { path: at("service"), content: renderFileCopyService(t) },
    { path: at("path"), content: renderFileCopyPath(t) },
    { path: at("timer"), content: renderFileCopyTimer(t) },
  ];
}

export const CDN_PURGE_UNIT = "pypi-cdn-purge";
/** The purge job's timer: retries a failed send, and sends what the other app server queued. */
export const CDN_PURGE_RETRY_SECONDS = RETRY_AFTER_FAILURE_MS / 1000;
export const cdnPurgeUnitPath = (suffix: "service" | "path" | "timer"): string =>
  `/etc/systemd/system/${CDN_PURGE_UNIT}.${suffix}`;

/** Sends the queued CDN purge (app/cdn.ts); a second app server running it too is safe. */
export function renderCdnPurgeService(t: Topology): string {
  const target = t.cdnInvalidations ?? "";
  return appJobService(
    t,
    "Send the queued CDN purge as one invalidation",
    "cdn-purge",
    // The lab's stand-in for CloudFront is a directory the job writes.
    target.startsWith("/") ? [`ReadWritePaths=-${systemdQuote(target)}`] : [],
    // The job paces itself (the batch window; after a failed send, the timer's period): a burst
    // of uploads must not trip the start limit, which would stop the path unit for good.
    ["StartLimitIntervalSec=0"],
  );
}

/** A page change creates the marker. */
export const renderCdnPurgePath = (t: Topology): string =>
  markerPathUnit(
    "Start the CDN purge when a page change asks for it",
    cdnPurgeMarkerPath(t.storage.packageRoot),
    CDN_PURGE_UNIT,
  );

/** Catches what the marker missed: failed sends, and entries the other app server queued over NFS (no inotify). */
export const renderCdnPurgeTimer = (): string =>
  retryTimerUnit("Retry the CDN purge", CDN_PURGE_RETRY_SECONDS, CDN_PURGE_UNIT);

/** The purge job's three units, on every app server of a stack with a CDN. */
export function cdnPurgeUnitFiles(t: Topology): { path: string; content: string }[] {
  return [
    { path: cdnPurgeUnitPath("service"), content: renderCdnPurgeService(t) },
    { path: cdnPurgeUnitPath("path"), content: renderCdnPurgePath(t) },
    { path: cdnPurgeUnitPath("timer"), content: renderCdnPurgeTimer() },
  ];
}

/**
 * The app server (appserver runtime): a primary keeping appMaxProcesses FastCGI workers on a
 * socket only www-data reaches. Reload replaces the workers one at a time; stop lets them finish
 * their requests (KillMode=mixed: SIGTERM to the primary, which drains the workers; SIGKILL to
 * all after TimeoutStopSec).
 */
export function renderAppServerService(t: Topology): string {
  const drain = t.app.requestTimeoutSeconds;
  const runtimeDir = paths.appSocket.split("/")[2] as string;
  return `${[
    "[Unit]",
    "Description=PyPI index app server (FastCGI workers for Apache's mod_proxy_fcgi)",
    "Wants=network-online.target",
    "After=network-online.target",
    `RequiresMountsFor=${systemdQuote(t.storage.packageRoot)}`,
    "Before=apache2.service",
    "",
    "[Service]",
    "Type=simple",
    "User=www-data",
    "Group=www-data",
    `EnvironmentFile=${appEnvPath}`,
    `RuntimeDirectory=${runtimeDir}`,
    "RuntimeDirectoryMode=0750",
    `ExecStart=${indexScriptPath} serve --listen ${systemdQuote(paths.appSocket)} --workers ${t.app.maxProcesses} --drain-seconds ${drain}`,
    "ExecReload=/bin/kill -HUP $MAINPID",
    "KillMode=mixed",
    `TimeoutStopSec=${drain + 5}`,
    "Restart=always",
    "RestartSec=1",
    "NoNewPrivileges=yes",
    "ProtectSystem=strict",
    `ReadWritePaths=${systemdQuote(t.storage.packageRoot)}`,
    "PrivateTmp=yes",
    "",
    "[Install]",
    "WantedBy=multi-user.target",
  ].join("\n")}\n`;
}
