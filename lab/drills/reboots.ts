/**
 * Drill: every node reboots (the whole node dies at once, then boots on the same disk) and
 * rejoins by itself: its init starts the bootstrap unit, which fetches, applies and converges.
 * Nothing is done to a node by hand. The database primary is lost for good first: the operator
 * runs the runbook's steps on the survivors, and the old primary, booting later, must come back
 * fenced as a standby and never accept a write.
 */

import { paths } from "../../src/layout.js";
import { buildRunbooks, OPERATOR } from "../../src/runbooks/runbooks.js";
import { bootAgain, reboot } from "../lib/boot.js";
import { waitFor } from "../lib/bringup.js";
import type { Lab } from "../lib/lab.js";
import { type LoadHandle, startLoad } from "../lib/load.js";

import { describeRun, executeRunbook } from "../lib/runbook.js";
import { balancersHealthy, between, drill, failedCount, seconds, sleep, uploadsHealthy } from "./common.js";
import { primaryOf, superSqlArgv } from "./db-common.js";
import { dbHealthy } from "./db-primary-loss.js";

/** nginx's fail_timeout for an app server (see the nginx renderer's upstream block). */
const NGINX_FAIL_TIMEOUT_MS = 10_000;

/** Whether a db node commits a local write right now (a node that is down does not). */
async function writable(lab: Lab, node: string): Promise<boolean> {
  const n = lab.node(node);
  if (!n.up) return false;
  const r = await n.execAsync(superSqlArgv(lab.t.postgres.port, "postgres"), {
    input: "SET synchronous_commit = local; SET statement_timeout = 2000;\nCREATE TEMP TABLE p (x int);\n",
    timeoutMs: 5_000,
  });
  return r.status === 0;
}

async function inRecovery(lab: Lab, node: string): Promise<string> {
  const r = await lab
    .node(node)
    .execAsync(superSqlArgv(lab.t.postgres.port, "postgres"), { input: "SELECT pg_is_in_recovery();\n" });
  return r.stdout.trim();
}

