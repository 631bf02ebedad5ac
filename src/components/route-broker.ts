import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import { buildSync } from "esbuild";
import { BROKER_ENV } from "../cloud/route-broker.js";
import { parseIpv4 } from "../net.js";
import { projectFile, projectRoot } from "../project-files.js";
import { type AwsAccount, policyJson, routeBrokerRoleStatements } from "./iam.js";
import { requireRouteTables } from "./node.js";

export const ROUTE_BROKER_RUNTIME = "nodejs22.x";
/**
 * The function's timeout. The agent waits longer for an answer (ROUTE_BROKER_READ_TIMEOUT, 25 s,
 * in src/agent/pypi-overlay.sh), so a try it gave up on has ended before it tries again.
 */
export const ROUTE_BROKER_TIMEOUT_SECONDS = 20;
/** The archive's one file and its export. */
export const ROUTE_BROKER_FILE = "index.mjs";
export const ROUTE_BROKER_HANDLER = "index.handler";
/** Each move is a failover's audit record. */
export const ROUTE_BROKER_LOG_DAYS = 90;

let code: string | undefined;

/**
 * The broker as the one ESM file Lambda runs, built in memory from src/cloud/route-broker.ts as
 * the index app is built from src/app: the same sources give the same bytes.
 */
export function routeBrokerCode(): string {
  if (code === undefined) {
    const result = buildSync({
      entryPoints: [projectFile("src/cloud/route-broker.ts")],
      absWorkingDir: projectRoot(),
      bundle: true,
      platform: "node",
      target: "node22",
      format: "esm",
      write: false,
      logLevel: "warning",
    });
    const [output] = result.outputFiles;
    if (!output) throw new Error("esbuild produced no output for src/cloud/route-broker.ts");
    code = output.text;
  }
  return code;
}

export interface RouteBrokerArgs {
  /** The Lambda function's name (routeBrokerName): fixed, so bundles and node policies name it before `up`. */
  readonly functionName: string;
  /** The overlay address it moves; the destination is `<address>/32`. */
  readonly address: string;
  /** The private route tables that carry the route: the only tables it may write. */
  readonly routeTableIds: readonly pulumi.Input<string>[];
  /** Primary interfaces of the nodes allowed to hold the address: the only targets it sets. */
  readonly holders: readonly pulumi.Input<string>[];
  readonly account: pulumi.Input<AwsAccount>;
  /**
   * Days the log group keeps each move and refusal.
   * @default ROUTE_BROKER_LOG_DAYS
   */
  readonly logRetentionDays?: number;
  /**
   * Tags on every resource.
   * @default {}
   */
  readonly tags?: Readonly<Record<string, string>>;
}

export function validateRouteBrokerArgs(args: RouteBrokerArgs): void {
  const problem = (arg: string, value: unknown, expected: string): never => {
    throw new Error(`RouteBroker: ${arg} ${JSON.stringify(value)} is not valid; expected ${expected}`);
  };
  if (!/^[A-Za-z0-9_-]{1,64}$/.test(args.functionName))
    problem("functionName", args.functionName, "a Lambda function name: [A-Za-z0-9_-], 1 to 64 characters");
  if (parseIpv4(args.address) === undefined) problem("address", args.address, "an IPv4 address");
  requireRouteTables("RouteBroker", "routeTableIds", args.routeTableIds);
  if (args.holders.length === 0) problem("holders", args.holders, "at least one network interface");
}

/** Lambda, and nothing else, may assume a broker's role. */
export const lambdaAssumeRolePolicy = (): string =>
  JSON.stringify({
    Version: "2012-10-17",
    Statement: [
      { Effect: "Allow", Principal: { Service: "lambda.amazonaws.com" }, Action: "sts:AssumeRole" },
    ],
  });

/**
 * One overlay address's route broker: a Lambda function that moves `<address>/32` in the given
 * tables to a holder's interface and nothing else, with its role and its log group. The nodes
 * invoke it instead of holding ec2:ReplaceRoute (see src/cloud/route-broker.ts).
 */
export class RouteBroker extends pulumi.ComponentResource {
  readonly function: aws.lambda.Function;
  readonly role: aws.iam.Role;
  readonly logGroup: aws.cloudwatch.LogGroup;

  constructor(name: string, args: RouteBrokerArgs, opts: pulumi.ComponentResourceOptions = {}) {
    super("pypi:infra:RouteBroker", name, {}, opts);
    validateRouteBrokerArgs(args);
    const tags = args.tags ?? {};
    const parent = { parent: this };
    const logGroupName = `/aws/lambda/${args.functionName}`;
    this.logGroup = new aws.cloudwatch.LogGroup(
      `${name}-logs`,
      { name: logGroupName, retentionInDays: args.logRetentionDays ?? ROUTE_BROKER_LOG_DAYS, tags },
      parent,
    );
    this.role = new aws.iam.Role(
      `${name}-role`,
      { assumeRolePolicy: lambdaAssumeRolePolicy(), tags },
      parent,
    );
    const tables = pulumi.all([...args.routeTableIds]);
    const policy = new aws.iam.RolePolicy(
      `${name}-policy`,
      {
        role: this.role.name,
        policy: pulumi
          .all([args.account, tables])
          .apply(([account, ids]) => policyJson(routeBrokerRoleStatements(account, ids, logGroupName))),
      },
      parent,
    );
    this.function = new aws.lambda.Function(
      `${name}-function`,
      {
        name: args.functionName,
        description: `pypi: moves the overlay route ${args.address}/32 to one of its holders`,
        role: this.role.arn,
        runtime: ROUTE_BROKER_RUNTIME,
        architectures: ["arm64"],
        handler: ROUTE_BROKER_HANDLER,
        memorySize: 128,
        timeout: ROUTE_BROKER_TIMEOUT_SECONDS,
        code: new pulumi.asset.AssetArchive({
          [ROUTE_BROKER_FILE]: new pulumi.asset.StringAsset(routeBrokerCode()),
        }),
        environment: {
          variables: {
            [BROKER_ENV.destination]: `${args.address}/32`,
            [BROKER_ENV.routeTables]: tables.apply((ids) => ids.join(" ")),
            [BROKER_ENV.allowedEnis]: pulumi.all([...args.holders]).apply((ids) => ids.join(" ")),
          },
        },
        loggingConfig: { logFormat: "Text", logGroup: this.logGroup.name },
        tags,
      },
      // Its first invocation must find it able to move the route and to log.
      { parent: this, dependsOn: [policy, this.logGroup] },
    );
    this.registerOutputs({ functionName: this.function.name });
  }
}
