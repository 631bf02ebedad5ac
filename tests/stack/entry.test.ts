import * as pulumi from "@pulumi/pulumi";
import { beforeEach, describe, expect, test, vi } from "vitest";
import { createMocks, PROD_TLS, resolve, settle } from "./harness.js";
import { stackConfigMap } from "./yaml.js";

/** Config as the Pulumi engine hands it over: string values, structured ones as JSON. */
function engineConfig(stack: string, extra: Record<string, string> = {}): Record<string, string> {
  const yaml = stackConfigMap(stack);
  return {
    ...Object.fromEntries(
      Object.entries(yaml).map(([k, v]) => [k, typeof v === "object" ? JSON.stringify(v) : String(v)]),
    ),
    ...extra,
  };
}

describe("src/index.ts (the program entry) under mocks", () => {
  beforeEach(() => {
    vi.resetModules();
  });

  test("prod with its TLS secrets set exports the designed outputs", async () => {
    const recorder = createMocks();
    await pulumi.runtime.setMocks(recorder.mocks, "pypi-infra", "prod", false);
    pulumi.runtime.setAllConfig(
      engineConfig("prod", {
        "pypi-infra:tlsCertificate": PROD_TLS.certificate,
        "pypi-infra:tlsKey": PROD_TLS.key,
      }),
      ["pypi-infra:tlsCertificate", "pypi-infra:tlsKey"],
    );
    const program = await import("../../src/index.js");
    const [floatingIps, nodes, runbooks] = await Promise.all([
      resolve(program.floatingIps),
      resolve(program.nodes),
      resolve(program.runbooks),
    ]);
    const out = { floatingIps, nodes, runbooks };
    await settle(recorder.resources);
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
    expect(program.endpoints).toEqual({ https: "https://pypi.example.org/", upload: "pypi.example.org:22" });
    const key = recorder.resources.find((r) => r.inputs.name === "/pypi/prod/tls/key");
    expect(JSON.stringify(key?.inputs.value)).toContain("MOCKPRODTLSKEY");
    expect(JSON.stringify(out)).not.toContain("MOCKPRODTLSKEY");
    expect(recorder.invokes.sort()).toEqual([
      "aws:index/getCallerIdentity:getCallerIdentity",
      "aws:ssm/getParameter:getParameter",
    ]);
    // A whole prod stack under mocks: past vitest's 5 s default when the suite runs in parallel.
  }, 60_000);

  test("prod without its TLS secrets fails and says which commands set them", async () => {
    const recorder = createMocks();
    await pulumi.runtime.setMocks(recorder.mocks, "pypi-infra", "prod", false);
    pulumi.runtime.setAllConfig(engineConfig("prod"), []);
    await expect(import("../../src/index.js")).rejects.toThrow(
      /pulumi config set --stack prod --secret pypi-infra:tlsKey < privkey\.pem/,
    );
  });

  test("a bad config fails before any resource exists", async () => {
    const recorder = createMocks();
    await pulumi.runtime.setMocks(recorder.mocks, "pypi-infra", "staging", false);
    pulumi.runtime.setAllConfig(engineConfig("staging", { "pypi-infra:appServers": "1" }), []);
    await expect(import("../../src/index.js")).rejects.toThrow(
      'pypi-infra:appServers: "1" is not valid; expected a whole number from 2 to 16',
    );
    expect(recorder.resources).toHaveLength(0);
  });
});
