import { describe, expect, test } from "vitest";
import { builtStack } from "./harness.js";

/**
 * The shared build carries a recording transformation on the top component: Pulumi applies it
 * to every descendant, with the options the component code passed, which the mocks never see.
 */
describe.each(["staging", "prod"] as const)("user data of the %s stack", (stack) => {
  test("is read at launch only: ignored after creation, never a replacement trigger", async () => {
    const { instanceOptions: seen, pypi, ofType } = await builtStack(stack);
    const recorded = ofType("aws:ec2/instance:Instance");
    // Non-vacuous: the transformation saw every node's instance.
    expect(seen.map((s) => s.name).sort()).toEqual(recorded.map((r) => r.name).sort());
    expect(seen).toHaveLength(pypi.plannedTopology.nodes.length);
    for (const { name, ignoreChanges, deleteBeforeReplace, userDataReplaceOnChange } of seen) {
      // An in-place user-data update stops and starts the instance; `up` would do it to every
      // node at once. A change reaches a node only through the rebuild runbook's replacement.
      expect(ignoreChanges, name).toContain("userData");
      expect(ignoreChanges, name).toContain("ami");
      expect(userDataReplaceOnChange, name).toBe(false);
      expect(deleteBeforeReplace, name).toBe(true);
    }
    // The ignored path names the input that carries the cloud-config, not a look-alike.
    for (const r of recorded) expect(String(r.inputs.userData)).toMatch(/^#cloud-config\n/);
  }, 60_000);
});
