import { randomBytes } from "node:crypto";
import { describe, expect, test } from "vitest";
import {
  bucketViolations,
  openIngressViolations,
  policies,
  type StackResource,
} from "../../policy/policies.js";
import {
  bucketHardened,
  bucketPrivate,
  decodeBase64,
  encryptedVolumes,
  findSecrets,
  imdsv2Required,
  isBalancerGroup,
  noEipAssociation,
  noOpenIngress,
  noPublicIps,
  noSecretsInUserData,
  T,
} from "../../policy/rules.js";
import { BASE_PACKAGES } from "../../src/bring-up.js";
import { renderCloudInit } from "../../src/render/cloud-init.js";
import { topologyFor } from "../support/topologies.js";

const compliantInstance = {
  metadataOptions: { httpEndpoint: "enabled", httpTokens: "required", httpPutResponseHopLimit: 1 },
  rootBlockDevice: { encrypted: true, volumeSize: 16 },
  userData: "#cloud-config\nhostname: lb-a\n",
};
const balancerGroup = { name: "pypi-net-balancer", tags: { Name: "pypi-net-balancer" } };
const appGroup = { name: "pypi-net-app", tags: { Name: "pypi-net-app" } };

describe("the pack", () => {
  test("every policy is mandatory, named uniquely and described", () => {
    const names = policies.map((p) => p.name);
    expect(new Set(names).size).toBe(names.length);
    for (const p of policies) {
      expect(p.enforcementLevel, p.name).toBe("mandatory");
      expect(p.description.length, p.name).toBeGreaterThan(20);
    }
  });
});

describe("ec2-imdsv2-required", () => {
  test("passes IMDSv2, fires on optional or missing tokens, on instances and launch templates", () => {
    expect(imdsv2Required(T.instance, compliantInstance)).toEqual([]);
    expect(
      imdsv2Required(T.instance, { ...compliantInstance, metadataOptions: { httpTokens: "optional" } }),
    ).toHaveLength(1);
    expect(imdsv2Required(T.instance, {})).toHaveLength(1);
    expect(imdsv2Required(T.launchTemplate, { metadataOptions: {} })).toHaveLength(1);
    expect(imdsv2Required(T.launchTemplate, { metadataOptions: { httpTokens: "required" } })).toEqual([]);
    expect(imdsv2Required(T.volume, {})).toEqual([]);
  });
});

describe("ebs-encrypted", () => {
  test("root, block devices, launch templates and volumes", () => {
    expect(encryptedVolumes(T.instance, compliantInstance)).toEqual([]);
    expect(
      encryptedVolumes(T.instance, { ...compliantInstance, rootBlockDevice: { encrypted: false } }),
    ).toHaveLength(1);
    expect(encryptedVolumes(T.instance, { metadataOptions: {} })).toHaveLength(1);
    expect(
      encryptedVolumes(T.instance, {
        ...compliantInstance,
        ebsBlockDevices: [{ deviceName: "/dev/sdf", encrypted: true }, { deviceName: "/dev/sdg" }],
      }),
    ).toEqual(["ebsBlockDevices[1] (/dev/sdg) is not encrypted"]);
    expect(encryptedVolumes(T.volume, { encrypted: true, size: 20 })).toEqual([]);
    expect(encryptedVolumes(T.volume, { encrypted: "true" })).toEqual([]);
    expect(encryptedVolumes(T.volume, { size: 20 })).toEqual(["encrypted is not true"]);
    expect(
      encryptedVolumes(T.launchTemplate, { blockDeviceMappings: [{ ebs: { encrypted: "false" } }] }),
    ).toHaveLength(1);
    expect(
      encryptedVolumes(T.launchTemplate, { blockDeviceMappings: [{ ebs: { encrypted: "true" } }] }),
    ).toEqual([]);
  });
});

