import { createHash } from "node:crypto";
import {
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { loadConfig } from "../../src/app/config.js";
import {
  type AwsResult,
  type AwsRunner,
  type CopyStore,
  copyFiles,
  copyMarkerPath,
  DirectoryStore,
  MissingInStore,
  requestCopies,
  runAws,
  S3Store,
  sha256Base64,
  sha256OfFile,
  storeFor,
} from "../../src/app/copies.js";
import type { Db } from "../../src/app/db.js";

const hex = (b: Buffer | string): string => createHash("sha256").update(b).digest("hex");

let dir = "";
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "copies-"));
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

/** A local file with `content`, and its sha256. */
function local(name: string, content: string): { path: string; sha: string } {
  const path = join(dir, name);
  writeFileSync(path, content);
  return { path, sha: hex(content) };
}

/** Every file below `root`, relative, sorted. */
const tree = (root: string): string[] =>
  readdirSync(root, { recursive: true, withFileTypes: true })
    .filter((d) => d.isFile())
    .map((d) => join(d.parentPath, d.name).slice(root.length + 1))
    .sort();

describe("DirectoryStore", () => {
  const store = (): DirectoryStore => {
    mkdirSync(join(dir, "store"));
    return new DirectoryStore(join(dir, "store"));
  };

  it("puts, verifies and fetches a file byte for byte", async () => {
    const s = store();
    const a = local("a.whl", "wheel bytes");
    await s.put("demo/a.whl", a.path, a.sha);
    expect(tree(join(dir, "store"))).toEqual(["demo/a.whl"]);
    expect(await s.verify("demo/a.whl", a.sha)).toBe(true);
    expect(await s.verify("demo/a.whl", hex("other"))).toBe(false);
    expect(await s.verify("demo/missing.whl", a.sha)).toBe(false);
    await s.fetch("demo/a.whl", join(dir, "back"));
    expect(readFileSync(join(dir, "back"), "utf8")).toBe("wheel bytes");
    // The destination is new: a fetch never writes over a file.
    await expect(s.fetch("demo/a.whl", join(dir, "back"))).rejects.toThrow(/EEXIST/);
    expect(s.describe()).toBe(`directory ${join(dir, "store")}`);
  });

  it("detects a corrupted copy", async () => {
    const s = store();
    const a = local("a.whl", "wheel bytes");
    await s.put("demo/a.whl", a.path, a.sha);
    writeFileSync(join(dir, "store/demo/a.whl"), "wheel bytez");
    expect(await s.verify("demo/a.whl", a.sha)).toBe(false);
  });

  it("stores nothing when the local file does not hash to the expected sha256", async () => {
    const s = store();
    const a = local("a.whl", "wheel bytes");
    await expect(s.put("demo/a.whl", a.path, hex("what the row says"))).rejects.toThrow(/not copied/);
    expect(tree(join(dir, "store"))).toEqual([]);
  });

  it("keeps other content under an existing key aside and reports it", async () => {
    const s = store();
    const old = local("old", "first bytes");
    const now = local("now", "second bytes");
    await s.put("demo/a.whl", old.path, old.sha);
    await expect(s.put("demo/a.whl", now.path, now.sha)).rejects.toThrow(/held other content/);
    const files = tree(join(dir, "store"));
    expect(files).toHaveLength(2);
    const aside = files.find((f) => f !== "demo/a.whl") as string;
    expect(aside).toMatch(/^demo\/a\.whl\.\d{8}T\d{6}\.\d{3}Z$/);
    expect(readFileSync(join(dir, "store", aside), "utf8")).toBe("first bytes");
    expect(await s.verify("demo/a.whl", now.sha)).toBe(true);
    // The same content again replaces nothing and is no error.
    await s.put("demo/a.whl", now.path, now.sha);
    expect(tree(join(dir, "store"))).toEqual(files);
  });

  it("does not create a missing store root", async () => {
    const s = new DirectoryStore(join(dir, "unmounted"));
    const a = local("a.whl", "x");
    await expect(s.put("demo/a.whl", a.path, a.sha)).rejects.toThrow(/not a directory/);
    expect(existsSync(join(dir, "unmounted"))).toBe(false);
  });

  it("refuses keys that leave the store", async () => {
    const s = store();
    const a = local("payload", "x");
    for (const key of ["../a.whl", "/a.whl", "demo//a.whl", "demo/./a.whl"])
      await expect(s.put(key, a.path, a.sha), key).rejects.toThrow(/invalid file copy key/);
    expect(existsSync(join(dir, "a.whl"))).toBe(false);
  });

  it("reports a key it has no copy of as missing", async () => {
    const s = store();
    await expect(s.fetch("demo/a.whl", join(dir, "back"))).rejects.toBeInstanceOf(MissingInStore);
    expect(existsSync(join(dir, "back"))).toBe(false);
  });
});

