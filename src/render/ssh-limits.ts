import { sftpStateDir } from "../app/sftp-events.js";
import type { NodeSpec, Topology } from "../topology.js";
import { appEnvPath, indexScriptPath, systemdQuote } from "./systemd.js";

export const UPLOAD_WATCH_UNIT = "pypi-upload-watch";
export const uploadWatchUnitPath = `/etc/systemd/system/${UPLOAD_WATCH_UNIT}.service`;
export const sshLimitsDropInPath = "/etc/systemd/system/ssh.service.d/pypi-upload.conf";

/**
 * RLIMIT_FSIZE of sshd and so of every SFTP session: one byte over the upload limit, so a file
 * that reaches it is over the limit (the registrar rejects it by size) and a file of exactly the
 * limit still fits. A write past it kills the session (SIGXFSZ): the client exits non-zero.
 */
export const uploadFsizeLimit = (t: Topology): number => t.upload.maxFileBytes + 1;

/**
 * Drop-in for Debian's ssh.service on app servers: the size limit while a file is written, and
 * the upload watcher started first. Wants=, not Requires=: a watcher restart (every app
 * rollout) must not restart sshd; registration is safe without it, because it waits for a
 * fresh scan from every app server.
 */
export function renderSshLimitsDropIn(t: Topology): string {
  return `${[
    "[Unit]",
    `Wants=${UPLOAD_WATCH_UNIT}.service`,
    `After=${UPLOAD_WATCH_UNIT}.service`,
    "",
    "[Service]",
    `LimitFSIZE=${uploadFsizeLimit(t)}`,
  ].join("\n")}\n`;
}

/**
 * The upload watcher: root, because it reads every process's descriptors; it writes the volume
 * as www-data, because NFS squashes root.
 */
export function renderUploadWatchService(t: Topology, node: NodeSpec): string {
  return `${[
    "[Unit]",
    "Description=Publish which uploads are still open for writing (the registrar waits for them)",
    `RequiresMountsFor=${systemdQuote(t.storage.packageRoot)}`,
    "Before=ssh.service",
    "",
    "[Service]",
    "Type=simple",
    `EnvironmentFile=${appEnvPath}`,
    `ExecStart=${indexScriptPath} watch-uploads --host ${systemdQuote(node.name)} --write-as www-data`,
    "Restart=always",
    "RestartSec=1",
    "NoNewPrivileges=yes",
    "ProtectSystem=strict",
    `ReadWritePaths=${systemdQuote(sftpStateDir(t.storage.packageRoot))}`,
    "PrivateTmp=yes",
    "",
    "[Install]",
    "WantedBy=multi-user.target",
  ].join("\n")}\n`;
}
