/**
 * No path is written in both TypeScript and the agent's shell: every path the scripts use that a
 * renderer or the bundle also writes reaches them through node.env (renderAgentEnv).
 * (a) No absolute path of a shipped script appears in a TypeScript string under src/, neither as
 *     the same path nor as a directory of one or below one, unless ALLOWED says why.
 * (b) Every PYPI_* variable a script reads is in the node.env of the nodes that ship it, is set by
 *     the scripts themselves, or is a tunable (TUNABLES) read with a default.
 */
import { readdirSync, readFileSync } from "node:fs";
import { join, relative } from "node:path";
import ts from "typescript";
import { describe, expect, it } from "vitest";
import { buildBundles } from "../../src/bundle.js";
import { paths } from "../../src/layout.js";
import { projectFile, projectRoot } from "../../src/project-files.js";
import { type AgentScript, agentScript, agentScriptPaths } from "../../src/render/agent.js";
import { storagePair, type Topology } from "../../src/topology.js";
import { asLab, topologyFor } from "../support/topologies.js";

const SCRIPTS = Object.keys(agentScriptPaths) as AgentScript[];

/**
 * Script paths that may stay although TypeScript names them (or a path related to them), and why.
 * Paths only Debian and the scripts know (/usr/share/heartbeat/hb_standby, /run/haproxy.pid, ...)
 * need no entry: no TypeScript writes them.
 */
const ALLOWED: Record<string, string> = {
  // The one path node.env cannot carry; "lib.sh defaults PYPI_NODE_CONFIG" below pins it.
  [paths.agentConfig]: "where node.env itself is",
  "/dev/null": "the null device (the bootstrap's shell text in TypeScript uses it too)",
  // drbd-peer-outdater, dopd's client, is Debian's heartbeat package's; DOPD is its daemon. The
  // handler runs under the kernel's PATH and reads no node.env.
  "/usr/libexec/heartbeat": "pypi-drbd: Debian's heartbeat libexec dir on PATH",
  // drbd_converge formats the device; drbd.ts and heartbeat.ts render `/dev/drbd${minor}` too.
  // Converge is edited elsewhere; the move to a node.env variable is left to that change.
  "/dev/drbd*": "drbd_converge: the DRBD device, from PYPI_DRBD_MINOR",
};

/** Tunables: read only as `${NAME:-default}`, set in the environment by operators, tests or the lab. */
const TUNABLES = new Set([
  "PYPI_APPLY_START",
  "PYPI_DB_PEER_WAIT_SECONDS",
  "PYPI_DIRECT_SKIP",
  "PYPI_HB_STANDBY",
  "PYPI_HB_TAKEOVER",
  "PYPI_REPO_WAIT_SECONDS",
  "PYPI_RESTORE_WAIT_SECONDS",
  "PYPI_START_TIMEOUT",
  "PYPI_STOP_TIMEOUT",
  "PYPI_SUBNET_PREFIX",
  "PYPI_VERIFY_SECONDS",
  "PYPI_VOLUME_WAIT_SECONDS",
  "PYPI_WATCH_INTERVAL",
  "PYPI_WATCH_PAUSE",
]);

/**
 * A script's code: comments dropped (a word that starts with `#` starts one, as in sh; the
 * scripts quote no such word) and the library line agentScript renders from paths.agentLib.
 */
function code(text: string): string {
  return text
    .split("\n")
    .filter((l) => !l.startsWith("PYPI_LIB="))
    .map((l) => l.replace(/(^|\s)#.*$/, ""))
    .join("\n");
}

/** Absolute paths of two or more segments, expansions (`$X`, `${X}`) read as `*`. */
function shellPaths(text: string): string[] {
  const found = code(text).match(/(?<![\w$})./])\/[a-z](?:[\w.*@+/-]|\$\{[^}]*\}|\$\w+)*/g) ?? [];
  return found.map((p) => p.replace(/\$\{[^}]*\}|\$\w+/g, "*").replace(/\/+$/, "")).filter(multiSegment);
}

const multiSegment = (p: string): boolean => /^\/[^/]+\/[^/]/.test(p);

