/**
 * The one health model: which checks each node measures, the threshold at which each is
 * critical, and the runbook that fixes it. `pypi-node health` reads a node's rows (rendered by
 * render/health.ts) to judge its measurements; the stack renders one CloudWatch alarm per row;
 * the lab's collector applies the same rows to the same published values.
 */
import { type NodeSpec, nodesWithRole, peerOf, storagePair, type Topology } from "./topology.js";

/** The check that a floating IP is held exactly once (on its home balancer); dashes for dots. */
export const fipCheckId = (address: string): string => `fip-${address.replaceAll(".", "-")}`;

/** How many of the newest registered files `package-files-missing` looks for on the volume. */
export const NEWEST_FILES_CHECKED = 20;

/**
 * How a value compares to the threshold when it is critical; `none`: measured, reported and
 * published for dashboards and `pypi-node health`, never critical, no alarm.
 */
export type Comparison = "atLeast" | "below" | "none";

export type HealthUnit = "Count" | "Percent" | "Seconds" | "Bytes" | "None";

export interface HealthCheck {
  /** Metric name, unique per node (`nginx`, `disk-data`, `upload-backend-app-a`). */
  readonly id: string;
  readonly node: string;
  /** One line: what it means when this is critical. */
  readonly summary: string;
  readonly unit: HealthUnit;
  readonly comparison: Comparison;
  /** Critical at this value (`atLeast`: value >= threshold; `below`: value < threshold; unused for `none`). */
  readonly threshold: number;
  /** Warn at this value (same comparison); the state only, no alarm. */
  readonly warn?: number;
  /** The runbook that fixes it (an id of buildRunbooks). */
  readonly runbook: string;
  /** A node that stops publishing breaches only this check (CloudWatch `treatMissingData`). */
  readonly missingBreaches: boolean;
  /** Consecutive breaching periods that fire the alarm (CloudWatch `evaluationPeriods`). */
  readonly periods: number;
}

export type HealthState = "ok" | "warn" | "crit";

/** A check that has an alarm: one whose value can be critical. */
export type AlarmedCheck = HealthCheck & { readonly comparison: "atLeast" | "below" };

export const isAlarmed = (c: HealthCheck): c is AlarmedCheck => c.comparison !== "none";

/** The state of a measured value against a check's thresholds. */
export function judge(
  check: Pick<HealthCheck, "comparison" | "threshold" | "warn">,
  value: number,
): HealthState {
  if (check.comparison === "none") return "ok";
  const past = (limit: number) => (check.comparison === "atLeast" ? value >= limit : value < limit);
  if (past(check.threshold)) return "crit";
  if (check.warn !== undefined && past(check.warn)) return "warn";
  return "ok";
}

/** CloudWatch alarm name of a node's check: stable, and unique per stack. */
export const alarmName = (t: Topology, node: string, check: string): string =>
  `pypi-${t.environment}-${node}-${check}`;

type Row = Omit<HealthCheck, "node" | "missingBreaches" | "periods"> & {
  readonly missingBreaches?: boolean;
  readonly periods?: number;
};

const up = (id: string, summary: string, runbook: string): Row => ({
  id,
  summary,
  unit: "Count",
  comparison: "below",
  threshold: 1,
  runbook,
});

function diskChecks(t: Topology, node: NodeSpec, data?: string): Row[] {
  const limit = t.health.diskUsePercent;
  const disk = (id: string, what: string): Row => ({
    id,
    summary: `${what} on ${node.name} is ${limit} % full or more`,
    unit: "Percent",
    comparison: "atLeast",
    threshold: limit,
    warn: Math.max(1, limit - 10),
    runbook: `disk-full-${node.name}`,
  });
  return [disk("disk-root", "the root filesystem"), ...(data ? [disk("disk-data", data)] : [])];
}

const common = (node: NodeSpec): Row[] => [
  {
    ...up(
      "reporting",
      `${node.name} published no health for two alarm periods (instance down, or its timer stopped)`,
      "",
    ),
    missingBreaches: true,
    // One run slowed by a probe waiting on its timeout (a hung database) is not silence.
    periods: 2,
  },
  {
    id: "bundle-refused",
    summary: `${node.name} refused its newest config bundle and runs on the previous one`,
    unit: "Count",
    comparison: "atLeast",
    threshold: 1,
    runbook: `bundle-refused-${node.name}`,
  },
  {
    // No alarm: a stack nobody deploys to keeps its bundles for months, and a refused or failed
    // apply pages through bundle-refused at once. This says how old the running config is.
    id: "bundle-age",
    summary: `seconds since ${node.name} last applied a bundle without error`,
    unit: "Seconds",
    comparison: "none",
    threshold: 0,
    runbook: `bundle-refused-${node.name}`,
  },
];

