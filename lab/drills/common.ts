/**
 * What the drills share: timing helpers, killing processes inside a node, the health a drill
 * must leave behind, and the wrapper that bounds a drill in time and turns a crash into a
 * failed check instead of aborting the run.
 */
import { mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { buildRunbooks } from "../../src/runbooks/runbooks.js";
import { fipHomes, healthVia, waitFor } from "../lib/bringup.js";
import { type Lab, nsOf } from "../lib/lab.js";
import type { LoadSample } from "../lib/load.js";
import { namespacePids } from "../lib/netns.js";
import type { Report } from "../lib/report.js";
import { DETECTION_GOAL_SECONDS, drillAlarms } from "./alarms.js";
import type { Drill } from "./index.js";

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Seconds between two epoch-ms stamps, two decimals. */
export const seconds = (from: number, to: number): number => Math.round((to - from) / 10) / 100;

export const okCode = (code: number): boolean => code >= 200 && code < 400;

/** The p-th percentile (0..100) of request durations, in seconds. */
export function percentile(samples: readonly LoadSample[], p: number): number {
  if (samples.length === 0) return 0;
  const sorted = samples.map((s) => s.seconds).sort((a, b) => a - b);
  const idx = Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1);
  return Math.round((sorted[Math.max(0, idx)] ?? 0) * 1000) / 1000;
}

/** Samples whose request ended within [from, to). */
export const between = (samples: readonly LoadSample[], from: number, to: number): LoadSample[] =>
  samples.filter((s) => s.at >= from && s.at < to);

export const failedCount = (samples: readonly LoadSample[]): number =>
  samples.filter((s) => !okCode(s.code)).length;

/** Where a drill keeps its logs (host side; app nodes see the same path). */
export function drillDir(lab: Lab): string {
  const dir = join(lab.dirs.run, "drills");
  mkdirSync(dir, { recursive: true });
  return dir;
}

/** Pids in a node's network namespace whose command name is one of `names` (all but the holder if empty). */
export function nodePids(lab: Lab, node: string, names: readonly string[] = []): number[] {
  const holder = lab.node(node).pid;
  return namespacePids(nsOf(node)).filter((pid) => {
    if (pid === holder) return false;
    if (names.length === 0) return true;
    try {
      const comm = readFileSync(`/proc/${pid}/comm`, "utf8").trim();
      return names.includes(comm);
    } catch {
      return false;
    }
  });
}

/** SIGKILL the given pids (already gone is fine); returns how many were signalled. */
export function killPids(pids: readonly number[]): number {
  let n = 0;
  for (const pid of pids) {
    try {
      process.kill(pid, "SIGKILL");
      n++;
    } catch {
      // already gone
    }
  }
  return n;
}

/** Poll fast until `probe` holds; resolves with the epoch ms it first held. */
export async function until(
  what: string,
  timeoutMs: number,
  probe: () => Promise<boolean> | boolean,
  intervalMs = 50,
): Promise<number> {
  const start = Date.now();
  while (Date.now() - start < timeoutMs) {
    if (await probe()) return Date.now();
    await sleep(intervalMs);
  }
  throw new Error(`${what}: not within ${timeoutMs / 1000} s`);
}

/** Who holds each floating IP right now: address -> balancer names. */
export function fipHolders(lab: Lab): Map<string, string[]> {
  const lbs = lab.nodesOf("balancer").map((n) => n.name);
  const held = new Map(lbs.map((lb) => [lb, lab.addresses(lb)] as const));
  return new Map(
    lab.t.floatingIps.map((f) => [f.address, lbs.filter((lb) => held.get(lb)?.includes(f.address))]),
  );
}

export const holdersText = (holders: Map<string, string[]>): string =>
  [...holders].map(([a, h]) => `${a}@${h.join("+") || "nobody"}`).join(", ");