/** A runner that records each call and answers from `answer`. */
function fakeAws(answer: (argv: readonly string[]) => AwsResult | Promise<AwsResult>): {
  run: AwsRunner;
  calls: { argv: readonly string[]; timeoutMs: number }[];
} {
  const calls: { argv: readonly string[]; timeoutMs: number }[] = [];
  return {
    calls,
    run: async (argv, timeoutMs) => {
      calls.push({ argv, timeoutMs });
      return answer(argv);
    },
  };
}

const ok = (stdout = ""): AwsResult => ({ status: 0, stdout, stderr: "" });
const GLOBAL = [
  "--output",
  "json",
  "--no-cli-pager",
  "--cli-connect-timeout",
  "10",
  "--cli-read-timeout",
  "60",
];
const TIMEOUTS = { requestMs: 1_000, msPerMb: 1_000, fetchMs: 9_000 };

describe("S3Store", () => {
  it("puts with the digest as S3's base64 checksum, so S3 checks the body", async () => {
    const a = local("a.whl", "x".repeat(2_000_000));
    const aws = fakeAws(() => ok("{}"));
    await new S3Store("pypi-files", "packages", aws.run, TIMEOUTS).put("demo/a.whl", a.path, a.sha);
    const digest = createHash("sha256").update(readFileSync(a.path)).digest("base64");
    expect(aws.calls).toEqual([
      {
        argv: [
          "s3api",
          "put-object",
          "--bucket",
          "pypi-files",
          "--key",
          "packages/demo/a.whl",
          "--body",
          a.path,
          "--checksum-sha256",
          digest,
          ...GLOBAL,
        ],
        // The fixed part plus 1 s per MB of the file.
        timeoutMs: 3_000,
      },
    ]);
    expect(sha256Base64(a.sha)).toBe(digest);
  });

  it("fails a put with the CLI's stderr", async () => {
    const a = local("a.whl", "x");
    const aws = fakeAws(() => ({ status: 254, stdout: "", stderr: "An error occurred (BadDigest)\n" }));
    await expect(new S3Store("b", "", aws.run).put("demo/a.whl", a.path, a.sha)).rejects.toThrow(
      "aws s3api put-object s3://b/demo/a.whl exited 254: An error occurred (BadDigest)",
    );
  });

  it("verifies by the stored checksum from head-object", async () => {
    const sha = hex("content");
    const heads: AwsResult[] = [
      ok(JSON.stringify({ ContentLength: 7, ChecksumSHA256: sha256Base64(sha) })),
      ok(JSON.stringify({ ContentLength: 7, ChecksumSHA256: sha256Base64(hex("other")) })),
      ok(JSON.stringify({ ContentLength: 7 })),
      {
        status: 254,
        stdout: "",
        stderr: "An error occurred (404) when calling the HeadObject operation: Not Found",
      },
    ];
    const aws = fakeAws(() => heads.shift() as AwsResult);
    const s = new S3Store("b", "p", aws.run, TIMEOUTS);
    expect(await s.verify("demo/a.whl", sha)).toBe(true);
    expect(await s.verify("demo/a.whl", sha)).toBe(false);
    expect(await s.verify("demo/a.whl", sha)).toBe(false);
    expect(await s.verify("demo/a.whl", sha)).toBe(false);
    expect(aws.calls[0]).toEqual({
      argv: [
        "s3api",
        "head-object",
        "--bucket",
        "b",
        "--key",
        "p/demo/a.whl",
        "--checksum-mode",
        "ENABLED",
        ...GLOBAL,
      ],
      timeoutMs: 1_000,
    });
  });

  it("does not take a denied head-object for a missing copy", async () => {
    const aws = fakeAws(() => ({
      status: 254,
      stdout: "",
      stderr: "An error occurred (403) when calling the HeadObject operation: Forbidden",
    }));
    await expect(new S3Store("b", "", aws.run).verify("demo/a.whl", hex("x"))).rejects.toThrow(/403/);
  });

  it("fetches with checksum mode into the destination, and leaves no partial file", async () => {
    const dest = join(dir, "fetched");
    const aws = fakeAws(() => ok("{}"));
    await new S3Store("b", "p", aws.run, TIMEOUTS).fetch("demo/a.whl", dest);
    expect(aws.calls).toEqual([
      {
        argv: [
          "s3api",
          "get-object",
          "--bucket",
          "b",
          "--key",
          "p/demo/a.whl",
          "--checksum-mode",
          "ENABLED",
          dest,
          ...GLOBAL,
        ],
        timeoutMs: 9_000,
      },
    ]);

    const partial = (status: number, stderr: string) =>
      fakeAws(() => {
        writeFileSync(dest, "half");
        return { status, stdout: "", stderr };
      }).run;
    rmSync(dest, { force: true });
    await expect(
      new S3Store(
        "b",
        "p",
        partial(254, "An error occurred (NoSuchKey) when calling the GetObject operation"),
      ).fetch("demo/a.whl", dest),
    ).rejects.toBeInstanceOf(MissingInStore);
    expect(existsSync(dest)).toBe(false);
    await expect(
      new S3Store("b", "p", partial(255, "Checksum mismatch")).fetch("demo/a.whl", dest),
    ).rejects.toThrow(/exited 255: Checksum mismatch/);
    expect(existsSync(dest)).toBe(false);
    const timedOut: AwsRunner = async () => {
      writeFileSync(dest, "half");
      throw new Error("aws s3api get-object timed out");
    };
    await expect(new S3Store("b", "p", timedOut).fetch("demo/a.whl", dest)).rejects.toThrow(/timed out/);
    expect(existsSync(dest)).toBe(false);
  });

  it("is what storeFor makes of an s3:// location", () => {
    const s = storeFor("s3://pypi-prod-files/packages/");
    expect(s).toBeInstanceOf(S3Store);
    expect([(s as S3Store).bucket, (s as S3Store).prefix, s.describe()]).toEqual([
      "pypi-prod-files",
      "packages",
      "s3://pypi-prod-files/packages",
    ]);
    expect((storeFor("s3://bucket") as S3Store).objectKey("demo/a.whl")).toBe("demo/a.whl");
    expect(storeFor("/srv/pypi-backup/files/")).toEqual(new DirectoryStore("/srv/pypi-backup/files"));
    expect(() => storeFor("backup/files")).toThrow(/expected s3:\/\/bucket\/prefix or an absolute directory/);
  });
});

