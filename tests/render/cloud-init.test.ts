import { spawnSync } from "node:child_process";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import {
  APPLY_REFUSED_STATUS,
  bootstrapScript,
  envQuote,
  renderBootstrapEnv,
  renderCloudInit,
  yamlQuote,
} from "../../src/render/cloud-init.js";
import { parseTopology } from "../../src/schema.js";
import { nodeByName, type Topology } from "../../src/topology.js";
import { type Shape, topologyFor } from "../support/topologies.js";

const packages = ["apache2", "libapache2-mod-fcgid", "openssh-server"] as const;

describe.each<Shape>(["staging", "prod"])("cloud-init user data (%s)", (shape) => {
  const t = topologyFor(shape);
  const node = nodeByName(t, "app-a");
  const doc = renderCloudInit(t, node, packages);
  const l = doc.split("\n");

  it("is a cloud-config that names the host after the node", () => {
    expect(l[0]).toBe("#cloud-config");
    expect(l).toContain('hostname: "app-a"');
    expect(l).toContain('fqdn: "app-a"');
    expect(l).toContain("preserve_hostname: false");
    expect(doc.endsWith("\n")).toBe(true);
  });

  it("installs awscli and the node's packages, sorted", () => {
    const start = l.indexOf("packages:");
    const end = l.indexOf("write_files:");
    expect(l.slice(start + 1, end)).toEqual([
      '  - "apache2"',
      '  - "awscli"',
      '  - "curl"',
      '  - "libapache2-mod-fcgid"',
      '  - "openssh-server"',
    ]);
  });

  it("writes the env file with the node's bundle location and runs the bootstrap", () => {
    const env = renderBootstrapEnv(t, node);
    expect(env.split("\n")).toContain(`PYPI_BUNDLE_LOCATION='${t.bundleLocation}/app-a/'`);
    expect(env.split("\n")).toContain("PYPI_NODE='app-a'");
    expect(env.split("\n")).toContain(`PYPI_REGION='${t.region}'`);
    expect(l).toContain('  - path: "/etc/pypi-node/bootstrap.env"');
    expect(l).toContain(`    content: ${JSON.stringify(env)}`);
    expect(l).toContain('  - path: "/usr/local/sbin/pypi-bootstrap"');
    expect(l).toContain('    permissions: "0755"');
    expect(l).toContain(`    content: ${JSON.stringify(bootstrapScript)}`);
    const runcmd = l.slice(l.indexOf("runcmd:"));
    expect(runcmd).toHaveLength(4);
    // The SSM agent comes first: without it there is no admin access and no rollout.
    expect(runcmd[1]).toContain(`amazon-ssm-${t.region}/latest/debian_amd64/amazon-ssm-agent.deb`);
    expect(runcmd[1]).toContain("systemctl enable --now amazon-ssm-agent");
    expect(runcmd.slice(2)).toEqual(['  - ["/usr/local/sbin/pypi-bootstrap"]', ""]);
  });

  it("contains no secrets", () => {
    for (const s of Object.values(t.secrets)) expect(doc).not.toContain(s.parameter);
    expect(doc).not.toMatch(/password|BEGIN .*PRIVATE/i);
  });

  it("does not change when a rendered config would", () => {
    const changed: Topology = {
      ...t,
      app: { ...t.app, maxProcesses: t.app.maxProcesses + 7, requestTimeoutSeconds: 99 },
      postgres: { ...t.postgres, synchronous: !t.postgres.synchronous },
      upload: { ...t.upload, users: [] },
      heartbeat: { ...t.heartbeat, deadtimeMs: 9000 },
    };
    expect(renderCloudInit(changed, node, packages)).toBe(doc);
    expect(renderCloudInit(t, node, [...packages].reverse())).toBe(doc);
  });
});

describe("bootstrap script", () => {
  const s = bootstrapScript.split("\n");
  it("syncs the bundle and runs the agent shipped inside it, with backoff", () => {
    expect(s[0]).toBe("#!/bin/sh");
    expect(s).toContain(". /etc/pypi-node/bootstrap.env");
    expect(bootstrapScript).toContain(
      'aws s3 sync --delete --only-show-errors "$PYPI_BUNDLE_LOCATION" "$incoming/"',
    );
    expect(s).toContain("incoming=/var/lib/pypi-node/incoming");
    expect(bootstrapScript).toContain('sh "$incoming/files/usr/local/sbin/pypi-node" apply "$incoming"');
    expect(s).toContain('  sleep "$delay"');
    expect(s).toContain("  delay=$((delay * 2))");
  });
});

