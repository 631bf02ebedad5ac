import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import type { NodeRole } from "../topology.js";
import { FILE_COPY_PREFIX, REPOSITORY_PREFIX } from "./backup-buckets.js";

/** Partition, account and region: what every ARN below is built from. */
export interface AwsAccount {
  readonly partition: string;
  readonly accountId: string;
  readonly region: string;
}

export interface PolicyStatement {
  readonly Sid: string;
  readonly Effect: "Allow" | "Deny";
  readonly Action: readonly string[];
  readonly Resource?: string | readonly string[];
  readonly NotResource?: readonly string[];
  readonly Condition?: Readonly<Record<string, Readonly<Record<string, string | readonly string[]>>>>;
}

export const SSM_CORE_POLICY = "AmazonSSMManagedInstanceCore";

export const ec2Arn = (a: AwsAccount, kind: string, id: string): string =>
  `arn:${a.partition}:ec2:${a.region}:${a.accountId}:${kind}/${id}`;

/** `aws s3 sync` of `bundles/<node>/` needs ListBucket on that prefix and GetObject below it. */
export function bundleReadStatements(bucketArn: string, nodes: readonly string[]): PolicyStatement[] {
  const prefixes = nodes.map((n) => `bundles/${n}/`);
  return [
    {
      Sid: "ReadOwnBundles",
      Effect: "Allow",
      Action: ["s3:GetObject", "s3:GetObjectVersion"],
      Resource: prefixes.map((p) => `${bucketArn}/${p}*`),
    },
    {
      Sid: "ListOwnBundles",
      Effect: "Allow",
      Action: ["s3:ListBucket"],
      Resource: bucketArn,
      Condition: { StringLike: { "s3:prefix": prefixes.flatMap((p) => [p, `${p}*`]) } },
    },
  ];
}

/** Both backup buckets' ARNs, as the stack passes them to every node role. */
export interface BackupBucketArns {
  /** pgBackRest's repository bucket. */
  readonly repository: pulumi.Input<string>;
  /** The package file copy bucket. */
  readonly fileCopies: pulumi.Input<string>;
}

/** Object keys and bucket listing under one prefix (`<prefix>/`) of a bucket. */
function prefixStatements(
  sid: string,
  bucketArn: string,
  prefix: string,
  actions: readonly string[],
): PolicyStatement[] {
  const p = `${prefix}/`;
  return [
    { Sid: `Write${sid}`, Effect: "Allow", Action: [...actions], Resource: `${bucketArn}/${p}*` },
    {
      Sid: `List${sid}`,
      Effect: "Allow",
      Action: ["s3:ListBucket"],
      Resource: bucketArn,
      Condition: { StringLike: { "s3:prefix": [p, `${p}*`] } },
    },
  ];
}

/**
 * pgBackRest on the db nodes (`repo1-path=/pgbackrest`): archive-push, backup and expire on the
 * primary, restore tests on the standby. Its expire deletes old backups and WAL, which in a
 * versioned bucket only adds delete markers.
 */
export const backupRepositoryStatements = (bucketArn: string): PolicyStatement[] =>
  prefixStatements("BackupRepository", bucketArn, REPOSITORY_PREFIX, [
    "s3:GetObject",
    "s3:PutObject",
    "s3:DeleteObject",
  ]);

/** The app servers copy every registered package file under `packages/` and read it back; they never delete. */
export const fileCopyStatements = (bucketArn: string): PolicyStatement[] =>
  prefixStatements("FileCopies", bucketArn, FILE_COPY_PREFIX, ["s3:GetObject", "s3:PutObject"]);

/** What no node may do to the backup buckets: remove versions, or loosen versioning, locks, lifecycle or policy. */
export const BACKUP_TAMPER_ACTIONS: readonly string[] = [
  "s3:DeleteObjectVersion",
  "s3:PutBucketVersioning",
  "s3:PutBucketObjectLockConfiguration",
  "s3:PutObjectRetention",
  "s3:PutObjectLegalHold",
  "s3:BypassGovernanceRetention",
  "s3:PutLifecycleConfiguration",
  "s3:PutBucketPolicy",
  "s3:DeleteBucketPolicy",
  "s3:DeleteBucket",
];

/**
 * Every node role's explicit Deny on both backup buckets. An explicit Deny wins over any Allow,
 * including one a later managed policy might bring, so a compromised node cannot erase history.
 */
export function backupTamperDenyStatements(bucketArns: readonly string[]): PolicyStatement[] {
  return [
    {
      Sid: "DenyBackupTampering",
      Effect: "Deny",
      Action: [...BACKUP_TAMPER_ACTIONS],
      Resource: bucketArns.flatMap((arn) => [arn, `${arn}/*`]),
    },
  ];
}

/**
 * A node role's statements on the backup buckets: the db role writes the repository, the app
 * roles the file copies, the balancers neither; every role gets the Deny on both.
 */
export function backupStatements(
  role: NodeRole,
  arns: { readonly repository: string; readonly fileCopies: string } | undefined,
): PolicyStatement[] {
  if (arns === undefined) return [];
  const allow =
    role === "db"
      ? backupRepositoryStatements(arns.repository)
      : role === "app"
        ? fileCopyStatements(arns.fileCopies)
        : [];
  return [...allow, ...backupTamperDenyStatements([arns.repository, arns.fileCopies])];
}

/**
 * Read access to exactly these parameters. AmazonSSMManagedInstanceCore allows
 * ssm:GetParameter(s) on "*", and the aws/ssm key lets any principal of the account decrypt
 * through SSM, so the explicit Deny on every other parameter is what keeps one role from
 * reading another role's secrets.
 */
