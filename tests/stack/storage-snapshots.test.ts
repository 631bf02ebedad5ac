/**
 * DLM snapshots of the storage pair's DRBD volumes: off as the stacks ship (no policy, no role),
 * and when a stack turns them on, one policy whose target tag selects exactly the two DRBD
 * volumes, run by a role only DLM can assume. Bad values fail at preview, naming the key.
 */
import * as pulumi from "@pulumi/pulumi";
import { beforeAll, describe, expect, test } from "vitest";
import { validateStorageSnapshotsArgs } from "../../src/components/storage-snapshots.js";
import { parseConfig } from "../../src/config.js";
import { program } from "../../src/program.js";
import { ConfigError } from "../../src/schema.js";
import { storagePair } from "../../src/topology.js";
import {
  type Built,
  buildStack,
  builtStack,
  createMocks,
  type Recorded,
  resolve,
  withCheapStackTraces,
} from "./harness.js";
import { engineConfig, stackConfigMap } from "./yaml.js";

const T = {
  policy: "aws:dlm/lifecyclePolicy:LifecyclePolicy",
  role: "aws:iam/role:Role",
  attachment: "aws:iam/rolePolicyAttachment:RolePolicyAttachment",
  inline: "aws:iam/rolePolicy:RolePolicy",
  volume: "aws:ebs/volume:Volume",
  component: "pypi:infra:StorageSnapshots",
} as const;

const DLM_MANAGED_POLICY = "arn:aws:iam::aws:policy/service-role/AWSDataLifecycleManagerServiceRole";

const tagsOf = (r: Recorded): Record<string, string> => (r.inputs.tags ?? {}) as Record<string, string>;

/** The services a role's trust policy lets assume it. */
const trustedServices = (role: Recorded): string[] =>
  (
    JSON.parse(String(role.inputs.assumeRolePolicy)).Statement as {
      Principal?: { Service?: string | string[] };
    }[]
  ).flatMap((s) => [s.Principal?.Service ?? []].flat());

/** Volume ids of the storage pair (by the topology) and of every other data volume. */
function volumesByOwner(b: Built) {
  const t = b.outputs.topology;
  const pair = storagePair(t).map((n) => n.dataVolumeId ?? "");
  const db = t.nodes.filter((n) => n.role === "db").map((n) => n.dataVolumeId ?? "");
  return { pair, db, all: b.ofType(T.volume).map((v) => v.id) };
}

/** Volumes DLM would select: those carrying any one of the target tags (key and value). */
const selected = (b: Built, targetTags: Record<string, string>): string[] =>
  b
    .ofType(T.volume)
    .filter((v) => Object.entries(targetTags).some(([k, value]) => tagsOf(v)[k] === value))
    .map((v) => v.id)
    .sort();

describe.each(["staging", "prod"] as const)("the %s stack as shipped: no snapshots", (stack) => {
  let b: Built;
  beforeAll(async () => {
    b = await builtStack(stack);
  }, 60_000);

  test("the config reads retain count 0, every 24 hours", () => {
    expect(b.config.storageSnapshots).toEqual({ retainCount: 0, intervalHours: 24 });
  });

  test("no DLM policy, no component, no role DLM can assume", () => {
    expect(b.ofType(T.policy)).toEqual([]);
    expect(b.ofType(T.component)).toEqual([]);
    const roles = b.ofType(T.role);
    expect(roles.length).toBeGreaterThan(0);
    // The node roles, and the route brokers' (Lambda's).
    for (const role of roles)
      expect(trustedServices(role), role.name).toEqual([
        role.name.startsWith("pypi-route-") ? "lambda.amazonaws.com" : "ec2.amazonaws.com",
      ]);
    expect(b.ofType(T.attachment).map((a) => a.inputs.policyArn)).not.toContain(DLM_MANAGED_POLICY);
  });

  test("the storage pair's volumes carry the target tag all the same; the db volumes do not", () => {
    const { pair, db, all } = volumesByOwner(b);
    expect(all).toHaveLength(4);
    expect(selected(b, { "pypi:snapshots": `${stack}-storage` })).toEqual([...pair].sort());
    for (const v of b.ofType(T.volume).filter((x) => db.includes(x.id)))
      expect(tagsOf(v)["pypi:snapshots"], v.name).toBeUndefined();
  });

  test("the storageSnapshots output says 0 kept and has no policy id", async () => {
    const out = await resolve(b.pypi.storageSnapshots);
    expect(out).toEqual({ retainCount: 0, intervalHours: 24 });
    expect("policyId" in out).toBe(false);
  });
});

