/**
 * copy-files and restore-files against the app sandbox's real Postgres, with files registered
 * through the real registration; a directory stands in for the bucket.
 */
import { createHash } from "node:crypto";
import {
  appendFileSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AppSandbox, PG_BIN } from "../../lab/lib/app-sandbox.js";
import { copyMarkerPath } from "../../src/app/copies.js";
import { requireTools } from "../support/tools.js";
import { topologyFor } from "../support/topologies.js";
import { makeSdist, makeWheel } from "./fixtures.js";

const canRun = requireTools("file copies (postgres 15 + apache)", [
  "unshare",
  "nsenter",
  "runuser",
  "curl",
  "/usr/bin/python3",
  "apache2",
  `${PG_BIN}/postgres`,
  `${PG_BIN}/pg_basebackup`,
]);

const sha256 = (path: string): string => createHash("sha256").update(readFileSync(path)).digest("hex");

interface Row {
  filename: string;
  project: string;
  sha256: string;
  size: number;
  copied: boolean;
}

describe.skipIf(!canRun)("file copies and restore with Postgres", () => {
  let sb: AppSandbox;
  let upload = "";

  beforeAll(async () => {
    sb = await AppSandbox.start({ prefix: "pypi-copies-", topology: topologyFor("staging", 15) });
    upload = `${sb.packageRoot}/incoming/alice/upload`;
    mkdirSync(upload, { recursive: true });
  }, 120_000);

  afterAll(() => {
    sb?.stop();
  });

  const rows = (): Row[] =>
    sb
      .psql(
        "SELECT filename, project, sha256, size, copied_at IS NOT NULL FROM files WHERE state = 'ok' ORDER BY filename",
        "pypi",
      )
      .trim()
      .split("\n")
      .filter((l) => l !== "")
      .map((l) => {
        const [filename, project, sha, size, copied] = l.split("|") as [
          string,
          string,
          string,
          string,
          string,
        ];
        return { filename, project, sha256: sha, size: Number(size), copied: copied === "t" };
      });
  const local = (r: Row): string => `${sb.packageRoot}/packages/${r.project}/${r.filename}`;
  const copy = (r: Row): string => `${sb.fileCopies}/${r.project}/${r.filename}`;

  function run(args: string[]): { status: number; summary: Record<string, number>; log: string } {
    const r = sb.exec(["node", "/opt/pypi-index/index.fcgi", ...args], { env: sb.appEnv(), allowFail: true });
    const lines = r.stdout.trim().split("\n");
    expect(lines, r.stderr).toHaveLength(1);
    return { status: r.status, summary: JSON.parse(lines[0] as string), log: r.stderr };
  }

  /** Everything in the store, relative to it. */
  const stored = (): string[] =>
    readdirSync(sb.fileCopies, { recursive: true, withFileTypes: true })
      .filter((d) => d.isFile())
      .map((d) => `${d.parentPath}/${d.name}`.slice(sb.fileCopies.length + 1))
      .sort();
  const staging = (): string[] => readdirSync(`${sb.packageRoot}/.staging`).sort();

  it("copies every registered file once, each verified against its row", () => {
    makeWheel(`${upload}/Demo_Pkg-1.0.0-py3-none-any.whl`, "Demo_Pkg", "1.0.0");
    makeSdist(`${upload}/demo_pkg-1.0.0.tar.gz`, "demo_pkg", "1.0.0");
    expect(sb.register().summary.registered).toHaveLength(2);
    // The registration asked for a copy; nothing is copied yet.
    expect(existsSync(copyMarkerPath(sb.packageRoot))).toBe(true);
    const before = rows();
    expect(before.map((r) => r.copied)).toEqual([false, false]);

    const first = run(["copy-files"]);
    expect(first.status, first.log).toBe(0);
    expect(first.summary).toEqual({
      copied: 2,
      failed: 0,
      pending: 0,
      oldestPendingSeconds: 0,
      bytes: before[0]!.size + before[1]!.size,
      seconds: expect.any(Number),
    });
    expect(existsSync(copyMarkerPath(sb.packageRoot))).toBe(false);
    const after = rows();
    expect(after.map((r) => r.copied)).toEqual([true, true]);
    for (const r of after) expect(sha256(copy(r)), r.filename).toBe(r.sha256);
    expect(stored()).toEqual(after.map((r) => `${r.project}/${r.filename}`).sort());

    const again = run(["copy-files"]);
    expect(again.status).toBe(0);
    expect(again.summary).toMatchObject({ copied: 0, failed: 0, pending: 0, bytes: 0 });
  });

  it("reports a local file that no longer matches its row, and copies it only once it does", () => {
    makeWheel(`${upload}/other_pkg-2.0-py3-none-any.whl`, "other_pkg", "2.0");
    expect(sb.register().summary.registered).toEqual(["other-pkg/other_pkg-2.0-py3-none-any.whl"]);
    const row = rows().find((r) => r.project === "other-pkg")!;
    const good = readFileSync(local(row));
    appendFileSync(local(row), "bit rot");

    const bad = run(["copy-files"]);
    expect(bad.status).not.toBe(0);
    expect(bad.summary).toMatchObject({ copied: 0, failed: 1, pending: 1 });
    expect(bad.summary.oldestPendingSeconds).toBeGreaterThanOrEqual(0);
    expect(bad.log).toMatch(/other_pkg-2\.0-py3-none-any\.whl .*its row says/);
    expect(existsSync(copy(row))).toBe(false);
    expect(rows().find((r) => r.project === "other-pkg")!.copied).toBe(false);

    // Nothing in the store to restore it from: reported, and the local file is left as it is.
    const restore = run(["restore-files"]);
    expect(restore.status).not.toBe(0);
    expect(restore.summary).toMatchObject({ checked: 3, restored: 0, alreadyGood: 2, missingInStore: 1 });
    expect(readFileSync(local(row)).subarray(good.length).toString()).toBe("bit rot");

    writeFileSync(local(row), good);
    const fixed = run(["copy-files"]);
    expect(fixed.status, fixed.log).toBe(0);
    expect(fixed.summary).toMatchObject({ copied: 1, failed: 0, pending: 0, bytes: row.size });
    expect(sha256(copy(row))).toBe(row.sha256);
  });

  it("restores missing and damaged files from the copies, each equal to its row", () => {
    const all = rows();
    expect(all).toHaveLength(3);
    const [a, b, c] = all as [Row, Row, Row];
    rmSync(local(a));
    rmSync(local(b));
    writeFileSync(local(c), "damaged");
    // The volume's other contents go with it: PEP 658 metadata beside the wheels, the pages.
    const metas = all.map((f) => `${local(f)}.metadata`).filter((m) => existsSync(m));
    expect(metas.length).toBeGreaterThan(0);
    const metaBytes = new Map(metas.map((m) => [m, readFileSync(m)]));
    for (const m of metas) rmSync(m);
    const root = local(a).slice(0, local(a).indexOf("/packages/"));
    rmSync(`${root}/simple/${a.project}`, { recursive: true, force: true });
    const stagingBefore = staging();

    const r = run(["restore-files"]);
    expect(r.status, r.log).toBe(0);
    expect(r.summary).toEqual({
      checked: 3,
      restored: 3,
      alreadyGood: 0,
      mismatched: 0,
      missingInStore: 0,
      failed: 0,
      bytes: a.size + b.size + c.size,
      seconds: expect.any(Number),
      mbPerSecond: expect.any(Number),
      metadataRestored: metas.length,
      pagesPublished: new Set(all.map((f) => f.project)).size,
    });
    for (const [m, bytes] of metaBytes) expect(readFileSync(m).equals(bytes), m).toBe(true);
    expect(readdirSync(`${root}/simple/${a.project}`).length).toBeGreaterThan(0);
    expect(sb.http(`/simple/${a.project}/`).status).toBe(200);
    for (const f of all) {
      expect(sha256(local(f)), f.filename).toBe(f.sha256);
      // As registration leaves a file: the app's user (who owns packages/), 0644.
      expect(sb.exec(["stat", "-c", "%U:%G %a", local(f)]).stdout.trim()).toBe("www-data:www-data 644");
    }
    expect(staging()).toEqual(stagingBefore);
    expect(sb.http(`/packages/${a.project}/${a.filename}`).status).toBe(200);

    expect(run(["restore-files"]).summary).toMatchObject({ checked: 3, restored: 0, alreadyGood: 3 });
    // --all fetches and checks every copy, also of files that are fine.
    const everything = run(["restore-files", "--all"]);
    expect(everything.status, everything.log).toBe(0);
    expect(everything.summary).toMatchObject({ checked: 3, restored: 3, alreadyGood: 0 });
    const usage = sb.exec(["node", "/opt/pypi-index/index.fcgi", "restore-files", "--bogus"], {
      env: sb.appEnv(),
      allowFail: true,
    });
    expect([usage.status, usage.stderr]).toEqual([2, "usage: pypi-index restore-files [--all]\n"]);
  });

  it("does not restore from a copy whose sha256 differs from the row, and leaves no partial file", () => {
    const a = rows()[0]!;
    writeFileSync(copy(a), Buffer.concat([readFileSync(copy(a)), Buffer.from("tampered")]));
    rmSync(local(a));
    const stagingBefore = staging();

    const r = run(["restore-files"]);
    expect(r.status).not.toBe(0);
    expect(r.summary).toMatchObject({ checked: 3, restored: 0, alreadyGood: 2, mismatched: 1, bytes: 0 });
    expect(r.log).toContain(`${a.project}/${a.filename} hashes to`);
    expect(existsSync(local(a))).toBe(false);
    expect(readdirSync(`${sb.packageRoot}/packages/${a.project}`)).not.toContain(a.filename);
    expect(staging()).toEqual(stagingBefore);
  });

  it("copies each file once when two app servers run the job at the same time", () => {
    for (let i = 1; i <= 6; i++) makeWheel(`${upload}/many_${i}-1.0-py3-none-any.whl`, `many_${i}`, "1.0");
    expect(sb.register().summary.registered).toHaveLength(6);
    const both = sb.exec(
      [
        "sh",
        "-c",
        "node /opt/pypi-index/index.fcgi copy-files > $0/one & node /opt/pypi-index/index.fcgi copy-files > $0/two; wait $!; cat $0/one $0/two",
        sb.scratch,
      ],
      { env: sb.appEnv() },
    );
    const summaries = both.stdout
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l));
    expect(summaries).toHaveLength(2);
    expect(summaries.map((s) => s.failed)).toEqual([0, 0]);
    expect(summaries[0].copied + summaries[1].copied).toBe(6);
    expect(
      rows()
        .filter((r) => !r.copied)
        .map((r) => r.filename),
    ).toEqual([]);
  }, 60_000);
});
