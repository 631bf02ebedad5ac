/**
 * Bring the lab up the way `pulumi up` brings up AWS: every node boots at once from the user data
 * the stack renders, then the stack's rollout runs, then the floating IPs must serve a healthy
 * app. The nodes coordinate the pairs themselves (pypi-node converge). Each phase is a report
 * check, so a failure says where the lab stopped.
 */
import { readFileSync } from "node:fs";
import { dataVolumeDevice, pgDataDir } from "../../src/layout.js";
import { nodesWithRole, type Topology } from "../../src/topology.js";
import { firstBoot, rollout } from "./boot.js";
import { type HttpsResult, httpsVia, type Lab, nsOf } from "./lab.js";
import { namespacePids } from "./netns.js";
import type { Report } from "./report.js";

const SECTION = "bring-up";
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Poll `probe` until it returns a string (success) or the deadline passes (throws with the last reason). */
export async function waitFor(
  what: string,
  timeoutMs: number,
  probe: () => Promise<string | Error> | string | Error,
  intervalMs = 200,
): Promise<string> {
  const start = Date.now();
  let last: Error = new Error("not tried");
  while (Date.now() - start < timeoutMs) {
    const r = await probe();
    if (typeof r === "string") return r;
    last = r;
    await sleep(intervalMs);
  }
  throw new Error(`${what}: not within ${timeoutMs / 1000} s; last: ${last.message}`);
}

export function fipHomes(t: Topology): Map<string, string> {
  return new Map(t.floatingIps.map((f) => [f.address, f.home]));
}

async function floatingIpsHome(lab: Lab): Promise<string> {
  return waitFor("every floating IP on its home balancer", 30_000, () => {
    const missing = lab.t.floatingIps.filter((f) => !lab.addresses(f.home).includes(f.address));
    return missing.length === 0
      ? lab.t.floatingIps.map((f) => `${f.address}@${f.home}`).join(", ")
      : new Error(
          `not yet held: ${missing.map((f) => `${f.address}@${f.home} (${nsOf(f.home)})`).join(", ")}`,
        );
  });
}

/** `/_health` through one floating IP: status code and body. */
export const healthVia = (lab: Lab, fip: string): Promise<HttpsResult> => httpsVia(lab, fip, "/_health");

async function healthyEverywhere(lab: Lab): Promise<string> {
  return waitFor(
    "HTTPS /_health 200 through every floating IP",
    45_000,
    async () => {
      const results = await Promise.all(lab.t.floatingIps.map((f) => healthVia(lab, f.address)));
      const bad = results.findIndex((r) => r.code !== 200);
      return bad < 0
        ? `200 via ${lab.t.floatingIps.map((f) => f.address).join(", ")}`
        : new Error(
            `${lab.t.floatingIps[bad]?.address}: ${results[bad]?.code} ${results[bad]?.body.slice(0, 300)}`,
          );
    },
    500,
  );
}

/** Postmasters in a node: processes named postgres whose parent is not one. */
function postmasters(ns: string): number[] {
  const comm = (pid: number | string): string => {
    try {
      return readFileSync(`/proc/${pid}/comm`, "utf8").trim();
    } catch {
      return "";
    }
  };
  const parent = (pid: number): string => {
    try {
      return (
        readFileSync(`/proc/${pid}/stat`, "utf8")
          .replace(/^.*\) /, "")
          .split(" ")[1] ?? ""
      );
    } catch {
      return "";
    }
  };
  return namespacePids(ns).filter((pid) => comm(pid) === "postgres" && comm(parent(pid)) !== "postgres");
}

/**
 * Each db node runs exactly one Postgres, from its data volume: the cluster Debian's package
 * started on the root disk at first boot is stopped and hidden under the volume.
 */
