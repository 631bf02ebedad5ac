import { createHash } from "node:crypto";
import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import {
  type AlarmedCheck,
  alarmDescription,
  alarmedChecks,
  alarmName,
  alarmStatistic,
  compositeAlarms,
  healthChecksOf,
} from "../health.js";
import { show } from "../schema.js";
import type { Topology } from "../topology.js";
import type { AwsAccount } from "./iam.js";

/** What an alarm output entry says: the runbook that fixes it and one line on what it means. */
export interface AlarmRunbook {
  readonly runbook: string;
  readonly summary: string;
}

export interface HealthAlarmsArgs {
  /**
   * The planned topology: node names, roles and the health settings decide every alarm, so the
   * set is known before any id exists. Its ids (instances, buckets) are not read.
   */
  readonly topology: Topology;
  /** Each node's EC2 instance id, for the AWS/EC2 status check alarms; one per topology node. */
  readonly instanceIds: Readonly<Record<string, pulumi.Input<string>>>;
  /** Partition, account and region: the EC2 action ARNs and the scope of the topic's grants. */
  readonly account: pulumi.Input<AwsAccount>;
  /**
   * E-mail subscriptions of the topic (each confirms by mail).
   * @default [] - none
   */
  readonly emails?: readonly string[];
  /**
   * HTTPS subscriptions of the topic (a pager's SNS endpoint, which confirms by itself).
   * @default [] - none
   */
  readonly httpsEndpoints?: readonly string[];
  /**
   * false: alarms change state but notify nobody and recover or reboot no instance.
   * @default true
   */
  readonly actionsEnabled?: boolean;
  /**
   * Tags on every resource.
   * @default {}
   */
  readonly tags?: Readonly<Record<string, string>>;
}

/** An AWS/EC2 status check alarm of one node, with the EC2 action it takes. */
export interface StatusCheckAlarm {
  readonly name: string;
  readonly node: string;
  readonly metricName: "StatusCheckFailed_System" | "StatusCheckFailed_Instance";
  /** `recover` moves the instance to healthy hardware (same id, addresses and volumes); `reboot` reboots it. */
  readonly action: "recover" | "reboot";
  readonly runbook: string;
  readonly summary: string;
}

/**
 * Two per node. Their runbook is the one the node's `reporting` alarm names (a lost instance),
 * so a node that dies pages with one runbook however it is noticed.
 */
export function statusCheckAlarms(t: Topology): StatusCheckAlarm[] {
  return t.nodes.flatMap((node) => {
    const runbook = healthChecksOf(t, node).find((c) => c.id === "reporting")?.runbook;
    if (!runbook) throw new Error(`the health model has no reporting check for ${node.name}`);
    return [
      {
        name: alarmName(t, node.name, "ec2-system-status"),
        node: node.name,
        metricName: "StatusCheckFailed_System",
        action: "recover",
        runbook,
        summary: `AWS sees the hardware under ${node.name} failing; EC2 recovers the instance onto other hardware`,
      },
      {
        name: alarmName(t, node.name, "ec2-instance-status"),
        node: node.name,
        metricName: "StatusCheckFailed_Instance",
        action: "reboot",
        runbook,
        summary: `${node.name}'s instance fails its EC2 status check (kernel or network unresponsive); EC2 reboots it`,
      },
    ];
  });
}

/** Every alarm of the deployment, in creation order: name, runbook and summary. */
function plannedAlarms(t: Topology): (AlarmRunbook & { readonly name: string })[] {
  return [
    ...alarmedChecks(t).map((c) => ({
      name: alarmName(t, c.node, c.id),
      runbook: c.runbook,
      summary: c.summary,
    })),
    ...compositeAlarms(t).map(({ name, runbook, summary }) => ({ name, runbook, summary })),
    ...statusCheckAlarms(t).map(({ name, runbook, summary }) => ({ name, runbook, summary })),
  ];
}

/** Every alarm of the deployment by name: its runbook and summary (the `alarms` stack output). */
export function alarmRunbooks(t: Topology): Record<string, AlarmRunbook> {
  return Object.fromEntries(
    plannedAlarms(t).map(({ name, runbook, summary }) => [name, { runbook, summary }]),
  );
}

/** A composite alarm's rule, in CloudWatch's quoted form `ALARM("name")`; a name with a quote would end it early. */
export function compositeRule(allOf: readonly string[]): string {
  for (const name of allOf)
    if (name.includes('"')) throw new Error(`alarm name ${show(name)} cannot appear in an alarm rule`);
  return allOf.map((name) => `ALARM("${name}")`).join(" AND ");
}

