/**
 * `npm run lab`: the whole system on one machine with the real daemons. Brings the lab up,
 * runs the end-to-end checks (then the drills), writes lab/report.{json,md} and tears down,
 * unless `--keep`. `--pg11` runs Postgres 11 (recovery.conf). `down` removes a kept or crashed lab.
 */
import { existsSync, mkdirSync } from "node:fs";
import { join, resolve } from "node:path";
import { pgDialect } from "../src/topology.js";
import { runEndToEnd } from "./checks/e2e.js";
import { runTlsScan } from "./checks/tls-scan.js";
import { drills } from "./drills/index.js";
import { bringUp } from "./lib/bringup.js";
import { type AlarmCollector, EVALUATION_DELAY_MS } from "./lib/collector.js";
import { type LabOptions, loadLabTopology, runTopology } from "./lib/config.js";
import { Lab, labDirs } from "./lib/lab.js";
import { ensureDebianPackages, requireRoot } from "./lib/preflight.js";
import { Report } from "./lib/report.js";
import { generateUploadKey, writeSecretStore } from "./lib/secrets.js";
import { StateFile, teardown } from "./lib/state.js";

/** The whole run, checks included, must finish within this. */
const RUN_TIMEOUT_MS = 35 * 60_000;
const BRING_UP_GOAL_SECONDS = 60;

const log = (msg: string): void => {
  process.stdout.write(`lab: ${msg}\n`);
};

interface Paths {
  readonly repo: string;
  readonly runDir: string;
  readonly state: StateFile;
  readonly reportJson: string;
  readonly reportMd: string;
}

function labPaths(): Paths {
  const repo = resolve(process.cwd());
  if (!existsSync(join(repo, "lab", "topology.json")))
    throw new Error(`run from the repository root (no lab/topology.json under ${repo})`);
  return {
    repo,
    runDir: join(repo, ".lab", "run"),
    state: new StateFile(join(repo, ".lab", "state.json")),
    reportJson: join(repo, "lab", "report.json"),
    reportMd: join(repo, "lab", "report.md"),
  };
}

function down(p: Paths): number {
  const r = teardown(p.state, [p.runDir]);
  log(
    `down: ${r.namespaces.length ? `removed namespaces ${r.namespaces.join(" ")}` : "no lab namespaces"}` +
      `${r.volumes.length ? `; detached volumes ${r.volumes.join(" ")}` : ""}` +
      `${r.dirs.length ? `; removed ${r.dirs.join(" ")}` : ""}`,
  );
  for (const e of r.errors) log(`down: ${e}`);
  return r.errors.length ? 1 : 0;
}

function labNotes(lab: Lab, report: Report): void {
  const t = lab.t;
  report.environment.topology = "lab/topology.json";
  report.environment.postgres = `${t.postgres.version} (${pgDialect(t.postgres.version)}), synchronous ${t.postgres.synchronous ? "on" : "off"}`;
  report.environment.nodes = t.nodes.map((n) => `${n.name} ${n.privateIp}`).join(", ");
  report.environment["floating IPs"] = t.floatingIps.map((f) => `${f.address} (home ${f.home})`).join(", ");
  report.environment["writer overlay"] = t.overlay.dbWriter;
  report.note(
    `Package volume: no DRBD and no nfsd in this kernel. The storage pair's Heartbeat runs, but its group starts at the NFS resource (which lays the volume out) and the overlay address; DRBD's disk and mount and the NFS server are left out. One host directory, bind-mounted at ${t.storage.volumeMount} and ${t.storage.packageRoot}, stands in for the DRBD volume and its NFS export. The DRBD/NFS configs are validated by the agent (drbdadm 8.4 emulation, exportfs), and DRBD's first bring-up, which AWS nodes do themselves, never runs here.`,
  );
  report.note(
    "Cloud APIs are the lab backend's: EIP association and route replacement are records in the shared lab store plus the address on the node's interface (gratuitous ARP); bundles are fetched from a directory instead of S3; secrets are files instead of SSM parameters; there is no IMDS.",
  );
  report.note(
    "No systemd in a lab node: its init (lab/node/init.pl) runs a service manager that reads the real unit files (Restart=, RestartSec=, After=, the register job's .path and .timer) and starts enabled units at boot, among them the bootstrap unit the user data enables. A crash kills the node's PID namespace at once; its disk and data volume (a loop device under the EBS by-id name) survive for the reboot.",
  );
}

/**
 * No fault, no alarm: from the lab coming up through the end-to-end checks, nothing fires. Waits
 * for two more alarm periods, so the last checks' datapoints are evaluated too.
 */
async function quietWhenHealthy(
  lab: Lab,
  report: Report,
  collector: AlarmCollector,
  from: number,
): Promise<void> {
  await new Promise((r) => setTimeout(r, 2 * lab.t.health.periodSeconds * 1000 + EVALUATION_DELAY_MS));
  const fired = collector.firedSince(from);
  report.figure(
    "alarms",
    "alarms fired while healthy (lab up, end-to-end checks)",
    fired.length,
    "alarms",
    "goal 0",
  );
  await report.check("alarms", "quiet when healthy: no alarm fired without a fault", () => {
    if (fired.length)
      throw new Error(
        fired.map((x) => `${x.alarm} at +${((x.at - from) / 1000).toFixed(1)} s (${x.runbook})`).join(", "),
      );
    return `${collector.alarms.length} alarms evaluated every ${lab.t.health.periodSeconds} s for ${((Date.now() - from) / 1000).toFixed(0)} s: none fired`;
  });
}

