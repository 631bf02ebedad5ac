import type {
  ResourceValidationArgs,
  ResourceValidationPolicy,
  StackValidationArgs,
  StackValidationPolicy,
} from "@pulumi/policy";
import { policies, type StackResource } from "../../policy/policies.js";
import { type Built, plain } from "../stack/harness.js";

export interface Violation {
  readonly policy: string;
  readonly message: string;
  readonly urn?: string;
}

/** Recorded inputs with every secret wrapper removed, as CrossGuard hands them to policies. */
export function unwrap(v: unknown): unknown {
  const p = plain(v);
  if (Array.isArray(p)) return p.map(unwrap);
  if (typeof p === "object" && p !== null)
    return Object.fromEntries(Object.entries(p).map(([k, x]) => [k, unwrap(x)]));
  return p;
}

/**
 * The mocked stack as CrossGuard would see it: inputs (plus the id), and for every input that
 * holds another resource's id, that resource as the property's dependency.
 */
export function stackResources(b: Built, stack: string): StackResource[] {
  const urnOf = (type: string, name: string) => `urn:pulumi:${stack}::pypi-infra::${type}::${name}`;
  const byId = new Map(b.resources.map((r) => [r.id, urnOf(r.type, r.name)]));
  return b.resources.map((r) => {
    const props = { ...(unwrap(r.inputs) as Record<string, unknown>), id: r.id };
    const propertyDependencies: Record<string, { urn: string }[]> = {};
    for (const [key, value] of Object.entries(props)) {
      const urn = key !== "id" && typeof value === "string" ? byId.get(value) : undefined;
      if (urn) propertyDependencies[key] = [{ urn }];
    }
    return { type: r.type, name: r.name, urn: urnOf(r.type, r.name), props, propertyDependencies };
  });
}

const isStackPolicy = (p: ResourceValidationPolicy | StackValidationPolicy): p is StackValidationPolicy =>
  "validateStack" in p;

/** Runs the whole pack, every policy over every resource, the way the engine does. */
export async function runPack(resources: readonly StackResource[]): Promise<Violation[]> {
  const out: Violation[] = [];
  for (const policy of policies) {
    const report = (message: string, urn?: string) => {
      out.push({ policy: policy.name, message, ...(urn ? { urn } : {}) });
    };
    if (isStackPolicy(policy)) {
      await policy.validateStack({ resources } as unknown as StackValidationArgs, report);
      continue;
    }
    const v = policy.validateResource;
    const validations = v === undefined ? [] : Array.isArray(v) ? v : [v];
    for (const r of resources)
      for (const validate of validations)
        await validate(
          { type: r.type, name: r.name, urn: r.urn, props: r.props } as ResourceValidationArgs,
          (m) => report(m, r.urn),
        );
  }
  return out;
}
