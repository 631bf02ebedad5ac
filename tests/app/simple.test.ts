import { describe, expect, it } from "vitest";
import { pgpassLookup } from "../../src/app/config.js";
import { decodeParams, encodeParams } from "../../src/app/fastcgi.js";
import {
  formatFromQuery,
  type IndexFile,
  negotiate,
  renderProjectHtml,
  renderProjectJson,
  renderRootHtml,
  renderRootJson,
} from "../../src/app/simple.js";

const files: IndexFile[] = [
  {
    filename: "demo_pkg-1.0.tar.gz",
    version: "1.0",
    sha256: "a".repeat(64),
    size: 10,
    uploadTime: new Date("2024-01-02T03:04:05Z"),
    requiresPython: null,
    yanked: null,
    coreMetadataSha256: null,
  },
  {
    filename: "demo_pkg-1.1+x-py3-none-any.whl",
    version: "1.1+x",
    sha256: "b".repeat(64),
    size: 20,
    uploadTime: new Date("2024-02-02T03:04:05Z"),
    requiresPython: ">=3.8,<4",
    yanked: null,
    coreMetadataSha256: "c".repeat(64),
  },
  {
    filename: "demo_pkg-1.2-py3-none-any.whl",
    version: "1.2",
    sha256: "d".repeat(64),
    size: 30,
    uploadTime: new Date("2024-03-02T03:04:05Z"),
    requiresPython: null,
    yanked: 'broken <build> & "bad"',
    coreMetadataSha256: null,
  },
  {
    filename: "demo_pkg-1.3-py3-none-any.whl",
    version: "1.3",
    sha256: "e".repeat(64),
    size: 40,
    uploadTime: new Date("2024-04-02T03:04:05Z"),
    requiresPython: null,
    yanked: "",
    coreMetadataSha256: null,
  },
];

describe("PEP 503 HTML", () => {
  it("links each file to /packages/ with its sha256 fragment and escapes requires-python", () => {
    const html = renderProjectHtml("demo-pkg", files, "/packages/");
    expect(html).toContain('<meta name="pypi:repository-version" content="1.1">');
    expect(html).toContain(
      `<a href="/packages/demo-pkg/demo_pkg-1.0.tar.gz#sha256=${"a".repeat(64)}">demo_pkg-1.0.tar.gz</a><br/>`,
    );
    expect(html).toContain(
      `<a href="/packages/demo-pkg/demo_pkg-1.1%2Bx-py3-none-any.whl#sha256=${"b".repeat(64)}" data-requires-python="&#62;=3.8,&#60;4"`,
    );
    expect(html).toContain(
      `data-core-metadata="sha256=${"c".repeat(64)}" data-dist-info-metadata="sha256=${"c".repeat(64)}">demo_pkg-1.1+x-py3-none-any.whl</a>`,
    );
    expect(html).toContain(
      `#sha256=${"d".repeat(64)}" data-yanked="broken &#60;build&#62; &#38; &#34;bad&#34;">demo_pkg-1.2-py3-none-any.whl</a>`,
    );
    expect(html).toContain(`#sha256=${"e".repeat(64)}" data-yanked="">demo_pkg-1.3-py3-none-any.whl</a>`);
    expect(html.match(/data-core-metadata/g)).toHaveLength(1);
    expect(html.match(/data-yanked/g)).toHaveLength(2);
    expect(html.endsWith("</html>\n")).toBe(true);
  });

  it("lists projects by their normalized URL", () => {
    const html = renderRootHtml(["a-b", "zope-interface"]);
    expect(html).toContain('<a href="a-b/">a-b</a>');
    expect(html).toContain('<a href="zope-interface/">zope-interface</a>');
  });
});

