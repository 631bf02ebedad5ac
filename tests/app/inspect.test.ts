import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import { afterAll, describe, expect, it } from "vitest";
import { DEFAULT_ARCHIVE_LIMITS } from "../../src/app/archive.js";
import { type InspectResult, inspectDistribution } from "../../src/app/inspect.js";
import { isValidSpecifierSet, parseCoreMetadata } from "../../src/app/metadata.js";
import { parseFilename } from "../../src/app/names.js";
import { deflatedZeros, distInfo, type TarSpec, tar, type ZipSpec, zip } from "./archive-fixtures.js";
import { makeSdist, makeWheel } from "./fixtures.js";

const root = mkdtempSync(join(tmpdir(), "inspect-test-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));

let n = 0;
/** A fresh directory per upload, so every test may use the filename it needs. */
function upload(filename: string, write: Buffer | ((path: string) => void)): string {
  const dir = join(root, String(n++));
  mkdirSync(dir);
  const path = join(dir, filename);
  if (Buffer.isBuffer(write)) writeFileSync(path, write);
  else write(path);
  return path;
}

function inspect(
  filename: string,
  write: Buffer | ((path: string) => void),
  limits = DEFAULT_ARCHIVE_LIMITS,
): Promise<InspectResult> {
  const f = parseFilename(filename);
  if (!f.ok) throw new Error(f.reason);
  return inspectDistribution(upload(filename, write), f.value, limits);
}

async function reason(
  filename: string,
  write: Buffer | ((path: string) => void),
  limits = DEFAULT_ARCHIVE_LIMITS,
): Promise<string> {
  const r = await inspect(filename, write, limits);
  if (r.ok) throw new Error("accepted");
  return r.reason;
}

const wheel = (entries: ZipSpec[]) => zip(entries);
const sdist = (entries: TarSpec[]) => gzipSync(tar(entries));
const PKG_INFO = "Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n";

describe("valid distributions", () => {
  it("accepts a real wheel and extracts its metadata and Requires-Python", async () => {
    let raw = Buffer.alloc(0);
    const r = await inspect("demo_pkg-1.0-py3-none-any.whl", (p) => {
      makeWheel(p, "demo-pkg", "1.0");
      const read =
        "import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))";
      raw = execFileSync("python3", ["-c", read, p, "demo_pkg-1.0.dist-info/METADATA"]);
    });
    expect(r).toEqual({
      ok: true,
      value: {
        metadata: expect.objectContaining({ name: "demo-pkg", version: "1.0", metadataVersion: "2.1" }),
        coreMetadata: raw,
        requiresPython: ">=3.8",
      },
    });
  });

  it("accepts a real sdist", async () => {
    const r = await inspect("demo-1.0.tar.gz", (p) => makeSdist(p, "demo", "1.0"));
    expect(r.ok && r.value.coreMetadata.toString()).toBe(PKG_INFO);
    expect(r.ok && r.value.requiresPython).toBeNull();
  });

  it("accepts a PEP 625 sdist with directories and Requires-Python, and a legacy zip sdist", async () => {
    const meta = "Metadata-Version: 2.2\nName: Demo.Pkg\nVersion: 2.0\nRequires-Python: >=3.9, <4\n";
    const r = await inspect("demo_pkg-2.0.tar.gz", (p) =>
      execFileSync("python3", [
        "-c",
        `
import io, sys, tarfile
with tarfile.open(sys.argv[1], "w:gz", format=tarfile.PAX_FORMAT) as t:
    for name in ["demo_pkg-2.0", "demo_pkg-2.0/src"]:
        info = tarfile.TarInfo(name); info.type = tarfile.DIRTYPE; t.addfile(info)
    for name, data in [("demo_pkg-2.0/PKG-INFO", sys.argv[2]), ("demo_pkg-2.0/src/m.py", "x = 1\\n")]:
        info = tarfile.TarInfo(name); info.size = len(data.encode()); t.addfile(info, io.BytesIO(data.encode()))
`,
        p,
        meta,
      ]),
    );
    expect(r.ok && r.value.requiresPython).toBe(">=3.9, <4");
    expect(r.ok && r.value.metadata.name).toBe("Demo.Pkg");
    const z = await inspect("Demo-1.0.zip", wheel([{ name: "Demo-1.0/PKG-INFO", data: PKG_INFO }]));
    expect(z.ok).toBe(true);
  });

  it("accepts a version equal under PEP 440 (filename 1.0, METADATA 1.0.0)", async () => {
    const r = await inspect("eq-1.0-py3-none-any.whl", (p) => makeWheel(p, "eq", "1.0.0"));
    expect(r.ok && r.value.metadata.version).toBe("1.0.0");
    const s = await inspect(
      "eq-1.0.0.tar.gz",
      sdist([{ name: "eq-1/PKG-INFO", data: PKG_INFO.replace(/demo/, "eq") }]),
    );
    expect(s.ok).toBe(true);
  });
});

describe("wheels", () => {
  it("refuses METADATA naming another project (requests 99.0 inside mismatch3 2.0)", async () => {
    const expected = 'METADATA says "requests 99.0" but the filename says "mismatch3 2.0"';
    expect(
      await reason(
        "mismatch3-2.0-py3-none-any.whl",
        wheel(
          distInfo("mismatch3-2.0.dist-info", {
            METADATA: "Metadata-Version: 2.1\nName: requests\nVersion: 99.0\n",
          }),
        ),
      ),
    ).toBe(expected);
    // A real requests wheel, renamed.
    expect(await reason("mismatch3-2.0-py3-none-any.whl", (p) => makeWheel(p, "requests", "99.0"))).toBe(
      expected,
    );
  });

  it("refuses a .dist-info directory that does not match the filename", async () => {
    expect(
      await reason(
        "demo-1.0-py3-none-any.whl",
        wheel(distInfo("other-1.0.dist-info", { METADATA: PKG_INFO })),
      ),
    ).toBe('wheel\'s other-1.0.dist-info directory does not match the filename "demo 1.0"');
  });

  it.each(["METADATA", "WHEEL", "RECORD"] as const)("refuses a wheel without %s", async (missing) => {
    expect(
      await reason("demo-1.0-py3-none-any.whl", wheel(distInfo("demo-1.0.dist-info", { [missing]: null }))),
    ).toBe(`wheel has no demo-1.0.dist-info/${missing}`);
  });

  it("refuses zero or two .dist-info directories", async () => {
    expect(await reason("demo-1.0-py3-none-any.whl", wheel([{ name: "demo/__init__.py", data: "" }]))).toBe(
      "wheel has no .dist-info directory",
    );
    expect(
      await reason(
        "demo-1.0-py3-none-any.whl",
        wheel([...distInfo("demo-1.0.dist-info"), ...distInfo("zzz-1.0.dist-info")]),
      ),
    ).toBe("wheel has 2 .dist-info directories: demo-1.0.dist-info, zzz-1.0.dist-info");
  });

  it("refuses an unsupported Wheel-Version and invalid METADATA", async () => {
    expect(
      await reason(
        "demo-1.0-py3-none-any.whl",
        wheel(distInfo("demo-1.0.dist-info", { WHEEL: "Wheel-Version: 2.0\n" })),
      ),
    ).toBe('WHEEL says Wheel-Version "2.0"; only 1.x is supported');
    expect(
      await reason(
        "demo-1.0-py3-none-any.whl",
        wheel(
          distInfo("demo-1.0.dist-info", { METADATA: "Metadata-Version: 2.1\nName: demo\nVersion: one\n" }),
        ),
      ),
    ).toBe('invalid METADATA: Version "one" is not a valid PEP 440 version');
    const big = "Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n\n".padEnd(2000, "x");
    expect(
      await reason("demo-1.0-py3-none-any.whl", wheel(distInfo("demo-1.0.dist-info", { METADATA: big })), {
        ...DEFAULT_ARCHIVE_LIMITS,
        maxMetadataBytes: 1000,
      }),
    ).toBe("demo-1.0.dist-info/METADATA is 2000 bytes (limit 1000)");
  });

  it("refuses a zip bomb wheel, and a member lying about its size", async () => {
    const zeros = await deflatedZeros(63 * 1024 * 1024);
    const bomb = wheel([...distInfo("demo-1.0.dist-info"), { name: "demo/zeros.bin", deflated: zeros }]);
    expect(await reason("demo-1.0-py3-none-any.whl", bomb)).toMatch(
      /^zip bomb: members inflate to 66060\d{3} bytes, \d+ times the \d+-byte archive \(limit 100\)$/,
    );
    const liar = wheel([
      ...distInfo("demo-1.0.dist-info"),
      { name: "demo/zeros.bin", deflated: zeros, size: 10 },
    ]);
    expect(await reason("demo-1.0-py3-none-any.whl", liar)).toBe(
      'member "demo/zeros.bin" inflates past its declared size of 10 bytes',
    );
  });

  it("refuses a zip-slip member and an absolute path", async () => {
    for (const name of ["../../../../tmp/pwned.py", "/etc/x"])
      expect(
        await reason(
          "demo-1.0-py3-none-any.whl",
          wheel([...distInfo("demo-1.0.dist-info"), { name, data: "x" }]),
        ),
      ).toMatch(new RegExp(`^unsafe member name ${JSON.stringify(name).replace(/[.*/]/g, "\\$&")}: `));
  });

  it("refuses a fake zip, a truncated wheel and a CRC mismatch", async () => {
    const sig = (s: number) => Buffer.from([0x50, 0x4b, s, s + 1]);
    expect(
      await reason("demo-1.0-py3-none-any.whl", Buffer.concat([sig(3), Buffer.from("x".repeat(40)), sig(5)])),
    ).toBe("truncated or corrupt zip archive: no end-of-central-directory record");
    const real = upload("demo-1.0-py3-none-any.whl", (p) => makeWheel(p, "demo", "1.0"));
    const bytes = readFileSync(real);
    expect(await reason("demo-1.0-py3-none-any.whl", bytes.subarray(0, bytes.length - 100))).toBe(
      "truncated or corrupt zip archive: no end-of-central-directory record",
    );
    expect(
      await reason(
        "demo-1.0-py3-none-any.whl",
        wheel([...distInfo("demo-1.0.dist-info"), { name: "demo/a.py", data: "x", crc: 7 }]),
      ),
    ).toBe('member "demo/a.py" fails its CRC-32 check');
  });
});

describe("sdists", () => {
  it("refuses an sdist without PKG-INFO", async () => {
    expect(await reason("demo-1.0.tar.gz", sdist([{ name: "demo-1.0/setup.py", data: "" }]))).toBe(
      "sdist has no demo-1.0/PKG-INFO",
    );
  });

  it("refuses more than one top-level entry, or a top-level file", async () => {
    expect(
      await reason(
        "demo-1.0.tar.gz",
        sdist([
          { name: "demo-1.0/PKG-INFO", data: PKG_INFO },
          { name: "evil.py", data: "" },
        ]),
      ),
    ).toBe("sdist must have a single top-level directory, not 2 entries: demo-1.0, evil.py");
    expect(await reason("demo-1.0.tar.gz", sdist([{ name: "PKG-INFO", data: PKG_INFO }]))).toBe(
      'sdist\'s only top-level entry "PKG-INFO" is a file',
    );
  });

  it("refuses PKG-INFO or a top directory naming another project or version", async () => {
    expect(await reason("demo-2.0.tar.gz", sdist([{ name: "demo-2.0/PKG-INFO", data: PKG_INFO }]))).toBe(
      'PKG-INFO says "demo 1.0" but the filename says "demo 2.0"',
    );
    expect(await reason("demo-1.0.tar.gz", sdist([{ name: "other-1.0/PKG-INFO", data: PKG_INFO }]))).toBe(
      'sdist\'s top-level directory "other-1.0" does not match the filename "demo 1.0"',
    );
  });

  it("refuses gzip'd plain text, a truncated sdist, a symlink and a slip", async () => {
    expect(await reason("demo-1.0.tar.gz", gzipSync("hello\n".repeat(200)))).toBe("not a tar archive");
    const real = readFileSync(upload("demo-1.0.tar.gz", (p) => makeSdist(p, "demo", "1.0")));
    expect(await reason("demo-1.0.tar.gz", real.subarray(0, real.length - 8))).toBe("truncated archive");
    expect(
      await reason(
        "demo-1.0.tar.gz",
        sdist([
          { name: "demo-1.0/PKG-INFO", data: PKG_INFO },
          { name: "demo-1.0/link", type: "2", linkname: "/etc/shadow" },
        ]),
      ),
    ).toBe('member "demo-1.0/link" is a symbolic link; only files and directories are allowed');
    expect(
      await reason(
        "demo-1.0.tar.gz",
        sdist([
          { name: "demo-1.0/PKG-INFO", data: PKG_INFO },
          { name: "demo-1.0/../../../../tmp/pwned.py", data: "" },
        ]),
      ),
    ).toBe('unsafe member name "demo-1.0/../../../../tmp/pwned.py": ".." component');
  });

  it("refuses too many members", async () => {
    const many = Array.from({ length: 10 }, (_, i) => ({ name: `demo-1.0/m${i}.py`, data: "" }));
    expect(
      await reason("demo-1.0.tar.gz", sdist([{ name: "demo-1.0/PKG-INFO", data: PKG_INFO }, ...many]), {
        ...DEFAULT_ARCHIVE_LIMITS,
        maxMembers: 10,
      }),
    ).toBe("too many members: more than 10");
  });

  it("throws on I/O errors instead of returning a reason", async () => {
    const f = parseFilename("demo-1.0.tar.gz");
    if (!f.ok) throw new Error(f.reason);
    await expect(inspectDistribution(join(root, "missing.tar.gz"), f.value)).rejects.toThrow(/ENOENT/);
    const z = parseFilename("demo-1.0.zip");
    if (!z.ok) throw new Error(z.reason);
    await expect(inspectDistribution(join(root, "missing.zip"), z.value)).rejects.toThrow(/ENOENT/);
  });
});

describe("parseCoreMetadata", () => {
  const parse = (text: string) => parseCoreMetadata(Buffer.from(text));

  it("reads fields case-insensitively, multiple-use fields, continuations and the body", () => {
    const r = parse(
      [
        "metadata-version: 2.4",
        "NAME: Demo",
        "Version: 1.0",
        "Summary: A demo",
        "classifier: A",
        "Classifier: B",
        "Requires-Dist: x>=1",
        "project-url: Home, https://example.org",
        "License: line one",
        "        line two",
        "X-Custom-Thing: y",
        "",
        "# Demo",
        "",
        "body",
      ].join("\r\n"),
    );
    expect(r).toEqual({
      ok: true,
      value: {
        metadataVersion: "2.4",
        name: "Demo",
        version: "1.0",
        summary: "A demo",
        requiresPython: null,
        fields: {
          "Metadata-Version": ["2.4"],
          Name: ["Demo"],
          Version: ["1.0"],
          Summary: ["A demo"],
          Classifier: ["A", "B"],
          "Requires-Dist": ["x>=1"],
          "Project-URL": ["Home, https://example.org"],
          License: ["line one\nline two"],
          "X-Custom-Thing": ["y"],
        },
        description: "# Demo\n\nbody",
      },
    });
  });

  it("takes a legacy Description header when there is no body", () => {
    const r = parse(
      "Metadata-Version: 1.1\nName: d\nVersion: 1\nDescription: first\n        second\n        \n        third\n",
    );
    expect(r.ok && r.value.description).toBe("first\nsecond\n\nthird");
  });

  it.each([
    ["Name: d\nVersion: 1\n", "no Metadata-Version"],
    ["Metadata-Version: 3.0\nName: d\nVersion: 1\n", 'Metadata-Version "3.0" is not supported (1.0 to 2.4)'],
    ["Metadata-Version: 2.1\nVersion: 1\n", "no Name"],
    ["Metadata-Version: 2.1\nName: d\n", "no Version"],
    ["Metadata-Version: 2.1\nName: -d-\nVersion: 1\n", 'Name "-d-" is not a valid project name'],
    ["Metadata-Version: 2.1\nName: d\nName: e\nVersion: 1\n", "Name appears more than once"],
    ["Metadata-Version: 2.1\nName: d\nVersion: 1\nVersion: 2\n", "Version appears more than once"],
    [
      "Metadata-Version: 2.1\nName: d\nVersion: 1\nRequires-Python: 3.8\n",
      'Requires-Python "3.8" is not a valid version specifier set',
    ],
    [
      "Metadata-Version: 2.1\nName: d\nVersion: 1\nnot a header\n",
      'line 4 is not a "Field: value" header: "not a header"',
    ],
    [" Metadata-Version: 2.1\n", "line 1 is indented: a continuation of no header"],
  ])("refuses %j: %s", (text, why) => {
    expect(parse(text)).toEqual({ ok: false, reason: why });
  });

  it("requires UTF-8", () => {
    expect(parseCoreMetadata(Buffer.from([0x4e, 0x61, 0x6d, 0x65, 0x3a, 0x20, 0xff]))).toEqual({
      ok: false,
      reason: "not valid UTF-8",
    });
  });

  it.each([
    [">=3.8", true],
    [">=3.8,<4", true],
    [" >= 3.8 , != 3.9.* ,", true],
    ["~=3.8", true],
    ["==3.*", true],
    ["!=3.9.1+local", true],
    ["===anything-goes", true],
    ["", true],
    ["3.8", false],
    ["~=3", false],
    [">=3.8.*", false],
    ["<=3.8+local", false],
    ["==3.*.1", false],
    [">=3.8;", false],
    [">=three", false],
    ["=>3.8", false],
  ])("specifier set %j valid: %s", (spec, valid) => {
    expect(isValidSpecifierSet(spec)).toBe(valid);
  });
});
