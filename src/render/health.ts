/**
 * A node's health table (its rows of the health model) and the timer that runs
 * `pypi-node health --publish`. The table is the one source of thresholds and runbooks on the
 * node: the agent judges its measurements with it, as the stack's alarms and the lab's
 * collector judge the published values.
 */
import { type HealthCheck, healthChecksOf } from "../health.js";
import type { NodeSpec, Topology } from "../topology.js";

export const HEALTH_UNIT = "pypi-health";
export const HEALTH_TABLE_PATH = "/etc/pypi-node/health.tsv";
export const healthUnitPath = (kind: "service" | "timer"): string =>
  `/etc/systemd/system/${HEALTH_UNIT}.${kind}`;

/** One TSV field: tabs and line breaks would shift the columns the agent reads, so none may occur. */
export function tsvField(value: string | number): string {
  const text = String(value);
  if (/[\t\r\n]/.test(text)) throw new Error(`health table: tab or line break in ${JSON.stringify(text)}`);
  return text === "" ? "-" : text;
}

/** Columns: id, comparison, threshold, warn (- for none), unit, runbook, summary. */
export function renderHealthTable(checks: readonly HealthCheck[]): string {
  return checks
    .map((c) =>
      [
        c.id,
        c.comparison,
        c.comparison === "none" ? "-" : c.threshold,
        c.warn ?? "-",
        c.unit,
        c.runbook,
        c.summary,
      ]
        .map(tsvField)
        .join("\t"),
    )
    .map((line) => `${line}\n`)
    .join("");
}

export const renderNodeHealthTable = (t: Topology, node: NodeSpec): string =>
  renderHealthTable(healthChecksOf(t, node));

export function renderHealthService(t: Topology, agentPath: string): string {
  return `${[
    "[Unit]",
    "Description=Measure this node's health and publish it (CloudWatch metrics)",
    "",
    "[Service]",
    "Type=oneshot",
    `ExecStart=${agentPath} health --publish`,
    // A hung probe must not stop the next run: each probe has its own timeout well below this.
    `TimeoutStartSec=${Math.max(30, t.health.intervalSeconds * 6)}s`,
    "Nice=5",
  ].join("\n")}\n`;
}

export function renderHealthTimer(t: Topology): string {
  const every = `${t.health.intervalSeconds}s`;
  return `${[
    "[Unit]",
    "Description=Publish this node's health",
    "",
    "[Timer]",
    `OnBootSec=${every}`,
    `OnUnitActiveSec=${every}`,
    // Seconds count here: detection time is the interval plus the alarm period.
    "AccuracySec=100ms",
    `Unit=${HEALTH_UNIT}.service`,
    "",
    "[Install]",
    "WantedBy=timers.target",
  ].join("\n")}\n`;
}
