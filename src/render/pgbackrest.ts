/**
 * pgBackRest on the db nodes: its configuration, the archive settings Postgres needs, and the
 * systemd units of the scheduled backups and of the restore test. Both db nodes get the same
 * files; whichever is primary archives and backs up, so a promoted standby needs no step.
 */
import { paths, pgDataDir } from "../layout.js";
import type { NodeSpec, Topology } from "../topology.js";
import { PG_SOCKET_DIR } from "./postgres.js";

export const PGBACKREST_CONF_PATH = "/etc/pgbackrest/pgbackrest.conf";
export const PGBACKREST_LOG_DIR = "/var/log/pgbackrest";
/** Where the restore test and the point-in-time runbook restore into (never the live cluster). */
export const PGBACKREST_SCRATCH_DIR = "/var/lib/postgresql/pypi-restore";
/** Port of the scratch server those start: local socket only, never archives. */
export const SCRATCH_PG_PORT = 5433;

export const BACKUP_UNITS = {
  full: "pypi-backup-full",
  diff: "pypi-backup-diff",
  restoreTest: "pypi-restore-test",
} as const;
export type BackupUnit = (typeof BACKUP_UNITS)[keyof typeof BACKUP_UNITS];

const HEADER = "# Managed by pypi-infra: the node agent overwrites local edits.";

/** One pgBackRest option value: the rest of its line, trimmed by pgBackRest, so no newlines or edges. */
export function pgbackrestValue(value: string | number): string {
  const text = String(value);
  if (text === "" || /[\n\r\0]/.test(text) || text.trim() !== text)
    throw new Error(
      `pgBackRest option value must be one non-empty line without edge spaces: ${JSON.stringify(text)}`,
    );
  return text;
}

const option = (name: string, value: string | number): string => `${name}=${pgbackrestValue(value)}`;

/** `s3://bucket/path` → bucket and `/path`; a directory stays a posix repository. */
export function repositoryOptions(t: Topology): string[] {
  const m = /^s3:\/\/([^/]+)(\/.*)?$/.exec(t.backup.repository);
  if (!m) return [option("repo1-type", "posix"), option("repo1-path", t.backup.repository)];
  const [, bucket = "", path = "/"] = m;
  return [
    option("repo1-type", "s3"),
    option("repo1-path", path),
    option("repo1-s3-bucket", bucket),
    option("repo1-s3-endpoint", `s3.${t.region}.amazonaws.com`),
    option("repo1-s3-region", t.region),
    // The instance profile's credentials, refreshed by pgBackRest from IMDS.
    option("repo1-s3-key-type", "auto"),
    option("repo1-s3-uri-style", "host"),
  ];
}

/** pgbackrest.conf: the repository, retention and the one stanza of this cluster. */
export function renderPgbackrestConf(t: Topology, _node: NodeSpec): string {
  const b = t.backup;
  const lines = [
    HEADER,
    "[global]",
    ...repositoryOptions(t),
    option("repo1-retention-full-type", "count"),
    option("repo1-retention-full", b.retentionFull),
    option("repo1-retention-diff", b.retentionDiff),
    // While archiving fails, Postgres keeps every WAL segment: past this much pgBackRest drops
    // them (PITR breaks until the next backup) rather than let the data volume fill and stop the
    // primary. The same bound as a replication slot's.
    option("archive-push-queue-max", `${t.postgres.maxSlotWalKeepMb}MiB`),
    option("compress-type", "zst"),
    option("process-max", 2),
    // A backup starts with an immediate checkpoint rather than waiting for the next one.
    option("start-fast", "y"),
    option("log-level-console", "warn"),
    option("log-level-file", "info"),
    option("log-path", PGBACKREST_LOG_DIR),
    // Not /tmp, its default: locks are per node, and flock() makes a stale file harmless.
    option("lock-path", "/var/lib/pgbackrest/lock"),
    "",
    `[${b.stanza}]`,
    option("pg1-path", pgDataDir(t.postgres.version)),
    option("pg1-port", t.postgres.port),
    option("pg1-socket-path", PG_SOCKET_DIR),
  ];
  return `${lines.join("\n")}\n`;
}

