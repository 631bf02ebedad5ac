/**
 * Drill: the balancer that holds a floating IP dies without warning (every process SIGKILLed,
 * link down). Heartbeat on the peer must take the address over after deadtime; then the node
 * boots again and, with auto_failback on, takes its address back.
 */

import { alarmName } from "../../src/health.js";
import { bootAgain } from "../lib/boot.js";
import { startLoad, summarise } from "../lib/load.js";
import { homeFip, oneWatcher, peerBalancer, timeOwnership } from "./balancers.js";
import { awaitAlarm, between, drill, failedCount, markFault, seconds, sleep } from "./common.js";

const LOST = "lb-a";

export const balancerCrash = drill(
  "1",
  `active balancer ${LOST} crashes`,
  120_000,
  async (lab, report, section) => {
    const fip = homeFip(lab, LOST);
    const survivor = peerBalancer(lab, LOST);
    const other = lab.t.floatingIps.find((f) => f.address !== fip)?.address;
    const loads = [fip, ...(other ? [other] : [])].map((address) => ({
      address,
      load: startLoad(lab, { name: `d1-${address}`, fip: address, requestTimeoutSeconds: 2 }),
    }));
    try {
      await sleep(1_000);
      markFault(lab);
      const killedAt = Date.now();
      const killed = await lab.node(LOST).crash();
      let takeover: { addressAt: number; httpsAt: number } | undefined;
      await report.check(section, `${survivor} takes over ${fip} and serves HTTPS through it`, async () => {
        takeover = await timeOwnership(lab, fip, survivor, 20_000);
        return `${killed} processes of ${LOST} killed, link down; ${survivor} held ${fip} after ${seconds(killedAt, takeover.addressAt)} s, HTTPS answered after ${seconds(killedAt, takeover.httpsAt)} s (deadtime ${lab.t.heartbeat.deadtimeMs} ms)`;
      });
      if (takeover) {
        report.figure(
          section,
          "balancer takeover after crash: address moved [goal <= 2 s]",
          seconds(killedAt, takeover.addressAt),
          "s",
        );
        report.figure(
          section,
          "balancer takeover after crash: HTTPS answers [goal <= 2 s]",
          seconds(killedAt, takeover.httpsAt),
          "s",
        );
      }
      // On-call is paged before the node comes back: the page names the runbook that rebuilds it.
      await awaitAlarm(lab, alarmName(lab.t, survivor, "peer-fips-held"));
      const bootAt = Date.now();
      await bootAgain(lab, LOST);
      let failback: { addressAt: number; httpsAt: number } | undefined;
      await report.check(section, `${LOST} boots and takes ${fip} back (auto_failback on)`, async () => {
        failback = await timeOwnership(lab, fip, LOST, 45_000, true);
        return `${LOST} re-applied; it holds ${fip} alone after ${seconds(bootAt, failback.addressAt)} s, HTTPS after ${seconds(bootAt, failback.httpsAt)} s`;
      });
      await report.check(section, `${LOST} runs its nginx watchdog again`, () => oneWatcher(lab, LOST));
      if (failback)
        report.figure(
          section,
          "failback after the node boots (initdead + resource handshake)",
          seconds(bootAt, failback.httpsAt),
          "s",
        );
      await sleep(1_000);
      for (const { address, load } of loads) {
        const s = await load.stop();
        report.figure(
          section,
          `failed requests via ${address}, crash -> takeover`,
          failedCount(between(s.samples, killedAt, bootAt)),
          `of ${between(s.samples, killedAt, bootAt).length}`,
        );
        report.figure(
          section,
          `longest outage via ${address}, crash -> takeover`,
          summarise(between(s.samples, killedAt, bootAt)).longestOutageSeconds,
          "s",
          "first failed request start to next success (2 s request timeout)",
        );
        report.figure(
          section,
          `failed requests via ${address}, boot -> failback`,
          failedCount(between(s.samples, bootAt, Date.now() + 1)),
          `of ${between(s.samples, bootAt, Date.now() + 1).length}`,
        );
      }
    } finally {
      await Promise.all(loads.map(({ load }) => load.stop()));
    }
  },
);