describe("staging with 7 snapshots every 12 hours", () => {
  let b: Built;
  let shippedRoles: number;
  beforeAll(async () => {
    shippedRoles = (await builtStack("staging")).ofType(T.role).length;
    b = await withCheapStackTraces(() =>
      buildStack("staging", {
        "pypi-infra:storageSnapshotRetainCount": 7,
        "pypi-infra:storageSnapshotIntervalHours": 12,
      }),
    );
  }, 60_000);

  const onlyPolicy = (): Recorded => {
    const policies = b.ofType(T.policy);
    expect(policies).toHaveLength(1);
    const [policy] = policies;
    if (!policy) throw new Error("no DLM policy");
    return policy;
  };
  const details = () =>
    onlyPolicy().inputs.policyDetails as {
      policyType: string;
      resourceTypes: string[];
      targetTags: Record<string, string>;
      schedules: Record<string, unknown>[];
    };

  test("one enabled policy over volumes: 7 kept, every 12 HOURS from 03:00, volume tags copied", () => {
    const policy = onlyPolicy();
    expect(policy.inputs.state).toBe("ENABLED");
    expect(policy.inputs.description).toMatch(/^[0-9A-Za-z _-]+$/);
    const d = details();
    expect(d.policyType).toBe("EBS_SNAPSHOT_MANAGEMENT");
    expect(d.resourceTypes).toEqual(["VOLUME"]);
    expect(d.targetTags).toEqual({ "pypi:snapshots": "staging-storage" });
    expect(d.schedules).toHaveLength(1);
    const [schedule] = d.schedules;
    expect(schedule?.createRule).toEqual({ interval: 12, intervalUnit: "HOURS", times: "03:00" });
    expect(schedule?.retainRule).toEqual({ count: 7 });
    expect(schedule?.copyTags).toBe(true);
    expect(String(schedule?.name)).toMatch(/^[0-9A-Za-z _-]+$/);
    expect(tagsOf(policy)).toEqual({ "pypi:environment": "staging", "pypi:managed-by": "pulumi" });
  });

  test("its target tag selects exactly the two storage-pair data volumes, not the db volumes", () => {
    const { pair, db, all } = volumesByOwner(b);
    expect(all).toHaveLength(4);
    expect(new Set([...pair, ...db]).size).toBe(4);
    for (const id of [...pair, ...db]) expect(all).toContain(id);
    const hit = selected(b, details().targetTags);
    expect(hit).toEqual([...pair].sort());
    for (const id of db) expect(hit).not.toContain(id);
  });

  test("the execution role trusts dlm.amazonaws.com only and carries AWS's managed DLM policy, nothing else", () => {
    const policy = onlyPolicy();
    const roles = b.ofType(T.role).filter((r) => r.state.arn === policy.inputs.executionRoleArn);
    expect(roles).toHaveLength(1);
    const role = roles[0] as Recorded;
    expect(JSON.parse(String(role.inputs.assumeRolePolicy))).toEqual({
      Version: "2012-10-17",
      Statement: [{ Effect: "Allow", Principal: { Service: "dlm.amazonaws.com" }, Action: "sts:AssumeRole" }],
    });
    const attached = b.ofType(T.attachment).filter((a) => a.inputs.role === role.state.name);
    expect(attached.map((a) => a.inputs.policyArn)).toEqual([DLM_MANAGED_POLICY]);
    expect(b.ofType(T.inline).filter((p) => p.inputs.role === role.state.name)).toEqual([]);
    // That role is the only one added, and the only one DLM may assume.
    expect(b.ofType(T.role)).toHaveLength(shippedRoles + 1);
    expect(b.ofType(T.role).filter((r) => trustedServices(r).includes("dlm.amazonaws.com"))).toEqual([role]);
  });

  test("the storageSnapshots output carries the count, the interval and the policy id", async () => {
    const policy = onlyPolicy();
    expect(policy.id).not.toBe("");
    expect(await resolve(b.pypi.storageSnapshots)).toEqual({
      retainCount: 7,
      intervalHours: 12,
      policyId: policy.id,
    });
  });

  test("the interval defaults to 24 hours", () => {
    const cfg = parseConfig(
      { ...stackConfigMap("staging"), "pypi-infra:storageSnapshotRetainCount": 3 },
      "staging",
    );
    expect(cfg.storageSnapshots).toEqual({ retainCount: 3, intervalHours: 24 });
  });
});

