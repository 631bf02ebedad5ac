import { beforeAll, describe, expect, test } from "vitest";
import type { Topology } from "../../src/topology.js";
import { type Built, builtStack, type StackName } from "./harness.js";
import { allowed, groupOfNode } from "./iam.js";

/** Who may do what, written out by hand from the design: the nodes each capability belongs to. */
function designed(t: Topology) {
  const all = (role: string) => t.nodes.filter((n) => n.role === role).map((n) => n.name);
  const s = t.secrets;
  return {
    replaceRoute: ["app-a", "app-b", "db-a", "db-b"],
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

  test("only the databases and the storage pair may replace routes, and only in the private tables", () => {
    const t = b.outputs.topology;
    const tables = t.overlay.routeTableIds.map(
      (id) => `arn:aws:ec2:us-east-1:123456789012:route-table/${id}`,
    );
    for (const table of tables)
      expect(nodesAllowed("ec2:ReplaceRoute", table)).toEqual(designed(t).replaceRoute);
    for (const [node, g] of groupOfNode(b)) {
      const may = allowed(g.statements, "ec2:ReplaceRoute");
      expect(
        may.every((r) => tables.includes(r)),
        node,
      ).toBe(true);
    }
    if (stack === "prod") {
      // app-c is an app server outside the storage pair: no route, no storage secret.
      const appC = groupOfNode(b).get("app-c");
      expect(
        appC?.statements.some((s) =>
          s.Action.some((a) => a.startsWith("ec2:") && !a.startsWith("ec2:Describe")),
        ),
      ).toBe(false);
      expect(appC?.nodes).toEqual(["app-c"]);
      expect(groupOfNode(b).get("app-a")?.nodes).toEqual(["app-a", "app-b"]);
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