/**
 * A subscription's child name: a short hash of the address, so reordering the list replaces
 * nothing, and the address (a pager URL may carry its key) does not appear in the URN.
 */
export const subscriptionKey = (address: string): string =>
  createHash("sha256").update(address.trim().toLowerCase()).digest("hex").slice(0, 12);

/** The alarm names this topology's alarms use: the grants are scoped to them. */
export const alarmNamePattern = (t: Topology): string => `pypi-${t.environment}-*`;

export function validateHealthAlarmsArgs(args: HealthAlarmsArgs): void {
  const fail = (message: string): never => {
    throw new Error(`HealthAlarms: ${message}`);
  };
  const nodes = args.topology.nodes.map((n) => n.name);
  for (const node of nodes)
    if (args.instanceIds[node] === undefined) fail(`instanceIds has no entry for node ${show(node)}`);
  for (const key of Object.keys(args.instanceIds))
    if (!nodes.includes(key)) fail(`instanceIds names ${show(key)}, which is no node of the topology`);
  for (const [arg, list] of [
    ["emails", args.emails ?? []],
    ["httpsEndpoints", args.httpsEndpoints ?? []],
  ] as const) {
    const seen = new Map<string, string>();
    for (const address of list) {
      const key = subscriptionKey(address);
      const earlier = seen.get(key);
      if (earlier !== undefined) fail(`${arg} lists ${show(address)} twice (as ${show(earlier)} too)`);
      seen.set(key, address);
    }
  }
  // Alarm names are unique per account and region; a clash would make one alarm overwrite another.
  const names = plannedAlarms(args.topology).map((a) => a.name);
  const twice = names.find((n, i) => names.indexOf(n) !== i);
  if (twice !== undefined) fail(`two alarms of the topology are both named ${show(twice)}`);
}

/**
 * The health model as CloudWatch alarms: one per (node, check) on the metrics the nodes publish,
 * the composites no single node can see, and two EC2 status check alarms per instance (recover,
 * reboot). Every alarm's description starts with its runbook; all notify one encrypted topic.
 */
export class HealthAlarms extends pulumi.ComponentResource {
  readonly topic: aws.sns.Topic;
  readonly topicArn: pulumi.Output<string>;
  /** Alarm name -> the runbook that fixes it and its summary. */
  readonly alarmRunbooks: pulumi.Output<Record<string, AlarmRunbook>>;
  readonly metricAlarms: readonly aws.cloudwatch.MetricAlarm[];
  readonly compositeAlarms: readonly aws.cloudwatch.CompositeAlarm[];

