/**
 * The agent's split, the way ClusterLabs resource agents are split: a library every script
 * sources, `pypi-node` for apply, check and status, one tool per role, and resource scripts that
 * carry their own logic. Each node ships only its role's tools, and `pypi-node` passes a role's
 * verbs to that role's tool (the runbooks keep their names), refusing them on another role.
 */
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { buildBundles, RETIRED_DRBD_HANDLER } from "../../src/bundle.js";
import { type AgentScript, agentScript, agentScriptPaths, renderAgentEnv } from "../../src/render/agent.js";
import { nodeByName, storagePair, type Topology } from "../../src/topology.js";
import { topologyFor } from "../support/topologies.js";
import { fakeCloud } from "./fake-cloud.js";

const t: Topology = topologyFor("prod");
const SCRIPTS = Object.keys(agentScriptPaths) as AgentScript[];

function shipped(node: string): AgentScript[] {
  const b = buildBundles(t).find((x) => x.node === node);
  if (!b) throw new Error(`no bundle for ${node}`);
  return SCRIPTS.filter((name) => b.files.some((f) => f.path === agentScriptPaths[name]));
}

/** Top-level function names a script defines. */
const functions = (name: AgentScript): string[] =>
  [...agentScript(name).matchAll(/^([a-z_]+)\(\) \{/gm)].map((m) => m[1] as string);

describe("each node ships its role's tools and no other's", () => {
  const common = ["lib", "pypi-node", "pypi-volume", "pypi-health"];
  it.each([
    ["lb-a", [...common, "pypi-balancer", "pypi-fip"]],
    ["db-a", [...common, "pypi-db", "pypi-overlay"]],
    ["app-a", [...common, "pypi-app", "pypi-nfs", "pypi-overlay", "pypi-drbd"]],
    ["app-c", [...common, "pypi-app"]],
  ])("%s", (node, tools) => {
    expect(shipped(node).sort()).toEqual([...tools].sort());
  });

  it("an upgraded app server removes the DRBD handler's old name; nothing ships it", () => {
    for (const b of buildBundles(t)) {
      expect(
        b.files.some((f) => f.path === RETIRED_DRBD_HANDLER),
        b.node,
      ).toBe(false);
      if (b.role === "app") expect(b.absent, b.node).toContain(RETIRED_DRBD_HANDLER);
    }
    expect(RETIRED_DRBD_HANDLER).toBe("/usr/local/lib/pypi-node/pypi-drbd-fence");
  });

  it("the storage pair is app-a and app-b in this topology (the cases above depend on it)", () => {
    expect(storagePair(t).map((n) => n.name)).toEqual(["app-a", "app-b"]);
  });
});

describe("logic lives in one script", () => {
  it("no function is defined in two scripts", () => {
    const seen = new Map<string, AgentScript>();
    const twice: string[] = [];
    for (const name of SCRIPTS)
      for (const fn of functions(name)) {
        const first = seen.get(fn);
        // Every tool has its own usage and main; nothing else may repeat.
        if (first !== undefined && !["usage", "main"].includes(fn)) twice.push(`${fn}: ${first}, ${name}`);
        seen.set(fn, name);
      }
    expect(twice).toEqual([]);
  });

  it("the overlay move is the resource script's own, not the library's", () => {
    expect(functions("pypi-overlay")).toEqual(expect.arrayContaining(["cmd_overlay", "overlay_holder"]));
    expect(functions("lib")).not.toContain("cmd_overlay");
    expect(agentScript("pypi-db")).toContain('"$PYPI_OVERLAY_SCRIPT" "$PYPI_OVERLAY_DB"');
  });

  it("no script replaces a route itself: the node roles cannot, only the route brokers may", () => {
    const code = (name: AgentScript): string =>
      agentScript(name)
        .split("\n")
        .filter((l) => !l.trim().startsWith("#"))
        .join("\n");
    expect(SCRIPTS.filter((name) => /replace-route|ReplaceRoute/i.test(code(name)))).toEqual([]);
    expect(agentScript("pypi-overlay")).toMatch(/lambda invoke \\\n\s+--function-name "\$broker"/);
  });

  it("pypi-node keeps apply, check and status; the role verbs are in the role tools", () => {
    const node = functions("pypi-node");
    expect(node).toEqual(expect.arrayContaining(["cmd_apply", "cmd_check", "cmd_status"]));
    for (const moved of ["cmd_watch", "cmd_upload_backends", "cmd_files_restore", "drbd_up", "cmd_grow"])
      expect(node, moved).not.toContain(moved);
    expect(functions("pypi-balancer")).toEqual(expect.arrayContaining(["cmd_watch", "cmd_upload_backends"]));
    expect(functions("pypi-app")).toEqual(expect.arrayContaining(["cmd_app_converge", "cmd_files_restore"]));
    expect(functions("pypi-drbd")).toEqual(expect.arrayContaining(["drbd_up", "fence_peer"]));
  });
});

describe("pypi-node passes a role's verbs to its tool", { timeout: 30_000 }, () => {
  const run = (node: string, args: string[]) => {
    const n = nodeByName(t, node);
    const cloud = fakeCloud(renderAgentEnv(t, n, []));
    try {
      return cloud.run("pypi-node", args);
    } finally {
      cloud.cleanup();
    }
  };

  it.each([
    ["db-a", ["upload-backends"], "upload-backends runs on a balancer node, not on a db"],
    ["lb-a", ["register"], "register runs on a app node, not on a balancer"],
    ["app-a", ["db-promote"], "db-promote runs on a db node, not on a app"],
    ["lb-a", ["overlay", t.overlay.dbWriter, "status"], "overlay: lb-a holds no overlay address"],
    ["app-c", ["nfs", "status"], "nfs: app-c is not in the storage pair"],
  ])("%s refuses %j by name", (node, args, message) => {
    const r = run(node, args);
    expect(r.status).toBe(1);
    expect(r.stderr).toContain(message);
  });

  it("reaches the role tool's own usage, so the verb went through", () => {
    const r = run("lb-a", ["upload-backend", "bogus", "lb-b"]);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain("upload-backend: enable|disable NODE");
    const d = run("db-a", ["db-sync"]);
    expect(d.stderr).toContain("usage: pypi-db COMMAND");
  });
});

describe("every verb the runbooks, units, Heartbeat and the lab use reaches its tool with its arguments", {
  timeout: 60_000,
}, () => {
  /** Runs `pypi-node ARGS` on NODE with every tool replaced by a recorder; returns what was called. */
  const dispatched = (node: string, args: string[]): string => {
    const cloud = fakeCloud(renderAgentEnv(t, nodeByName(t, node), []));
    try {
      for (const name of SCRIPTS.filter((n) => !["lib", "pypi-node"].includes(n)))
        writeFileSync(
          join(cloud.dir, name),
          `#!/bin/sh\necho "${name} $*" >>'${join(cloud.dir, "calls")}'\n`,
          { mode: 0o755 },
        );
      const r = cloud.run("pypi-node", args);
      expect(r.status, r.stderr).toBe(0);
      return readFileSync(join(cloud.dir, "calls"), "utf8").trim();
    } finally {
      cloud.cleanup();
    }
  };
  const writer = t.overlay.dbWriter;
  const storage = t.overlay.storage;
  const fip = t.floatingIps[0]?.address ?? "";

  it.each([
    ["lb-a", "converge", "pypi-balancer converge"],
    ["lb-a", "watch", "pypi-balancer watch"],
    ["lb-a", "upload-backend disable app-a", "pypi-balancer upload-backend disable app-a"],
    ["lb-a", "upload-backends --wait app-a", "pypi-balancer upload-backends --wait app-a"],
    ["lb-a", `fip ${fip} start`, `pypi-fip ${fip} start`],
    ["lb-a", "health --publish", "pypi-health --publish"],
    ["db-a", "converge", "pypi-db converge"],
    ["db-a", "db-promote", "pypi-db promote"],
    ["db-a", "db-fence", "pypi-db fence"],
    ["db-a", "db-sync off", "pypi-db sync off"],
    ["db-a", "db-replication --wait db-b", "pypi-db replication --wait db-b"],
    ["db-a", "db-backup full", "pypi-db backup full"],
    ["db-a", "db-restore --force", "pypi-db restore --force"],
    ["db-a", `overlay ${writer} take`, `pypi-overlay ${writer} take`],
    ["db-a", "disk-report", "pypi-volume report"],
    ["db-a", "volume-grow data", "pypi-volume grow data"],
    ["app-a", "converge", "pypi-app converge"],
    ["app-a", "db-writer-check", "pypi-app writer-check"],
    ["app-a", "storage-check", "pypi-app storage-check"],
    ["app-a", "app-migrate", "pypi-app migrate"],
    ["app-a", "register", "pypi-app register"],
    ["app-a", "files-copy", "pypi-app files-copy"],
    ["app-a", "files-restore --all", "pypi-app files-restore --all"],
    ["app-a", "package-layout /srv/x", "pypi-app package-layout /srv/x"],
    ["app-a", "nfs start", "pypi-nfs start"],
    ["app-a", `overlay ${storage} status`, `pypi-overlay ${storage} status`],
  ])("%s: pypi-node %s -> %s", (node, args, expected) => {
    expect(dispatched(node, args.split(" "))).toBe(expected);
  });

  it("status on a db node asks the database tool for its part", () => {
    expect(dispatched("db-a", ["status"])).toBe("pypi-db status");
  });
});
