/**
 * What one node receives. The node agent installs `files`, fetches `secrets`, validates
 * every file that names a validator before it replaces the live file, then reloads the
 * services whose files changed.
 */

/** The daemon-side check the agent runs on a candidate before installing it. */
export type Validator = "nginx" | "apache" | "haproxy" | "sshd" | "postgres" | "drbd" | "exportfs" | "sh";

/** Services the agent knows how to (re)load. */
export type ServiceName =
  | "nginx"
  | "haproxy"
  | "heartbeat"
  | "apache2"
  | "ssh"
  | "postgresql"
  | "drbd"
  | "nfs-server"
  | "pypi-index"
  | "pypi-index-register"
  | "pypi-upload-watch"
  | "pypi-file-copy"
  | "pypi-cdn-purge"
  | "pypi-backup-full"
  | "pypi-backup-diff"
  | "pypi-restore-test"
  | "pypi-health";

export interface BundleFile {
  /** Absolute path on the node; never contains `..`. */
  readonly path: string;
  /** Octal mode, e.g. "0644". */
  readonly mode: string;
  readonly owner: string;
  readonly group: string;
  readonly content: string;
  readonly validator?: Validator;
  /** When set, the entry is a symlink to this (relative) target and `content` is empty. */
  readonly symlinkTo?: string;
  /** Services to reload when this file changes. */
  readonly reloads: readonly ServiceName[];
}

export interface SecretFetch {
  /** SSM parameter name (AWS) or lab secret-store key. Never a value. */
  readonly parameter: string;
  readonly path: string;
  readonly mode: string;
  readonly owner: string;
  readonly group: string;
  /**
   * `raw` writes the value as is; `heartbeat-authkeys` wraps it as `auth 1` / `1 sha1 <value>`;
   * `pgpass` writes `<pgpassEntry>:<value>`; `drbd-shared-secret` writes a DRBD `common` section.
   */
  readonly format: "raw" | "heartbeat-authkeys" | "pgpass" | "drbd-shared-secret";
  /** `host:port:database:user` for the pgpass format. */
  readonly pgpassEntry?: string;
  readonly reloads: readonly ServiceName[];
}

export interface NodeBundle {
  readonly node: string;
  readonly role: "balancer" | "app" | "db";
  /** Debian packages the node needs. */
  readonly packages: readonly string[];
  /** Services that run on the node, in start order (reloads run in this order too). */
  readonly services: readonly ServiceName[];
  /**
   * Services this node must not run, e.g. the app server after a switch to the fcgid runtime:
   * stopped and disabled once the others run on the new files.
   */
  readonly stopped: readonly ServiceName[];
  readonly files: readonly BundleFile[];
  /** Paths the agent removes (e.g. Debian's default site). */
  readonly absent: readonly string[];
  readonly secrets: readonly SecretFetch[];
}