describe("runAws", () => {
  const withFakeCli = async (script: string, fn: () => Promise<void>): Promise<void> => {
    const bin = join(dir, "bin");
    mkdirSync(bin);
    writeFileSync(join(bin, "aws"), `#!/bin/sh\n${script}\n`);
    chmodSync(join(bin, "aws"), 0o755);
    const saved = process.env.PATH;
    process.env.PATH = `${bin}:${saved}`;
    try {
      await fn();
    } finally {
      process.env.PATH = saved;
    }
  };

  it("passes the arguments as they are, without a shell, and returns both streams", async () => {
    await withFakeCli('printf "%s|" "$@"; echo oops >&2; exit 3', async () => {
      const r = await runAws(["s3api", "head-object", "--key", "a b;$(x)"], 5_000);
      expect(r).toEqual({ status: 3, stdout: "s3api|head-object|--key|a b;$(x)|", stderr: "oops\n" });
    });
  });

  it("kills a CLI that exceeds its timeout", async () => {
    await withFakeCli("echo waiting >&2; exec sleep 30", async () => {
      const started = Date.now();
      await expect(runAws(["s3api", "get-object"], 300)).rejects.toThrow(
        /aws s3api get-object timed out after 300 ms: waiting/,
      );
      expect(Date.now() - started).toBeLessThan(5_000);
    });
  });
});

describe("requestCopies", () => {
  it("creates the marker the copy job's path unit watches", () => {
    const logged: string[] = [];
    requestCopies(dir, (m) => logged.push(m));
    expect(copyMarkerPath(dir)).toBe(join(dir, "copy-queue/wanted"));
    expect(existsSync(copyMarkerPath(dir))).toBe(true);
    requestCopies(dir, (m) => logged.push(m));
    expect(logged).toEqual([]);
  });

  it("logs, never throws, when the marker cannot be made", () => {
    writeFileSync(join(dir, "copy-queue"), "a file in the way");
    const logged: string[] = [];
    requestCopies(dir, (m) => logged.push(m));
    expect(logged).toHaveLength(1);
    expect(logged[0]).toMatch(/cannot create .*copy-queue\/wanted .*timer/);
  });
});

describe("sha256OfFile", () => {
  it("hashes a file in chunks and refuses a symlink", () => {
    const big = local("big", "y".repeat(3 * 1024 * 1024 + 7));
    expect(sha256OfFile(big.path)).toBe(big.sha);
    symlinkSync(big.path, join(dir, "link"));
    expect(() => sha256OfFile(join(dir, "link"))).toThrow(/ELOOP/);
  });
});