async function dbOnDataVolume(lab: Lab): Promise<string> {
  const out: string[] = [];
  for (const n of nodesWithRole(lab.t, "db")) {
    if (n.dataVolumeId === undefined) throw new Error(`${n.name} has no data volume in the lab topology`);
    const data = pgDataDir(lab.t.postgres.version);
    const r = await lab
      .node(n.name)
      .execAsync([
        "sh",
        "-c",
        'readlink -f "$(findmnt -n -o SOURCE --target "$1")"; readlink -f "$2"',
        "sh",
        data,
        dataVolumeDevice(n.dataVolumeId),
      ]);
    const [source, volume] = r.stdout.trim().split("\n");
    if (r.status !== 0 || !source || source !== volume)
      throw new Error(`${n.name}: ${data} is on ${source || "?"}, not on its data volume ${volume || "?"}`);
    const running = postmasters(nsOf(n.name));
    if (running.length !== 1)
      throw new Error(`${n.name} runs ${running.length} postmasters (pids ${running.join(", ")}), not 1`);
    out.push(`${n.name}: ${data} on ${source}, 1 postmaster`);
  }
  return out.join("; ");
}

async function step(report: Report, name: string, fn: () => Promise<string> | string): Promise<void> {
  if (!(await report.check(SECTION, name, fn))) throw new Error(`bring-up stopped at: ${name}`);
}

/** First boot of every node at once, as `pulumi up` launches them; the pairs sort themselves out. */
async function firstBootAll(lab: Lab, report: Report): Promise<boolean> {
  const results = await Promise.all(
    lab.t.nodes.map((n) =>
      report.check(SECTION, `${n.name} (${n.role}): first boot from its user data`, async () => {
        const steps = await firstBoot(lab, n.name);
        report.steps.push(...steps);
        return steps.map((s) => `\`${s.argv.join(" ")}\` ${s.seconds.toFixed(1)} s`).join("; ");
      }),
    ),
  );
  for (const role of ["balancer", "app", "db"] as const) {
    const times = report.steps.filter(
      (s) => s.phase === "first boot" && lab.t.nodes.some((n) => n.name === s.node && n.role === role),
    );
    if (times.length)
      report.figure(
        SECTION,
        `first boot of the ${role} tier (slowest node)`,
        Math.max(...times.map((s) => s.seconds)),
        "s",
      );
  }
  return !results.includes(false);
}

/** Every phase of the bring-up; throws at the first phase that fails (already in the report). */
export async function bringUp(lab: Lab, report: Report): Promise<void> {
  await step(report, "bundles built and secret store written", () => {
    lab.writeBundles();
    lab.preparePackageVolume();
    lab.prepareBackupStores();
    return `${lab.t.nodes.length} bundles under ${lab.dirs.store}; stand-ins for the S3 backup buckets: directories ${lab.dirs.backupRepository} (pgBackRest) and ${lab.dirs.fileCopies} (file copies)`;
  });
  await step(report, "network namespaces and bridge", () => {
    lab.createNetwork();
    return `${lab.t.nodes.length} nodes + client on ${lab.t.vpcCidr}`;
  });
  await step(report, "nodes started (private mount/UTS/IPC namespaces)", async () => {
    await lab.startNodes();
    await lab.prepareClient();
    return [...lab.nodes.keys()].join(", ");
  });
  if (!(await firstBootAll(lab, report))) throw new Error("bring-up stopped: a node failed its first boot");
  await step(report, "rollout after `up` (the stack's chains, one node of a pair at a time)", async () => {
    const steps = await rollout(lab);
    report.steps.push(...steps);
    return steps.map((s) => `${s.node} ${s.seconds.toFixed(1)} s`).join(", ");
  });
  await step(report, "floating IPs on their home balancers", () => floatingIpsHome(lab));
  await step(
    report,
    "each db node runs one Postgres, on its data volume (Debian's first cluster stopped)",
    () => dbOnDataVolume(lab),
  );
  await step(report, "HTTPS /_health through every floating IP", () => healthyEverywhere(lab));
}
