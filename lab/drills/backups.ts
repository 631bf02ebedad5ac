/**
 * Restore drills: backups are only as good as a restore. The pgBackRest repository and the
 * package file copies live in directories on the lab host that stand in for the two S3 buckets
 * (the report says so). Each drill runs the runbook the stack outputs, on the lab's nodes.
 *
 * 13: a mistaken DELETE, restored as of the second before it onto the standby's scratch server;
 *     then the scheduled restore test (pgbackrest verify and a scratch restore) as its timer runs it.
 * 14: the package files removed by a bad rm, restored from the copies, each checked against its row.
 * 15: both database nodes lost with their volumes under a writer: replaced, the first restores
 *     from the repository by itself; RTO, and RPO as committed rows missing.
 */
import { createHash } from "node:crypto";
import { copyFileSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ROLLOUT_COMMAND } from "../../src/bring-up.js";
import { alarmName, compositeAlarms } from "../../src/health.js";
import { paths } from "../../src/layout.js";
import { OPERATOR, PITR_TARGET_VAR } from "../../src/runbooks/runbooks.js";
import { nodesWithRole } from "../../src/topology.js";
import { adminOn, twine } from "../checks/publish.js";
import { bootAgain, firstBoot } from "../lib/boot.js";
import { instanceDeleted } from "../lib/cloud.js";
import { CLIENT_DIR, clientCommand, type Lab } from "../lib/lab.js";
import { describeRun, executeRunbook, runbookById } from "../lib/runbook.js";
import { buildWheel, pipArgv, type Wheel } from "../lib/wheel.js";
import { awaitAlarm, drill, expectAlarm, markFault, seconds, sleep, until } from "./common.js";
import { ensureSeqTable, lostRows, primaryOf, startWriter, superSql, waitWrites } from "./db-common.js";

const STAND_IN = "a directory on the lab host standing in for the S3 bucket";
const BULK_WHEELS = 8;
const BULK_WHEEL_BYTES = 4_000_000;

async function sqlOk(lab: Lab, node: string, sql: string, db = lab.t.postgres.database): Promise<string> {
  const r = await superSql(lab, node, sql, db, 30_000);
  if (r.status !== 0) throw new Error(`${node}: ${sql.slice(0, 80)}: ${r.stderr}`);
  return r.stdout.trim();
}

async function agentOn(lab: Lab, node: string, args: string, timeoutMs = 600_000): Promise<string> {
  const r = await lab.exec(node, `${paths.agent} ${args}`, { timeoutMs });
  if (r.status !== 0)
    throw new Error(`${node}: pypi-node ${args}: exit ${r.status}: ${r.stderr.slice(-1500)}`);
  return r.stdout.trim();
}

/** Bytes under a host directory. */
function treeBytes(dir: string): number {
  let total = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    total += e.isDirectory() ? treeBytes(p) : e.isFile() ? statSync(p).size : 0;
  }
  return total;
}

const mb = (bytes: number): number => Math.round((bytes / 1024 / 1024) * 100) / 100;

