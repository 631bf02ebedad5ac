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

const canRun = requireTools("agent apply tier", [
  "nginx",
  "haproxy",
  "/usr/libexec/heartbeat/heartbeat",
  "unshare",
  "openssl",
  "ip",
  "socat",
  "curl",
]);

const lb = (t: Topology): NodeBundle => {
  const bundle = buildBundles(t).find((b) => b.node === "lb-a");
  if (!bundle) throw new Error("no lb-a");
  return bundle;
};

/** The same bundle with one file's content edited; the edit must change it. */
function withFile(b: NodeBundle, path: string, edit: (content: string) => string): NodeBundle {
  return {
    ...b,
    files: b.files.map((f) => {
      if (f.path !== path) return f;
      const content = edit(f.content);
      if (content === f.content) throw new Error(`edit of ${path} changed nothing`);
      return { ...f, content };
    }),
  };
}

/** A self-signed certificate and key for the domain, in `dir`. */
function tlsMaterial(dir: string): { cert: string; key: string } {
  const cert = join(dir, "cert.pem");
  const key = join(dir, "key.pem");
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
  return { cert, key };
}

/** Script lines that make the sandbox look like lb-a: its interface and the lab's secret store. */
function balancerSetup(t: Topology, tls: { cert: string; key: string }): string[] {
  const secrets = `${t.bundleLocation}/secrets`;
  return [
    "ip link add eth0 type veth peer name eth0-peer && ip addr add 10.40.0.10/24 dev eth0 && ip link set eth0 up && ip link set eth0-peer up",
    `mkdir -p ${secrets}${t.secrets.balancerAuthkey.parameter.replace(/\/[^/]+$/, "")} ${secrets}${t.secrets.tlsKey.parameter.replace(/\/[^/]+$/, "")}`,
    `echo lab-authkey > ${secrets}${t.secrets.balancerAuthkey.parameter}`,
    `cp ${tls.cert} ${secrets}${t.secrets.tlsCertificate.parameter}`,
    `cp ${tls.key} ${secrets}${t.secrets.tlsKey.parameter}`,
    // What boot makes under /run (Heartbeat's /run/heartbeat), as the lab's nodes get it.
    "systemd-tmpfiles --create --prefix=/run >/dev/null 2>&1 || true",
  ];
}

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
    const tls = tlsMaterial(scratch);
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
    const agent = agentIn(good);
    const script = [
      "set -e",
      ...balancerSetup(t, tls),
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
      // What the running HAProxy serves: server name and port of each upload backend.
      `echo 'show servers state uploads' | socat - UNIX-CONNECT:/run/haproxy/admin.sock | awk 'NR > 2 && NF > 18 { print "backend", $4, $19 }'`,
      "echo '== running'",
      'for p in /run/nginx.pid /run/haproxy.pid /run/heartbeat.pid; do kill -0 $(cat $p) && echo "alive $p"; done',
      "ls -l /etc/ha.d/authkeys | cut -c1-10",
      `grep -c 'sha1 lab-authkey' /etc/ha.d/authkeys`,
    ].join("\n");
    const result = runInNodeSandbox("lb-a", script);
    transcript = sections(result.stdout);
    if (process.env.PYPI_DEBUG) console.log(result.stdout, result.stderr);
    stderr = result.stderr;
  }, 120_000);

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
    // `reloaded` means the running HAProxy took the change, not that a signal was sent.
    expect(only).toMatch(/^backend app-a 2222$/m);
  });
});

/**
 * Decision 10: a reload is verified. Each case passes every check the agent runs before it
 * installs, yet the daemon does not run on it; the agent must restore the previous files, bring
 * the daemon back on them and fail with the daemon's own complaint.
 */
