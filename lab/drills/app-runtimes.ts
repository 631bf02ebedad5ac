/**
 * Drill: index app workers are killed under load, in each app runtime. First the lab's own
 * runtime; then the other one, reached as a stack config change reaches AWS (bundles rendered
 * with the new `appRuntime`, the app tier's rollout one node at a time), the same kills, and the
 * change rolled back the same way. Counted per phase: GETs that failed for clients (after
 * nginx's retry of a 502/503 on the other app server), and the 5xx the app servers answered
 * nginx with, which is what nginx hid.
 */
import { ROLLOUT_COMMAND } from "../../src/bring-up.js";
import { paths } from "../../src/layout.js";
import { NGINX_ACCESS_LOG, NGINX_ERROR_LOG } from "../../src/render/nginx.js";
import { APP_RUNTIMES, type AppRuntime, type Topology } from "../../src/topology.js";
import type { Lab } from "../lib/lab.js";
import { type LoadHandle, startLoad } from "../lib/load.js";
import { between, drill, failedCount, okCode, seconds, sleep, until } from "./common.js";

const KILL_WINDOW_SECONDS = 10;
const KILL_INTERVAL_SECONDS = 0.5;
/** Load loops per floating IP, back to back (no pause): requests are in flight when a worker dies. */
const LOOPS_PER_FIP = 3;
/** A path only the app answers (a redirect to the normalized name), so every request reaches a worker. */
const PROBE_PATH = "/simple/Drill_Runtime_Probe/";
const ACCESS_LOG = "/var/log/apache2/pypi-access.log";
/** Where the lab's stand-in for systemd writes the app server's pid, and marks enabled units. */
const APP_SERVER_PIDFILE = "/run/pypi-index.pid";
const ENABLED_DIR = "/var/lib/pypi-supervise/enabled";

/** One random worker of the runtime, `kill -9`ed; prints 1 if there was one. */
const killOneWorker: Record<AppRuntime, string> = {
  appserver: `p=$(pgrep -P "$(cat ${APP_SERVER_PIDFILE})" | shuf -n 1); [ -n "$p" ] && kill -9 "$p" && echo 1`,
  // mod_fcgid's processes run the script with no arguments (the register job and the watcher have some).
  fcgid: `p=$(pgrep -f '${paths.appRoot}/index[.]fcgi$' | shuf -n 1); [ -n "$p" ] && kill -9 "$p" && echo 1`,
};

/** Everything of the runtime at once: the app server's primary (its workers follow), or every fcgid process. */
const killAll: Record<AppRuntime, string> = {
  appserver: `kill -9 "$(cat ${APP_SERVER_PIDFILE})"`,
  fcgid: `pkill -9 -f '${paths.appRoot}/index[.]fcgi$'`,
};

/**
 * The runtimes whose goal is no failed request while workers are killed: the app server. Under
 * mod_fcgid a killed process fails its request with a 500 (not retried: it could be the app's)
 * and requests wait for a new process; the drill counts those.
 */
const ZERO_FAILURE_RUNTIMES: readonly AppRuntime[] = ["appserver"];
const goal = (runtime: AppRuntime): string =>
  ZERO_FAILURE_RUNTIMES.includes(runtime) ? "no GET fails" : "failed GETs counted";
/**
 * Under the kill storm the goal stays 0 failed GETs, and the figure says how far from it a run
 * is. The check holds the app server to what its design promises: no answer an app server gave
 * reaches a client (a killed worker's request is retried elsewhere, and no request is refused
 * while workers restart), and at most this share of GETs outlives the client's 5 s. On the lab's
 * two cores, 4 worker starts a second beside 7 nodes and the load leave requests waiting a
 * second or two per attempt; a request killed on two attempts in a row can run out of time.
 */
const STORM_TIMEOUT_SHARE = 0.05;
const stormGoal = (runtime: AppRuntime): string =>
  ZERO_FAILURE_RUNTIMES.includes(runtime)
    ? `no app server error reaches a client, at most ${STORM_TIMEOUT_SHARE * 100} % of GETs time out`
    : "failed GETs counted";

const withRuntime = (t: Topology, runtime: AppRuntime): Topology => ({ ...t, app: { ...t.app, runtime } });

/** 5xx lines of the probe path in an app server's access log after line `from`. */
async function serverErrors(lab: Lab, node: string, from: number): Promise<number> {
  const r = await lab.exec(
    node,
    `tail -n +${from + 1} ${ACCESS_LOG} | grep -c '"GET ${PROBE_PATH} [^"]*" 5[0-9][0-9] ' || true`,
  );
  return Number(r.stdout.trim() || 0);
}

async function logLines(lab: Lab, node: string): Promise<number> {
  const r = await lab.exec(node, `wc -l < ${ACCESS_LOG} 2>/dev/null || echo 0`);
  return Number(r.stdout.trim() || 0);
}

/**
 * Where the runtime stands on a node: the app server runs and starts at boot exactly when it is
 * the runtime, and exactly one runtime's module is enabled.
 */