export const pointInTime = drill(
  "13",
  "a mistaken DELETE restored to the second before it; the restore test proves the newest backup",
  600_000,
  async (lab, report, section) => {
    const { primary, standby } = await primaryOf(lab);
    await report.check(section, "WAL archiving and backups run on the primary", async () => {
      const status = await agentOn(lab, primary, "status");
      const archiver = /archiver\t(\S+)\tage_s=(\S+)\tfailed=(\d+)/.exec(status);
      const backup = /backup\tnewest\t(\S+)\t(\S+)\tage_s=(\d+)/.exec(status);
      if (!archiver || archiver[1] === "none") throw new Error(`${primary} has archived nothing:\n${status}`);
      if (!backup) throw new Error(`no backup in the repository:\n${status}`);
      return `${primary} archived ${archiver[1]} ${archiver[2]} s ago (${archiver[3]} failed pushes); newest backup ${backup[1]} (${backup[2]}); repository: ${STAND_IN}`;
    });

    // The mistake: rows committed, a quiet second, the moment to restore to, then the DELETE.
    const db = lab.t.postgres.database;
    await sqlOk(
      lab,
      primary,
      "DROP TABLE IF EXISTS drill_pitr; CREATE TABLE drill_pitr (id int PRIMARY KEY, note text)",
    );
    const batches = 20;
    for (let b = 0; b < batches; b++)
      await sqlOk(
        lab,
        primary,
        `INSERT INTO drill_pitr SELECT g, md5(g::text) FROM generate_series(${b * 50 + 1}, ${(b + 1) * 50}) g`,
      );
    const committed = Number(await sqlOk(lab, primary, "SELECT count(*) FROM drill_pitr"));
    const fileRows = await sqlOk(lab, primary, "SELECT count(*) FROM files");
    await sleep(1_300);
    const target = await sqlOk(
      lab,
      primary,
      "SELECT to_char(date_trunc('second', clock_timestamp()) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || '+00'",
      "postgres",
    );
    await sleep(1_100);
    await sqlOk(lab, primary, "DELETE FROM drill_pitr");
    const mistakeAt = Date.now();

    const runbook = runbookById(lab, `db-pitr-${primary}`);
    const env = { [PITR_TARGET_VAR]: target };
    const restored = await report.check(
      section,
      `runbook ${runbook.id}: restore as of ${target} onto ${standby}'s scratch server; 0 of the rows there before the DELETE missing`,
      async () => {
        const run = await executeRunbook(runbook, (h) => lab.node(h), {
          include: (s) =>
            s.host !== OPERATOR && !s.command.includes("scratch-stop") && !s.command.includes("<table>"),
          stepTimeoutMs: 600_000,
          env,
        });
        if (run.failure) throw new Error(run.failure);
        const pitrStep = run.executed.find((e) => e.step.command.includes("db-pitr"));
        const found = Number(
          (await agentOn(lab, standby, `db-scratch-sql "SELECT count(*) FROM drill_pitr"`)).trim(),
        );
        const scratchFiles = (
          await agentOn(lab, standby, `db-scratch-sql "SELECT count(*) FROM files"`)
        ).trim();
        const lost = committed - found;
        report.figure(section, "point-in-time restore: rows lost", lost, `of ${committed}`, "goal 0");
        report.figure(section, "point-in-time restore onto the scratch server", pitrStep?.seconds ?? -1, "s");
        if (lost !== 0) throw new Error(`${lost} of ${committed} rows missing at ${target}`);
        if (scratchFiles !== fileRows)
          throw new Error(`files: ${scratchFiles} rows on the scratch server, ${fileRows} on the primary`);
        const stillGone = await sqlOk(lab, primary, "SELECT count(*) FROM drill_pitr");
        if (stillGone !== "0")
          throw new Error(`the primary has ${stillGone} rows: the DELETE did not happen`);
        return `${found} of ${committed} rows as of ${target} (${seconds(mistakeAt, Date.now())} s after the DELETE); files ${scratchFiles} rows as on the primary; ${describeRun(run).join("; ")}`;
      },
    );
    await report.check(section, "the scratch server is removed", async () => {
      const r = await executeRunbook(runbook, (h) => lab.node(h), {
        include: (s) => s.command.includes("scratch-stop"),
      });
      if (r.failure) throw new Error(r.failure);
      return describeRun(r).join("; ");
    });
    await sqlOk(lab, primary, "DROP TABLE drill_pitr", db);
    if (!restored) return;

    await report.check(
      section,
      `the restore test (its timer's job) on ${standby}: verify, then the newest backup restores`,
      async () => {
        const started = Date.now();
        const out = await agentOn(lab, standby, "db-restore-test");
        const took = seconds(started, Date.now());
        if (!/^restore test ok/m.test(out)) throw new Error(out);
        report.figure(
          section,
          "restore test: pgbackrest verify + scratch restore of the newest backup",
          took,
          "s",
        );
        const status = await agentOn(lab, standby, "status");
        if (!/restore-test\tok\tage_s=\d+/.test(status))
          throw new Error(`status does not report it:\n${status}`);
        return `${out}; status: ${status.split("\n").find((l) => l.startsWith("restore-test"))}`;
      },
    );

    await report.check(
      section,
      "a damaged WAL file in the repository fails the restore test, and the status says so",
      async () => {
        const wal = newestArchivedWal(lab.dirs.backupRepository);
        const original = readFileSync(wal);
        const damaged = Buffer.from(original);
        for (
          let i = Math.floor(damaged.length / 2);
          i < Math.min(damaged.length, damaged.length / 2 + 64);
          i++
        )
          damaged[i] = (damaged[i] ?? 0) ^ 0xff;
        expectAlarm(lab, alarmName(lab.t, standby, "restore-test"), `db-backups-stalled-${primary}`);
        writeFileSync(wal, damaged);
        try {
          const r = await lab.exec(standby, `${paths.agent} db-restore-test`, { timeoutMs: 600_000 });
          // The failure the health model can see: the restore test's result, not the damage.
          markFault(lab);
          if (r.status === 0) throw new Error(`the restore test passed over a damaged ${wal}: ${r.stdout}`);
          if (!/verify found a problem/.test(r.stderr)) throw new Error(r.stderr.slice(-1500));
          const status = await agentOn(lab, standby, "status");
          if (!/restore-test\tfailed\tage_s=\d+\tverify/.test(status))
            throw new Error(`status does not report the failure:\n${status}`);
        } finally {
          writeFileSync(wal, original);
        }
        // The page names db-backups-stalled: the repaired repository gets a new full backup, and
        // the restore test proves it.
        const paged = await awaitAlarm(lab, alarmName(lab.t, standby, "restore-test"));
        const run = await executeRunbook(runbookById(lab, paged), (h) => lab.node(h), {
          stepTimeoutMs: 600_000,
        });
        if (run.failure) throw new Error(run.failure);
        return `${wal.slice(lab.dirs.backupRepository.length)} damaged: restore test failed (verify), status "failed"; repaired, then runbook ${paged}: ${describeRun(run).join("; ")}`;
      },
    );
  },
);

