import type { Built, Recorded } from "./harness.js";

export interface Statement {
  Sid: string;
  Effect: string;
  Action: string[];
  Resource?: string | string[];
  NotResource?: string[];
  Condition?: Record<string, Record<string, string[]>>;
}

/** One IAM role as launched: its rendered inline policies and the nodes whose profile carries it. */
export interface RoleGroup {
  /** Every inline policy of the role (the node policy, and the CDN purge when there is a CDN). */
  readonly policies: Recorded[];
  /** The statements of all of them. */
  readonly statements: Statement[];
  readonly nodes: string[];
}

export const asList = (v: string | string[] | undefined): string[] =>
  v === undefined ? [] : Array.isArray(v) ? v : [v];

/** Follows instance -> instance profile -> role -> inline policy, by the names the mocks resolved. */
export function roleGroups(b: Built): RoleGroup[] {
  const profiles = b.ofType("aws:iam/instanceProfile:InstanceProfile");
  const instances = b.ofType("aws:ec2/instance:Instance");
  const byRole = new Map<unknown, Recorded[]>();
  for (const policy of b.ofType("aws:iam/rolePolicy:RolePolicy"))
    byRole.set(policy.inputs.role, [...(byRole.get(policy.inputs.role) ?? []), policy]);
  return [...byRole].map(([role, policies]) => {
    const profileNames = profiles.filter((p) => p.inputs.role === role).map((p) => p.state.name);
    const nodes = instances
      .filter((i) => profileNames.includes(i.inputs.iamInstanceProfile))
      .map((i) => String((i.inputs.tags as Record<string, string>).Name))
      .sort();
    const statements = policies.flatMap((p) => JSON.parse(String(p.inputs.policy)).Statement as Statement[]);
    return { policies, statements, nodes };
  });
}

/** Resources an Allow statement grants `action` on (no wildcard actions are used). */
export const allowed = (statements: readonly Statement[], action: string): string[] =>
  statements
    .filter((s) => s.Effect === "Allow" && s.Action.includes(action))
    .flatMap((s) => asList(s.Resource));

/** Node name -> role group, for every launched node. */
export function groupOfNode(b: Built): Map<string, RoleGroup> {
  const out = new Map<string, RoleGroup>();
  for (const g of roleGroups(b)) for (const n of g.nodes) out.set(n, g);
  return out;
}

/** Whether an IAM pattern (`*` and `?` wildcards, case-insensitive) covers `value`: an action or an ARN. */
export function covers(pattern: string, value: string): boolean {
  const re = pattern
    .split("")
    .map((c) => (c === "*" ? ".*" : c === "?" ? "." : c.replace(/[.+^${}()|[\]\\]/g, "\\$&")))
    .join("");
  return new RegExp(`^${re}$`, "i").test(value);
}
