import { beforeAll, describe, expect, test } from "vitest";
import type { Topology } from "../../src/topology.js";
import { type Built, builtStack, type StackName } from "./harness.js";
import { allowed, covers, groupOfNode, roleGroups } from "./iam.js";

const lambdaArn = (fn: string) => `arn:aws:lambda:us-east-1:123456789012:function:${fn}`;

/** Who may do what, written out by hand from the design: the nodes each capability belongs to. */
function designed(t: Topology) {
  const all = (role: string) => t.nodes.filter((n) => n.role === role).map((n) => n.name);
  const s = t.secrets;
  return {
    // Each overlay address's broker, by the nodes that may hold the address.
    invoke: {
      [lambdaArn(`pypi-${t.environment}-route-writer`)]: ["db-a", "db-b"],
      [lambdaArn(`pypi-${t.environment}-route-storage`)]: ["app-a", "app-b"],
    },
    readers: {
      [s.balancerAuthkey.parameter]: all("balancer"),
      [s.tlsCertificate.parameter]: all("balancer"),
      [s.tlsKey.parameter]: all("balancer"),
      [s.uploadHostKey.parameter]: all("app"),
      [s.postgresAppPassword.parameter]: all("app"),
      [s.storageAuthkey.parameter]: ["app-a", "app-b"],
      [s.drbdSecret.parameter]: ["app-a", "app-b"],
      [s.postgresReplicationPassword.parameter]: all("db"),
    },
  };
}

describe.each(["prod", "staging"] as const)("IAM of the %s stack, per node", (stack: StackName) => {
  let b: Built;
  beforeAll(async () => {
    b = await builtStack(stack);
  }, 60_000);

  const nodesAllowed = (action: string, resource: string): string[] =>
    [...groupOfNode(b)]
      .filter(([, g]) => allowed(g.statements, action).includes(resource))
      .map(([n]) => n)
      .sort();

  test("no node may replace a route; db nodes invoke the writer's broker, the storage pair the storage's", () => {
    const t = b.outputs.topology;
    const groups = groupOfNode(b);
    expect([...groups.keys()].sort()).toEqual(t.nodes.map((n) => n.name).sort());
    for (const [node, g] of groups) {
      // Not by name, nor by a wildcard such as ec2:* or ec2:Replace*.
      const replace = g.statements.filter(
        (s) => s.Effect === "Allow" && s.Action.some((a) => covers(a, "ec2:ReplaceRoute")),
      );
      expect(replace, node).toEqual([]);
      const lambda = g.statements.filter((s) => s.Action.some((a) => /^lambda:/i.test(a)));
      expect(
        lambda.flatMap((s) => s.Action),
        node,
      ).toEqual(lambda.length ? ["lambda:InvokeFunction"] : []);
    }
    for (const [arn, nodes] of Object.entries(designed(t).invoke))
      expect(nodesAllowed("lambda:InvokeFunction", arn), arn).toEqual(nodes);
    const brokers = Object.keys(designed(t).invoke);
    const invokers = (node: string) => allowed(groups.get(node)?.statements ?? [], "lambda:InvokeFunction");
    expect(invokers("db-a")).toEqual([brokers[0]]);
    expect(invokers("app-b")).toEqual([brokers[1]]);
    for (const lb of ["lb-a", "lb-b"]) expect(invokers(lb), lb).toEqual([]);
    if (stack === "prod") {
      // app-c is an app server outside the storage pair: no broker, no route, no storage secret.
      const appC = groups.get("app-c");
      expect(invokers("app-c")).toEqual([]);
      expect(
        appC?.statements.some((s) =>
          s.Action.some((a) => a.startsWith("ec2:") && !a.startsWith("ec2:Describe")),
        ),
      ).toBe(false);
      expect(allowed(appC?.statements ?? [], "ec2:DescribeRouteTables")).toEqual([]);
      expect(appC?.nodes).toEqual(["app-c"]);
      expect(groups.get("app-a")?.nodes).toEqual(["app-a", "app-b"]);
    }
  });

  test("only the brokers' roles may replace routes, and only in the private route tables", () => {
    const tables = b.outputs.topology.overlay.routeTableIds.map(
      (id) => `arn:aws:ec2:us-east-1:123456789012:route-table/${id}`,
    );
    expect(tables).toHaveLength(2);
    const replacers = roleGroups(b).filter((g) =>
      g.statements.some((s) => s.Effect === "Allow" && s.Action.some((a) => covers(a, "ec2:ReplaceRoute"))),
    );
    expect(replacers.map((g) => g.policies.map((p) => p.name)).sort()).toEqual([
      ["pypi-route-storage-policy"],
      ["pypi-route-writer-policy"],
    ]);
    for (const g of replacers) {
      expect(g.nodes).toEqual([]);
      expect(allowed(g.statements, "ec2:ReplaceRoute").sort()).toEqual([...tables].sort());
    }
  });

  test("each parameter is readable by exactly the nodes that need it", () => {
    const t = b.outputs.topology;
    const arns = new Map(
      b.ofType("aws:ssm/parameter:Parameter").map((p) => [String(p.inputs.name), String(p.state.arn)]),
    );
    const present = new Set(t.nodes.map((n) => n.name));
    for (const [parameter, readers] of Object.entries(designed(t).readers)) {
      expect(nodesAllowed("ssm:GetParameter", arns.get(parameter) ?? ""), parameter).toEqual(
        readers.filter((n) => present.has(n)).sort(),
      );
    }
    // Everything else is denied explicitly (the SSM core policy allows GetParameter on "*").
    for (const [node, g] of groupOfNode(b)) {
      const deny = g.statements.find((s) => s.Effect === "Deny");
      const readable = allowed(g.statements, "ssm:GetParameter");
      expect(deny?.NotResource?.sort(), node).toEqual(readable.sort());
    }
  });
});