/** The archive's newest complete WAL segment file under a repository directory. */
function newestArchivedWal(repo: string): string {
  const files: string[] = [];
  const walk = (dir: string): void => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = join(dir, e.name);
      if (e.isDirectory()) walk(p);
      // Not "….pgbackrest.tmp": archive-push may be writing one right now.
      else if (/^[0-9A-F]{24}-[0-9a-f]{40}(\.(gz|lz4|zst|bz2))?$/.test(e.name)) files.push(p);
    }
  };
  walk(join(repo, "archive"));
  const newest = files
    .sort((a, b) => a.slice(a.lastIndexOf("/")).localeCompare(b.slice(b.lastIndexOf("/"))))
    .at(-1);
  if (!newest) throw new Error(`no archived WAL under ${repo}`);
  return newest;
}

/** sha256 of every registered file as its row says, by project/filename. */
async function fileRows(lab: Lab): Promise<Map<string, string>> {
  const { primary } = await primaryOf(lab);
  const out = await sqlOk(
    lab,
    primary,
    "SELECT project || '/' || filename || ' ' || sha256 FROM files WHERE state = 'ok'",
  );
  return new Map(
    out
      .split("\n")
      .filter(Boolean)
      .map((l) => l.split(" ") as [string, string]),
  );
}