function balancerChecks(t: Topology, node: NodeSpec): Row[] {
  const peer = peerOf(t, node);
  return [
    up("nginx", `nginx is down on ${node.name}`, `balancer-loss-${node.name}`),
    up("haproxy", `HAProxy (the upload endpoint) is down on ${node.name}`, `balancer-loss-${node.name}`),
    up("heartbeat-peer", `${node.name}'s Heartbeat does not see ${peer.name}`, `balancer-loss-${peer.name}`),
    // On the home only: the peer holding it is peer-fips-held there; the home gone is its silence.
    ...t.floatingIps
      .filter((f) => f.home === node.name)
      .map((f) =>
        up(
          fipCheckId(f.address),
          `floating IP ${f.address} (home ${node.name}) is held by no balancer, or its association names ${node.name} but the address is not on it`,
          `balancer-loss-${peer.name}`,
        ),
      ),
    {
      id: "peer-fips-held",
      summary: `${node.name} holds floating IPs whose home is ${peer.name}: ${peer.name} is down or failed over`,
      unit: "Count",
      comparison: "atLeast",
      threshold: 1,
      runbook: `balancer-loss-${peer.name}`,
    },
    ...nodesWithRole(t, "app").map((app) =>
      up(
        `upload-backend-${app.name}`,
        `HAProxy on ${node.name} sees ${app.name}'s upload sshd down`,
        `upload-backend-loss-${app.name}`,
      ),
    ),
    {
      id: "cert-days-left",
      summary: `the TLS certificate on ${node.name} expires in less than ${t.health.certDaysLeft} days`,
      unit: "None",
      comparison: "below",
      threshold: t.health.certDaysLeft,
      warn: t.health.certDaysLeft * 2,
      runbook: "tls-certificate",
    },
    ...diskChecks(t, node),
  ];
}

function appChecks(t: Topology, node: NodeSpec): Row[] {
  const [storagePrimary] = storagePair(t);
  return [
    up(
      "index",
      `the index app on ${node.name} does not answer /_health (neither 200 nor 503)`,
      `app-server-loss-${node.name}`,
    ),
    up(
      "package-root",
      `the package files (NFS) do not answer on ${node.name} within 3 s`,
      `storage-primary-loss-${storagePrimary.name}`,
    ),
    {
      id: "package-files-missing",
      summary: `files of the ${NEWEST_FILES_CHECKED} newest registrations are missing from the package volume`,
      unit: "Count",
      comparison: "atLeast",
      threshold: 1,
      runbook: "package-files-lost",
    },
    {
      id: "register-queue-age",
      summary: `an upload has waited ${t.health.registerQueueSeconds} s or more to be registered`,
      unit: "Seconds",
      comparison: "atLeast",
      threshold: t.health.registerQueueSeconds,
      runbook: `app-server-loss-${node.name}`,
    },
    ...(isStoragePair(t, node)
      ? [
          up(
            "drbd",
            `DRBD on ${node.name} is not Connected with both disks UpToDate and one Primary (disconnected, resyncing or split-brain)`,
            `storage-primary-loss-${storagePrimary.name}`,
          ),
          up(
            "nfs-export",
            `${node.name} holds the storage address ${t.overlay.storage} but does not export the mounted package volume`,
            `storage-primary-loss-${storagePrimary.name}`,
          ),
        ]
      : []),
    ...diskChecks(t, node, "the package volume (DRBD)"),
  ];
}

/** The two app servers that run the DRBD pair and its NFS export. */
const isStoragePair = (t: Topology, node: NodeSpec): boolean =>
  storagePair(t).some((n) => n.name === node.name);

/** Checks of what the lab cannot run (no DRBD module, no nfsd): its collector leaves their alarms out. */
export const LAB_UNSUPPORTED_CHECKS: readonly string[] = ["drbd", "nfs-export"];

