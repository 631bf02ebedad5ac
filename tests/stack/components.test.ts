import type * as aws from "@pulumi/aws";
import { describe, expect, test } from "vitest";
import { validateAppServersArgs } from "../../src/components/app-servers.js";
import { floatingIpStatements } from "../../src/components/balancer-pair.js";
import { validateBundleBucketArgs } from "../../src/components/bundle-bucket.js";
import { validateDrbdVolumeArgs } from "../../src/components/drbd-volume.js";
import { bundleReadStatements, parameterReadStatements } from "../../src/components/iam.js";
import { type LaunchedNode, type PlannedNode, validateLaunchArgs } from "../../src/components/node.js";
import { validatePostgresPairArgs } from "../../src/components/postgres-pair.js";
import { bundleDigest, validateConfigRolloutArgs } from "../../src/components/rollout.js";
import { validateRouteBrokerArgs } from "../../src/components/route-broker.js";
import { validateStackSecretsArgs } from "../../src/components/secrets.js";
import { parseConfig } from "../../src/config.js";
import { hostIp, networkRules, subnetCidr } from "../../src/network.js";
import {
  buildTopology,
  bundleFileLists,
  placeholderIds,
  planNodes,
  routeBrokerName,
  secretRefs,
} from "../../src/plan.js";
import { parseTopology } from "../../src/schema.js";
import type { Topology } from "../../src/topology.js";
import { stackConfigMap } from "./yaml.js";

// Validation reads plain fields only; resource-typed args are stand-ins.
const fake = <T>() => ({}) as unknown as T;
const subnets = [fake<aws.ec2.Subnet>(), fake<aws.ec2.Subnet>()] as const;
const prodConfig = () => parseConfig(stackConfigMap("prod"), "prod");
/** Parsing the prod stack config with some keys replaced (full `pypi-infra:` names). */
const prodWith = (changes: Record<string, unknown>) => () =>
  parseConfig({ ...stackConfigMap("prod"), ...changes }, "prod");
const plannedTopology = (): Topology => {
  const cfg = prodConfig();
  return buildTopology(cfg, planNodes(cfg), placeholderIds(cfg));
};
const plan = () => planNodes(prodConfig());
const ofRole = (role: string) => plan().filter((n) => n.role === role);
const launch = (nodes: readonly PlannedNode[]) => ({
  ami: "ami-1",
  instanceType: "t3.small",
  subnets,
  securityGroup: fake<aws.ec2.SecurityGroup>(),
  userData: Object.fromEntries(nodes.map((n) => [n.name, "#cloud-config\n"])),
  bundleBucketArn: "arn:aws:s3:::b",
  parameterArns: [],
  account: { partition: "aws", accountId: "1", region: "us-east-1" },
  metricNamespace: "PyPI/prod",
});

describe("planning", () => {
  test("addresses come from the subnet CIDRs, before anything exists", () => {
    expect(subnetCidr("10.40.0.0/16", "app", 1)).toBe("10.40.11.0/24");
    expect(hostIp("10.40.11.0/24", 10)).toBe("10.40.11.10");
    expect(() => hostIp("10.40.11.0/24", 2)).toThrow(/outside the usable range/);
    const nodes = plan();
    expect(nodes.map((n) => `${n.name}@${n.privateIp}`)).toEqual([
      "lb-a@10.40.0.10",
      "lb-b@10.40.1.10",
      "app-a@10.40.10.10",
      "app-b@10.40.11.10",
      "app-c@10.40.10.11",
      "db-a@10.40.20.10",
      "db-b@10.40.21.10",
    ]);
    expect(nodes[0]?.secondaryIps).toEqual(["10.40.0.20", "10.40.0.21"]);
  });

  test("the bundle file list does not depend on resolved ids", () => {
    const cfg = prodConfig();
    const planned = bundleFileLists(buildTopology(cfg, plan(), placeholderIds(cfg)));
    const resolved = bundleFileLists(
      buildTopology(cfg, plan(), {
        floatingIps: [
          { address: "203.0.113.7", allocationId: "eipalloc-0aaa" },
          { address: "203.0.113.8", allocationId: "eipalloc-0bbb" },
        ],
        routeTableIds: ["rtb-0123", "rtb-0456"],
        bucket: "pypi-prod-bundles-0c1d2e3f",
        backupBucket: "pypi-prod-backups-0c1d2e3f",
        fileCopyBucket: "pypi-prod-files-0c1d2e3f",
        instances: {
          "lb-a": { instanceId: "i-0123456789abcdef0", urn: "urn:pulumi:prod::pypi-infra::x::y" },
        },
      }),
    );
    expect(resolved).toEqual(planned);
  });

  test("secret references are the parameter names", () => {
    expect(secretRefs("prod").tlsKey.parameter).toBe("/pypi/prod/tls/key");
  });

  test("bundle digest is order-independent and content-sensitive", () => {
    expect(bundleDigest({ a: "1", b: "2" })).toBe(bundleDigest({ b: "2", a: "1" }));
    expect(bundleDigest({ a: "1" })).not.toBe(bundleDigest({ a: "2" }));
  });
});

