/**
 * Bring the lab up: network, nodes, bundles applied by the agent, database pair initialised,
 * writer address taken, schema migrated, and wait until the floating IPs serve a healthy app.
 * Each phase is a report check, so a failure says where the lab stopped.
 */
import { nodesWithRole, paths, type Topology } from "../../src/topology.js";
import { CLIENT_DIR, clientCommand, type Lab, nsOf } from "./lab.js";
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

/** Apply every db node's bundle, then `db-init` the primary before the standby, then take the writer. */
async function databases(lab: Lab): Promise<string> {
  const dbs = nodesWithRole(lab.t, "db");
  await Promise.all(dbs.map((n) => lab.apply(n.name)));
  for (const n of dbs) await lab.agent(n.name, "db-init", { timeoutMs: 180_000 });
  const primary = dbs[0];
  if (!primary) throw new Error("no db node");
  await lab.agent(primary.name, `overlay ${lab.t.overlay.dbWriter} take`);
  return `${dbs.map((n) => n.name).join(" + ")} initialised; writer ${lab.t.overlay.dbWriter} on ${primary.name}`;
}

/** Apply every app server, then lay out the shared package volume once the upload users exist. */
async function appServers(lab: Lab): Promise<string> {
  const apps = nodesWithRole(lab.t, "app");
  // The storage pair's exports name the DRBD mount point; on AWS the volume's mount creates it.
  await Promise.all(
    apps.map(async (n) => {
      await lab.node(n.name).runAsync(["mkdir", "-p", lab.t.storage.volumeMount]);
      await lab.apply(n.name);
    }),
  );
  const first = apps[0];
  if (!first) throw new Error("no app node");
  const layout = await lab.agent(first.name, `package-layout ${lab.t.storage.packageRoot}`);
  return `${apps.map((n) => n.name).join(", ")} applied; ${layout.trim()} (shared lab directory)`;
}

async function balancers(lab: Lab): Promise<string> {
  const lbs = nodesWithRole(lab.t, "balancer");
  await Promise.all(lbs.map((n) => lab.apply(n.name)));
  return `${lbs.map((n) => n.name).join(", ")} applied`;
}

/** Schema migrations, run once from the first app server through the writer address. */
async function migrate(lab: Lab): Promise<string> {
  const app = nodesWithRole(lab.t, "app")[0];
  if (!app) throw new Error("no app node");
  const r = await lab.exec(app.name, `${paths.agent} app-migrate`, { timeoutMs: 60_000 });
  if (r.status !== 0) throw new Error(`app-migrate failed (${r.status}): ${r.stderr}${r.stdout}`);
  return r.stderr.trim().split("\n").at(-1) ?? "migrated";
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

/** curl from the client to https://<domain>/_health through one floating IP: status code and body. */
export async function healthVia(lab: Lab, fip: string): Promise<{ code: number; body: string }> {
  const r = await lab.client.execAsync(
    clientCommand([
      "curl",
      "-sS",
      "--max-time",
      "5",
      "--cacert",
      `${CLIENT_DIR}/ca.pem`,
      "--resolve",
      `${lab.t.domain}:443:${fip}`,
      "-w",
      "\n%{http_code}",
      `https://${lab.t.domain}/_health`,
    ]),
    { timeoutMs: 10_000 },
  );
  const lines = r.stdout.trimEnd().split("\n");
  const code = Number(lines.pop() ?? 0);
  return { code, body: lines.join("\n") || r.stderr };
}

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

async function step(report: Report, name: string, fn: () => Promise<string> | string): Promise<void> {
  if (!(await report.check(SECTION, name, fn))) throw new Error(`bring-up stopped at: ${name}`);
}

/** Every phase of the bring-up; throws at the first phase that fails (already in the report). */
export async function bringUp(lab: Lab, report: Report): Promise<void> {
  await step(report, "bundles built and secret store written", () => {
    lab.writeBundles();
    lab.preparePackageVolume();
    return `${lab.t.nodes.length} bundles under ${lab.dirs.store}`;
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
  // The three tiers apply in parallel; each is its own check.
  const tiers = await Promise.all([
    report.check(SECTION, "db nodes: apply, db-init, writer overlay", () => databases(lab)),
    report.check(SECTION, "app nodes: apply, package volume layout", () => appServers(lab)),
    report.check(SECTION, "balancers: apply (nginx, haproxy, heartbeat)", () => balancers(lab)),
  ]);
  if (tiers.includes(false)) throw new Error("bring-up stopped: a tier failed to apply");
  await step(report, "schema migrated through the writer address", () => migrate(lab));
  await step(report, "floating IPs on their home balancers", () => floatingIpsHome(lab));
  await step(report, "HTTPS /_health through every floating IP", () => healthyEverywhere(lab));
}
