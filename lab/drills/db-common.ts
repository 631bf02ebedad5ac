/**
 * Database drill helpers: a sequence-numbered writer on an app node through the writer overlay
 * address, superuser SQL over a db node's socket, a split-brain monitor, and what drill 7 hands
 * to drill 9 (the re-attach step's result).
 */
import type { ChildProcess } from "node:child_process";
import { existsSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { paths } from "../../src/layout.js";
import { APP_PASSFILE } from "../../src/render/agent.js";
import type { Lab } from "../lib/lab.js";
import type { ExecutedStep } from "../lib/runbook.js";
import { drillDir, sleep } from "./common.js";

/** Debian's psql 15 talks to both 15 and 11 servers. */
export const PSQL = "/usr/lib/postgresql/15/bin/psql";
export const WRITER_NODE = "app-a";

/** What drill 7 leaves for drill 9. */
export const dbState: { reattach?: ExecutedStep } = {};

/** psql as the postgres superuser over a db node's local socket, reading SQL from stdin. */
export function superSqlArgv(port: number, db = "postgres"): string[] {
  return ["runuser", "-u", "postgres", "--", PSQL, "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1"].concat([
    "-h",
    "/var/run/postgresql",
    "-p",
    String(port),
    "-d",
    db,
  ]);
}

/** SQL as the postgres superuser over a db node's local socket. */
export function superSql(lab: Lab, node: string, sql: string, db = "postgres", timeoutMs = 10_000) {
  return lab.node(node).execAsync(superSqlArgv(lab.t.postgres.port, db), { input: sql, timeoutMs });
}

export const writerConn = (lab: Lab): string => {
  const pg = lab.t.postgres;
  return `host=${lab.t.overlay.dbWriter} port=${pg.port} dbname=${pg.database} user=${pg.appUser} passfile=${APP_PASSFILE} connect_timeout=1`;
};

/** One autocommit INSERT per sequence number; logs `ok|fail N epoch-ms`. */
const WRITER = `
i=$START
while [ ! -e "$STOP" ]; do
  i=$((i + 1))
  if timeout 5 ${PSQL} -X -q -At -d "$CONN" -c "INSERT INTO drill_seq (n) VALUES ($i)" >/dev/null 2>>"$LOG.err"; then
    echo "ok $i $(date +%s%3N)" >>"$LOG"
  else
    echo "fail $i $(date +%s%3N)" >>"$LOG"
    sleep 0.1
  fi
done
`;

export interface Write {
  readonly ok: boolean;
  readonly n: number;
  readonly at: number;
}

export interface Writer {
  writes(): Write[];
  stop(): Promise<Write[]>;
}

export async function ensureSeqTable(lab: Lab): Promise<void> {
  await lab
    .node(WRITER_NODE)
    .runAsync([
      PSQL,
      "-X",
      "-q",
      "-At",
      "-v",
      "ON_ERROR_STOP=1",
      "-d",
      writerConn(lab),
      "-c",
      "CREATE TABLE IF NOT EXISTS drill_seq (n bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())",
    ]);
}

export function startWriter(lab: Lab, name: string, start: number): Writer {
  const log = join(drillDir(lab), `writer-${name}.log`);
  const stopFile = join(drillDir(lab), `writer-${name}.stop`);
  rmSync(log, { force: true });
  rmSync(stopFile, { force: true });
  const child: ChildProcess = lab
    .node(WRITER_NODE)
    .spawn([
      "env",
      `CONN=${writerConn(lab)}`,
      `LOG=${log}`,
      `STOP=${stopFile}`,
      `START=${start}`,
      "sh",
      "-c",
      WRITER,
    ]);
  child.stdout?.resume();
  child.stderr?.resume();
  const writes = (): Write[] =>
    existsSync(log)
      ? readFileSync(log, "utf8")
          .trim()
          .split("\n")
          .filter((l) => l !== "")
          .map((l) => l.split(" "))
          .map(([status, n, at]) => ({ ok: status === "ok", n: Number(n), at: Number(at) }))
      : [];
  const stop = async (): Promise<Write[]> => {
    await new Promise<void>((resolve) => {
      if (child.exitCode !== null) return resolve();
      const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
      child.once("exit", () => {
        clearTimeout(timer);
        resolve();
      });
      writeFileSync(stopFile, "");
    });
    return writes();
  };
  return { writes, stop };
}

export async function waitWrites(w: Writer, count: number, timeoutMs = 20_000): Promise<void> {
  const start = Date.now();
  while (w.writes().filter((x) => x.ok).length < count) {
    if (Date.now() - start > timeoutMs)
      throw new Error(`writer: fewer than ${count} writes in ${timeoutMs / 1000} s`);
    await sleep(100);
  }
}

/** Acknowledged sequence numbers missing from `node`'s drill_seq. */
export async function lostRows(lab: Lab, node: string, acked: readonly Write[]): Promise<number[]> {
  const r = await superSql(lab, node, "SELECT n FROM drill_seq", lab.t.postgres.database, 30_000);
  if (r.status !== 0) throw new Error(`reading drill_seq on ${node}: ${r.stderr}`);
  const present = new Set(r.stdout.trim().split("\n").map(Number));
  return acked.filter((w) => !present.has(w.n)).map((w) => w.n);
}

export interface ProbeSample {
  readonly node: string;
  readonly start: number;
  readonly end: number;
  readonly writable: boolean;
}

/**
 * Split-brain monitor: each db node is asked over its own socket to commit a local write, every
 * 100 ms. A node that commits is a writable primary at that moment.
 */
export function startMonitor(lab: Lab, nodes: readonly string[]): { stop(): Promise<ProbeSample[]> } {
  const samples: ProbeSample[] = [];
  let running = true;
  const probe = async (node: string) => {
    while (running) {
      const start = Date.now();
      const r = await superSql(
        lab,
        node,
        "SET synchronous_commit = local; SET statement_timeout = 2000;\nINSERT INTO drill_probe VALUES (now());\n",
        "postgres",
        5_000,
      );
      samples.push({ node, start, end: Date.now(), writable: r.status === 0 });
      await sleep(100);
    }
  };
  const loops = nodes.map(probe);
  return {
    async stop() {
      running = false;
      await Promise.all(loops);
      return samples;
    },
  };
}

/** `pg_stat_replication` of `primary` shows `standby` streaming with `sync` state. */
export async function streams(
  lab: Lab,
  primary: string,
  standby: string,
  mode: string,
): Promise<string | Error> {
  const r = await lab.exec(primary, "/usr/local/sbin/pypi-node db-replication");
  return new RegExp(`^${standby} streaming ${mode}$`, "m").test(r.stdout)
    ? `${standby} streaming ${mode} from ${primary}`
    : new Error(`${primary} pg_stat_replication: ${r.stdout.trim() || r.stderr.trim() || "(empty)"}`);
}

/** Which db node runs the primary now (its agent's status), and its peer. */
export async function primaryOf(lab: Lab): Promise<{ primary: string; standby: string }> {
  const [a, b] = lab.nodesOf("db").map((n) => n.name);
  if (!a || !b) throw new Error("need two db nodes");
  const status = await lab.exec(a, `${paths.agent} status`);
  return status.stdout.includes("postgres\tprimary")
    ? { primary: a, standby: b }
    : { primary: b, standby: a };
}
