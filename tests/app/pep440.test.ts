import { describe, expect, it } from "vitest";
import { compareVersions, normalizeVersion, parseVersion, versionKey } from "../../src/app/pep440.js";

/** packaging's tests/test_version.py VERSIONS, in their correct order. */
const ORDERED = [
  "1.0.dev0",
  "1.0.dev456",
  "1.0.dev456+local",
  "1.0a0",
  "1.0a0.post0.dev0",
  "1.0a0.post0",
  "1.0a1.dev1",
  "1.0a1.dev1+local",
  "1.0a1",
  "1.0a1+local",
  "1.0b0",
  "1.0b1.dev456",
  "1.0b2",
  "1.0b2.post345.dev456",
  "1.0b2.post345",
  "1.0b2-346",
  "1.0rc0",
  "1.0rc1.dev1",
  "1.0c1",
  "1.0rc2",
  "1.0",
  "1.0.post0.dev0",
  "1.0.post0",
  "1.0.post456.dev34",
  "1.0.post456",
  "1.0.post456+local",
  "1.0.1.dev1",
  "1.0.1a1",
  "1.0.1",
  "1.0.1+local",
  "1.0.1.post1",
  "1.1.dev1",
  "1.2+a",
  "1.2+abc",
  "1.2+abcdef",
  "1.2+def",
  "1.2+0",
  "1.2+1",
  "1.2+1.abc",
  "1.2+1.1",
  "1.2+1.1.0",
  "1.2+2",
  "1.2+123",
  "1.2+123456",
  "1.2.r32+123456",
  "1.2.rev33+123456",
];
const ALL = [...ORDERED, ...ORDERED.map((v) => `1!${v}`)];

describe("compareVersions", () => {
  it("orders packaging's version list", () => {
    for (let i = 1; i < ALL.length; i++) {
      expect(compareVersions(ALL[i - 1]!, ALL[i]!), `${ALL[i - 1]} < ${ALL[i]}`).toBeLessThan(0);
      expect(compareVersions(ALL[i]!, ALL[i - 1]!)).toBeGreaterThan(0);
    }
    // 37 is coprime with the list's length: a deterministic shuffle.
    const shuffled = ALL.map((_, i) => ALL[(i * 37) % ALL.length]!);
    expect(new Set(shuffled).size).toBe(ALL.length);
    expect(shuffled.sort(compareVersions)).toEqual(ALL);
  });

  it("orders PEP 440's example chain", () => {
    const chain = [
      "1.0.dev456",
      "1.0a1",
      "1.0a2.dev456",
      "1.0a12.dev456",
      "1.0a12",
      "1.0b1.dev456",
      "1.0b2",
      "1.0b2.post345.dev456",
      "1.0b2.post345",
      "1.0rc1.dev456",
      "1.0rc1",
      "1.0",
      "1.0+abc.5",
      "1.0+abc.7",
      "1.0+5",
      "1.0.post456.dev34",
      "1.0.post456",
      "1.1.dev1",
    ];
    expect([...chain].reverse().sort(compareVersions)).toEqual(chain);
  });

  it.each([
    ["1.0", "1.0.0"],
    ["1", "1.0.0.0"],
    ["1.0rc1", "1.0c1"],
    ["1.0-1", "1.0.post1"],
    ["v1.0", "1.0"],
    ["0!1.0", "1.0"],
    ["1.0+ABC", "1.0+abc"],
    ["1.0+abc-1", "1.0+abc.1"],
    ["1.0+01", "1.0+1"],
  ])("%s == %s", (a, b) => {
    expect(compareVersions(a, b)).toBe(0);
  });

  it.each([
    ["1.0", "1.0+0"],
    ["1.0a1", "1.0"],
    ["1.0.dev1", "1.0a1"],
    ["1.0", "1.0.post0"],
    ["1.0+abc", "1.0+1"],
    ["2.0", "1!0.1"],
    ["1.9", "1.10"],
    ["1.0", "1.0.0.1"],
  ])("%s < %s", (a, b) => {
    expect(compareVersions(a, b)).toBeLessThan(0);
  });

  it("sorts invalid versions first, among themselves by string", () => {
    expect(["2.0", "zzz", "0.1", "abc"].sort(compareVersions)).toEqual(["abc", "zzz", "0.1", "2.0"]);
  });

  it("compares numbers beyond 2^53 exactly", () => {
    expect(compareVersions("1.0.dev20240101123456789", "1.0.dev20240101123456790")).toBeLessThan(0);
    expect(normalizeVersion("1.0.dev020240101123456789")).toBe("1.0.dev20240101123456789");
  });
});