  constructor(name: string, args: HealthAlarmsArgs, opts: pulumi.ComponentResourceOptions = {}) {
    super("pypi:infra:HealthAlarms", name, {}, opts);
    validateHealthAlarmsArgs(args);
    const t = args.topology;
    const tags = args.tags ?? {};
    const actionsEnabled = args.actionsEnabled ?? true;
    const parent = { parent: this };
    const account = pulumi.output(args.account);
    const alarmArns = account.apply(
      (a) => `arn:${a.partition}:cloudwatch:${a.region}:${a.accountId}:alarm:${alarmNamePattern(t)}`,
    );

    // The AWS managed key (alias/aws/sns) cannot be used: its policy cannot grant CloudWatch, and
    // CloudWatch then drops every notification without an error.
    const key = new aws.kms.Key(
      `${name}-key`,
      {
        description: `pypi ${t.environment} alarm topic`,
        enableKeyRotation: true,
        policy: account.apply((a) =>
          JSON.stringify({
            Version: "2012-10-17",
            Statement: [
              {
                Sid: "AccountAdministersKey",
                Effect: "Allow",
                Principal: { AWS: `arn:${a.partition}:iam::${a.accountId}:root` },
                Action: "kms:*",
                Resource: "*",
              },
              {
                Sid: "CloudWatchAlarmsEncrypt",
                Effect: "Allow",
                Principal: { Service: "cloudwatch.amazonaws.com" },
                Action: ["kms:Decrypt", "kms:GenerateDataKey*"],
                Resource: "*",
                Condition: { StringEquals: { "aws:SourceAccount": a.accountId } },
              },
            ],
          }),
        ),
        tags,
      },
      parent,
    );
    new aws.kms.Alias(
      `${name}-key-alias`,
      { name: `alias/pypi-${t.environment}-alarms`, targetKeyId: key.keyId },
      parent,
    );
    this.topic = new aws.sns.Topic(
      `${name}-topic`,
      { name: `pypi-${t.environment}-alarms`, kmsMasterKeyId: key.arn, tags },
      parent,
    );
    this.topicArn = this.topic.arn;
    new aws.sns.TopicPolicy(
      `${name}-topic-policy`,
      {
        arn: this.topic.arn,
        policy: pulumi.all([this.topic.arn, account, alarmArns]).apply(([topicArn, a, alarms]) =>
          JSON.stringify({
            Version: "2012-10-17",
            Statement: [
              {
                Sid: "CloudWatchAlarmsPublish",
                Effect: "Allow",
                Principal: { Service: "cloudwatch.amazonaws.com" },
                Action: "sns:Publish",
                Resource: topicArn,
                Condition: {
                  StringEquals: { "aws:SourceAccount": a.accountId },
                  ArnLike: { "aws:SourceArn": alarms },
                },
              },
            ],
          }),
        ),
      },
      parent,
    );
    for (const email of args.emails ?? [])
      new aws.sns.TopicSubscription(
        `${name}-email-${subscriptionKey(email)}`,
        { topic: this.topic.arn, protocol: "email", endpoint: email },
        parent,
      );
    // A pager's integration URL carries its key: a secret in the state, however it was set.
    for (const url of args.httpsEndpoints ?? [])
      new aws.sns.TopicSubscription(
        `${name}-https-${subscriptionKey(url)}`,
        {
          topic: this.topic.arn,
          protocol: "https",
          endpoint: pulumi.secret(url),
          endpointAutoConfirms: false,
        },
        parent,
      );

    const notify = [this.topic.arn];
    const metric = (check: AlarmedCheck): aws.cloudwatch.MetricAlarm =>
      new aws.cloudwatch.MetricAlarm(
        `${name}-${check.node}-${check.id}`,
        {
          name: alarmName(t, check.node, check.id),
          namespace: t.health.namespace,
          metricName: check.id,
          dimensions: { Node: check.node },
          ...alarmStatistic(check),
          threshold: check.threshold,
          period: t.health.periodSeconds,
          evaluationPeriods: check.periods,
          datapointsToAlarm: check.periods,
          treatMissingData: check.missingBreaches ? "breaching" : "notBreaching",
          alarmDescription: alarmDescription(check.runbook, check.summary),
          alarmActions: notify,
          okActions: notify,
          actionsEnabled,
          tags: { ...tags, "pypi:node": check.node, "pypi:runbook": check.runbook },
        },
        parent,
      );
    const byName = new Map(alarmedChecks(t).map((c) => [alarmName(t, c.node, c.id), metric(c)]));
    const prefix = `pypi-${t.environment}-`;
    this.compositeAlarms = compositeAlarms(t).map((c) => {
      const members = c.allOf.map((m) => {
        const alarm = byName.get(m);
        if (!alarm) throw new Error(`HealthAlarms: composite ${c.name} names ${m}, which is no alarm`);
        return alarm;
      });
      return new aws.cloudwatch.CompositeAlarm(
        `${name}-${c.name.startsWith(prefix) ? c.name.slice(prefix.length) : c.name}`,
        {
          alarmName: c.name,
          alarmRule: compositeRule(c.allOf),
          alarmDescription: alarmDescription(c.runbook, c.summary),
          alarmActions: notify,
          okActions: notify,
          actionsEnabled,
          tags: { ...tags, "pypi:runbook": c.runbook },
        },
        // CloudWatch refuses a rule that names an alarm that does not exist yet.
        { parent: this, dependsOn: members },
      );
    });

    const statusAlarms = statusCheckAlarms(t).map(
      (s) =>
        new aws.cloudwatch.MetricAlarm(
          `${name}-${s.node}-${s.action}`,
          {
            name: s.name,
            namespace: "AWS/EC2",
            metricName: s.metricName,
            dimensions: { InstanceId: args.instanceIds[s.node] as pulumi.Input<string> },
            statistic: "Maximum",
            comparisonOperator: "GreaterThanOrEqualToThreshold",
            threshold: 1,
            period: 60,
            evaluationPeriods: 2,
            datapointsToAlarm: 2,
            // A stopped instance reports nothing: that is no failure of its checks.
            treatMissingData: "missing",
            alarmDescription: alarmDescription(s.runbook, s.summary),
            alarmActions: [
              account.apply((a) => `arn:${a.partition}:automate:${a.region}:ec2:${s.action}`),
              ...notify,
            ],
            okActions: notify,
            actionsEnabled,
            tags: { ...tags, "pypi:node": s.node, "pypi:runbook": s.runbook },
          },
          parent,
        ),
    );
    this.metricAlarms = [...byName.values(), ...statusAlarms];
    this.alarmRunbooks = pulumi.output(alarmRunbooks(t));
    this.registerOutputs({ topicArn: this.topicArn, alarmRunbooks: this.alarmRunbooks });
  }
}
