import type { BundleFile } from "../bundle-types.js";
import { APP_DB_POOL, pgConfDir, pgDataDir } from "../layout.js";
import { type NodeSpec, nodesWithRole, peerOf, pgDialect, type Topology } from "../topology.js";
import { archiveSettings, restoreCommand } from "./pgbackrest.js";

export type PgRole = "primary" | "standby";

/**
 * The replication password as a pgpass file, named by `passfile=` in every connection string.
 * Not the postgres user's ~/.pgpass: that home is the data volume's mount point, and the volume
 * mounted at first boot would hide a file the bundle installed there before it.
 */
export const PGPASS_PATH = "/etc/pypi-node/postgres/pgpass";
/** Debian's socket directory (the agent connects through it) and pg_ctlcluster's log directory. */
export const PG_SOCKET_DIR = "/var/run/postgresql";
export const PG_LOG_DIR = "/var/log/postgresql";

const HEADER = "# Managed by pypi-infra: the node agent overwrites local edits.";

/** Quotes a postgresql.conf / recovery.conf string value: backslashes are escapes there, quotes double. */
export function pgConfQuote(value: string): string {
  if (/[\n\r\0]/.test(value))
    throw new Error(`postgresql.conf value must be one line: ${JSON.stringify(value)}`);
  return `'${value.replace(/\\/g, "\\\\").replace(/'/g, "''")}'`;
}

