/**
 * The route broker's logic against a fake EC2 (route tables as data, scripted failures), the
 * file Lambda runs (built by the stack, imported as Lambda would), and the one agent variable
 * that names it.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { afterAll, beforeEach, describe, expect, test, vi } from "vitest";
import {
  BROKER_ENV,
  type BrokerConfig,
  brokerHandler,
  configFromEnv,
  type Ec2Routes,
  isTransient,
  moveRoute,
  type RetryOptions,
} from "../src/cloud/route-broker.js";
import { ROUTE_BROKER_FILE, ROUTE_BROKER_HANDLER, routeBrokerCode } from "../src/components/route-broker.js";
import { renderAgentEnv } from "../src/render/agent.js";
import { nodeByName } from "../src/topology.js";
import { asLab, topologyFor } from "./support/topologies.js";

const DEST = "100.64.10.5/32";
const RTB_A = "rtb-0a1b2c3d4e5f60718";
const RTB_B = "rtb-0f1e2d3c4b5a69788";
const ENI_PRIMARY = "eni-0123456789abcdef0";
const ENI_STANDBY = "eni-0fedcba9876543210";
const ENI_OTHER = "eni-0aaaaaaaaaaaaaaaa";
const CONFIG: BrokerConfig = {
  destination: DEST,
  routeTableIds: [RTB_A, RTB_B],
  allowedEnis: [ENI_PRIMARY, ENI_STANDBY],
};

/** A named AWS error as SDK v3 raises it. */
const awsError = (name: string, status = 400): Error =>
  Object.assign(new Error(`${name} (mock)`), { name, $metadata: { httpStatusCode: status } });

interface FakeEc2 extends Ec2Routes {
  /** Route table -> destination -> interface. */
  readonly tables: Map<string, Map<string, string>>;
  readonly calls: string[];
  /** Errors the next replaceRoute calls throw, in order. */
  replaceFailures: Error[];
  /** Targets describeRouteTables reports instead of the real ones, by table. */
  readonly describeOverride: Map<string, string>;
}

function fakeEc2(): FakeEc2 {
  const tables = new Map([
    [
      RTB_A,
      new Map([
        [DEST, ENI_PRIMARY],
        ["0.0.0.0/0", "nat-0123"],
      ]),
    ],
    [
      RTB_B,
      new Map([
        [DEST, ENI_PRIMARY],
        ["0.0.0.0/0", "nat-0123"],
      ]),
    ],
  ]);
  const fake: FakeEc2 = {
    tables,
    calls: [],
    replaceFailures: [],
    describeOverride: new Map(),
    async replaceRoute(p) {
      fake.calls.push(`replace ${p.RouteTableId} ${p.DestinationCidrBlock} ${p.NetworkInterfaceId}`);
      const failure = fake.replaceFailures.shift();
      if (failure) throw failure;
      const table = tables.get(p.RouteTableId);
      if (!table?.has(p.DestinationCidrBlock)) throw awsError("InvalidRoute.NotFound");
      table.set(p.DestinationCidrBlock, p.NetworkInterfaceId);
      return {};
    },
    async describeRouteTables(p) {
      fake.calls.push(`describe ${p.RouteTableIds.join(" ")}`);
      return {
        RouteTables: p.RouteTableIds.map((id) => ({
          RouteTableId: id,
          Routes: [...(tables.get(id) ?? [])].map(([cidr, target]) => ({
            DestinationCidrBlock: cidr,
            ...(target.startsWith("eni-")
              ? { NetworkInterfaceId: cidr === DEST ? (fake.describeOverride.get(id) ?? target) : target }
              : { NatGatewayId: target }),
          })),
        })),
      };
    },
  };
  return fake;
}

