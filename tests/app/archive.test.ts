import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import { afterAll, describe, expect, it } from "vitest";
import {
  type Archive,
  type ArchiveLimits,
  DEFAULT_ARCHIVE_LIMITS,
  openTarGz,
  openZip,
} from "../../src/app/archive.js";
import { deflatedZeros, pax, type TarSpec, tar, type ZipSpec, zip } from "./archive-fixtures.js";
import { makeSdist, makeWheel } from "./fixtures.js";

const dir = mkdtempSync(join(tmpdir(), "archive-test-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let n = 0;
function file(content: Buffer, ext = ".zip"): string {
  const path = join(dir, `f${n++}${ext}`);
  writeFileSync(path, content);
  return path;
}

const L = DEFAULT_ARCHIVE_LIMITS;
const MB63 = 63 * 1024 * 1024;

/** The reason an archive is refused, whether at open or when fully inflated. */
async function refusal(open: Promise<Archive>): Promise<string> {
  try {
    const a = await open;
    await a.verifyAll();
  } catch (err) {
    expect((err as Error).name).toBe("ArchiveError");
    return (err as Error).message;
  }
  throw new Error("archive was accepted");
}

const zipRefusal = (entries: ZipSpec[], limits: ArchiveLimits = L) =>
  refusal(openZip(file(zip(entries)), limits));
const tarRefusal = (entries: TarSpec[], limits: ArchiveLimits = L) =>
  refusal(openTarGz(file(gzipSync(tar(entries)), ".tar.gz"), limits));

describe("openZip on a real wheel", () => {
  it("lists members and reads and verifies them", async () => {
    const path = join(dir, "demo-1.0-py3-none-any.whl");
    makeWheel(path, "demo", "1.0", "print('hi')\n");
    const a = await openZip(path, L);
    expect(a.members.map((m) => m.name).sort()).toEqual([
      "demo-1.0.dist-info/METADATA",
      "demo-1.0.dist-info/RECORD",
      "demo-1.0.dist-info/WHEEL",
      "demo/__init__.py",
    ]);
    expect((await a.read("demo/__init__.py", 100)).toString()).toBe("print('hi')\n");
    await a.verifyAll();
    await expect(a.read("demo/__init__.py", 5)).rejects.toThrow("demo/__init__.py is 12 bytes (limit 5)");
    await expect(a.read("nope", 5)).rejects.toThrow('no file "nope" in the archive');
  });

  it("reads stored members and directory entries", async () => {
    const a = await openZip(
      file(
        zip([
          { name: "d/", method: 0 },
          { name: "d/x", data: "abc", method: 0 },
        ]),
      ),
      L,
    );
    expect(a.members).toEqual([
      { name: "d", size: 0, compressedSize: 0, isDir: true },
      { name: "d/x", size: 3, compressedSize: 3, isDir: false },
    ]);
    expect((await a.read("d/x", 3)).toString()).toBe("abc");
  });
});

describe("zip bombs and lying sizes", () => {
  it("refuses a 63 MiB zero member from its central directory, before inflating anything", async () => {
    const bomb = await deflatedZeros(MB63);
    const bytes = zip([{ name: "zeros", deflated: bomb }]);
    expect(bytes.length).toBeLessThan(100_000);
    const started = Date.now();
    const reason = await refusal(openZip(file(bytes), L));
    expect(reason).toBe(
      `zip bomb: members inflate to 66060288 bytes, ${Math.ceil(MB63 / bytes.length)} times the ${bytes.length}-byte archive (limit 100)`,
    );
    expect(Date.now() - started).toBeLessThan(1000);
  });

  it("refuses members that inflate past the total limit", async () => {
    const reason = await zipRefusal([{ name: "a", data: "x".repeat(5000) }], {
      ...L,
      maxUncompressedBytes: 4096,
    });
    expect(reason).toBe("too large: members inflate to 5000 bytes (limit 4096)");
  });

  it("stops inflating a member that lies about its size after one chunk", async () => {
    const bomb = await deflatedZeros(MB63);
    const a = await openZip(file(zip([{ name: "zeros", deflated: bomb, size: 1000 }])), L);
    const before = process.memoryUsage().arrayBuffers;
    await expect(a.verifyAll()).rejects.toThrow(
      'member "zeros" inflates past its declared size of 1000 bytes',
    );
    await expect(a.read("zeros", 10_000)).rejects.toThrow(
      'member "zeros" inflates past its declared size of 1000 bytes',
    );
    expect(process.memoryUsage().arrayBuffers - before).toBeLessThan(16 * 1024 * 1024);
  });

  it("verifies a large honest member streaming, without holding it", async () => {
    // 256 MiB: if it were held, even uncollected garbage could not hide it below 128 MiB.
    const big = await deflatedZeros(256 * 1024 * 1024);
    const a = await openZip(file(zip([{ name: "zeros", deflated: big }])), { ...L, maxRatio: 2000 });
    const before = process.memoryUsage().arrayBuffers;
    let peak = before;
    const sampler = setInterval(() => {
      peak = Math.max(peak, process.memoryUsage().arrayBuffers);
    }, 1);
    try {
      await a.verifyAll();
    } finally {
      clearInterval(sampler);
    }
    expect(peak - before).toBeLessThan(128 * 1024 * 1024);
  });

  it("refuses a member shorter than declared, and a CRC mismatch", async () => {
    expect(await zipRefusal([{ name: "a", data: "hello world", size: 5 }])).toBe(
      'member "a" inflates past its declared size of 5 bytes',
    );
    expect(await zipRefusal([{ name: "a", data: "hello world", size: 20 }])).toBe(
      'member "a" inflates to 11 bytes, not its declared 20',
    );
    expect(await zipRefusal([{ name: "a", data: "hello world", crc: 1234 }])).toBe(
      'member "a" fails its CRC-32 check',
    );
    expect(await zipRefusal([{ name: "a", data: "hello world", crc: 1234, method: 0 }])).toBe(
      'member "a" fails its CRC-32 check',
    );
  });

  it("refuses corrupt deflate data", async () => {
    const bytes = zip([{ name: "a", data: "hello world", method: 0 }]);
    // Same bytes, now claimed to be deflated: 'h' (0x68) is a reserved block type.
    bytes.writeUInt16LE(8, 8);
    bytes.writeUInt16LE(8, bytes.indexOf(Buffer.from([0x50, 0x4b, 0x01, 0x02])) + 10);
    expect(await refusal(openZip(file(bytes), L))).toMatch(/^member "a": corrupt deflate data \(.+\)$/);
  });
});

describe("zip structure", () => {
  it("refuses a fake zip made of signatures", async () => {
    const sig = (s: number) => Buffer.from([0x50, 0x4b, s, s + 1]);
    const fake = Buffer.concat([sig(3), Buffer.alloc(26), sig(5), Buffer.alloc(18)]);
    expect(await refusal(openZip(file(fake), L))).toBe(
      "corrupt zip archive: the central directory (offset 0, 0 bytes) does not end where the end record starts (offset 30)",
    );
    const junk = Buffer.concat([sig(3), Buffer.from("not really a zip"), sig(5), Buffer.from("junk")]);
    expect(await refusal(openZip(file(junk), L))).toBe(
      "truncated or corrupt zip archive: no end-of-central-directory record",
    );
    expect(await refusal(openZip(file(Buffer.from("just text, no zip at all")), L))).toBe(
      "not a zip archive",
    );
    expect(await refusal(openZip(file(Buffer.from("PK")), L))).toBe("not a zip archive");
  });

  it("refuses a truncated zip", async () => {
    const path = join(dir, "trunc-1.0-py3-none-any.whl");
    makeWheel(path, "trunc", "1.0");
    const whole = readFileSync(path);
    expect(await refusal(openZip(file(whole.subarray(0, whole.length - 30)), L))).toBe(
      "truncated or corrupt zip archive: no end-of-central-directory record",
    );
    expect(await refusal(openZip(file(whole.subarray(0, whole.length >> 1)), L))).toBe(
      "truncated or corrupt zip archive: no end-of-central-directory record",
    );
  });

  it("refuses a central directory entry that disagrees with its local header", async () => {
    expect(await zipRefusal([{ name: "a.py", localName: "b.py", data: "x" }])).toBe(
      'corrupt zip archive: member "a.py": local header names "b.py"',
    );
  });

  it("refuses encryption, other compression methods, ZIP64 and multi-disk archives", async () => {
    expect(await zipRefusal([{ name: "a", data: "x", flags: 0x801 }])).toBe('member "a" is encrypted');
    const bzip = zip([{ name: "a", data: "x", method: 0 }]);
    const cd = bzip.indexOf(Buffer.from([0x50, 0x4b, 0x01, 0x02]));
    bzip.writeUInt16LE(12, 8);
    bzip.writeUInt16LE(12, cd + 10);
    expect(await refusal(openZip(file(bzip), L))).toBe(
      'member "a" uses compression method 12; only stored (0) and deflate (8) are supported',
    );
    const z64 = zip([{ name: "a", data: "x" }]);
    z64.writeUInt32LE(0xffffffff, z64.indexOf(Buffer.from([0x50, 0x4b, 0x01, 0x02])) + 24);
    expect(await refusal(openZip(file(z64), L))).toBe("ZIP64 archives are not supported");
    const disks = zip([{ name: "a", data: "x" }]);
    disks.writeUInt16LE(1, disks.length - 22 + 4);
    expect(await refusal(openZip(file(disks), L))).toBe("multi-disk zip archives are not supported");
  });

  it("refuses overlapping members", async () => {
    const bytes = zip([
      { name: "a", data: "aaaa", method: 0 },
      { name: "b", data: "bbbb", method: 0 },
    ]);
    // Point b's central entry at a's local header offset + 1: its data would overlap a's.
    const cd = bytes.lastIndexOf(Buffer.from([0x50, 0x4b, 0x01, 0x02]));
    bytes.writeUInt32LE(0, cd + 42);
    expect(await refusal(openZip(file(bytes), L))).toMatch(/^corrupt zip archive: /);
  });

  it("refuses symbolic links and other special files", async () => {
    expect(await zipRefusal([{ name: "link", data: "/etc/passwd", mode: 0o120777 }])).toBe(
      'member "link" is a symbolic link; only files and directories are allowed',
    );
    expect(await zipRefusal([{ name: "fifo", mode: 0o010644 }])).toBe(
      'member "fifo" is not a regular file or directory',
    );
    const a = await openZip(file(zip([{ name: "ok", data: "x", mode: 0o100644 }])), L);
    expect(a.members).toHaveLength(1);
  });

  it("refuses too many members", async () => {
    const six = Array.from({ length: 6 }, (_, i) => ({ name: `m${i}`, data: "x" }));
    expect(await zipRefusal(six, { ...L, maxMembers: 5 })).toBe("too many members: 6 (limit 5)");
  });

  it("refuses member names that are not valid UTF-8", async () => {
    const bytes = zip([{ name: "a\u00e9", data: "x" }]);
    // Turn the é (c3 a9) into a lone continuation byte in both headers.
    for (let i = bytes.indexOf(0xc3); i >= 0; i = bytes.indexOf(0xc3, i + 1)) bytes[i] = 0xa9;
    expect(await refusal(openZip(file(bytes), L))).toBe("member name 0x61a9a9 is not valid UTF-8");
  });
});

describe("member names (both formats)", () => {
  const unsafe: [string, string][] = [
    ["../../../../tmp/pwned.py", '".." component'],
    ["pkg/../../x", '".." component'],
    ["/etc/x", "absolute path"],
    ["pkg\\..\\x", "backslash"],
    ["C:/x", "drive letter"],
    ["c:x", "drive letter"],
    ["pkg/a\u0000b", "control character"],
    ["pkg/a\nb", "control character"],
    ["pkg//x", 'empty or "." component'],
    ["./pkg/x", 'empty or "." component'],
    [`${"a".repeat(4097)}`, "longer than 4096 bytes"],
  ];

  it.each(unsafe)("zip refuses %j (%s)", async (name, why) => {
    expect(await zipRefusal([{ name, data: "x" }])).toBe(
      `unsafe member name ${JSON.stringify(name)}: ${why}`,
    );
  });

  it.each(unsafe.filter(([name]) => name.length <= 100 && !name.includes("\u0000")))(
    "tar refuses %j (%s)",
    async (name, why) => {
      expect(await tarRefusal([{ name, data: "x" }])).toBe(
        `unsafe member name ${JSON.stringify(name)}: ${why}`,
      );
    },
  );

  it("refuses duplicates and files used as directories", async () => {
    expect(
      await zipRefusal([
        { name: "a", data: "1" },
        { name: "a", data: "2" },
      ]),
    ).toBe('duplicate member "a"');
    expect(await zipRefusal([{ name: "a/", data: "" }, { name: "a" }])).toBe('duplicate member "a"');
    expect(await zipRefusal([{ name: "a", data: "1" }, { name: "a/b" }])).toBe(
      'member "a/b" is inside "a", which is a file',
    );
    expect(await zipRefusal([{ name: "a/b", data: "1" }, { name: "a" }])).toBe(
      'member "a" is both a file and a directory',
    );
    expect(
      await tarRefusal([
        { name: "p/x", data: "1" },
        { name: "p/x", data: "2" },
      ]),
    ).toBe('duplicate member "p/x"');
  });
});

describe("openTarGz", () => {
  it("reads a real sdist", async () => {
    const path = join(dir, "demo-1.0.tar.gz");
    makeSdist(path, "demo", "1.0");
    const a = await openTarGz(path, L);
    expect(a.members).toEqual([{ name: "demo-1.0/PKG-INFO", size: 46, compressedSize: 46, isDir: false }]);
    expect((await a.read("demo-1.0/PKG-INFO", 1000)).toString()).toBe(
      "Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n",
    );
    await a.verifyAll();
  });

  it("follows GNU long names and pax paths, as Python's tarfile writes them", async () => {
    const long = `demo-1.0/${"d".repeat(120)}/m\u00f6dule.py`;
    for (const format of ["GNU_FORMAT", "PAX_FORMAT"]) {
      const path = join(dir, `long-${format}.tar.gz`);
      execFileSync("python3", [
        "-c",
        `
import io, sys, tarfile
with tarfile.open(sys.argv[1], "w:gz", format=tarfile.${format}) as t:
    for name, data in [("demo-1.0", None), (sys.argv[2], b"x = 1\\n")]:
        info = tarfile.TarInfo(name)
        if data is None:
            info.type = tarfile.DIRTYPE
            t.addfile(info)
        else:
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
`,
        path,
        long,
      ]);
      const a = await openTarGz(path, L);
      expect(a.members.map((m) => [m.name, m.isDir])).toEqual([
        ["demo-1.0", true],
        [long, false],
      ]);
      expect((await a.read(long, 100)).toString()).toBe("x = 1\n");
    }
  });

  it("lets a pax path override the header name, and checks it like any name", async () => {
    const a = await openTarGz(
      file(gzipSync(tar([pax({ path: "p-1.0/real.py" }), { name: "p-1.0/short", data: "y" }])), ".tar.gz"),
      L,
    );
    expect(a.members.map((m) => m.name)).toEqual(["p-1.0/real.py"]);
    expect(await tarRefusal([pax({ path: "/etc/passwd" }), { name: "p-1.0/ok", data: "y" }])).toBe(
      'unsafe member name "/etc/passwd": absolute path',
    );
  });

  it("refuses gzip'd plain text and non-gzip data", async () => {
    const text = gzipSync("this is not a tar archive\n".repeat(100));
    expect(await refusal(openTarGz(file(text, ".tar.gz"), L))).toBe("not a tar archive");
    expect(await refusal(openTarGz(file(gzipSync("short\n"), ".tar.gz"), L))).toBe("not a tar archive");
    expect(await refusal(openTarGz(file(Buffer.from("plain text"), ".tar.gz"), L))).toBe("not a gzip file");
  });

  it("refuses a truncated gzip stream and a truncated tar inside a whole one", async () => {
    const path = join(dir, "cut-1.0.tar.gz");
    makeSdist(path, "cut", "1.0");
    const whole = readFileSync(path);
    expect(await refusal(openTarGz(file(whole.subarray(0, whole.length - 10), ".tar.gz"), L))).toBe(
      "truncated archive",
    );
    const body = tar([{ name: "p-1.0/a", data: "x".repeat(2000) }], { end: false });
    expect(await refusal(openTarGz(file(gzipSync(body.subarray(0, 1024)), ".tar.gz"), L))).toBe(
      "truncated archive",
    );
    expect(await refusal(openTarGz(file(gzipSync(body), ".tar.gz"), L))).toBe("truncated archive");
  });

  it("refuses links, devices and unknown member types", async () => {
    expect(await tarRefusal([{ name: "p-1.0/link", type: "2", linkname: "/etc/passwd" }])).toBe(
      'member "p-1.0/link" is a symbolic link; only files and directories are allowed',
    );
    expect(await tarRefusal([{ name: "p-1.0/hard", type: "1", linkname: "p-1.0/a" }])).toBe(
      'member "p-1.0/hard" is a hard link; only files and directories are allowed',
    );
    expect(await tarRefusal([{ name: "p-1.0/dev", type: "3" }])).toBe(
      'member "p-1.0/dev" is a character device; only files and directories are allowed',
    );
    expect(await tarRefusal([{ name: "p-1.0/s", type: "S" }])).toBe(
      'member "p-1.0/s" has unsupported tar type "S"',
    );
  });

  it("refuses a corrupt header checksum", async () => {
    expect(
      await tarRefusal([
        { name: "p-1.0/a", data: "x" },
        { name: "p-1.0/b", badChecksum: true },
      ]),
    ).toBe("corrupt tar archive: bad header checksum at offset 1024");
  });

  it("refuses too many members", async () => {
    const six = Array.from({ length: 6 }, (_, i) => ({ name: `p/m${i}`, data: "x" }));
    expect(await tarRefusal(six, { ...L, maxMembers: 5 })).toBe("too many members: more than 5");
  });

  it("refuses a gzip bomb while inflating, without inflating it all", async () => {
    const header = tar([{ name: "p-1.0/zeros", data: "" }], { end: false });
    header.write(`${MB63.toString(8).padStart(11, "0")}\0`, 124, "latin1");
    header.fill(0x20, 148, 156);
    let sum = 0;
    for (const c of header) sum += c;
    header.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148, "latin1");
    const gz = gzipSync(Buffer.concat([header, Buffer.alloc(MB63), Buffer.alloc(1024)]), { level: 9 });
    const started = Date.now();
    const reason = await refusal(openTarGz(file(gz, ".tar.gz"), L));
    expect(reason).toMatch(
      new RegExp(
        `^gzip bomb: the tar inflates past \\d+ bytes, \\d+ times the ${gz.length}-byte archive \\(limit 100\\)$`,
      ),
    );
    const inflated = Number(/past (\d+)/.exec(reason)?.[1]);
    expect(inflated).toBeLessThan(gz.length * 100 + 128 * 1024);
    expect(Date.now() - started).toBeLessThan(2000);
  });
});

describe("crc32Table (node < 20.15 has no zlib.crc32)", () => {
  it("agrees with zlib.crc32 in one go and in pieces", async () => {
    const { crc32Table } = await import("../../src/app/archive.js");
    const zlib = await import("node:zlib");
    const data = Buffer.from(Array.from({ length: 5000 }, (_, i) => (i * 7919) & 0xff));
    expect(crc32Table(data)).toBe(zlib.crc32(data));
    expect(crc32Table(data.subarray(1000), crc32Table(data.subarray(0, 1000)))).toBe(zlib.crc32(data));
    expect(crc32Table(Buffer.from("123456789"))).toBe(0xcbf43926);
  });
});