/** Every floating IP on its home balancer only, and HTTPS /_health 200 through each. */
export async function balancersHealthy(lab: Lab, timeoutMs = 45_000): Promise<string> {
  const homes = fipHomes(lab.t);
  return waitFor(
    "floating IPs home and HTTPS healthy",
    timeoutMs,
    async () => {
      const holders = fipHolders(lab);
      const wrong = [...holders].filter(([a, h]) => h.length !== 1 || h[0] !== homes.get(a));
      if (wrong.length) return new Error(`holders: ${holdersText(holders)}`);
      const codes = await Promise.all(lab.t.floatingIps.map((f) => healthVia(lab, f.address)));
      const bad = codes.findIndex((c) => c.code !== 200);
      if (bad >= 0) return new Error(`${lab.t.floatingIps[bad]?.address}: ${codes[bad]?.code}`);
      return `${holdersText(holders)}; /_health 200 via each`;
    },
    250,
  );
}

/** HAProxy on every balancer sees every app server's sshd UP. */
export async function uploadsHealthy(lab: Lab, timeoutMs = 20_000): Promise<string> {
  const apps = lab.nodesOf("app").map((n) => n.name);
  return waitFor(
    "upload backends UP",
    timeoutMs,
    async () => {
      for (const lb of lab.nodesOf("balancer")) {
        const r = await lab.exec(lb.name, "/usr/local/sbin/pypi-node upload-backends");
        for (const app of apps)
          if (!new RegExp(`^${app} UP$`, "m").test(r.stdout))
            return new Error(`${lb.name}: ${r.stdout.trim().replace(/\n/g, ", ")}`);
      }
      return `${apps.join(", ")} UP on every balancer`;
    },
    500,
  );
}

/** The running drill expects `alarm` to fire, naming `runbook` (for alarms known only at run time). */
export function expectAlarm(lab: Lab, alarm: string, runbook: string): void {
  lab.expectedAlarms.push({ alarm, runbook });
}

/** The drill's fault happens now: its alarms' detection time counts from here (first call wins). */
export function markFault(lab: Lab): void {
  lab.faultAt ??= Date.now();
}

/**
 * Wait until `alarm` fires after the drill's fault: what an on-call engineer waits for before
 * opening the runbook it names. Resolves with the runbook id.
 */
export async function awaitAlarm(lab: Lab, alarm: string, timeoutMs = 30_000): Promise<string> {
  const collector = lab.collector;
  if (!collector) throw new Error("no alarm collector runs");
  const since = lab.faultAt ?? Date.now();
  const fired = await until(`alarm ${alarm}`, timeoutMs, () =>
    collector.firedSince(since).some((x) => x.alarm === alarm),
  );
  const def = collector.definition(alarm);
  if (!def) throw new Error(`no alarm ${alarm}`);
  process.stdout.write(
    `lab: ${alarm} fired ${seconds(since, fired)} s after the fault: runbook ${def.runbook}\n`,
  );
  return def.runbook;
}

/** Every alarm back to OK (the next drill's alarms must be able to fire again). */
export async function alarmsClear(lab: Lab, timeoutMs = 45_000): Promise<string> {
  const collector = lab.collector;
  if (!collector) return "no alarm collector";
  return waitFor(
    "every alarm OK",
    timeoutMs,
    async () => {
      const firing = collector.firing();
      return firing.length ? new Error(`firing: ${firing.map((a) => a.name).join(", ")}`) : "every alarm OK";
    },
    500,
  );
}

/**
 * The drill's alarms: each expected one fired after the fault, naming the runbook the drill runs
 * (one of the stack's runbooks); how long it took is a figure against the detection goal; nothing
 * fired that the drill does not allow.
 */
