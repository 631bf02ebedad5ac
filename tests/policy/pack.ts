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

/** Every string anywhere inside a value. */
const stringsIn = (v: unknown): string[] =>
  typeof v === "string"
    ? [v]
    : typeof v === "object" && v !== null
      ? Object.values(v).flatMap(stringsIn)
      : [];

/**
 * The mocked stack as CrossGuard would see it: inputs (plus the id), and for every top-level
 * input that holds other resources' ids anywhere inside it (`securityGroups: [id]`,
 * `primaryNetworkInterface.networkInterfaceId`), those resources as the property's dependencies.
 */
export function stackResources(b: Built, stack: string): StackResource[] {
  const urnOf = (type: string, name: string) => `urn:pulumi:${stack}::pypi-infra::${type}::${name}`;
  const byId = new Map(b.resources.map((r) => [r.id, urnOf(r.type, r.name)]));
  return b.resources.map((r) => {
    const urn = urnOf(r.type, r.name);
    const props = { ...(unwrap(r.inputs) as Record<string, unknown>), id: r.id };
    const propertyDependencies: Record<string, { urn: string }[]> = {};
    for (const [key, value] of Object.entries(props)) {
      if (key === "id") continue;
      const urns = new Set(stringsIn(value).flatMap((s) => byId.get(s) ?? []));
      urns.delete(urn);
      if (urns.size > 0) propertyDependencies[key] = [...urns].map((u) => ({ urn: u }));
    }
    return { type: r.type, name: r.name, urn, props, propertyDependencies };
  });
}

/**
 * The stack as a first preview shows it: ids, and every input holding one, are unknown
 * (CrossGuard's proxy throws on access), so only the dependencies link resources.
 */
export function firstPreview(resources: readonly StackResource[]): StackResource[] {
  const ids = new Set(resources.map((r) => r.props.id));
  const proxy = <V extends object>(target: V): V =>
    new Proxy(target, {
      get(obj, key) {
        const value = Reflect.get(obj, key);
        if (key === "id" || (typeof value === "string" && ids.has(value)))
          throw Object.assign(new Error(`${String(key)} is unknown during preview`), {
            name: "UnknownValueError",
          });
        return typeof value === "object" && value !== null ? proxy(value) : value;
      },
    });
  return resources.map((r) => ({ ...r, props: proxy({ ...r.props }) }));
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