describe("sg-no-world-ingress", () => {
  const rule = (props: Record<string, unknown>) => ({
    ipProtocol: "tcp",
    fromPort: 443,
    toPort: 443,
    cidrIpv4: "0.0.0.0/0",
    ...props,
  });
  test("the balancer group may take TCP 80, 443 and 22 from the world, over IPv4 and IPv6", () => {
    for (const port of [80, 443, 22]) {
      expect(noOpenIngress(T.ingressRule, rule({ fromPort: port, toPort: port }), balancerGroup)).toEqual([]);
      expect(
        noOpenIngress(
          T.ingressRule,
          rule({ fromPort: port, toPort: port, cidrIpv4: undefined, cidrIpv6: "::/0" }),
          balancerGroup,
        ),
      ).toEqual([]);
    }
  });
  test("other ports, ranges, UDP and all-protocol rules from the world fire, even on the balancers", () => {
    expect(noOpenIngress(T.ingressRule, rule({ fromPort: 5432, toPort: 5432 }), balancerGroup)).toHaveLength(
      1,
    );
    expect(noOpenIngress(T.ingressRule, rule({ fromPort: 22, toPort: 443 }), balancerGroup)).toHaveLength(1);
    expect(
      noOpenIngress(T.ingressRule, rule({ ipProtocol: "udp", fromPort: 694, toPort: 694 }), balancerGroup),
    ).toHaveLength(1);
    expect(
      noOpenIngress(
        T.ingressRule,
        rule({ ipProtocol: "-1", fromPort: undefined, toPort: undefined }),
        balancerGroup,
      ),
    ).toHaveLength(1);
    expect(
      noOpenIngress(
        T.ingressRule,
        rule({ cidrIpv4: undefined, cidrIpv6: "::/0", fromPort: 3389, toPort: 3389 }),
        balancerGroup,
      ),
    ).toHaveLength(1);
  });
  test("the allowed ports from the world fire on any other group, or an unknown one", () => {
    expect(noOpenIngress(T.ingressRule, rule({ fromPort: 22, toPort: 22 }), appGroup)).toHaveLength(1);
    expect(noOpenIngress(T.ingressRule, rule({}), undefined)).toHaveLength(1);
  });
  test("non-world sources pass", () => {
    expect(
      noOpenIngress(
        T.ingressRule,
        rule({ cidrIpv4: "10.40.0.0/16", fromPort: 5432, toPort: 5432 }),
        appGroup,
      ),
    ).toEqual([]);
    expect(
      noOpenIngress(
        T.ingressRule,
        { ipProtocol: "tcp", fromPort: 22, toPort: 22, referencedSecurityGroupId: "sg-1" },
        appGroup,
      ),
    ).toEqual([]);
  });
  test("aws.ec2.SecurityGroupRule: ingress only, cidrBlocks and ipv6CidrBlocks, protocol numbers", () => {
    const sgr = { type: "ingress", protocol: "6", fromPort: 22, toPort: 22, cidrBlocks: ["0.0.0.0/0"] };
    expect(noOpenIngress(T.securityGroupRule, sgr, balancerGroup)).toEqual([]);
    expect(noOpenIngress(T.securityGroupRule, sgr, appGroup)).toHaveLength(1);
    expect(noOpenIngress(T.securityGroupRule, { ...sgr, type: "egress" }, appGroup)).toEqual([]);
    expect(
      noOpenIngress(
        T.securityGroupRule,
        { ...sgr, cidrBlocks: [], ipv6CidrBlocks: ["::/0"], fromPort: 0, toPort: 65535 },
        balancerGroup,
      ),
    ).toHaveLength(1);
  });
  test("inline ingress on aws.ec2.SecurityGroup is judged by the group's own tags", () => {
    const ingress = [
      { protocol: "tcp", fromPort: 443, toPort: 443, cidrBlocks: ["0.0.0.0/0"] },
      { protocol: "tcp", fromPort: 5432, toPort: 5432, cidrBlocks: ["10.0.0.0/8"] },
    ];
    expect(noOpenIngress(T.securityGroup, { ingress, tags: balancerGroup.tags })).toEqual([]);
    expect(noOpenIngress(T.securityGroup, { ingress, tags: appGroup.tags })).toEqual([
      "ingress[0]: tcp/443 from 0.0.0.0/0: world ingress is allowed only on the balancer security group",
    ]);
    expect(
      noOpenIngress(T.securityGroup, {
        ingress: [{ protocol: "-1", fromPort: 0, toPort: 0, cidrBlocks: ["0.0.0.0/0"] }],
        tags: balancerGroup.tags,
      }),
    ).toHaveLength(1);
  });
  test("the balancer group: pypi:role tag wins, else the Network's <name>-balancer naming", () => {
    expect(isBalancerGroup(balancerGroup)).toBe(true);
    expect(isBalancerGroup({ name: "pypi-net-balancer" })).toBe(true);
    expect(isBalancerGroup({ tags: { Name: "pypi-net-balancer", "pypi:role": "app" } })).toBe(false);
    expect(isBalancerGroup({ tags: { "pypi:role": "balancer" } })).toBe(true);
    expect(isBalancerGroup({ name: "pypi-net-app" })).toBe(false);
    expect(isBalancerGroup({ name: "not-a-balancer-group" })).toBe(false);
    expect(isBalancerGroup(undefined)).toBe(false);
  });
  test("the stack form finds a rule's group by dependency or by id", () => {
    const res = (type: string, name: string, props: Record<string, unknown>, deps = {}): StackResource => ({
      type,
      name,
      urn: `urn:${name}`,
      props,
      propertyDependencies: deps,
    });
    const lb = res(T.securityGroup, "pypi-net-balancer", { id: "sg-lb", tags: balancerGroup.tags });
    const app = res(T.securityGroup, "pypi-net-app", { id: "sg-app", tags: appGroup.tags });
    const https = { ipProtocol: "tcp", fromPort: 443, toPort: 443, cidrIpv4: "0.0.0.0/0" };
    expect(
      openIngressViolations([
        lb,
        app,
        res(T.ingressRule, "a", { ...https }, { securityGroupId: [{ urn: "urn:pypi-net-balancer" }] }),
      ]),
    ).toEqual([]);
    expect(
      openIngressViolations([lb, app, res(T.ingressRule, "b", { ...https, securityGroupId: "sg-lb" })]),
    ).toEqual([]);
    expect(
      openIngressViolations([lb, app, res(T.ingressRule, "c", { ...https, securityGroupId: "sg-app" })]),
    ).toHaveLength(1);
    // During a first preview the id is unknown and there is no dependency: not the balancer group.
    expect(openIngressViolations([lb, app, res(T.ingressRule, "d", { ...https })])).toHaveLength(1);
  });
});

