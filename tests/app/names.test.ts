import { describe, expect, it } from "vitest";
import { isValidVersion, normalizeName, parseFilename } from "../../src/app/names.js";

describe("normalizeName (PEP 503)", () => {
  it.each([
    ["Django", "django"],
    ["zope.interface", "zope-interface"],
    ["Foo__Bar--baz..Qux", "foo-bar-baz-qux"],
    ["a_-.b", "a-b"],
    ["already-normal", "already-normal"],
  ])("%s -> %s", (name, want) => {
    expect(normalizeName(name)).toBe(want);
  });
});

describe("parseFilename", () => {
  it("parses wheels with and without a build tag", () => {
    const w = parseFilename("Demo_Pkg-1.0.0-py3-none-any.whl");
    expect(w).toEqual({
      ok: true,
      value: {
        filename: "Demo_Pkg-1.0.0-py3-none-any.whl",
        name: "Demo_Pkg",
        project: "demo-pkg",
        version: "1.0.0",
        packagetype: "bdist_wheel",
        archive: "zip",
      },
    });
    const b = parseFilename("numpy-1.26.4-1-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl");
    expect(b.ok && b.value.project).toBe("numpy");
    expect(parseFilename("pkg-2.0+local.1-py2.py3-none-any.whl").ok).toBe(true);
  });

  it("parses sdists, including legacy names with dashes", () => {
    const s = parseFilename("zope.interface-6.0.tar.gz");
    expect(s.ok && s.value).toMatchObject({
      project: "zope-interface",
      version: "6.0",
      packagetype: "sdist",
    });
    const legacy = parseFilename("foo-bar-1.0rc1.zip");
    expect(legacy.ok && legacy.value).toMatchObject({ name: "foo-bar", version: "1.0rc1", archive: "zip" });
  });

  it.each([
    ["notes.txt", /not a wheel/],
    ["", /length/],
    [".hidden-1.0.tar.gz", /characters/],
    ["../etc-1.0.tar.gz", /characters/],
    ["a..b-1.0.tar.gz", /\.\./],
    ["bad name-1.0-py3-none-any.whl", /characters/],
    ["pkg-1.0-py3-any.whl", /name-version/],
    ["pkg-1.0-x1-py3-none-any.whl", /build tag/],
    ["pkg-one-py3-none-any.whl", /version/],
    ["pkg.tar.gz", /name-version/],
    ["-1.0.tar.gz", /characters/],
    ["pkg-1.0.tar.bz2", /not a wheel/],
    ["pkg-not_a_version.tar.gz", /version/],
    [`${"a".repeat(250)}-1.0.tar.gz`, /length/],
    ["pkg-1.0.tar.gz\n", /characters/],
  ])("rejects %j", (name, reason) => {
    const r = parseFilename(name);
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.reason).toMatch(reason);
  });
});

describe("isValidVersion (PEP 440)", () => {
  it.each(["1", "1.0", "1!2.0", "1.0a1", "1.0.post1", "1.0.dev3", "2.0+local.7", "1.0rc2.post1.dev4"])(
    "accepts %s",
    (v) => {
      expect(isValidVersion(v)).toBe(true);
    },
  );
  it.each(["one", "1.0-", "1..0", "", "1.0+"])("rejects %j", (v) => {
    expect(isValidVersion(v)).toBe(false);
  });
});