describe("validateXArgs", () => {
  test("Network: the schema, not the component, refuses its bad inputs, naming the keys", () => {
    expect(prodWith({ "pypi-infra:vpcCidr": "10.40.0.0/24" })).toThrow(
      'pypi-infra:vpcCidr: "10.40.0.0/24" is not valid; expected an IPv4 CIDR from /16 to /19',
    );
    expect(prodWith({ "pypi-infra:availabilityZones": ["us-east-1a", "us-east-1a"] })).toThrow(
      'pypi-infra:availabilityZones: ["us-east-1a","us-east-1a"] is not valid; expected two different availability zones',
    );
    expect(prodWith({ "aws:region": "us east" })).toThrow('aws:region: "us east" is not valid');
    expect(prodWith({ "pypi-infra:overlayStorage": "10.40.3.3" })).toThrow(
      'pypi-infra:overlayStorage: "10.40.3.3" is not valid; expected an address OUTSIDE pypi-infra:vpcCidr',
    );
  });

  test("BalancerPair: node args are the schema's; only user data is the component's to check", () => {
    const t = plannedTopology();
    expect(() => parseTopology(t)).not.toThrow();
    const oneSpare = {
      ...t,
      nodes: t.nodes.map((n, i) => (i === 0 ? { ...n, secondaryIps: ["10.40.0.20"] } : n)),
    };
    expect(() => parseTopology(oneSpare)).toThrow("nodes[0].secondaryIps");
    const oneAz = { ...t, nodes: t.nodes.map((n, i) => (i === 1 ? { ...n, az: t.nodes[0]!.az } : n)) };
    expect(() => parseTopology(oneAz)).toThrow("nodes(role balancer).az");
    expect(prodWith({ "pypi-infra:floatingIps": 9 })).toThrow("pypi-infra:floatingIps: 9 is not valid");
    expect(prodWith({ "pypi-infra:balancerInstanceType": "big" })).toThrow(
      'pypi-infra:balancerInstanceType: "big" is not valid',
    );
    const [a, b] = ofRole("balancer") as [PlannedNode, PlannedNode];
    expect(() => validateLaunchArgs("BalancerPair", [a, b], launch([a, b]))).not.toThrow();
    expect(() => validateLaunchArgs("BalancerPair", [a, b], { ...launch([a, b]), userData: {} })).toThrow(
      /userData has no entry for node "lb-a"/,
    );
  });

  test("floating-IP statements name only the given allocations and interfaces", () => {
    const s = floatingIpStatements(
      { partition: "aws", accountId: "1", region: "r-1" },
      ["eipalloc-1"],
      ["eni-1"],
    );
    expect(s[0]?.Resource).toEqual([
      "arn:aws:ec2:r-1:1:elastic-ip/eipalloc-1",
      "arn:aws:ec2:r-1:1:network-interface/eni-1",
    ]);
    expect(s[1]).toMatchObject({ Action: ["ec2:DescribeAddresses"], Resource: "*" });
    expect(bundleReadStatements("arn:aws:s3:::b", ["x"])[0]?.Resource).toEqual([
      "arn:aws:s3:::b/bundles/x/*",
    ]);
    expect(parameterReadStatements(["p"])[1]).toMatchObject({ Effect: "Deny", NotResource: ["p"] });
  });

  test("AppServers", () => {
    const apps = ofRole("app");
    const ok = {
      ...launch(apps),
      nodes: apps,
      storageParameterArns: [],
      storageRouteBrokerArn: "arn:aws:lambda:us-east-1:1:function:pypi-prod-route-storage",
    };
    expect(() => validateAppServersArgs(ok)).not.toThrow();
    expect(prodWith({ "pypi-infra:appServers": 1 })).toThrow("pypi-infra:appServers: 1 is not valid");
    expect(() => validateAppServersArgs({ ...ok, userData: {} })).toThrow(
      'AppServers: userData has no entry for node "app-a"',
    );
  });

  test("RouteBroker: a Lambda name, an address, route tables and at least one holder", () => {
    const ok = {
      functionName: routeBrokerName("prod", "writer"),
      address: "100.64.10.5",
      routeTableIds: ["rtb-1"],
      holders: ["eni-1"],
      account: { partition: "aws", accountId: "1", region: "us-east-1" },
    };
    expect(ok.functionName).toBe("pypi-prod-route-writer");
    // The longest environment name still gives a valid Lambda name.
    expect(() =>
      validateRouteBrokerArgs({ ...ok, functionName: routeBrokerName("e".repeat(32), "storage") }),
    ).not.toThrow();
    expect(() => validateRouteBrokerArgs(ok)).not.toThrow();
    expect(() => validateRouteBrokerArgs({ ...ok, functionName: "a".repeat(65) })).toThrow(
      /RouteBroker: functionName "a{65}" is not valid/,
    );
    expect(() => validateRouteBrokerArgs({ ...ok, functionName: "pypi prod" })).toThrow(
      'RouteBroker: functionName "pypi prod" is not valid',
    );
    expect(() => validateRouteBrokerArgs({ ...ok, address: "100.64.10.5/32" })).toThrow(
      'RouteBroker: address "100.64.10.5/32" is not valid; expected an IPv4 address',
    );
    expect(() => validateRouteBrokerArgs({ ...ok, routeTableIds: [] })).toThrow(
      "RouteBroker: routeTableIds is empty",
    );
    expect(() => validateRouteBrokerArgs({ ...ok, holders: [] })).toThrow(
      "RouteBroker: holders [] is not valid; expected at least one network interface",
    );
  });

  test("PostgresPair", () => {
    const [a, b] = ofRole("db") as [PlannedNode, PlannedNode];
    const ok = {
      ...launch([a, b]),
      nodes: [a, b] as const,
      dataVolumeGb: 20,
      writerAddress: "100.64.10.5",
      routeTables: [fake<aws.ec2.RouteTable>()],
      routeBrokerArn: "arn:aws:lambda:us-east-1:1:function:pypi-prod-route-writer",
    };
    expect(() => validatePostgresPairArgs(ok)).not.toThrow();
    expect(prodWith({ "pypi-infra:dbVolumeGb": 0 })).toThrow("pypi-infra:dbVolumeGb: 0 is not valid");
    const t = plannedTopology();
    expect(() => parseTopology({ ...t, overlay: { ...t.overlay, dbWriter: "db" } })).toThrow(
      'overlay.dbWriter: "db" is not valid',
    );
    expect(() => validatePostgresPairArgs({ ...ok, routeTables: [] })).toThrow(
      "PostgresPair: routeTables is empty",
    );
  });

  test("DrbdVolume", () => {
    const [a, b] = ofRole("app") as [PlannedNode, PlannedNode];
    const node = (spec: PlannedNode) => ({ spec }) as unknown as LaunchedNode;
    const ok = {
      pair: [node(a), node(b)] as const,
      sizeGb: 10,
      storageAddress: "100.64.10.6",
      routeTables: [fake<aws.ec2.RouteTable>()],
    };
    expect(() => validateDrbdVolumeArgs(ok)).not.toThrow();
    // The plan alternates AZs, so the storage pair (the first two app servers) spans both.
    expect(a.azIndex).not.toBe(b.azIndex);
    expect(prodWith({ "pypi-infra:storageVolumeGb": 1.5 })).toThrow(
      "pypi-infra:storageVolumeGb: 1.5 is not valid",
    );
    expect(() => validateDrbdVolumeArgs({ ...ok, routeTables: [] })).toThrow(
      "DrbdVolume: routeTables is empty",
    );
  });

  test("UploadProxy, StackSecrets, BundleBucket, ConfigRollout", () => {
    const t = plannedTopology();
    expect(() => parseTopology({ ...t, upload: { ...t.upload, backendPort: 0 } })).toThrow(
      "upload.backendPort: 0 is not valid",
    );
    const badRef = { ...t, secrets: { ...t.secrets, tlsKey: { parameter: "tls key" } } };
    expect(() => parseTopology(badRef)).toThrow('secrets.tlsKey.parameter: "tls key" is not valid');
    const secrets = { refs: secretRefs("s"), tls: { source: "generated" as const }, domain: "x.org" };
    expect(() => validateStackSecretsArgs(secrets)).not.toThrow();
    expect(() => validateStackSecretsArgs({ ...secrets, certificateHours: 0 })).toThrow(
      "StackSecrets: certificateHours 0 is not valid",
    );
    expect(() => parseTopology({ ...t, environment: "Prod" })).toThrow('environment: "Prod" is not valid');
    expect(() => validateBundleBucketArgs({ environment: "x".repeat(23) })).not.toThrow();
    expect(() => validateBundleBucketArgs({ environment: "x".repeat(24) })).toThrow(
      /BundleBucket: environment "x{24}" is too long/,
    );
    const base = {
      bucket: fake<aws.s3.Bucket>(),
      bucketReady: [],
      files: { "lb-a": ["manifest"] },
      entries: fake<never>(),
      instances: { "lb-a": fake<aws.ec2.Instance>() },
      region: "us-east-1",
    };
    expect(() => validateConfigRolloutArgs({ ...base, chains: [["lb-a"]] })).not.toThrow();
    expect(() => validateConfigRolloutArgs({ ...base, chains: [] })).toThrow(
      'node "lb-a" has a bundle but is in no chain',
    );
    expect(() => validateConfigRolloutArgs({ ...base, chains: [["lb-a", "lb-b"]] })).toThrow(
      'files has no entries for node "lb-b"',
    );
  });
});