export const reboots = drill(
  "10",
  "every node reboots and rejoins by itself",
  900_000,
  async (lab, report, section) => {
    const loads: LoadHandle[] = lab.t.floatingIps.map((f) =>
      startLoad(lab, { name: `d10-${f.address}`, fip: f.address, requestTimeoutSeconds: 2 }),
    );
    const requestsDuring = (from: number, to: number): string => {
      const s = loads.flatMap((l) => between(l.samples(), from, to));
      return `${failedCount(s)} of ${s.length} GETs via the floating IPs failed`;
    };
    const rejoined = async (node: string, check: () => Promise<string>): Promise<void> => {
      const from = Date.now();
      let booted = 0;
      const ok = await report.check(section, `${node} reboots and rejoins by itself`, async () => {
        const step = await reboot(lab, node);
        report.steps.push(step);
        booted = step.seconds;
        const detail = await check();
        return `boot unit done in ${step.seconds.toFixed(1)} s; ${detail}; ${requestsDuring(from, Date.now())}`;
      });
      if (ok)
        report.figure(
          section,
          `${node}: reboot until its boot unit finished`,
          Math.round(booted * 10) / 10,
          "s",
        );
    };
    const mode = lab.t.postgres.synchronous ? "sync" : "async";
    try {
      await sleep(1_000);
      // The standby: it comes back streaming.
      const before = await primaryOf(lab);
      await rejoined(before.standby, async () => {
        const r = await waitFor(
          "streaming",
          60_000,
          async () => {
            const out = await lab.exec(before.primary, `${paths.agent} db-replication`);
            return new RegExp(`^${before.standby} streaming ${mode}$`, "m").test(out.stdout)
              ? `${before.standby} streams (${mode}) from ${before.primary}`
              : new Error(out.stdout.trim() || out.stderr.trim());
          },
          500,
        );
        return r;
      });

      // The primary is lost for good: the operator fails over on the survivors by the runbook;
      // the old primary boots later and must come back fenced, as a standby, never writable.
      const { primary: lost } = await primaryOf(lab);
      const runbook = buildRunbooks(lab.t).find((r) => r.id === `db-primary-loss-${lost}`);
      if (!runbook) throw new Error(`no db-primary-loss-${lost} runbook`);
      const reattachAt = runbook.steps.findIndex((s) => s.host === lost && /reattach/.test(s.command));
      const before2 = runbook.steps.slice(0, reattachAt);
      const after2 = runbook.steps.slice(reattachAt + 1);
      await lab.node(lost).crash();
      const crashedAt = Date.now();
      const failover = await executeRunbook(runbook, (h) => lab.node(h), {
        include: (s) => s.host !== OPERATOR && s.host !== lost && before2.includes(s),
      });
      await report.check(section, `${lost} lost: runbook ${runbook.id} on the survivors`, () => {
        if (failover.failure) throw new Error(failover.failure);
        return `${describeRun(failover).join("; ")} (steps on ${lost} skipped: it is down)`;
      });
      report.figure(
        section,
        `${lost} lost: runbook on the survivors`,
        seconds(crashedAt, failover.endedAt),
        "s",
      );
      let probing = true;
      const writes: number[] = [];
      const probe = (async () => {
        while (probing) {
          if (await writable(lab, lost)) writes.push(Date.now());
          await sleep(100);
        }
      })();
      const bootAt = Date.now();
      let boot: Awaited<ReturnType<typeof bootAgain>> | undefined;
      try {
        boot = await bootAgain(lab, lost);
        report.steps.push(boot);
      } finally {
        probing = false;
        await probe;
      }
      await report.check(
        section,
        `old primary ${lost} boots fenced and rejoins as a standby, never writable`,
        async () => {
          if (writes.length)
            throw new Error(`${lost} accepted a write ${writes.length} time(s) while booting`);
          const recovery = await inRecovery(lab, lost);
          if (recovery !== "t") throw new Error(`${lost} pg_is_in_recovery = ${recovery}`);
          const log = await lab.exec(lost, "tail -n 40 /var/log/pypi-supervise/pypi-bootstrap.service.log");
          const line = log.stdout.split("\n").find((l) => /old primary; re-attached/.test(l)) ?? "";
          if (!line) throw new Error(`no re-attach in the boot log: ${log.stdout.slice(-600)}`);
          return `${line.trim()} ${seconds(bootAt, Date.now())} s after power-on; 0 writes accepted`;
        },
      );
      if (boot)
        report.figure(
          section,
          `old primary ${lost}: power-on to standby`,
          Math.round(boot.seconds * 10) / 10,
          "s",
        );
      const rest = await executeRunbook(runbook, (h) => lab.node(h), {
        include: (s) => s.host !== OPERATOR && after2.includes(s),
      });
      await report.check(section, `runbook ${runbook.id}: the steps after the re-attach`, () => {
        if (rest.failure) throw new Error(rest.failure);
        return describeRun(rest).join("; ");
      });
      await report.check(section, "database pair healthy", () => dbHealthy(lab));

      // App servers: the storage pair's group moves to the peer and back; uploads and the index go on.
      for (const app of lab.nodesOf("app").map((n) => n.name)) {
        await rejoined(app, async () => {
          const health = await lab.agent(app, "storage-check");
          return `${health.trim()}; ${await uploadsHealthy(lab, 30_000)}`;
        });
        // nginx keeps a failed upstream out for fail_timeout; one app server at a time, as an
        // operator would, so the next reboot does not find both out of rotation.
        await sleep(NGINX_FAIL_TIMEOUT_MS + 1_000);
      }

      // Balancers: the peer holds the addresses meanwhile; each takes its home back.
      for (const lb of lab.nodesOf("balancer").map((n) => n.name))
        await rejoined(lb, () => balancersHealthy(lab, 45_000));
    } finally {
      for (const l of loads) await l.stop();
    }
  },
  async (lab: Lab) => `${await dbHealthy(lab)}; ${await uploadsHealthy(lab)}`,
);
