/**
 * Drill: daemons die under load and their units bring them back, as systemd does on AWS:
 * HAProxy (Restart=always) on a balancer, Apache (Restart=on-abort) on an app server, and the
 * register job killed mid-run, which its path unit starts again while uploads wait. Nobody
 * restarts anything by hand.
 */
import { copyFileSync } from "node:fs";
import { join } from "node:path";
import { CLIENT_DIR, httpsVia, type Lab, sftpArgv } from "../lib/lab.js";
import { type LoadHandle, startLoad } from "../lib/load.js";
import { buildWheel } from "../lib/wheel.js";
import { homeFip } from "./balancers.js";
import { between, drill, failedCount, seconds, sleep, until } from "./common.js";

const LB = "lb-a";
const APP = "app-a";
const KILL_WINDOW_SECONDS = 8;

/** Kill -9 the main process named by `pidFile` in `node`; resolves when a new main process runs. */
async function killAndWaitForRestart(
  lab: Lab,
  node: string,
  pidFile: string,
): Promise<{ killedAt: number; backAt: number }> {
  const old = (await lab.node(node).sh(`cat ${pidFile}`)).trim();
  const killedAt = Date.now();
  await lab.node(node).sh(`kill -9 ${Number(old)}`);
  const backAt = await until(
    `${node}: ${pidFile} names a new live process`,
    20_000,
    () => {
      const r = lab
        .node(node)
        .exec(["sh", "-c", `p=$(cat ${pidFile} 2>/dev/null) && kill -0 "$p" && echo "$p"`]);
      return r.status === 0 && r.stdout.trim() !== old && r.stdout.trim() !== "";
    },
    50,
  );
  return { killedAt, backAt };
}

async function sftp(lab: Lab, fip: string, commands: string): Promise<boolean> {
  const r = await lab.client.execAsync(sftpArgv(lab.t, fip, 3), { input: commands, timeoutMs: 15_000 });
  return r.status === 0;
}

async function listed(lab: Lab, fip: string, name: string, filename: string): Promise<boolean> {
  const r = await httpsVia(lab, fip, `/simple/${name}/`);
  return r.code === 200 && r.body.includes(filename);
}

export const supervision = drill(
  "11",
  "daemons killed under load come back by their units",
  180_000,
  async (lab, report, section) => {
    const fip = homeFip(lab, LB);
    const loads: LoadHandle[] = lab.t.floatingIps.map((f) =>
      startLoad(lab, { name: `d11-${f.address}`, fip: f.address, requestTimeoutSeconds: 2 }),
    );
    const failedGets = (from: number, to: number): string => {
      const s = loads.flatMap((l) => between(l.samples(), from, to));
      return `${failedCount(s)} of ${s.length} GETs failed`;
    };
    try {
      await sleep(1_000);
      // HAProxy: SFTP through lb-a's address must work again once the unit has restarted it.
      await report.check(
        section,
        `HAProxy killed on ${LB}: its unit restarts it and SFTP via ${fip} works`,
        async () => {
          const { killedAt, backAt } = await killAndWaitForRestart(lab, LB, "/run/haproxy.pid");
          const sftpAt = await until(`SFTP via ${fip}`, 20_000, () => sftp(lab, fip, "ls /upload\n"), 100);
          report.figure(
            section,
            `HAProxy on ${LB}: kill -9 -> restarted by Restart=always`,
            seconds(killedAt, backAt),
            "s",
          );
          report.figure(
            section,
            `HAProxy on ${LB}: kill -9 -> SFTP via ${fip} works`,
            seconds(killedAt, sftpAt),
            "s",
          );
          return `back after ${seconds(killedAt, backAt)} s, SFTP after ${seconds(killedAt, sftpAt)} s`;
        },
      );

      // Apache: nginx routes around the dead app server; its unit restarts Apache.
      await report.check(section, `Apache killed on ${APP}: its unit restarts it, no GET fails`, async () => {
        const { killedAt, backAt } = await killAndWaitForRestart(lab, APP, "/run/apache2/apache2.pid");
        const healthAt = await until(
          `${APP} /_health`,
          20_000,
          async () => {
            const r = await lab.exec(
              APP,
              `curl -fsS -o /dev/null --max-time 2 http://127.0.0.1:${lab.t.app.httpPort}/_health`,
            );
            return r.status === 0;
          },
          100,
        );
        await sleep(1_000);
        const gets = failedGets(killedAt, Date.now());
        report.figure(
          section,
          `Apache on ${APP}: kill -9 -> serving again (Restart=on-abort)`,
          seconds(killedAt, healthAt),
          "s",
          gets,
        );
        if (!gets.startsWith("0 of")) throw new Error(gets);
        return `restarted after ${seconds(killedAt, backAt)} s, /_health after ${seconds(killedAt, healthAt)} s; ${gets}`;
      });

      // The register job killed mid-run: its path unit starts it again while the upload waits.
      await report.check(
        section,
        "register job killed mid-run: the path unit runs it again and the upload is listed",
        async () => {
          const wheel = buildWheel(lab.dirs.work, "supervised", `1.0.${Date.now() % 100000}`);
          copyFileSync(wheel.path, join(lab.dirs.client, wheel.filename));
          const uploadedAt = Date.now();
          if (!(await sftp(lab, fip, `put ${CLIENT_DIR}/${wheel.filename} /upload/${wheel.filename}\n`)))
            throw new Error("sftp upload failed");
          // For KILL_WINDOW_SECONDS every register run on every app server is killed as it starts
          // (`[i]` keeps pkill from matching this shell's own command line).
          const apps = lab.nodesOf("app").map((n) => n.name);
          const killer = `end=$(($(date +%s) + ${KILL_WINDOW_SECONDS})); n=0
while [ "$(date +%s)" -lt "$end" ]; do pkill -9 -f '[i]ndex.fcgi register' && n=$((n + 1)); sleep 0.05; done
echo "$n"`;
          const kills = await Promise.all(apps.map((app) => lab.exec(app, killer, { timeoutMs: 30_000 })));
          const killed = kills.reduce((sum, r) => sum + Number(r.stdout.trim() || 0), 0);
          const windowEnd = Date.now();
          if (killed === 0)
            throw new Error(`no register run started within ${KILL_WINDOW_SECONDS} s of the upload`);
          // A run may still win the race and finish between two kills; then it is listed already.
          const listedAt = await until(
            "the upload listed",
            60_000,
            () => listed(lab, fip, wheel.name, wheel.filename),
            250,
          );
          report.figure(
            section,
            `register runs killed for ${KILL_WINDOW_SECONDS} s: end of kills -> listed`,
            seconds(windowEnd, listedAt),
            "s",
          );
          return `${killed} register run(s) killed in ${KILL_WINDOW_SECONDS} s; listed ${seconds(windowEnd, listedAt)} s after the kills stopped (${seconds(uploadedAt, listedAt)} s after the upload)`;
        },
      );
    } finally {
      for (const l of loads) await l.stop();
    }
  },
);
