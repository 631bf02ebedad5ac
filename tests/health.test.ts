/**
 * The health model as data: every node's checks, the runbook each names, the thresholds the
 * node, the stack's alarms and the lab's collector all apply, and the files that ship it.
 */
import { describe, expect, it } from "vitest";
import { alarmDefinitions, evaluatePeriod } from "../lab/lib/collector.js";
import { loadLabTopology } from "../lab/lib/config.js";
import { alarmRunbooks, statusCheckAlarms } from "../src/components/alarms.js";
import {
  type AlarmedCheck,
  alarmDescription,
  alarmedChecks,
  alarmName,
  alarmStatistic,
  compositeAlarms,
  fipCheckId,
  type HealthCheck,
  healthChecks,
  healthChecksOf,
  isAlarmed,
  judge,
  LAB_UNSUPPORTED_CHECKS,
} from "../src/health.js";
import { paths } from "../src/layout.js";
import {
  renderHealthService,
  renderHealthTable,
  renderHealthTimer,
  renderNodeHealthTable,
  tsvField,
} from "../src/render/health.js";
import { buildRunbooks } from "../src/runbooks/runbooks.js";
import { nodeByName, nodesWithRole, peerOf, type Topology } from "../src/topology.js";
import { topologyFor } from "./support/topologies.js";

const topologies: [string, Topology][] = [
  ["staging", topologyFor("staging")],
  ["prod", topologyFor("prod")],
  ["lab", loadLabTopology(process.cwd())],
];

const check = (t: Topology, node: string, id: string): HealthCheck => {
  const c = healthChecksOf(t, nodeByName(t, node)).find((x) => x.id === id);
  if (!c) throw new Error(`no check ${id} on ${node}`);
  return c;
};

const alarmed = (t: Topology, node: string, id: string): AlarmedCheck => {
  const c = check(t, node, id);
  if (!isAlarmed(c)) throw new Error(`${id} on ${node} has no alarm`);
  return c;
};