describe("parseVersion", () => {
  it("splits every segment", () => {
    expect(parseVersion("1!2.0rc3.post4.dev5+Ubuntu.01")).toEqual({
      epoch: 1,
      release: [2, 0],
      pre: ["rc", 3],
      post: 4,
      dev: 5,
      local: ["ubuntu", 1],
    });
    expect(parseVersion("1.0")).toEqual({
      epoch: 0,
      release: [1, 0],
      pre: null,
      post: null,
      dev: null,
      local: null,
    });
  });

  it.each([
    "french toast",
    "1.0+a+",
    "1.0++",
    "1.0+_foobar",
    "1.0+foo&asd",
    "1.0+1+1",
    "1. 0",
    "1 .0",
    "1. 0a1",
    "1 .0a1",
    "1.0 a1",
    "1.0a 1",
    "\u0660\u0661\u0662.\u0663\u0664\u0665.\u0666\u0667\u0668\u0669",
    ".",
    "..",
    "1..0",
    "1.0.",
    ".1.0",
    "1..2.3",
    "1.0+\u0130",
    "",
    "1.0.*",
    "1.0-",
    "1.0_post1_",
  ])("refuses %j", (v) => {
    expect(parseVersion(v)).toBeNull();
    expect(normalizeVersion(v)).toBeNull();
    expect(versionKey(v)).toBeNull();
  });
});

describe("normalizeVersion", () => {
  // packaging's test_normalized_versions, plus the forms the index meets in filenames.
  it.each([
    ["1.0dev", "1.0.dev0"],
    ["1.0.dev", "1.0.dev0"],
    ["1.0dev1", "1.0.dev1"],
    ["1.0-dev", "1.0.dev0"],
    ["1.0-DEV1", "1.0.dev1"],
    ["1.0_dev_1", "1.0.dev1"],
    ["1.0a", "1.0a0"],
    ["1.0.a1", "1.0a1"],
    ["1.0-alpha1", "1.0a1"],
    ["1.0ALPHA", "1.0a0"],
    ["1.0b", "1.0b0"],
    ["1.0.beta1", "1.0b1"],
    ["1.0-BETA", "1.0b0"],
    ["1.0c", "1.0rc0"],
    ["1.0.c1", "1.0rc1"],
    ["1.0-rc1", "1.0rc1"],
    ["1.0-RC1", "1.0rc1"],
    ["1.0pre2", "1.0rc2"],
    ["1.0-preview", "1.0rc0"],
    ["1.0post", "1.0.post0"],
    ["1.0-post1", "1.0.post1"],
    ["1.0r", "1.0.post0"],
    ["1.0rev", "1.0.post0"],
    ["1.0.r1", "1.0.post1"],
    ["1.0-5", "1.0.post5"],
    ["1.0-r5", "1.0.post5"],
    ["1.0+AbC", "1.0+abc"],
    ["1.0+abc-def_1", "1.0+abc.def.1"],
    ["1.01", "1.1"],
    ["1.0a05", "1.0a5"],
    ["1.0c056", "1.0rc56"],
    ["1.0.post000", "1.0.post0"],
    ["1.1.dev09000", "1.1.dev9000"],
    ["00!1.2", "1.2"],
    ["0100!0.0", "100!0.0"],
    ["v1.0", "1.0"],
    ["V1.0", "1.0"],
    ["   v1.0\t\n", "1.0"],
    ["\u202f1.0\t\u2029\n ", "1.0"],
    ["1.0.0", "1.0.0"],
    ["7!1.0b2.post345.dev456", "7!1.0b2.post345.dev456"],
    ["1.0.4+8.0", "1.0.4+8.0"],
  ])("%j -> %s", (v, want) => {
    expect(normalizeVersion(v)).toBe(want);
  });
});

describe("versionKey (canonicalize_version, trailing zeros stripped)", () => {
  it.each([
    ["1.0.0.0", "1"],
    ["1", "1"],
    ["1.0", "1"],
    ["1.1", "1.1"],
    ["1.1.0", "1.1"],
    ["1.4.0.0.0", "1.4"],
    ["0.0", "0"],
    ["1.0.1", "1.0.1"],
    ["1.0.0rc1", "1rc1"],
    ["v1.0.0-post1", "1.post1"],
    ["1.0+abc.0", "1+abc.0"],
    ["2!1.0.0.dev3", "2!1.dev3"],
  ])("%j -> %s", (v, want) => {
    expect(versionKey(v)).toBe(want);
  });

  it("makes equal versions equal keys, and only those", () => {
    expect(versionKey("1.0.0")).toBe(versionKey("1"));
    expect(versionKey("1.1")).toBe(versionKey("1.1.0"));
    expect(versionKey("1.0")).not.toBe(versionKey("1.0.post0"));
    expect(versionKey("1.0")).not.toBe(versionKey("1.0+0"));
  });
});
