/**
 * The lab brings nodes up through the AWS path and nothing else: per node, the commands it runs
 * are the user data's runcmd (as cloud-init runs it), the boot unit, and the rollout's SSM
 * command, in the stack's rollout order. These tests read the stack's own renderers.
 */
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { bootUnitCommand, packageInstallEffects, userDataOf, userDataPlan } from "../../lab/lib/boot.js";
import { loadLabTopology } from "../../lab/lib/config.js";
import { BASE_PACKAGES, ROLLOUT_COMMAND, rolloutChains } from "../../src/bring-up.js";
import { buildBundles } from "../../src/bundle.js";
import { renderApplyScript } from "../../src/components/rollout.js";
import { bootstrapScriptPath, renderCloudInit, ssmAgentInstall } from "../../src/render/cloud-init.js";
import { topologyFor } from "../support/topologies.js";

const lab = loadLabTopology(process.cwd());

describe("lab bring-up equals the AWS bring-up", () => {
  for (const shape of ["staging", "prod"] as const) {
    const aws = topologyFor(shape);
    it(`${shape}: every node's first-boot commands are the lab's, plus only the SSM agent install`, () => {
      for (const node of aws.nodes) {
        const labTwin = lab.nodes.find((n) => n.role === node.role);
        if (!labTwin) throw new Error(`the lab has no ${node.role}`);
        const awsRuncmd = userDataPlan(renderCloudInit(aws, node, BASE_PACKAGES)).runcmd;
        const labRuncmd = userDataPlan(userDataOf(lab, labTwin.name)).runcmd;
        // The SSM agent is the rollout's channel on AWS; in the lab the rollout enters the node directly.
        expect(awsRuncmd).toEqual([["sh", "-c", ssmAgentInstall(aws.region)], ...labRuncmd]);
        expect(labRuncmd).toEqual([[bootstrapScriptPath]]);
      }
    });
  }

  it("the one stand-in for apt: a db node's first boot finds Debian's own cluster running, as its bundle's package leaves it", () => {
    for (const node of lab.nodes) {
      const effects = packageInstallEffects(lab, node.name);
      if (node.role !== "db") {
        expect(effects, node.name).toEqual([]);
        continue;
      }
      const v = lab.postgres.version;
      expect(effects).toEqual([
        ["sh", "-c", `rm -rf /var/lib/postgresql/${v} && pg_createcluster ${v} main --start >/dev/null`],
      ]);
      expect(buildBundles(lab).find((b) => b.node === node.name)?.packages).toContain(`postgresql-${v}`);
    }
  });

  it("a later boot runs the unit the user data installs, which is the same bootstrap", () => {
    for (const node of lab.nodes) {
      expect(bootUnitCommand(userDataPlan(userDataOf(lab, node.name)))).toEqual([bootstrapScriptPath]);
    }
  });

  it("the rollout runs the same command through SSM that the lab runs", () => {
    expect(ROLLOUT_COMMAND).toEqual([bootstrapScriptPath]);
    expect(renderApplyScript()).toContain(`commands=["${ROLLOUT_COMMAND.join(" ")}"]`);
  });

  it("rollout chains: one per tier, each pair one node at a time", () => {
    expect(rolloutChains(lab.nodes)).toEqual([
      ["lb-a", "lb-b"],
      ["app-a", "app-b"],
      ["db-a", "db-b"],
    ]);
    const prod = topologyFor("prod");
    expect(rolloutChains(prod.nodes).flat().sort()).toEqual(prod.nodes.map((n) => n.name).sort());
  });

  it("no lab code runs a bring-up step of its own (db-init, overlay take, app-migrate, package-layout, apply)", () => {
    const files: string[] = [];
    const walk = (dir: string) => {
      for (const entry of readdirSync(dir)) {
        const path = join(dir, entry);
        if (statSync(path).isDirectory()) walk(path);
        else if (path.endsWith(".ts")) files.push(path);
      }
    };
    walk(join(process.cwd(), "lab"));
    const forbidden = [
      /db-init/,
      /app-migrate/,
      /package-layout/,
      /overlay [^`"']*take/,
      /\bapply\b["'` ]/,
      /\bconverge\b/,
    ];
    const offenders = files.flatMap((file) =>
      readFileSync(file, "utf8")
        .split("\n")
        .map((line, i) => ({ file, line: i + 1, text: line }))
        .filter(({ text }) => !text.trim().startsWith("*") && !text.trim().startsWith("//"))
        .filter(({ text }) => forbidden.some((re) => re.test(text))),
    );
    expect(offenders.map((o) => `${o.file}:${o.line}: ${o.text.trim()}`)).toEqual([]);
  });
});
