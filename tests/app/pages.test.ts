import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gunzipSync } from "node:zlib";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  latestVersion,
  type ProjectSnapshot,
  type ReleaseFile,
  renderJsonApi,
  writeProjectPages,
  writeRootPages,
} from "../../src/app/pages.js";

const file = (filename: string, version: string, extra: Partial<ReleaseFile> = {}): ReleaseFile => ({
  filename,
  version,
  sha256: "a".repeat(64),
  size: 100,
  uploadTime: new Date("2024-05-06T07:08:09.123Z"),
  requiresPython: null,
  yanked: null,
  coreMetadataSha256: null,
  packagetype: filename.endsWith(".whl") ? "bdist_wheel" : "sdist",
  metadata: null,
  ...extra,
});

const meta = {
  "Metadata-Version": ["2.1"],
  Name: ["Demo.Pkg"],
  Version: ["2.0"],
  Summary: ["A demo"],
  Author: ["Alice"],
  "Author-email": ["alice@example.org"],
  License: ["MIT"],
  "Home-page": ["https://example.org"],
  "Requires-Python": [">=3.9"],
  Classifier: ["Programming Language :: Python :: 3", "License :: OSI Approved :: MIT License"],
  "Requires-Dist": ["requests>=2", 'rich; extra == "fancy"'],
  "Provides-Extra": ["fancy"],
  "Project-URL": ["Source, https://example.org/src", "Docs,https://example.org/docs", "broken"],
};

const snap: ProjectSnapshot = {
  project: "demo-pkg",
  displayName: "Demo.Pkg",
  files: [
    file("demo_pkg-10.0-py3-none-any.whl", "10.0", { yanked: "broken build" }),
    file("demo_pkg-2.0-py3-none-any.whl", "2.0", {
      metadata: meta,
      coreMetadataSha256: "c".repeat(64),
      requiresPython: ">=3.9",
    }),
    file("demo_pkg-2.0.tar.gz", "2.0", { metadata: { Summary: ["from the sdist"] } }),
    file("demo_pkg-1.10.tar.gz", "1.10"),
    file("demo_pkg-3.0rc1-cp312-cp312-manylinux_2_17_x86_64.whl", "3.0rc1"),
    file("demo_pkg-1.9.tar.gz", "1.9"),
  ],
};

let root = "";
beforeEach(() => {
  root = mkdtempSync(join(tmpdir(), "pypi-pages-"));
});
afterEach(() => {
  rmSync(root, { recursive: true, force: true });
});

const read = (...p: string[]): string => readFileSync(join(root, ...p), "utf8");

