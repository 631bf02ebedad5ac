import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import {
  type AwsAccount,
  type BackupBucketArns,
  backupStatements,
  bundleReadStatements,
  ec2Arn,
  healthMetricStatements,
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
   * The backup buckets, which balancers never use: the role only gets the Deny on both.
   * @default - no backup statements
   */
  readonly backupBucketArns?: BackupBucketArns;
  /**
   * Protect and retain the EIPs (clients and DNS point at them).
   * @default false
   */
  readonly retainAddresses?: boolean;
  /**
   * The VPC's internet gateway: an EIP association needs it attached first.
   * @default - no explicit dependency
   */
  readonly internetGateway?: pulumi.Resource;
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
  /** Each balancer's own egress address, fixed on its primary private IP (see below). */
  readonly egressIps: readonly aws.ec2.Eip[];
  /** Home balancer (node name) of each floating IP, in floating-IP order. */
  readonly homes: readonly string[];

  constructor(name: string, args: BalancerPairArgs, opts: pulumi.ComponentResourceOptions = {}) {
    super("pypi:infra:BalancerPair", name, {}, opts);
    validateLaunchArgs("BalancerPair", args.nodes, args);
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
    /*
     * The balancers' way out to the Debian mirrors (apt at first boot and after). A public
     * subnet routes 0.0.0.0/0 to the internet gateway, which forwards only packets from an
     * address that has a public IP, and the floating EIPs sit on the spare secondaries, on
     * whichever balancer holds them (lb-b holds none while lb-a is up in staging).
     * - An auto-assigned public IP is impossible here: EC2 gives one only to a primary ENI
     *   created at launch, and these ENIs exist before the instance (fixed addresses).
     * - Routing the public subnet's default to a NAT gateway would send replies to clients of
     *   the floating IPs out through the NAT, with the wrong source: every connection breaks.
     * So each balancer gets one more EIP, bound by Pulumi to its primary private address. It
     * never moves (Heartbeat moves only the floating EIPs, onto secondaries), so a managed
     * association fights no failover. AWS APIs and S3 do not use it: they go to the VPC
     * endpoints, so a failover depends on no internet path.
     */
    this.egressIps = args.nodes.map((spec, i) => {
      const eni = enis[i] as aws.ec2.NetworkInterface;
      return new aws.ec2.Eip(
        `${name}-egress-${nodeSuffix(spec)}`,
        {
          domain: "vpc",
          networkInterface: eni.id,
          associateWithPrivateIp: spec.privateIp,
          tags: { ...args.tags, Name: `${spec.name}-egress`, "pypi:egress": spec.name },
        },
        { parent: this, dependsOn: args.internetGateway ? [args.internetGateway] : [] },
      );
    });
    const statements = pulumi
      .all([
        args.account,
        pulumi.all(this.eips.map((e) => e.allocationId)),
        pulumi.all(enis.map((e) => e.id)),
        args.bundleBucketArn,
        pulumi.all([...args.parameterArns]),
        args.backupBucketArns,
      ])
      .apply(([account, allocations, eniIds, bucketArn, parameters, backup]) => [
        ...floatingIpStatements(account, allocations, eniIds),
        ...bundleReadStatements(
          bucketArn,
          args.nodes.map((n) => n.name),
        ),
        ...parameterReadStatements(parameters),
        ...backupStatements("balancer", backup),
        ...healthMetricStatements(args.metricNamespace),
      ]);
    const policy = rolePolicy(this, name, role, statements);
    this.nodes = args.nodes.map((spec, i) => {
      const eni = enis[i] as aws.ec2.NetworkInterface;
      const egress = this.egressIps[i] as aws.ec2.Eip;
      const bootAfter = [...(args.bootAfter ?? []), egress];
      const launch = { ...args, profile, policy, sourceDestCheck: true, bootAfter };
      return { spec, eni, instance: createInstance(this, `${name}-${nodeSuffix(spec)}`, spec, eni, launch) };
    });
    this.registerOutputs({
      floatingIps: this.eips.map((e) => e.publicIp),
      instanceIds: this.nodes.map((n) => n.instance.id),
    });
  }
}