export function parameterReadStatements(parameterArns: readonly string[]): PolicyStatement[] {
  const reads = [
    "ssm:GetParameter",
    "ssm:GetParameters",
    "ssm:GetParametersByPath",
    "ssm:GetParameterHistory",
  ];
  return [
    { Sid: "ReadOwnParameters", Effect: "Allow", Action: ["ssm:GetParameter"], Resource: parameterArns },
    { Sid: "DenyOtherParameters", Effect: "Deny", Action: reads, NotResource: parameterArns },
  ];
}

export const lambdaFunctionArn = (a: AwsAccount, functionName: string): string =>
  `arn:${a.partition}:lambda:${a.region}:${a.accountId}:function:${functionName}`;

/**
 * `pypi-node overlay take` on a db node or the storage pair: invoke the route broker of the one
 * address the node may hold, and read the route tables for status. No node holds
 * ec2:ReplaceRoute: EC2 has no condition key for a route's destination, so it would allow any
 * route in the table (the other overlay route, the NAT default route). The broker holds it and
 * narrows it to its destination and its holders' interfaces.
 */
export function routeBrokerInvokeStatements(functionArn: string): PolicyStatement[] {
  return [
    { Sid: "InvokeRouteBroker", Effect: "Allow", Action: ["lambda:InvokeFunction"], Resource: [functionArn] },
    { Sid: "DescribeRoutes", Effect: "Allow", Action: ["ec2:DescribeRouteTables"], Resource: "*" },
  ];
}

/**
 * A route broker's execution role: ReplaceRoute in exactly the tables that carry its route,
 * DescribeRouteTables to read them back, and writes to its own log group only (the group exists
 * before the function, so no logs:CreateLogGroup).
 */
export function routeBrokerRoleStatements(
  a: AwsAccount,
  routeTableIds: readonly string[],
  logGroupName: string,
): PolicyStatement[] {
  return [
    {
      Sid: "MoveOverlayRoute",
      Effect: "Allow",
      Action: ["ec2:ReplaceRoute"],
      Resource: routeTableIds.map((id) => ec2Arn(a, "route-table", id)),
    },
    { Sid: "DescribeRoutes", Effect: "Allow", Action: ["ec2:DescribeRouteTables"], Resource: "*" },
    {
      Sid: "WriteOwnLogs",
      Effect: "Allow",
      Action: ["logs:CreateLogStream", "logs:PutLogEvents"],
      Resource: [`arn:${a.partition}:logs:${a.region}:${a.accountId}:log-group:${logGroupName}:*`],
    },
  ];
}

/**
 * `pypi-node health` publishes its checks. PutMetricData has no resource-level permissions: the
 * namespace condition is the only scope, so a node cannot write into another stack's or AWS's
 * metrics (and so cannot silence or fake another stack's alarms).
 */
export function healthMetricStatements(namespace: string): PolicyStatement[] {
  return [
    {
      Sid: "PublishHealthMetrics",
      Effect: "Allow",
      Action: ["cloudwatch:PutMetricData"],
      Resource: "*",
      Condition: { StringEquals: { "cloudwatch:namespace": namespace } },
    },
  ];
}

/**
 * The app servers' CDN purge: CreateInvalidation on the stack's own distribution. No other
 * CloudFront action, and no other distribution: a stolen app role can at worst make this
 * stack's CDN fetch from its origin again.
 */
export function cdnPurgeStatements(distributionArn: string): PolicyStatement[] {
  return [
    {
      Sid: "CdnPurge",
      Effect: "Allow",
      Action: ["cloudfront:CreateInvalidation"],
      Resource: [distributionArn],
    },
  ];
}

export const policyJson = (statements: readonly PolicyStatement[]): string =>
  JSON.stringify({ Version: "2012-10-17", Statement: statements });

export interface InstanceRoleArgs {
  readonly account: pulumi.Input<AwsAccount>;
  readonly tags: Readonly<Record<string, string>>;
}

export interface InstanceRole {
  readonly role: aws.iam.Role;
  readonly profile: aws.iam.InstanceProfile;
}

/** Role + instance profile for one node role: SSM core (Session Manager, Run Command) and its own policy. */
export function instanceRole(parent: pulumi.Resource, name: string, args: InstanceRoleArgs): InstanceRole {
  const opts = { parent };
  const role = new aws.iam.Role(
    `${name}-role`,
    {
      assumeRolePolicy: JSON.stringify({
        Version: "2012-10-17",
        Statement: [
          { Effect: "Allow", Principal: { Service: "ec2.amazonaws.com" }, Action: "sts:AssumeRole" },
        ],
      }),
      tags: args.tags,
    },
    opts,
  );
  new aws.iam.RolePolicyAttachment(
    `${name}-ssm-core`,
    {
      role: role.name,
      policyArn: pulumi
        .output(args.account)
        .apply((a) => `arn:${a.partition}:iam::aws:policy/${SSM_CORE_POLICY}`),
    },
    opts,
  );
  const profile = new aws.iam.InstanceProfile(`${name}-profile`, { role: role.name, tags: args.tags }, opts);
  return { role, profile };
}

/** The role's own statements (bundles, parameters, cloud actions) as its inline policy. */
export function rolePolicy(
  parent: pulumi.Resource,
  name: string,
  role: aws.iam.Role,
  statements: pulumi.Input<PolicyStatement[]>,
): aws.iam.RolePolicy {
  return new aws.iam.RolePolicy(
    `${name}-policy`,
    { role: role.name, policy: pulumi.output(statements).apply((s) => policyJson(s)) },
    { parent },
  );
}
