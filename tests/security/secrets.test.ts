import { beforeAll, describe, expect, test } from "vitest";
import { type Built, builtStack, PROD_TLS, plain, type Recorded } from "../stack/harness.js";
import { sweep } from "./sweep.js";

describe.each(["staging", "prod"] as const)("%s: no secret outside its SSM parameter", (stack) => {
  let built: Built;
  beforeAll(async () => {
    built = await builtStack(stack);
  }, 60_000);

  const allOutputs = (b: Built) => ({
    ...b.outputs,
    endpoints: b.pypi.endpoints,
    plannedFiles: b.pypi.plannedFiles,
  });

  test("the secrets are collected: every generated and configured secret is in some SSM parameter", () => {
    const stored = built
      .ofType("aws:ssm/parameter:Parameter")
      .map((p) => String(plain(p.inputs.value)))
      .join("\n");
    expect(built.ofType("random:index/randomPassword:RandomPassword")).toHaveLength(5);
    expect(built.secrets.length).toBeGreaterThanOrEqual(stack === "prod" ? 11 : 13);
    for (const pw of built.ofType("random:index/randomPassword:RandomPassword"))
      expect(stored).toContain(String(pw.state.result));
    // A key is stored in one form (PEM for TLS, OpenSSH for the host key); the sweep looks for both.
    for (const key of built.ofType("tls:index/privateKey:PrivateKey"))
      expect(
        stored.includes(String(key.state.privateKeyPem)) ||
          stored.includes(String(key.state.privateKeyOpenssh)),
        key.name,
      ).toBe(true);
    if (stack === "prod") expect(stored).toContain(PROD_TLS.key);
  });

  test("one exhaustive sweep: every resource input, user data, bundles, commands, runbooks and outputs", () => {
    expect(built.outputs.runbookData.length).toBeGreaterThan(5);
    expect(Object.keys(built.outputs.runbooks).length).toBe(built.outputs.runbookData.length);
    expect(sweep(built.resources, allOutputs(built), built.secrets)).toEqual([]);
  });

  test("the sweep is not vacuous: a secret planted in each place is found", () => {
    const secret = built.secrets[0]!;
    const plant = (type: string, key: string, wrap = false): Recorded[] =>
      built.resources.map((r) =>
        r.type === type && r === built.ofType(type)[0]
          ? {
              ...r,
              inputs: {
                ...r.inputs,
                [key]: wrap
                  ? {
                      "4dabf18193072939515e22adb298388d": "1b47061264138c4ac30d75fd1eb44270",
                      value: `x ${secret}`,
                    }
                  : `x ${secret}`,
              },
            }
          : r,
      );
    const cases: [string, Recorded[], Record<string, unknown>][] = [
      ["user data", plant("aws:ec2/instance:Instance", "userData"), {}],
      ["user data, even as a Pulumi secret", plant("aws:ec2/instance:Instance", "userData", true), {}],
      ["bundle object", plant("aws:s3/bucketObjectv2:BucketObjectv2", "content", true), {}],
      ["role policy", plant("aws:iam/rolePolicy:RolePolicy", "policy"), {}],
      ["tag", plant("aws:ec2/vpc:Vpc", "tags"), {}],
      ["runbook markdown", built.resources as Recorded[], { runbooks: { x: `step: ${secret}` } }],
      [
        "runbook data, base64",
        built.resources as Recorded[],
        { runbookData: [{ command: Buffer.from(secret).toString("base64") }] },
      ],
    ];
    for (const [what, resources, outputs] of cases)
      expect(
        sweep(resources, { ...allOutputs(built), ...outputs }, built.secrets).length,
        what,
      ).toBeGreaterThan(0);
    // A plaintext SSM value is a leak even where secrets belong.
    const plainParam = built.resources.map((r) =>
      r.type === "aws:ssm/parameter:Parameter"
        ? { ...r, inputs: { ...r.inputs, value: plain(r.inputs.value) } }
        : r,
    );
    expect(sweep(plainParam, allOutputs(built), built.secrets).length).toBeGreaterThan(0);
  });
});