describe("health model", () => {
  it.each(topologies)("%s: every check and composite names a runbook of the stack", (_, t) => {
    const ids = new Set(buildRunbooks(t).map((r) => r.id));
    const named = [...healthChecks(t).map((c) => c.runbook), ...compositeAlarms(t).map((c) => c.runbook)];
    expect(named.filter((r) => !ids.has(r))).toEqual([]);
  });

  it.each(topologies)("%s: check ids are unique per node and usable as metric names", (_, t) => {
    for (const node of t.nodes) {
      const ids = healthChecksOf(t, node).map((c) => c.id);
      expect(new Set(ids).size).toBe(ids.length);
      for (const id of ids) expect(id).toMatch(/^[a-z0-9-]{1,64}$/);
    }
  });

  it("gives every role its checks, each pointing at the runbook that fixes it", () => {
    const t = topologyFor("prod");
    expect(check(t, "lb-b", "peer-fips-held")).toMatchObject({
      runbook: "balancer-loss-lb-a",
      comparison: "atLeast",
    });
    expect(check(t, "lb-a", "heartbeat-peer").runbook).toBe("balancer-loss-lb-b");
    expect(check(t, "lb-a", "upload-backend-app-c").runbook).toBe("upload-backend-loss-app-c");
    expect(check(t, "db-b", "writer").runbook).toBe("db-primary-loss-db-a");
    expect(check(t, "db-b", "sync-standby").runbook).toBe("db-standby-lost-db-a");
    expect(check(t, "db-a", "restore-test").runbook).toBe("db-backups-stalled-db-b");
    expect(check(t, "app-a", "package-files-missing").runbook).toBe("package-files-lost");
    // The storage pair (app-a, app-b) watches DRBD and the export; a third app server does not.
    expect(check(t, "app-b", "drbd").runbook).toBe("storage-primary-loss-app-a");
    expect(check(t, "app-a", "nfs-export").runbook).toBe("storage-primary-loss-app-a");
    expect(healthChecksOf(t, nodeByName(t, "app-c")).map((c) => c.id)).not.toContain("drbd");
    expect(check(t, "db-a", "disk-data")).toMatchObject({
      runbook: "disk-full-db-a",
      threshold: t.health.diskUsePercent,
    });
    expect(check(t, "lb-a", "cert-days-left")).toMatchObject({
      runbook: "tls-certificate",
      comparison: "below",
      threshold: t.health.certDaysLeft,
    });
    // Silence: a lost balancer or app server has its loss runbook; a db node's is its rebuild
    // (its peer's writer check names the failover).
    expect(check(t, "lb-a", "reporting")).toMatchObject({
      runbook: "balancer-loss-lb-a",
      missingBreaches: true,
    });
    expect(check(t, "app-c", "reporting").runbook).toBe("app-server-loss-app-c");
    expect(check(t, "db-a", "reporting").runbook).toBe("rebuild-db-a");
    expect(
      healthChecks(t)
        .filter((c) => c.missingBreaches)
        .map((c) => c.id),
    ).toEqual(t.nodes.map(() => "reporting"));
    // Synchronous replication off: no check for a synchronous standby.
    const asyncT: Topology = { ...t, postgres: { ...t.postgres, synchronous: false } };
    expect(healthChecksOf(asyncT, nodeByName(asyncT, "db-a")).map((c) => c.id)).not.toContain("sync-standby");
  });

  it("checks each floating IP on its home balancer, replay lag in bytes on the standby, and the bundle's age everywhere", () => {
    const t = topologyFor("prod");
    for (const lb of nodesWithRole(t, "balancer")) {
      const fips = healthChecksOf(t, lb).filter((c) => c.id.startsWith("fip-"));
      expect(fips.map((c) => c.id)).toEqual(
        t.floatingIps.filter((f) => f.home === lb.name).map((f) => fipCheckId(f.address)),
      );
      for (const c of fips)
        expect(c).toMatchObject({
          comparison: "below",
          threshold: 1,
          runbook: `balancer-loss-${peerOf(t, lb).name}`,
        });
    }
    expect(fipCheckId("192.0.2.10")).toBe("fip-192-0-2-10");
    expect(check(t, "db-b", "replay-lag-bytes")).toMatchObject({
      unit: "Bytes",
      comparison: "atLeast",
      threshold: t.health.replayLagMb * 1_048_576,
      runbook: "db-standby-lost-db-b",
    });
    for (const node of t.nodes)
      expect(check(t, node.name, "bundle-age")).toMatchObject({ comparison: "none", unit: "Seconds" });
    // Measured and published, never critical: no alarm.
    expect(alarmedChecks(t).some((c) => c.id === "bundle-age")).toBe(false);
    expect(alarmedChecks(t)).toHaveLength(healthChecks(t).length - t.nodes.length);
    expect(judge(check(t, "lb-a", "bundle-age"), 1e9)).toBe("ok");
    expect(Object.keys(alarmRunbooks(t)).some((n) => n.endsWith("-bundle-age"))).toBe(false);
  });

  it("judges values as the alarms do: critical at the threshold, warn before it", () => {
    const disk = { comparison: "atLeast", threshold: 90, warn: 80 } as const;
    expect([judge(disk, 79), judge(disk, 80), judge(disk, 89.9), judge(disk, 90)]).toEqual([
      "ok",
      "warn",
      "warn",
      "crit",
    ]);
    const up = { comparison: "below", threshold: 1 } as const;
    expect([judge(up, 1), judge(up, 0)]).toEqual(["ok", "crit"]);
    expect(alarmStatistic({ comparison: "atLeast" })).toEqual({
      statistic: "Maximum",
      comparisonOperator: "GreaterThanOrEqualToThreshold",
    });
    expect(alarmStatistic({ comparison: "below" })).toEqual({
      statistic: "Minimum",
      comparisonOperator: "LessThanThreshold",
    });
  });

  it("starts every alarm description with its runbook", () => {
    expect(alarmDescription("db-both-lost", "both silent")).toBe("runbook db-both-lost: both silent");
    expect(alarmDescription("x", "y".repeat(2000))).toHaveLength(1024);
  });
});

