/**
 * The static index pages as Apache serves them from the rendered site: negotiation by Accept
 * (q-values) and ?format=, gzip forms by Accept-Encoding, ETag revalidation, and the index app
 * behind them for everything that has no page.
 */
import { readFileSync } from "node:fs";
import { gunzipSync } from "node:zlib";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AppSandbox, PG_BIN } from "../../lab/lib/app-sandbox.js";
import { type ProjectSnapshot, writeProjectPages, writeRootPages } from "../../src/app/pages.js";
import { requireTools } from "../support/tools.js";
import { topologyFor } from "../support/topologies.js";

const canRun = requireTools("index app (postgres 15 + apache + the app server)", [
  "unshare",
  "nsenter",
  "runuser",
  "curl",
  "apache2",
  `${PG_BIN}/postgres`,
  "/usr/lib/apache2/modules/mod_proxy_fcgi.so",
  "/usr/lib/apache2/modules/mod_negotiation.so",
  "/usr/lib/apache2/modules/mod_rewrite.so",
]);

const PIP_ACCEPT =
  "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01";
const BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

const snap: ProjectSnapshot = {
  project: "demo-pkg",
  displayName: "Demo_Pkg",
  files: [
    {
      filename: "demo_pkg-1.0.tar.gz",
      version: "1.0",
      sha256: "a".repeat(64),
      size: 10,
      uploadTime: new Date("2024-01-02T03:04:05Z"),
      requiresPython: null,
      yanked: "broken build",
      coreMetadataSha256: null,
      packagetype: "sdist",
      metadata: null,
    },
    {
      filename: "demo_pkg-1.1-py3-none-any.whl",
      version: "1.1",
      sha256: "b".repeat(64),
      size: 20,
      uploadTime: new Date("2024-02-02T03:04:05Z"),
      requiresPython: ">=3.8",
      yanked: null,
      coreMetadataSha256: "c".repeat(64),
      packagetype: "bdist_wheel",
      metadata: { Summary: ["A demo"], "Requires-Dist": ["requests>=2"] },
    },
  ],
};

interface Reply {
  status: number;
  headers: Record<string, string>;
  body: Buffer;
}

