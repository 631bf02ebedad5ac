import { gzipSync } from "node:zlib";
import { beforeAll, describe, expect, test } from "vitest";
import { attachedNodes, openIngressViolations, type StackResource } from "../../policy/policies.js";
import { T } from "../../policy/rules.js";
import { type Built, builtStack } from "../stack/harness.js";
import { firstPreview, runPack, stackResources } from "./pack.js";

/**
 * The holes the pack used to have, each opened on a real stack: the pack must turn red, and
 * the compliant form of the same change must keep it green.
 */
describe.each(["staging", "prod"] as const)(
  "the %s stack: attachments, launch paths, bucket policies",
  (stack) => {
    let built: Built;
    let resources: StackResource[];
    beforeAll(async () => {
      built = await builtStack(stack);
      resources = stackResources(built, stack);
    }, 60_000);

    const find = (type: string, name: string) => {
      const r = resources.find((x) => x.type === type && x.name === name);
      if (!r) throw new Error(`no ${type} ${name}`);
      return r;
    };
    const replace = (r: StackResource, props: Record<string, unknown>) =>
      resources.map((x) => (x === r ? { ...x, props: { ...x.props, ...props } } : x));
    const policiesFired = async (rs: readonly StackResource[]) =>
      [...new Set((await runPack(rs)).map((v) => v.policy))].sort();
    const add = (type: string, name: string, props: Record<string, unknown>): StackResource => ({
      type,
      name,
      urn: `urn:pulumi:${stack}::pypi-infra::${type}::${name}`,
      props,
      propertyDependencies: {},
    });

    test("every node is judged by its own role tag and the groups actually attached to it", () => {
      const nodes = attachedNodes(resources);
      const instances = nodes.filter((n) => n.node.type === T.instance);
      expect(instances.length).toBe(resources.filter((r) => r.type === T.instance).length);
      for (const n of instances) {
        expect(n.role, n.node.name).toBe((n.node.props.tags as Record<string, string>)["pypi:role"]);
        expect(
          n.groups.map((g) => g.name),
          n.node.name,
        ).toEqual([`pypi-net-${n.role}`]);
      }
      // Interfaces belong to their instances; the endpoints are the only other holders (Lambda's
      // has a group of its own).
      expect(nodes.filter((n) => n.node.type === T.networkInterface)).toEqual([]);
      expect(
        new Set(
          nodes.filter((n) => n.node.type !== T.instance).map((n) => n.groups.map((g) => g.name).join()),
        ),
      ).toEqual(new Set(["pypi-net-endpoint", "pypi-net-lambda"]));
    });

    test("a first preview (ids unknown, only dependencies) resolves the same and passes", () => {
      expect(openIngressViolations(firstPreview(resources))).toEqual([]);
    });

    test("the balancer group on an app server's interface exposes it, in a preview too", async () => {
      const eni = find(T.networkInterface, "pypi-app-a-eni");
      const lbGroup = find(T.securityGroup, "pypi-net-balancer");
      const changed = resources.map((r) =>
        r === eni
          ? {
              ...r,
              props: {
                ...r.props,
                securityGroups: [...(r.props.securityGroups as string[]), lbGroup.props.id],
              },
              propertyDependencies: {
                ...r.propertyDependencies,
                securityGroups: [...(r.propertyDependencies.securityGroups ?? []), { urn: lbGroup.urn }],
              },
            }
          : r,
      );
      expect(await policiesFired(changed)).toEqual(["sg-no-world-ingress"]);
      for (const rs of [changed, firstPreview(changed)]) {
        const found = openIngressViolations(rs);
        expect(new Set(found.map((v) => v.urn))).toEqual(new Set([find(T.instance, "pypi-app-a").urn]));
        expect(found.map((v) => v.message.split(" is open")[0]).sort()).toEqual(
          ["pypi-app-a: tcp/22", "pypi-app-a: tcp/443", "pypi-app-a: tcp/80"].sort(),
        );
      }
    });

    test("the world written as two /1s on the app group fires", async () => {
      const app = find(T.securityGroup, "pypi-net-app");
      const rule = (name: string, cidr: string) =>
        add(T.ingressRule, name, {
          securityGroupId: app.props.id,
          ipProtocol: "tcp",
          fromPort: 22,
          toPort: 22,
          cidrIpv4: cidr,
        });
      const changed = [...resources, rule("low", "0.0.0.0/1"), rule("high", "128.0.0.0/1")];
      expect(await policiesFired(changed)).toEqual(["sg-no-world-ingress"]);
      const apps = resources.filter((r) => r.type === T.instance && r.name.startsWith("pypi-app-"));
      expect(openIngressViolations(changed).map((v) => v.urn)).toEqual(apps.map((a) => a.urn));
    });

    test("spot requests and launch templates get every instance rule; compliant ones pass", async () => {
      const instance = find(T.instance, "pypi-app-a");
      const leaky = gzipSync('#cloud-config\nwrite_files:\n  - content: \'{"db_password": "hunter22"}\'\n');
      const clean = gzipSync("#cloud-config\nhostname: spare\n");
      const spot = (props: Record<string, unknown>) =>
        add(T.spotInstanceRequest, "spare", {
          ami: instance.props.ami,
          instanceType: "t3.small",
          metadataOptions: { httpTokens: "required" },
          rootBlockDevice: { encrypted: true },
          userDataBase64: clean.toString("base64"),
          tags: { "pypi:role": "app" },
          ...props,
        });
      const template = (props: Record<string, unknown>) =>
        add(T.launchTemplate, "spare-lt", {
          imageId: instance.props.ami,
          metadataOptions: { httpTokens: "required" },
          blockDeviceMappings: [{ deviceName: "/dev/xvda", ebs: { encrypted: "true" } }],
          networkInterfaces: [{ associatePublicIpAddress: "false" }],
          userData: clean.toString("base64"),
          ...props,
        });
      expect(await policiesFired([...resources, spot({}), template({})])).toEqual([]);
      const cases: [string, StackResource][] = [
        ["ec2-imdsv2-required", spot({ metadataOptions: { httpTokens: "optional" } })],
        ["ebs-encrypted", spot({ rootBlockDevice: { volumeSize: 16 } })],
        ["no-public-ips", spot({ associatePublicIpAddress: true })],
        ["no-secrets-in-user-data", spot({ userDataBase64: leaky.toString("base64") })],
        ["ec2-imdsv2-required", template({ metadataOptions: {} })],
        ["ebs-encrypted", template({ blockDeviceMappings: [] })],
        ["no-public-ips", template({ networkInterfaces: [{ associatePublicIpAddress: "true" }] })],
        ["no-secrets-in-user-data", template({ userData: leaky.toString("base64") })],
      ];
      for (const [policy, r] of cases)
        expect(await policiesFired([...resources, r]), policy).toEqual([policy]);
    });

    test("a public bucket policy fires; a TLS-only or VPC-endpoint-pinned one passes", async () => {
      const bucket = find(T.bucket, "pypi-bundles-bucket");
      const arn = `arn:aws:s3:::${String(bucket.props.id)}`;
      const bucketPolicy = (statement: Record<string, unknown>) =>
        add(T.bucketPolicy, "bundles-policy", {
          bucket: bucket.props.id,
          policy: JSON.stringify({ Version: "2012-10-17", Statement: [statement] }),
        });
      const read = {
        Effect: "Allow",
        Principal: { AWS: ["*"] },
        Action: "s3:GetObject",
        Resource: `${arn}/*`,
      };
      expect(await policiesFired([...resources, bucketPolicy(read)])).toEqual(["s3-no-public-bucket-policy"]);
      const pinned = { ...read, Condition: { StringEquals: { "aws:SourceVpce": "vpce-0123456789abcdef0" } } };
      const tlsOnly = {
        Effect: "Deny",
        Principal: "*",
        Action: "s3:*",
        Resource: [arn, `${arn}/*`],
        Condition: { Bool: { "aws:SecureTransport": "false" } },
      };
      expect(await policiesFired([...resources, bucketPolicy(pinned)])).toEqual([]);
      expect(await policiesFired([...resources, bucketPolicy(tlsOnly)])).toEqual([]);
      expect(await policiesFired(replace(bucket, { acl: "public-read" }))).toEqual(["s3-no-public-access"]);
    });
  },
);
