/**
 * On-call learns first: every health check is a CloudWatch alarm on the metrics the nodes
 * publish, every alarm names a runbook that exists, every failure runbook has an alarm that
 * pages with it, and the nodes may publish into their own namespace and nowhere else.
 */
import * as pulumi from "@pulumi/pulumi";
import { beforeAll, describe, expect, test } from "vitest";
import {
  alarmRunbooks,
  compositeRule,
  type HealthAlarmsArgs,
  statusCheckAlarms,
  subscriptionKey,
  validateHealthAlarmsArgs,
} from "../../src/components/alarms.js";
import { healthMetricStatements } from "../../src/components/iam.js";
import { parseConfig } from "../../src/config.js";
import { alarmedChecks, alarmName, compositeAlarms } from "../../src/health.js";
import { buildTopology, placeholderIds, planNodes } from "../../src/plan.js";
import { program } from "../../src/program.js";
import { buildRunbooks } from "../../src/runbooks/runbooks.js";
import { ConfigError } from "../../src/schema.js";
import { PypiStack } from "../../src/stack.js";
import type { Topology } from "../../src/topology.js";
import {
  ACCOUNT,
  type Built,
  createMocks,
  isSecret,
  PROD_TLS,
  PROD_TLS_KEY_LINE,
  plain,
  REGION,
  type Recorded,
  rawConfig,
  resolve,
  type StackName,
  settle,
  tlsFor,
  withCheapStackTraces,
} from "./harness.js";
import { asList, covers, groupOfNode } from "./iam.js";
import { engineConfig, stackConfigMap } from "./yaml.js";

const T = {
  metric: "aws:cloudwatch/metricAlarm:MetricAlarm",
  composite: "aws:cloudwatch/compositeAlarm:CompositeAlarm",
  topic: "aws:sns/topic:Topic",
  topicPolicy: "aws:sns/topicPolicy:TopicPolicy",
  subscription: "aws:sns/topicSubscription:TopicSubscription",
  key: "aws:kms/key:Key",
  alias: "aws:kms/alias:Alias",
  endpoint: "aws:ec2/vpcEndpoint:VpcEndpoint",
} as const;

/**
 * Runbooks an operator starts by decision, not because a measurement went critical: rebuilding
 * a node (planned work too; it is also the runbook of a silent database node) and a point-in-time
 * restore (a mistaken DELETE is not measurable). Every other runbook handles a failure and must
 * be named by at least one alarm.
 */
const ON_DEMAND: readonly RegExp[] = [/^rebuild-/, /^db-pitr-/];
const onDemand = (id: string): boolean => ON_DEMAND.some((re) => re.test(id));

type AlarmsBuilt = Built & {
  readonly alarms: Record<string, { runbook: string; summary: string }>;
  readonly topicArn: string;
  /** Composite alarm name -> the URNs of the resources it depends on. */
  readonly compositeDeps: Record<string, string[]>;
};

/** A stack build that also records each composite alarm's dependsOn. */
async function buildAlarms(stack: StackName, overrides: Record<string, unknown> = {}): Promise<AlarmsBuilt> {
  return withCheapStackTraces(async () => {
    const recorder = createMocks();
    await pulumi.runtime.setMocks(recorder.mocks, "pypi-infra", stack, false);
    const deps: Record<string, pulumi.Resource[]> = {};
    const record: pulumi.ResourceTransformation = ({ type, props, opts }) => {
      if (type === T.composite)
        deps[String(props.alarmName)] = [...((opts.dependsOn ?? []) as pulumi.Resource[])];
      return undefined;
    };
    const config = parseConfig(rawConfig(stack, overrides), stack);
    const tls = tlsFor(config.tlsSource);
    if (tls.source === "config") recorder.secrets.push(PROD_TLS.key, PROD_TLS_KEY_LINE);
    const pypi = new PypiStack("pypi", { config, tls }, { transformations: [record] });
    const [floatingIps, nodes, runbooks, runbookData, topology, digests, alarms, topicArn] =
      await Promise.all([
        resolve(pypi.floatingIps),
        resolve(pypi.nodes),
        resolve(pypi.runbooks),
        resolve(pypi.runbookData),
        resolve(pypi.topology),
        resolve(pypi.rollout.digests),
        resolve(pypi.alarms),
        resolve(pypi.alarmTopicArn),
      ]);
    await settle(recorder.resources);
    const compositeDeps = Object.fromEntries(
      await Promise.all(
        Object.entries(deps).map(
          async ([name, rs]) => [name, await Promise.all(rs.map((r) => resolve(r.urn)))] as const,
        ),
      ),
    );
    const ofType = (type: string) => recorder.resources.filter((r) => r.type === type);
    const outputs = { floatingIps, nodes, runbooks, runbookData, topology, digests };
    return { config, pypi, outputs, ...recorder, ofType, alarms, topicArn, compositeDeps };
  });
}

