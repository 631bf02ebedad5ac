/**
 * The lab's stand-in for CloudWatch alarms. Nodes publish their health (`pypi-node health
 * --publish`, the lab backend appends `<epoch ms> <check> <value> <unit>` lines to
 * `<store>/cloud/metrics/<node>.tsv`); this reads them and evaluates the same alarms the stack
 * renders (src/health.ts: threshold, statistic, period, missing data), at the end of each
 * clock-aligned period plus a second for late datapoints, as CloudWatch does. It records every
 * state change with the time it happened.
 */
import { closeSync, existsSync, fstatSync, openSync, readdirSync, readSync } from "node:fs";
import { join } from "node:path";
import {
  type AlarmedCheck,
  alarmedChecks,
  alarmName,
  alarmStatistic,
  compositeAlarms,
  LAB_UNSUPPORTED_CHECKS,
} from "../../src/health.js";
import type { Topology } from "../../src/topology.js";

export type AlarmState = "OK" | "ALARM";

export interface AlarmDefinition {
  readonly name: string;
  readonly runbook: string;
  readonly summary: string;
  /** Metric alarms: the check; composites: their member alarms. */
  readonly check?: AlarmedCheck;
  readonly allOf?: readonly string[];
}

export interface AlarmTransition {
  readonly alarm: string;
  readonly state: AlarmState;
  /** Epoch ms the evaluation that changed the state ran. */
  readonly at: number;
  readonly runbook: string;
  /** The statistic of the period that decided it (metric alarms). */
  readonly value?: number;
}

interface Point {
  readonly at: number;
  readonly value: number;
}

/** Late datapoints CloudWatch still counts: evaluation runs this long after a period ends. */
export const EVALUATION_DELAY_MS = 1000;

/**
 * Every alarm of a topology, as the stack creates them, but for the EC2 status checks (no
 * instances here) and the checks of what the lab cannot run (LAB_UNSUPPORTED_CHECKS).
 */
export function alarmDefinitions(t: Topology): AlarmDefinition[] {
  return [
    ...alarmedChecks(t)
      .filter((c) => !LAB_UNSUPPORTED_CHECKS.includes(c.id))
      .map((c) => ({
        name: alarmName(t, c.node, c.id),
        runbook: c.runbook,
        summary: c.summary,
        check: c,
      })),
    ...compositeAlarms(t).map((c) => ({
      name: c.name,
      runbook: c.runbook,
      summary: c.summary,
      allOf: c.allOf,
    })),
  ];
}

/** The value the alarm's statistic (alarmStatistic) takes over one period's datapoints. */
const periodStatistic = (check: AlarmedCheck, values: readonly number[]): number =>
  alarmStatistic(check).statistic === "Maximum" ? Math.max(...values) : Math.min(...values);

/**
 * The state a metric alarm takes for one period's datapoints: the worst one decides (see
 * alarmStatistic); no datapoint breaches only `reporting` (treatMissingData), else it is OK.
 */
export function evaluatePeriod(check: AlarmedCheck, values: readonly number[]): AlarmState {
  if (values.length === 0) return check.missingBreaches ? "ALARM" : "OK";
  const stat = periodStatistic(check, values);
  const breach = check.comparison === "atLeast" ? stat >= check.threshold : stat < check.threshold;
  return breach ? "ALARM" : "OK";
}

export class AlarmCollector {
  readonly alarms: AlarmDefinition[];
  readonly transitions: AlarmTransition[] = [];
  private readonly state = new Map<string, AlarmState>();
  /** Each metric alarm's latest period results, newest last. */
  private readonly history = new Map<string, AlarmState[]>();
  private readonly points = new Map<string, Point[]>();
  private readonly offsets = new Map<string, number>();
  private timer: NodeJS.Timeout | undefined;
  private nextBoundary = 0;
  private readonly periodMs: number;

  constructor(
    readonly t: Topology,
    private readonly metricsDir: string,
  ) {
    this.alarms = alarmDefinitions(t);
    this.periodMs = t.health.periodSeconds * 1000;
    for (const a of this.alarms) this.state.set(a.name, "OK");
  }