describe.skipIf(!canRun)("pypi-node apply verifies every reload (lab backend)", () => {
  let scratch = "";
  let transcript: Record<string, string> = {};
  let stderr = "";

  beforeAll(() => {
    scratch = mkdtempSync(join(tmpdir(), "pypi-verify-"));
    const tls = tlsMaterial(scratch);
    const t = asLab(topologyFor("staging"));
    const base = lb(t);
    const good = writeBundleDir(base, scratch);
    // Heartbeat has no check mode; it rejects the directive only when it re-reads ha.cf.
    const hbTypo = writeBundleDir(
      withFile(base, "/etc/ha.d/ha.cf", (c) => c.replace(/^deadtime /m, "deadtme ")),
      scratch,
    );
    // HAProxy holds :22 on a balancer. `nginx -t` ignores EADDRINUSE; the reload cannot bind.
    const nginxPort = writeBundleDir(
      withFile(base, "/etc/nginx/nginx.conf", (c) =>
        c.replace("listen 80 default_server;", "listen 80 default_server;\n        listen 22;"),
      ),
      scratch,
    );
    const agent = agentIn(good);
    const script = [
      "set -e",
      ...balancerSetup(t, tls),
      "set +e",
      "echo '== good'",
      `sh ${agent} apply ${good} 2>&1; echo "exit=$?"`,
      "cp /etc/ha.d/ha.cf /tmp/ha.cf.good && cp /etc/nginx/nginx.conf /tmp/nginx.conf.good",
      "echo '== heartbeat-typo'",
      `sh ${agent} apply ${hbTypo} 2>&1; echo "exit=$?"`,
      'cmp -s /etc/ha.d/ha.cf /tmp/ha.cf.good && echo "ha.cf is the previous one"',
      `pgrep -x -f 'heartbeat: master control process' >/dev/null && echo "heartbeat runs"`,
      "echo '== good-again'",
      `sh ${agent} apply ${good} 2>&1; echo "exit=$?"`,
      "echo '== nginx-port'",
      `sh ${agent} apply ${nginxPort} 2>&1; echo "exit=$?"`,
      'cmp -s /etc/nginx/nginx.conf /tmp/nginx.conf.good && echo "nginx.conf is the previous one"',
      `curl -s -o /dev/null -w 'http %{http_code}\\n' http://127.0.0.1/`,
      // Heartbeat dies after its start command returned 0 (its media cannot open): a re-run
      // that installs nothing must still fail while a service of the bundle does not run.
      "echo '== dead-after-start'",
      "kill -9 $(cat /run/heartbeat.pid); sleep 1; ip link del eth0",
      `sh ${agent} apply ${good} 2>&1; echo "exit=$?"`,
    ].join("\n");
    const result = runInNodeSandbox("lb-a", script);
    transcript = sections(result.stdout);
    if (process.env.PYPI_DEBUG) console.log(result.stdout, result.stderr);
    stderr = result.stderr;
  }, 120_000);

  afterAll(() => {
    if (scratch) rmSync(scratch, { recursive: true, force: true });
  });

  it("applies the good bundle", () => {
    expect(transcript.good, stderr).toContain("exit=0");
    expect(transcript.good).toContain("reloaded\theartbeat");
  });

  it("a typo in ha.cf: restores the previous ha.cf, Heartbeat runs on it, and apply fails with Heartbeat's complaint", () => {
    const out = transcript["heartbeat-typo"] ?? "";
    expect(out, stderr).toMatch(/exit=[1-9]/);
    expect(out).not.toContain("reloaded\theartbeat");
    expect(out).toContain("Illegal directive [deadtme]");
    // Its own words, which depend on whether the restart was held back until initdead.
    expect(out).toMatch(/Heartbeat not started: configuration error|Config errors: Heartbeat NOT restarted/);
    expect(out).toContain("restored\tfile\t/etc/ha.d/ha.cf");
    expect(out).toContain("reverted\theartbeat");
    expect(out).toContain("ha.cf is the previous one");
    expect(out).toContain("heartbeat runs");
  });

  it("after the rollback, the good bundle applies cleanly again", () => {
    const out = transcript["good-again"] ?? "";
    expect(out, stderr).toContain("applied\t0 changes");
    expect(out).toContain("exit=0");
  });

  it("an nginx listener that passes `nginx -t` but cannot bind: rollback and nginx's own error", () => {
    const out = transcript["nginx-port"] ?? "";
    expect(out, stderr).toMatch(/exit=[1-9]/);
    expect(out).not.toContain("reloaded\tnginx");
    expect(out).toMatch(/bind\(\) to 0\.0\.0\.0:22 failed \(98: Address already in use\)/);
    expect(out).toContain("restored\tfile\t/etc/nginx/nginx.conf");
    expect(out).toContain("reverted\tnginx");
    expect(out).toContain("nginx.conf is the previous one");
    expect(out).toMatch(/^http 301$/m);
  });

  it("a service that dies after its start command succeeded fails the apply, though nothing changed", () => {
    const out = transcript["dead-after-start"] ?? "";
    expect(out, stderr).toContain("not running: heartbeat");
    expect(out).not.toContain("started\theartbeat");
    expect(out).toMatch(/exit=[1-9]/);
  });
});