const plannedOf = (stack: StackName): Topology => {
  const cfg = parseConfig(stackConfigMap(stack), stack);
  return buildTopology(cfg, planNodes(cfg), placeholderIds(cfg));
};

const one = (rs: readonly Recorded[], what: string): Recorded => {
  expect(rs, what).toHaveLength(1);
  return rs[0] as Recorded;
};

describe.each(["prod", "staging"] as const)("alarms of the %s stack", (stack) => {
  let b: AlarmsBuilt;
  let planned: Topology;
  beforeAll(async () => {
    b = await buildAlarms(stack);
    planned = b.pypi.plannedTopology;
  }, 60_000);

  const metricAlarm = (name: string): Recorded =>
    one(
      b.ofType(T.metric).filter((r) => r.inputs.name === name),
      name,
    );

  test("every alarm's runbook exists: in the runbooks output and in the planned topology's runbooks", () => {
    const outputIds = Object.keys(b.outputs.runbooks);
    const plannedIds = buildRunbooks(planned).map((r) => r.id);
    const missing = Object.entries(b.alarms)
      .filter(([, a]) => !outputIds.includes(a.runbook) || !plannedIds.includes(a.runbook))
      .map(([name, a]) => `${name} -> ${a.runbook}`);
    expect(missing).toEqual([]);
  });

  test("every runbook that handles a failure is named by at least one alarm", () => {
    const ids = buildRunbooks(planned).map((r) => r.id);
    // Each on-demand pattern still matches a runbook: the list cannot rot into a blanket excuse.
    for (const re of ON_DEMAND)
      expect(
        ids.some((id) => re.test(id)),
        String(re),
      ).toBe(true);
    const named = new Set(Object.values(b.alarms).map((a) => a.runbook));
    const failures = ids.filter((id) => !onDemand(id));
    expect(failures.length).toBeGreaterThan(10);
    expect(failures.filter((id) => !named.has(id))).toEqual([]);
  });

  test("the alarms output lists every alarm, and each is a resource with that runbook in its description", () => {
    const checks = alarmedChecks(planned);
    const composites = compositeAlarms(planned);
    const instances = b.ofType("aws:ec2/instance:Instance");
    const names = Object.keys(b.alarms);
    expect(names).toHaveLength(checks.length + composites.length + 2 * instances.length);
    expect(b.alarms).toEqual(alarmRunbooks(planned));
    const created = [
      ...b.ofType(T.metric).map((r) => [r.inputs.name, r.inputs.alarmDescription]),
      ...b.ofType(T.composite).map((r) => [r.inputs.alarmName, r.inputs.alarmDescription]),
    ];
    expect(created.map(([n]) => n).sort()).toEqual([...names].sort());
    for (const [name, description] of created) {
      const a = b.alarms[String(name)];
      expect(String(description), String(name)).toBe(`runbook ${a?.runbook}: ${a?.summary}`);
    }
    for (const name of names) expect(name).toMatch(new RegExp(`^pypi-${stack}-[a-z0-9-]+$`));
  });

  test("metric alarms read the nodes' metrics: namespace, dimension, period, statistic, missing data", () => {
    const checks = alarmedChecks(planned);
    expect(checks.length).toBeGreaterThan(40);
    for (const c of checks) {
      const a = metricAlarm(`pypi-${stack}-${c.node}-${c.id}`).inputs;
      const critical =
        c.comparison === "atLeast"
          ? { statistic: "Maximum", comparisonOperator: "GreaterThanOrEqualToThreshold" }
          : { statistic: "Minimum", comparisonOperator: "LessThanThreshold" };
      expect(a, `${c.node} ${c.id}`).toMatchObject({
        namespace: `PyPI/${stack}`,
        metricName: c.id,
        dimensions: { Node: c.node },
        period: 10,
        // Silence must last two periods; every other check fires on one.
        evaluationPeriods: c.id === "reporting" ? 2 : 1,
        datapointsToAlarm: c.id === "reporting" ? 2 : 1,
        threshold: c.threshold,
        ...critical,
        // A node that stops publishing breaches only its `reporting` alarm.
        treatMissingData: c.id === "reporting" ? "breaching" : "notBreaching",
        alarmActions: [b.topicArn],
        okActions: [b.topicArn],
        actionsEnabled: stack === "prod",
      });
      expect(String(a.alarmDescription)).toMatch(new RegExp(`^runbook ${c.runbook}: `));
    }
    // The reporting alarm of every node breaches on silence.
    const reporting = b.ofType(T.metric).filter((r) => r.inputs.metricName === "reporting");
    expect(reporting.map((r) => (r.inputs.dimensions as { Node: string }).Node).sort()).toEqual(
      planned.nodes.map((n) => n.name).sort(),
    );
  });

  test("the composite fires when both database nodes are silent, after its members exist", () => {
    const [c] = compositeAlarms(planned);
    const composite = one(b.ofType(T.composite), "composite");
    expect(composite.inputs).toMatchObject({
      alarmName: `pypi-${stack}-db-both-silent`,
      alarmRule: `ALARM("pypi-${stack}-db-a-reporting") AND ALARM("pypi-${stack}-db-b-reporting")`,
      alarmActions: [b.topicArn],
      okActions: [b.topicArn],
      actionsEnabled: stack === "prod",
    });
    expect(String(composite.inputs.alarmDescription)).toMatch(/^runbook db-both-lost: /);
    expect(c?.allOf).toEqual([`pypi-${stack}-db-a-reporting`, `pypi-${stack}-db-b-reporting`]);
    const deps = b.compositeDeps[`pypi-${stack}-db-both-silent`] ?? [];
    expect(deps.map((urn) => urn.split("::").pop()).sort()).toEqual([
      "pypi-alarms-db-a-reporting",
      "pypi-alarms-db-b-reporting",
    ]);
  });

  test("each instance: EC2 recovers it on a system check failure and reboots it on an instance check failure", () => {
    const instances = b.ofType("aws:ec2/instance:Instance");
    for (const i of instances) {
      const node = String((i.inputs.tags as Record<string, string>).Name);
      const reportingRunbook = b.alarms[alarmName(planned, node, "reporting")]?.runbook;
      for (const [check, action] of [
        ["StatusCheckFailed_System", "recover"],
        ["StatusCheckFailed_Instance", "reboot"],
      ] as const) {
        const a = one(
          b
            .ofType(T.metric)
            .filter(
              (r) =>
                r.inputs.metricName === check &&
                (r.inputs.dimensions as Record<string, string>).InstanceId === i.id,
            ),
          `${node} ${check}`,
        ).inputs;
        expect(a).toMatchObject({
          namespace: "AWS/EC2",
          dimensions: { InstanceId: i.id },
          statistic: "Maximum",
          comparisonOperator: "GreaterThanOrEqualToThreshold",
          threshold: 1,
          period: 60,
          evaluationPeriods: 2,
          alarmActions: [`arn:aws:automate:${REGION}:ec2:${action}`, b.topicArn],
          okActions: [b.topicArn],
          actionsEnabled: stack === "prod",
        });
        // A lost instance pages with the runbook its silence pages with.
        expect(String(a.alarmDescription)).toMatch(new RegExp(`^runbook ${reportingRunbook}: `));
      }
    }
    expect(reportingRunbook("lb-a")).toBe("balancer-loss-lb-a");
    expect(reportingRunbook("app-b")).toBe("app-server-loss-app-b");
    expect(reportingRunbook("db-a")).toBe("rebuild-db-a");
    function reportingRunbook(node: string) {
      return statusCheckAlarms(planned).find((s) => s.node === node && s.action === "recover")?.runbook;
    }
  });

  test("one topic, encrypted with a key CloudWatch may use, publishable by this account's alarms only", () => {
    const topic = one(b.ofType(T.topic), "topic");
    const key = one(b.ofType(T.key), "key");
    expect(topic.inputs.name).toBe(`pypi-${stack}-alarms`);
    expect(b.topicArn).toBe(`arn:aws:sns:${REGION}:${ACCOUNT}:pypi-${stack}-alarms`);
    expect(topic.inputs.kmsMasterKeyId).toBe(key.state.arn);
    expect(key.inputs.enableKeyRotation).toBe(true);
    expect(one(b.ofType(T.alias), "alias").inputs).toMatchObject({
      name: `alias/pypi-${stack}-alarms`,
      targetKeyId: key.id,
    });
    const keyPolicy = JSON.parse(String(key.inputs.policy)).Statement;
    expect(keyPolicy).toContainEqual({
      Sid: "CloudWatchAlarmsEncrypt",
      Effect: "Allow",
      Principal: { Service: "cloudwatch.amazonaws.com" },
      Action: ["kms:Decrypt", "kms:GenerateDataKey*"],
      Resource: "*",
      Condition: { StringEquals: { "aws:SourceAccount": ACCOUNT } },
    });
    const policy = one(b.ofType(T.topicPolicy), "topic policy");
    expect(policy.inputs.arn).toBe(b.topicArn);
    expect(JSON.parse(String(policy.inputs.policy))).toEqual({
      Version: "2012-10-17",
      Statement: [
        {
          Sid: "CloudWatchAlarmsPublish",
          Effect: "Allow",
          Principal: { Service: "cloudwatch.amazonaws.com" },
          Action: "sns:Publish",
          Resource: b.topicArn,
          Condition: {
            StringEquals: { "aws:SourceAccount": ACCOUNT },
            ArnLike: { "aws:SourceArn": `arn:aws:cloudwatch:${REGION}:${ACCOUNT}:alarm:pypi-${stack}-*` },
          },
        },
      ],
    });
  });

  test("subscriptions are the stack file's: prod mails on-call, staging is muted with none", () => {
    const subs = b.ofType(T.subscription).map((s) => [s.inputs.protocol, s.inputs.endpoint]);
    if (stack === "prod") {
      expect(b.config.alarms).toEqual({
        emails: ["oncall@example.org"],
        httpsEndpoints: [],
        actionsEnabled: true,
      });
      expect(subs).toEqual([["email", "oncall@example.org"]]);
    } else {
      expect(b.config.alarms).toEqual({ emails: [], httpsEndpoints: [], actionsEnabled: false });
      expect(subs).toEqual([]);
    }
    for (const s of b.ofType(T.subscription)) expect(s.inputs.topic).toBe(b.topicArn);
  });

  test("every node role may PutMetricData into the stack's namespace only", () => {
    const groups = groupOfNode(b);
    expect([...groups.keys()].sort()).toEqual(planned.nodes.map((n) => n.name).sort());
    for (const [node, g] of groups) {
      const publish = g.statements.filter((s) => s.Sid === "PublishHealthMetrics");
      expect(publish, node).toEqual(healthMetricStatements(`PyPI/${stack}`));
      expect(publish[0]?.Condition).toEqual({ StringEquals: { "cloudwatch:namespace": `PyPI/${stack}` } });
      // No other statement grants it, by name or by wildcard, and none without the condition.
      const others = g.statements.filter(
        (s) =>
          s.Effect === "Allow" &&
          s.Sid !== "PublishHealthMetrics" &&
          s.Action.some((a) => covers(a, "cloudwatch:PutMetricData")),
      );
      expect(others, node).toEqual([]);
      for (const s of g.statements) expect("NotAction" in s, `${node} ${s.Sid}`).toBe(false);
    }
  });

  test("CloudWatch has an interface endpoint, like every API the nodes call", () => {
    const monitoring = one(
      b.ofType(T.endpoint).filter((e) => e.inputs.serviceName === `com.amazonaws.${REGION}.monitoring`),
      "monitoring endpoint",
    );
    expect(monitoring.inputs).toMatchObject({ vpcEndpointType: "Interface", privateDnsEnabled: true });
    expect(asList(monitoring.inputs.subnetIds as string[])).toHaveLength(2);
  });
});