describe("no-public-ips", () => {
  test("instances, launch templates and subnets", () => {
    expect(noPublicIps(T.instance, compliantInstance)).toEqual([]);
    expect(noPublicIps(T.instance, { associatePublicIpAddress: false })).toEqual([]);
    expect(noPublicIps(T.instance, { associatePublicIpAddress: true })).toHaveLength(1);
    expect(
      noPublicIps(T.launchTemplate, { networkInterfaces: [{ associatePublicIpAddress: "true" }] }),
    ).toHaveLength(1);
    expect(
      noPublicIps(T.launchTemplate, { networkInterfaces: [{ associatePublicIpAddress: "false" }] }),
    ).toEqual([]);
    expect(noPublicIps(T.subnet, { mapPublicIpOnLaunch: true })).toHaveLength(1);
    expect(noPublicIps(T.subnet, { mapPublicIpOnLaunch: false })).toEqual([]);
    expect(noPublicIps(T.subnet, {})).toEqual([]);
    expect(noPublicIps(T.eip, { domain: "vpc" })).toEqual([]);
  });
});

describe("no-eip-association", () => {
  test("EipAssociation and inline associations fire; a bare allocation passes", () => {
    expect(
      noEipAssociation(T.eipAssociation, { allocationId: "eipalloc-1", instanceId: "i-1" }),
    ).toHaveLength(1);
    expect(noEipAssociation(T.eip, { domain: "vpc", tags: {} })).toEqual([]);
    expect(noEipAssociation(T.eip, { domain: "vpc", instance: "i-1" })).toHaveLength(1);
    expect(noEipAssociation(T.eip, { domain: "vpc", networkInterface: "eni-1" })).toHaveLength(1);
  });

  test("a balancer's egress address may be bound to its primary IP; a floating IP never", () => {
    const egress = {
      domain: "vpc",
      networkInterface: "eni-1",
      associateWithPrivateIp: "10.40.0.10",
      tags: { "pypi:egress": "lb-a" },
    };
    expect(noEipAssociation(T.eip, egress)).toEqual([]);
    expect(
      noEipAssociation(T.eip, { ...egress, tags: { "pypi:egress": "lb-a", "pypi:home": "lb-a" } }),
    ).toHaveLength(1);
    expect(noEipAssociation(T.eip, { ...egress, associateWithPrivateIp: undefined })).toHaveLength(1);
    expect(noEipAssociation(T.eip, { ...egress, instance: "i-1" })).toHaveLength(1);
    expect(noEipAssociation(T.eip, { ...egress, tags: {} })).toHaveLength(1);
  });
});