/** The text of every string and template literal of a TypeScript file, substitutions as `*`. */
function tsStrings(file: string): string[] {
  const source = ts.createSourceFile(file, readFileSync(file, "utf8"), ts.ScriptTarget.ES2022, true);
  const out: string[] = [];
  const visit = (node: ts.Node): void => {
    if (ts.isStringLiteral(node) || ts.isNoSubstitutionTemplateLiteral(node)) out.push(node.text);
    else if (ts.isTemplateExpression(node))
      out.push([node.head.text, ...node.templateSpans.map((s) => s.literal.text)].join("*"));
    ts.forEachChild(node, visit);
  };
  visit(source);
  return out;
}

function tsFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const path = join(dir, e.name);
    if (e.isDirectory()) return tsFiles(path);
    return e.name.endsWith(".ts") ? [path] : [];
  });
}

/** Absolute paths inside TypeScript strings under src/, with the file that writes each. */
const tsPaths: { path: string; file: string }[] = tsFiles(projectFile("src")).flatMap((file) =>
  tsStrings(file).flatMap((s) =>
    (s.match(/(?<![\w*.:/-])\/[a-z][\w.*@+/-]*/g) ?? [])
      .map((p) => p.replace(/\/+$/, ""))
      .filter(multiSegment)
      .map((path) => ({ path, file: relative(projectRoot(), file) })),
  ),
);

const reEscape = (s: string): string => s.replace(/[.+?^${}()|[\]\\]/g, "\\$&");
/** PATTERN (`*` within one segment) names PATH or a directory above it. */
const covers = (pattern: string, path: string): boolean =>
  new RegExp(`^${pattern.split("*").map(reEscape).join("[^/]*")}(/.*)?$`).test(path.replaceAll("*", "x"));
/** Same path, or one is a directory of the other. */
const related = (a: string, b: string): boolean => covers(a, b) || covers(b, a);

/** Each script path TypeScript also writes, with where. */
function duplicates(text: string): string[] {
  return [...new Set(shellPaths(text))].flatMap((p) => {
    if (p in ALLOWED) return [];
    const hits = tsPaths.filter((t) => related(p, t.path));
    return hits.length ? [`${p} (${[...new Set(hits.map((h) => `${h.file}: ${h.path}`))].join(", ")})`] : [];
  });
}

describe("agent paths: written once, in TypeScript", () => {
  it("finds the paths TypeScript writes (the check has something to compare with)", () => {
    const all = tsPaths.map((t) => t.path);
    expect(all).toContain(paths.agentState);
    expect(all).toContain("/etc/ha.d/ha.cf");
    expect(all).toContain("/run/nginx.pid");
  });

  it.each(SCRIPTS)("%s uses no absolute path that TypeScript writes too", (name) => {
    expect(duplicates(agentScript(name))).toEqual([]);
  });

  it("flags a path put back into a script, as itself, as a directory or below one", () => {
    const back = [
      "grep -q x /etc/ha.d/ha.cf",
      "mkdir -p /run/haproxy",
      'stage_confdir "$bundle" /etc/nginx "$stage"',
      // biome-ignore lint/suspicious/noTemplateCurlyInString: a shell parameter expansion
      "SNAP_ROOT=${PYPI_AGENT_STATE:-/var/lib/pypi-node}/previous",
      "case $path in /etc/ssh/ssh_host_*_key) : ;; esac",
      'pg_tool_path=/usr/lib/postgresql/*/bin/"$pg_tool"',
    ];
    for (const line of back) expect(duplicates(`#!/bin/sh\n${line}\n`), line).toHaveLength(1);
    // Comments and the rendered library line are not code.
    expect(duplicates("# reads /etc/ha.d/ha.cf\nPYPI_LIB='/usr/local/lib/pypi-node/lib.sh'\n")).toEqual([]);
  });

  it("every ALLOWED path is still in a script (no stale exceptions)", () => {
    const used = new Set(SCRIPTS.flatMap((name) => shellPaths(agentScript(name))));
    for (const p of Object.keys(ALLOWED)) expect(used, p).toContain(p);
  });

  it("lib.sh defaults PYPI_NODE_CONFIG to paths.agentConfig, the only place a script names it", () => {
    const defaults = SCRIPTS.flatMap((name) =>
      [...code(agentScript(name)).matchAll(/PYPI_NODE_CONFIG=\$\{PYPI_NODE_CONFIG:-([^}]*)\}/g)].map((m) => [
        name,
        m[1],
      ]),
    );
    expect(defaults).toEqual([["lib", paths.agentConfig]]);
    const mentions = SCRIPTS.filter((name) => code(agentScript(name)).includes(paths.agentConfig));
    expect(mentions).toEqual(["lib"]);
  });
});