describe.skipIf(!canRun)("static /simple/ and /pypi/ pages under Apache", () => {
  let sb: AppSandbox;

  beforeAll(async () => {
    sb = await AppSandbox.start({ prefix: "pypi-static-", topology: topologyFor("staging", 15) });
    writeProjectPages(sb.packageRoot, snap, "/packages/");
    writeRootPages(sb.packageRoot, [{ name: "demo-pkg" }]);
  }, 120_000);

  afterAll(() => {
    if (sb && process.env.PYPI_APP_KEEP_LOGS) console.log(sb.apacheErrorLog());
    sb?.stop();
  });

  /** curl inside the sandbox with raw headers; the body comes back byte for byte. */
  const get = (path: string, headers: Record<string, string> = {}): Reply => {
    const args = Object.entries(headers).flatMap(([k, v]) => ["-H", `${k}: ${v}`]);
    // Headers, a marker, then the body in base64 (the exec streams are sockets, not files).
    const r = sb.exec([
      "sh",
      "-c",
      'f=$(mktemp) && curl -s -D - -o "$f" "$@" && printf "\\n%s\\n" "--body--" && base64 -w0 "$f"; rm -f "$f"',
      "sh",
      ...args,
      `http://127.0.0.1:${sb.t.app.httpPort}${path}`,
    ]);
    const split = r.stdout.lastIndexOf("\n--body--\n");
    const lines = r.stdout.slice(0, split).split("\r\n").filter(Boolean);
    const status = Number(/^HTTP\/[0-9.]+ ([0-9]{3})/.exec(lines[0] ?? "")?.[1] ?? 0);
    const out: Record<string, string> = {};
    for (const l of lines.slice(1)) {
      const i = l.indexOf(":");
      if (i > 0) out[l.slice(0, i).toLowerCase()] = l.slice(i + 1).trim();
    }
    return {
      status,
      headers: out,
      body: Buffer.from(r.stdout.slice(split + "\n--body--\n".length), "base64"),
    };
  };

  const page = (name: string, dir = "simple/demo-pkg"): Buffer =>
    readFileSync(`${sb.packageRoot}/${dir}/${name}`);

  it("pip's Accept gets the JSON page, as written", () => {
    const r = get("/simple/demo-pkg/", { Accept: PIP_ACCEPT });
    expect(r.status).toBe(200);
    expect(r.headers["content-type"]).toBe("application/vnd.pypi.simple.v1+json");
    expect(r.body.equals(page("index.v1json"))).toBe(true);
    // Served by Apache from the file, not rendered by the app.
    expect(r.headers["last-modified"]).toBeDefined();
    expect(r.headers["cache-control"]).toBe("max-age=60, public");
    expect(r.headers.vary?.toLowerCase().replace(/\s/g, "")).toBe("accept,accept-encoding");
    expect(r.headers.tcn).toBeUndefined();
    expect(r.headers["content-location"]).toBeUndefined();
  });

  it.each([
    ["no Accept", {}, "text/html; charset=utf-8", "index.html"],
    ["a browser", { Accept: BROWSER_ACCEPT }, "text/html; charset=utf-8", "index.html"],
    ["*/*", { Accept: "*/*" }, "text/html; charset=utf-8", "index.html"],
    [
      "PEP 691 HTML",
      { Accept: "application/vnd.pypi.simple.v1+html" },
      "application/vnd.pypi.simple.v1+html",
      "index.v1html",
    ],
    [
      "latest JSON",
      { Accept: "application/vnd.pypi.simple.latest+json" },
      "application/vnd.pypi.simple.v1+json",
      "index.v1json",
    ],
    [
      "JSON preferred by q",
      { Accept: "application/vnd.pypi.simple.v1+json;q=0.5, text/html;q=0.4" },
      "application/vnd.pypi.simple.v1+json",
      "index.v1json",
    ],
    [
      "HTML preferred by q",
      { Accept: "application/vnd.pypi.simple.v1+json;q=0.2, text/html" },
      "text/html; charset=utf-8",
      "index.html",
    ],
  ])("%s gets %s", (_what, headers, type, file) => {
    const r = get("/simple/demo-pkg/", headers);
    expect(r.status).toBe(200);
    expect(r.headers["content-type"]).toBe(type);
    expect(r.body.equals(page(file))).toBe(true);
  });

  it("an Accept that matches nothing gets 406", () => {
    expect(get("/simple/demo-pkg/", { Accept: "application/json" }).status).toBe(406);
    expect(get("/simple/demo-pkg/", { Accept: "text/html;q=0" }).status).toBe(406);
  });

  it("?format= overrides Accept (PEP 691), encoded or not; an unknown format is 406", () => {
    const json = get("/simple/demo-pkg/?format=application/vnd.pypi.simple.v1%2Bjson", {
      Accept: "text/html",
    });
    expect(json.headers["content-type"]).toBe("application/vnd.pypi.simple.v1+json");
    expect(json.body.equals(page("index.v1json"))).toBe(true);
    const html = get("/simple/demo-pkg/?format=text%2Fhtml", { Accept: PIP_ACCEPT });
    expect(html.headers["content-type"]).toBe("text/html; charset=utf-8");
    expect(get("/simple/demo-pkg/?format=application/vnd.pypi.simple.v1+html").headers["content-type"]).toBe(
      "application/vnd.pypi.simple.v1+html",
    );
    expect(get("/simple/demo-pkg/?format=application/json").status).toBe(406);
    // The app fallback reads the same override.
    expect(get("/simple/Demo_Pkg/?format=application/json").status).toBe(301);
  });

  it("gzip goes only to clients that accept it, and decompresses to the same bytes", () => {
    for (const [accept, file] of [
      [PIP_ACCEPT, "index.v1json"],
      ["text/html", "index.html"],
    ] as const) {
      const gz = get("/simple/demo-pkg/", { Accept: accept, "Accept-Encoding": "gzip, deflate" });
      expect(gz.status).toBe(200);
      expect(gz.headers["content-encoding"]).toBe("gzip");
      expect(gunzipSync(gz.body).equals(page(file))).toBe(true);
      const plain = get("/simple/demo-pkg/", { Accept: accept });
      expect(plain.headers["content-encoding"]).toBeUndefined();
      expect(plain.body.equals(page(file))).toBe(true);
    }
    expect(
      get("/simple/demo-pkg/", { "Accept-Encoding": "gzip;q=0, identity" }).headers["content-encoding"],
    ).toBe(undefined);
  });

  it("a well-formed ETag per form; If-None-Match with it gets 304, with another form's gets 200", () => {
    const json = get("/simple/demo-pkg/", { Accept: PIP_ACCEPT });
    const html = get("/simple/demo-pkg/", { Accept: "text/html" });
    const etag = json.headers.etag as string;
    expect(etag).toMatch(/^(W\/)?"[^"]+"$/);
    expect(html.headers.etag).not.toBe(etag);
    const again = get("/simple/demo-pkg/", { Accept: PIP_ACCEPT, "If-None-Match": etag });
    expect(again.status).toBe(304);
    expect(again.body.length).toBe(0);
    expect(again.headers.etag).toBe(etag);
    expect(get("/simple/demo-pkg/", { Accept: "text/html", "If-None-Match": etag }).status).toBe(200);
    const gz = get("/simple/demo-pkg/", { Accept: PIP_ACCEPT, "Accept-Encoding": "gzip" });
    expect(gz.headers.etag).not.toBe(etag);
    expect(
      get("/simple/demo-pkg/", {
        Accept: PIP_ACCEPT,
        "Accept-Encoding": "gzip",
        "If-None-Match": gz.headers.etag!,
      }).status,
    ).toBe(304);
  });

  it("the pages carry PEP 592 yanking and PEP 658/714 core metadata", () => {
    const html = get("/simple/demo-pkg/").body.toString();
    expect(html).toContain('data-yanked="broken build">demo_pkg-1.0.tar.gz</a>');
    expect(html).toContain(
      `data-requires-python="&#62;=3.8" data-core-metadata="sha256=${"c".repeat(64)}" data-dist-info-metadata="sha256=${"c".repeat(64)}">`,
    );
    const doc = JSON.parse(get("/simple/demo-pkg/", { Accept: PIP_ACCEPT }).body.toString());
    expect(doc.files[0].yanked).toBe("broken build");
    expect(doc.files[1].yanked).toBe(false);
    expect(doc.files[1]["core-metadata"]).toEqual({ sha256: "c".repeat(64) });
    // pip 23.0 crashes on a dict under the old key (PEP 714): it must not be there.
    expect(doc.files[1]).not.toHaveProperty("dist-info-metadata");
  });

  it("the root page is static too", () => {
    const r = get("/simple/", { Accept: PIP_ACCEPT });
    expect(r.status).toBe(200);
    expect(JSON.parse(r.body.toString()).projects).toEqual([{ name: "demo-pkg" }]);
    expect(get("/simple/").body.toString()).toContain('<a href="demo-pkg/">demo-pkg</a>');
  });

  it("names without a page fall through to the app: redirects to the normalized name, 404 for unknown", () => {
    const moved = get("/simple/Demo_Pkg/", { Accept: PIP_ACCEPT });
    expect(moved.status).toBe(301);
    expect(moved.headers.location).toMatch(/^(http:\/\/127\.0\.0\.1)?\/simple\/demo-pkg\/$/);
    expect(get("/simple/demo-pkg").status).toBe(301);
    expect(get("/simple").status).toBe(301);
    expect(get("/simple/no-such-project/", { Accept: PIP_ACCEPT }).status).toBe(404);
    expect(get("/simple/no-such-project/index.v1json").status).toBe(404);
    expect(get("/pypi/Demo_Pkg/json").headers.location).toMatch(/\/pypi\/demo-pkg\/json$/);
    expect(get("/pypi/no-such-project/json").status).toBe(404);
  });

  it("/pypi/<project>/json is the JSON API, for any Accept, gzipped on request", () => {
    for (const accept of [undefined, "text/html", "application/json"]) {
      const r = get("/pypi/demo-pkg/json", accept ? { Accept: accept } : {});
      expect(r.status).toBe(200);
      expect(r.headers["content-type"]).toBe("application/json");
      expect(r.body.equals(page("index.json", "pypi/demo-pkg"))).toBe(true);
    }
    const doc = JSON.parse(get("/pypi/demo-pkg/json").body.toString());
    expect(doc.info).toMatchObject({ name: "Demo_Pkg", version: "1.1", summary: "A demo" });
    expect(doc.info.requires_dist).toEqual(["requests>=2"]);
    expect(Object.keys(doc.releases)).toEqual(["1.0", "1.1"]);
    expect(doc.urls).toHaveLength(1);
    expect(doc.urls[0]).toMatchObject({
      filename: "demo_pkg-1.1-py3-none-any.whl",
      digests: { sha256: "b".repeat(64) },
      packagetype: "bdist_wheel",
      upload_time_iso_8601: "2024-02-02T03:04:05.000Z",
    });
    expect(doc.releases["1.0"][0]).toMatchObject({ yanked: true, yanked_reason: "broken build" });
    const gz = get("/pypi/demo-pkg/json", { "Accept-Encoding": "gzip" });
    expect(gz.headers["content-encoding"]).toBe("gzip");
    expect(gunzipSync(gz.body).equals(page("index.json", "pypi/demo-pkg"))).toBe(true);
    const etag = gz.headers.etag!;
    expect(get("/pypi/demo-pkg/json", { "Accept-Encoding": "gzip", "If-None-Match": etag }).status).toBe(304);
  });

  it("a rewritten page is served at once, with a new ETag", () => {
    const before = get("/simple/demo-pkg/", { Accept: PIP_ACCEPT });
    writeProjectPages(
      sb.packageRoot,
      { ...snap, files: snap.files.map((f) => ({ ...f, yanked: null })) },
      "/packages/",
    );
    const after = get("/simple/demo-pkg/", { Accept: PIP_ACCEPT });
    expect(JSON.parse(after.body.toString()).files[0].yanked).toBe(false);
    expect(after.headers.etag).not.toBe(before.headers.etag);
    expect(
      get("/simple/demo-pkg/", { Accept: PIP_ACCEPT, "If-None-Match": before.headers.etag! }).status,
    ).toBe(200);
  });
});
