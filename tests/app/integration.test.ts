import { createHash, randomBytes } from "node:crypto";
import {
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  symlinkSync,
  truncateSync,
  utimesSync,
  writeFileSync,
} from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AppSandbox, PG_BIN } from "../../lab/lib/app-sandbox.js";
import { pipArgv } from "../../lab/lib/wheel.js";
import { projectFile } from "../../src/project-files.js";
import { APP_RUNTIMES } from "../../src/topology.js";
import { requireTools } from "../support/tools.js";
import { topologyFor } from "../support/topologies.js";
import { makeSdist, makeWheel } from "./fixtures.js";

const canRun = requireTools("index app (postgres 15 + apache: app server and mod_fcgid)", [
  "unshare",
  "nsenter",
  "runuser",
  "curl",
  "/usr/bin/python3",
  "apache2",
  `${PG_BIN}/postgres`,
  `${PG_BIN}/pg_basebackup`,
  "/usr/lib/apache2/modules/mod_fcgid.so",
  "/usr/lib/apache2/modules/mod_proxy_fcgi.so",
]);

const sha256 = (path: string): string => createHash("sha256").update(readFileSync(path)).digest("hex");

describe.skipIf(!canRun).each(APP_RUNTIMES)(
  "index app under Apache (%s runtime) with Postgres",
  (runtime) => {
    let sb: AppSandbox;
    let upload = "";
    let rejected = "";

    beforeAll(async () => {
      sb = await AppSandbox.start({ topology: topologyFor("staging", 15), runtime });
      upload = `${sb.packageRoot}/incoming/alice/upload`;
      rejected = `${sb.packageRoot}/incoming/alice/rejected`;
      mkdirSync(upload, { recursive: true });
    }, 120_000);

    afterAll(() => {
      if (sb && process.env.PYPI_APP_KEEP_LOGS) console.log(sb.apacheErrorLog());
      sb?.stop();
    });

    const count = (sql: string): number => Number(sb.psql(sql, "pypi").trim());

    it("migrations are idempotent and /_health reports every check", () => {
      sb.exec(["node", "/opt/pypi-index/index.fcgi", "migrate"], { env: sb.appEnv() });
      const shipped = readdirSync(projectFile("src/app/migrations")).filter((f) => f.endsWith(".sql"));
      expect(count("SELECT count(*) FROM schema_migrations")).toBe(shipped.length);
      // The public answer is the status alone; the detail is served to the node itself.
      const pub = sb.http("/_health");
      expect([pub.status, pub.body]).toEqual([200, "ok\n"]);
      const r = sb.http("/_health/detail");
      const report = JSON.parse(r.body);
      expect(r.status, r.body).toBe(200);
      expect(report.ok).toBe(true);
      for (const check of ["db_write", "standby", "storage"]) {
        expect(report.checks[check].ok).toBe(true);
        expect(typeof report.checks[check].ms).toBe("number");
      }
      expect(report.checks.standby.standbys[0].state).toBe("streaming");
    });

    it("registers a wheel and an sdist, serves PEP 503/691, and pip downloads with hash check", () => {
      const wheel = `${upload}/Demo_Pkg-1.0.0-py3-none-any.whl`;
      makeWheel(wheel, "Demo_Pkg", "1.0.0");
      makeSdist(`${upload}/demo_pkg-1.0.0.tar.gz`, "demo_pkg", "1.0.0");
      const digest = sha256(wheel);
      const { summary, log } = sb.register();
      expect(summary.registered.sort()).toEqual([
        "demo-pkg/Demo_Pkg-1.0.0-py3-none-any.whl",
        "demo-pkg/demo_pkg-1.0.0.tar.gz",
      ]);
      expect(log).toContain("stored demo-pkg/Demo_Pkg-1.0.0-py3-none-any.whl from alice");
      expect(readdirSync(upload)).toEqual([]);
      expect(sha256(`${sb.packageRoot}/packages/demo-pkg/Demo_Pkg-1.0.0-py3-none-any.whl`)).toBe(digest);
      expect(sb.psql("SELECT uploader, size > 0, state FROM files ORDER BY filename", "pypi").trim()).toBe(
        "alice|t|ok\nalice|t|ok",
      );

      const root = sb.http("/simple/");
      expect(root.status).toBe(200);
      expect(root.body).toContain('<a href="demo-pkg/">demo-pkg</a>');

      const moved = sb.http("/simple/Demo_Pkg/");
      expect(moved.status).toBe(301);
      expect(moved.headers).toMatch(/Location: (http:\/\/127\.0\.0\.1)?\/simple\/demo-pkg\/\r?\n/);
      expect(sb.http("/simple/demo-pkg").status).toBe(301);

      const page = sb.http("/simple/demo-pkg/");
      expect(page.status).toBe(200);
      expect(page.headers).toMatch(/Content-Type: text\/html/);
      expect(page.body).toMatch(
        new RegExp(
          `<a href="/packages/demo-pkg/Demo_Pkg-1\\.0\\.0-py3-none-any\\.whl#sha256=${digest}" data-requires-python="&#62;=3\\.8" data-core-metadata="sha256=[0-9a-f]{64}"[^>]*>Demo_Pkg-1\\.0\\.0-py3-none-any\\.whl</a>`,
        ),
      );

      const json = sb.http("/simple/demo-pkg/", "application/vnd.pypi.simple.v1+json, text/html;q=0.5");
      expect(json.headers).toMatch(/Content-Type: application\/vnd\.pypi\.simple\.v1\+json/);
      const doc = JSON.parse(json.body);
      expect(doc.meta["api-version"]).toBe("1.1");
      expect(doc.files.find((f: { filename: string }) => f.filename.endsWith(".whl")).hashes.sha256).toBe(
        digest,
      );
      expect(sb.http("/simple/demo-pkg/", "application/json").status).toBe(406);
      expect(sb.http("/simple/no-such-project/").status).toBe(404);

      const into = `${sb.scratch}/pip-dl`;
      const dl = sb.exec(
        pipArgv("download", {
          indexUrl: "http://127.0.0.1/simple/",
          into,
          spec: "demo-pkg==1.0.0",
          onlyBinary: true,
        }),
        { allowFail: true, timeoutMs: 120_000 },
      );
      expect(dl.status, dl.stdout + dl.stderr).toBe(0);
      expect(sb.exec(["sha256sum", `${into}/Demo_Pkg-1.0.0-py3-none-any.whl`]).stdout).toContain(digest);
    }, 180_000);

    it("rejects bad uploads with a logged reason, losing nothing and registering nothing", () => {
      const before = count("SELECT count(*) FROM files");
      const stored = `${sb.packageRoot}/packages/demo-pkg/Demo_Pkg-1.0.0-py3-none-any.whl`;
      const storedDigest = sha256(stored);
      writeFileSync(`${upload}/notes.txt`, "hello");
      makeWheel(`${upload}/bad name-1.0-py3-none-any.whl`, "bad", "1.0");
      makeWheel(
        `${upload}/big-1.0-py3-none-any.whl`,
        "big",
        "1.0",
        `x = "${randomBytes(150_000).toString("base64")}"\n`,
      );
      symlinkSync("/etc/passwd", `${upload}/evil-1.0.tar.gz`);
      makeWheel(`${upload}/Demo_Pkg-1.0.0-py3-none-any.whl`, "Demo_Pkg", "1.0.0", "y = 2\n");
      mkdirSync(`${upload}/dir-1.0.tar.gz`);
      makeWheel(`${upload}/trunc-1.0-py3-none-any.whl`, "trunc", "1.0");
      truncateSync(`${upload}/trunc-1.0-py3-none-any.whl`, 40);
      writeFileSync(Buffer.from(`${upload}/caf\xe9-1.0.tar.gz`, "latin1"), "x");

      const { summary, log } = sb.register("alice");
      const reasons = Object.fromEntries(summary.rejected.map((r) => [r.file, r.reason]));
      expect(summary.registered).toEqual([]);
      expect(reasons["notes.txt"]).toMatch(/not a wheel/);
      expect(reasons["bad name-1.0-py3-none-any.whl"]).toMatch(/characters/);
      expect(reasons["big-1.0-py3-none-any.whl"]).toMatch(/exceeds the limit of 65536/);
      expect(reasons["evil-1.0.tar.gz"]).toMatch(/symbolic link/);
      expect(reasons["Demo_Pkg-1.0.0-py3-none-any.whl"]).toMatch(/File already exists: .*different content/);
      expect(reasons["dir-1.0.tar.gz"]).toMatch(/not a regular file/);
      expect(reasons["trunc-1.0-py3-none-any.whl"]).toMatch(/zip/);
      expect(Object.values(reasons).some((r) => /not valid UTF-8/.test(r))).toBe(true);
      expect(summary.rejected).toHaveLength(8);
      for (const r of summary.rejected) expect(log).toContain(`rejected alice/${r.file}: ${r.reason}`);

      // Nothing lost: every upload sits in rejected/ next to its reason; nothing new is indexed.
      expect(readdirSync(upload)).toEqual([]);
      const kept = readdirSync(rejected);
      expect(kept.filter((f) => !f.endsWith(".reason"))).toHaveLength(8);
      expect(kept.filter((f) => f.endsWith(".reason"))).toHaveLength(8);
      expect(JSON.parse(readFileSync(`${rejected}/evil-1.0.tar.gz.reason`, "utf8")).reason).toMatch(
        /symbolic/,
      );
      expect(count("SELECT count(*) FROM files")).toBe(before);
      expect(sha256(stored)).toBe(storedDigest);
      expect(readdirSync(`${sb.packageRoot}/packages`)).toEqual(["demo-pkg"]);
    });

    it("the health detail answers the node and the balancers' own checks, never a client through a balancer", () => {
      const lb = sb.t.nodes.find((n) => n.role === "balancer")?.privateIp ?? "";
      sb.sh(`ip addr add ${lb}/32 dev lo && ip addr add 192.0.2.77/32 dev lo`);
      const status = (from: string, headers: string[] = []) =>
        sb
          .exec([
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--interface",
            from,
            ...headers.flatMap((h) => ["-H", h]),
            `http://127.0.0.1:${sb.t.app.httpPort}/_health/detail`,
          ])
          .stdout.trim();
      expect(status("127.0.0.1")).toBe("200");
      // A balancer's own check; the same balancer forwarding a client (mod_remoteip) is the client.
      expect(status(lb)).toBe("200");
      expect(status(lb, ["X-Forwarded-For: 203.0.113.9"])).toBe("403");
      // Any other address, and a forged header from it, are refused.
      expect(status("192.0.2.77")).toBe("403");
      expect(status("192.0.2.77", [`X-Forwarded-For: ${lb}`])).toBe("403");
      // The public form says no more than ok.
      expect(sb.http("/_health").body).toBe("ok\n");
    });

    it("a rejected upload is kept for the retention period, then removed with its reason", () => {
      // The previous test left eight rejected uploads; age two of them past the retention.
      const kept = readdirSync(rejected);
      const old = new Date(Date.now() - (7 * 24 * 3600 + 60) * 1000);
      for (const f of ["notes.txt", "notes.txt.reason"]) utimesSync(`${rejected}/${f}`, old, old);
      const { summary } = sb.register("alice");
      expect(summary.expired.sort()).toEqual(["alice/notes.txt", "alice/notes.txt.reason"]);
      expect(readdirSync(rejected).sort()).toEqual(kept.filter((f) => !f.startsWith("notes.txt")).sort());
    });

    it("reconciles registrations a crash interrupted", () => {
      const pkgDir = `${sb.packageRoot}/packages/crash-a`;
      mkdirSync(pkgDir, { recursive: true });
      // Crash after the file was linked, before 'ok': the file is complete, the upload still there.
      makeWheel(`${pkgDir}/crash_a-1.0-py3-none-any.whl`, "crash_a", "1.0");
      const digest = sha256(`${pkgDir}/crash_a-1.0-py3-none-any.whl`);
      writeFileSync(
        `${upload}/crash_a-1.0-py3-none-any.whl`,
        readFileSync(`${pkgDir}/crash_a-1.0-py3-none-any.whl`),
      );
      // Crash after the pending row, before the link: the upload must be retried.
      makeWheel(`${upload}/crash_b-1.0-py3-none-any.whl`, "crash_b", "1.0");
      const digestB = sha256(`${upload}/crash_b-1.0-py3-none-any.whl`);
      sb.psql(
        [
          "INSERT INTO projects (name, display_name) VALUES ('crash-a', 'crash_a'), ('crash-b', 'crash_b');",
          "INSERT INTO project_roles (project, account, role) VALUES ('crash-a', 'alice', 'owner'), ('crash-b', 'alice', 'owner');",
          `INSERT INTO files (filename, project, version, packagetype, sha256, size, uploader, state) VALUES
           ('crash_a-1.0-py3-none-any.whl', 'crash-a', '1.0', 'bdist_wheel', '${digest}', 1, 'alice', 'pending'),
           ('crash_b-1.0-py3-none-any.whl', 'crash-b', '1.0', 'bdist_wheel', '${digestB}', 1, 'alice', 'pending');`,
        ].join("\n"),
        "pypi",
      );
      expect(sb.http("/simple/crash-a/").status).toBe(404);
      mkdirSync(`${sb.packageRoot}/.staging`, { recursive: true });
      // A crash's leftover is hours old; a fresh file may be a live upload's and is kept.
      writeFileSync(`${sb.packageRoot}/.staging/leftover`, "partial");
      const hoursAgo = new Date(Date.now() - 7 * 3600 * 1000);
      utimesSync(`${sb.packageRoot}/.staging/leftover`, hoursAgo, hoursAgo);
      writeFileSync(`${sb.packageRoot}/.staging/live`, "in flight");

      const { summary } = sb.register();
      expect(summary.recovered.sort()).toEqual([
        "crash-a/crash_a-1.0-py3-none-any.whl",
        "crash-b/crash_b-1.0-py3-none-any.whl",
      ]);
      expect(summary.registered).toEqual(["crash-b/crash_b-1.0-py3-none-any.whl"]);
      expect(summary.rejected).toEqual([]);
      expect(readdirSync(upload)).toEqual([]);
      expect(readdirSync(`${sb.packageRoot}/.staging`)).toEqual(["live"]);
      expect(count("SELECT count(*) FROM files WHERE state = 'pending'")).toBe(0);
      expect(sb.http("/simple/crash-a/").body).toContain(`#sha256=${digest}`);
      expect(sb.http("/simple/crash-b/").body).toContain(`#sha256=${digestB}`);
    });

    it("pip refuses a stored file whose bytes no longer match the index", () => {
      const stored = `${sb.packageRoot}/packages/crash-b/crash_b-1.0-py3-none-any.whl`;
      const good = readFileSync(stored);
      writeFileSync(stored, Buffer.concat([good, Buffer.from("tampered")]));
      const into = `${sb.scratch}/pip-tamper`;
      const dl = sb.exec(
        pipArgv("download", { indexUrl: "http://127.0.0.1/simple/", into, spec: "crash-b==1.0" }),
        { allowFail: true, timeoutMs: 120_000 },
      );
      writeFileSync(stored, good);
      expect(dl.status).not.toBe(0);
      expect(dl.stdout + dl.stderr).toMatch(/HASHES|hash/i);
      expect(existsSync(`${into}/crash_b-1.0-py3-none-any.whl`)).toBe(false);
    }, 120_000);

    it("answers 503 while the database is down and recovers without a restart", async () => {
      expect(sb.http("/simple/demo-pkg/").status).toBe(200);
      sb.pgCtl("primary", "stop");
      try {
        // A page this worker never rendered: cached pages may be served for a few seconds.
        const down = sb.http("/simple/not-cached/");
        expect(down.status, sb.apacheErrorLog()).toBe(503);
        expect(sb.http("/_health").body).toBe("unavailable\n");
        const health = sb.http("/_health/detail");
        expect(health.status).toBe(503);
        expect(JSON.parse(health.body).checks.db_write.ok).toBe(false);
        expect(JSON.parse(health.body).checks.storage.ok).toBe(true);
      } finally {
        sb.pgCtl("primary", "start");
      }
      const deadline = Date.now() + 20_000;
      let status = 0;
      while (Date.now() < deadline) {
        status = sb.http("/simple/demo-pkg/").status;
        if (status === 200) break;
        await new Promise((r) => setTimeout(r, 250));
      }
      expect(status).toBe(200);
      expect(sb.apacheErrorLog()).not.toMatch(/premature end of script headers/i);
    }, 60_000);
  },
);