describe("moveRoute", () => {
  let ec2: FakeEc2;
  let slept: number[];
  let retry: RetryOptions;
  beforeEach(() => {
    ec2 = fakeEc2();
    slept = [];
    retry = { sleep: async (ms) => void slept.push(ms) };
  });
  const targets = () => [...ec2.tables.values()].map((t) => t.get(DEST));

  test("moves the destination in every table to the caller's interface, then reads them back", async () => {
    const result = await moveRoute(ec2, CONFIG, { networkInterfaceId: ENI_STANDBY }, retry);
    expect(result).toEqual({
      destination: DEST,
      networkInterfaceId: ENI_STANDBY,
      routeTables: [RTB_A, RTB_B],
    });
    expect(targets()).toEqual([ENI_STANDBY, ENI_STANDBY]);
    expect(ec2.calls).toEqual([
      `replace ${RTB_A} ${DEST} ${ENI_STANDBY}`,
      `replace ${RTB_B} ${DEST} ${ENI_STANDBY}`,
      `describe ${RTB_A} ${RTB_B}`,
    ]);
    // The other routes of the tables are untouched.
    for (const t of ec2.tables.values()) expect(t.get("0.0.0.0/0")).toBe("nat-0123");
    expect(slept).toEqual([]);
  });

  test("refuses an interface outside the allow-list before any EC2 call", async () => {
    await expect(moveRoute(ec2, CONFIG, { networkInterfaceId: ENI_OTHER }, retry)).rejects.toThrow(
      `refused: ${ENI_OTHER} may not hold ${DEST}`,
    );
    expect(ec2.calls).toEqual([]);
    expect(targets()).toEqual([ENI_PRIMARY, ENI_PRIMARY]);
  });

  test.each([
    ["null", null, "not an object"],
    ["a bare id", ENI_STANDBY, "not an object"],
    ["an array", [ENI_STANDBY], "not an object"],
    ["no field", {}, "fields []"],
    ["another field", { networkInterfaceId: ENI_STANDBY, destination: "0.0.0.0/0" }, "fields ["],
    ["a misspelt field", { NetworkInterfaceId: ENI_STANDBY }, 'fields ["NetworkInterfaceId"]'],
    ["a number", { networkInterfaceId: 5 }, "networkInterfaceId 5"],
    ["a malformed id", { networkInterfaceId: "eni-0123; rm" }, 'networkInterfaceId "eni-0123; rm"'],
    ["an upper-case id", { networkInterfaceId: ENI_STANDBY.toUpperCase() }, "networkInterfaceId"],
  ])("refuses %s as the event, before any EC2 call", async (_, event, why) => {
    await expect(moveRoute(ec2, CONFIG, event, retry)).rejects.toThrow(`refused: ${why}`);
    expect(ec2.calls).toEqual([]);
  });

  test("retries a throttled call with backoff, then moves the route", async () => {
    ec2.replaceFailures = [awsError("RequestLimitExceeded", 503), awsError("Throttling")];
    const result = await moveRoute(ec2, CONFIG, { networkInterfaceId: ENI_STANDBY }, retry);
    expect(result.routeTables).toEqual([RTB_A, RTB_B]);
    expect(targets()).toEqual([ENI_STANDBY, ENI_STANDBY]);
    expect(ec2.calls.filter((c) => c.startsWith(`replace ${RTB_A}`))).toHaveLength(3);
    expect(ec2.calls.filter((c) => c.startsWith(`replace ${RTB_B}`))).toHaveLength(1);
    expect(slept).toEqual([200, 400]);
  });

  test("fails when a table still routes the destination elsewhere after the move", async () => {
    ec2.describeOverride.set(RTB_B, ENI_OTHER);
    await expect(moveRoute(ec2, CONFIG, { networkInterfaceId: ENI_STANDBY }, retry)).rejects.toThrow(
      `${RTB_B} routes ${DEST} to ${ENI_OTHER}, not ${ENI_STANDBY}, after the move`,
    );
  });

  test("fails when a table has no route for the destination at all", async () => {
    ec2.tables.get(RTB_A)?.delete(DEST);
    ec2.replaceFailures = [];
    await expect(moveRoute(ec2, CONFIG, { networkInterfaceId: ENI_STANDBY }, retry)).rejects.toThrow(
      `ReplaceRoute ${DEST} in ${RTB_A} failed after 1 attempt(s): InvalidRoute.NotFound`,
    );
  });

  test("gives up after a bounded number of attempts, and never reads back a failed move", async () => {
    ec2.replaceFailures = Array.from({ length: 10 }, () => awsError("RequestLimitExceeded", 503));
    await expect(moveRoute(ec2, CONFIG, { networkInterfaceId: ENI_STANDBY }, retry)).rejects.toThrow(
      `ReplaceRoute ${DEST} in ${RTB_A} failed after 4 attempt(s): RequestLimitExceeded`,
    );
    expect(ec2.calls).toEqual(Array(4).fill(`replace ${RTB_A} ${DEST} ${ENI_STANDBY}`));
    expect(slept).toEqual([200, 400, 800]);
  });

  test("starts no retry that would end past its deadline, so the function ends within its timeout", async () => {
    ec2.replaceFailures = Array.from({ length: 10 }, () => awsError("RequestLimitExceeded", 503));
    let clock = 1_000;
    const timed = { ...retry, now: () => clock, deadline: 1_500 };
    const sleeping = {
      ...timed,
      sleep: async (ms: number) => {
        slept.push(ms);
        clock += ms;
      },
    };
    await expect(moveRoute(ec2, CONFIG, { networkInterfaceId: ENI_STANDBY }, sleeping)).rejects.toThrow(
      `ReplaceRoute ${DEST} in ${RTB_A} failed after 2 attempt(s): RequestLimitExceeded`,
    );
    // 1,000 + 200 is before the deadline; 1,200 + 400 is not.
    expect(slept).toEqual([200]);
  });

  test("does not retry an error that is not transient", async () => {
    ec2.replaceFailures = [awsError("UnauthorizedOperation", 403)];
    await expect(moveRoute(ec2, CONFIG, { networkInterfaceId: ENI_STANDBY }, retry)).rejects.toThrow(
      "failed after 1 attempt(s): UnauthorizedOperation",
    );
    expect(ec2.calls).toHaveLength(1);
    expect(slept).toEqual([]);
  });

  test("transient: throttling names, 429 and 5xx, dropped connections; not client errors", () => {
    for (const e of [
      awsError("Throttling"),
      awsError("RequestLimitExceeded"),
      awsError("Whatever", 429),
      awsError("Whatever", 500),
      Object.assign(new Error("socket hang up"), { code: "ECONNRESET" }),
    ])
      expect(isTransient(e), e.name).toBe(true);
    for (const e of [awsError("UnauthorizedOperation", 403), awsError("InvalidParameterValue"), "text", null])
      expect(isTransient(e), String(e)).toBe(false);
  });
});