async function checkAlarms(
  lab: Lab,
  report: Report,
  section: string,
  id: string,
  faultAt: number,
): Promise<void> {
  const collector = lab.collector;
  if (!collector) return;
  const fixed = drillAlarms(lab.t, id);
  const spec = { ...fixed, expect: [...fixed.expect, ...lab.expectedAlarms] };
  const runbookIds = new Set(buildRunbooks(lab.t).map((r) => r.id));
  for (const e of spec.expect) {
    await report.check(section, `alarm ${e.alarm} fires and names runbook ${e.runbook}`, async () => {
      const def = collector.definition(e.alarm);
      if (!def) throw new Error(`no alarm ${e.alarm} in the stack's alarms`);
      if (def.runbook !== e.runbook)
        throw new Error(`${e.alarm} names runbook ${def.runbook}, the drill runs ${e.runbook}`);
      if (!runbookIds.has(e.runbook))
        throw new Error(`runbook ${e.runbook} is not among the stack's runbooks`);
      // The period that holds the fault's datapoints ends at most one period and a run later;
      // silence takes two periods.
      const deadline = Math.max(Date.now(), faultAt + 40_000) + 1_000;
      const first = () => collector.firedSince(faultAt).find((x) => x.alarm === e.alarm);
      let fired = first();
      while (!fired && Date.now() < deadline) {
        await sleep(250);
        fired = first();
      }
      if (!fired) throw new Error(`${e.alarm} did not fire within 40 s of the fault`);
      const took = seconds(faultAt, fired.at);
      report.detections.push({
        drill: section,
        alarm: e.alarm,
        seconds: took,
        runbook: e.runbook,
        expected: true,
      });
      report.figure(
        section,
        `detection: ${e.alarm}`,
        took,
        "s",
        `goal <= ${DETECTION_GOAL_SECONDS} s; runbook ${e.runbook}`,
      );
      return `fired ${took} s after the fault (goal <= ${DETECTION_GOAL_SECONDS} s): "${def.summary}"`;
    });
  }
  const expected = new Set(spec.expect.map((e) => e.alarm));
  const others = collector.firedSince(faultAt).filter((x) => !expected.has(x.alarm));
  for (const x of others)
    if (!report.detections.some((d) => d.drill === section && d.alarm === x.alarm))
      report.detections.push({
        drill: section,
        alarm: x.alarm,
        seconds: seconds(faultAt, x.at),
        runbook: x.runbook,
        expected: false,
      });
  await report.check(section, "no alarm outside the drill's expected and allowed ones", () => {
    const allowed = new Set([...expected, ...spec.allow]);
    const stray = [...new Set(others.map((x) => x.alarm))].filter((a) => !allowed.has(a));
    const missing = others.filter((x) => !runbookIds.has(x.runbook));
    if (missing.length)
      throw new Error(
        `alarms name runbooks the stack lacks: ${missing.map((x) => `${x.alarm} -> ${x.runbook}`).join(", ")}`,
      );
    if (stray.length) throw new Error(`unexpected: ${stray.join(", ")}`);
    const also = [...new Set(others.map((x) => x.alarm))];
    return `${spec.expect.length} expected${also.length ? `; also fired (allowed): ${also.join(", ")}` : ""}${spec.why ? `; ${spec.why}` : ""}`;
  });
}

/**
 * A drill: `body` runs under a time bound; a throw or timeout becomes a failed check. Afterwards
 * the lab must be healthy again (a check too), so the next drill starts from a known state.
 */
export function drill(
  id: string,
  title: string,
  timeoutMs: number,
  body: (lab: Lab, report: Report, section: string) => Promise<void>,
  healthy: (lab: Lab) => Promise<string> = async (lab) =>
    `${await balancersHealthy(lab)}; ${await uploadsHealthy(lab)}`,
): Drill {
  const section = `drill ${id}`;
  return {
    id,
    title,
    async run(lab: Lab, report: Report): Promise<void> {
      process.stdout.write(`\nlab: drill ${id}: ${title}\n`);
      let timer: NodeJS.Timeout | undefined;
      const drillStart = Date.now();
      lab.faultAt = undefined;
      lab.expectedAlarms = [];
      await report.check(section, `${title}: ran to completion within ${timeoutMs / 1000} s`, async () => {
        const started = Date.now();
        await Promise.race([
          body(lab, report, section),
          new Promise<never>((_, reject) => {
            timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs / 1000} s`)), timeoutMs);
          }),
        ]).finally(() => clearTimeout(timer));
        return `${seconds(started, Date.now())} s`;
      });
      await checkAlarms(lab, report, section, id, lab.faultAt ?? drillStart);
      await report.check(
        section,
        "lab healthy again",
        async () => `${await healthy(lab)}; ${await alarmsClear(lab)}`,
      );
    },
  };
}