async function run(opts: LabOptions, p: Paths): Promise<number> {
  requireRoot();
  ensureDebianPackages(p.repo, log);
  const leftover = teardown(p.state, [p.runDir]);
  if (leftover.namespaces.length)
    log(`removed leftovers of an earlier run: ${leftover.namespaces.join(" ")}`);

  const started = Date.now();
  const report = new Report(`pypi lab${opts.pg11 ? " (postgres 11)" : ""}`);
  const dirs = labDirs(p.runDir);
  p.state.add("dirs", p.runDir);
  mkdirSync(dirs.work, { recursive: true, mode: 0o700 });
  const key = generateUploadKey(dirs.work);
  const t = runTopology(loadLabTopology(p.repo), opts, p.repo, key.publicKey);
  const material = writeSecretStore(join(dirs.store, "secrets"), dirs.work, t);
  const lab = new Lab(t, dirs, material, p.state);
  labNotes(lab, report);

  let exit = 1;
  try {
    await bringUp(lab, report);
    const upSeconds = (Date.now() - started) / 1000;
    report.figure(
      "bring-up",
      "lab up and healthy",
      Math.round(upSeconds * 10) / 10,
      "s",
      `goal <= ${BRING_UP_GOAL_SECONDS} s`,
    );
    // From here on the CloudWatch stand-in evaluates the nodes' published health.
    const collector = lab.startCollector();
    const quietFrom = Date.now();
    await runEndToEnd(lab, report);
    const greenSeconds = (Date.now() - started) / 1000;
    report.figure(
      "bring-up",
      "lab up with every check green",
      Math.round(greenSeconds * 10) / 10,
      "s",
      report.ok ? "all green" : "NOT green",
    );
    // The security pass scans the TLS endpoint once the lab is known to be green.
    if (report.ok) await runTlsScan(lab, report);
    await quietWhenHealthy(lab, report, collector, quietFrom);
    if (report.ok)
      for (const drill of drills)
        if (!opts.drills || BOOKKEEPING_DRILLS.has(drill.id) || opts.drills.includes(drill.id))
          await drill.run(lab, report);
    exit = report.ok ? 0 : 1;
  } catch (err) {
    log(err instanceof Error ? err.message : String(err));
  } finally {
    report.write(p.reportJson, p.reportMd);
    process.stdout.write(`\n${report.table()}\n\nreport: ${p.reportMd}, ${p.reportJson}\n`);
  }
  if (opts.keep) {
    log("lab kept running (--keep). Get into a node with:");
    for (const line of lab.enterCommands()) process.stdout.write(`  ${line}\n`);
    log("tear it down with: npm run lab:down");
  } else {
    lab.stopNodes();
    down(p);
  }
  return exit;
}

/** The run-time total's markers: they run whenever drills do. */
const BOOKKEEPING_DRILLS = new Set(["start", "total"]);
const USAGE = "usage: lab [down] [--keep] [--pg11] [--drills=ID,ID...]";

function parseArgs(argv: readonly string[]): { command: "up" | "down"; opts: LabOptions } {
  const known = new Set(["down", "--keep", "--pg11"]);
  const drillArg = argv.find((a) => a.startsWith("--drills="));
  const unknown = argv.filter((a) => !known.has(a) && a !== drillArg);
  if (unknown.length) throw new Error(`unknown argument(s): ${unknown.join(" ")} (${USAGE})`);
  const ids = drillArg?.slice("--drills=".length).split(",").filter(Boolean);
  const bad = ids?.filter((id) => BOOKKEEPING_DRILLS.has(id) || !drills.some((d) => d.id === id));
  if (ids && (ids.length === 0 || (bad?.length ?? 0) > 0))
    throw new Error(
      `--drills: ${JSON.stringify(bad?.join(",") ?? "")} names no drill; drills are ${drills
        .map((d) => d.id)
        .filter((id) => !BOOKKEEPING_DRILLS.has(id))
        .join(", ")} (${USAGE})`,
    );
  return {
    command: argv.includes("down") ? "down" : "up",
    opts: { keep: argv.includes("--keep"), pg11: argv.includes("--pg11"), drills: ids },
  };
}

async function main(): Promise<number> {
  const { command, opts } = parseArgs(process.argv.slice(2));
  const p = labPaths();
  if (command === "down") {
    requireRoot();
    return down(p);
  }
  const abort = (why: string, code: number) => {
    log(`${why}: tearing down`);
    down(p);
    process.exit(code);
  };
  process.once("SIGINT", () => abort("interrupted", 130));
  process.once("SIGTERM", () => abort("terminated", 143));
  const timer = setTimeout(
    () => abort(`run exceeded ${RUN_TIMEOUT_MS / 60_000} minutes`, 124),
    RUN_TIMEOUT_MS,
  );
  try {
    return await run(opts, p);
  } finally {
    clearTimeout(timer);
  }
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    log(err instanceof Error ? (err.stack ?? err.message) : String(err));
    process.exit(1);
  },
);
