/**
 * How a lab node boots: what cloud-init does with the node's user data on AWS (write its files,
 * run its commands), what systemd does at every later boot (start the enabled bootstrap unit),
 * and the stack's post-`up` rollout. The lab renders the user data with the stack's renderer and
 * runs it as it stands; it adds no step of its own.
 */
import { parse } from "yaml";
import { BASE_PACKAGES, ROLLOUT_COMMAND, rolloutChains } from "../../src/bring-up.js";
import { pgBinDir } from "../../src/layout.js";
import { bootstrapUnitPath, renderCloudInit } from "../../src/render/cloud-init.js";
import { nodeByName, type Topology } from "../../src/topology.js";
import type { Lab } from "./lab.js";
import { shq } from "./lab-node.js";

export interface UserDataFile {
  readonly path: string;
  readonly permissions: string;
  readonly owner: string;
  readonly content: string;
}

/** The parts of a `#cloud-config` the nodes' user data uses. */
export interface UserDataPlan {
  readonly hostname: string;
  readonly packages: readonly string[];
  readonly files: readonly UserDataFile[];
  readonly runcmd: readonly (readonly string[])[];
}

const asStrings = (value: unknown, what: string): string[] => {
  if (!Array.isArray(value) || !value.every((v) => typeof v === "string"))
    throw new Error(`user data: ${what} is not a list of strings`);
  return value;
};

export function userDataPlan(text: string): UserDataPlan {
  if (!text.startsWith("#cloud-config\n")) throw new Error("user data: not a #cloud-config document");
  const doc = parse(text) as Record<string, unknown>;
  const files = (doc.write_files ?? []) as Record<string, unknown>[];
  return {
    hostname: String(doc.hostname ?? ""),
    packages: asStrings(doc.packages ?? [], "packages"),
    files: files.map((f) => ({
      path: String(f.path),
      permissions: String(f.permissions ?? "0644"),
      owner: String(f.owner ?? "root:root"),
      content: String(f.content ?? ""),
    })),
    // cloud-init runs a list entry as argv and a string entry through sh.
    runcmd: ((doc.runcmd ?? []) as unknown[]).map((c) =>
      typeof c === "string" ? ["sh", "-c", c] : asStrings(c, "a runcmd entry"),
    ),
  };
}

/** The node's user data exactly as the stack renders it. */
export function userDataOf(t: Topology, name: string): string {
  return renderCloudInit(t, nodeByName(t, name), BASE_PACKAGES);
}

/** The command systemd runs for the enabled bootstrap unit at every boot after the first. */
export function bootUnitCommand(plan: UserDataPlan): string[] {
  const unit = plan.files.find((f) => f.path === bootstrapUnitPath);
  const exec = unit?.content.match(/^ExecStart=(.+)$/m)?.[1];
  if (!exec) throw new Error(`user data: no ${bootstrapUnitPath} with an ExecStart line`);
  return exec.split(" ");
}

/**
 * What installing a node's packages leaves on its root disk on AWS, which the lab host's
 * preinstalled packages cannot: Debian's postgresql-<v> postinst creates the `main` cluster
 * (createcluster.conf's default) and starts it, before the bundle's files are installed. The
 * agent has to stop it and mount the data volume over it. Only for a Debian-packaged major: the
 * lab's Postgres 11 (the recovery.conf dialect) has no package.
 */
export function packageInstallEffects(t: Topology, name: string): string[][] {
  const node = nodeByName(t, name);
  const v = t.postgres.version;
  if (node.role !== "db" || t.postgres.binDir !== pgBinDir(v)) return [];
  // The lab's disk shows the host's own cluster directory, which a fresh instance's root disk lacks.
  return [["sh", "-c", `rm -rf /var/lib/postgresql/${v} && pg_createcluster ${v} main --start >/dev/null`]];
}

/** One command the lab ran on a node to bring it up, in order, with its duration. */
export interface BringUpStep {
  readonly node: string;
  readonly phase: "packages" | "first boot" | "boot" | "rollout";
  readonly argv: readonly string[];
  readonly seconds: number;
}