describe("subscriptions follow the config", () => {
  const emails = ["oncall@example.org", "Backup.Oncall@example.org"];
  const urls = ["https://events.example.com/integration/abc/enqueue"];
  let built: AlarmsBuilt;
  let reordered: AlarmsBuilt;
  beforeAll(async () => {
    built = await buildAlarms("staging", {
      "pypi-infra:alarmEmails": emails,
      "pypi-infra:alarmHttpsEndpoints": urls,
      "pypi-infra:alarmActions": true,
    });
    reordered = await buildAlarms("staging", {
      "pypi-infra:alarmEmails": [...emails].reverse(),
      "pypi-infra:alarmHttpsEndpoints": urls,
    });
  }, 120_000);
  const byName = (b: AlarmsBuilt) =>
    Object.fromEntries(
      b.ofType(T.subscription).map((s) => [s.name, [s.inputs.protocol, plain(s.inputs.endpoint)]]),
    );

  test("one e-mail subscription per address and one https subscription per endpoint", () => {
    const subs = built.ofType(T.subscription);
    expect(subs.map((s) => plain(s.inputs.endpoint)).sort()).toEqual([...emails, ...urls].sort());
    for (const s of subs) {
      expect(s.inputs.topic).toBe(built.topicArn);
      // A pager URL carries its integration key: kept as a secret in the state.
      if (s.inputs.protocol === "https") {
        expect(s.inputs.endpointAutoConfirms).toBe(false);
        expect(isSecret(s.inputs.endpoint)).toBe(true);
      } else expect(s.inputs.protocol).toBe("email");
    }
    // Unmuted by config, every alarm acts.
    for (const a of built.ofType(T.metric)) expect(a.inputs.actionsEnabled).toBe(true);
  });

  test("reordering the list renames nothing; the address is not in the name", () => {
    expect(byName(reordered)).toEqual(byName(built));
    for (const name of Object.keys(byName(built))) {
      expect(name).toMatch(/^pypi-alarms-(email|https)-[0-9a-f]{12}$/);
      expect(name).not.toContain("example");
    }
    for (const a of reordered.ofType(T.metric)) expect(a.inputs.actionsEnabled).toBe(false);
  });
});

