/**
 * Drill: Heartbeat on the active balancer is stopped gracefully (`pypi-node service heartbeat
 * stop`, i.e. heartbeat -k): it releases its addresses and the peer takes them at once.
 */

import { alarmName } from "../../src/health.js";
import { startLoad } from "../lib/load.js";
import { homeFip, oneWatcher, peerBalancer, timeOwnership } from "./balancers.js";
import { awaitAlarm, drill, failedCount, markFault, seconds, sleep } from "./common.js";

const STOPPED = "lb-a";

export const balancerStop = drill(
  "2",
  `heartbeat on ${STOPPED} stopped gracefully`,
  90_000,
  async (lab, report, section) => {
    const fip = homeFip(lab, STOPPED);
    const survivor = peerBalancer(lab, STOPPED);
    const load = startLoad(lab, { name: "d2", fip, requestTimeoutSeconds: 2 });
    try {
      await sleep(1_000);
      markFault(lab);
      const stopAt = Date.now();
      const stopping = lab.agent(STOPPED, "service heartbeat stop");
      await report.check(section, `${survivor} takes over ${fip}`, async () => {
        const t = await timeOwnership(lab, fip, survivor, 20_000, true);
        await stopping;
        report.figure(
          section,
          "takeover after graceful stop: HTTPS answers",
          seconds(stopAt, t.httpsAt),
          "s",
        );
        return `${survivor} held ${fip} alone after ${seconds(stopAt, t.addressAt)} s, HTTPS after ${seconds(stopAt, t.httpsAt)} s`;
      });
      await awaitAlarm(lab, alarmName(lab.t, survivor, "peer-fips-held"));
      const startAt = Date.now();
      await lab.agent(STOPPED, "service heartbeat start");
      await report.check(section, `${STOPPED} takes ${fip} back after heartbeat starts`, async () => {
        const t = await timeOwnership(lab, fip, STOPPED, 45_000, true);
        report.figure(section, "failback after heartbeat starts", seconds(startAt, t.httpsAt), "s");
        return `${STOPPED} holds ${fip} alone after ${seconds(startAt, t.addressAt)} s, HTTPS after ${seconds(startAt, t.httpsAt)} s`;
      });
      await report.check(section, `${STOPPED} runs exactly one nginx watchdog after the restart`, () =>
        oneWatcher(lab, STOPPED),
      );
      await sleep(1_000);
      const s = await load.stop();
      const during = s.samples.filter((x) => x.at >= stopAt);
      report.figure(
        section,
        `failed requests via ${fip} (stop -> failback)`,
        failedCount(during),
        `of ${during.length}`,
      );
    } finally {
      await load.stop();
    }
  },
);
