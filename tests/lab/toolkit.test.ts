/**
 * One namespace toolkit: lab/lib/ (netns.ts, holder.ts, lab-node.ts) is the only code that calls
 * `ip netns`, `unshare` or `nsenter`; the tests, the bench and the rest of the lab build on it.
 * Exempt are the scripts that run inside a node: the agent (src/agent/) and the lab node's init
 * and supervisor (lab/node/).
 */
import { readdirSync, readFileSync } from "node:fs";
import { join, relative } from "node:path";
import { describe, expect, it } from "vitest";
import { projectRoot } from "../../src/project-files.js";

const ROOT = projectRoot();
const SCANNED = ["tests", "bench", "lab", "src", "policy"];
const EXEMPT = ["lab/lib/", "lab/node/", "src/agent/", "tests/lab/toolkit.test.ts"];
const SKIPPED_DIRS = new Set(["node_modules", "dist", "results"]);
const SOURCE = /\.(ts|js|cjs|mjs|sh|pl)$/;

/**
 * Files that still call a tool themselves, with what they would need from the toolkit. Moving
 * one onto lab/lib/ makes its entry stale, and this test then asks for the entry to go.
 */
const PENDING: Record<string, string> = {};

/** Comments, and the tool lists of requireTools(...), which name tools without running them. */
function stripNonCalls(source: string, shell: boolean): string {
  let text = shell
    ? source.replace(/(^|\s)#.*$/gm, "$1")
    : source.replace(/(^|\s)\/\*[\s\S]*?\*\//g, "$1").replace(/(^|\s)\/\/.*$/gm, "$1");
  for (let at = text.indexOf("requireTools("); at >= 0; at = text.indexOf("requireTools(", at + 1)) {
    let depth = 0;
    let end = at + "requireTools".length;
    for (; end < text.length; end++) {
      if (text[end] === "(") depth++;
      else if (text[end] === ")" && --depth === 0) break;
    }
    // Keep the line count, so reported line numbers stay right.
    text = text.slice(0, at) + text.slice(at, end + 1).replace(/[^\n]/g, " ") + text.slice(end + 1);
  }
  return text;
}

const CALLS: readonly RegExp[] = [
  /\b(unshare|nsenter)\b/,
  // ip("netns", ...), ["ip", "netns", ...], a veth peer's "netns", ns
  /["'`]netns["'`]/,
  // the same in shell
  /\bip\s+(-\S+\s+)*netns\b/,
];

/** Lines of `source` that call one of the tools. */
function callsIn(source: string, shell = false): { line: number; text: string }[] {
  return stripNonCalls(source, shell)
    .split("\n")
    .flatMap((text, i) => (CALLS.some((re) => re.test(text)) ? [{ line: i + 1, text: text.trim() }] : []));
}

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const path = join(dir, e.name);
    if (e.isDirectory()) return SKIPPED_DIRS.has(e.name) ? [] : sources(path);
    return e.isFile() && SOURCE.test(e.name) ? [path] : [];
  });
}

function offenders(): Map<string, string[]> {
  const found = new Map<string, string[]>();
  for (const dir of SCANNED) {
    for (const path of sources(join(ROOT, dir))) {
      const rel = relative(ROOT, path);
      if (EXEMPT.some((e) => rel === e || rel.startsWith(e))) continue;
      const calls = callsIn(readFileSync(path, "utf8"), /\.(sh|pl)$/.test(rel));
      if (calls.length > 0)
        found.set(
          rel,
          calls.map((c) => `${rel}:${c.line}: ${c.text}`),
        );
    }
  }
  return found;
}

describe("one namespace toolkit", () => {
  it("recognises calls, not mentions", () => {
    const calls = [
      'spawnSync("nsenter", ["-t", pid, "-m", "--", ...argv]);',
      'run(["ip", "netns", "exec", ns, ...argv]);',
      'ip("netns", "add", name);',
      'execFileSync("unshare", ["--mount", "sh", "-c", script]);',
      'sh("ip netns exec ns-a true");',
      'run(["ip", "link", "add", "v0", "type", "veth", "peer", "name", "eth0", "netns", ns]);',
    ];
    for (const c of calls) expect(callsIn(c), c).toHaveLength(1);
    const mentions = [
      'import { createNode } from "../../lab/lib/netns.js";',
      'const canRun = requireTools("tier (x)", [\n  "ip",\n  "unshare",\n  "nsenter",\n]);',
      "// nsenter joins the node; unshare is done by the toolkit",
      "/**\n * ip netns exec, as the lab does\n */",
      "const iso = { netns: ns, pid: true };",
      'const url = "http://127.0.0.1/"; const ns = "x"; // then netns "y"',
      'sb.exec(["ab", "-q", "-k", "-n", String(n), url]); spawnSync("sh", ["-n", file]);',
    ];
    for (const m of mentions) expect(callsIn(m), m).toEqual([]);
    expect(callsIn("# unshare --mount in a comment\nunshare --mount sh -c true\n", true)).toEqual([
      { line: 2, text: "unshare --mount sh -c true" },
    ]);
  });

  it("nothing outside lab/lib/ calls ip netns, unshare or nsenter itself", () => {
    const found = offenders();
    const unexpected = [...found].filter(([file]) => !(file in PENDING)).flatMap(([, lines]) => lines);
    expect(unexpected, "use lab/lib/netns.ts and lab/lib/holder.ts instead").toEqual([]);
    const stale = Object.keys(PENDING).filter((file) => !found.has(file));
    expect(stale, "no longer calls the tools itself: remove it from PENDING").toEqual([]);
  });
});
