import * as pulumi from "@pulumi/pulumi";
import { describe, expect, test } from "vitest";
import { parseConfig } from "../../src/config.js";
import { PypiStack } from "../../src/stack.js";
import { createMocks, rawConfig, resolve, type StackName, settle, tlsFor } from "./harness.js";

interface Seen {
  readonly name: string;
  readonly props: pulumi.Inputs;
  readonly opts: pulumi.CustomResourceOptions;
}

/**
 * Builds a stack with a transformation on the top component: Pulumi applies it to every
 * descendant, with the options the component code passed, which the mocks never see.
 */
async function instanceOptions(stack: StackName) {
  const recorder = createMocks();
  await pulumi.runtime.setMocks(recorder.mocks, "pypi-infra", stack, false);
  const config = parseConfig(rawConfig(stack), stack);
  const seen: Seen[] = [];
  const record: pulumi.ResourceTransformation = ({ type, name, props, opts }) => {
    if (type === "aws:ec2/instance:Instance")
      seen.push({ name, props, opts: opts as pulumi.CustomResourceOptions });
    return undefined;
  };
  const pypi = new PypiStack(
    "pypi",
    { config, tls: tlsFor(config.tlsSource) },
    { transformations: [record] },
  );
  await resolve(pypi.topology);
  await settle(recorder.resources);
  return { seen, pypi, recorded: recorder.resources.filter((r) => r.type === "aws:ec2/instance:Instance") };
}

describe.each(["staging", "prod"] as const)("user data of the %s stack", (stack) => {
  test("is read at launch only: ignored after creation, never a replacement trigger", async () => {
    const { seen, pypi, recorded } = await instanceOptions(stack);
    // Non-vacuous: the transformation saw every node's instance.
    expect(seen.map((s) => s.name).sort()).toEqual(recorded.map((r) => r.name).sort());
    expect(seen).toHaveLength(pypi.plannedTopology.nodes.length);
    for (const { name, props, opts } of seen) {
      // An in-place user-data update stops and starts the instance; `up` would do it to every
      // node at once. A change reaches a node only through the rebuild runbook's replacement.
      expect(opts.ignoreChanges, name).toContain("userData");
      expect(opts.ignoreChanges, name).toContain("ami");
      expect(props.userDataReplaceOnChange, name).toBe(false);
      expect(opts.deleteBeforeReplace, name).toBe(true);
    }
    // The ignored path names the input that carries the cloud-config, not a look-alike.
    for (const r of recorded) expect(String(r.inputs.userData)).toMatch(/^#cloud-config\n/);
  }, 60_000);
});
