/**
 * `pypi-node health` (pypi-health) under real `sh`: one JSON record per row of the node's health
 * table, judged with the table's thresholds; a check that turns critical is published only if it
 * still is a second later; --publish sends the values (the lab's metric store, or
 * PutMetricData with the stack's namespace). The database is never reached (the writer is
 * 127.0.0.9), the app's /_health is a fake curl's refusal.
 */
import { appendFileSync, mkdirSync, readFileSync, rmSync, utimesSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { fipCheckId, healthChecksOf } from "../../src/health.js";
import { renderAgentEnv } from "../../src/render/agent.js";
import { renderNodeHealthTable } from "../../src/render/health.js";
import { buildRunbooks } from "../../src/runbooks/runbooks.js";
import { nodeByName, type Topology } from "../../src/topology.js";
import { requireTools } from "../support/tools.js";
import { asLab, topologyFor } from "../support/topologies.js";
import { type FakeCloud, fakeCloud } from "./fake-cloud.js";

const canRun = requireTools("health probes", ["sh", "awk", "psql", "timeout", "df"]);

interface HealthRecord {
  node: string;
  check: string;
  state: "ok" | "warn" | "crit";
  value: number;
  unit: string;
  runbook: string;
  summary: string;
}

function setUp(t: Topology, nodeName: string, backend: "aws" | "lab"): { cloud: FakeCloud; root: string } {
  const node = nodeByName(t, nodeName);
  const env = renderAgentEnv(t, node, ["pypi-health"]);
  const cloud = fakeCloud(env);
  const dir = cloud.dir;
  const root = join(dir, "root");
  mkdirSync(join(root, "incoming", "alice", "upload"), { recursive: true });
  writeFileSync(join(dir, "health.tsv"), renderNodeHealthTable(t, node));
  // This test's own paths, and nothing that leaves the machine.
  appendFileSync(
    join(dir, "node.env"),
    `${[
      `PYPI_BACKEND=${backend}`,
      `PYPI_AGENT_STATE='${join(dir, "state")}'`,
      `PYPI_HEALTH_TABLE='${join(dir, "health.tsv")}'`,
      `PYPI_PACKAGE_ROOT='${root}'`,
      `PYPI_LAB_CLOUD='${join(dir, "cloud")}'`,
      "PYPI_OVERLAY_DB=127.0.0.9",
      "PYPI_APP_HEALTH_URL=http://127.0.0.1:9/_health",
    ].join("\n")}\n`,
  );
  return { cloud, root };
}

const records = (stdout: string): HealthRecord[] => JSON.parse(stdout) as HealthRecord[];
const byCheck = (rs: HealthRecord[], check: string): HealthRecord => {
  const r = rs.find((x) => x.check === check);
  if (!r) throw new Error(`no record for ${check}: ${rs.map((x) => x.check).join(", ")}`);
  return r;
};

describe.runIf(canRun)("pypi-node health on an app server", { timeout: 60_000 }, () => {
  const t = asLab(topologyFor("staging"));
  let cloud: FakeCloud;
  let root: string;
  beforeEach(() => {
    ({ cloud, root } = setUp(t, "app-a", "lab"));
  });
  afterEach(() => cloud.cleanup());

  it("prints one record per table row, with the row's runbook, judged by its threshold", () => {
    const r = cloud.run("pypi-health", []);
    expect(r.status, r.stderr).toBe(0);
    const rs = records(r.stdout);
    expect(rs.map((x) => x.check)).toEqual(healthChecksOf(t, nodeByName(t, "app-a")).map((c) => c.id));
    for (const x of rs) expect(x.node).toBe("app-a");
    // The fake curl refuses /_health: the index is down, and the record names its runbook.
    expect(byCheck(rs, "index")).toMatchObject({ state: "crit", value: 0, runbook: "app-server-loss-app-a" });
    expect(byCheck(rs, "package-root")).toMatchObject({ state: "ok", value: 1 });
    expect(byCheck(rs, "register-queue-age")).toMatchObject({ state: "ok", value: 0 });
    // No database: the file check cannot look, which is the db checks' finding, not this one's.
    expect(byCheck(rs, "package-files-missing")).toMatchObject({ state: "ok", value: 0 });
    expect(byCheck(rs, "reporting")).toMatchObject({ state: "ok", value: 1 });
    expect(byCheck(rs, "bundle-refused")).toMatchObject({ state: "ok", value: 0 });
  });

  it("publishes a check that turns critical only if it still is a second later", () => {
    // /_health refused once, then answered: a restart the unit did at once pages nobody.
    cloud.install(
      "curl",
      `#!/bin/sh\nn=$(($(cat '${cloud.dir}/health-calls' 2>/dev/null || echo 0) + 1)); echo $n >'${cloud.dir}/health-calls'\nif [ $n -le 1 ]; then printf 000; exit 7; fi\nprintf 200\n`,
    );
    const published = () =>
      readFileSync(join(cloud.dir, "cloud", "metrics", "app-a.tsv"), "utf8")
        .trim()
        .split("\n")
        .map((l) => l.split("\t"))
        .filter(([, check]) => check === "index")
        .map(([, , value]) => Number(value));
    const run = () => records(cloud.run("pypi-health", ["--publish"]).stdout);
    expect(byCheck(run(), "index")).toMatchObject({ state: "ok", value: 1 });
    // One pause of a second (the fake sleep records it), then the second look.
    expect(cloud.sleeps()).toEqual([1]);
    expect(readFileSync(join(cloud.dir, "health-calls"), "utf8").trim()).toBe("2");
    expect(published()).toEqual([1]);
    // Down for good: critical on the first run, confirmed a second later, and published.
    cloud.install("curl", "#!/bin/sh\nprintf 000\nexit 7\n");
    expect(byCheck(run(), "index")).toMatchObject({ state: "crit", value: 0 });
    expect(published()).toEqual([1, 0]);
    // Still critical: no second look needed.
    expect(byCheck(run(), "index").state).toBe("crit");
    expect(cloud.sleeps()).toEqual([1, 1]);
    expect(published()).toEqual([1, 0, 0]);
  });

  it("reports how long the oldest upload has waited to be registered", () => {
    const upload = join(root, "incoming", "alice", "upload", "demo-1.0.tar.gz");
    writeFileSync(upload, "x");
    const old = Date.now() / 1000 - t.health.registerQueueSeconds - 60;
    utimesSync(upload, old, old);
    const queue = byCheck(records(cloud.run("pypi-health", []).stdout), "register-queue-age");
    expect(queue.state).toBe("crit");
    expect(queue.value).toBeGreaterThanOrEqual(t.health.registerQueueSeconds + 59);
    expect(queue.runbook).toBe("app-server-loss-app-a");
  });

  it("reports a refused bundle until an apply succeeds", () => {
    mkdirSync(join(cloud.dir, "state"), { recursive: true });
    writeFileSync(
      join(cloud.dir, "state", "apply-refused"),
      "1700000000\npypi-node: error: candidate rejected\n",
    );
    const rs = records(cloud.run("pypi-health", []).stdout);
    expect(byCheck(rs, "bundle-refused")).toMatchObject({
      state: "crit",
      value: 1,
      runbook: "bundle-refused-app-a",
    });
  });

  it("reports how old the running bundle is, with no threshold", () => {
    mkdirSync(join(cloud.dir, "state"), { recursive: true });
    writeFileSync(join(cloud.dir, "state", "apply-ok"), `${Math.floor(Date.now() / 1000) - 3 * 86_400}\n`);
    const age = byCheck(records(cloud.run("pypi-health", []).stdout), "bundle-age");
    expect(age).toMatchObject({ state: "ok", unit: "Seconds", runbook: "bundle-refused-app-a" });
    expect(age.value).toBeGreaterThanOrEqual(3 * 86_400);
    expect(age.value).toBeLessThan(3 * 86_400 + 60);
  });

  it("sees DRBD healthy only when Connected, both disks UpToDate and one Primary", () => {
    const drbd = (cstate: string, dstate: string, role: string) => {
      cloud.install(
        "drbdadm",
        `#!/bin/sh\ncase $1 in cstate) echo ${cstate} ;; dstate) echo ${dstate} ;; role) echo ${role} ;; *) exit 10 ;; esac\n`,
      );
      return byCheck(records(cloud.run("pypi-health", []).stdout), "drbd");
    };
    expect(drbd("Connected", "UpToDate/UpToDate", "Primary/Secondary")).toMatchObject({
      state: "ok",
      value: 1,
    });
    expect(drbd("Connected", "UpToDate/UpToDate", "Secondary/Primary")).toMatchObject({
      state: "ok",
      value: 1,
    });
    // Split brain: both primary and disconnected; a resync; a peer gone.
    expect(drbd("StandAlone", "UpToDate/DUnknown", "Primary/Unknown")).toMatchObject({
      state: "crit",
      value: 0,
    });
    expect(drbd("SyncSource", "UpToDate/Inconsistent", "Primary/Secondary")).toMatchObject({ state: "crit" });
    expect(drbd("Connected", "UpToDate/UpToDate", "Secondary/Secondary")).toMatchObject({ state: "crit" });
    expect(drbd("WFConnection", "UpToDate/DUnknown", "Primary/Unknown").runbook).toBe(
      "storage-primary-loss-app-a",
    );
  });

  it("bundle-check prints what the bundle-refused runbook's steps expect", () => {
    const rb = buildRunbooks(t).find((r) => r.id === "bundle-refused-app-a");
    if (!rb) throw new Error("no bundle-refused-app-a runbook");
    const [why, , , none] = rb.steps;
    const state = join(cloud.dir, "state");
    mkdirSync(state, { recursive: true });
    writeFileSync(join(state, "apply-ok"), `${Math.floor(Date.now() / 1000) - 300}\n`);
    writeFileSync(
      join(state, "apply-refused"),
      `${Math.floor(Date.now() / 1000) - 10}\npypi-node: error: candidate certificate from /pypi/x is expired\n`,
    );
    const refused = cloud.run("pypi-node", ["bundle-check"]);
    expect(refused.status, refused.stderr).toBe(0);
    expect(refused.stdout).toMatch(new RegExp(why?.expectOutput ?? "unset"));
    expect(refused.stdout).toMatch(/^reason\tpypi-node: error: candidate certificate .* is expired$/m);
    rmSync(join(state, "apply-refused"));
    const clean = cloud.run("pypi-node", ["bundle-check"]);
    expect(clean.stdout).toMatch(new RegExp(none?.expectOutput ?? "unset"));
    expect(clean.stdout).not.toMatch(new RegExp(why?.expectOutput ?? "unset"));
  });

  it("refuses an unknown argument", () => {
    const r = cloud.run("pypi-health", ["--publsh"]);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/usage: pypi-node health \[--publish\]/);
  });
});

