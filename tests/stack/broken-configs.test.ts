/**
 * Broken stack configurations, as careless and hostile users write them. Each one runs the real
 * program under mocks (config, TLS, AWS facts from the mocked invokes) and must fail before any
 * resource is registered, with a message that names the exact key a user sets.
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as pulumi from "@pulumi/pulumi";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { makeTlsChain, type TlsChain } from "../../lab/lib/tls-fixture.js";
import { program } from "../../src/program.js";
import { ConfigError } from "../../src/schema.js";
import { createMocks, PROD_TLS } from "./harness.js";
import { engineConfig, stackConfigMap } from "./yaml.js";

const DAY = 24 * 3600 * 1000;
const SECRETS = ["pypi-infra:tlsCertificate", "pypi-infra:tlsKey"];

interface Case {
  readonly stack: "staging" | "prod";
  /** Engine-form values to set (strings; structured values as JSON). */
  readonly set?: Record<string, string>;
  readonly unset?: readonly string[];
  /** Keys handed over as secret config; prod's TLS keys unless told. */
  readonly secretKeys?: readonly string[];
  readonly now?: Date;
  /** The key the message must name, as `<key>: ` at the start of a problem. */
  readonly key: string;
  /** Further words the problem must carry. */
  readonly says?: RegExp;
  /** Text that must appear in no message (a secret). */
  readonly never?: () => string;
}

let dir: string;
const fixtures: { privateKey: string; otherDomain?: TlsChain; otherKey?: TlsChain } = { privateKey: "" };
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "broken-configs-"));
  execFileSync("ssh-keygen", [
    "-q",
    "-N",
    "",
    "-t",
    "ed25519",
    "-C",
    "eve@example.org",
    "-f",
    join(dir, "id"),
  ]);
  fixtures.privateKey = readFileSync(join(dir, "id"), "utf8");
  fixtures.otherDomain = makeTlsChain("evil.example.com");
  fixtures.otherKey = makeTlsChain("pypi.example.org");
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const users = (stack: "staging" | "prod") =>
  stackConfigMap(stack)["pypi-infra:uploadUsers"] as { name: string; uid: number; publicKey: string }[];
const usersWith = (edit: (u: { name: string; uid: number; publicKey: string }[]) => void) => {
  const list = structuredClone(users("prod"));
  edit(list);
  return JSON.stringify(list);
};
const privateKeyLine = () => fixtures.privateKey.split("\n")[1] ?? "";
const tls = (certificate: string, key: string) => ({
  "pypi-infra:tlsCertificate": certificate,
  "pypi-infra:tlsKey": key,
});
const goodTls = () => tls(PROD_TLS.certificate, PROD_TLS.key);

