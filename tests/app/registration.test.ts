import { mkdtempSync, readdirSync, rmSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { sweepSpool } from "../../src/app/fastcgi.js";
import { parseFilename } from "../../src/app/names.js";
import { canonicalFilename } from "../../src/app/registration.js";

const canonical = (filename: string): string => {
  const parsed = parseFilename(filename);
  if (!parsed.ok) throw new Error(parsed.reason);
  return canonicalFilename(parsed.value);
};

describe("canonicalFilename", () => {
  it("gives every spelling of one distribution the same key", () => {
    expect(canonical("Demo_Pkg-1.0.0-py3-none-any.whl")).toBe(canonical("demo.pkg-1.0-py3-none-any.whl"));
    expect(canonical("demo_pkg-1.0.0.0-PY3-none-ANY.whl")).toBe(canonical("demo_pkg-1-py3-none-any.whl"));
    expect(canonical("Demo_Pkg-1.0.tar.gz")).toBe(canonical("demo-pkg-1.0.0.tar.gz"));
  });

  it("keeps distributions apart that differ in anything but spelling", () => {
    // Another project's name can end in what looks like a version: the parts must not shift.
    expect(canonical("foo_1-1.0-py3-none-any.whl")).not.toBe(canonical("foo-1.0-1-py3-none-any.whl"));
    expect(canonical("demo-1.0-py3-none-any.whl")).not.toBe(canonical("demo-1.0-1-py3-none-any.whl"));
    expect(canonical("demo-1.0.tar.gz")).not.toBe(canonical("demo-1.0.zip"));
    expect(canonical("demo-1.0-py3-none-any.whl")).not.toBe(canonical("demo-1.0-py2-none-any.whl"));
  });
});

describe("sweepSpool", () => {
  it("removes spooled bodies of killed workers, not live ones", () => {
    const dir = mkdtempSync(join(tmpdir(), "spool-"));
    try {
      writeFileSync(join(dir, "old"), "x");
      const old = new Date(Date.now() - 2 * 3600_000);
      utimesSync(join(dir, "old"), old, old);
      writeFileSync(join(dir, "live"), "y");
      sweepSpool(dir);
      expect(readdirSync(dir)).toEqual(["live"]);
      sweepSpool(join(dir, "missing"));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
