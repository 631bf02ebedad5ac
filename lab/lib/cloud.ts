/**
 * The lab's stand-in for what EC2 does with an association: an EIP or an overlay route points at
 * one node at a time, so when a node takes an address the cloud takes it off the previous holder
 * at once. The agent's lab backend records each association in the shared store
 * (`<store>/cloud/eips/<address>`, `<store>/cloud/routes/<address>`: the holder's name) and adds
 * the address on its own interface; this process removes it from every other node. It runs in
 * the bridge's namespace, so it ends with the lab, and `--keep` keeps it.
 */
import { spawn } from "node:child_process";
import { existsSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Topology } from "../../src/topology.js";

/** How often the stand-in enforces the associations (EC2 moves an EIP in about a second). */
const INTERVAL_SECONDS = 0.2;

const ENFORCE = `store=$1
shift
while :; do
  for pair in "$@"; do
    node=\${pair%%=*} rest=\${pair#*=} ns=\${rest%%=*} iface=\${rest#*=}
    held=$(ip -n "$ns" -o addr show dev "$iface" 2>/dev/null) || continue
    for file in "$store"/cloud/eips/* "$store"/cloud/routes/*; do
      [ -s "$file" ] || continue
      read -r holder <"$file" || continue
      [ "$holder" = "$node" ] && continue
      addr=\${file##*/}
      case $held in
        *" $addr/"*)
          ip -n "$ns" addr del "$addr/32" dev "$iface" 2>/dev/null &&
            echo "$(date +%T.%N) $addr taken off $node (associated with $holder)"
          ;;
      esac
    done
  done
  sleep ${INTERVAL_SECONDS}
done
`;

/** Start the stand-in in `bridgeNs`; `store` is the host side of the nodes' bundleLocation. */
export function startCloud(
  t: Topology,
  bridgeNs: string,
  store: string,
  nsOf: (name: string) => string,
): void {
  const triples = t.nodes.map((n) => `${n.name}=${nsOf(n.name)}=${n.interface}`);
  const log = openSync(join(store, "..", "cloud.log"), "a");
  const child = spawn("ip", ["netns", "exec", bridgeNs, "sh", "-c", ENFORCE, "cloud", store, ...triples], {
    detached: true,
    stdio: ["ignore", log, log],
  });
  child.unref();
}

/**
 * What EC2 does when a node's instance and its interface are deleted: its EIP associations go,
 * and routes to it stay but become blackholes (the agent reads those as held by nobody).
 */
export function instanceDeleted(store: string, node: string): string[] {
  const changed: string[] = [];
  for (const kind of ["eips", "routes"] as const) {
    const dir = join(store, "cloud", kind);
    if (!existsSync(dir)) continue;
    for (const addr of readdirSync(dir)) {
      const file = join(dir, addr);
      const [holder] = readFileSync(file, "utf8").trim().split(/\s+/);
      if (holder !== node) continue;
      if (kind === "eips") rmSync(file);
      else writeFileSync(file, `${node} blackhole\n`);
      changed.push(`${kind}/${addr}`);
    }
  }
  return changed;
}
