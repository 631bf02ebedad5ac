import { expect, test } from "vitest";
import { buildStack, builtStack, type Recorded, withCheapStackTraces } from "./harness.js";

const byKey = (resources: readonly Recorded[]) => new Map(resources.map((r) => [`${r.type}::${r.name}`, r]));

test("a rendered-config change touches only bundle objects and rollout/smoke commands, never an instance", async () => {
  // The shared build is settled and frozen, so building the changed stack after it cannot alter it.
  const before = byKey((await builtStack("staging")).resources);
  const after = byKey(
    (
      await withCheapStackTraces(() =>
        buildStack("staging", {
          "pypi-infra:appMaxProcesses": 12,
          "pypi-infra:heartbeatKeepaliveMs": 400,
          "pypi-infra:heartbeatWarntimeMs": 900,
          "pypi-infra:heartbeatDeadtimeMs": 2000,
        }),
      )
    ).resources,
  );
  expect([...after.keys()].sort()).toEqual([...before.keys()].sort());
  const changed = [...after.entries()]
    .filter(([key, r]) => JSON.stringify(r.inputs) !== JSON.stringify(before.get(key)?.inputs))
    .map(([key]) => key);
  expect(changed.length).toBeGreaterThan(0);
  const changedTypes = new Set(changed.map((k) => k.split("::")[0]));
  expect([...changedTypes].sort()).toEqual(["aws:s3/bucketObjectv2:BucketObjectv2", "command:local:Command"]);
  // Both balancers (heartbeat) and app servers (max processes) roll out; instances are untouched.
  expect(changed).toContain("command:local:Command::pypi-rollout-lb-a");
  expect(changed).toContain("command:local:Command::pypi-rollout-app-b");
  expect(changed).not.toContain("command:local:Command::pypi-rollout-db-a");
  for (const [key, r] of after) {
    if (r.type === "aws:ec2/instance:Instance") expect(r.inputs, key).toEqual(before.get(key)?.inputs);
  }
}, 120_000);
