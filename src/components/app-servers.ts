import type * as aws from "@pulumi/aws";
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
  routeStatements,
} from "./iam.js";
import {
  type LaunchArgs,
  type LaunchedNode,
  launchNode,
  nodeSuffix,
  type PlannedNode,
  requireRouteTables,
  validateLaunchArgs,
} from "./node.js";

export interface AppServersArgs extends LaunchArgs {
  /** The app servers, spread over both AZs; the first two form the DRBD/NFS storage pair. */
  readonly nodes: readonly PlannedNode[];
  /** ARN of the bundle bucket; the role reads only `bundles/<app server>/`. */
  readonly bundleBucketArn: pulumi.Input<string>;
  /** ARNs of the SSM parameters the app servers beyond the storage pair fetch (host key, app password). */
  readonly parameterArns: readonly pulumi.Input<string>[];
  /** ARNs of the SSM parameters the storage pair fetches: those plus the DRBD and storage Heartbeat keys. */
  readonly storageParameterArns: readonly pulumi.Input<string>[];
  /** Private route tables whose storage overlay route the storage primary takes over (storage pair only). */
  readonly routeTableIds: readonly pulumi.Input<string>[];
  readonly account: pulumi.Input<AwsAccount>;
  /**
   * The backup buckets: the roles write the package file copies and are denied tampering with both.
   * @default - no backup statements
   */
  readonly backupBucketArns?: BackupBucketArns;
}

export function validateAppServersArgs(args: AppServersArgs): void {
  requireRouteTables("AppServers", "routeTableIds", args.routeTableIds);
  validateLaunchArgs("AppServers", args.nodes, args);
}

/** Apache + upload sshd app servers; the first two also carry DRBD, NFS and the storage Heartbeat. */
export class AppServers extends pulumi.ComponentResource {
  readonly nodes: readonly LaunchedNode[];

  constructor(name: string, args: AppServersArgs, opts: pulumi.ComponentResourceOptions = {}) {
    super("pypi:infra:AppServers", name, {}, opts);
    validateAppServersArgs(args);
    // The storage pair has a role of its own: only it holds the storage secrets and may move
    // the storage route. The other app servers' role can do neither.
    const others = args.nodes.slice(2);
    const storage = appRole(
      this,
      `${name}-storage`,
      args,
      args.nodes.slice(0, 2),
      args.storageParameterArns,
      args.routeTableIds,
    );
    const plain = others.length > 0 ? appRole(this, name, args, others, args.parameterArns, []) : storage;
    this.nodes = args.nodes.map((spec, i) =>
      launchNode(this, `${name}-${nodeSuffix(spec)}`, spec, {
        ...args,
        ...(i < 2 ? storage : plain),
        // Only the storage pair receives packets for the storage overlay address.
        sourceDestCheck: i >= 2,
      }),
    );
    this.registerOutputs({ instanceIds: this.nodes.map((n) => n.instance.id) });
  }
}

/** Role, instance profile and policy of one group of app servers. */
function appRole(
  parent: pulumi.Resource,
  name: string,
  args: AppServersArgs,
  nodes: readonly PlannedNode[],
  parameterArns: readonly pulumi.Input<string>[],
  routeTableIds: readonly pulumi.Input<string>[],
): { profile: aws.iam.InstanceProfile; policy: aws.iam.RolePolicy } {
  const { role, profile } = instanceRole(parent, name, { account: args.account, tags: args.tags ?? {} });
  const statements = pulumi
    .all([
      args.account,
      args.bundleBucketArn,
      pulumi.all([...parameterArns]),
      pulumi.all([...routeTableIds]),
      args.backupBucketArns,
    ])
    .apply(([account, bucketArn, parameters, routeTables, backup]) => [
      ...bundleReadStatements(
        bucketArn,
        nodes.map((n) => n.name),
      ),
      ...parameterReadStatements(parameters),
      ...(routeTables.length > 0 ? routeStatements(account, routeTables) : []),
      ...backupStatements("app", backup),
      ...healthMetricStatements(args.metricNamespace),
    ]);
  return { profile, policy: rolePolicy(parent, name, role, statements) };
}