  /** Evaluate from the first whole period after now on, until stop(). */
  start(): void {
    this.read();
    this.nextBoundary = Math.ceil((Date.now() + 1) / this.periodMs) * this.periodMs + this.periodMs;
    this.timer = setInterval(() => this.tick(), 250);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** Alarms in ALARM now. */
  firing(): AlarmDefinition[] {
    return this.alarms.filter((a) => this.state.get(a.name) === "ALARM");
  }

  /** Transitions to ALARM at or after `since` (epoch ms). */
  firedSince(since: number): AlarmTransition[] {
    return this.transitions.filter((x) => x.state === "ALARM" && x.at >= since);
  }

  definition(name: string): AlarmDefinition | undefined {
    return this.alarms.find((a) => a.name === name);
  }

  private tick(): void {
    this.read();
    while (Date.now() >= this.nextBoundary + EVALUATION_DELAY_MS) {
      this.evaluate(this.nextBoundary - this.periodMs, this.nextBoundary);
      this.nextBoundary += this.periodMs;
    }
  }

  private evaluate(from: number, to: number): void {
    const now = Date.now();
    for (const a of this.alarms) {
      if (!a.check) continue;
      const series = this.points.get(`${a.check.node}\t${a.check.id}`) ?? [];
      const values = series.filter((p) => p.at >= from && p.at < to).map((p) => p.value);
      // `periods` out of the last `periods` must breach (evaluationPeriods = datapointsToAlarm).
      const recent = [...(this.history.get(a.name) ?? []), evaluatePeriod(a.check, values)].slice(
        -a.check.periods,
      );
      this.history.set(a.name, recent);
      const fires = recent.length === a.check.periods && recent.every((r) => r === "ALARM");
      this.set(a, fires ? "ALARM" : "OK", now, values);
    }
    for (const a of this.alarms) {
      if (!a.allOf) continue;
      const all = a.allOf.every((m) => this.state.get(m) === "ALARM");
      this.set(a, all ? "ALARM" : "OK", now, []);
    }
    // Points older than a few periods are never evaluated again.
    for (const [key, series] of this.points)
      this.points.set(
        key,
        series.filter((p) => p.at >= from - 2 * this.periodMs),
      );
  }

  private set(a: AlarmDefinition, next: AlarmState, at: number, values: readonly number[]): void {
    if (this.state.get(a.name) === next) return;
    this.state.set(a.name, next);
    const stat = a.check && values.length ? periodStatistic(a.check, values) : undefined;
    this.transitions.push({
      alarm: a.name,
      state: next,
      at,
      runbook: a.runbook,
      ...(stat === undefined ? {} : { value: stat }),
    });
  }

  /** New lines of every node's metric file since the last read. */
  private read(): void {
    if (!existsSync(this.metricsDir)) return;
    for (const file of readdirSync(this.metricsDir)) {
      if (!file.endsWith(".tsv")) continue;
      const node = file.slice(0, -".tsv".length);
      const path = join(this.metricsDir, file);
      const fd = openSync(path, "r");
      try {
        const offset = this.offsets.get(path) ?? 0;
        const size = fstatSync(fd).size;
        if (size <= offset) continue;
        const buf = Buffer.alloc(size - offset);
        readSync(fd, buf, 0, buf.length, offset);
        const text = buf.toString("utf8");
        // Only whole lines; a line still being appended is read next time.
        const end = text.lastIndexOf("\n") + 1;
        this.offsets.set(path, offset + Buffer.byteLength(text.slice(0, end)));
        for (const line of text.slice(0, end).split("\n")) {
          const [at, check, value] = line.split("\t");
          if (!at || !check || value === undefined) continue;
          const key = `${node}\t${check}`;
          const series = this.points.get(key) ?? [];
          series.push({ at: Number(at), value: Number(value) });
          this.points.set(key, series);
        }
      } finally {
        closeSync(fd);
      }
    }
  }
}