const CASES: Record<string, Case | (() => Case)> = {
  "rejected uploads kept for 0 days (they would vanish before the uploader reads the reason)": {
    stack: "staging",
    set: { "pypi-infra:uploadRejectedRetentionDays": "0" },
    key: "pypi-infra:uploadRejectedRetentionDays",
    says: /a whole number of days from 1 to 365/,
  },
  // What AWS says about instance types and zones.
  "4 floating IPs on t3.small (4 addresses per ENI)": {
    stack: "staging",
    set: { "pypi-infra:floatingIps": "4" },
    key: "pypi-infra:floatingIps",
    says: /at most 3 on balancerInstanceType t3\.small/,
  },
  "8 floating IPs on t3.small": {
    stack: "staging",
    set: { "pypi-infra:floatingIps": "8" },
    key: "pypi-infra:floatingIps",
  },
  "an instance type that does not exist": {
    stack: "staging",
    set: { "pypi-infra:balancerInstanceType": "t3.tiny" },
    key: "pypi-infra:balancerInstanceType",
    says: /an EC2 instance type that exists in us-east-1/,
  },
  "an arm64 type for the amd64 AMI": {
    stack: "staging",
    set: { "pypi-infra:appInstanceType": "m7g.large" },
    key: "pypi-infra:appInstanceType",
    says: /x86_64/,
  },
  "a Xen type (no NVMe names, no ens5)": {
    stack: "staging",
    set: { "pypi-infra:dbInstanceType": "t2.medium" },
    key: "pypi-infra:dbInstanceType",
    says: /Nitro/,
  },
  "a 512 MiB balancer": {
    stack: "staging",
    set: { "pypi-infra:balancerInstanceType": "t3.nano" },
    key: "pypi-infra:balancerInstanceType",
    says: /at least 1024 MiB/,
  },
  "16 index workers on a 2 GiB app server": {
    stack: "staging",
    set: { "pypi-infra:appMaxProcesses": "16" },
    key: "pypi-infra:appInstanceType",
    says: /at least 2368 MiB .*per index worker/,
  },
  "a 1 GiB database node": {
    stack: "staging",
    set: { "pypi-infra:dbInstanceType": "t3.micro" },
    key: "pypi-infra:dbInstanceType",
  },
  "a zone that does not exist": {
    stack: "staging",
    set: { "pypi-infra:availabilityZones": '["us-east-1a","us-east-1z"]' },
    key: "pypi-infra:availabilityZones",
    says: /us-east-1z is not/,
  },
  "a zone that does not offer the types": {
    stack: "staging",
    set: { "pypi-infra:availabilityZones": '["us-east-1a","us-east-1e"]' },
    key: "pypi-infra:balancerInstanceType",
    says: /not offered in us-east-1e/,
  },
  // Shape and bounds of single keys.
  "one zone twice": {
    stack: "staging",
    set: { "pypi-infra:availabilityZones": '["us-east-1a","us-east-1a"]' },
    key: "pypi-infra:availabilityZones",
  },
  "zones of another region": {
    stack: "staging",
    set: { "pypi-infra:availabilityZones": '["eu-west-1a","eu-west-1b"]' },
    key: "pypi-infra:availabilityZones",
    says: /a zone of aws:region us-east-1/,
  },
  "zones as a plain string": {
    stack: "staging",
    set: { "pypi-infra:availabilityZones": "us-east-1a" },
    key: "pypi-infra:availabilityZones",
  },
  "Postgres 9.6": {
    stack: "staging",
    set: { "pypi-infra:postgresVersion": "9.6" },
    key: "pypi-infra:postgresVersion",
  },
  "Postgres 11 on AWS": {
    stack: "staging",
    set: { "pypi-infra:postgresVersion": "11" },
    key: "pypi-infra:postgresVersion",
    says: /Debian 12 ships only Postgres 15/,
  },
  "Postgres 16": {
    stack: "staging",
    set: { "pypi-infra:postgresVersion": "16" },
    key: "pypi-infra:postgresVersion",
  },
  "Postgres 17": {
    stack: "prod",
    set: { "pypi-infra:postgresVersion": "17", ...goodTls() },
    key: "pypi-infra:postgresVersion",
  },
  "region us-east-9": { stack: "staging", set: { "aws:region": "us-east-9" }, key: "aws:region" },
  "no region": { stack: "staging", unset: ["aws:region"], key: "aws:region" },
  "no domain": { stack: "staging", unset: ["pypi-infra:domain"], key: "pypi-infra:domain", says: /required/ },
  "an upper-case domain": {
    stack: "staging",
    set: { "pypi-infra:domain": "PyPI.Example.org" },
    key: "pypi-infra:domain",
  },
  "a single-label domain": {
    stack: "staging",
    set: { "pypi-infra:domain": "pypi" },
    key: "pypi-infra:domain",
  },
  "a /24 VPC": { stack: "staging", set: { "pypi-infra:vpcCidr": "10.40.0.0/24" }, key: "pypi-infra:vpcCidr" },
  "a VPC CIDR with host bits": {
    stack: "staging",
    set: { "pypi-infra:vpcCidr": "10.40.0.1/16" },
    key: "pypi-infra:vpcCidr",
  },
  "the writer address inside the VPC": {
    stack: "staging",
    set: { "pypi-infra:overlayDbWriter": "10.40.5.5" },
    key: "pypi-infra:overlayDbWriter",
    says: /OUTSIDE pypi-infra:vpcCidr/,
  },
  "the storage address equal to the writer's": {
    stack: "staging",
    set: { "pypi-infra:overlayStorage": "100.64.10.5" },
    key: "pypi-infra:overlayStorage",
  },
  "deadtime within 2 keepalives": {
    stack: "staging",
    set: { "pypi-infra:heartbeatDeadtimeMs": "900" },
    key: "pypi-infra:heartbeatDeadtimeMs",
    says: /more than 2 x pypi-infra:heartbeatKeepaliveMs \(1000\)/,
  },
  "initdead below 2 deadtimes": {
    stack: "staging",
    set: { "pypi-infra:heartbeatInitdeadMs": "2000" },
    key: "pypi-infra:heartbeatInitdeadMs",
    says: /at least 2 x pypi-infra:heartbeatDeadtimeMs \(3000\)/,
  },
  "warntime beyond deadtime": {
    stack: "staging",
    set: { "pypi-infra:heartbeatWarntimeMs": "2000" },
    key: "pypi-infra:heartbeatWarntimeMs",
  },
  "one app server": {
    stack: "staging",
    set: { "pypi-infra:appServers": "1" },
    key: "pypi-infra:appServers",
    says: /"1" is not valid|1 is not valid/,
  },
  "17 app servers": {
    stack: "staging",
    set: { "pypi-infra:appServers": "17" },
    key: "pypi-infra:appServers",
  },
  "the cgi runtime": {
    stack: "staging",
    set: { "pypi-infra:appRuntime": "cgi" },
    key: "pypi-infra:appRuntime",
  },
  "3 NAT gateways": {
    stack: "staging",
    set: { "pypi-infra:natGateways": "3" },
    key: "pypi-infra:natGateways",
  },
  "a 4 GB root disk": {
    stack: "staging",
    set: { "pypi-infra:rootVolumeGb": "4" },
    key: "pypi-infra:rootVolumeGb",
  },
  "smokeCheck yes": {
    stack: "staging",
    set: { "pypi-infra:smokeCheck": "yes" },
    key: "pypi-infra:smokeCheck",
  },
  "a misspelt key": {
    stack: "staging",
    set: { "pypi-infra:flaotingIps": "2" },
    key: "pypi-infra:flaotingIps",
    says: /not a known key/,
  },
  "an unknown tlsSource": {
    stack: "staging",
    set: { "pypi-infra:tlsSource": "letsencrypt" },
    key: "pypi-infra:tlsSource",
  },
  // Upload users.
  "an upload user named www-data": {
    stack: "staging",
    set: { "pypi-infra:uploadUsers": usersWith((u) => (u[0]!.name = "www-data")) },
    key: "pypi-infra:uploadUsers[0].name",
    says: /system account/,
  },
  "an upload user with uid 0": {
    stack: "staging",
    set: { "pypi-infra:uploadUsers": usersWith((u) => (u[0]!.uid = 0)) },
    key: "pypi-infra:uploadUsers[0].uid",
  },
  "two upload users with one uid": {
    stack: "staging",
    set: { "pypi-infra:uploadUsers": usersWith((u) => (u[1]!.uid = u[0]!.uid)) },
    key: "pypi-infra:uploadUsers[1].uid",
  },
  "no upload users": {
    stack: "staging",
    set: { "pypi-infra:uploadUsers": "[]" },
    key: "pypi-infra:uploadUsers",
  },
  "a private key pasted as a public key": () => ({
    stack: "staging",
    set: { "pypi-infra:uploadUsers": usersWith((u) => (u[0]!.publicKey = fixtures.privateKey)) },
    key: "pypi-infra:uploadUsers[0].publicKey",
    says: /private key/,
    never: privateKeyLine,
  }),
  "two keys in one publicKey": {
    stack: "staging",
    set: {
      "pypi-infra:uploadUsers": usersWith(
        (u) => (u[0]!.publicKey = `${u[0]!.publicKey}\n${u[1]!.publicKey}`),
      ),
    },
    key: "pypi-infra:uploadUsers[0].publicKey",
  },
  // Prod's TLS material.
  "a certificate that does not match its key": () => ({
    stack: "prod",
    set: tls(PROD_TLS.certificate, fixtures.otherKey?.key ?? ""),
    key: "pypi-infra:tlsKey",
    never: () => fixtures.otherKey?.key.split("\n")[1] ?? "",
  }),
  "garbage instead of PEM": {
    stack: "prod",
    set: tls("hello, I am a certificate", PROD_TLS.key),
    key: "pypi-infra:tlsCertificate",
  },
  "key and certificate swapped": {
    stack: "prod",
    set: tls(PROD_TLS.key, PROD_TLS.certificate),
    key: "pypi-infra:tlsCertificate",
    says: /swapped/,
    never: () => PROD_TLS.key.split("\n")[1] ?? "",
  },
  "a certificate for another domain": () => ({
    stack: "prod",
    set: tls(fixtures.otherDomain?.chain ?? "", fixtures.otherDomain?.key ?? ""),
    key: "pypi-infra:tlsCertificate",
    says: /pypi\.example\.org/,
  }),
  "a chain over the 8 KB parameter": {
    stack: "prod",
    set: tls(PROD_TLS.certificate + PROD_TLS.certificate.repeat(8), PROD_TLS.key),
    key: "pypi-infra:tlsCertificate",
    says: /8,192/,
  },
  "TLS secrets set without --secret": {
    stack: "prod",
    set: goodTls(),
    secretKeys: [],
    key: "pypi-infra:tlsKey",
    says: /plain text/,
    never: () => PROD_TLS.key.split("\n")[1] ?? "",
  },
  "an expired certificate": {
    stack: "prod",
    set: goodTls(),
    now: new Date(Date.now() + 100 * DAY),
    key: "pypi-infra:tlsCertificate",
    says: /expired/,
  },
  "a certificate 10 days from expiry": {
    stack: "prod",
    set: goodTls(),
    now: new Date(Date.now() + 80 * DAY),
    key: "pypi-infra:tlsCertificate",
    says: /14 days/,
  },
  "TLS secrets on a stack that generates its certificate": {
    stack: "staging",
    set: goodTls(),
    secretKeys: SECRETS,
    key: "pypi-infra:tlsCertificate",
    says: /tlsSource is "generated"/,
  },
};

