import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, test } from "vitest";
import { missingTlsSecrets, parseConfig } from "../../src/config.js";
import { configReference, pulumiYamlConfigBlock, pulumiYamlKeys } from "../../src/config-docs.js";
import { CONFIG_KEYS, ConfigError } from "../../src/schema.js";
import { ROOT, readYaml, stackConfigMap } from "./yaml.js";

const problemsOf = (raw: Record<string, unknown>, stack = "staging"): string[] => {
  try {
    parseConfig(raw, stack);
  } catch (e) {
    if (e instanceof ConfigError) return [...e.problems];
    throw e;
  }
  return [];
};

describe("parseConfig", () => {
  test("both stack files parse, with real differences", () => {
    const staging = parseConfig(stackConfigMap("staging"), "staging");
    const prod = parseConfig(stackConfigMap("prod"), "prod");
    expect(staging.floatingIps).toBe(1);
    expect(prod.floatingIps).toBe(2);
    expect(staging.postgres.synchronous).toBe(false);
    expect(prod.postgres.synchronous).toBe(true);
    expect(prod.dbVolumeGb).toBeGreaterThan(staging.dbVolumeGb);
    expect(staging.tlsSource).toBe("generated");
    expect(prod.tlsSource).toBe("config");
    expect(prod.deletionProtection).toBe(true);
    expect(prod.availabilityZones).toEqual(["us-east-1a", "us-east-1b"]);
  });

  test("Pulumi's string form (allConfig) parses the same as the YAML values", () => {
    const yaml = stackConfigMap("prod");
    const strings = Object.fromEntries(
      Object.entries(yaml).map(([k, v]) => [k, typeof v === "object" ? JSON.stringify(v) : String(v)]),
    );
    expect(parseConfig(strings, "prod")).toEqual(parseConfig(yaml, "prod"));
  });

  test("defaults come from the schema", () => {
    const cfg = parseConfig(
      {
        "aws:region": "eu-west-1",
        "pypi-infra:domain": "pypi.example.org",
        "pypi-infra:uploadUsers": stackConfigMap("staging")["pypi-infra:uploadUsers"],
      },
      "dev",
    );
    const def = (k: string) => CONFIG_KEYS.find((c) => c.key === k)?.default;
    expect(cfg.appServers).toBe(def("appServers"));
    expect(cfg.floatingIps).toBe(def("floatingIps"));
    expect(cfg.app.maxProcesses).toBe(def("appMaxProcesses"));
    expect(cfg.heartbeat.initdeadMs).toBe(def("heartbeatInitdeadMs"));
    expect(cfg.availabilityZones).toEqual(["eu-west-1a", "eu-west-1b"]);
  });

  test("every problem at once, each naming the key, the value and what is allowed", () => {
    const problems = problemsOf({
      ...stackConfigMap("staging"),
      "pypi-infra:floatingIps": 9,
      "pypi-infra:appServers": "1",
      "pypi-infra:appRuntime": "cgi",
      "pypi-infra:flaotingIps": 2,
    });
    expect(problems).toContain("pypi-infra:floatingIps: 9 is not valid; expected a whole number from 1 to 8");
    expect(problems).toContain("pypi-infra:appServers: 1 is not valid; expected a whole number from 2 to 16");
    expect(problems).toContain(
      'pypi-infra:appRuntime: "cgi" is not valid; expected one of "appserver", "fcgid" ("wsgi" and "gunicorn" are gone: no bundle ships a Python app; "appserver" is the persistent, supervised app server they stood for)',
    );
    expect(problems.find((p) => p.startsWith("pypi-infra:flaotingIps: is not a known key"))).toBeDefined();
  });

  test("cross-field rules name the config keys, not topology fields", () => {
    const problems = problemsOf({
      ...stackConfigMap("staging"),
      "pypi-infra:heartbeatDeadtimeMs": 900,
      "pypi-infra:heartbeatWarntimeMs": 600,
    });
    expect(problems).toEqual([
      "pypi-infra:heartbeatDeadtimeMs: 900 is not valid; expected more than 2 x pypi-infra:heartbeatKeepaliveMs (1000): one lost packet must not declare the peer dead",
    ]);
  });

  test("an unknown key's value is never echoed (it may be a misspelt secret)", () => {
    const problems = problemsOf({
      ...stackConfigMap("staging"),
      "pypi-infra:tlsKee": "-----BEGIN PRIVATE KEY-----X",
    });
    expect(problems.join("\n")).not.toContain("BEGIN");
  });

  test("missing required keys and region", () => {
    const problems = problemsOf({});
    expect(problems).toContain(
      "aws:region: undefined is not valid; expected an AWS region such as us-east-1 (pulumi config set aws:region us-east-1)",
    );
    expect(problems.find((p) => p.startsWith("pypi-infra:domain: undefined is not valid"))).toMatch(
      /required/,
    );
    expect(problems.find((p) => p.startsWith("pypi-infra:uploadUsers:"))).toMatch(/required/);
  });

  test("secret keys are never read by parseConfig", () => {
    const raw = { ...stackConfigMap("prod"), "pypi-infra:tlsKey": "-----BEGIN PRIVATE KEY-----SECRET" };
    expect(JSON.stringify(parseConfig(raw, "prod"))).not.toContain("SECRET");
  });

  test("missing prod TLS secrets: the message names the commands that set them", () => {
    expect(missingTlsSecrets("prod", { certificate: true, key: true })).toBeUndefined();
    const message = missingTlsSecrets("prod", { certificate: false, key: false }) ?? "";
    expect(message).toContain("pulumi config set --stack prod --secret pypi-infra:tlsKey < privkey.pem");
  });
});

describe("the schema is the one source of the config's docs", () => {
  test("Pulumi.yaml declares every scalar key with the schema's type, default and description", () => {
    const declared = readYaml(join(ROOT, "Pulumi.yaml")).config as Record<string, unknown>;
    expect(declared).toEqual(pulumiYamlKeys());
    expect(readFileSync(join(ROOT, "Pulumi.yaml"), "utf8").endsWith(pulumiYamlConfigBlock())).toBe(true);
    // The CLI refuses values outside the declared type: postgresVersion must accept what the docs offer.
    expect((declared.postgresVersion as { type: string }).type).toBe("integer");
  });

  test("docs/config.md is generated from the schema (npm run docs:config)", () => {
    expect(readFileSync(join(ROOT, "docs", "config.md"), "utf8")).toBe(configReference());
    for (const k of CONFIG_KEYS) expect(configReference()).toContain(`\`pypi-infra:${k.key}\``);
  });

  test("project, runtime and entry point", () => {
    const doc = readYaml(join(ROOT, "Pulumi.yaml"));
    expect(doc.name).toBe("pypi-infra");
    expect((doc.runtime as { name: string }).name).toBe("nodejs");
    expect(doc.main).toBe("src/index.ts");
  });

  test("stack files only use known keys", () => {
    const known = CONFIG_KEYS.map((k) => `pypi-infra:${k.key}`);
    for (const stack of ["staging", "prod"])
      for (const key of Object.keys(stackConfigMap(stack)))
        if (!key.startsWith("aws:")) expect(known).toContain(key);
  });
});
