/**
 * Drill: the synchronous standby goes away (Postgres stopped on it). Commits on the primary wait
 * for it (synchronous_standby_names), so writes stall; the db-primary-loss runbook's relief step
 * (`db-sync off`, found by command) lets them through. Then the standby starts again and
 * synchronous replication is restored with the runbook's `db-sync on` step.
 */

import { paths } from "../../src/layout.js";
import { buildRunbooks } from "../../src/runbooks/runbooks.js";
import { waitFor } from "../lib/bringup.js";
import { stepByCommand, stepFailure } from "../lib/runbook.js";
import { drill, markFault, seconds, sleep } from "./common.js";
import { lostRows, startWriter, streams, waitWrites } from "./db-common.js";
import { dbHealthy } from "./db-primary-loss.js";

/** How long the stall is left before the runbook step relieves it. */
const STALL_MS = 4_000;

async function roles(lab: Parameters<typeof dbHealthy>[0]): Promise<{ primary: string; standby: string }> {
  const dbs = lab.nodesOf("db").map((n) => n.name);
  for (const name of dbs) {
    const r = await lab.exec(name, `${paths.agent} status`);
    if (r.stdout.includes("postgres\tprimary")) {
      const standby = dbs.find((d) => d !== name);
      if (!standby) break;
      return { primary: name, standby };
    }
  }
  throw new Error("no primary among the db nodes");
}

export const syncStandbyDown = drill(
  "8",
  "synchronous standby down",
  120_000,
  async (lab, report, section) => {
    if (!lab.t.postgres.synchronous) {
      await report.check(
        section,
        "skipped: replication is asynchronous in this topology",
        () => "nothing stalls",
      );
      return;
    }
    const { primary, standby } = await roles(lab);
    // The runbook of the original primary's loss carries the relief step; it runs on the node
    // that was promoted, which is the primary now.
    const runbook = buildRunbooks(lab.t).find((r) => r.id === `db-standby-lost-${standby}`);
    if (!runbook) throw new Error(`no db-primary-loss-${standby} runbook`);
    const off = stepByCommand(runbook, "db-sync off");
    const on = stepByCommand(runbook, "db-sync on");
    if (off.host !== primary || on.host !== primary)
      throw new Error(`relief steps run on ${off.host}/${on.host}, but the primary is ${primary}`);

    const writer = startWriter(lab, "d8", 1_000_000);
    try {
      await waitWrites(writer, 20);
      markFault(lab);
      const stopAt = Date.now();
      await lab.agent(standby, "service postgresql stop");
      const stoppedAt = Date.now();
      await sleep(STALL_MS);
      const reliefAt = Date.now();
      const r = await lab.node(off.host).execAsync(["sh", "-c", off.command], { timeoutMs: 30_000 });
      const failure = stepFailure(off, r.status, r.stdout, r.stderr);
      const stalled = writer.writes().filter((w) => w.ok && w.at > stoppedAt + 300 && w.at < reliefAt);
      const lastBefore = writer
        .writes()
        .filter((w) => w.ok && w.at < reliefAt)
        .at(-1);
      await report.check(section, `writes stall while ${standby} (synchronous standby) is down`, () => {
        if (stalled.length) throw new Error(`${stalled.length} writes acknowledged with the standby down`);
        return `no commit acknowledged from +${seconds(stopAt, stoppedAt)} s (standby stopped) until the relief at +${seconds(stopAt, reliefAt)} s`;
      });
      report.figure(
        section,
        "write stall before the relief step (left on purpose)",
        lastBefore ? seconds(lastBefore.at, reliefAt) : 0,
        "s",
        `standby stopped at +${seconds(stopAt, stoppedAt)} s`,
      );
      await report.check(section, `runbook step "${off.title}" (${off.host}: ${off.command})`, () => {
        if (failure) throw new Error(failure);
        return r.stdout.trim();
      });
      let resumedAt = 0;
      await report.check(section, "writes resume after the relief step", async () => {
        await waitFor(
          "a write after the relief",
          15_000,
          () => {
            const w = writer.writes().find((x) => x.ok && x.at > reliefAt);
            if (!w) return new Error("none yet");
            resumedAt = w.at;
            return "ok";
          },
          50,
        );
        return `first write +${seconds(reliefAt, resumedAt)} s after the step started`;
      });
      if (resumedAt)
        report.figure(section, "writes resume after db-sync off", seconds(reliefAt, resumedAt), "s");

      // Restore: the standby starts again, then synchronous replication comes back.
      await lab.agent(standby, "service postgresql start");
      await waitFor("standby streaming", 30_000, () => streams(lab, primary, standby, "async"), 300);
      const ro = await lab.node(on.host).execAsync(["sh", "-c", on.command], { timeoutMs: 30_000 });
      await report.check(
        section,
        `runbook step "${on.title}" and ${standby} streams synchronously again`,
        async () => {
          const f = stepFailure(on, ro.status, ro.stdout, ro.stderr);
          if (f) throw new Error(f);
          return `${ro.stdout.trim()}; ${await waitFor("sync", 30_000, () => streams(lab, primary, standby, "sync"), 300)}`;
        },
      );
      await sleep(500);
    } finally {
      await writer.stop();
    }
    const acked = writer.writes().filter((w) => w.ok);
    const lost = await lostRows(lab, primary, acked);
    await report.check(section, "no acknowledged commit lost", () => {
      if (lost.length) throw new Error(`lost ${lost.length}: ${lost.slice(0, 20).join(", ")}`);
      return `${acked.length} acknowledged, all on ${primary}`;
    });
  },
  dbHealthy,
);
