import { APP_ENV_FILE, paths } from "../layout.js";
import { nodesWithRole, type Topology } from "../topology.js";
import { indexAppEnv } from "./apache.js";
import { uploadDir } from "./sshd.js";

export const REGISTER_UNIT = "pypi-index-register";
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

export function renderRegisterService(t: Topology): string {
  return `${[
    "[Unit]",
    "Description=Register uploaded distributions in the package index",
    "",
    "[Service]",
    "Type=oneshot",
    "User=www-data",
    "Group=www-data",
    `EnvironmentFile=${appEnvPath}`,
    `ExecStart=${indexScriptPath} register`,
    "NoNewPrivileges=yes",
    "ProtectSystem=strict",
    `ReadWritePaths=${systemdQuote(t.storage.packageRoot)}`,
    "PrivateTmp=yes",
  ].join("\n")}\n`;
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