async function runtimeState(lab: Lab, node: string, runtime: AppRuntime): Promise<string> {
  const r = await lab.exec(
    node,
    [
      `if p=$(cat ${APP_SERVER_PIDFILE} 2>/dev/null) && kill -0 "$p" 2>/dev/null; then echo running; else echo stopped; fi`,
      `if [ -e ${ENABLED_DIR}/pypi-index ]; then echo enabled; else echo disabled; fi`,
      "ls /etc/apache2/mods-enabled/ | grep -E '^(fcgid|proxy_fcgi)[.]load$' | tr '\\n' ' '",
    ].join("; "),
  );
  const [server, boot, modules] = r.stdout.trim().split("\n");
  const state = `app server ${server}, ${boot} at boot; Apache modules: ${modules?.trim()}`;
  const want =
    runtime === "appserver"
      ? ["running", "enabled", "proxy_fcgi.load"]
      : ["stopped", "disabled", "fcgid.load"];
  if (server !== want[0] || boot !== want[1] || modules?.trim() !== want[2])
    throw new Error(`${node} is not cleanly on the ${runtime} runtime: ${state}`);
  return state;
}

export const appRuntimes = drill(
  "12",
  "index app workers killed under load, in each app runtime",
  420_000,
  async (lab, report, section) => {
    const apps = lab.nodesOf("app").map((n) => n.name);
    const own = lab.t.app.runtime;
    const order: AppRuntime[] = [own, ...APP_RUNTIMES.filter((r) => r !== own)];
    const loads: LoadHandle[] = lab.t.floatingIps.flatMap((f) =>
      Array.from({ length: LOOPS_PER_FIP }, (_, i) =>
        startLoad(lab, {
          name: `d12-${f.address}-${i}`,
          fip: f.address,
          path: PROBE_PATH,
          pauseMs: 0,
          requestTimeoutSeconds: 5,
        }),
      ),
    );
    /** Client failures and app server 5xx between `from` and now. */
    const tally = async (
      from: number,
      marks: Map<string, number>,
    ): Promise<{ text: string; failed: number; timedOut: number; total: number; served5xx: number }> => {
      const s = loads.flatMap((l) => between(l.samples(), from, Date.now()));
      const served5xx = (await Promise.all(apps.map((a) => serverErrors(lab, a, marks.get(a) ?? 0)))).reduce(
        (x, y) => x + y,
        0,
      );
      const codes = new Map<string, number>();
      for (const x of s) {
        if (okCode(x.code)) continue;
        const what = x.code === 0 ? `no answer (curl exit ${x.curlExit})` : String(x.code);
        codes.set(what, (codes.get(what) ?? 0) + 1);
      }
      const failedCodes = [...codes].map(([c, n]) => `${n}x ${c}`).join(", ");
      return {
        text: `${failedCount(s)} of ${s.length} GETs failed for clients${failedCodes ? ` (${failedCodes})` : ""}; the app servers answered nginx ${served5xx} 5xx (retried on the other app server)`,
        failed: failedCount(s),
        timedOut: s.filter((x) => !okCode(x.code) && x.code === 0 && x.curlExit === 28).length,
        total: s.length,
        served5xx,
      };
    };
    /**
     * The why of a failed GET: what nginx logged about the app servers lately, and its access-log
     * lines of the probe that did not succeed or were retried (upstream list `ua=a, b`).
     */
    const withUpstreamErrors = async (text: string): Promise<string> => {
      const lines = await Promise.all(
        lab.nodesOf("balancer").map(async (lb) => {
          const errors = await lab.exec(lb.name, `grep -h upstream ${NGINX_ERROR_LOG} | tail -n 5`);
          const access = await lab.exec(
            lb.name,
            `grep -h '${PROBE_PATH}' ${NGINX_ACCESS_LOG} | grep -E '" (5[0-9][0-9]|499) |ua=[^ ]+, ' | tail -n 5`,
          );
          return `${lb.name}:\n${errors.stdout.trim()}\n${access.stdout.trim()}`;
        }),
      );
      return `${text}\nnginx: ${lines.join("\n")}`;
    };
    /** See STORM_TIMEOUT_SHARE: no app server answer reaches a client; few GETs time out. */
    const holdStorm = async (c: { text: string; failed: number; timedOut: number; total: number }) => {
      const answered = c.failed - c.timedOut;
      if (answered > 0)
        throw new Error(
          await withUpstreamErrors(`${answered} failed GETs were not client timeouts: ${c.text}`),
        );
      if (c.timedOut > STORM_TIMEOUT_SHARE * c.total)
        throw new Error(
          await withUpstreamErrors(`more than ${STORM_TIMEOUT_SHARE * 100} % of GETs timed out: ${c.text}`),
        );
    };
    const marks = async (): Promise<Map<string, number>> =>
      new Map(await Promise.all(apps.map(async (a) => [a, await logLines(lab, a)] as const)));

    /**
     * A switch restarts Apache (its module set changes), which ends its requests in flight as
     * systemd's stop does. Those nginx retries; but requests that mod_fcgid holds waiting for a
     * process hang until Apache kills its children, past the client's timeout. So the switch
     * away from a runtime has that runtime's goal.
     */
    const rollOut = async (runtime: AppRuntime, leaving: AppRuntime, why: string): Promise<void> => {
      await report.check(
        section,
        `${why}: the app tier rolls out appRuntime=${runtime}, one node at a time: ${goal(leaving)}`,
        async () => {
          const t = withRuntime(lab.t, runtime);
          lab.writeBundles(t);
          const from = Date.now();
          const m = await marks();
          const states: string[] = [];
          for (const app of apps) {
            const r = await lab.node(app).execAsync(ROLLOUT_COMMAND, { timeoutMs: 300_000 });
            if (r.status !== 0)
              throw new Error(`${app}: rollout failed (${r.status})\n${r.stderr.slice(-2000)}`);
            states.push(`${app}: ${await runtimeState(lab, app, runtime)}`);
          }
          const c = await tally(from, m);
          report.figure(
            section,
            `switch to ${runtime} under load: failed GETs`,
            c.failed,
            `of ${c.total}`,
            c.text,
          );
          if (c.failed > 0 && ZERO_FAILURE_RUNTIMES.includes(leaving))
            throw new Error(await withUpstreamErrors(c.text));
          return `${seconds(from, Date.now())} s; ${c.text}; ${states.join("; ")}`;
        },
      );
    };

    const killUnderLoad = async (runtime: AppRuntime): Promise<void> => {
      await report.check(
        section,
        `${runtime}: a worker killed every ${KILL_INTERVAL_SECONDS} s for ${KILL_WINDOW_SECONDS} s on each app server: ${stormGoal(runtime)}`,
        async () => {
          const m = await marks();
          const from = Date.now();
          const killer = `end=$(($(date +%s) + ${KILL_WINDOW_SECONDS})); n=0
while [ "$(date +%s)" -lt "$end" ]; do [ -n "$(${killOneWorker[runtime]})" ] && n=$((n + 1)); sleep ${KILL_INTERVAL_SECONDS}; done
echo "$n"`;
          const kills = await Promise.all(apps.map((a) => lab.exec(a, killer, { timeoutMs: 60_000 })));
          const killed = kills.reduce((sum, r) => sum + Number(r.stdout.trim().split("\n").at(-1) || 0), 0);
          await sleep(2_000);
          const c = await tally(from, m);
          report.figure(
            section,
            `${runtime}: ${killed} workers killed under load: failed GETs [goal 0]`,
            c.failed,
            `of ${c.total}`,
            c.text,
          );
          report.figure(
            section,
            `${runtime}: ${killed} workers killed under load: 5xx at the app servers`,
            c.served5xx,
            "responses",
          );
          if (killed === 0) throw new Error("no worker was found to kill");
          if (ZERO_FAILURE_RUNTIMES.includes(runtime)) await holdStorm(c);
          return `${killed} workers killed; ${c.text}`;
        },
      );

      const app = apps[0] as string;
      const what =
        runtime === "appserver" ? "the app server's primary (and so its workers)" : "every fcgid process";
      await report.check(
        section,
        `${runtime}: ${what} killed on ${app} under load: it serves again by itself, ${stormGoal(runtime)}`,
        async () => {
          const m = await marks();
          const from = Date.now();
          const before = await lab.exec(app, `cat ${APP_SERVER_PIDFILE} 2>/dev/null || true`);
          await lab.exec(app, killAll[runtime]);
          const killedAt = Date.now();
          const servingAt = await until(
            `${app} serves ${PROBE_PATH} again`,
            30_000,
            async () => {
              if (runtime === "appserver") {
                const now = await lab.exec(
                  app,
                  `p=$(cat ${APP_SERVER_PIDFILE}) && kill -0 "$p" && [ "$p" != '${before.stdout.trim()}' ] && [ -S ${paths.appSocket} ]`,
                );
                if (now.status !== 0) return false;
              }
              const r = await lab.exec(
                app,
                `curl -s -o /dev/null -w '%{http_code}' --max-time 2 http://127.0.0.1:${lab.t.app.httpPort}${PROBE_PATH}`,
              );
              return r.stdout.trim() === "301";
            },
            50,
          );
          await sleep(1_000);
          const c = await tally(from, m);
          report.figure(
            section,
            `${runtime}: ${what} killed -> ${app} serves again`,
            seconds(killedAt, servingAt),
            "s",
            c.text,
          );
          if (ZERO_FAILURE_RUNTIMES.includes(runtime)) await holdStorm(c);
          return `serving again after ${seconds(killedAt, servingAt)} s; ${c.text}`;
        },
      );
    };

    try {
      await sleep(1_000);
      let current = own;
      for (const runtime of order) {
        if (runtime !== current) await rollOut(runtime, current, "config change");
        current = runtime;
        await killUnderLoad(runtime);
      }
    } finally {
      try {
        const last = order.at(-1) ?? own;
        if (last !== own) await rollOut(own, last, "config change rolled back");
      } finally {
        lab.writeBundles();
        await Promise.all(loads.map((l) => l.stop()));
      }
    }
  },
);