describe.runIf(canRun)("pypi-node health on a balancer", { timeout: 60_000 }, () => {
  const t = asLab(topologyFor("staging"));
  let cloud: FakeCloud;
  beforeEach(() => {
    ({ cloud } = setUp(t, "lb-a", "lab"));
    cloud.install("arping", "#!/bin/sh\n");
  });
  afterEach(() => cloud.cleanup());

  it("checks each of its home floating IPs held exactly once: by nobody is critical, by the peer is not", () => {
    const home = t.floatingIps.filter((f) => f.home === "lb-a");
    expect(home.length).toBeGreaterThan(0);
    const fip = home[0] as (typeof home)[number];
    const id = fipCheckId(fip.address);
    const state = () => byCheck(records(cloud.run("pypi-health", []).stdout), id);
    const ids = records(cloud.run("pypi-health", []).stdout).map((r) => r.check);
    expect(ids.filter((c) => c.startsWith("fip-"))).toEqual(home.map((f) => fipCheckId(f.address)));
    // Never associated: nobody answers for it.
    expect(state()).toMatchObject({ state: "crit", value: 0, runbook: "balancer-loss-lb-b" });
    // The peer holds it: held once (peer-fips-held on the peer says it is not home).
    mkdirSync(join(cloud.dir, "cloud", "eips"), { recursive: true });
    writeFileSync(join(cloud.dir, "cloud", "eips", fip.address), "lb-b\n");
    expect(state()).toMatchObject({ state: "ok", value: 1 });
    // Taken here: associated and on the interface.
    expect(cloud.run("pypi-fip", [fip.address, "start"]).status).toBe(0);
    expect(state()).toMatchObject({ state: "ok", value: 1 });
    // Associated here, but the address is gone from the interface.
    writeFileSync(join(cloud.dir, "ip.addrs"), "");
    expect(state()).toMatchObject({ state: "crit", value: 0 });
  });
});