describe("the lab's collector applies the stack's alarms", () => {
  it.each(topologies)("%s: the same alarm names, runbooks and thresholds as the stack renders", (_, t) => {
    const stack = alarmRunbooks(t);
    const ec2 = new Set(statusCheckAlarms(t).map((s) => s.name));
    const unsupported = new Set(
      healthChecks(t)
        .filter((c) => LAB_UNSUPPORTED_CHECKS.includes(c.id))
        .map((c) => alarmName(t, c.node, c.id)),
    );
    // What the lab leaves out: EC2 status checks (no instances) and DRBD/NFS (no module, no nfsd).
    expect(unsupported.size).toBe(2 * LAB_UNSUPPORTED_CHECKS.length);
    const lab = alarmDefinitions(t);
    expect(lab.map((a) => a.name).sort()).toEqual(
      Object.keys(stack)
        .filter((n) => !ec2.has(n) && !unsupported.has(n))
        .sort(),
    );
    for (const a of lab) expect(a.runbook).toBe(stack[a.name]?.runbook);
  });

  it("evaluates a period as CloudWatch does: the worst datapoint decides; only silence on reporting breaches", () => {
    const t = topologyFor("prod");
    expect(evaluatePeriod(alarmed(t, "lb-a", "nginx"), [1, 1, 0, 1])).toBe("ALARM");
    expect(evaluatePeriod(alarmed(t, "lb-a", "nginx"), [1, 1])).toBe("OK");
    expect(evaluatePeriod(alarmed(t, "lb-a", "nginx"), [])).toBe("OK");
    expect(evaluatePeriod(alarmed(t, "lb-a", "reporting"), [])).toBe("ALARM");
    expect(evaluatePeriod(alarmed(t, "lb-a", "reporting"), [1])).toBe("OK");
    expect(evaluatePeriod(alarmed(t, "db-a", "disk-data"), [50, t.health.diskUsePercent])).toBe("ALARM");
    expect(evaluatePeriod(alarmed(t, "db-a", "disk-data"), [t.health.diskUsePercent - 1])).toBe("OK");
  });
});

describe("health files", () => {
  const t = topologyFor("prod");

  it("ships each node its rows: id, comparison, threshold, warn, unit, runbook, summary", () => {
    const node = nodeByName(t, "db-a");
    const rows = renderNodeHealthTable(t, node).trimEnd().split("\n");
    expect(rows).toHaveLength(healthChecksOf(t, node).length);
    for (const row of rows) expect(row.split("\t")).toHaveLength(7);
    expect(rows).toContain(
      [
        "disk-data",
        "atLeast",
        "90",
        "80",
        "Percent",
        "disk-full-db-a",
        check(t, "db-a", "disk-data").summary,
      ].join("\t"),
    );
    expect(rows.find((r) => r.startsWith("writer\t"))).toMatch(
      /^writer\tbelow\t1\t-\tCount\tdb-primary-loss-db-b\t/,
    );
    // No threshold for a check that is never critical.
    expect(rows.find((r) => r.startsWith("bundle-age\t"))).toMatch(/^bundle-age\tnone\t-\t-\tSeconds\t/);
  });

  it("refuses a field that would shift the columns", () => {
    expect(() => tsvField("a\tb")).toThrow(/tab or line break/);
    expect(() => tsvField("a\nb")).toThrow(/tab or line break/);
    expect(tsvField("")).toBe("-");
    expect(() => renderHealthTable([{ ...check(t, "lb-a", "nginx"), summary: "nginx\tdown" }])).toThrow(
      /tab or line break/,
    );
  });

  it("runs the probes from a timer every healthIntervalSeconds, to the tenth of a second", () => {
    const timer = renderHealthTimer(t);
    expect(timer).toContain(`OnUnitActiveSec=${t.health.intervalSeconds}s`);
    expect(timer).toContain(`OnBootSec=${t.health.intervalSeconds}s`);
    expect(timer).toContain("AccuracySec=100ms");
    const service = renderHealthService(t, paths.agent);
    expect(service).toContain(`ExecStart=${paths.agent} health --publish`);
    expect(service).toContain("Type=oneshot");
  });
});