describe("broken configurations fail at preview, naming the key, with nothing registered", () => {
  test("there are at least 40 of them", () => {
    expect(Object.keys(CASES).length).toBeGreaterThanOrEqual(40);
  });

  for (const [label, entry] of Object.entries(CASES)) {
    test(label, async () => {
      const c = typeof entry === "function" ? entry() : entry;
      const recorder = createMocks();
      await pulumi.runtime.setMocks(recorder.mocks, "pypi-infra", c.stack, false);
      const config = engineConfig(c.stack, c.set);
      for (const k of c.unset ?? []) delete config[k];
      pulumi.runtime.setAllConfig(config, [...(c.secretKeys ?? (c.stack === "prod" ? SECRETS : []))]);
      const error = await program({ now: c.now }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(error, "the program accepted it").toBeInstanceOf(ConfigError);
      const problems = (error as ConfigError).problems;
      const hits = problems.filter((p) => p.startsWith(`${c.key}: `));
      expect(hits, `problems: ${problems.join(" | ")}`).not.toEqual([]);
      if (c.says) expect(hits.join("\n")).toMatch(c.says);
      const secret = c.never?.();
      if (secret) for (const p of problems) expect(p).not.toContain(secret);
      expect(recorder.resources).toHaveLength(0);
    });
  }
});