/** prod with its data volumes, as the stack gives them (db nodes and the storage pair). */
function prodWithVolumes(): Topology {
  const t = topologyFor("prod");
  const pair = storagePair(t).map((n) => n.name);
  return {
    ...t,
    nodes: t.nodes.map((n, i) =>
      n.role === "db" || pair.includes(n.name) ? { ...n, dataVolumeId: `vol-0abc000${i}def0000${i}` } : n,
    ),
  };
}

/** Per node: the scripts its bundle ships and the variables its node.env sets, over both backends. */
function shippedEnvs(): { node: string; scripts: AgentScript[]; vars: Set<string> }[] {
  const byNode = new Map<string, { node: string; scripts: AgentScript[]; vars: Set<string> }>();
  for (const t of [prodWithVolumes(), asLab(prodWithVolumes())]) {
    for (const b of buildBundles(t)) {
      const env = b.files.find((f) => f.path === paths.agentConfig)?.content ?? "";
      const entry = byNode.get(b.node) ?? { node: b.node, scripts: [], vars: new Set<string>() };
      for (const name of SCRIPTS)
        if (b.files.some((f) => f.path === agentScriptPaths[name]) && !entry.scripts.includes(name))
          entry.scripts.push(name);
      for (const m of env.matchAll(/^(PYPI_\w+)=/gm)) entry.vars.add(m[1] as string);
      byNode.set(b.node, entry);
    }
  }
  return [...byNode.values()];
}

const reads = (text: string): Set<string> =>
  new Set([...code(text).matchAll(/\$\{?(PYPI_\w+)/g)].map((m) => m[1] as string));

/** Variables the scripts assign themselves (`PYPI_X=`, `export PYPI_X=`), the rendered line included. */
const assigned = new Set(
  SCRIPTS.flatMap((name) =>
    [...agentScript(name).matchAll(/(?:^|[\s;&|(])(?:export\s+)?(PYPI_\w+)=/gm)].map((m) => m[1] as string),
  ),
);

describe("agent variables: every one a script reads is emitted for its nodes", () => {
  const nodes = shippedEnvs();

  it.each(SCRIPTS)("%s reads only variables its nodes' node.env sets (or it sets, or tunables)", (name) => {
    const shipping = nodes.filter((n) => n.scripts.includes(name));
    expect(shipping.length, `no bundle ships ${name}`).toBeGreaterThan(0);
    // A script every node ships (the library, pypi-node) has role-specific parts: a variable is
    // needed on some node. A script for some nodes only needs each variable on each of them.
    // A variable read only as `${V:-}` is optional by its reads: some of these nodes must set it.
    const everywhere = shipping.length === nodes.length;
    const text = code(agentScript(name));
    const optional = (v: string): boolean =>
      [...text.matchAll(new RegExp(`\\$\\{?${v}\\b(:-\\})?`, "g"))].every((m) => m[1] !== undefined);
    const missing = [...reads(agentScript(name))]
      .filter((v) => !assigned.has(v) && !TUNABLES.has(v))
      .flatMap((v) => {
        const lacking = shipping.filter((n) => !n.vars.has(v)).map((n) => n.node);
        const bad = everywhere || optional(v) ? lacking.length === shipping.length : lacking.length > 0;
        return bad ? [`${v} (not in node.env of ${lacking.join(", ")})`] : [];
      });
    expect(missing).toEqual([]);
  });

  it("tunables are read only with a default, and no node.env sets them", () => {
    for (const name of SCRIPTS) {
      const text = code(agentScript(name));
      for (const v of TUNABLES) {
        const uses = [...text.matchAll(new RegExp(`\\$\\{?${v}\\b(:-)?`, "g"))];
        expect(
          uses.filter((m) => m[1] === undefined).map((m) => m[0]),
          `${name}: ${v}`,
        ).toEqual([]);
      }
    }
    for (const n of nodes) for (const v of TUNABLES) expect(n.vars.has(v), `${n.node}: ${v}`).toBe(false);
  });

  it("every tunable is still read somewhere", () => {
    const all = new Set(SCRIPTS.flatMap((name) => [...reads(agentScript(name))]));
    for (const v of TUNABLES) expect(all, v).toContain(v);
  });
});