describe("bad values fail at preview, naming the key, the value and what is allowed", () => {
  const INTERVAL = "pypi-infra:storageSnapshotIntervalHours";
  const COUNT = "pypi-infra:storageSnapshotRetainCount";
  const intervalAllowed = "expected one of 1, 2, 3, 4, 6, 8, 12, 24 (hours; what DLM accepts)";
  const countAllowed = "expected a whole number of snapshots per volume (0: no snapshots) from 0 to 1000";

  test.each([
    ["5", `${INTERVAL}: 5 is not valid; ${intervalAllowed}`],
    ["0", `${INTERVAL}: 0 is not valid; ${intervalAllowed}`],
    ["48", `${INTERVAL}: 48 is not valid; ${intervalAllowed}`],
    ["1.5", `${INTERVAL}: 1.5 is not valid; ${intervalAllowed}`],
    ["daily", `${INTERVAL}: "daily" is not valid; ${intervalAllowed}`],
  ])("intervalHours %s", async (value, message) => {
    await expectPreviewFailure({ [INTERVAL]: value, [COUNT]: "7" }, message);
  });

  test.each([
    ["-1", `${COUNT}: -1 is not valid; ${countAllowed}`],
    ["1001", `${COUNT}: 1001 is not valid; ${countAllowed}`],
    ["2.5", `${COUNT}: 2.5 is not valid; ${countAllowed}`],
  ])("retainCount %s", async (value, message) => {
    await expectPreviewFailure({ [COUNT]: value }, message);
  });

  /** Runs the real program under mocks: it must throw this one problem before registering anything. */
  async function expectPreviewFailure(set: Record<string, string>, message: string) {
    const recorder = createMocks();
    await pulumi.runtime.setMocks(recorder.mocks, "pypi-infra", "staging", false);
    pulumi.runtime.setAllConfig(engineConfig("staging", set), []);
    const error = await program().then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error, "the program accepted it").toBeInstanceOf(ConfigError);
    expect((error as ConfigError).problems).toEqual([message]);
    expect(recorder.resources).toHaveLength(0);
  }
});

describe("the component's own checks", () => {
  const account = { partition: "aws", accountId: "123456789012", region: "us-east-1" };
  const ok = { environment: "prod", retainCount: 7, account };

  test("good args pass; intervalHours defaults to a valid 24", () => {
    expect(() => validateStorageSnapshotsArgs(ok)).not.toThrow();
    for (const intervalHours of [1, 2, 3, 4, 6, 8, 12, 24])
      expect(() => validateStorageSnapshotsArgs({ ...ok, intervalHours })).not.toThrow();
    expect(() => validateStorageSnapshotsArgs({ ...ok, retainCount: 1000 })).not.toThrow();
  });

  test("errors name the arg, the value and what is allowed", () => {
    expect(() => validateStorageSnapshotsArgs({ ...ok, retainCount: 0 })).toThrow(
      "StorageSnapshots: retainCount 0 is not valid; expected a whole number of snapshots from 1 to 1000 (for none, create no StorageSnapshots)",
    );
    for (const bad of [1001, -1, 1.5, Number.NaN])
      expect(() => validateStorageSnapshotsArgs({ ...ok, retainCount: bad })).toThrow(
        `StorageSnapshots: retainCount ${bad} is not valid`,
      );
    for (const bad of [5, 0, 36, 0.5])
      expect(() => validateStorageSnapshotsArgs({ ...ok, intervalHours: bad })).toThrow(
        `StorageSnapshots: intervalHours ${bad} is not valid; expected one of 1, 2, 3, 4, 6, 8, 12, 24`,
      );
    expect(() => validateStorageSnapshotsArgs({ ...ok, environment: "Prod Env" })).toThrow(
      'StorageSnapshots: environment "Prod Env" is not valid; expected a host name',
    );
  });
});