describe("PEP 691 JSON", () => {
  it("renders the project detail with hashes, requires-python, size and upload-time", () => {
    const doc = JSON.parse(renderProjectJson("demo-pkg", files, "/packages/"));
    expect(doc.meta).toEqual({ "api-version": "1.1" });
    expect(doc.name).toBe("demo-pkg");
    expect(doc.versions).toEqual(["1.0", "1.1+x", "1.2", "1.3"]);
    expect(doc.files[0]).toEqual({
      filename: "demo_pkg-1.0.tar.gz",
      url: "/packages/demo-pkg/demo_pkg-1.0.tar.gz",
      hashes: { sha256: "a".repeat(64) },
      size: 10,
      "upload-time": "2024-01-02T03:04:05.000Z",
      yanked: false,
    });
    expect(doc.files[1]["requires-python"]).toBe(">=3.8,<4");
    // PEP 714 and its PEP 658 predecessor: both keys, same hash.
    expect(doc.files[1]["core-metadata"]).toEqual({ sha256: "c".repeat(64) });
    // pip 23.0 crashes on a dict under the old key (PEP 714): it must not be there.
    expect(doc.files[1]).not.toHaveProperty("dist-info-metadata");
    expect(doc.files[0]).not.toHaveProperty("core-metadata");
    // PEP 592 in JSON: the reason, or true when none was given.
    expect(doc.files[2].yanked).toBe('broken <build> & "bad"');
    expect(doc.files[3].yanked).toBe(true);
  });

  it("renders the root list", () => {
    expect(JSON.parse(renderRootJson(["a", "b"]))).toEqual({
      meta: { "api-version": "1.1" },
      projects: [{ name: "a" }, { name: "b" }],
    });
  });
});

describe("content negotiation", () => {
  it.each([
    [undefined, "text"],
    ["", "text"],
    ["*/*", "text"],
    ["text/html", "text"],
    ["application/vnd.pypi.simple.v1+json", "json"],
    ["application/vnd.pypi.simple.latest+json", "json"],
    ["application/vnd.pypi.simple.v1+html", "html"],
    // pip's header
    [
      "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01",
      "json",
    ],
    ["application/vnd.pypi.simple.v1+json;q=0.2, text/html", "text"],
    ["application/vnd.pypi.simple.v1+html, */*;q=0.5", "html"],
    ["application/*;q=0.5, text/html;q=0.4", "html"],
    ["application/vnd.pypi.simple.v1+json;q=0.5, text/html;q=0.4", "json"],
    ["application/json", null],
    ["text/html;q=0", null],
  ])("%j -> %s", (accept, want) => {
    expect(negotiate(accept)).toBe(want);
  });
});

describe("?format= (PEP 691)", () => {
  it.each([
    [undefined, undefined],
    ["", undefined],
    ["x=1", undefined],
    ["format=application/vnd.pypi.simple.v1%2Bjson", "json"],
    ["format=application%2Fvnd.pypi.simple.v1+json", "json"],
    ["a=b&format=application/vnd.pypi.simple.latest%2Bhtml", "html"],
    ["format=text/html", "text"],
    ["format=TEXT%2FHTML", "text"],
    ["format=application/json", null],
    ["format=%E0%A4%A", null],
  ])("%j -> %s", (query, want) => {
    expect(formatFromQuery(query)).toBe(want);
  });
});

describe("pgpass lookup (libpq rules)", () => {
  const want = { host: "100.64.10.5", port: 5432, database: "pypi", user: "pypi_app" };
  it("matches host/port/db/user with wildcards and escapes", () => {
    expect(pgpassLookup("100.64.10.5:5432:pypi:pypi_app:s3cr\\:et\\\\x\n", want)).toBe("s3cr:et\\x");
    expect(pgpassLookup("# comment\nother:5432:pypi:pypi_app:no\n*:*:pypi:*:yes\n", want)).toBe("yes");
    expect(pgpassLookup("100.64.10.5:5433:pypi:pypi_app:no\n", want)).toBeUndefined();
  });
});

describe("FastCGI name-value pairs", () => {
  it("round-trips short and long values", () => {
    const params = { SCRIPT_NAME: "/simple", PATH_INFO: "/x/", HTTP_ACCEPT: "a".repeat(300) };
    expect(decodeParams(encodeParams(params))).toEqual(params);
  });
});