/** Quotes a libpq conninfo value when it needs it (spaces, quotes, backslashes, empty). */
export function conninfoQuote(value: string): string {
  if (value !== "" && /^[^\s'\\]+$/.test(value)) return value;
  return `'${value.replace(/\\/g, "\\\\").replace(/'/g, "\\'")}'`;
}

const HBA_KEYWORDS = new Set([
  "all",
  "sameuser",
  "samerole",
  "samegroup",
  "replication",
  "samenet",
  "samehost",
]);

/** One pg_hba.conf token (database, user or address). Keywords are quoted so they match literally. */
export function hbaField(value: string): string {
  if (/["\s,]/.test(value) || value === "") {
    throw new Error(
      `pg_hba.conf field must be non-empty, without quotes, commas or spaces: ${JSON.stringify(value)}`,
    );
  }
  if (/^[A-Za-z0-9_.:/$-]+$/.test(value) && !HBA_KEYWORDS.has(value.toLowerCase())) return value;
  return `"${value}"`;
}

/** A standby name inside synchronous_standby_names (its own double-quoted identifier syntax). */
function standbyName(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

const hostAddress = (ip: string): string => `${ip}/32`;

type Setting = string | number | boolean;

/**
 * Every app worker's pool at once, plus room for the register job, the agent and psql; never
 * below Postgres' default of 100. Walsenders do not count here (max_wal_senders).
 */
export function maxConnections(t: Topology): number {
  const apps = nodesWithRole(t, "app").length;
  return Math.max(100, apps * t.app.maxProcesses * APP_DB_POOL + 20);
}

function settingLine(name: string, value: Setting): string {
  const text =
    typeof value === "boolean"
      ? value
        ? "on"
        : "off"
      : typeof value === "number"
        ? String(value)
        : pgConfQuote(value);
  return `${name} = ${text}`;
}

/** How often a standby reports its position to the primary (`wal_receiver_status_interval`). */
export const STANDBY_REPLY_SECONDS = 1;
/** A standby whose last report is older than this counts as not streaming (health, 12+: reply_time). */
export const STANDBY_SILENT_SECONDS = 3;

/** The libpq connection string a node uses to stream from its peer (never carries a password). */
export function primaryConninfo(t: Topology, node: NodeSpec): string {
  const peer = peerOf(t, node);
  const params: [string, string][] = [
    ["host", peer.privateIp],
    ["port", String(t.postgres.port)],
    ["user", t.postgres.replicationUser],
    ["passfile", PGPASS_PATH],
    ["application_name", node.name],
    ["connect_timeout", "5"],
  ];
  return params.map(([k, v]) => `${k}=${conninfoQuote(v)}`).join(" ");
}

/** `synchronous_standby_names` for a node: its peer, which is the standby whenever this node is primary. */
export function synchronousStandbyNames(t: Topology, node: NodeSpec): string {
  const peer = peerOf(t, node);
  return t.postgres.version >= 10 ? `FIRST 1 (${standbyName(peer.name)})` : `1 (${standbyName(peer.name)})`;
}

/**
 * postgresql.conf in Debian's layout. Role-independent on purpose: a primary ignores the standby
 * settings and a standby ignores synchronous_standby_names, so failover only adds or removes the
 * standby marker (standby.signal / recovery.conf).
 */
export function renderPostgresConf(t: Topology, node: NodeSpec): string {
  const pg = t.postgres;
  const v = pg.version;
  const conf = pgConfDir(v);
  const modern = pgDialect(v) === "standby.signal";
  const lines: string[] = [
    HEADER,
    "",
    "# Files and connections (Debian layout)",
    settingLine("data_directory", pgDataDir(v)),
    settingLine("hba_file", `${conf}/pg_hba.conf`),
    settingLine("ident_file", `${conf}/pg_ident.conf`),
    settingLine("external_pid_file", `${PG_SOCKET_DIR}/${v}-main.pid`),
    settingLine("cluster_name", `${v}/main`),
    // The writer overlay address is added and removed on failover, so bind to all addresses;
    // pg_hba.conf decides who may connect.
    settingLine("listen_addresses", "*"),
    settingLine("port", pg.port),
    settingLine("max_connections", maxConnections(t)),
    settingLine("unix_socket_directories", PG_SOCKET_DIR),
    settingLine("shared_buffers", "128MB"),
    // 9.6 only knows md5 (a boolean setting there).
    v >= 10 ? settingLine("password_encryption", "scram-sha-256") : settingLine("password_encryption", true),
    "",
    "# Replication",
    settingLine("wal_level", "replica"),
    settingLine("max_wal_senders", 10),
    settingLine("max_replication_slots", 10),
    // pg_rewind needs hint-bit changes WAL-logged to re-attach a former primary.
    settingLine("wal_log_hints", true),
    v >= 13
      ? settingLine("wal_keep_size", `${pg.walKeepMb}MB`)
      : settingLine("wal_keep_segments", Math.ceil(pg.walKeepMb / 16)),
    // Without a cap an abandoned slot keeps WAL until the primary's disk is full (13+ only).
    ...(v >= 13 ? [settingLine("max_slot_wal_keep_size", `${pg.maxSlotWalKeepMb}MB`)] : []),
    settingLine("hot_standby", true),
    settingLine("hot_standby_feedback", true),
    // A standby reports every second, so the primary's health sees a silent standby (reply_time)
    // in seconds, not after wal_sender_timeout (60 s) when a network cut leaves the socket open.
    settingLine("wal_receiver_status_interval", `${STANDBY_REPLY_SECONDS}s`),
    "",
    "# Continuous archiving to the pgBackRest repository (whichever node is primary archives)",
    ...archiveSettings(t).map((s) => settingLine(s.name, s.value)),
    ...(pg.synchronous
      ? [
          settingLine("synchronous_commit", true),
          settingLine("synchronous_standby_names", synchronousStandbyNames(t, node)),
        ]
      : []),
    // From 12 the standby settings live here; before 12 they belong in recovery.conf only.
    ...(modern
      ? [
          settingLine("primary_conninfo", primaryConninfo(t, node)),
          settingLine("primary_slot_name", pg.slotName),
          // A standby that fell behind its slot catches up from the archive.
          settingLine("restore_command", restoreCommand(t)),
        ]
      : []),
    "",
    `# Logging (stderr, collected by pg_ctlcluster into ${PG_LOG_DIR})`,
    settingLine("log_line_prefix", "%m [%p] %q%u@%d "),
    settingLine("log_timezone", "Etc/UTC"),
    settingLine("log_connections", true),
    settingLine("log_replication_commands", true),
    settingLine("log_checkpoints", true),
    settingLine("log_lock_waits", true),
    settingLine("log_min_duration_statement", "1s"),
    "",
    "# Locale-independent defaults",
    settingLine("timezone", "Etc/UTC"),
    settingLine("datestyle", "iso, mdy"),
  ];
  return `${lines.join("\n")}\n`;
}

function hbaLine(type: string, database: string, user: string, address: string, method: string): string {
  return [type.padEnd(7), database.padEnd(12), user.padEnd(16), address.padEnd(18), method]
    .join(" ")
    .trimEnd();
}

/**
 * pg_hba.conf: local peer for postgres, replication (and pg_rewind's plain connection) only
 * from the peer db node, the app database only from the app servers. Anything else is rejected.
 */
export function renderPgHba(t: Topology, node: NodeSpec): string {
  const peer = peerOf(t, node);
  const pg = t.postgres;
  const method = pg.version >= 10 ? "scram-sha-256" : "md5";
  const repl = hbaField(pg.replicationUser);
  const lines: string[] = [
    HEADER,
    hbaLine("# TYPE", "DATABASE", "USER", "ADDRESS", "METHOD"),
    "",
    "# Administration over the unix socket only.",
    hbaLine("local", "all", "postgres", "", "peer"),
    "",
    "# Streaming replication and pg_basebackup from the peer; pg_rewind reads it over a normal connection.",
    hbaLine("host", "replication", repl, hbaField(hostAddress(peer.privateIp)), method),
    hbaLine("host", "postgres", repl, hbaField(hostAddress(peer.privateIp)), method),
    "",
    "# The index application, from each app server's own address (also when it dials the writer overlay IP).",
    ...nodesWithRole(t, "app").map((app) =>
      hbaLine(
        "host",
        hbaField(pg.database),
        hbaField(pg.appUser),
        hbaField(hostAddress(app.privateIp)),
        method,
      ),
    ),
  ];
  return `${lines.join("\n")}\n`;
}

/** pg_ident.conf: no maps; present because ident_file names it. */
export function renderPgIdent(_t: Topology, _node: NodeSpec): string {
  return `${[HEADER, "# MAPNAME  SYSTEM-USERNAME  PG-USERNAME"].join("\n")}\n`;
}

/** recovery.conf for 9.6–11 standbys. Promotion is `pg_ctl promote`, so no trigger_file. */
export function renderRecoveryConf(t: Topology, node: NodeSpec): string {
  if (pgDialect(t.postgres.version) !== "recovery.conf") {
    throw new Error(`recovery.conf is not used by postgres ${t.postgres.version}; render standby.signal`);
  }
  const lines: string[] = [
    HEADER,
    settingLine("standby_mode", true),
    settingLine("primary_conninfo", primaryConninfo(t, node)),
    settingLine("primary_slot_name", t.postgres.slotName),
    settingLine("restore_command", restoreCommand(t)),
    settingLine("recovery_target_timeline", "latest"),
  ];
  return `${lines.join("\n")}\n`;
}

const pgFile = (
  path: string,
  mode: string,
  content: string,
  extra: Partial<BundleFile> = {},
): BundleFile => ({
  path,
  mode,
  owner: "postgres",
  group: "postgres",
  content,
  reloads: [],
  ...extra,
});

/** The marker file(s) that make a node start as a standby, in its data directory. */
export function renderStandbyFiles(t: Topology, node: NodeSpec): BundleFile[] {
  const data = pgDataDir(t.postgres.version);
  return pgDialect(t.postgres.version) === "recovery.conf"
    ? [pgFile(`${data}/recovery.conf`, "0600", renderRecoveryConf(t, node))]
    : [pgFile(`${data}/standby.signal`, "0600", "")];
}

/** Every Postgres file of a db node in its current role. */
export function renderPostgresFiles(t: Topology, node: NodeSpec, role: PgRole): BundleFile[] {
  const conf = pgConfDir(t.postgres.version);
  return [
    pgFile(`${conf}/postgresql.conf`, "0644", renderPostgresConf(t, node), {
      validator: "postgres",
      reloads: ["postgresql"],
    }),
    // No offline checker exists for pg_hba.conf; a reload keeps the old rules if the new file
    // is broken, and the agent then reports pg_hba_file_rules errors.
    pgFile(`${conf}/pg_hba.conf`, "0640", renderPgHba(t, node), { reloads: ["postgresql"] }),
    pgFile(`${conf}/pg_ident.conf`, "0640", renderPgIdent(t, node), { reloads: ["postgresql"] }),
    // Debian starts `auto` clusters at boot. Only the agent starts this one, after its fence
    // and role checks (pypi-db converge), so a rebooted old primary never comes up writable.
    pgFile(`${conf}/start.conf`, "0644", "manual\n"),
    ...(role === "standby" ? renderStandbyFiles(t, node) : []),
  ];
}

/**
 * One .pgpass line for the replication user, valid for any host and database so it serves
 * streaming, pg_basebackup and pg_rewind in both directions. For the agent (from the secret),
 * never for a bundle.
 */
export function pgpassLine(t: Topology, password: string): string {
  const esc = (s: string): string => s.replace(/\\/g, "\\\\").replace(/:/g, "\\:");
  if (/[\n\r]/.test(password)) throw new Error("the replication password must be one line");
  return `*:*:*:${esc(t.postgres.replicationUser)}:${esc(password)}\n`;
}
