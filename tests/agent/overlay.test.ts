import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { renderAgentEnv } from "../../src/render/agent.js";
import { nodeByName, type Topology } from "../../src/topology.js";
import { topologyFor } from "../support/topologies.js";
import { type FakeCloud, fakeCloud, MY_ENI } from "./fake-cloud.js";

const base = topologyFor("prod");

const t: Topology = base;
/** The storage pair's broker, as the AWS topology names it. */
const BROKER = t.overlay.routeBrokers?.storage ?? "";
const appA = nodeByName(t, "app-a");
const addr = t.overlay.storage;
const [rtbA, rtbB] = t.overlay.routeTableIds as [string, string];
const fail = { status: 255 };
const moved = { stdout: "None\n", payload: `{"destination":"${addr}/32"}` };
const elsewhere = { stdout: "eni-0other\n" };
const here = { stdout: `${MY_ENI}\n` };

describe("pypi-overlay on AWS", { timeout: 30_000 }, () => {
  it("the fixture names a storage broker (every case below depends on it)", () => {
    expect(BROKER).toBe("pypi-prod-route-storage");
  });

  let cloud: FakeCloud;
  beforeEach(() => {
    cloud = fakeCloud(renderAgentEnv(t, appA, ["ssh", "apache2", "heartbeat"]));
  });
  afterEach(() => cloud.cleanup());

  it("fails loudly when IMDS is down, before asking the broker or touching the loopback", () => {
    cloud.imdsDown();
    cloud.answer("invoke", moved);
    const r = cloud.run("pypi-overlay", [addr, "take"]);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/IMDS/);
    expect(cloud.awsCalls("invoke")).toEqual([]);
    expect(cloud.ipCalls().filter((c) => c.startsWith("addr add"))).toEqual([]);
  });

  it("calls nobody when every table already routes the address here (the home node's first take)", () => {
    cloud.answer("describe-route-tables", here);
    const r = cloud.run("pypi-overlay", [addr, "take"]);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toContain(`every route table already routes it to ${MY_ENI}`);
    expect(cloud.awsCalls("invoke")).toEqual([]);
    const described = cloud.awsCalls("describe-route-tables");
    expect(described.map((c) => c.match(/--route-table-ids (\S+)/)?.[1])).toEqual([rtbA, rtbB]);
    expect(cloud.ipCalls()).toContain(`addr add ${addr}/32 dev lo`);
  });

  it("asks its own address's broker once, with this node's interface, then reads back each table", () => {
    cloud.answer("invoke", moved);
    cloud.answer("describe-route-tables", elsewhere, here);
    const r = cloud.run("pypi-overlay", [addr, "take"]);
    expect(r.stderr).not.toContain("pypi-node: error");
    expect(r.status).toBe(0);
    const invoked = cloud.awsCalls("invoke");
    expect(invoked).toHaveLength(1);
    expect(invoked[0]).toMatch(
      // The read timeout outlasts the function's 20 s timeout: a try given up on has ended.
      /^AWS_MAX_ATTEMPTS=1 .*--cli-connect-timeout 2 --cli-read-timeout 25 lambda invoke /,
    );
    expect(invoked[0]).toContain(`--function-name ${BROKER} `);
    expect(invoked[0]).toContain(`--payload {"networkInterfaceId":"${MY_ENI}"}`);
    // The node replaces no route itself; its reads go back to the short timeout.
    expect(cloud.awsCalls("replace-route")).toEqual([]);
    const described = cloud.awsCalls("describe-route-tables");
    // One read finds the route elsewhere; then every table is read back.
    expect(described.map((c) => c.match(/--route-table-ids (\S+)/)?.[1])).toEqual([rtbA, rtbA, rtbB]);
    for (const call of described) expect(call).toContain("--cli-read-timeout 5 ");
    expect(cloud.ipCalls()).toContain(`addr add ${addr}/32 dev lo`);
  });

  it("tries a broker that does not answer again, up to 3 times", () => {
    cloud.answer("invoke", fail, fail, moved);
    cloud.answer("describe-route-tables", elsewhere, here);
    const r = cloud.run("pypi-overlay", [addr, "take"]);
    expect(r.status).toBe(0);
    expect(cloud.awsCalls("invoke")).toHaveLength(3);
    expect(cloud.sleeps()).toEqual([1, 1]);
  });

  it("gives up after 3 unanswered calls", () => {
    cloud.answer("describe-route-tables", elsewhere);
    cloud.answer("invoke", fail);
    const r = cloud.run("pypi-overlay", [addr, "take"]);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain(
      `the route broker ${BROKER} did not answer 3 times (last: An error occurred (Fake)`,
    );
    expect(cloud.awsCalls("invoke")).toHaveLength(3);
    expect(cloud.awsCalls("describe-route-tables")).toHaveLength(1);
  });

  it("takes a call IAM or Lambda refuses as final, and says why in the CLI's words", () => {
    const denied =
      "An error occurred (AccessDeniedException) when calling the Invoke operation: not authorized to perform: lambda:InvokeFunction";
    cloud.answer("describe-route-tables", elsewhere);
    cloud.answer("invoke", { status: 254, stderr: `\n${denied}\n` });
    const r = cloud.run("pypi-overlay", [addr, "take"]);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain(`the route broker ${BROKER} cannot be called: ${denied}`);
    expect(cloud.awsCalls("invoke")).toHaveLength(1);
    expect(cloud.sleeps()).toEqual([]);
  });

  it("takes only its own address: the broker would move that one whatever the node asked", () => {
    cloud.answer("invoke", moved);
    const r = cloud.run("pypi-overlay", [t.overlay.dbWriter, "take"]);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain(`overlay ${t.overlay.dbWriter}: app-a may take only ${addr}`);
    expect(cloud.awsCalls("invoke")).toEqual([]);
    expect(cloud.ipCalls().filter((c) => c.startsWith("addr add"))).toEqual([]);
  });

  it("takes a refusal as final and names the broker's reason", () => {
    const reason = `{"errorMessage":"eni-0mine may not hold ${addr}"}`;
    cloud.answer("describe-route-tables", elsewhere);
    cloud.answer("invoke", { stdout: "Unhandled\n", payload: reason });
    const r = cloud.run("pypi-overlay", [addr, "take"]);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain(`the route broker ${BROKER} refused (Unhandled): ${reason}`);
    expect(cloud.awsCalls("invoke")).toHaveLength(1);
  });

  it("fails when a table still routes the address elsewhere after the broker answered", () => {
    cloud.answer("invoke", moved);
    cloud.answer("describe-route-tables", elsewhere);
    const r = cloud.run("pypi-overlay", [addr, "take"]);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain("eni-0other");
    // One read before the call, then three tries to see rtb A follow.
    expect(cloud.awsCalls("describe-route-tables")).toHaveLength(4);
  });

  it("refuses to run without a broker rather than fall back to replacing routes itself", () => {
    const { routeBrokers: _, ...overlay } = base.overlay;
    const bare: Topology = { ...base, overlay };
    const none = fakeCloud(renderAgentEnv(bare, nodeByName(bare, "app-a"), ["heartbeat"]));
    try {
      const r = none.run("pypi-overlay", [addr, "take"]);
      expect(r.status).not.toBe(0);
      expect(r.stderr).toContain("PYPI_ROUTE_BROKER is empty");
      expect(none.awsCalls()).toEqual([]);
    } finally {
      none.cleanup();
    }
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
