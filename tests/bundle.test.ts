import { describe, expect, it } from "vitest";
import { buildBundles } from "../src/bundle.js";
import { bundleDirEntries } from "../src/bundle-dir.js";
import type { NodeBundle } from "../src/bundle-types.js";
import { PG_DATA_MOUNT } from "../src/layout.js";
import { renderCloudInit } from "../src/render/cloud-init.js";
import { isSafeAbsolutePath } from "../src/schema.js";
import { nodesWithRole } from "../src/topology.js";
import { asLab, topologyFor, withRuntime } from "./support/topologies.js";

const byNode = (bundles: NodeBundle[], name: string): NodeBundle => {
  const b = bundles.find((x) => x.node === name);
  if (!b) throw new Error(`no bundle for ${name}`);
  return b;
};
const paths = (b: NodeBundle): string[] => b.files.map((f) => f.path);

describe("buildBundles", () => {
  it("is deterministic: the same topology gives byte-identical bundles", () => {
    for (const shape of ["staging", "prod"] as const) {
      const a = buildBundles(topologyFor(shape)).map((b) => [...bundleDirEntries(b)]);
      const b = buildBundles(structuredClone(topologyFor(shape))).map((x) => [...bundleDirEntries(x)]);
      expect(JSON.stringify(a)).toBe(JSON.stringify(b));
    }
  });

  it("gives every node a bundle with the agent and its node.env", () => {
    const t = topologyFor("prod");
    const bundles = buildBundles(t);
    expect(bundles.map((b) => b.node)).toEqual(t.nodes.map((n) => n.name));
    for (const b of bundles) {
      const agent = b.files.find((f) => f.path === "/usr/local/sbin/pypi-node");
      expect(agent?.mode).toBe("0755");
      expect(agent?.validator).toBe("sh");
      const env = b.files.find((f) => f.path === "/etc/pypi-node/node.env")?.content ?? "";
      expect(env).toContain(`PYPI_NODE='${b.node}'`);
      expect(env).toContain("PYPI_BACKEND='aws'");
    }
  });

  it("puts each daemon's files on the right role, each with its validator", () => {
    const bundles = buildBundles(topologyFor("prod"));
    const lb = byNode(bundles, "lb-a");
    expect(lb.services).toEqual(["haproxy", "nginx", "heartbeat", "pypi-health"]);
    expect(lb.files.find((f) => f.path === "/etc/nginx/nginx.conf")?.validator).toBe("nginx");
    expect(lb.files.find((f) => f.path === "/etc/haproxy/haproxy.cfg")?.validator).toBe("haproxy");
    expect(paths(lb)).toContain("/etc/ha.d/resource.d/pypi-fip");
    expect(paths(lb).some((p) => p.startsWith("/etc/apache2") || p.startsWith("/etc/postgresql"))).toBe(
      false,
    );

    const storage = byNode(bundles, "app-a");
    expect(storage.files.find((f) => f.path === "/etc/ssh/sshd_config")?.validator).toBe("sshd");
    expect(storage.files.find((f) => f.path === "/etc/drbd.d/pypi.res")?.validator).toBe("drbd");
    expect(storage.files.find((f) => f.path === "/etc/exports")?.validator).toBe("exportfs");
    expect(storage.files.find((f) => f.path === "/etc/apache2/sites-enabled/pypi.conf")?.symlinkTo).toBe(
      "../sites-available/pypi.conf",
    );
    expect(storage.absent).toContain("/etc/apache2/sites-enabled/000-default.conf");
    expect(paths(storage)).toContain("/etc/ssh/authorized_keys/alice");
    expect(paths(storage)).toContain("/etc/ssh/authorized_keys/bob");
    const appEnv = storage.files.find((f) => f.path === "/etc/pypi-node/node.env")?.content ?? "";
    expect(appEnv).toContain("PYPI_UPLOAD_USERS='alice:2001 bob:2002'");
    expect(appEnv).toContain("PYPI_PACKAGE_ROOT='/srv/pypi'");

    // app-c is not in the storage pair: no DRBD, NFS server or storage Heartbeat.
    const plain = byNode(bundles, "app-c");
    expect(paths(plain).filter((p) => /drbd|exports|ha\.d/.test(p))).toEqual([]);
    // The upload watcher first: ssh's drop-in requires it.
    // The app server (the default runtime) before Apache, which sends to its socket.
    expect(plain.services).toEqual([
      "pypi-upload-watch",
      "ssh",
      "pypi-index",
      "apache2",
      "pypi-index-register",
      "pypi-file-copy",
      "pypi-health",
    ]);
    // No CDN in this stack: a purge job left from one is stopped and its units removed.
    expect(plain.stopped).toEqual(["pypi-cdn-purge"]);
    expect(plain.absent).toEqual(
      expect.arrayContaining(
        ["service", "path", "timer"].map((u) => `/etc/systemd/system/pypi-cdn-purge.${u}`),
      ),
    );
    expect(paths(plain).filter((p) => p.includes("cdn-purge"))).toEqual([]);
    const watch = plain.files.find((f) => f.path === "/etc/systemd/system/pypi-upload-watch.service");
    expect(watch?.content).toContain('watch-uploads --host "app-c" --write-as www-data');
    expect(watch?.reloads).toEqual(["pypi-upload-watch"]);
    const dropIn = plain.files.find((f) => f.path === "/etc/systemd/system/ssh.service.d/pypi-upload.conf");
    expect(dropIn?.content).toMatch(/^LimitFSIZE=[0-9]+$/m);
    // The agent restarts rather than reloads ssh when its limits change (lib.sh svc_limits_stale).
    expect(dropIn?.reloads).toEqual(["ssh"]);
    // The watcher is the app script too, with the app's environment: either change restarts it.
    expect(plain.files.find((f) => f.path === "/opt/pypi-index/index.fcgi")?.reloads).toContain(
      "pypi-upload-watch",
    );
    expect(plain.files.find((f) => f.path === "/etc/pypi-index/env")?.reloads).toEqual([
      "pypi-index",
      "pypi-upload-watch",
    ]);
    // Every app server runs the same index app and registers uploads.
    const app = plain.files.find((f) => f.path === "/opt/pypi-index/index.fcgi");
    expect(app?.mode).toBe("0755");
    expect(app?.content.startsWith("#!/usr/bin/node")).toBe(true);
    expect(
      plain.files.find((f) => f.path === "/etc/systemd/system/pypi-index-register.path")?.content,
    ).toContain("DirectoryNotEmpty=/srv/pypi/incoming/alice/upload");
    expect(plain.files.find((f) => f.path === "/etc/pypi-index/env")?.content).toContain(
      'PYPI_DB_PASSWORD_FILE="/etc/pypi-index/pgpass"',
    );
    // Refused uploads expire after uploadRejectedRetentionDays (7 by default).
    expect(plain.files.find((f) => f.path === "/etc/pypi-index/env")?.content).toContain(
      `PYPI_REJECTED_RETENTION_SECONDS="${7 * 86_400}"`,
    );
    // The registrar waits for every app server's writer scan.
    expect(plain.files.find((f) => f.path === "/etc/pypi-index/env")?.content).toContain(
      'PYPI_UPLOAD_HOSTS="app-a,app-b,app-c"',
    );
    expect(plain.files.find((f) => f.path === "/etc/systemd/system/srv-pypi.mount")?.content).toContain(
      "What=100.64.10.6:/srv/pypi-volume",
    );

    const db = byNode(bundles, "db-b");
    expect(db.files.find((f) => f.path === "/etc/postgresql/15/main/postgresql.conf")?.validator).toBe(
      "postgres",
    );
    // The standby marker is the agent's job (db-reattach), never the bundle's.
    expect(paths(db).some((p) => p.endsWith("standby.signal") || p.startsWith("/var/lib/postgresql"))).toBe(
      false,
    );
  });

  it("with a CDN, every app server runs the purge job, and nothing else does", () => {
    const t = { ...topologyFor("prod"), cdnInvalidations: "cloudfront:E2QWRUHEXAMPLE" };
    for (const b of buildBundles(t)) {
      const units = paths(b).filter((p) => p.includes("pypi-cdn-purge"));
      if (b.role !== "app") {
        expect(b.services, b.node).not.toContain("pypi-cdn-purge");
        expect(units, b.node).toEqual([]);
        continue;
      }
      expect(b.services).toContain("pypi-cdn-purge");
      expect(b.stopped).not.toContain("pypi-cdn-purge");
      expect(units.sort()).toEqual(
        ["path", "service", "timer"].map((u) => `/etc/systemd/system/pypi-cdn-purge.${u}`),
      );
      const service = b.files.find((f) => f.path.endsWith("pypi-cdn-purge.service"))?.content ?? "";
      expect(service).toMatch(/^ExecStart=\/opt\/pypi-index\/index\.fcgi cdn-purge$/m);
      expect(service).toMatch(/^User=www-data$/m);
      // The job paces itself; systemd's start limit would stop the path unit in an upload burst.
      expect(service).toMatch(/^StartLimitIntervalSec=0$/m);
      expect(b.files.find((f) => f.path.endsWith("pypi-cdn-purge.path"))?.content).toMatch(
        /^PathExists=\/srv\/pypi\/cdn-purge\/wanted$/m,
      );
      expect(b.files.find((f) => f.path === "/etc/pypi-index/env")?.content).toContain(
        'PYPI_CDN_INVALIDATIONS="cloudfront:E2QWRUHEXAMPLE"',
      );
    }
  });

  it("ships the runtime's own pieces and removes the other's, so a switch leaves nothing behind", () => {
    const t = topologyFor("prod");
    const app = (runtime: "appserver" | "fcgid") =>
      byNode(buildBundles(withRuntime(t, runtime)), nodesWithRole(t, "app")[0]!.name);
    const unitPath = "/etc/systemd/system/pypi-index.service";

    const server = app("appserver");
    const unit = server.files.find((f) => f.path === unitPath);
    expect(unit?.content).toContain(
      `ExecStart=/opt/pypi-index/index.fcgi serve --listen "/run/pypi-index/app.sock" --workers ${t.app.maxProcesses} --drain-seconds ${t.app.requestTimeoutSeconds}`,
    );
    expect(unit?.content).toMatch(/^User=www-data$/m);
    expect(unit?.content).toMatch(/^RuntimeDirectory=pypi-index$/m);
    expect(unit?.content).toMatch(/^ExecReload=\/bin\/kill -HUP \$MAINPID$/m);
    expect(unit?.content).toMatch(/^Restart=always$/m);
    expect(unit?.content).toMatch(/^KillMode=mixed$/m);
    expect(unit?.reloads).toEqual(["pypi-index"]);
    // A new script restarts the app server's workers, not Apache.
    expect(server.files.find((f) => f.path === "/opt/pypi-index/index.fcgi")?.reloads).toEqual([
      "pypi-index",
      "pypi-upload-watch",
    ]);
    expect(server.secrets.find((s) => s.path === "/etc/pypi-index/pgpass")?.reloads).toEqual(["pypi-index"]);
    expect(server.packages).not.toContain("libapache2-mod-fcgid");
    expect(server.packages).toContain("nodejs");
    expect(server.absent).toEqual(
      expect.arrayContaining([
        "/etc/apache2/mods-enabled/fcgid.load",
        "/etc/apache2/mods-enabled/fcgid.conf",
      ]),
    );
    expect(server.files.map((f) => f.path)).toContain("/etc/apache2/mods-enabled/proxy_fcgi.load");
    // The DocumentRoot must exist: the app paths' access check walks it (else Debian's <Directory /> denies).
    expect(server.files.find((f) => f.path === "/srv/www/pypi-static/robots.txt")?.content).toContain(
      "Disallow: /simple/",
    );

    const fcgid = app("fcgid");
    expect(fcgid.services).not.toContain("pypi-index");
    expect(fcgid.stopped).toEqual(["pypi-index", "pypi-cdn-purge"]);
    expect(fcgid.absent).toEqual(
      expect.arrayContaining([
        unitPath,
        "/etc/apache2/mods-enabled/proxy.load",
        "/etc/apache2/mods-enabled/proxy.conf",
        "/etc/apache2/mods-enabled/proxy_fcgi.load",
      ]),
    );
    expect(fcgid.files.map((f) => f.path)).not.toContain(unitPath);
    expect(fcgid.packages).toContain("libapache2-mod-fcgid");
    expect(fcgid.files.find((f) => f.path === "/opt/pypi-index/index.fcgi")?.reloads).toEqual([
      "apache2",
      "pypi-upload-watch",
    ]);
    // No path is both shipped and removed in either runtime.
    for (const b of [server, fcgid]) {
      const shipped = new Set(b.files.map((f) => f.path));
      expect(b.absent.filter((p) => shipped.has(p))).toEqual([]);
    }
  });

  it("ships recovery.conf as a template only for the recovery.conf dialect", () => {
    const old = byNode(buildBundles(asLab(topologyFor("staging", 11))), "db-b");
    expect(paths(old)).toContain("/etc/pypi-node/postgres/recovery.conf");
    const modern = byNode(buildBundles(topologyFor("staging", 15)), "db-b");
    expect(paths(modern)).not.toContain("/etc/pypi-node/postgres/recovery.conf");
  });

  it("carries secret references, never values, and keeps every path safe", () => {
    const t = topologyFor("prod");
    const refs = Object.values(t.secrets).map((s) => s.parameter);
    for (const b of buildBundles(t)) {
      for (const s of b.secrets) {
        expect(refs).toContain(s.parameter);
        expect(s.mode === "0600" || s.mode === "0400" || s.path === t.tls.certificatePath).toBe(true);
      }
      for (const f of b.files) expect(isSafeAbsolutePath(f.path), f.path).toBe(true);
      const text = [...bundleDirEntries(b).values()].join("\n");
      expect(text).not.toMatch(/BEGIN [A-Z ]*PRIVATE KEY/);
      expect(text).not.toMatch(/^auth 1$/m);
    }
    const lb = byNode(buildBundles(t), "lb-a");
    expect(lb.secrets.find((s) => s.path === "/etc/ha.d/authkeys")).toMatchObject({
      format: "heartbeat-authkeys",
      mode: "0600",
      parameter: t.secrets.balancerAuthkey.parameter,
    });
  });

  it("names the storage secrets only in the storage pair's bundles", () => {
    const t = topologyFor("prod");
    const storageSecrets = [t.secrets.drbdSecret.parameter, t.secrets.storageAuthkey.parameter];
    const holders = buildBundles(t)
      .filter((b) => b.secrets.some((s) => storageSecrets.includes(s.parameter)))
      .map((b) => b.node);
    expect(holders).toEqual(["app-a", "app-b"]);
    // The agent installs whatever `secrets` names, so app-c must not name them at all.
    const appC = byNode(buildBundles(t), "app-c");
    expect(appC.secrets.map((s) => s.parameter).sort()).toEqual(
      [t.secrets.uploadHostKey.parameter, t.secrets.postgresAppPassword.parameter].sort(),
    );
    const named = /drbd\/secret|storage-authkey/;
    expect(bundleDirEntries(byNode(buildBundles(t), "app-a")).get("secrets")).toMatch(named);
    expect([...bundleDirEntries(appC).values()].join("\n")).not.toMatch(named);
  });

  it("writes the manifest the agent parses: tab-separated, '-' for empty", () => {
    const b = byNode(buildBundles(topologyFor("staging")), "app-a");
    const entries = bundleDirEntries(b);
    const manifest = entries.get("manifest")?.trimEnd().split("\n") ?? [];
    for (const line of manifest) expect(line.split("\t")).toHaveLength(8);
    expect(manifest).toContain("file\t/etc/ssh/sshd_config\t0644\troot\troot\tsshd\tssh\t-");
    expect(manifest).toContain(
      "symlink\t/etc/apache2/sites-enabled/pypi.conf\t0644\troot\troot\tapache\tapache2\t../sites-available/pypi.conf",
    );
    expect(manifest).toContain("absent\t/etc/apache2/sites-enabled/000-default.conf\t-\t-\t-\t-\t-\t-");
    expect(entries.get("files/etc/ssh/sshd_config")).toContain("ForceCommand internal-sftp");
  });

  it("rejects a bad topology before rendering anything", () => {
    const t = topologyFor("staging");
    expect(() => buildBundles({ ...t, vpcCidr: "10.0.0.0/40" })).toThrow(/vpcCidr: "10.0.0.0\/40"/);
  });

  it("keeps user data unchanged when only rendered configs change", () => {
    const t = topologyFor("prod");
    const changed = {
      ...t,
      app: { ...t.app, maxProcesses: 32 },
      heartbeat: { ...t.heartbeat, deadtimeMs: 3000, initdeadMs: 12000 },
      postgres: { ...t.postgres, synchronous: false },
    };
    for (const node of t.nodes) {
      const before = byNode(buildBundles(t), node.name);
      const after = byNode(buildBundles(changed), node.name);
      expect(renderCloudInit(changed, node, after.packages)).toBe(renderCloudInit(t, node, before.packages));
    }
    const lbBefore = bundleDirEntries(byNode(buildBundles(t), "lb-a")).get("files/etc/ha.d/ha.cf");
    const lbAfter = bundleDirEntries(byNode(buildBundles(changed), "lb-a")).get("files/etc/ha.d/ha.cf");
    expect(lbAfter).not.toBe(lbBefore);
  });
  it("installs nothing under a db node's data mount: the volume mounted at first boot would hide it", () => {
    for (const shape of ["staging", "prod"] as const)
      for (const b of buildBundles(topologyFor(shape)).filter((x) => x.role === "db")) {
        const under = [...b.files.map((f) => f.path), ...b.secrets.map((s) => s.path)].filter((p) =>
          p.startsWith(`${PG_DATA_MOUNT}/`),
        );
        expect(under, `${shape} ${b.node}`).toEqual([]);
      }
  });
});
