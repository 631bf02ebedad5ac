import * as pulumi from "@pulumi/pulumi";
import { beforeAll, describe, expect, test } from "vitest";
import {
  checkParameterSize,
  PARAMETER_TIER_LIMIT,
  type ParameterTier,
  StackSecrets,
} from "../../src/components/secrets.js";
import { secretRefs } from "../../src/plan.js";
import { createMocks, plain, type Recorded, settle } from "./harness.js";

/** A leaf and three intermediates: about 6 KB of PEM, like a real chain with a cross-signed root. */
const pem = (label: string, bytes: number): string => {
  const body = Buffer.alloc(bytes, label).toString("base64");
  return `-----BEGIN CERTIFICATE-----\n${body.replace(/.{64}/g, "$&\n").trimEnd()}\n-----END CERTIFICATE-----\n`;
};
const CHAIN = ["leaf", "int1", "int2", "root"].map((l) => pem(l, 1100)).join("");

let parameters: Recorded[];
beforeAll(async () => {
  const recorder = createMocks();
  await pulumi.runtime.setMocks(recorder.mocks, "pypi-infra", "prod", false);
  new StackSecrets("pypi-secrets", {
    refs: secretRefs("prod"),
    tls: {
      source: "config",
      certificate: pulumi.secret(CHAIN),
      key: pulumi.secret("-----BEGIN PRIVATE KEY-----\nMOCK\n-----END PRIVATE KEY-----\n"),
    },
    domain: "pypi.example.org",
  });
  await settle(recorder.resources);
  parameters = recorder.resources.filter((r) => r.type === "aws:ssm/parameter:Parameter");
}, 60_000);

describe("StackSecrets parameter tiers", () => {
  test("the chain is over Standard's 4 KB", () => {
    expect(Buffer.byteLength(CHAIN)).toBeGreaterThan(PARAMETER_TIER_LIMIT.Standard);
    expect(Buffer.byteLength(CHAIN)).toBeLessThanOrEqual(PARAMETER_TIER_LIMIT.Advanced);
  });

  test("every parameter's tier holds its value; a >4 KB chain is stored whole as Advanced", () => {
    expect(parameters).toHaveLength(8);
    for (const p of parameters) {
      const tier = p.inputs.tier as ParameterTier;
      const value = String(plain(p.inputs.value));
      expect(Buffer.byteLength(value), `${String(p.inputs.name)} (${tier})`).toBeLessThanOrEqual(
        PARAMETER_TIER_LIMIT[tier],
      );
    }
    const cert = parameters.find((p) => p.inputs.name === "/pypi/prod/tls/certificate");
    expect(cert?.inputs.tier).toBe("Advanced");
    expect(plain(cert?.inputs.value)).toBe(CHAIN);
    // Only the certificate pays for Advanced.
    expect(parameters.filter((p) => p.inputs.tier === "Advanced")).toHaveLength(1);
  });

  test("a value too big for its tier fails with the secret's name and size, not its value", () => {
    const huge = pem("huge", 7000);
    expect(() => checkParameterSize("tlsCertificate", huge)).toThrow(
      `StackSecrets: tlsCertificate is ${Buffer.byteLength(huge)} bytes; an SSM Advanced parameter holds at most 8192`,
    );
    expect(() => checkParameterSize("tlsKey", pem("key", 3500))).toThrow(/tlsKey is \d+ bytes; .*Standard/);
    expect(checkParameterSize("tlsCertificate", CHAIN)).toBe(CHAIN);
  });
});