describe("broken alarm settings fail at preview, naming the key, the value and what is allowed", () => {
  const cases: [string, Record<string, string>, string][] = [
    [
      "an address that is no e-mail address",
      { "pypi-infra:alarmEmails": '["not-an-email"]' },
      'pypi-infra:alarmEmails: ["not-an-email"] is not valid; expected a list of up to 20 different e-mail addresses such as [oncall@example.org]',
    ],
    [
      "one address twice",
      { "pypi-infra:alarmEmails": '["oncall@example.org","OnCall@example.org"]' },
      'pypi-infra:alarmEmails: ["oncall@example.org","OnCall@example.org"] is not valid; expected a list of up to 20 different e-mail addresses',
    ],
    [
      "a plain-http pager",
      { "pypi-infra:alarmHttpsEndpoints": '["http://pager.example.com/sns"]' },
      'pypi-infra:alarmHttpsEndpoints: ["http://pager.example.com/sns"] is not valid; expected a list of up to 20 different https:// URLs',
    ],
    [
      "a 15 s period",
      { "pypi-infra:alarmPeriodSeconds": "15" },
      "pypi-infra:alarmPeriodSeconds: 15 is not valid; expected one of 10, 30, 60 (CloudWatch high-resolution alarm periods)",
    ],
    [
      "a disk full at 100 %",
      { "pypi-infra:alarmDiskUsePercent": "100" },
      "pypi-infra:alarmDiskUsePercent: 100 is not valid; expected a whole number (percent) from 50 to 99",
    ],
    [
      "a publish interval as long as the alarm period",
      { "pypi-infra:healthIntervalSeconds": "10" },
      "pypi-infra:healthIntervalSeconds: 10 is not valid; expected at most half of pypi-infra:alarmPeriodSeconds (5)",
    ],
  ];
  test.each(cases)("%s", async (_label, set, message) => {
    const recorder = createMocks();
    await pulumi.runtime.setMocks(recorder.mocks, "pypi-infra", "staging", false);
    pulumi.runtime.setAllConfig(engineConfig("staging", set), []);
    const error = await program().then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error, "the program accepted it").toBeInstanceOf(ConfigError);
    const problems = (error as ConfigError).problems;
    expect(
      problems.some((p) => p.startsWith(message)),
      problems.join(" | "),
    ).toBe(true);
    expect(recorder.resources).toHaveLength(0);
  });
});