describe("configFromEnv", () => {
  const env = {
    [BROKER_ENV.destination]: DEST,
    [BROKER_ENV.routeTables]: `${RTB_A} ${RTB_B}`,
    [BROKER_ENV.allowedEnis]: `${ENI_PRIMARY} ${ENI_STANDBY}`,
  };

  test("reads the destination, the tables and the allow-list the stack sets", () => {
    expect(configFromEnv(env)).toEqual(CONFIG);
  });

  test.each([
    [BROKER_ENV.destination, "100.64.10.5", "an IPv4 /32"],
    [BROKER_ENV.destination, "100.64.10.0/24", "an IPv4 /32"],
    [BROKER_ENV.routeTables, "", "route table ids"],
    [BROKER_ENV.routeTables, `${RTB_A} sg-0123456789abcdef0`, "route table ids"],
    [BROKER_ENV.allowedEnis, "", "network interface ids"],
    [BROKER_ENV.allowedEnis, `${ENI_PRIMARY},${ENI_STANDBY}`, "network interface ids"],
  ])("refuses %s=%j", (key, value, expected) => {
    expect(() => configFromEnv({ ...env, [key]: value })).toThrow(
      `route broker misconfigured: ${key} ${JSON.stringify(value)}; expected ${expected}`,
    );
  });
});