export const packageFilesLost = drill(
  "14",
  "package files removed by a bad rm, restored from the copies",
  600_000,
  async (lab, report, section) => {
    const [app] = nodesWithRole(lab.t, "app").map((n) => n.name);
    if (!app) throw new Error("no app server");
    const packagesDir = join(lab.dirs.packages, "packages");
    let probe: Wheel | undefined;

    await report.check(section, "a registration reaches the copies within the copy job's bound", async () => {
      const owner = lab.t.upload.users[0]?.name ?? "";
      const token = await adminOn(lab, `token create ${owner} --description drill-14`);
      const wheel = buildWheel(lab.dirs.work, "labcopy", `1.0.${Date.now() % 100000}`);
      probe = wheel;
      copyFileSync(wheel.path, join(lab.dirs.client, wheel.filename));
      const r = await twine(lab, token, wheel.filename);
      if (r.status !== 0) throw new Error(`twine: ${r.out.slice(-500)}`);
      const uploaded = Date.now();
      const copy = join(lab.dirs.fileCopies, "labcopy", wheel.filename);
      const copiedAt = await until(`${wheel.filename} in the copies`, 120_000, () => {
        try {
          return statSync(copy).isFile();
        } catch {
          return false;
        }
      });
      const delay = seconds(uploaded, copiedAt);
      const bound = lab.t.backup.fileCopyIntervalSeconds;
      report.figure(
        section,
        "registration -> verified copy",
        delay,
        "s",
        `bound: the copy job's timer, ${bound} s`,
      );
      const sha = createHash("sha256").update(readFileSync(copy)).digest("hex");
      const row = (await fileRows(lab)).get(`labcopy/${wheel.filename}`);
      if (sha !== row) throw new Error(`copy sha256 ${sha}, row ${row}`);
      if (delay > bound) throw new Error(`copied after ${delay} s, more than the ${bound} s bound`);
      return `${wheel.filename} copied and its sha256 checked ${delay} s after twine returned; store: ${STAND_IN}`;
    });

    // Data worth a throughput figure: a few larger distributions, published as users do.
    await report.check(
      section,
      `${BULK_WHEELS} more distributions of ${BULK_WHEEL_BYTES / 1e6} MB of payload each published`,
      async () => {
        const owner = lab.t.upload.users[0]?.name ?? "";
        const token = await adminOn(lab, `token create ${owner} --description drill-14-bulk`);
        const version = Date.now() % 100000;
        for (let i = 0; i < BULK_WHEELS; i++) {
          const w = buildWheel(lab.dirs.work, "labbulk", `${version}.${i}`, BULK_WHEEL_BYTES);
          copyFileSync(w.path, join(lab.dirs.client, w.filename));
          const r = await twine(lab, token, w.filename);
          if (r.status !== 0) throw new Error(`twine ${w.filename}: ${r.out.slice(-500)}`);
        }
        return `labbulk ${version}.0-${BULK_WHEELS - 1}`;
      },
    );
    // Every file copied before the rm (the timer's catch-up of older rows included).
    await agentOn(lab, app, "files-copy");
    const rows = await fileRows(lab);
    const bytes = treeBytes(packagesDir);
    const metadataFiles = [...rows.keys()].filter((k) => k.endsWith(".whl")).length;
    // The bad rm, on the storage primary, which DRBD copies to its peer: everything the volume
    // serves (files, their PEP 658 metadata, the static pages), as the loss of the pair would.
    markFault(lab);
    for (const dir of ["packages", "simple", "pypi"])
      rmSync(join(lab.dirs.packages, dir), { recursive: true, force: true });
    const gone = rows.size;

    // On-call opens the runbook the page names.
    const runbook = runbookById(lab, await awaitAlarm(lab, alarmName(lab.t, app, "package-files-missing")));
    await report.check(
      section,
      `runbook ${runbook.id}: every file restored, each sha256 equal to its row`,
      async () => {
        const started = Date.now();
        const run = await executeRunbook(runbook, (h) => lab.node(h), { stepTimeoutMs: 600_000 });
        if (run.failure) throw new Error(run.failure);
        const took = seconds(started, Date.now());
        const restoreStep = run.executed.find((e) => e.step.command.endsWith("files-restore"));
        const summary = JSON.parse(restoreStep?.stdout.trim().split("\n").at(-1) ?? "{}") as Record<
          string,
          number
        >;
        let matched = 0;
        for (const [key, sha] of rows) {
          const data = readFileSync(join(packagesDir, key));
          if (createHash("sha256").update(data).digest("hex") === sha) matched++;
        }
        report.figure(
          section,
          "package files restored with a matching sha256",
          matched,
          `of ${gone}`,
          "goal: all",
        );
        report.figure(
          section,
          "package file restore time",
          restoreStep?.seconds ?? took,
          "s",
          `${mb(bytes)} MB`,
        );
        report.figure(
          section,
          "package file restore throughput",
          Math.round((mb(bytes) / Math.max(restoreStep?.seconds ?? took, 0.001)) * 100) / 100,
          "MB/s",
        );
        if (matched !== gone) throw new Error(`${gone - matched} of ${gone} files missing or different`);
        if (summary.metadataRestored !== metadataFiles)
          throw new Error(`${summary.metadataRestored} of ${metadataFiles} wheels' .metadata written again`);
        if (!probe) throw new Error("no probe wheel was published");
        const pip = await lab.client.execAsync(
          clientCommand(
            pipArgv("download", {
              indexUrl: `https://${lab.t.domain}/simple/`,
              cert: `${CLIENT_DIR}/ca.pem`,
              into: `${CLIENT_DIR}/pip-d14`,
              spec: `${probe.name}==${probe.version}`,
            }),
          ),
          { timeoutMs: 90_000 },
        );
        if (pip.status !== 0) throw new Error(`pip after the restore: ${pip.stderr}${pip.stdout}`);
        return `${matched} of ${gone} files (${mb(bytes)} MB) and ${summary.metadataRestored} .metadata restored in ${restoreStep?.seconds.toFixed(2)} s, pages of ${summary.pagesPublished} projects written; pip downloads ${probe.filename} through the index again; restore said ${JSON.stringify(summary)}; ${describeRun(run).join("; ")}`;
      },
    );
  },
);

