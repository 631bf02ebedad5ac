import * as pulumi from "@pulumi/pulumi";
import { describe, expect, test } from "vitest";
import { program } from "../../src/program.js";
import {
  createMocks,
  PROD_TLS,
  PROD_TLS_KEY_LINE,
  resolve,
  settle,
  withCheapStackTraces,
} from "./harness.js";
import { engineConfig } from "./yaml.js";

describe("the program entry (src/program.ts, exported by src/index.ts) under mocks", () => {
  test("prod with its TLS secrets set exports the designed outputs", async () => {
    const { recorder, outputs, out } = await withCheapStackTraces(async () => {
      const recorder = createMocks();
      await pulumi.runtime.setMocks(recorder.mocks, "pypi-infra", "prod", false);
      pulumi.runtime.setAllConfig(
        engineConfig("prod", {
          "pypi-infra:tlsCertificate": PROD_TLS.certificate,
          "pypi-infra:tlsKey": PROD_TLS.key,
        }),
        ["pypi-infra:tlsCertificate", "pypi-infra:tlsKey"],
      );
      const outputs = await program();
      const [floatingIps, nodes, runbooks] = await Promise.all([
        resolve(outputs.floatingIps),
        resolve(outputs.nodes),
        resolve(outputs.runbooks),
      ]);
      await settle(recorder.resources);
      return { recorder, outputs, out: { floatingIps, nodes, runbooks } };
    });
    expect(out.floatingIps).toHaveLength(2);
    expect(Object.keys(out.nodes).sort()).toEqual([
      "app-a",
      "app-b",
      "app-c",
      "db-a",
      "db-b",
      "lb-a",
      "lb-b",
    ]);
    expect(outputs.endpoints).toEqual({
      https: "https://pypi.example.org/",
      upload: "upload.pypi.example.org:22",
    });
    const key = recorder.resources.find((r) => r.inputs.name === "/pypi/prod/tls/key");
    expect(JSON.stringify(key?.inputs.value)).toContain(PROD_TLS_KEY_LINE);
    expect(JSON.stringify(out)).not.toContain(PROD_TLS_KEY_LINE);
    // AWS is asked about the instance types and zones before anything else.
    expect([...new Set(recorder.invokes)].sort()).toEqual([
      "aws:ec2/getInstanceType:getInstanceType",
      "aws:ec2/getInstanceTypeOfferings:getInstanceTypeOfferings",
      "aws:index/getAvailabilityZones:getAvailabilityZones",
      "aws:index/getCallerIdentity:getCallerIdentity",
      "aws:ssm/getParameter:getParameter",
    ]);
  }, 60_000);

  test("prod without its TLS secrets fails and says which commands set them", async () => {
    const recorder = createMocks();
    await pulumi.runtime.setMocks(recorder.mocks, "pypi-infra", "prod", false);
    pulumi.runtime.setAllConfig(engineConfig("prod"), []);
    await expect(program()).rejects.toThrow(
      /pulumi config set --stack prod --secret pypi-infra:tlsKey < privkey\.pem/,
    );
    expect(recorder.resources).toHaveLength(0);
  });
});
