/**
 * How a node comes up, as data shared by the stack and the lab: the packages its user data
 * installs, what the rollout runs on it after `pulumi up`, and in which order.
 */
import { bootstrapScriptPath } from "./render/cloud-init.js";
import type { NodeRole } from "./topology.js";

/** Packages every node's user data installs; the rest come with the bundle. */
export const BASE_PACKAGES: readonly string[] = ["ca-certificates", "curl"];

/** What the rollout runs on a node (through SSM on AWS): the very bootstrap of its first boot. */
export const ROLLOUT_COMMAND: readonly string[] = [bootstrapScriptPath];

/** Tiers in rollout order; each is a chain of its nodes, one at a time. */
const ROLLOUT_TIERS: readonly NodeRole[] = ["balancer", "app", "db"];

/**
 * Rollout chains: the chains run side by side, the nodes of one chain one at a time and in
 * order, so the two nodes of a pair are never re-applied at once.
 */
export function rolloutChains(
  nodes: readonly { readonly name: string; readonly role: NodeRole }[],
): string[][] {
  return ROLLOUT_TIERS.map((role) => nodes.filter((n) => n.role === role).map((n) => n.name));
}
