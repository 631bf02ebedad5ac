/**
 * Drill: the balancers lose sight of each other (UDP 694 dropped both ways inside one balancer's
 * namespace with nftables) while both stay up. Each declares the other dead and takes every
 * floating IP: dual ownership. Then the partition heals; the report says how Heartbeat
 * converges, how long it takes, and any gap where nobody holds an address.
 */
import { fipHomes } from "../lib/bringup.js";
import { startLoad, summarise } from "../lib/load.js";
import { httpsOk } from "./balancers.js";
import { between, drill, failedCount, fipHolders, holdersText, seconds, sleep, until } from "./common.js";

const CUT_ON = "lb-a";
const PARTITION_MS = 5_000;
const SAMPLE_MS = 50;
/** Issue goal for the no-holder gap after a partition heals. */
const HEAL_GAP_GOAL_S = 3;
const TABLE = "pypi_drill_partition";

interface Snapshot {
  readonly at: number;
  readonly holders: Map<string, string[]>;
}

/** Seconds within [from, to) during which `pred` held, from a sampled timeline. */
function secondsWhere(
  timeline: readonly Snapshot[],
  from: number,
  to: number,
  pred: (s: Snapshot) => boolean,
) {
  let total = 0;
  for (let i = 0; i < timeline.length - 1; i++) {
    const a = timeline[i];
    const b = timeline[i + 1];
    if (!a || !b || a.at < from || a.at >= to) continue;
    if (pred(a)) total += Math.min(b.at, to) - a.at;
  }
  return Math.round(total / 10) / 100;
}

export const heartbeatPartition = drill(
  "3",
  "heartbeat partition between the balancers",
  120_000,
  async (lab, report, section) => {
    const port = lab.t.heartbeat.udpPort;
    const loads = lab.t.floatingIps.map((f) => ({
      address: f.address,
      load: startLoad(lab, { name: `d3-${f.address}`, fip: f.address, requestTimeoutSeconds: 2 }),
    }));
    const timeline: Snapshot[] = [];
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        timeline.push({ at: Date.now(), holders: fipHolders(lab) });
        await sleep(SAMPLE_MS);
      }
    })();
    const dual = (s: Snapshot) => [...s.holders.values()].some((h) => h.length > 1);
    const orphan = (s: Snapshot) => [...s.holders.values()].some((h) => h.length === 0);
    let healed = false;
    const heal = async () => {
      if (healed) return;
      healed = true;
      await lab.node(CUT_ON).runAsync(["nft", "delete", "table", "inet", TABLE]);
    };
    try {
      await sleep(1_000);
      const cutAt = Date.now();
      await lab.node(CUT_ON).runAsync(["nft", "-f", "-"], {
        input: [
          `table inet ${TABLE} {`,
          `  chain in { type filter hook input priority 0; udp dport ${port} drop; udp sport ${port} drop; }`,
          `  chain out { type filter hook output priority 0; udp dport ${port} drop; udp sport ${port} drop; }`,
          "}",
          "",
        ].join("\n"),
      });
      await sleep(PARTITION_MS);
      const healAt = Date.now();
      const during = holdersText(fipHolders(lab));
      await heal();
      const homes = fipHomes(lab.t);
      let convergedAt = 0;
      await report.check(
        section,
        "converges after the partition heals (each address on its home only, HTTPS through each)",
        async () => {
          convergedAt = await until(
            "convergence",
            60_000,
            async () => {
              const holders = fipHolders(lab);
              if ([...holders].some(([a, h]) => h.length !== 1 || h[0] !== homes.get(a))) return false;
              return (await Promise.all(lab.t.floatingIps.map((f) => httpsOk(lab, f.address)))).every(
                Boolean,
              );
            },
            100,
          );
          return `during the partition: ${during}; after heal: ${holdersText(fipHolders(lab))} after ${seconds(healAt, convergedAt)} s`;
        },
      );
      await sleep(500);
      sampling = false;
      await sampler;
      const end = convergedAt || Date.now();
      report.figure(
        section,
        "dual ownership during the partition (both hold an address)",
        secondsWhere(timeline, cutAt, healAt, dual),
        "s",
        `partition lasted ${PARTITION_MS / 1000} s`,
      );
      report.figure(section, "dual ownership after heal", secondsWhere(timeline, healAt, end, dual), "s");
      const gap = secondsWhere(timeline, healAt, end, orphan);
      report.figure(
        section,
        "gap after heal with an address held by nobody",
        gap,
        "s",
        "both Heartbeats restart on rejoin; stop leaves the EIP association alone",
      );
      await report.check(
        section,
        `no address is held by nobody for more than ${HEAL_GAP_GOAL_S} s after the heal`,
        () => {
          if (gap > HEAL_GAP_GOAL_S)
            throw new Error(`an address was held by nobody for ${gap} s after the heal`);
          return `longest time with an address held by nobody: ${gap} s (sampled every ${SAMPLE_MS} ms)`;
        },
      );
      if (convergedAt) report.figure(section, "convergence after heal", seconds(healAt, convergedAt), "s");
      for (const { address, load } of loads) {
        const s = await load.stop();
        report.figure(
          section,
          `failed requests via ${address} during the partition`,
          failedCount(between(s.samples, cutAt, healAt)),
          `of ${between(s.samples, cutAt, healAt).length}`,
        );
        report.figure(
          section,
          `failed requests via ${address} heal -> converged`,
          failedCount(between(s.samples, healAt, end + 1)),
          `of ${between(s.samples, healAt, end + 1).length}`,
        );
        report.figure(
          section,
          `longest outage via ${address} after heal`,
          summarise(between(s.samples, healAt, end + 1)).longestOutageSeconds,
          "s",
          "first failed request start to next success (2 s request timeout)",
        );
      }
    } finally {
      sampling = false;
      await heal().catch(() => undefined);
      await Promise.all(loads.map(({ load }) => load.stop()));
    }
  },
);
