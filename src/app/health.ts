/** /_health: the writer takes a write, a standby is attached, the package volume takes a write. */
import { randomBytes } from "node:crypto";
import { closeSync, fsyncSync, mkdirSync, openSync, statSync, unlinkSync, writeSync } from "node:fs";
import { hostname } from "node:os";
import { dirname } from "node:path";
import type { AppConfig } from "./config.js";
import type { Db } from "./db.js";

export interface ProbeResult {
  readonly ok: boolean;
  readonly detail: string;
  readonly [extra: string]: unknown;
}

export type CheckResult = ProbeResult & { readonly ms: number };

export interface HealthReport {
  readonly ok: boolean;
  readonly checks: {
    readonly db_write: CheckResult;
    readonly standby: CheckResult;
    readonly storage: CheckResult;
  };
}

/** A probe slower than this fails: a hung NFS mount must not hang the health check. */
const PROBE_TIMEOUT_MS = 3_000;

async function timed(fn: () => Promise<ProbeResult>): Promise<CheckResult> {
  const start = process.hrtime.bigint();
  let result: ProbeResult;
  try {
    result = await fn();
  } catch (err) {
    result = { ok: false, detail: err instanceof Error ? err.message : String(err) };
  }
  const ms = Number(process.hrtime.bigint() - start) / 1e6;
  return { ...result, ms: Math.round(ms * 100) / 100 };
}

function withTimeout<T>(p: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`${what} timed out after ${PROBE_TIMEOUT_MS} ms`)),
      PROBE_TIMEOUT_MS,
    );
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

interface ReplicationRow {
  application_name: string | null;
  state: string | null;
  sync_state: string | null;
  lag_bytes: string | null;
  replay_lag_s: number | null;
}

/** Blocking fs calls run on the libuv pool; one still stuck from a previous probe fails this one. */
let storageProbePending = false;

function storageProbe(cfg: AppConfig): Promise<ProbeResult> {
  if (storageProbePending)
    return Promise.resolve({ ok: false, detail: "previous storage probe still pending" });
  storageProbePending = true;
  return new Promise((resolve) => {
    setImmediate(() => {
      try {
        const root = cfg.packageRoot;
        if (!statSync(root).isDirectory()) throw new Error(`${root} is not a directory`);
        if (cfg.requireMount && statSync(root).dev === statSync(dirname(root)).dev)
          throw new Error(`${root} is not a mount point`);
        const dir = `${root}/.health`;
        mkdirSync(dir, { recursive: true });
        const probe = `${dir}/${hostname()}-${process.pid}-${randomBytes(4).toString("hex")}`;
        const fd = openSync(probe, "wx", 0o600);
        try {
          writeSync(fd, `${new Date().toISOString()}\n`);
          fsyncSync(fd);
        } finally {
          closeSync(fd);
          unlinkSync(probe);
        }
        resolve({ ok: true, detail: "write+fsync+unlink ok" });
      } catch (err) {
        resolve({ ok: false, detail: err instanceof Error ? err.message : String(err) });
      } finally {
        storageProbePending = false;
      }
    });
  });
}

/** Anonymous callers can reach /_health: within this window a process answers from its last check, so a flood cannot turn into writes. */
const REUSE_MS = 1_000;
let last: { at: number; report: Promise<HealthReport> } | undefined;

export function checkHealth(cfg: AppConfig, db: Db): Promise<HealthReport> {
  const now = Date.now();
  if (last && now - last.at < REUSE_MS) return last.report;
  last = { at: now, report: runChecks(cfg, db) };
  return last.report;
}

async function runChecks(cfg: AppConfig, db: Db): Promise<HealthReport> {
  const dbWrite = timed(() =>
    withTimeout(
      db
        .query(
          "INSERT INTO health_probe (node, checked_at) VALUES ($1, now()) ON CONFLICT (node) DO UPDATE SET checked_at = now()",
          [hostname()],
        )
        .then(() => ({ ok: true, detail: `write accepted by ${cfg.db.host}:${cfg.db.port}` })),
      "db write",
    ),
  );
  const standby = timed(() =>
    withTimeout(
      db
        .query<ReplicationRow>(
          // Postgres 10+. Without pg_monitor the row shows but its columns are NULL.
          `SELECT application_name, state, sync_state,
                  (pg_current_wal_lsn() - replay_lsn)::text AS lag_bytes,
                  EXTRACT(EPOCH FROM replay_lag)::float8 AS replay_lag_s
             FROM pg_stat_replication`,
        )
        .then(({ rows }) => {
          const standbys = rows.map((r) => ({
            name: r.application_name,
            state: r.state,
            sync: r.sync_state,
            lag_bytes: r.lag_bytes === null ? null : Number(r.lag_bytes),
            replay_lag_s: r.replay_lag_s,
          }));
          return rows.length > 0
            ? { ok: true, detail: `${rows.length} standby attached`, standbys }
            : { ok: false, detail: "no standby in pg_stat_replication: replication lag unknown", standbys };
        }),
      "standby query",
    ),
  );
  const storage = timed(() => withTimeout(storageProbe(cfg), "storage probe"));
  const [a, b, c] = await Promise.all([dbWrite, standby, storage]);
  return { ok: a.ok && b.ok && c.ok, checks: { db_write: a, standby: b, storage: c } };
}