describe("pure parts", () => {
  const t = plannedOf("prod");
  const args = (changes: Partial<HealthAlarmsArgs> = {}): HealthAlarmsArgs => ({
    topology: t,
    instanceIds: Object.fromEntries(t.nodes.map((n) => [n.name, `i-${n.name}`])),
    account: { partition: "aws", accountId: ACCOUNT, region: REGION },
    ...changes,
  });

  test("validation errors name the arg and quote the value", () => {
    expect(() => validateHealthAlarmsArgs(args())).not.toThrow();
    expect(() =>
      validateHealthAlarmsArgs(args({ emails: ["a@example.org"], httpsEndpoints: [] })),
    ).not.toThrow();
    const { "db-b": _, ...noDbB } = args().instanceIds;
    expect(() => validateHealthAlarmsArgs(args({ instanceIds: noDbB }))).toThrow(
      'HealthAlarms: instanceIds has no entry for node "db-b"',
    );
    expect(() =>
      validateHealthAlarmsArgs(args({ instanceIds: { ...args().instanceIds, "db-c": "i-1" } })),
    ).toThrow('HealthAlarms: instanceIds names "db-c", which is no node of the topology');
    expect(() => validateHealthAlarmsArgs(args({ emails: ["a@example.org", "A@example.org"] }))).toThrow(
      'HealthAlarms: emails lists "A@example.org" twice (as "a@example.org" too)',
    );
    expect(() =>
      validateHealthAlarmsArgs(args({ httpsEndpoints: ["https://p.example/x", "https://p.example/x"] })),
    ).toThrow('HealthAlarms: httpsEndpoints lists "https://p.example/x" twice');
  });

  test("composite rules quote every name and refuse a quote", () => {
    expect(compositeRule(["pypi-prod-db-a-reporting", "pypi-prod-db-b-reporting"])).toBe(
      'ALARM("pypi-prod-db-a-reporting") AND ALARM("pypi-prod-db-b-reporting")',
    );
    expect(() => compositeRule(['a"b'])).toThrow('alarm name "a\\"b" cannot appear in an alarm rule');
  });

  test("subscription keys: stable, case-blind, short", () => {
    expect(subscriptionKey("OnCall@Example.org")).toBe(subscriptionKey("oncall@example.org"));
    expect(subscriptionKey("a@example.org")).not.toBe(subscriptionKey("b@example.org"));
    expect(subscriptionKey("a@example.org")).toMatch(/^[0-9a-f]{12}$/);
  });

  test("alarm names are unique and the composite's members are alarms", () => {
    const names = Object.keys(alarmRunbooks(t));
    expect(new Set(names).size).toBe(names.length);
    for (const c of compositeAlarms(t)) for (const m of c.allOf) expect(names).toContain(m);
    expect(statusCheckAlarms(t)).toHaveLength(2 * t.nodes.length);
  });
});