describe("PYPI_FILE_COPIES", () => {
  const base = {
    PYPI_DB_HOST: "db",
    PYPI_DB_NAME: "pypi",
    PYPI_DB_USER: "pypi",
    PYPI_PACKAGE_ROOT: "/srv/pypi",
  };

  it("accepts a bucket with a prefix or an absolute directory", () => {
    expect(loadConfig({ ...base, PYPI_FILE_COPIES: "s3://pypi-prod-files/packages" }).fileCopies).toBe(
      "s3://pypi-prod-files/packages",
    );
    expect(loadConfig({ ...base, PYPI_FILE_COPIES: "s3://pypi-prod-files" }).fileCopies).toBe(
      "s3://pypi-prod-files",
    );
    expect(loadConfig({ ...base, PYPI_FILE_COPIES: "/srv/pypi-backup/files/" }).fileCopies).toBe(
      "/srv/pypi-backup/files",
    );
  });

  it("is required, and a bad value is named with what is allowed", () => {
    expect(() => loadConfig(base)).toThrow(
      "PYPI_FILE_COPIES is not set (expected s3://bucket/prefix or an absolute directory)",
    );
    for (const bad of ["files", "s3://", "s3://Upper/x", "https://bucket/x", "/", "/srv/../etc"])
      expect(() => loadConfig({ ...base, PYPI_FILE_COPIES: bad }), bad).toThrow(
        `PYPI_FILE_COPIES: expected s3://bucket/prefix or an absolute directory, got ${JSON.stringify(bad)}`,
      );
  });
});

/**
 * Just enough of a database for copyFiles' queries: the files table in memory. The real
 * Postgres runs the same job in copies-sandbox.test.ts.
 */
function fakeDb(files: { filename: string; project: string; sha256: string; size: number }[]): {
  db: Db;
  copied: Set<string>;
} {
  const copied = new Set<string>();
  const pending = () => files.filter((f) => !copied.has(f.filename));
  const client = {
    release: () => {},
    query: async (text: string, values: unknown[] = []) => {
      const sql = text.replace(/\s+/g, " ").trim();
      if (/^(BEGIN|COMMIT|ROLLBACK)$/.test(sql)) return { rows: [] };
      if (sql.startsWith("SELECT filename FROM files WHERE copied_at IS NULL"))
        return {
          rows: pending()
            .filter((f) => f.filename > (values[0] as string))
            .sort((a, b) => a.filename.localeCompare(b.filename))
            .slice(0, values[1] as number)
            .map((f) => ({ filename: f.filename })),
        };
      if (sql.includes("FOR UPDATE SKIP LOCKED"))
        return {
          rows: pending()
            .filter((f) => f.filename === values[0])
            .map((f) => ({ ...f, size: String(f.size) })),
        };
      if (sql.startsWith("UPDATE files SET copied_at = now()")) {
        copied.add(values[0] as string);
        return { rows: [] };
      }
      if (sql.startsWith("SELECT count(*) AS pending"))
        return { rows: [{ pending: String(pending().length), oldest: pending().length > 0 ? "12.7" : "0" }] };
      throw new Error(`unexpected query: ${sql}`);
    },
  };
  return { db: { connect: async () => client } as unknown as Db, copied };
}

describe("copyFiles", () => {
  it("marks only verified copies; one failing file does not stop the others", async () => {
    const root = join(dir, "pypi");
    const files = ["a", "b", "c"].map((n) => {
      const filename = `${n}-1.0.tar.gz`;
      mkdirSync(join(root, "packages", n), { recursive: true });
      writeFileSync(join(root, "packages", n, filename), `${n} bytes`);
      return { filename, project: n, sha256: hex(`${n} bytes`), size: 7 };
    });
    mkdirSync(join(root, "copy-queue"));
    writeFileSync(copyMarkerPath(root), "");
    const puts: string[] = [];
    // a: the store loses the bytes; b: the store is down; c: fine.
    const store: CopyStore = {
      put: async (key) => {
        if (key.startsWith("b/")) throw new Error("store unreachable");
        puts.push(key);
      },
      verify: async (key) => !key.startsWith("a/"),
      fetch: async () => {},
      describe: () => "fake store",
    };
    const cfg = loadConfig({
      PYPI_DB_HOST: "db",
      PYPI_DB_NAME: "pypi",
      PYPI_DB_USER: "pypi",
      PYPI_PACKAGE_ROOT: root,
      PYPI_FILE_COPIES: "/unused",
    });
    const { db, copied } = fakeDb(files);
    const logged: string[] = [];
    const summary = await copyFiles(cfg, db, store, (m) => logged.push(m), { batch: 2 });
    expect(summary).toEqual({
      copied: 1,
      failed: 2,
      pending: 2,
      oldestPendingSeconds: 12,
      bytes: 7,
      seconds: expect.any(Number),
    });
    expect([...copied]).toEqual(["c-1.0.tar.gz"]);
    expect(puts).toEqual(["a/a-1.0.tar.gz", "c/c-1.0.tar.gz"]);
    expect(logged.join("\n")).toMatch(/a-1\.0\.tar\.gz not copied to fake store: .*does not hash to/);
    expect(logged.join("\n")).toMatch(/b-1\.0\.tar\.gz not copied to fake store: store unreachable/);
    expect(existsSync(copyMarkerPath(root))).toBe(false);
  });
});