describe("bootstrap script under sh", () => {
  /** The shipped script with this test's directories, an agent exiting `status`, fake systemctl and sleep. */
  function runBootstrap(status: number): {
    status: number;
    attempts: number;
    sleeps: string[];
    stderr: string;
  } {
    const dir = mkdtempSync(join(tmpdir(), "pypi-bootstrap-"));
    try {
      const bin = join(dir, "bin");
      const bundle = join(dir, "bundle");
      mkdirSync(bin);
      mkdirSync(join(bundle, "files", "usr", "local", "sbin"), { recursive: true });
      const exe = (path: string, text: string) => {
        writeFileSync(path, text);
        chmodSync(path, 0o755);
      };
      exe(join(bin, "systemctl"), "#!/bin/sh\nexit 0\n");
      exe(join(bin, "sleep"), `#!/bin/sh\necho "$1" >>'${dir}/sleeps'\n`);
      exe(
        join(bundle, "files", "usr", "local", "sbin", "pypi-node"),
        `#!/bin/sh\necho "$1" >>'${dir}/agent-calls'\nexit ${status}\n`,
      );
      writeFileSync(
        join(dir, "bootstrap.env"),
        `PYPI_BUNDLE_LOCATION='${bundle}'\nPYPI_NODE=lb-a\nPYPI_REGION=us-east-1\n`,
      );
      const script = bootstrapScript
        .replace(". /etc/pypi-node/bootstrap.env", `. '${join(dir, "bootstrap.env")}'`)
        .replace("incoming=/var/lib/pypi-node/incoming", `incoming='${join(dir, "incoming")}'`)
        .replace("/run/pypi-bootstrap.lock", join(dir, "lock"));
      exe(join(dir, "pypi-bootstrap"), script);
      const r = spawnSync("sh", [join(dir, "pypi-bootstrap")], {
        encoding: "utf8",
        env: { PATH: `${bin}:/usr/bin:/bin` },
        timeout: 30_000,
      });
      const lines = (f: string) =>
        existsSync(join(dir, f)) ? readFileSync(join(dir, f), "utf8").split("\n").filter(Boolean) : [];
      return {
        status: r.status ?? -1,
        attempts: lines("agent-calls").length,
        sleeps: lines("sleeps"),
        stderr: r.stderr,
      };
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }

  it("stops at once when the agent refuses the bundle, and retries any other failure", () => {
    const refused = runBootstrap(APPLY_REFUSED_STATUS);
    expect(refused).toMatchObject({ status: APPLY_REFUSED_STATUS, attempts: 1, sleeps: [] });
    expect(refused.stderr).toMatch(/refused this bundle/);
    const failing = runBootstrap(1);
    expect(failing.status).toBe(1);
    expect(failing.attempts).toBe(10);
    expect(failing.sleeps).toEqual(["5", "10", "20", "40", "60", "60", "60", "60", "60"]);
  });
});

describe("quoting", () => {
  it("yamlQuote emits JSON strings with YAML line breaks escaped", () => {
    expect(yamlQuote('a"b\nc')).toBe('"a\\"b\\nc"');
    expect(yamlQuote("x\u2028y\u0085")).toBe('"x\\u2028y\\u0085"');
    expect(yamlQuote(false)).toBe("false");
  });
  it("envQuote single-quotes for sh", () => {
    expect(envQuote("it's")).toBe("'it'\\''s'");
    expect(() => envQuote("a\nb")).toThrow();
  });
  it("refuses bad package names", () => {
    const t = topologyFor("staging");
    expect(() => renderCloudInit(t, t.nodes[0]!, ["evil pkg"])).toThrow(/evil pkg/);
  });
  it("leaves host names and regions to parseTopology, which names the field", () => {
    const t = topologyFor("staging");
    const badName = { ...t, nodes: t.nodes.map((n, i) => (i === 0 ? { ...n, name: "Bad_Name" } : n)) };
    expect(() => parseTopology(badName)).toThrow('nodes[0].name: "Bad_Name" is not valid');
    expect(() => parseTopology({ ...t, region: "us-east-1; reboot" })).toThrow(
      'region: "us-east-1; reboot" is not valid',
    );
  });
});