describe("writeProjectPages", () => {
  it("writes every form with its gzip twin and a type map, under simple/ and pypi/", () => {
    writeProjectPages(root, snap, "/packages/");
    const simple = join(root, "simple", "demo-pkg");
    expect(readdirSync(simple).sort()).toEqual([
      "index.html",
      "index.html.gz",
      "index.v1html",
      "index.v1html.gz",
      "index.v1json",
      "index.v1json.gz",
      "index.var",
    ]);
    expect(readdirSync(join(root, "pypi", "demo-pkg")).sort()).toEqual([
      "index.json",
      "index.json.gz",
      "index.var",
    ]);
    for (const [dir, name] of [
      [simple, "index.html"],
      [simple, "index.v1html"],
      [simple, "index.v1json"],
      [join(root, "pypi", "demo-pkg"), "index.json"],
    ] as const) {
      const raw = readFileSync(join(dir, name));
      expect(gunzipSync(readFileSync(join(dir, `${name}.gz`))).equals(raw)).toBe(true);
      expect(statSync(join(dir, name)).mode & 0o777).toBe(0o644);
    }
    expect(read("simple", "demo-pkg", "index.html")).toBe(read("simple", "demo-pkg", "index.v1html"));
    expect(read("simple", "demo-pkg", "index.html")).toContain(
      `data-core-metadata="sha256=${"c".repeat(64)}" data-dist-info-metadata="sha256=${"c".repeat(64)}"`,
    );
    expect(read("simple", "demo-pkg", "index.html")).toContain('data-yanked="broken build"');
    const doc = JSON.parse(read("simple", "demo-pkg", "index.v1json"));
    expect(doc.meta["api-version"]).toBe("1.1");
    expect(doc.files.map((f: { filename: string }) => f.filename)).toEqual(
      [...snap.files.map((f) => f.filename)].sort(),
    );
  });

  it("type map: text/html wins ties, every variant has a gzip form, latest names the v1 files", () => {
    writeProjectPages(root, snap, "/packages/");
    const blocks = read("simple", "demo-pkg", "index.var").trim().split("\n\n");
    const entries = blocks.map((b) =>
      Object.fromEntries(b.split("\n").map((l) => l.split(": ") as [string, string])),
    );
    expect(entries).toHaveLength(10);
    expect(entries[0]).toEqual({ URI: "index.html", "Content-Type": "text/html; charset=utf-8" });
    expect(entries[1]).toEqual({
      URI: "index.html.gz",
      "Content-Type": "text/html; charset=utf-8",
      "Content-Encoding": "gzip",
    });
    const qs = (type: string): number =>
      Number(
        /qs=([0-9.]+)/.exec(
          entries.find((e) => e["Content-Type"]?.startsWith(type))?.["Content-Type"] ?? "",
        )?.[1] ?? 1,
      );
    expect(qs("text/html")).toBeGreaterThan(qs("application/vnd.pypi.simple.v1+html"));
    expect(qs("application/vnd.pypi.simple.v1+html")).toBeGreaterThan(
      qs("application/vnd.pypi.simple.v1+json"),
    );
    expect(
      entries.filter((e) => e["Content-Type"]?.startsWith("application/vnd.pypi.simple.latest+json")),
    ).toEqual([
      { URI: "index.v1json", "Content-Type": "application/vnd.pypi.simple.latest+json; qs=0.996" },
      {
        URI: "index.v1json.gz",
        "Content-Type": "application/vnd.pypi.simple.latest+json; qs=0.996",
        "Content-Encoding": "gzip",
      },
    ]);
    for (const e of entries) expect(existsSync(join(root, "simple", "demo-pkg", e.URI as string))).toBe(true);
  });

  it("leaves unchanged files alone (their ETag holds), replaces changed ones, leaves no temporary files", () => {
    writeProjectPages(root, snap, "/packages/");
    const p = (n: string): string => join(root, "simple", "demo-pkg", n);
    const before = { map: statSync(p("index.var")).ino, json: statSync(p("index.v1json")).ino };
    writeProjectPages(root, snap, "/packages/");
    expect(statSync(p("index.var")).ino).toBe(before.map);
    expect(statSync(p("index.v1json")).ino).toBe(before.json);
    writeProjectPages(
      root,
      { ...snap, files: [...snap.files, file("demo_pkg-4.0.tar.gz", "4.0")] },
      "/packages/",
    );
    expect(statSync(p("index.var")).ino).toBe(before.map);
    expect(statSync(p("index.v1json")).ino).not.toBe(before.json);
    expect(read("simple", "demo-pkg", "index.v1json")).toContain("demo_pkg-4.0.tar.gz");
    const all = [
      ...readdirSync(join(root, "simple", "demo-pkg")),
      ...readdirSync(join(root, "pypi", "demo-pkg")),
    ];
    expect(all.filter((n) => n.startsWith("."))).toEqual([]);
  });

  it("a project without files loses its pages (the app answers for it again)", () => {
    writeProjectPages(root, snap, "/packages/");
    writeProjectPages(root, { ...snap, files: [] }, "/packages/");
    expect(readdirSync(join(root, "simple", "demo-pkg"))).toEqual([]);
    expect(readdirSync(join(root, "pypi", "demo-pkg"))).toEqual([]);
  });

  it("refuses names that are not normalized (they would escape or shadow a page directory)", () => {
    for (const bad of ["Demo", "../x", "a/b", "", "a_b", "index.var"])
      expect(() => writeProjectPages(root, { ...snap, project: bad }, "/packages/")).toThrow(/normalized/);
  });
});