export const bothDbLost = drill(
  "15",
  "both database nodes lost with their volumes; the replacements restore from the repository",
  900_000,
  async (lab, report, section) => {
    const dbs = nodesWithRole(lab.t, "db").map((n) => n.name);
    await ensureSeqTable(lab);
    // The table itself reaches the repository first: the figure is about rows, not the table.
    const { primary: before } = await primaryOf(lab);
    await agentOn(lab, before, "db-archive-check");
    const writer = startWriter(lab, "d15", 15_000_000);
    await waitWrites(writer, 50);
    // Long enough for archive_timeout to ship segments under load; the loss comes mid-stream.
    await sleep(2 * lab.t.backup.archiveTimeoutSeconds * 1000 + 1_000);
    markFault(lab);
    const lostAt = Date.now();
    await Promise.all(dbs.map((n) => lab.node(n).crash()));
    // The replacements: new instances on new, empty volumes.
    // New instances on new volumes; the old instances' interfaces are gone with them.
    for (const n of dbs) {
      lab.node(n).discardDisk();
      instanceDeleted(lab.dirs.store, n);
    }
    // On-call replaces both when the page names db-both-lost: no node sees this loss alone.
    const [both] = compositeAlarms(lab.t);
    if (!both) throw new Error("no composite alarm for both database nodes");
    // Silence fires after two whole periods: up to 30 s.
    await awaitAlarm(lab, both.name, 45_000);
    const replaced = await report.check(
      section,
      "both replaced; the first restores from the repository at its first boot, the second copies it",
      async () => {
        await Promise.all(dbs.map((n) => lab.node(n).boot()));
        const boots = await Promise.all(dbs.map((n) => firstBoot(lab, n)));
        for (const n of dbs) await lab.node(n).execAsync(ROLLOUT_COMMAND, { timeoutMs: 600_000 });
        return boots
          .flat()
          .map((s) => `${s.node} ${s.argv.join(" ")} ${s.seconds.toFixed(1)} s`)
          .join("; ");
      },
    );
    let firstWriteBack = -1;
    try {
      firstWriteBack = await until("a committed write after the loss", replaced ? 120_000 : 1_000, () =>
        writer.writes().some((w) => w.ok && w.at > lostAt),
      );
    } catch {
      // reported below
    }
    const writes = await writer.stop();
    if (!replaced) return;
    const { primary } = await primaryOf(lab);
    // A write acknowledged just after the crash was committed before it: the outage starts at
    // the first failed write, and every write acknowledged before that one counts.
    const firstFail = writes.find((w) => !w.ok && w.at > lostAt);
    const outageFrom = firstFail?.at ?? lostAt;
    const ackedBefore = writes.filter((w) => w.ok && w.at < outageFrom);
    const rto = seconds(lostAt, writes.find((w) => w.ok && w.at > outageFrom)?.at ?? Date.now());
    await report.check(section, `runbook db-both-lost on the replacements`, async () => {
      const run = await executeRunbook(runbookById(lab, "db-both-lost"), (h) => lab.node(h), {
        stepTimeoutMs: 600_000,
      });
      if (run.failure) throw new Error(run.failure);
      return describeRun(run).join("; ");
    });
    await report.check(section, "RTO and RPO of losing both database nodes", async () => {
      if (firstWriteBack < 0) throw new Error("no write succeeded within 120 s of the replacement");
      const missing = await lostRows(lab, primary, ackedBefore);
      const lastAcked = ackedBefore.at(-1)?.at ?? outageFrom;
      const present = ackedBefore.filter((w) => !missing.includes(w.n));
      const rpoSeconds = missing.length === 0 ? 0 : seconds(present.at(-1)?.at ?? lostAt, lastAcked);
      report.figure(
        section,
        "both db nodes lost: RTO (loss -> first committed write)",
        rto,
        "s",
        "the page, then the replacements",
      );
      report.figure(
        section,
        "both db nodes lost: RPO, committed rows missing",
        missing.length,
        `of ${ackedBefore.length}`,
        `${rpoSeconds} s of writes; archive_timeout ${lab.t.backup.archiveTimeoutSeconds} s; goal <= 60 s`,
      );
      // What the replacement's first boot recorded: when, seconds, bytes of the restored cluster.
      const state = await lab.exec(primary, `cat ${paths.agentState}/restored-from-repository`);
      const [at, restoreMs, dataBytes] = state.stdout.trim().split(" ").map(Number);
      const restoreSeconds = (restoreMs ?? 0) / 1000;
      if (state.status !== 0 || !at || at * 1000 < lostAt - 1000)
        throw new Error(
          `${primary} did not restore from the repository after the loss: ${state.stdout}${state.stderr}`,
        );
      const repoBytes = treeBytes(lab.dirs.backupRepository);
      report.figure(
        section,
        "database restore from the repository",
        restoreSeconds,
        "s",
        `${mb(dataBytes ?? 0)} MB cluster without pg_wal; repository ${mb(repoBytes)} MB (compressed, WAL included)`,
      );
      report.figure(
        section,
        "database restore throughput",
        Math.round((mb(dataBytes ?? 0) / Math.max(restoreSeconds, 0.001)) * 100) / 100,
        "MB/s",
        "cluster bytes without pg_wal / restore seconds",
      );
      if (rpoSeconds > 60) throw new Error(`${missing.length} committed rows (${rpoSeconds} s) lost`);
      return `${primary} primary again; first committed write ${rto} s after the loss; ${missing.length} of ${ackedBefore.length} acknowledged rows missing (${rpoSeconds} s)`;
    });
    await bootAgainIfDown(lab, dbs);
  },
);

/** A node a failed drill left down comes back on its disk, so later drills find the pair. */
async function bootAgainIfDown(lab: Lab, names: readonly string[]): Promise<void> {
  for (const n of names) if (!lab.node(n).up) await bootAgain(lab, n);
}