function dbChecks(t: Topology, node: NodeSpec): Row[] {
  const peer = peerOf(t, node);
  return [
    up(
      "writer",
      `no writable primary answers at the writer address ${t.overlay.dbWriter} (seen from ${node.name})`,
      `db-primary-loss-${peer.name}`,
    ),
    up(
      "standby-streaming",
      `${node.name} is primary and ${peer.name} does not stream from it`,
      `db-standby-lost-${peer.name}`,
    ),
    ...(t.postgres.synchronous
      ? [
          up(
            "sync-standby",
            `${node.name} is primary with no synchronous standby: commits stall`,
            `db-standby-lost-${peer.name}`,
          ),
        ]
      : []),
    {
      id: "replay-lag-seconds",
      summary: `${node.name} is a standby replaying ${t.health.replayLagSeconds} s or more behind`,
      unit: "Seconds",
      comparison: "atLeast",
      threshold: t.health.replayLagSeconds,
      runbook: `db-standby-lost-${node.name}`,
    },
    {
      id: "replay-lag-bytes",
      summary: `${node.name} is a standby holding ${t.health.replayLagMb} MiB or more of received WAL not yet replayed`,
      unit: "Bytes",
      comparison: "atLeast",
      threshold: t.health.replayLagMb * 1_048_576,
      warn: Math.ceil(t.health.replayLagMb / 2) * 1_048_576,
      runbook: `db-standby-lost-${node.name}`,
    },
    {
      id: "slot-wal-percent",
      summary: `the replication slot on ${node.name} retains 80 % or more of max_slot_wal_keep_size (${t.postgres.maxSlotWalKeepMb} MB)`,
      unit: "Percent",
      comparison: "atLeast",
      threshold: 80,
      warn: 50,
      runbook: `db-standby-lost-${peer.name}`,
    },
    {
      id: "archive-failing",
      summary: `${node.name} is primary and its last WAL archive push failed`,
      unit: "Count",
      comparison: "atLeast",
      threshold: 1,
      runbook: `db-backups-stalled-${node.name}`,
    },
    up(
      "restore-test",
      `the last restore test on ${node.name} failed: the repository may not restore`,
      `db-backups-stalled-${peer.name}`,
    ),
    {
      id: "backup-age-hours",
      summary: `${node.name} is primary and its newest backup is ${t.health.backupAgeHours} h old or more`,
      unit: "None",
      comparison: "atLeast",
      threshold: t.health.backupAgeHours,
      runbook: `db-backups-stalled-${node.name}`,
    },
    ...diskChecks(t, node, "the Postgres data volume"),
  ];
}

/** A node's checks, in the order `pypi-node health` reports them. */
export function healthChecksOf(t: Topology, node: NodeSpec): HealthCheck[] {
  const role =
    node.role === "balancer"
      ? balancerChecks(t, node)
      : node.role === "app"
        ? appChecks(t, node)
        : dbChecks(t, node);
  const rows = [...common(node), ...role];
  const silentRunbook =
    node.role === "balancer"
      ? `balancer-loss-${node.name}`
      : node.role === "app"
        ? `app-server-loss-${node.name}`
        : `rebuild-${node.name}`;
  return rows.map((r) => ({
    ...r,
    node: node.name,
    runbook: r.id === "reporting" ? silentRunbook : r.runbook,
    missingBreaches: r.missingBreaches ?? false,
    periods: r.periods ?? 1,
  }));
}

/** Every check of the deployment. */
export const healthChecks = (t: Topology): HealthCheck[] => t.nodes.flatMap((n) => healthChecksOf(t, n));

/** Every check of the deployment that has an alarm. */
export const alarmedChecks = (t: Topology): AlarmedCheck[] => healthChecks(t).filter(isAlarmed);

/** An alarm that fires when every one of its member alarms is firing (a CloudWatch composite alarm). */
export interface CompositeAlarm {
  readonly name: string;
  /** Alarm names (alarmName) that must all be in ALARM. */
  readonly allOf: readonly string[];
  readonly summary: string;
  readonly runbook: string;
}

/** Failures no single node can see: both database nodes silent at once. */
export function compositeAlarms(t: Topology): CompositeAlarm[] {
  const dbs = nodesWithRole(t, "db");
  return [
    {
      name: `pypi-${t.environment}-db-both-silent`,
      allOf: dbs.map((n) => alarmName(t, n.name, "reporting")),
      summary: `both database nodes (${dbs.map((n) => n.name).join(", ")}) stopped publishing their health`,
      runbook: "db-both-lost",
    },
  ];
}

/** What an alarm's description says: its runbook id first, so a pager shows it, then the summary. */
export const alarmDescription = (runbook: string, summary: string): string =>
  `runbook ${runbook}: ${summary}`.slice(0, 1024);

/**
 * How an alarm reads its check's datapoints in one period. The node publishes a check that
 * turns critical only if it still is a second later (a daemon its unit restarts at once is not
 * paged), so any critical datapoint in the period fires: the worst one decides.
 */
export function alarmStatistic(check: Pick<AlarmedCheck, "comparison">): {
  readonly statistic: "Maximum" | "Minimum";
  readonly comparisonOperator: "GreaterThanOrEqualToThreshold" | "LessThanThreshold";
} {
  return check.comparison === "atLeast"
    ? { statistic: "Maximum", comparisonOperator: "GreaterThanOrEqualToThreshold" }
    : { statistic: "Minimum", comparisonOperator: "LessThanThreshold" };
}
