/**
 * Failover drills run after the end-to-end checks, on the same lab, under load (see load.ts).
 * Each records its checks and figures (failover seconds, failed requests, committed rows lost)
 * in the report.
 */
import type { Lab } from "../lib/lab.js";
import type { Report } from "../lib/report.js";

export interface Drill {
  readonly id: string;
  readonly title: string;
  run(lab: Lab, report: Report): Promise<void>;
}

/** The drills `npm run lab` executes, in order. */
export const drills: readonly Drill[] = [];