describe("s3-no-public-access and s3-bucket-private-encrypted", () => {
  const block = {
    bucket: "b",
    blockPublicAcls: true,
    blockPublicPolicy: true,
    ignorePublicAcls: true,
    restrictPublicBuckets: true,
  };
  const sse = { bucket: "b", rules: [{ applyServerSideEncryptionByDefault: { sseAlgorithm: "AES256" } }] };
  test("public access blocks must block everything; no public ACL or grant", () => {
    expect(bucketPrivate(T.publicAccessBlock, block)).toEqual([]);
    expect(bucketPrivate(T.publicAccessBlock, { ...block, blockPublicPolicy: false })).toEqual([
      "blockPublicPolicy is not true",
    ]);
    expect(bucketPrivate(T.bucket, { acl: "private" })).toEqual([]);
    expect(bucketPrivate(T.bucket, { acl: "public-read" })).toHaveLength(1);
    expect(bucketPrivate(T.bucketObjectV2, { acl: "public-read-write" })).toHaveLength(1);
    expect(
      bucketPrivate(T.bucketAclV2, {
        accessControlPolicy: {
          grants: [{ grantee: { uri: "http://acs.amazonaws.com/groups/global/AllUsers" } }],
        },
      }),
    ).toHaveLength(1);
  });
  test("a bucket needs an all-true access block and default encryption", () => {
    const companions = [
      { type: T.publicAccessBlock, props: block },
      { type: T.sse, props: sse },
    ];
    expect(bucketHardened({ props: {}, companions })).toEqual([]);
    expect(bucketHardened({ props: {}, companions: [companions[1]!] })).toEqual([
      "has no BucketPublicAccessBlock",
    ]);
    expect(bucketHardened({ props: {}, companions: [companions[0]!] })).toHaveLength(1);
    expect(
      bucketHardened({
        props: {},
        companions: [
          companions[0]!,
          { type: T.sse, props: { rules: [{ applyServerSideEncryptionByDefault: {} }] } },
        ],
      }),
    ).toHaveLength(1);
    expect(
      bucketHardened({
        props: {},
        companions: [
          { type: T.publicAccessBlock, props: { ...block, ignorePublicAcls: false } },
          companions[1]!,
        ],
      }),
    ).toEqual(["access block: ignorePublicAcls is not true"]);
  });
  test("the stack form pairs companions with their bucket", () => {
    const r = (type: string, name: string, props: Record<string, unknown>): StackResource => ({
      type,
      name,
      urn: `urn:${name}`,
      props,
      propertyDependencies: {},
    });
    const bucket = r(T.bucket, "bundles", { id: "b" });
    const other = r(T.bucket, "other", { id: "c" });
    const stack = [bucket, other, r(T.publicAccessBlock, "pab", block), r(T.sse, "sse", sse)];
    expect(bucketViolations(stack).map((v) => v.urn)).toEqual(["urn:other", "urn:other"]);
  });
});

describe("no-secrets-in-user-data", () => {
  const password = () => {
    const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    return [...randomBytes(32)].map((b) => alphabet[b % 62]).join("");
  };
  test("finds private keys, AWS key ids, password assignments and random tokens", () => {
    expect(
      findSecrets("-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n-----END OPENSSH PRIVATE KEY-----"),
    ).toEqual(["a PEM/OpenSSH private key"]);
    expect(findSecrets("-----BEGIN EC PRIVATE KEY-----")).toHaveLength(1);
    expect(findSecrets("key: AKIAIOSFODNN7EXAMPLE")).toContain("an AWS access key id");
    expect(findSecrets("db_password=hunter22")).toContain("a password/secret assignment");
    expect(findSecrets('PGPASSWORD: "s3cretvalue"')).toContain("a password/secret assignment");
    // 20 tries: a random 32-character password is always caught.
    for (let i = 0; i < 20; i++)
      expect(findSecrets(`export X=${password()}`)).toContain("a high-entropy token");
    expect(findSecrets(`url: https://x/${password()}/y`)).toContain("a high-entropy token");
  });
  test("leaves ordinary user data alone", () => {
    expect(findSecrets('password="$PYPI_PASSWORD"')).toEqual([]);
    expect(
      findSecrets("AWS_EC2_METADATA_V1_DISABLED=true /usr/local/sbin/pypi-bootstrap-ConfigV2Reload"),
    ).toEqual([]);
    expect(findSecrets(`sha256=${"0123456789abcdef".repeat(4)}`)).toEqual([]);
    expect(
      findSecrets(
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOSo4zAbY5A+HZv+4ykxh0PPHxpDXhjQIErpyHgcDoc2 alice@example.org",
      ),
    ).toEqual([]);
    expect(
      findSecrets(
        "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUQ3xk9zR7Yp2LmN4vWq8s\n-----END CERTIFICATE-----",
      ),
    ).toEqual([]);
  });
  test("every node's rendered user data passes, for both shapes", () => {
    for (const shape of ["staging", "prod"] as const) {
      const t = topologyFor(shape, 15);
      for (const node of t.nodes)
        expect(
          noSecretsInUserData(T.instance, { userData: renderCloudInit(t, node, BASE_PACKAGES) }),
          node.name,
        ).toEqual([]);
    }
  });
  test("launch templates carry base64 user data; it is decoded before the check", () => {
    const encoded = Buffer.from("#cloud-config\nruncmd:\n  - echo password=hunter22\n").toString("base64");
    expect(decodeBase64(encoded)).toContain("password=hunter22");
    expect(noSecretsInUserData(T.launchTemplate, { userData: encoded })).toEqual([
      "userData contains a password/secret assignment",
    ]);
    expect(noSecretsInUserData(T.instance, { userDataBase64: encoded })).toHaveLength(1);
    expect(noSecretsInUserData(T.instance, compliantInstance)).toEqual([]);
    // Messages say what was found, never the value.
    const secret = password();
    expect(noSecretsInUserData(T.instance, { userData: `X=${secret}` }).join()).not.toContain(secret);
  });
});
