/**
 * Balancer drill helpers: crash and "reboot" a balancer node, and time how long until a floating
 * IP is held by a given balancer and answers HTTPS through it.
 */

import { readFileSync } from "node:fs";
import { BALANCER_WATCH_COMMAND } from "../../src/render/heartbeat.js";
import { httpsVia, type Lab } from "../lib/lab.js";
import { nodePids, sleep, until } from "./common.js";

/** Quick HTTPS probe of /_health through one floating IP (1 s budget, so polls stay fine-grained). */
export async function httpsOk(lab: Lab, fip: string, maxSeconds = 1): Promise<boolean> {
  return (await httpsVia(lab, fip, "/_health", maxSeconds)).code === 200;
}

export const homeFip = (lab: Lab, balancer: string): string => {
  const fip = lab.t.floatingIps.find((f) => f.home === balancer)?.address;
  if (!fip) throw new Error(`no floating IP homed on ${balancer}`);
  return fip;
};

export const peerBalancer = (lab: Lab, balancer: string): string => {
  const peer = lab.nodesOf("balancer").find((n) => n.name !== balancer)?.name;
  if (!peer) throw new Error(`no peer of ${balancer}`);
  return peer;
};

/** Epoch ms when `holder` holds `fip` and when HTTPS through it then answers 200. */
export async function timeOwnership(
  lab: Lab,
  fip: string,
  holder: string,
  timeoutMs: number,
  exclusive = false,
): Promise<{ addressAt: number; httpsAt: number }> {
  const addressAt = await until(`${holder} holds ${fip}`, timeoutMs, () => {
    if (!lab.addresses(holder).includes(fip)) return false;
    if (!exclusive) return true;
    return lab.nodesOf("balancer").every((n) => n.name === holder || !lab.addresses(n.name).includes(fip));
  });
  const httpsAt = await until(`HTTPS via ${fip}`, timeoutMs, () => httpsOk(lab, fip), 20);
  return { addressAt, httpsAt };
}

/** Watchdog processes (BALANCER_WATCH_COMMAND) on a balancer: Heartbeat respawns exactly one. */
export function watchers(lab: Lab, node: string): number {
  const [tool, verb] = BALANCER_WATCH_COMMAND.split(" ") as [string, string];
  return nodePids(lab, node).filter((pid) => {
    try {
      const argv = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
      return argv.includes(tool) && argv.includes(verb);
    } catch {
      return false;
    }
  }).length;
}

/** Wait until the node runs exactly one watchdog (Heartbeat starts it shortly after itself). */
export async function oneWatcher(lab: Lab, node: string): Promise<string> {
  await until(`one nginx watchdog on ${node}`, 15_000, () => watchers(lab, node) === 1, 200).catch(() => {
    throw new Error(`${node} runs ${watchers(lab, node)} nginx watchdogs (${BALANCER_WATCH_COMMAND}), not 1`);
  });
  await sleep(1_000);
  const n = watchers(lab, node);
  if (n !== 1) throw new Error(`${node} runs ${n} nginx watchdogs (${BALANCER_WATCH_COMMAND}), not 1`);
  return `${node}: one nginx watchdog, respawned by Heartbeat`;
}
