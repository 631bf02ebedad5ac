/**
 * Drill: nginx dies (SIGKILL, master and workers) on the balancer holding a floating IP while
 * Heartbeat there stays healthy. Heartbeat v1 does not monitor resources, so the address stays
 * on a node that refuses HTTPS. First with the agent's watchdog paused (what plain Heartbeat
 * gives), then with it running (`pypi-balancer watch`, respawned by Heartbeat): nginx restarted in
 * place, and, when nginx cannot start, the addresses handed to the peer.
 */
import { startLoad } from "../lib/load.js";
import { homeFip, httpsOk, peerBalancer, timeOwnership } from "./balancers.js";
import {
  between,
  drill,
  failedCount,
  killPids,
  markFault,
  nodePids,
  seconds,
  sleep,
  until,
} from "./common.js";

const NODE = "lb-a";
const PAUSE = "/run/pypi-node-watch.pause";
/** How long the unmitigated outage is left running before an operator restarts nginx. */
const UNMITIGATED_MS = 6_000;

export const nginxDeath = drill("4", `nginx dies on ${NODE}`, 120_000, async (lab, report, section) => {
  const fip = homeFip(lab, NODE);
  const killNginx = () => killPids(nodePids(lab, NODE, ["nginx"]));
  let broken = false;
  const load = startLoad(lab, { name: "d4", fip, requestTimeoutSeconds: 2 });
  try {
    // A: watchdog paused.
    await lab.node(NODE).runAsync(["touch", PAUSE]);
    await sleep(1_000);
    markFault(lab);
    const killA = Date.now();
    const n = killNginx();
    await sleep(UNMITIGATED_MS);
    const stillHeld = lab.addresses(NODE).includes(fip);
    const stillDown = !(await httpsOk(lab, fip));
    const restartAt = Date.now();
    await lab.agent(NODE, "service nginx start");
    const backA = await until(`HTTPS via ${fip}`, 20_000, () => httpsOk(lab, fip), 20);
    await report.check(
      section,
      "without the watchdog: the address stays on the node and HTTPS fails until nginx is restarted",
      () => {
        if (!stillHeld) throw new Error(`${fip} moved off ${NODE}: Heartbeat noticed after all`);
        if (!stillDown) throw new Error(`HTTPS via ${fip} answered with nginx dead`);
        return `${n} nginx processes killed; ${UNMITIGATED_MS / 1000} s later ${fip} still on ${NODE} and refusing; an operator restart at +${seconds(killA, restartAt)} s brought it back at +${seconds(killA, backA)} s`;
      },
    );
    report.figure(
      section,
      "outage without mitigation (until an operator restarts nginx; here by hand)",
      seconds(killA, backA),
      "s",
      "unbounded in general: Heartbeat v1 does not watch nginx",
    );

    // B: watchdog on.
    await lab.node(NODE).runAsync(["rm", "-f", PAUSE]);
    await sleep(1_500);
    const killB = Date.now();
    killNginx();
    let backB = 0;
    await report.check(
      section,
      "with the watchdog (pypi-balancer watch, respawned by Heartbeat): nginx is restarted",
      async () => {
        backB = await until(`HTTPS via ${fip}`, 20_000, () => httpsOk(lab, fip), 20);
        return `HTTPS via ${fip} back after ${seconds(killB, backB)} s`;
      },
    );
    if (backB) report.figure(section, "outage with the watchdog", seconds(killB, backB), "s");
    const endB = Date.now();

    // C: nginx cannot start on the node (its binary replaced inside the node's own mount
    // namespace): the watchdog hands the addresses to the peer with hb_standby, and takes them
    // back with hb_takeover once nginx runs again.
    await sleep(1_500);
    await lab.node(NODE).runAsync(["mount", "--bind", "/bin/false", "/usr/sbin/nginx"]);
    broken = true;
    const killC = Date.now();
    killNginx();
    const peer = peerBalancer(lab, NODE);
    let handed: { addressAt: number; httpsAt: number } | undefined;
    await report.check(
      section,
      `nginx cannot start: the watchdog hands ${fip} to ${peer} (hb_standby)`,
      async () => {
        handed = await timeOwnership(lab, fip, peer, 20_000, true);
        return `${peer} holds ${fip} after ${seconds(killC, handed.addressAt)} s, HTTPS after ${seconds(killC, handed.httpsAt)} s`;
      },
    );
    if (handed)
      report.figure(
        section,
        "outage when nginx cannot restart (hand-off to the peer)",
        seconds(killC, handed.httpsAt),
        "s",
      );
    await sleep(1_000);
    const fixAt = Date.now();
    await lab.node(NODE).runAsync(["umount", "/usr/sbin/nginx"]);
    broken = false;
    await report.check(
      section,
      `nginx runs again: the watchdog takes ${fip} back (hb_takeover)`,
      async () => {
        const back = await timeOwnership(lab, fip, NODE, 30_000, true);
        report.figure(section, "failback once nginx runs again", seconds(fixAt, back.httpsAt), "s");
        return `${NODE} holds ${fip} alone after ${seconds(fixAt, back.addressAt)} s, HTTPS after ${seconds(fixAt, back.httpsAt)} s`;
      },
    );
    await sleep(500);
    const s = await load.stop();
    report.figure(
      section,
      "failed requests when nginx cannot restart (kill -> back home)",
      failedCount(between(s.samples, killC, Date.now())),
      `of ${between(s.samples, killC, Date.now()).length}`,
    );
    report.figure(
      section,
      "failed requests without mitigation",
      failedCount(between(s.samples, killA, backA + 1)),
      `of ${between(s.samples, killA, backA + 1).length}`,
    );
    report.figure(
      section,
      "failed requests with the watchdog",
      failedCount(between(s.samples, killB, endB)),
      `of ${between(s.samples, killB, endB).length}`,
    );
  } finally {
    if (broken)
      await lab
        .node(NODE)
        .runAsync(["umount", "/usr/sbin/nginx"])
        .catch(() => undefined);
    await lab
      .node(NODE)
      .runAsync(["rm", "-f", PAUSE])
      .catch(() => undefined);
    await load.stop();
  }
});
