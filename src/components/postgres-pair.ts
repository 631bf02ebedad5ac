import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import {
  type AwsAccount,
  type BackupBucketArns,
  backupStatements,
  bundleReadStatements,
  healthMetricStatements,
  instanceRole,
  parameterReadStatements,
  rolePolicy,
  routeBrokerInvokeStatements,
} from "./iam.js";
import {
  attachDataVolume,
  type LaunchArgs,
  type LaunchedNode,
  launchNode,
  nodeSuffix,
  type PlannedNode,
  requireRouteTables,
  validateLaunchArgs,
} from "./node.js";

export interface PostgresPairArgs extends LaunchArgs {
  /** Primary first, then the standby; one per AZ. */
  readonly nodes: readonly [PlannedNode, PlannedNode];
  /** Size of each node's encrypted data volume. */
  readonly dataVolumeGb: number;
  /** Writer overlay address (outside the VPC CIDR) routed to the primary. */
  readonly writerAddress: string;
  /** Private route tables that carry the writer route (one per AZ). */
  readonly routeTables: readonly aws.ec2.RouteTable[];
  /** ARN of the writer's route broker: the one Lambda function the role may invoke. */
  readonly routeBrokerArn: pulumi.Input<string>;
  /** ARN of the bundle bucket; the role reads only `bundles/<db node>/`. */
  readonly bundleBucketArn: pulumi.Input<string>;
  /** ARNs of the SSM parameters the databases fetch (replication password). */
  readonly parameterArns: readonly pulumi.Input<string>[];
  readonly account: pulumi.Input<AwsAccount>;
  /**
   * The backup buckets: the role writes pgBackRest's repository and is denied tampering with both.
   * @default - no backup statements
   */
  readonly backupBucketArns?: BackupBucketArns;
  /**
   * Protect and retain the data volumes.
   * @default false
   */
  readonly retainData?: boolean;
}

export function validatePostgresPairArgs(args: PostgresPairArgs): void {
  requireRouteTables("PostgresPair", "routeTables", args.routeTables);
  validateLaunchArgs("PostgresPair", args.nodes, args);
}

/**
 * Overlay route `address/32` -> `eni` in every given route table. The route broker moves the
 * target on failover, so Pulumi ignores it after creation, as it ignores EIP associations: it
 * must not fight a failover.
 */
export function overlayRoutes(
  parent: pulumi.Resource,
  name: string,
  address: string,
  routeTables: readonly aws.ec2.RouteTable[],
  eni: aws.ec2.NetworkInterface,
): aws.ec2.Route[] {
  return routeTables.map(
    (rt, i) =>
      new aws.ec2.Route(
        `${name}-${String.fromCharCode(97 + i)}`,
        { routeTableId: rt.id, destinationCidrBlock: `${address}/32`, networkInterfaceId: eni.id },
        { parent, ignoreChanges: ["networkInterfaceId"] },
      ),
  );
}

/** Postgres primary/standby pair in two AZs with encrypted data volumes and the writer route. */
export class PostgresPair extends pulumi.ComponentResource {
  readonly nodes: readonly LaunchedNode[];
  readonly dataVolumes: readonly aws.ebs.Volume[];
  readonly writerRoutes: readonly aws.ec2.Route[];

  constructor(name: string, args: PostgresPairArgs, opts: pulumi.ComponentResourceOptions = {}) {
    super("pypi:infra:PostgresPair", name, {}, opts);
    validatePostgresPairArgs(args);
    const retain = args.retainData ?? false;
    const { role, profile } = instanceRole(this, name, { account: args.account, tags: args.tags ?? {} });
    const statements = pulumi
      .all([
        args.bundleBucketArn,
        pulumi.all([...args.parameterArns]),
        args.routeBrokerArn,
        args.backupBucketArns,
      ])
      .apply(([bucketArn, parameters, brokerArn, backup]) => [
        ...bundleReadStatements(
          bucketArn,
          args.nodes.map((n) => n.name),
        ),
        ...parameterReadStatements(parameters),
        ...routeBrokerInvokeStatements(brokerArn),
        ...backupStatements("db", backup),
        ...healthMetricStatements(args.metricNamespace),
      ]);
    const policy = rolePolicy(this, name, role, statements);
    this.nodes = args.nodes.map((spec) =>
      launchNode(this, `${name}-${nodeSuffix(spec)}`, spec, {
        ...args,
        profile,
        policy,
        sourceDestCheck: false,
      }),
    );
    this.dataVolumes = this.nodes.map((node) =>
      attachDataVolume(this, `${name}-${nodeSuffix(node.spec)}-data`, node, {
        sizeGb: args.dataVolumeGb,
        nameTag: `${node.spec.name}-data`,
        tags: args.tags,
        retain,
      }),
    );
    const primary = this.nodes[0] as LaunchedNode;
    this.writerRoutes = overlayRoutes(
      this,
      `${name}-writer`,
      args.writerAddress,
      args.routeTables,
      primary.eni,
    );
    this.registerOutputs({ instanceIds: this.nodes.map((n) => n.instance.id) });
  }
}
