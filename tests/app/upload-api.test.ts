/**
 * The upload API and ownership with real clients: twine against Apache (each app runtime) + the app
 * + Postgres 15, tokens made by the admin command, and the SFTP door's registration of the
 * same rules. Every refusal is checked by what twine prints.
 */
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AppSandbox, PG_BIN } from "../../lab/lib/app-sandbox.js";
import { pipArgv, writeHostileWheel } from "../../lab/lib/wheel.js";
import { indexFcgiScript } from "../../src/render/apache.js";
import { APP_RUNTIMES } from "../../src/topology.js";
import { requireTools } from "../support/tools.js";
import { topologyFor } from "../support/topologies.js";
import { makeSdist, makeWheel } from "./fixtures.js";

const canRun = requireTools("upload API (twine, postgres 15, apache: app server and mod_fcgid)", [
  "unshare",
  "nsenter",
  "curl",
  "python3",
  "twine",
  "poetry",
  "flit",
  "apache2",
  `${PG_BIN}/postgres`,
  "/usr/lib/apache2/modules/mod_fcgid.so",
  "/usr/lib/apache2/modules/mod_proxy_fcgi.so",
]);

describe.skipIf(!canRun).each(APP_RUNTIMES)("upload API and project ownership (%s runtime)", (runtime) => {
  let sb: AppSandbox;
  let dists = "";
  const tokens: Record<string, string> = {};

  beforeAll(async () => {
    // With a CDN: the sandbox's directory stands in for CloudFront.
    const topology = { ...topologyFor("staging", 15), cdnInvalidations: "cloudfront:E2QWRUHEXAMPLE" };
    sb = await AppSandbox.start({ prefix: "pypi-upload-", topology, runtime });
    sb.exec(["node", indexFcgiScript, "migrate"], { env: sb.appEnv() });
    dists = `${sb.scratch}/dists`;
    mkdirSync(dists, { recursive: true });
    tokens.alice = admin(["token", "create", "alice"]).trim();
    tokens.mallory = admin(["token", "create", "mallory"]).trim();
    tokens.scoped = admin(["token", "create", "alice", "--project", "Other_Project"]).trim();
  }, 120_000);

  afterAll(() => {
    if (sb && process.env.PYPI_APP_KEEP_LOGS) console.log(sb.apacheErrorLog());
    sb?.stop();
  });

  function admin(args: string[], allowFail = false) {
    const r = sb.exec(["node", indexFcgiScript, "admin", ...args], { env: sb.appEnv(), allowFail: true });
    if (!allowFail && r.status !== 0) throw new Error(`admin ${args.join(" ")}: ${r.stderr}`);
    return allowFail ? `${r.status}\n${r.stdout}${r.stderr}` : r.stdout;
  }

  function twine(token: string, file: string, extra: string[] = []) {
    const r = sb.exec(
      [
        "twine",
        "upload",
        "--non-interactive",
        "--disable-progress-bar",
        "--repository-url",
        `http://127.0.0.1:${sb.t.app.httpPort}/legacy/`,
        "-u",
        "__token__",
        "-p",
        token,
        ...extra,
        file,
      ],
      { allowFail: true, timeoutMs: 60_000, env: { HOME: "/tmp" } },
    );
    // twine wraps the server's reason over lines; one space per gap keeps the checks simple.
    return { status: r.status, out: `${r.stdout}${r.stderr}`.replace(/\s+/g, " ") };
  }

  const count = (sql: string): number => Number(sb.psql(sql, "pypi").trim());

  it("tokens are stored as hashes only and listed without their secret", () => {
    expect(tokens.alice).toMatch(/^pypi-[0-9a-f]{16}_[A-Za-z0-9_-]{43}$/);
    const stored = sb.psql("SELECT secret_sha256 FROM api_tokens", "pypi");
    expect(stored).not.toContain((tokens.alice ?? "").split("_").slice(1).join("_"));
    const list = admin(["token", "list", "alice"]);
    expect(list.split("\n").filter(Boolean)).toHaveLength(2);
    expect(list).toMatch(/\tother-project\tlive\t/);
    expect(list).not.toContain(tokens.alice);
  });

  it("twine uploads a wheel and an sdist; the project belongs to the uploader; pip installs it", () => {
    makeWheel(`${dists}/Demo_Pkg-1.0.0-py3-none-any.whl`, "Demo_Pkg", "1.0.0");
    makeSdist(`${dists}/demo_pkg-1.0.0.tar.gz`, "demo_pkg", "1.0.0");
    const w = twine(tokens.alice ?? "", `${dists}/Demo_Pkg-1.0.0-py3-none-any.whl`);
    expect(w.status, w.out).toBe(0);
    const s = twine(tokens.alice ?? "", `${dists}/demo_pkg-1.0.0.tar.gz`);
    expect(s.status, s.out).toBe(0);
    expect(sb.psql("SELECT account, role FROM project_roles WHERE project = 'demo-pkg'", "pypi").trim()).toBe(
      "alice|owner",
    );
    expect(sb.psql("SELECT via, uploader FROM files ORDER BY filename", "pypi").trim()).toBe(
      "http|alice\nhttp|alice",
    );
    const page = sb.http("/simple/demo-pkg/");
    expect(page.status).toBe(200);
    expect(page.body).toContain("Demo_Pkg-1.0.0-py3-none-any.whl");
    expect(page.body).toMatch(/data-core-metadata="sha256=[0-9a-f]{64}"/);
    const meta = sb.http("/packages/demo-pkg/Demo_Pkg-1.0.0-py3-none-any.whl.metadata");
    expect(meta.status).toBe(200);
    expect(meta.body).toMatch(/^Metadata-Version: 2\.1\nName: Demo_Pkg\nVersion: 1\.0\.0\n/);

    // Debian 12's own pip (23.0): it crashed on pages an older pip would read.
    const pip = sb.exec(
      pipArgv("install", {
        indexUrl: `http://127.0.0.1:${sb.t.app.httpPort}/simple/`,
        into: "/tmp/pip-target",
        spec: "demo-pkg==1.0",
      }),
      { allowFail: true, timeoutMs: 120_000 },
    );
    expect(pip.status, pip.stdout + pip.stderr).toBe(0);
  }, 180_000);

  it("refuses another account's upload into the project, whatever the filename's spelling", () => {
    makeWheel(`${dists}/demo.pkg-1.0.1-py3-none-any.whl`, "demo.pkg", "1.0.1");
    const r = twine(tokens.mallory ?? "", `${dists}/demo.pkg-1.0.1-py3-none-any.whl`);
    expect(r.status).not.toBe(0);
    expect(r.out).toMatch(/403 .*The account mallory is not an owner or maintainer of the project demo-pkg/);
    expect(count("SELECT count(*) FROM files WHERE uploader = 'mallory'")).toBe(0);
  }, 60_000);

  it("refuses a re-spelled filename of an existing file, even from the owner", () => {
    makeWheel(`${dists}/demo_pkg-1.0.0.0-py3-none-any.whl`, "demo_pkg", "1.0.0.0");
    const r = twine(tokens.alice ?? "", `${dists}/demo_pkg-1.0.0.0-py3-none-any.whl`);
    expect(r.status).not.toBe(0);
    expect(r.out).toMatch(
      /409 .*File already exists under another spelling: Demo_Pkg-1\.0\.0-py3-none-any\.whl/,
    );
  }, 60_000);

  it("an exact re-upload is 409 and twine --skip-existing accepts it", () => {
    const again = twine(tokens.alice ?? "", `${dists}/Demo_Pkg-1.0.0-py3-none-any.whl`);
    expect(again.out).toMatch(/409 .*File already exists: Demo_Pkg-1\.0\.0-py3-none-any\.whl/);
    const skip = twine(tokens.alice ?? "", `${dists}/Demo_Pkg-1.0.0-py3-none-any.whl`, ["--skip-existing"]);
    expect(skip.status, skip.out).toBe(0);
    expect(skip.out).toMatch(/Skipping/);
  }, 60_000);

  it("a token limited to other projects cannot upload here", () => {
    makeWheel(`${dists}/demo_pkg-1.1-py3-none-any.whl`, "demo_pkg", "1.1");
    const r = twine(tokens.scoped ?? "", `${dists}/demo_pkg-1.1-py3-none-any.whl`);
    expect(r.out).toMatch(
      /403 .*This token is limited to the projects other-project; it cannot upload to demo-pkg/,
    );
  }, 60_000);

  it.each([
    ["bomb", "bomb-1.0-py3-none-any.whl", /400 .*(zip bomb|inflate)/i],
    ["mismatch", "mismatch3-2.0-py3-none-any.whl", /400 .*METADATA says "requests 99\.0"/],
    ["slip", "slip-1.0-py3-none-any.whl", /400 .*\.\.\/\.\.\/\.\.\/\.\.\/tmp\/pwned\.py/],
  ] as const)(
    "refuses a %s wheel with the reason twine prints",
    (kind, filename, re) => {
      const [name, version] = filename.split("-") as [string, string];
      writeHostileWheel(`${dists}/${filename}`, kind, name, version);
      const r = twine(tokens.alice ?? "", `${dists}/${filename}`);
      expect(r.status).not.toBe(0);
      expect(r.out).toMatch(re);
      // Every refusal is logged with its reason, as the SFTP door's are.
      expect(sb.appLog()).toContain(`upload: refused ${filename} from alice: `);
      expect(count(`SELECT count(*) FROM files WHERE filename = '${filename}'`)).toBe(0);
      expect(readdirSync(`${sb.packageRoot}/packages`)).not.toContain(name);
    },
    60_000,
  );

  it("refuses a revoked token, a wrong digest and a body over the limit", () => {
    const id = /^pypi-([0-9a-f]{16})_/.exec(tokens.mallory ?? "")?.[1] ?? "";
    expect(admin(["token", "revoke", id])).toBe(`revoked ${id}\n`);
    makeWheel(`${dists}/mallorys-1.0-py3-none-any.whl`, "mallorys", "1.0");
    expect(twine(tokens.mallory ?? "", `${dists}/mallorys-1.0-py3-none-any.whl`).out).toMatch(
      /403 .*Invalid or revoked API token/,
    );

    const file = `${dists}/digest-1.0-py3-none-any.whl`;
    makeWheel(file, "digest", "1.0");
    const curl = (extra: string[]) =>
      sb.exec(
        [
          "curl",
          "-s",
          "-o",
          "/dev/null",
          "-w",
          "%{http_code}",
          "-u",
          `__token__:${tokens.alice}`,
          "-F",
          ":action=file_upload",
          "-F",
          "protocol_version=1",
          "-F",
          "filetype=bdist_wheel",
          ...extra,
          `http://127.0.0.1:${sb.t.app.httpPort}/legacy/`,
        ],
        { allowFail: true },
      ).stdout;
    expect(curl(["-F", `sha256_digest=${"0".repeat(64)}`, "-F", `content=@${file}`])).toBe("400");
    const big = `${dists}/big-1.0-py3-none-any.whl`;
    writeFileSync(big, Buffer.alloc(sb.t.upload.maxFileBytes + 1, 1));
    expect(curl(["-F", `sha256_digest=${"0".repeat(64)}`, "-F", `content=@${big}`])).toBe("413");
    expect(count("SELECT count(*) FROM files WHERE filename LIKE 'digest%' OR filename LIKE 'big%'")).toBe(0);
  }, 60_000);

  it("the SFTP door applies the same ownership and archive checks", () => {
    const upload = `${sb.packageRoot}/incoming/mallory/upload`;
    mkdirSync(upload, { recursive: true });
    makeWheel(`${upload}/DEMO_PKG-2.0-py3-none-any.whl`, "DEMO_PKG", "2.0");
    writeHostileWheel(`${upload}/slip2-1.0-py3-none-any.whl`, "slip", "slip2", "1.0");
    // One entry the registrar cannot move aside must not stop the others.
    mkdirSync(`${upload}/0`);
    makeWheel(`${upload}/zz_mallory-1.0-py3-none-any.whl`, "zz_mallory", "1.0");
    const { summary } = sb.register("mallory");
    const reasons = Object.fromEntries(summary.rejected.map((r) => [r.file, r.reason]));
    expect(reasons["DEMO_PKG-2.0-py3-none-any.whl"]).toMatch(
      /not an owner or maintainer of the project demo-pkg/,
    );
    expect(reasons["slip2-1.0-py3-none-any.whl"]).toMatch(/pwned/);
    expect(summary.registered).toEqual(["zz-mallory/zz_mallory-1.0-py3-none-any.whl"]);
  }, 60_000);

  it("owners add maintainers; yank and unyank show in every form", () => {
    admin(["role", "add", "demo-pkg", "mallory", "maintainer"]);
    expect(admin(["role", "list", "Demo_Pkg"])).toBe(
      "demo-pkg\talice\towner\ndemo-pkg\tmallory\tmaintainer\n",
    );
    expect(admin(["role", "remove", "demo-pkg", "alice"], true)).toMatch(/^2\n.*last owner/s);
    expect(admin(["yank", "demo-pkg", "1.0", "--reason", "broken build"])).toMatch(
      /^yanked demo-pkg 1\.0 \(2 files\)/,
    );
    expect(sb.http("/simple/demo-pkg/").body).toMatch(/data-yanked="broken build"/);
    const json = JSON.parse(sb.http("/simple/demo-pkg/", "application/vnd.pypi.simple.v1+json").body);
    expect(json.files.every((f: { yanked: unknown }) => f.yanked === "broken build")).toBe(true);
    // A new file of a yanked release is yanked with it: an upload does not undo a yank.
    makeWheel(`${dists}/demo_pkg-1.0.0-1-py3-none-any.whl`, "demo_pkg", "1.0.0");
    const late = twine(tokens.alice ?? "", `${dists}/demo_pkg-1.0.0-1-py3-none-any.whl`);
    expect(late.status, late.out).toBe(0);
    const after = JSON.parse(sb.http("/simple/demo-pkg/", "application/vnd.pypi.simple.v1+json").body);
    expect(
      after.files.find((f: { filename: string }) => f.filename === "demo_pkg-1.0.0-1-py3-none-any.whl")
        .yanked,
    ).toBe("broken build");
    admin(["unyank", "demo-pkg", "1.0.0"]);
    expect(sb.http("/simple/demo-pkg/").body).not.toMatch(/data-yanked/);
    expect(admin(["yank", "demo-pkg", "9.9"], true)).toMatch(/^2\n.*no release 9\.9/s);
    expect(readFileSync(`${sb.packageRoot}/simple/demo-pkg/index.html`, "utf8")).toContain("Demo_Pkg-1.0.0");
  });

  it("poetry publish and flit publish upload with a token too (Debian 12's poetry 1.3 and flit 3.8)", () => {
    const url = `http://127.0.0.1:${sb.t.app.httpPort}/legacy/`;
    const token = tokens.alice ?? "";
    const tools = { HOME: "/tmp", PYTHON_KEYRING_BACKEND: "keyring.backends.null.Keyring" };
    const inDir = (dir: string, command: string, env: Record<string, string> = {}) =>
      sb.exec(["sh", "-c", `cd ${dir} && ${command}`], {
        allowFail: true,
        timeoutMs: 120_000,
        env: { ...tools, ...env },
      });

    const poetryDir = `${sb.scratch}/poetry-demo`;
    mkdirSync(`${poetryDir}/poetry_demo`, { recursive: true });
    writeFileSync(`${poetryDir}/poetry_demo/__init__.py`, '__version__ = "0.1.0"\n');
    writeFileSync(
      `${poetryDir}/pyproject.toml`,
      [
        "[tool.poetry]",
        'name = "poetry-demo"',
        'version = "0.1.0"',
        'description = "published by poetry"',
        'authors = ["Lab <lab@example.org>"]',
        "",
        "[tool.poetry.dependencies]",
        'python = ">=3.7"',
        "",
        "[build-system]",
        'requires = ["poetry-core"]',
        'build-backend = "poetry.core.masonry.api"',
        "",
      ].join("\n"),
    );
    const poetry = inDir(
      poetryDir,
      `poetry build && poetry config repositories.lab ${url} && poetry publish -r lab -u __token__ -p ${token}`,
      { POETRY_CONFIG_DIR: `${poetryDir}/.config`, POETRY_CACHE_DIR: `${poetryDir}/.cache` },
    );
    expect(poetry.status, poetry.stdout + poetry.stderr).toBe(0);
    const poetryPage = sb.http("/simple/poetry-demo/").body;
    expect(poetryPage).toContain("poetry_demo-0.1.0-py3-none-any.whl");
    expect(poetryPage).toContain("poetry_demo-0.1.0.tar.gz");

    const flitDir = `${sb.scratch}/flit-demo`;
    mkdirSync(`${flitDir}/flit_demo`, { recursive: true });
    writeFileSync(`${flitDir}/flit_demo/__init__.py`, '"""Published by flit."""\n__version__ = "0.2.0"\n');
    writeFileSync(
      `${flitDir}/pyproject.toml`,
      [
        "[build-system]",
        'requires = ["flit_core >=3.2,<4"]',
        'build-backend = "flit_core.buildapi"',
        "",
        "[project]",
        'name = "flit_demo"',
        'version = "0.2.0"',
        'description = "published by flit"',
        "",
      ].join("\n"),
    );
    const flit = inDir(flitDir, "flit publish --format wheel", {
      FLIT_INDEX_URL: url,
      FLIT_USERNAME: "__token__",
      FLIT_PASSWORD: token,
    });
    expect(flit.status, flit.stdout + flit.stderr).toBe(0);
    expect(sb.http("/simple/flit-demo/").body).toContain("flit_demo-0.2.0-py2.py3-none-any.whl");
    // Both belong to the token's account.
    expect(
      sb
        .psql(
          "SELECT project || ' ' || account FROM project_roles WHERE project IN ('poetry-demo', 'flit-demo') ORDER BY 1",
          "pypi",
        )
        .trim(),
    ).toBe("flit-demo alice\npoetry-demo alice");
  }, 240_000);

  it("each page change queues its CDN purge; one job run sends exactly the paths that changed", () => {
    const standIn = sb.t.cdnInvalidations ?? "";
    expect(standIn).toMatch(/^\//);
    const purge = (): { entries: number; paths: string[]; invalidation?: string } => {
      const r = sb.exec(["node", indexFcgiScript, "cdn-purge"], { env: sb.appEnv() });
      return JSON.parse(r.stdout);
    };
    // What the tests above changed, as one invalidation.
    expect(purge().entries).toBeGreaterThan(0);
    const seen = new Set(readdirSync(standIn));

    makeWheel(`${dists}/demo_pkg-1.2-py3-none-any.whl`, "demo_pkg", "1.2");
    const up = twine(tokens.alice ?? "", `${dists}/demo_pkg-1.2-py3-none-any.whl`);
    expect(up.status, up.out).toBe(0);
    const sent = purge();
    expect(sent.paths).toEqual(["/pypi/demo-pkg/json", "/simple/demo-pkg/*"]);
    const fresh = readdirSync(standIn).filter((n) => !seen.has(n));
    expect(fresh).toEqual([`${sent.invalidation}.json`]);
    const recorded = JSON.parse(readFileSync(`${standIn}/${fresh[0]}`, "utf8"));
    expect(recorded.InvalidationBatch.Paths).toEqual({ Quantity: 2, Items: sent.paths });

    // A new project changes the root list too.
    makeWheel(`${dists}/fresh_proj-1.0-py3-none-any.whl`, "fresh_proj", "1.0");
    const first = twine(tokens.alice ?? "", `${dists}/fresh_proj-1.0-py3-none-any.whl`);
    expect(first.status, first.out).toBe(0);
    expect(purge().paths).toEqual(["/pypi/fresh-proj/json", "/simple/", "/simple/fresh-proj/*"]);
    admin(["yank", "fresh-proj", "1.0"]);
    expect(purge().paths).toEqual(["/pypi/fresh-proj/json", "/simple/fresh-proj/*"]);
    // A refused upload changes nothing, and nothing is sent.
    const refused = twine(tokens.mallory ?? "", `${dists}/fresh_proj-1.0-py3-none-any.whl`);
    expect(refused.status).not.toBe(0);
    expect(purge()).toMatchObject({ entries: 0, paths: [] });
  }, 120_000);
});