describe("the Lambda handler", () => {
  const env = {
    [BROKER_ENV.destination]: DEST,
    [BROKER_ENV.routeTables]: `${RTB_A} ${RTB_B}`,
    [BROKER_ENV.allowedEnis]: ENI_STANDBY,
  };

  test("builds its client once, moves the route, and logs each move and each refusal", async () => {
    const ec2 = fakeEc2();
    const makeClient = vi.fn(async () => ec2);
    const log = vi.spyOn(console, "log").mockImplementation(() => {});
    const error = vi.spyOn(console, "error").mockImplementation(() => {});
    try {
      const handler = brokerHandler(makeClient, env);
      await expect(handler({ networkInterfaceId: ENI_STANDBY })).resolves.toEqual({
        destination: DEST,
        networkInterfaceId: ENI_STANDBY,
        routeTables: [RTB_A, RTB_B],
      });
      await expect(handler({ networkInterfaceId: ENI_PRIMARY })).rejects.toThrow("refused");
      expect(makeClient).toHaveBeenCalledTimes(1);
      expect(JSON.parse(String(log.mock.calls[0]?.[0])).moved.networkInterfaceId).toBe(ENI_STANDBY);
      expect(JSON.parse(String(error.mock.calls[0]?.[0]))).toMatchObject({
        failed: { networkInterfaceId: ENI_PRIMARY },
        destination: DEST,
      });
    } finally {
      log.mockRestore();
      error.mockRestore();
    }
  });
});

describe("the handler's deadline comes from Lambda's remaining time", () => {
  test("with 3 s left, a throttled move is not retried: a request may still take 5 s", async () => {
    const ec2 = fakeEc2();
    ec2.replaceFailures = [awsError("Throttling")];
    const error = vi.spyOn(console, "error").mockImplementation(() => {});
    try {
      const handler = brokerHandler(async () => ec2, {
        [BROKER_ENV.destination]: DEST,
        [BROKER_ENV.routeTables]: `${RTB_A} ${RTB_B}`,
        [BROKER_ENV.allowedEnis]: ENI_STANDBY,
      });
      await expect(
        handler({ networkInterfaceId: ENI_STANDBY }, { getRemainingTimeInMillis: () => 3_000 }),
      ).rejects.toThrow("failed after 1 attempt(s): Throttling");
      expect(ec2.calls).toHaveLength(1);
    } finally {
      error.mockRestore();
    }
  });
});

