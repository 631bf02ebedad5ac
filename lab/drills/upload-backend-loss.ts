/**
 * Drill: the upload sshd on one app server dies (SIGKILL of its listener). HAProxy's banner check
 * takes it out; new SFTP sessions through the floating IP must go to the other app server. Then
 * the `upload-backend-loss-<app>` runbook is executed as rendered.
 */
import { buildRunbooks } from "../../src/runbooks/runbooks.js";
import { type Lab, sftpArgv } from "../lib/lab.js";
import { describeRun, executeRunbook } from "../lib/runbook.js";
import { drill, markFault, seconds, sleep, until } from "./common.js";

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
    const sshd = (await lab.node(LOST).sh("cat /run/sshd.pid")).trim();
    await sleep(500);
    markFault(lab);
    const killedAt = Date.now();
    await lab.node(LOST).sh(`kill -9 ${Number(sshd)}`);
    // ssh.service has Restart=on-failure: the node's service manager starts it again, as on AWS.
    const restartedAt = await until(`${LOST}: sshd restarted by its unit`, 15_000, () => {
      const r = lab.node(LOST).exec(["sh", "-c", 'p=$(cat /run/sshd.pid) && kill -0 "$p" && echo "$p"']);
      return r.status === 0 && r.stdout.trim() !== sshd;
    });
    report.figure(
      section,
      `${LOST}'s sshd back by its unit (Restart=on-failure)`,
      seconds(killedAt, restartedAt),
      "s",
    );
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

    // The runbook is for an sshd its unit does not bring back (exit 255, start limit hit): here
    // it is stopped through the service manager and stays down.
    const runbook = buildRunbooks(lab.t).find((r) => r.id === `upload-backend-loss-${LOST}`);
    if (!runbook) throw new Error(`no upload-backend-loss-${LOST} runbook`);
    await lab.agent(LOST, "service ssh stop");
    const lb = lab.nodesOf("balancer")[0]?.name ?? "";
    // HAProxy needs fall x interval to see the listener gone; the runbook starts once it is paged.
    await until(`HAProxy on ${lb} sees ${LOST} down`, 15_000, async () =>
      /(DOWN|MAINT)/.test(
        (await lab.agent(lb, "upload-backends")).split("\n").find((l) => l.startsWith(LOST)) ?? "",
      ),
    );
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
