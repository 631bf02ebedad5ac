import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildBundles } from "../../src/bundle.js";
import type { NodeBundle } from "../../src/bundle-types.js";
import type { Topology } from "../../src/topology.js";
import { agentIn, writeBundleDir } from "../support/bundle-files.js";
import { runInNodeSandbox } from "../support/sandbox.js";
import { requireTools } from "../support/tools.js";
import { asLab, topologyFor } from "../support/topologies.js";

const canRun = requireTools("agent apply tier", ["nginx", "haproxy", "unshare", "openssl", "ip"]);

const lb = (t: Topology): NodeBundle => {
  const bundle = buildBundles(t).find((b) => b.node === "lb-a");
  if (!bundle) throw new Error("no lb-a");
  return bundle;
};

/** Splits the sandbox transcript into the sections the script marks with `== name`. */
function sections(stdout: string): Record<string, string> {
  const out: Record<string, string> = {};
  let current = "";
  for (const line of stdout.split("\n")) {
    const marker = /^== (\S+)$/.exec(line);
    if (marker?.[1]) current = marker[1];
    else if (current) out[current] = `${out[current] ?? ""}${line}\n`;
  }
  return out;
}

describe.skipIf(!canRun)("pypi-node apply on a real balancer (lab backend)", () => {
  let scratch = "";
  let transcript: Record<string, string> = {};
  let stderr = "";

  beforeAll(() => {
    scratch = mkdtempSync(join(tmpdir(), "pypi-apply-"));
    const cert = join(scratch, "cert.pem");
    const key = join(scratch, "key.pem");
    execFileSync(
      "openssl",
      [
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=staging.pypi.example.org",
      ].concat(["-keyout", key, "-out", cert]),
      { stdio: "ignore" },
    );
    const t = asLab(topologyFor("staging"));
    const base = lb(t);
    const good = writeBundleDir(base, scratch);
    // Two changes: a valid haproxy.cfg and a broken nginx.conf. Neither may be installed.
    const changed = lb({ ...t, upload: { ...t.upload, backendPort: 2222 } });
    const broken = writeBundleDir(
      {
        ...changed,
        files: changed.files.map((f) =>
          f.path === "/etc/nginx/nginx.conf"
            ? { ...f, content: f.content.replace("ssl_protocols", "ssl_protocolz") }
            : f,
        ),
      },
      scratch,
    );
    const haproxyOnly = writeBundleDir(changed, scratch);
    const secrets = `${t.bundleLocation}/secrets`;
    const agent = agentIn(good);
    const script = [
      "set -e",
      "ip link add eth0 type veth peer name eth0-peer && ip addr add 10.40.0.10/24 dev eth0 && ip link set eth0 up && ip link set eth0-peer up",
      `mkdir -p ${secrets}${t.secrets.balancerAuthkey.parameter.replace(/\/[^/]+$/, "")} ${secrets}${t.secrets.tlsKey.parameter.replace(/\/[^/]+$/, "")}`,
      `echo lab-authkey > ${secrets}${t.secrets.balancerAuthkey.parameter}`,
      `cp ${cert} ${secrets}${t.secrets.tlsCertificate.parameter}`,
      `cp ${key} ${secrets}${t.secrets.tlsKey.parameter}`,
      "set +e",
      "echo '== first'",
      `sh ${agent} apply ${good}; echo "exit=$?"`,
      "echo '== second'",
      `sh ${agent} apply ${good}; echo "exit=$?"`,
      "md5sum /etc/nginx/nginx.conf /etc/haproxy/haproxy.cfg > /tmp/before",
      "echo '== broken'",
      `sh ${agent} apply ${broken}; echo "exit=$?"`,
      'md5sum -c --quiet /tmp/before && echo "live files untouched"',
      "echo '== haproxy-only'",
      `sh ${agent} apply ${haproxyOnly}; echo "exit=$?"`,
      "echo '== running'",
      'for p in /run/nginx.pid /run/haproxy.pid /run/heartbeat.pid; do kill -0 $(cat $p) && echo "alive $p"; done',
      "ls -l /etc/ha.d/authkeys | cut -c1-10",
      `grep -c 'sha1 lab-authkey' /etc/ha.d/authkeys`,
    ].join("\n");
    const result = runInNodeSandbox("lb-a", script);
    transcript = sections(result.stdout);
    if (process.env.PYPI_DEBUG) console.log(result.stdout, result.stderr);
    stderr = result.stderr;
  });

  afterAll(() => {
    if (scratch) rmSync(scratch, { recursive: true, force: true });
  });

  it("first apply installs every file and secret and starts the services", () => {
    const first = transcript.first ?? "";
    expect(first, stderr).toContain("exit=0");
    for (const path of [
      "/etc/nginx/nginx.conf",
      "/etc/haproxy/haproxy.cfg",
      "/etc/ha.d/ha.cf",
      "/usr/local/sbin/pypi-node",
    ]) {
      expect(first).toContain(`changed\tfile\t${path}`);
    }
    expect(first).toContain("changed\tsecret\t/etc/ha.d/authkeys");
    expect(first).toMatch(/reloaded\tnginx/);
    expect(first).toMatch(/reloaded\thaproxy/);
    expect(transcript.running).toContain("alive /run/nginx.pid");
    expect(transcript.running).toContain("alive /run/haproxy.pid");
    expect(transcript.running).toContain("alive /run/heartbeat.pid");
    expect(transcript.running).toMatch(/^-rw-------/m);
    expect(transcript.running).toMatch(/^1$/m);
  });

  it("a second apply of the same bundle changes and reloads nothing", () => {
    const second = transcript.second ?? "";
    expect(second).toContain("applied\t0 changes");
    expect(second).not.toContain("reloaded");
    expect(second).toContain("exit=0");
  });

  it("a rejected candidate leaves every live file untouched and exits non-zero", () => {
    const broken = transcript.broken ?? "";
    expect(broken).toMatch(/exit=[1-9]/);
    expect(broken).not.toContain("changed\t");
    expect(broken).toContain("live files untouched");
    expect(stderr).toMatch(/rejected \/etc\/nginx\/nginx.conf \(nginx\)/);
  });

  it("a change to one file reloads only its service", () => {
    const only = transcript["haproxy-only"] ?? "";
    expect(only).toContain("changed\tfile\t/etc/haproxy/haproxy.cfg");
    expect(only.match(/^changed/gm)).toHaveLength(1);
    expect(only).toContain("reloaded\thaproxy");
    expect(only).not.toContain("reloaded\tnginx");
    expect(only).toContain("exit=0");
  });
});
