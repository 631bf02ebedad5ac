/**
 * Which alarms each drill must raise, and which it may. Every drill is checked against this:
 * each expected alarm fired after the fault, within the detection goal, naming the runbook the
 * drill runs (or would, where the system heals itself); nothing outside both lists fired.
 */
import { alarmName, compositeAlarms, fipCheckId } from "../../src/health.js";
import type { Topology } from "../../src/topology.js";

export const DETECTION_GOAL_SECONDS = 15;

export interface ExpectedAlarm {
  readonly alarm: string;
  /** The runbook the drill runs for it (or the one an operator follows). */
  readonly runbook: string;
}

export interface DrillAlarms {
  readonly expect: readonly ExpectedAlarm[];
  /** Alarms that may fire too: other views of the same fault, or a fault too short to be sure. */
  readonly allow: readonly string[];
  /** Why nothing is expected, when nothing is. */
  readonly why?: string;
}

const everyAlarmOf = (t: Topology, nodes: readonly string[], checks: readonly string[]): string[] =>
  nodes.flatMap((n) => checks.map((c) => alarmName(t, n, c)));

const names = (t: Topology, role: string): string[] =>
  t.nodes.filter((n) => n.role === role).map((n) => n.name);

/** The expectations of drill `id` in topology `t` (db roles as the drill order leaves them). */
export function drillAlarms(t: Topology, id: string): DrillAlarms {
  const a = (node: string, check: string) => alarmName(t, node, check);
  const lbs = names(t, "balancer");
  const apps = names(t, "app");
  const dbs = names(t, "db");
  const balancerViews = [
    ...everyAlarmOf(t, lbs, ["reporting", "nginx", "haproxy", "heartbeat-peer", "peer-fips-held"]),
    ...t.floatingIps.map((f) => a(f.home, fipCheckId(f.address))),
  ];
  const dbViews = everyAlarmOf(t, dbs, [
    "reporting",
    "writer",
    "standby-streaming",
    "sync-standby",
    "replay-lag-seconds",
    "replay-lag-bytes",
    "slot-wal-percent",
  ]);
  const appViews = [
    ...everyAlarmOf(t, apps, ["reporting", "index", "package-root"]),
    ...lbs.flatMap((lb) => apps.map((app) => a(lb, `upload-backend-${app}`))),
  ];
  switch (id) {
    case "1":
    case "2":
      return {
        // The drill brings lb-a back only once lb-b's held address has paged.
        expect: [{ alarm: a("lb-b", "peer-fips-held"), runbook: "balancer-loss-lb-a" }],
        allow: balancerViews,
      };
    case "3":
      return {
        expect: [],
        allow: balancerViews,
        why: "the partition lasts 5 s: Heartbeat heals it before the alarm period ends",
      };
    case "4":
      return { expect: [{ alarm: a("lb-a", "nginx"), runbook: "balancer-loss-lb-a" }], allow: balancerViews };
    case "5":
      // Apache stopped for 8 s, then its port blackholed for 12 s: the node itself stays up.
      return { expect: [{ alarm: a("app-a", "index"), runbook: "app-server-loss-app-a" }], allow: appViews };
    case "6":
      return {
        expect: [],
        allow: appViews,
        why: "ssh.service's Restart=on-failure has sshd back within a second, before the health check takes its second look",
      };
    case "7":
      return {
        expect: [{ alarm: a("db-b", "writer"), runbook: "db-primary-loss-db-a" }],
        allow: [...dbViews, ...appViews, ...everyAlarmOf(t, dbs, ["archive-failing"])],
      };
    case "8":
      // Drill 7 left db-b primary and db-a its standby.
      return {
        expect: t.postgres.synchronous
          ? [{ alarm: a("db-b", "sync-standby"), runbook: "db-standby-lost-db-a" }]
          : [{ alarm: a("db-b", "standby-streaming"), runbook: "db-standby-lost-db-a" }],
        allow: dbViews,
      };
    case "13":
      // The drill adds the standby's restore-test alarm (the roles are known at run time).
      return { expect: [], allow: [] };
    case "15":
      return {
        expect: compositeAlarms(t).map((c) => ({ alarm: c.name, runbook: c.runbook })),
        allow: [...dbViews, ...appViews, ...everyAlarmOf(t, dbs, ["archive-failing", "backup-age-hours"])],
      };
    case "9":
      return { expect: [], allow: [], why: "it checks drill 7's re-attach; no fault" };
    case "11":
      return {
        expect: [],
        allow: [],
        why: "each daemon is back within a second, so no check stays critical for its second look",
      };
    case "12":
      return {
        expect: [],
        allow: everyAlarmOf(t, apps, ["index"]),
        why: "under mod_fcgid, killed processes leave /_health unanswered for seconds (the drill counts those failures)",
      };
    case "10":
      return {
        expect: [],
        allow: [...balancerViews, ...appViews, ...dbViews],
        why: "a reboot shorter than an alarm period may or may not silence a node for a whole period",
      };
    case "14":
      return {
        expect: [{ alarm: a("app-a", "package-files-missing"), runbook: "package-files-lost" }],
        allow: [...appViews, ...everyAlarmOf(t, apps, ["package-files-missing"])],
      };
    case "16":
      // The drill adds the primary's disk-data alarm (the primary is known at run time).
      return { expect: [], allow: everyAlarmOf(t, dbs, ["disk-data", "disk-root"]) };
    case "17":
      // The drill adds the primary's sync-standby (or standby-streaming) alarm.
      return { expect: [], allow: [...dbViews, ...everyAlarmOf(t, dbs, ["restore-test"])] };
    case "18":
      return { expect: [], allow: [] };
    case "19":
      // The runbook fences and re-attaches the standby: its streaming checks see that.
      return { expect: [], allow: [...dbViews, ...everyAlarmOf(t, dbs, ["restore-test"])] };
    default:
      return { expect: [], allow: [] };
  }
}