function networkPorts() {
  return { http: 80, https: 443, heartbeatUdp: 694, postgres: 5432, drbd: 7788 };
}
const OVERLAY = { dbWriter: "100.64.10.5", storage: "100.64.10.6" };

test("network rules never open anything but 80/443 to the world on the balancers", () => {
  const open = networkRules(networkPorts(), OVERLAY).filter(
    (r) => r.peer === "0.0.0.0/0" && r.direction === "ingress",
  );
  expect(open.map((r) => `${r.group}:${r.port}`)).toEqual(["balancer:80", "balancer:443"]);
});

test("overlay traffic: egress names the routed /32, ingress admits the source group", () => {
  const rules = networkRules(networkPorts(), OVERLAY);
  const cidr = (r: (typeof rules)[number]) => (typeof r.peer === "object" ? r.peer.cidr : undefined);
  expect(
    rules
      .filter((r) => cidr(r) !== undefined)
      .map((r) => `${r.group} ${r.direction} ${r.port} ${cidr(r)}`)
      .sort(),
  ).toEqual([
    "app egress 111 100.64.10.6/32",
    "app egress 20048 100.64.10.6/32",
    "app egress 2049 100.64.10.6/32",
    "app egress 5432 100.64.10.5/32",
  ]);
  expect(
    rules.filter((r) => r.group === "db" && r.direction === "ingress" && r.port === 5432).map((r) => r.peer),
  ).toEqual(["app", "db"]);
});