describe.runIf(canRun)("pypi-node health on AWS", { timeout: 60_000 }, () => {
  const t = topologyFor("prod");
  let cloud: FakeCloud;
  beforeEach(() => {
    ({ cloud } = setUp(t, "app-b", "aws"));
  });
  afterEach(() => cloud.cleanup());

  it("sends PutMetricData to the stack's namespace: high resolution, dimension Node, every check", () => {
    // The fake aws keeps the metric data file (the script removes it when it exits).
    cloud.install(
      "aws",
      `#!/bin/sh\necho "$*" >>'${cloud.dir}/aws.log'\nfor a in "$@"; do case $a in file://*) cat "\${a#file://}" >'${cloud.dir}/metric-data.json' ;; esac; done\n`,
    );
    const r = cloud.run("pypi-health", ["--publish"]);
    expect(r.status, r.stderr).toBe(0);
    const call = readFileSync(join(cloud.dir, "aws.log"), "utf8");
    expect(call).toContain(
      `cloudwatch put-metric-data --namespace ${t.health.namespace} --metric-data file://`,
    );
    const data = JSON.parse(readFileSync(join(cloud.dir, "metric-data.json"), "utf8")) as {
      MetricName: string;
      Dimensions: { Name: string; Value: string }[];
      Value: number;
      StorageResolution: number;
      Timestamp: number;
    }[];
    expect(data.map((d) => d.MetricName)).toEqual(healthChecksOf(t, nodeByName(t, "app-b")).map((c) => c.id));
    for (const d of data) {
      expect(d.Dimensions).toEqual([{ Name: "Node", Value: "app-b" }]);
      expect(d.StorageResolution).toBe(1);
      expect(Math.abs(d.Timestamp - Date.now() / 1000)).toBeLessThan(60);
    }
    expect(data.find((d) => d.MetricName === "reporting")?.Value).toBe(1);
  });

  it("fails when PutMetricData keeps failing (the timer's unit shows it)", () => {
    cloud.install("aws", "#!/bin/sh\necho 'An error occurred (AccessDenied)' >&2\nexit 255\n");
    const r = cloud.run("pypi-health", ["--publish"]);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/put-metric-data failed/);
  });
});