describe("the shipped file", () => {
  const dir = mkdtempSync(join(tmpdir(), "pypi-route-broker-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const code = routeBrokerCode();
  const file = join(dir, ROUTE_BROKER_FILE);
  writeFileSync(file, code);
  /**
   * A stand-in for the runtime's SDK, CommonJS like its dist-cjs: the EC2 client over route tables
   * held in a global, recording the client's settings.
   */
  const sdk = join(dir, "node_modules", "@aws-sdk", "client-ec2");
  mkdirSync(sdk, { recursive: true });
  writeFileSync(join(sdk, "package.json"), JSON.stringify({ name: "@aws-sdk/client-ec2", main: "index.js" }));
  writeFileSync(
    join(sdk, "index.js"),
    `const cloud = globalThis.__routeBrokerCloud;
exports.EC2 = class EC2 {
  constructor(config) { cloud.configs.push(config); }
  replaceRoute(p) { return cloud.ec2.replaceRoute(p); }
  describeRouteTables(p) { return cloud.ec2.describeRouteTables(p); }
};
`,
  );

  test("is one ESM file with the handler Lambda calls, no bundled SDK and no static import", async () => {
    expect(ROUTE_BROKER_HANDLER).toBe(`${ROUTE_BROKER_FILE.replace(/\.mjs$/, "")}.handler`);
    expect(code).not.toMatch(/^\s*import\s/m);
    expect(code).not.toMatch(/\brequire\(/);
    expect(code).toContain('"@aws-sdk/client-ec2"');
    const shipped = (await import(pathToFileURL(file).href)) as { moveRoute: typeof moveRoute };
    const ec2 = fakeEc2();
    await expect(shipped.moveRoute(ec2, CONFIG, { networkInterfaceId: ENI_OTHER })).rejects.toThrow(
      "refused",
    );
    await shipped.moveRoute(ec2, CONFIG, { networkInterfaceId: ENI_STANDBY });
    expect([...ec2.tables.values()].map((t) => t.get(DEST))).toEqual([ENI_STANDBY, ENI_STANDBY]);
  });

  test("its handler reads the stack's variables and loads the runtime's EC2 client, single-try", async () => {
    const cloud = { ec2: fakeEc2(), configs: [] as unknown[] };
    const g = globalThis as { __routeBrokerCloud?: unknown };
    g.__routeBrokerCloud = cloud;
    const vars = {
      [BROKER_ENV.destination]: DEST,
      [BROKER_ENV.routeTables]: `${RTB_A} ${RTB_B}`,
      [BROKER_ENV.allowedEnis]: `${ENI_PRIMARY} ${ENI_STANDBY}`,
    };
    const saved = Object.fromEntries(Object.keys(vars).map((k) => [k, process.env[k]]));
    Object.assign(process.env, vars);
    const log = vi.spyOn(console, "log").mockImplementation(() => {});
    const error = vi.spyOn(console, "error").mockImplementation(() => {});
    try {
      const shipped = (await import(pathToFileURL(file).href)) as {
        handler: (e: unknown) => Promise<unknown>;
      };
      await expect(shipped.handler({ networkInterfaceId: ENI_STANDBY })).resolves.toEqual({
        destination: DEST,
        networkInterfaceId: ENI_STANDBY,
        routeTables: [RTB_A, RTB_B],
      });
      await expect(shipped.handler({ networkInterfaceId: ENI_OTHER })).rejects.toThrow("refused");
      expect([...cloud.ec2.tables.values()].map((t) => t.get(DEST))).toEqual([ENI_STANDBY, ENI_STANDBY]);
      // One client, with the SDK's own retries off: withRetry is the only retry loop.
      expect(cloud.configs).toEqual([
        { maxAttempts: 1, requestHandler: { connectionTimeout: 2_000, requestTimeout: 5_000 } },
      ]);
    } finally {
      for (const [k, v] of Object.entries(saved)) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
      delete g.__routeBrokerCloud;
      log.mockRestore();
      error.mockRestore();
    }
  });
});

describe("PYPI_ROUTE_BROKER in the agent's node.env", () => {
  const brokerLine = (env: string) => env.split("\n").filter((l) => l.startsWith("PYPI_ROUTE_BROKER="));

  test.each(["staging", "prod"] as const)(
    "%s: db nodes name the writer's broker, the storage pair the storage's, no other node any",
    (shape) => {
      const t = topologyFor(shape);
      const expected: Record<string, string> = {
        "db-a": `pypi-${shape}-route-writer`,
        "db-b": `pypi-${shape}-route-writer`,
        "app-a": `pypi-${shape}-route-storage`,
        "app-b": `pypi-${shape}-route-storage`,
      };
      for (const node of t.nodes) {
        const env = renderAgentEnv(t, node, []);
        const fn = expected[node.name];
        expect(brokerLine(env), node.name).toEqual(fn ? [`PYPI_ROUTE_BROKER='${fn}'`] : []);
        // Right after the route tables it moves the route in.
        if (fn) expect(env).toContain(`\nPYPI_ROUTE_TABLES='rtb-0a1 rtb-0b2'\nPYPI_ROUTE_BROKER='${fn}'\n`);
      }
      if (shape === "prod") expect(brokerLine(renderAgentEnv(t, nodeByName(t, "app-c"), []))).toEqual([]);
    },
  );

  test("the lab has no Lambda: no node is given a broker", () => {
    const lab = asLab(topologyFor("prod"));
    for (const node of lab.nodes) expect(brokerLine(renderAgentEnv(lab, node, [])), node.name).toEqual([]);
  });
});
