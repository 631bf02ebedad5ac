import { beforeAll, describe, expect, test } from "vitest";
import { T } from "../../policy/rules.js";
import { type Built, buildStack, builtStack } from "../stack/harness.js";
import { runPack, stackResources } from "./pack.js";

describe.each(["staging", "prod"] as const)("the %s stack under mocks", (stack) => {
  let built: Built;
  beforeAll(async () => {
    built = await builtStack(stack);
  }, 60_000);

  test("passes the whole pack with zero violations", async () => {
    expect(await runPack(stackResources(built, stack))).toEqual([]);
  });

  test("passes for the right reasons: the rules saw the resources they guard", () => {
    const resources = stackResources(built, stack);
    const count = (type: string) => resources.filter((r) => r.type === type).length;
    expect(count(T.instance)).toBeGreaterThanOrEqual(6);
    expect(count(T.volume)).toBe(4);
    expect(count(T.ingressRule)).toBeGreaterThan(10);
    expect(count(T.subnet)).toBe(6);
    // Bundles, the pgBackRest repository and the package file copies.
    expect(count(T.bucket)).toBe(3);
    // Every world ingress rule resolved its group, and that group is the balancer group.
    const groups = resources.filter((r) => r.type === T.securityGroup);
    const world = resources.filter((r) => r.type === T.ingressRule && r.props.cidrIpv4 === "0.0.0.0/0");
    expect(world.map((r) => r.props.fromPort).sort()).toEqual([22, 443, 80]);
    for (const r of world) {
      const dep = r.propertyDependencies.securityGroupId?.[0]?.urn;
      expect(groups.find((g) => g.urn === dep)?.props.tags).toMatchObject({ Name: "pypi-net-balancer" });
    }
    // Health checks, the composite and two status check alarms per instance.
    expect(count(T.metricAlarm)).toBeGreaterThan(50);
    expect(count(T.compositeAlarm)).toBe(1);
    for (const i of resources.filter((r) => r.type === T.instance))
      expect(String(i.props.userData)).toMatch(/^#cloud-config\n/);
  });

  test("one changed resource turns the pack red: the sweep is not vacuous", async () => {
    const resources = stackResources(built, stack);
    const mutate = (type: string, change: (p: Record<string, unknown>) => Record<string, unknown>) => {
      const i = resources.findIndex((r) => r.type === type);
      const copy = [...resources];
      const r = copy[i]!;
      copy[i] = { ...r, props: change({ ...r.props }) };
      return copy;
    };
    // Policy names expected to fire (a weak access block is both a resource and a bucket finding).
    const cases: [string, ReturnType<typeof mutate>][] = [
      [
        "ec2-imdsv2-required",
        mutate(T.instance, (p) => ({ ...p, metadataOptions: { httpTokens: "optional" } })),
      ],
      ["ebs-encrypted", mutate(T.volume, (p) => ({ ...p, encrypted: false }))],
      ["no-public-ips", mutate(T.subnet, (p) => ({ ...p, mapPublicIpOnLaunch: true }))],
      [
        "no-secrets-in-user-data",
        mutate(T.instance, (p) => ({ ...p, userData: `${p.userData}password=hunter2\n` })),
      ],
      [
        "s3-no-public-access s3-bucket-private-encrypted",
        mutate(T.publicAccessBlock, (p) => ({ ...p, restrictPublicBuckets: false })),
      ],
      [
        "sg-no-world-ingress",
        mutate(T.ingressRule, (p) => ({ ...p, cidrIpv4: "0.0.0.0/0", fromPort: 5432, toPort: 5432 })),
      ],
      ["s3-bucket-private-encrypted", resources.filter((r) => r.type !== T.sse)],
      ["alarm-names-runbook", mutate(T.metricAlarm, (p) => ({ ...p, alarmDescription: "nginx is down" }))],
      ["alarm-names-runbook", mutate(T.compositeAlarm, (p) => ({ ...p, alarmDescription: undefined }))],
    ];
    for (const [policy, changed] of cases) {
      const violations = await runPack(changed);
      expect([...new Set(violations.map((v) => v.policy))].sort(), policy).toEqual(policy.split(" ").sort());
    }
  });
});

describe("the prod stack with DNS and a CDN under mocks", () => {
  let built: Built;
  beforeAll(async () => {
    built = await buildStack("prod", { "pypi-infra:dnsZone": "example.org", "pypi-infra:cdn": true });
  }, 60_000);

  test("passes the whole pack, the CDN rule having seen the distribution", async () => {
    const resources = stackResources(built, "prod");
    expect(resources.filter((r) => r.type === T.distribution)).toHaveLength(1);
    expect(await runPack(resources)).toEqual([]);
  });

  test("a distribution that allows TLS 1.1 toward the origin, or stops logging, turns it red", async () => {
    const resources = stackResources(built, "prod");
    const i = resources.findIndex((r) => r.type === T.distribution);
    const change = (props: Record<string, unknown>) => {
      const copy = [...resources];
      const r = copy[i]!;
      copy[i] = { ...r, props: { ...r.props, ...props } };
      return copy;
    };
    const origins = resources[i]!.props.origins as Record<string, unknown>[];
    const weak = origins.map((o) => ({
      ...o,
      customOriginConfig: { ...(o.customOriginConfig as object), originSslProtocols: ["TLSv1.1", "TLSv1.2"] },
    }));
    for (const changed of [change({ origins: weak }), change({ loggingConfig: undefined })]) {
      const violations = await runPack(changed);
      expect([...new Set(violations.map((v) => v.policy))]).toEqual(["cdn-tls12-and-logs"]);
    }
  });
});
