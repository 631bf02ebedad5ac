/**
 * Drill: the Postgres primary's postmaster is killed (-9) under a sequence-numbered writer that
 * goes through the writer overlay address; then every step of `db-primary-loss-<primary>` runs
 * exactly as the stack renders it. Checks: no acknowledged commit is lost (synchronous mode),
 * never two writable primaries, the app's health recovers through the floating IPs.
 */

import { alarmName } from "../../src/health.js";
import { paths, pgDataDir } from "../../src/layout.js";
import { buildRunbooks } from "../../src/runbooks/runbooks.js";
import { waitFor } from "../lib/bringup.js";
import { describeRun, executeRunbook } from "../lib/runbook.js";
import { awaitAlarm, balancersHealthy, drill, markFault, seconds, sleep } from "./common.js";
import {
  dbState,
  ensureSeqTable,
  lostRows,
  startMonitor,
  startWriter,
  streams,
  superSql,
  waitWrites,
} from "./db-common.js";

const PRIMARY = "db-a";
const STANDBY = "db-b";

export async function dbHealthy(lab: Parameters<typeof balancersHealthy>[0]): Promise<string> {
  const mode = lab.t.postgres.synchronous ? "sync" : "async";
  const primary = (await lab.exec(PRIMARY, `${paths.agent} status`)).stdout.includes("postgres\tprimary")
    ? PRIMARY
    : STANDBY;
  const standby = primary === PRIMARY ? STANDBY : PRIMARY;
  const repl = await waitFor("replication", 30_000, () => streams(lab, primary, standby, mode), 500);
  const writer = await lab.agent("app-a", "db-writer-check");
  return `${repl}; ${writer.trim()}; ${await balancersHealthy(lab)}`;
}

export const dbPrimaryLoss = drill(
  "7",
  `postgres primary ${PRIMARY} lost`,
  150_000,
  async (lab, report, section) => {
    const pg = lab.t.postgres;
    const runbook = buildRunbooks(lab.t).find((r) => r.id === `db-primary-loss-${PRIMARY}`);
    if (!runbook) throw new Error(`no db-primary-loss-${PRIMARY} runbook`);
    await ensureSeqTable(lab);
    const made = await superSql(lab, PRIMARY, "CREATE TABLE IF NOT EXISTS drill_probe (at timestamptz)");
    if (made.status !== 0) throw new Error(`drill_probe: ${made.stderr}`);
    await sleep(500);
    const monitor = startMonitor(lab, [PRIMARY, STANDBY]);
    const writer = startWriter(lab, "d7", 0);
    let run: Awaited<ReturnType<typeof executeRunbook>> | undefined;
    let killedAt = 0;
    try {
      await waitWrites(writer, 30);
      const pid = (await lab.node(PRIMARY).sh(`head -n 1 ${pgDataDir(pg.version)}/postmaster.pid`)).trim();
      markFault(lab);
      killedAt = Date.now();
      await lab.node(PRIMARY).runAsync(["kill", "-9", pid]);
      // On-call opens the runbook when the standby's view of the writer pages.
      await awaitAlarm(lab, alarmName(lab.t, STANDBY, "writer"));
      run = await executeRunbook(runbook, (h) => lab.node(h));
      await sleep(1_000);
    } finally {
      await writer.stop();
    }
    const samples = await monitor.stop();
    const r = run;
    await report.check(section, `runbook ${runbook.id} passes as rendered`, () => {
      if (!r) throw new Error("runbook did not run");
      if (r.failure) throw new Error(r.failure);
      return describeRun(r).join("; ");
    });
    if (!r) return;
    dbState.reattach = r.executed.find((e) => e.step.command.endsWith("db-reattach"));

    const all = writer.writes();
    const acked = all.filter((w) => w.ok);
    const firstAfter = acked.find((w) => w.at > r.startedAt);
    report.figure(
      section,
      "runbook duration (fence -> sync restored)",
      seconds(r.startedAt, r.endedAt),
      "s",
      `${r.executed.length} steps`,
    );
    if (firstAfter) {
      report.figure(
        section,
        "DB writes resume after runbook start (RTO) [goal <= 5 s]",
        seconds(r.startedAt, firstAfter.at),
        "s",
      );
      report.figure(
        section,
        "kill -> first write on the new primary",
        seconds(killedAt, firstAfter.at),
        "s",
        "the alarm, then the runbook",
      );
    }
    report.figure(
      section,
      "failed write attempts after the kill",
      all.filter((w) => !w.ok && w.at > killedAt).length,
      "attempts",
      `${acked.length} writes acknowledged`,
    );

    const lost = await lostRows(lab, STANDBY, acked);
    report.figure(
      section,
      `committed rows lost (${pg.synchronous ? "synchronous" : "async"}) [goal 0]`,
      lost.length,
      "rows",
    );
    await report.check(section, "the writer resumes on the new primary", () => {
      if (!firstAfter) throw new Error("no acknowledged write after the runbook started");
      return `first write +${seconds(r.startedAt, firstAfter.at)} s after the runbook started`;
    });
    await report.check(
      section,
      `no acknowledged commit lost${pg.synchronous ? " (synchronous: RPO 0)" : ""}`,
      () => {
        if (lost.length && pg.synchronous)
          throw new Error(`lost ${lost.length}: ${lost.slice(0, 20).join(", ")}`);
        return `${acked.length} acknowledged, ${lost.length} missing on ${STANDBY}${pg.synchronous ? "" : " (async: reported, not required)"}`;
      },
    );
    await report.check(section, "never two writable primaries (monitor on both nodes)", () => {
      const a = samples.filter((s) => s.node === PRIMARY && s.writable);
      const b = samples.filter((s) => s.node === STANDBY && s.writable);
      const lateA = a.filter((s) => s.start >= killedAt);
      const earlyB = b.filter((s) => s.start <= killedAt);
      const lastA = Math.max(0, ...a.map((s) => s.end));
      const firstB = Math.min(Number.MAX_SAFE_INTEGER, ...b.map((s) => s.start));
      if (lateA.length) throw new Error(`${PRIMARY} committed ${lateA.length} probe(s) after the kill`);
      if (earlyB.length) throw new Error(`${STANDBY} committed ${earlyB.length} probe(s) before the kill`);
      if (b.length === 0) throw new Error(`${STANDBY} never became writable`);
      if (lastA >= firstB) throw new Error("writable windows overlap");
      return `${samples.length} probes; ${PRIMARY} writable until the kill (${a.length}), ${STANDBY} from +${seconds(killedAt, firstB)} s (${b.length}); no overlap`;
    });
    const healthFrom = r.endedAt;
    await report.check(
      section,
      "/_health through every floating IP recovers (the app reconnects)",
      async () => {
        const detail = await balancersHealthy(lab, 30_000);
        report.figure(
          section,
          "/_health 200 via every floating IP after the runbook",
          seconds(healthFrom, Date.now()),
          "s",
        );
        return detail;
      },
    );
  },
  dbHealthy,
);
