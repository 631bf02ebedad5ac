import { join } from "node:path";
import { describe, expect, test } from "vitest";
import { ConfigError, DEFAULTS, KNOWN_KEYS, missingTlsSecrets, parseConfig } from "../../src/config.js";
import { ROOT, readYaml, stackConfigMap } from "./yaml.js";

const projectSchema = () =>
  readYaml(join(ROOT, "Pulumi.yaml")).config as Record<string, { type: string; default?: unknown }>;

describe("parseConfig", () => {
  test("both stack files parse, with real differences", () => {
    const staging = parseConfig(stackConfigMap("staging"), "staging");
    const prod = parseConfig(stackConfigMap("prod"), "prod");
    expect(staging.floatingIps).toBe(1);
    expect(prod.floatingIps).toBe(2);
    expect(staging.postgres.synchronous).toBe(false);
    expect(prod.postgres.synchronous).toBe(true);
    expect(prod.dbVolumeGb).toBeGreaterThan(staging.dbVolumeGb);
    expect(prod.storageVolumeGb).toBeGreaterThan(staging.storageVolumeGb);
    expect(staging.tlsSource).toBe("generated");
    expect(prod.tlsSource).toBe("config");
    expect(staging.deletionProtection).toBe(false);
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

  test("defaults live in code", () => {
    const cfg = parseConfig(
      {
        "aws:region": "eu-west-1",
        "pypi-infra:domain": "pypi.example.org",
        "pypi-infra:uploadUsers": stackConfigMap("staging")["pypi-infra:uploadUsers"],
      },
      "dev",
    );
    expect(cfg.appServers).toBe(2);
    expect(cfg.floatingIps).toBe(1);
    expect(cfg.availabilityZones).toEqual(["eu-west-1a", "eu-west-1b"]);
    expect(cfg.app.maxProcesses).toBe(DEFAULTS.appMaxProcesses);
  });

  test("bad values fail naming the key, the value and what is allowed; all at once", () => {
    const raw = {
      ...stackConfigMap("staging"),
      "pypi-infra:floatingIps": 9,
      "pypi-infra:appServers": "1",
      "pypi-infra:appRuntime": "cgi",
      "pypi-infra:heartbeatDeadtimeMs": 900,
      "pypi-infra:flaotingIps": 2,
    };
    let error: unknown;
    try {
      parseConfig(raw, "staging");
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(ConfigError);
    const message = (error as Error).message;
    expect(message).toContain("pypi-infra:floatingIps: 9 is not valid; expected a whole number from 1 to 8");
    expect(message).toContain(
      'pypi-infra:appServers: "1" is not valid; expected a whole number from 2 to 16',
    );
    expect(message).toContain(
      'pypi-infra:appRuntime: "cgi" is not valid; expected one of fcgid, wsgi, gunicorn',
    );
    expect(message).toContain(
      "pypi-infra:heartbeatDeadtimeMs: 900 is not valid; expected more than 2 x heartbeatKeepaliveMs (1000)",
    );
    expect(message).toContain("pypi-infra:flaotingIps: is not a known key");
  });

  test("missing required keys and region", () => {
    expect(() => parseConfig({}, "staging")).toThrow(
      /aws:region: undefined is not valid[\s\S]*pypi-infra:domain: undefined is not valid[\s\S]*uploadUsers/,
    );
  });

  test("secret keys are never read (or echoed) by parseConfig", () => {
    const raw = { ...stackConfigMap("prod"), "pypi-infra:tlsKey": "-----BEGIN PRIVATE KEY-----SECRET" };
    expect(() => parseConfig(raw, "prod")).not.toThrow();
    expect(JSON.stringify(parseConfig(raw, "prod"))).not.toContain("SECRET");
  });

  test("missing prod TLS secrets: the message names the commands that set them", () => {
    expect(missingTlsSecrets("prod", { certificate: true, key: true })).toBeUndefined();
    const message = missingTlsSecrets("prod", { certificate: false, key: false }) ?? "";
    expect(message).toContain("pulumi config set --stack prod --secret pypi-infra:tlsKey < privkey.pem");
    expect(message).toContain(
      "pulumi config set --stack prod --secret pypi-infra:tlsCertificate < fullchain.pem",
    );
  });
});

describe("Pulumi.yaml", () => {
  test("declares every scalar key, with the defaults the code uses", () => {
    const schema = projectSchema();
    const scalarKeys = KNOWN_KEYS.filter((k) => k !== "uploadUsers" && k !== "availabilityZones");
    expect(Object.keys(schema).sort()).toEqual(scalarKeys.sort());
    for (const [key, value] of Object.entries(DEFAULTS)) expect(schema[key]?.default, key).toEqual(value);
    expect(schema.domain?.default).toBeUndefined();
  });

  test("project, runtime and entry point", () => {
    const doc = readYaml(join(ROOT, "Pulumi.yaml"));
    expect(doc.name).toBe("pypi-infra");
    expect((doc.runtime as { name: string }).name).toBe("nodejs");
    expect(doc.main).toBe("src/index.ts");
  });

  test("stack files only use known keys", () => {
    for (const stack of ["staging", "prod"]) {
      for (const key of Object.keys(stackConfigMap(stack))) {
        if (key.startsWith("aws:")) continue;
        expect(KNOWN_KEYS).toContain(key.replace(/^pypi-infra:/, ""));
      }
    }
  });
});
