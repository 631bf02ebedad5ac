import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import {
  type AwsAccount,
  bundleReadStatements,
  ec2Arn,
  instanceRole,
  type PolicyStatement,
  parameterReadStatements,
  rolePolicy,
} from "./iam.js";
import {
  createInstance,
  createInterface,
  type LaunchArgs,
  type LaunchedNode,
  nodeSuffix,
  type PlannedNode,
  validateLaunchArgs,
} from "./node.js";

export interface BalancerPairArgs extends LaunchArgs {
  /** The two balancers, one per AZ, each with one spare secondary private IP per floating IP. */
  readonly nodes: readonly [PlannedNode, PlannedNode];
  /** How many floating IPs (EIPs) to allocate; the i-th one's home is `nodes[i % 2]`. */
  readonly floatingIps: number;
  /** ARN of the bundle bucket; the role reads only `bundles/<balancer>/`. */
  readonly bundleBucketArn: pulumi.Input<string>;
  /** ARNs of the SSM parameters the balancers fetch (Heartbeat authkey, TLS). */
  readonly parameterArns: readonly pulumi.Input<string>[];
  readonly account: pulumi.Input<AwsAccount>;
  /**
   * Protect and retain the EIPs (clients and DNS point at them).
   * @default false
   */
  readonly retainAddresses?: boolean;
}

export function validateBalancerPairArgs(args: BalancerPairArgs): void {
  const [a, b] = args.nodes;
  if (args.nodes.length !== 2 || a.role !== "balancer" || b.role !== "balancer")
    throw new Error(
      `BalancerPair: nodes ${JSON.stringify(args.nodes.map((n) => `${n.name}:${n.role}`))} is not valid; expected exactly 2 balancers`,
    );
  if (a.azIndex === b.azIndex)
    throw new Error(
      `BalancerPair: nodes ${a.name} and ${b.name} share AZ ${JSON.stringify(a.az)}; expected two AZs`,
    );
  if (!Number.isInteger(args.floatingIps) || args.floatingIps < 1 || args.floatingIps > 8)
    throw new Error(
      `BalancerPair: floatingIps ${JSON.stringify(args.floatingIps)} is not valid; expected 1-8`,
    );
  for (const node of args.nodes) {
    if (node.secondaryIps.length !== args.floatingIps)
      throw new Error(
        `BalancerPair: ${node.name}.secondaryIps ${JSON.stringify(node.secondaryIps)} is not valid; expected ${args.floatingIps} (one per floating IP)`,
      );
  }
  validateLaunchArgs("BalancerPair", args.nodes, args);
}

/** Balancer statements: associate/disassociate only these EIPs on these two interfaces. */
export function floatingIpStatements(
  account: AwsAccount,
  allocationIds: readonly string[],
  eniIds: readonly string[],
): PolicyStatement[] {
  return [
    {
      Sid: "MoveOwnFloatingIps",
      Effect: "Allow",
      Action: ["ec2:AssociateAddress", "ec2:DisassociateAddress"],
      Resource: [
        ...allocationIds.map((id) => ec2Arn(account, "elastic-ip", id)),
        ...eniIds.map((id) => ec2Arn(account, "network-interface", id)),
      ],
    },
    { Sid: "DescribeAddresses", Effect: "Allow", Action: ["ec2:DescribeAddresses"], Resource: "*" },
  ];
}

/**
 * Two Nginx/HAProxy/Heartbeat balancers in different AZs and the floating IPs they share.
 * Pulumi allocates the EIPs but never associates them: Heartbeat owns the associations, so a
 * managed association would undo every failover on the next `up`.
 */
export class BalancerPair extends pulumi.ComponentResource {
  readonly nodes: readonly LaunchedNode[];
  readonly eips: readonly aws.ec2.Eip[];
  /** Home balancer (node name) of each floating IP, in floating-IP order. */
  readonly homes: readonly string[];

  constructor(name: string, args: BalancerPairArgs, opts: pulumi.ComponentResourceOptions = {}) {
    super("pypi:infra:BalancerPair", name, {}, opts);
    validateBalancerPairArgs(args);
    const retain = args.retainAddresses ?? false;
    this.homes = Array.from({ length: args.floatingIps }, (_, i) => args.nodes[i % 2]?.name ?? "");
    this.eips = this.homes.map(
      (home, i) =>
        new aws.ec2.Eip(
          `${name}-fip-${i + 1}`,
          { domain: "vpc", tags: { ...args.tags, Name: `${name}-fip-${i + 1}`, "pypi:home": home } },
          { parent: this, protect: retain, retainOnDelete: retain },
        ),
    );
    const { role, profile } = instanceRole(this, name, { account: args.account, tags: args.tags ?? {} });
    const enis = args.nodes.map((spec) =>
      createInterface(this, `${name}-${nodeSuffix(spec)}`, spec, { ...args, sourceDestCheck: true }),
    );
    const statements = pulumi
      .all([
        args.account,
        pulumi.all(this.eips.map((e) => e.allocationId)),
        pulumi.all(enis.map((e) => e.id)),
        args.bundleBucketArn,
        pulumi.all([...args.parameterArns]),
      ])
      .apply(([account, allocations, eniIds, bucketArn, parameters]) => [
        ...floatingIpStatements(account, allocations, eniIds),
        ...bundleReadStatements(
          bucketArn,
          args.nodes.map((n) => n.name),
        ),
        ...parameterReadStatements(parameters),
      ]);
    const policy = rolePolicy(this, name, role, statements);
    this.nodes = args.nodes.map((spec, i) => {
      const eni = enis[i] as aws.ec2.NetworkInterface;
      const launch = { ...args, profile, policy, sourceDestCheck: true };
      return { spec, eni, instance: createInstance(this, `${name}-${nodeSuffix(spec)}`, spec, eni, launch) };
    });
    this.registerOutputs({
      floatingIps: this.eips.map((e) => e.publicIp),
      instanceIds: this.nodes.map((n) => n.instance.id),
    });
  }
}