async function runStep(
  lab: Lab,
  node: string,
  phase: BringUpStep["phase"],
  argv: readonly string[],
): Promise<BringUpStep> {
  const start = Date.now();
  const r = await lab.node(node).execAsync(argv, { timeoutMs: 600_000 });
  const seconds = (Date.now() - start) / 1000;
  if (r.status !== 0)
    throw new Error(
      `${node}: ${phase} step \`${argv.join(" ")}\` failed (${r.status}) after ${seconds.toFixed(1)} s\n${r.stderr.slice(-3000)}${r.stdout.slice(-1000)}`,
    );
  return { node, phase, argv, seconds };
}

/**
 * First boot, as cloud-init runs it: the packages must already be there (the lab host carries
 * the same Debian packages), the files are written, then every runcmd entry runs in order.
 */
export async function firstBoot(lab: Lab, name: string): Promise<BringUpStep[]> {
  const plan = userDataPlan(userDataOf(lab.t, name));
  const node = lab.node(name);
  const missing = await node.execAsync([
    "sh",
    "-c",
    `for p in ${plan.packages.map(shq).join(" ")}; do dpkg-query -W -f='\${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"; done`,
  ]);
  if (missing.stdout.trim())
    throw new Error(`${name}: user data packages not installed: ${missing.stdout.trim()}`);
  const steps: BringUpStep[] = [];
  for (const argv of packageInstallEffects(lab.t, name))
    steps.push(await runStep(lab, name, "packages", argv));
  for (const f of plan.files) {
    await node.sh(
      `mkdir -p "$(dirname ${shq(f.path)})" && cat >${shq(f.path)} && chown ${shq(f.owner)} ${shq(f.path)} && chmod ${shq(f.permissions)} ${shq(f.path)}`,
      { input: f.content },
    );
  }
  for (const argv of plan.runcmd) steps.push(await runStep(lab, name, "first boot", argv));
  return steps;
}

const BOOT_UNIT_STATUS = "/run/pypi-supervise/job/pypi-bootstrap.service/status";
const BOOT_UNIT_LOG = "/var/log/pypi-supervise/pypi-bootstrap.service.log";

/**
 * Power the node on again: its init starts the units the bootstrap enabled, the bootstrap unit
 * among them, as systemd does at boot. Resolves when that unit has finished, with its time.
 */
export async function bootAgain(lab: Lab, name: string, timeoutMs = 600_000): Promise<BringUpStep> {
  const plan = userDataPlan(userDataOf(lab.t, name));
  const node = lab.node(name);
  const start = Date.now();
  await node.boot();
  for (;;) {
    const r = await node.execAsync(["cat", BOOT_UNIT_STATUS]);
    if (r.status === 0) {
      const seconds = (Date.now() - start) / 1000;
      if (r.stdout.trim() !== "0") {
        const log = await node.execAsync(["tail", "-n", "30", BOOT_UNIT_LOG]);
        throw new Error(`${name}: the boot unit failed (status ${r.stdout.trim()})\n${log.stdout}`);
      }
      return { node: name, phase: "boot", argv: bootUnitCommand(plan), seconds };
    }
    if (Date.now() - start > timeoutMs)
      throw new Error(`${name}: the boot unit did not finish within ${timeoutMs / 1000} s`);
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

/** A reboot: the whole node dies at once (see LabNode.crash), then boots on the same disk. */
export async function reboot(lab: Lab, name: string): Promise<BringUpStep> {
  await lab.node(name).crash();
  return bootAgain(lab, name);
}

/** The stack's post-`up` rollout: chains side by side, one node of a chain at a time. */
export async function rollout(lab: Lab): Promise<BringUpStep[]> {
  const perChain = await Promise.all(
    rolloutChains(lab.t.nodes).map(async (chain) => {
      const steps: BringUpStep[] = [];
      for (const name of chain) steps.push(await runStep(lab, name, "rollout", ROLLOUT_COMMAND));
      return steps;
    }),
  );
  return perChain.flat();
}