describe("writeRootPages", () => {
  it("lists each project once, sorted, in every form", () => {
    writeRootPages(root, [{ name: "zeta" }, { name: "alpha" }, { name: "zeta" }]);
    expect(JSON.parse(read("simple", "index.v1json")).projects).toEqual([
      { name: "alpha" },
      { name: "zeta" },
    ]);
    expect(read("simple", "index.html")).toContain('<a href="alpha/">alpha</a>');
    expect(gunzipSync(readFileSync(join(root, "simple", "index.html.gz"))).toString()).toBe(
      read("simple", "index.html"),
    );
    expect(existsSync(join(root, "simple", "index.var"))).toBe(true);
    expect(() => writeRootPages(root, [{ name: "Bad_Name" }])).toThrow(/normalized/);
  });
});

describe("latestVersion", () => {
  it("takes the highest final release that has a file not yanked (PEP 440 order)", () => {
    expect(latestVersion(snap.files)).toBe("2.0");
  });
  it("falls back to pre-releases, then to yanked versions", () => {
    expect(latestVersion([file("a-1.0rc1.tar.gz", "1.0rc1"), file("a-0.9.dev1.tar.gz", "0.9.dev1")])).toBe(
      "1.0rc1",
    );
    expect(
      latestVersion([
        file("a-1.0.tar.gz", "1.0", { yanked: "" }),
        file("a-2.0.tar.gz", "2.0", { yanked: "x" }),
      ]),
    ).toBe("2.0");
    expect(latestVersion([])).toBeNull();
  });
});

describe("renderJsonApi (/pypi/<project>/json)", () => {
  const doc = JSON.parse(renderJsonApi(snap, "/packages/"));

  it("describes the latest version from its wheel's core metadata", () => {
    expect(doc.info).toMatchObject({
      name: "Demo.Pkg",
      version: "2.0",
      summary: "A demo",
      author: "Alice",
      author_email: "alice@example.org",
      license: "MIT",
      home_page: "https://example.org",
      requires_python: ">=3.9",
      classifiers: ["Programming Language :: Python :: 3", "License :: OSI Approved :: MIT License"],
      requires_dist: ["requests>=2", 'rich; extra == "fancy"'],
      provides_extra: ["fancy"],
      project_urls: { Source: "https://example.org/src", Docs: "https://example.org/docs" },
      yanked: false,
      yanked_reason: null,
      package_url: "/simple/demo-pkg/",
    });
    expect(doc.info.maintainer).toBeNull();
    expect(doc.info.description).toBeNull();
  });

  it("lists releases in PEP 440 order and the files of info.version as urls", () => {
    expect(Object.keys(doc.releases)).toEqual(["1.9", "1.10", "2.0", "3.0rc1", "10.0"]);
    expect(doc.urls.map((f: { filename: string }) => f.filename)).toEqual([
      "demo_pkg-2.0-py3-none-any.whl",
      "demo_pkg-2.0.tar.gz",
    ]);
    expect(doc.urls[0]).toEqual({
      filename: "demo_pkg-2.0-py3-none-any.whl",
      url: "/packages/demo-pkg/demo_pkg-2.0-py3-none-any.whl",
      digests: { sha256: "a".repeat(64) },
      size: 100,
      packagetype: "bdist_wheel",
      python_version: "py3",
      requires_python: ">=3.9",
      upload_time: "2024-05-06T07:08:09",
      upload_time_iso_8601: "2024-05-06T07:08:09.123Z",
      yanked: false,
      yanked_reason: null,
    });
    expect(doc.urls[1].python_version).toBe("source");
    expect(doc.releases["3.0rc1"][0].python_version).toBe("cp312");
    expect(doc.releases["10.0"][0]).toMatchObject({ yanked: true, yanked_reason: "broken build" });
  });

  it("reports a fully yanked latest version as yanked, with no metadata it does not have", () => {
    const only = JSON.parse(
      renderJsonApi({ ...snap, files: [file("demo_pkg-1.0.tar.gz", "1.0", { yanked: "" })] }, "/packages/"),
    );
    expect(only.info).toMatchObject({ version: "1.0", yanked: true, yanked_reason: null, summary: null });
    expect(only.info.requires_dist).toBeNull();
    expect(only.info.classifiers).toEqual([]);
  });
});