const pgbackrest = (t: Topology, command: string): string =>
  `pgbackrest --config=${PGBACKREST_CONF_PATH} --stanza=${t.backup.stanza} ${command}`;

/**
 * postgresql.conf settings for archiving: every node archives when it is primary (a standby
 * with `archive_mode = on` does not), and reads the archive when streaming cannot serve it.
 */
export function archiveSettings(t: Topology): { name: string; value: string | number | boolean }[] {
  return [
    { name: "archive_mode", value: true },
    { name: "archive_command", value: pgbackrest(t, "archive-push %p") },
    // Seconds: a quiet primary still ships its last commits within this bound.
    { name: "archive_timeout", value: t.backup.archiveTimeoutSeconds },
  ];
}

/** restore_command: postgresql.conf from 12, recovery.conf before. */
export const restoreCommand = (t: Topology): string => pgbackrest(t, 'archive-get %f "%p"');

const unitQuote = (s: string): string => {
  if (/[\n\r]/.test(s)) throw new Error(`systemd value must be one line: ${JSON.stringify(s)}`);
  return s;
};

/** One scheduled job of the agent (`pypi-node db-backup full|diff`, `db-restore-test`). */
function backupService(description: string, command: string, timeoutMinutes: number): string {
  return `${[
    "[Unit]",
    `Description=${unitQuote(description)}`,
    "After=postgresql.service network-online.target",
    "Wants=network-online.target",
    "",
    "[Service]",
    "Type=oneshot",
    // The agent runs pgBackRest as postgres; it needs root for the state it records.
    `ExecStart=${paths.agent} ${command}`,
    `TimeoutStartSec=${timeoutMinutes}min`,
    "Nice=10",
    "IOSchedulingClass=idle",
  ].join("\n")}\n`;
}

function backupTimer(description: string, unit: string, calendar: string): string {
  return `${[
    "[Unit]",
    `Description=${unitQuote(description)}`,
    "",
    "[Timer]",
    `OnCalendar=${unitQuote(calendar)}`,
    // A node that was down at the time runs the job when it is back.
    "Persistent=true",
    "RandomizedDelaySec=5min",
    `Unit=${unit}.service`,
    "",
    "[Install]",
    "WantedBy=timers.target",
  ].join("\n")}\n`;
}

export const backupUnitPath = (unit: BackupUnit, kind: "service" | "timer"): string =>
  `/etc/systemd/system/${unit}.${kind}`;

interface BackupJob {
  readonly unit: BackupUnit;
  readonly description: string;
  readonly command: string;
  readonly timeoutMinutes: number;
  readonly schedule: (t: Topology) => string;
}

const BACKUP_JOBS: readonly BackupJob[] = [
  {
    unit: BACKUP_UNITS.full,
    description: "Full pgBackRest backup (on the primary; a standby skips)",
    command: "db-backup full",
    timeoutMinutes: 360,
    schedule: (t) => t.backup.fullSchedule,
  },
  {
    unit: BACKUP_UNITS.diff,
    description: "Differential pgBackRest backup (on the primary; a standby skips)",
    command: "db-backup diff",
    timeoutMinutes: 240,
    schedule: (t) => t.backup.diffSchedule,
  },
  {
    unit: BACKUP_UNITS.restoreTest,
    description:
      "Prove the newest backup restores: pgbackrest verify, then a scratch restore (on the standby)",
    command: "db-restore-test",
    timeoutMinutes: 360,
    schedule: (t) => t.backup.restoreTestSchedule,
  },
];

/** The three jobs and their timers, as `[path, content]`. Every db node has all of them. */
export function renderBackupUnits(t: Topology): [string, string][] {
  return BACKUP_JOBS.flatMap((job): [string, string][] => [
    [backupUnitPath(job.unit, "service"), backupService(job.description, job.command, job.timeoutMinutes)],
    [
      backupUnitPath(job.unit, "timer"),
      backupTimer(`${job.description}: schedule`, job.unit, job.schedule(t)),
    ],
  ]);
}
