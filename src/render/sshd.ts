import type { NodeSpec, Topology } from "../topology.js";

export const sshdConfigPath = "/etc/ssh/sshd_config";
/** Root-owned directory of per-user key files (0755; each file root:root 0644). */
export const authorizedKeysDir = "/etc/ssh/authorized_keys";
export const authorizedKeysPath = (user: string): string => `${authorizedKeysDir}/${user}`;

/**
 * The only host key. Every app server must present the same one, because HAProxy sends a client
 * to any of them; a second key type would let clients pin a per-node key.
 */
export const uploadHostKeyPath = "/etc/ssh/ssh_host_ed25519_key";

/** Chroot of each upload user: root-owned, so the user can write only below it. */
export const uploadChrootRoot = (t: Topology): string => `${t.storage.packageRoot}/incoming`;
/** The user-writable directory inside the chroot, as seen from outside it. */
export const uploadDir = (t: Topology, user: string): string => `${uploadChrootRoot(t)}/${user}/upload`;

/**
 * SFTP requests an uploader may make (`sftp-server -Q requests` lists them all): enough to put,
 * list, rename and remove files. Left out: setstat, fsetstat and lsetstat (chmod, chown, times:
 * the modes of the upload tree are not the uploader's), mkdir and rmdir, symlink, hardlink,
 * readlink, copy-data, users-groups-by-id. An allowlist, so a request a later OpenSSH adds stays off.
 */
export const sftpAllowedRequests = [
  "open",
  "close",
  "read",
  "write",
  "lstat",
  "fstat",
  "opendir",
  "readdir",
  "remove",
  "realpath",
  "stat",
  "rename",
  "posix-rename",
  "statvfs",
  "fstatvfs",
  "limits",
  "expand-path",
  "home-directory",
  "fsync",
] as const;

const sftpFlags = `-u 0022 -l INFO -p ${sftpAllowedRequests.join(",")}`;

/**
 * Quote one value for sshd_config. sshd splits arguments like a shell word list with double
 * quotes; plain tokens are left bare, anything else is double-quoted with `\` and `"` escaped.
 */
export function sshdQuote(value: string | number): string {
  if (typeof value === "number") {
    if (!Number.isSafeInteger(value) || value < 0)
      throw new Error(`sshd: not a non-negative integer: ${value}`);
    return String(value);
  }
  // biome-ignore lint/suspicious/noControlCharactersInRegex: rejecting control characters is the point
  if (value === "" || /[\u0000-\u001f\u007f]/.test(value)) {
    throw new Error(`sshd: value cannot be quoted: ${JSON.stringify(value)}`);
  }
  if (/^[A-Za-z0-9_.,:/%@+=-]+$/.test(value)) return value;
  return `"${value.replace(/[\\"]/g, (c) => `\\${c}`)}"`;
}

/**
 * One authorized_keys line: `restrict` turns off forwarding, pty, user rc and X11 for the key,
 * so it stays closed even if sshd_config were loosened.
 */
export function authorizedKeyLine(publicKey: string): string {
  return `restrict ${publicKey.trim()}`;
}

export function renderAuthorizedKeys(t: Topology, user: string): string {
  const entry = t.upload.users.find((u) => u.name === user);
  if (!entry) throw new Error(`sshd: no upload user "${user}" in topology ${t.environment}`);
  return `${authorizedKeyLine(entry.publicKey)}\n`;
}

/**
 * sshd of an app server: the upload service only. SFTP into a per-user chroot, keys only, no
 * shell, no forwarding. Admin access is SSM, so nobody else may log in.
 */
export function renderSshdConfig(t: Topology, _node: NodeSpec): string {
  const users = t.upload.users.map((u) => u.name);
  const lines = [
    "# Managed by pypi-node: the SFTP upload service. No Include, so drop-ins cannot loosen it.",
    `Port ${sshdQuote(t.upload.backendPort)}`,
    `HostKey ${sshdQuote(uploadHostKeyPath)}`,
    "SyslogFacility AUTH",
    "LogLevel VERBOSE",
    "",
    "# Keys only; the accounts have no usable password.",
    "PermitRootLogin no",
    "PubkeyAuthentication yes",
    "AuthenticationMethods publickey",
    "PasswordAuthentication no",
    "KbdInteractiveAuthentication no",
    "HostbasedAuthentication no",
    "PermitEmptyPasswords no",
    "UsePAM no",
    "StrictModes yes",
    `AuthorizedKeysFile ${sshdQuote(`${authorizedKeysDir}/%u`)}`,
    `AllowUsers ${users.map(sshdQuote).join(" ")}`,
    "",
    "LoginGraceTime 30",
    "MaxAuthTries 3",
    "MaxSessions 4",
    "MaxStartups 10:30:60",
    "ClientAliveInterval 30",
    "ClientAliveCountMax 4",
    "UseDNS no",
    "PrintMotd no",
    "PrintLastLog no",
    "",
    "# Nothing but the file transfer.",
    "DisableForwarding yes",
    "AllowTcpForwarding no",
    "AllowStreamLocalForwarding no",
    "AllowAgentForwarding no",
    "X11Forwarding no",
    "PermitTunnel no",
    "GatewayPorts no",
    "PermitOpen none",
    "PermitListen none",
    "PermitUserRC no",
    "PermitUserEnvironment no",
    "PermitTTY no",
    `Subsystem sftp internal-sftp ${sftpFlags}`,
    `ForceCommand internal-sftp ${sftpFlags}`,
    `ChrootDirectory ${sshdQuote(`${uploadChrootRoot(t)}/%u`)}`,
  ];
  return `${lines.join("\n")}\n`;
}
