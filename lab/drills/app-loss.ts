/**
 * Drill: an app server is lost while both floating IPs take GETs. (a) Apache on app-a stops
 * (connections refused: nginx retries the next upstream at once); (b) app-a is blackholed (TCP 80
 * dropped both ways in its namespace: nginx waits proxy_connect_timeout before it retries).
 */
import { type LoadHandle, type LoadSample, startLoad } from "../lib/load.js";
import { between, drill, failedCount, markFault, percentile, sleep } from "./common.js";

const LOST = "app-a";
const WINDOW_MS = 8_000;
const BLACKHOLE_MS = 12_000;
/** nginx's fail_timeout: how long a failed upstream stays out before nginx tries it again. */
const NGINX_FAIL_TIMEOUT_MS = 10_000;
const TABLE = "pypi_drill_blackhole";

export const appLoss = drill("5", `app server ${LOST} lost`, 120_000, async (lab, report, section) => {
  const loads: LoadHandle[] = lab.t.floatingIps.map((f) =>
    startLoad(lab, { name: `d5-${f.address}`, fip: f.address, requestTimeoutSeconds: 10 }),
  );
  const all = (): LoadSample[] => loads.flatMap((l) => l.samples());
  const figures = (label: string, from: number, to: number) => {
    const s = between(all(), from, to);
    report.figure(section, `${label}: failed GETs`, failedCount(s), `of ${s.length}`);
    report.figure(
      section,
      `${label}: p99 latency`,
      percentile(s, 99),
      "s",
      `max ${percentile(s, 100)} s, p50 ${percentile(s, 50)} s`,
    );
    return s;
  };
  let blackholed = false;
  try {
    await sleep(2_000);
    figures("baseline (no failure)", Date.now() - 2_000, Date.now());

    markFault(lab);
    const stopAt = Date.now();
    await lab.agent(LOST, "service apache2 stop");
    await sleep(WINDOW_MS);
    const crashed = figures(`(a) ${LOST} refuses connections [goal 0 failed]`, stopAt, Date.now());
    await report.check(section, `(a) no GET fails while ${LOST} refuses connections`, () => {
      const failed = failedCount(crashed);
      if (failed > 0) throw new Error(`${failed} of ${crashed.length} GETs failed`);
      return `${crashed.length} GETs, 0 failed`;
    });
    await lab.agent(LOST, "service apache2 start");
    // Let nginx's fail_timeout lapse so app-a is back in rotation before the next failure.
    await sleep(NGINX_FAIL_TIMEOUT_MS + 1_000);

    // Both directions, as a vanished host: nothing comes back, not even a FIN or RST.
    const port = lab.t.app.httpPort;
    const holeAt = Date.now();
    await lab.node(LOST).runAsync(["nft", "-f", "-"], {
      input: [
        `table inet ${TABLE} {`,
        `  chain in { type filter hook input priority 0; tcp dport ${port} drop; }`,
        `  chain out { type filter hook output priority 0; tcp sport ${port} drop; }`,
        "}",
        "",
      ].join("\n"),
    });
    blackholed = true;
    await sleep(BLACKHOLE_MS);
    figures(`(b) ${LOST} blackholed [goal p99 cost <= 2 s]`, holeAt, Date.now());
  } finally {
    if (blackholed)
      await lab
        .node(LOST)
        .runAsync(["nft", "delete", "table", "inet", TABLE])
        .catch(() => undefined);
    await Promise.all(loads.map((l) => l.stop()));
  }
});
