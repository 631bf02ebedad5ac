import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import {
  type AwsAccount,
  type BackupBucketArns,
  backupStatements,
  bundleReadStatements,
  cdnPurgeStatements,
  healthMetricStatements,
  instanceRole,
  parameterReadStatements,
  policyJson,
  rolePolicy,
  routeBrokerInvokeStatements,
} from "./iam.js";
import {
  type LaunchArgs,
  type LaunchedNode,
  launchNode,
  nodeSuffix,
  type PlannedNode,
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
  /** ARN of the storage address's route broker: the one Lambda function the storage pair may invoke. */
  readonly storageRouteBrokerArn: pulumi.Input<string>;
  readonly account: pulumi.Input<AwsAccount>;
  /**
   * The backup buckets: the roles write the package file copies and are denied tampering with both.
   * @default - no backup statements
   */
  readonly backupBucketArns?: BackupBucketArns;
}

export function validateAppServersArgs(args: AppServersArgs): void {
  validateLaunchArgs("AppServers", args.nodes, args);
}

/** Apache + upload sshd app servers; the first two also carry DRBD, NFS and the storage Heartbeat. */
export class AppServers extends pulumi.ComponentResource {
  readonly nodes: readonly LaunchedNode[];
  /** The storage pair's role, then the other app servers' (when there are more than two). */
  readonly roles: readonly { readonly name: string; readonly role: aws.iam.Role }[];

  constructor(name: string, args: AppServersArgs, opts: pulumi.ComponentResourceOptions = {}) {
    super("pypi:infra:AppServers", name, {}, opts);
    validateAppServersArgs(args);
    // The storage pair has a role of its own: only it holds the storage secrets and may have
    // the storage route moved. The other app servers' role can do neither.
    const others = args.nodes.slice(2);
    const storage = appRole(
      this,
      `${name}-storage`,
      args,
      args.nodes.slice(0, 2),
      args.storageParameterArns,
      args.storageRouteBrokerArn,
    );
    const plain =
      others.length > 0 ? appRole(this, name, args, others, args.parameterArns, undefined) : storage;
    this.roles = [
      { name: `${name}-storage`, role: storage.role },
      ...(plain === storage ? [] : [{ name, role: plain.role }]),
    ];
    this.nodes = args.nodes.map((spec, i) =>
      launchNode(this, `${name}-${nodeSuffix(spec)}`, spec, {
        ...args,
        profile: (i < 2 ? storage : plain).profile,
        policy: (i < 2 ? storage : plain).policy,
        // Only the storage pair receives packets for the storage overlay address.
        sourceDestCheck: i >= 2,
      }),
    );
    this.registerOutputs({ instanceIds: this.nodes.map((n) => n.instance.id) });
  }

  /**
   * Let every app server send the CDN purge to this distribution. A policy of its own, after
   * launch: the instances never wait for CloudFront, and the purge job retries until it may.
   */
  grantCdnPurge(distributionArn: pulumi.Input<string>): aws.iam.RolePolicy[] {
    return this.roles.map(
      ({ name, role }) =>
        new aws.iam.RolePolicy(
          `${name}-cdn-purge`,
          {
            role: role.name,
            policy: pulumi.output(distributionArn).apply((arn) => policyJson(cdnPurgeStatements(arn))),
          },
          { parent: this },
        ),
    );
  }
}

/** Role, instance profile and policy of one group of app servers. */
function appRole(
  parent: pulumi.Resource,
  name: string,
  args: AppServersArgs,
  nodes: readonly PlannedNode[],
  parameterArns: readonly pulumi.Input<string>[],
  routeBrokerArn: pulumi.Input<string> | undefined,
): { role: aws.iam.Role; profile: aws.iam.InstanceProfile; policy: aws.iam.RolePolicy } {
  const { role, profile } = instanceRole(parent, name, { account: args.account, tags: args.tags ?? {} });
  const statements = pulumi
    .all([args.bundleBucketArn, pulumi.all([...parameterArns]), routeBrokerArn, args.backupBucketArns])
    .apply(([bucketArn, parameters, brokerArn, backup]) => [
      ...bundleReadStatements(
        bucketArn,
        nodes.map((n) => n.name),
      ),
      ...parameterReadStatements(parameters),
      ...(brokerArn === undefined ? [] : routeBrokerInvokeStatements(brokerArn)),
      ...backupStatements("app", backup),
      ...healthMetricStatements(args.metricNamespace),
    ]);
  return { role, profile, policy: rolePolicy(parent, name, role, statements) };
}
