/**
 * Drill: the upload sshd on one app server dies (SIGKILL of its listener). HAProxy's banner check
 * takes it out; new SFTP sessions through the floating IP must go to the other app server. Then
 * the `upload-backend-loss-<app>` runbook is executed as rendered.
 */
import { buildRunbooks } from "../../src/runbooks/runbooks.js";
import { type Lab, sftpArgv } from "../lib/lab.js";
import { describeRun, executeRunbook } from "../lib/runbook.js";
import { drill, killPids, nodePids, seconds, sleep } from "./common.js";

const LOST = "app-a";
/** Consecutive successful sessions that count as "reliably". */
const STREAK = 6;

async function sftpLs(lab: Lab, fip: string): Promise<boolean> {
  const r = await lab.client.execAsync(sftpArgv(lab.t, fip, 3), { input: "ls /upload\n", timeoutMs: 10_000 });
  return r.status === 0;
}

export const uploadBackendLoss = drill(
  "6",
  `upload sshd on ${LOST} dies`,
  90_000,
  async (lab, report, section) => {
    const fip = lab.t.floatingIps[0]?.address ?? "";
    const sshd = await lab.node(LOST).sh("cat /run/sshd.pid");
    await sleep(500);
    const killedAt = Date.now();
    killPids([Number(sshd.trim())].filter((p) => nodePids(lab, LOST).includes(p)));
    const attempts: { start: number; end: number; ok: boolean }[] = [];
    let streak = 0;
    while (streak < STREAK && Date.now() - killedAt < 30_000) {
      const start = Date.now();
      const ok = await sftpLs(lab, fip);
      attempts.push({ start, end: Date.now(), ok });
      streak = ok ? streak + 1 : 0;
    }
    const failed = attempts.filter((a) => !a.ok);
    const firstOfStreak = attempts.at(-STREAK);
    await report.check(
      section,
      `new SFTP sessions via ${fip} succeed reliably after ${LOST}'s sshd dies`,
      () => {
        if (streak < STREAK || !firstOfStreak)
          throw new Error(
            `no streak of ${STREAK} within 30 s: ${attempts.map((a) => (a.ok ? "ok" : "fail")).join(" ")}`,
          );
        return `${attempts.length} sessions, ${failed.length} failed; reliable from +${seconds(killedAt, firstOfStreak.start)} s`;
      },
    );
    const lastFail = failed.at(-1);
    report.figure(
      section,
      "new uploads succeed after backend death [goal <= 3 s]",
      lastFail ? seconds(killedAt, lastFail.end) : 0,
      "s",
      `${failed.length} of ${attempts.length} sessions failed`,
    );

    const runbook = buildRunbooks(lab.t).find((r) => r.id === `upload-backend-loss-${LOST}`);
    if (!runbook) throw new Error(`no upload-backend-loss-${LOST} runbook`);
    // HAProxy needs fall x interval to see the listener gone; the runbook starts once it is paged.
    await sleep(Math.max(0, killedAt + 2_000 - Date.now()));
    const run = await executeRunbook(runbook, (h) => lab.node(h));
    // Whatever the runbook did, sshd must run again for the next drill.
    await lab.agent(LOST, "service ssh status").then(async (s) => {
      if (!s.includes("running")) await lab.agent(LOST, "service ssh start");
    });
    await report.check(section, `runbook ${runbook.id} passes as rendered`, () => {
      if (run.failure) throw new Error(run.failure);
      return `${describeRun(run).join("; ")}${run.skipped.length ? `; skipped ${run.skipped.length} operator step(s)` : ""}`;
    });
    report.figure(section, `runbook ${runbook.id}`, seconds(run.startedAt, run.endedAt), "s");
    if (!(await sftpLs(lab, fip))) throw new Error("sftp fails after the runbook");
  },
);
