import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { renderAgentEnv } from "../../src/render/agent.js";
import { nodeByName } from "../../src/topology.js";
import { topologyFor } from "../support/topologies.js";
import { type FakeCloud, fakeCloud, MY_ENI } from "./fake-cloud.js";

const t = topologyFor("prod");
const appA = nodeByName(t, "app-a");
const addr = t.overlay.storage;
const [rtbA, rtbB] = t.overlay.routeTableIds as [string, string];
const fail = { status: 255 };

describe("pypi-overlay on AWS", { timeout: 30_000 }, () => {
  let cloud: FakeCloud;
  beforeEach(() => {
    cloud = fakeCloud(renderAgentEnv(t, appA, ["ssh", "apache2", "heartbeat"]));
  });
  afterEach(() => cloud.cleanup());

  it("fails loudly when IMDS is down, before touching a route or the loopback", () => {
    cloud.imdsDown();
    cloud.answer("replace-route", {});
    const r = cloud.run("pypi-overlay", [addr, "take"]);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/IMDS/);
    expect(cloud.awsCalls("replace-route")).toEqual([]);
    expect(cloud.ipCalls().filter((c) => c.startsWith("addr add"))).toEqual([]);
  });

  it("retries replace-route in each table, then verifies where each table routes the address", () => {
    cloud.answer("replace-route", fail, fail, {});
    cloud.answer("describe-route-tables", { stdout: `${MY_ENI}\n` });
    const r = cloud.run("pypi-overlay", [addr, "take"]);
    expect(r.stderr).not.toContain("pypi-node: error");
    expect(r.status).toBe(0);
    const replaced = cloud.awsCalls("replace-route");
    expect(replaced).toHaveLength(4);
    expect(replaced.filter((c) => c.includes(`--route-table-id ${rtbA} `))).toHaveLength(3);
    expect(replaced.filter((c) => c.includes(`--route-table-id ${rtbB} `))).toHaveLength(1);
    for (const call of replaced) {
      expect(call).toMatch(/^AWS_MAX_ATTEMPTS=1 .*--cli-connect-timeout 2 --cli-read-timeout 5 ec2 /);
      expect(call).toContain(`--destination-cidr-block ${addr}/32 --network-interface-id ${MY_ENI}`);
    }
    const described = cloud.awsCalls("describe-route-tables");
    expect(described.map((c) => c.match(/--route-table-ids (\S+)/)?.[1])).toEqual([rtbA, rtbB]);
  });

  it("fails when a table still routes the address elsewhere after the replacement", () => {
    cloud.answer("replace-route", {});
    cloud.answer("describe-route-tables", { stdout: "eni-0other\n" });
    const r = cloud.run("pypi-overlay", [addr, "take"]);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain("eni-0other");
    expect(cloud.awsCalls("describe-route-tables")).toHaveLength(3);
  });

  it("gives up after 5 attempts when replace-route always fails", () => {
    cloud.answer("replace-route", fail);
    const r = cloud.run("pypi-overlay", [addr, "take"]);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/replace-route in rtb-0a1 failed 5 times/);
    expect(cloud.awsCalls("replace-route")).toHaveLength(5);
    expect(cloud.sleeps()).toEqual([1, 1, 2, 2]);
  });

  it("status is stopped while the loopback address is missing, even if the route still names this node", () => {
    cloud.answer("describe-route-tables", { stdout: "eni-0123456789abcdef0\n" });
    const r = cloud.run("pypi-overlay", [addr, "status"]);
    expect(r.stdout.trim()).toBe("stopped");
  });

  it("status is unknown, never running, when a route table cannot be read", () => {
    cloud.run("pypi-overlay", [addr, "take"]);
    cloud.answer("describe-route-tables", fail);
    const r = cloud.run("pypi-overlay", [addr, "status"]);
    expect(r.stdout.trim()).toBe("unknown");
    expect(r.status).not.toBe(0);
  });
});

describe("who holds the writer route (pypi-db's first boot asks)", { timeout: 30_000 }, () => {
  const dbA = nodeByName(t, "db-a");
  let cloud: FakeCloud;
  beforeEach(() => {
    cloud = fakeCloud(renderAgentEnv(t, dbA, ["postgresql"]));
  });
  afterEach(() => cloud.cleanup());
  const holder = (): string => cloud.run("pypi-overlay", [t.overlay.dbWriter, "holder"]).stdout.trim();

  it.each([
    [`${MY_ENI}\tactive`, "mine"],
    ["eni-0other\tactive", "other"],
    // Both db instances replaced: the route names an interface that no longer exists.
    ["eni-0other\tblackhole", "none"],
    // Its own instance stopped and started: a moment of blackhole on its own interface.
    [`${MY_ENI}\tblackhole`, "mine"],
    ["None", "none"],
  ])("route %j -> %s", (route, want) => {
    cloud.answer("describe-route-tables", { stdout: `${route}\n` });
    expect(holder()).toBe(want);
    expect(cloud.awsCalls("describe-route-tables")[0]).toContain("[0].[NetworkInterfaceId, State]");
  });
});
