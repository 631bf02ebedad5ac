import {
  closeSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  rmSync,
  statSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  decideClosed,
  fdinfoWrites,
  lookupUser,
  parseScan,
  publishScan,
  readScans,
  scanWriters,
  sftpStateDir,
  uploadClosed,
  type WriterScan,
} from "../../src/app/sftp-events.js";

/** /proc/<pid>/fdinfo of internal-sftp holding a paused `put` (OpenSSH 9.2, Debian 12). */
const PAUSED_PUT_FDINFO = "pos:\t783360\nflags:\t0100001\nmnt_id:\t73\nino:\t8\n";
const READER_FDINFO = "pos:\t0\nflags:\t0100000\nmnt_id:\t73\nino:\t8\n";

const ms = (n: number): bigint => BigInt(n) * 1_000_000n;
const scan = (host: string, startedMs: number, writers: WriterScan["writers"] = []): WriterScan => ({
  version: 1,
  host,
  seq: 1,
  startedNs: ms(startedMs).toString(),
  writers,
});
const file = { ino: 8n, ctimeNs: ms(1_000) };

describe("fdinfoWrites", () => {
  it("reads the access mode from the octal flags", () => {
    expect(fdinfoWrites(PAUSED_PUT_FDINFO)).toBe(true);
    expect(fdinfoWrites(READER_FDINFO)).toBe(false);
    expect(fdinfoWrites("pos:\t0\nflags:\t02\n")).toBe(true);
    expect(fdinfoWrites("pos:\t0\n")).toBeNull();
  });
});

describe("decideClosed", () => {
  it("keeps a file open while any host lists a writer of its inode", () => {
    const v = decideClosed(
      [scan("app-a", 2_000), scan("app-b", 2_000, [{ ino: "8", pid: 124, path: "/x" }])],
      file,
    );
    expect(v).toEqual({ closed: false, why: "open for writing by pid 124 on app-b" });
  });

  it("needs every host to have looked after the last change", () => {
    expect(decideClosed([scan("app-a", 2_000), scan("app-b", 1_000)], file)).toEqual({
      closed: false,
      why: "changed since app-b last looked",
    });
    expect(decideClosed([scan("app-a", 2_000), scan("app-b", 1_001)], file).closed).toBe(true);
  });

  it("never closes without scans, nor without one from each named host", () => {
    expect(decideClosed([], file).closed).toBe(false);
    expect(decideClosed([scan("app-a", 2_000)], file, { hosts: ["app-a", "app-b"] })).toEqual({
      closed: false,
      why: "no writer scan from app-b yet",
    });
  });

  it("skips a host silent for longer than staleMs, writers and all", () => {
    const scans = [scan("app-a", 100_000), scan("app-b", 500, [{ ino: "8", pid: 9, path: "/x" }])];
    expect(decideClosed(scans, file, { staleMs: 60_000 })).toEqual({
      closed: true,
      why: "no writer on 1 app server(s) since its last change; skipped app-b (silent, taken as down)",
    });
    expect(decideClosed(scans, file, { staleMs: 120_000 }).closed).toBe(false);
  });
});

describe("parseScan", () => {
  it("accepts what the watcher writes and nothing else", () => {
    const s = scan("app-a", 5, [{ ino: "12", pid: 3, path: "/srv/x" }]);
    expect(parseScan(JSON.stringify(s))).toEqual(s);
    expect(parseScan("{")).toBeNull();
    expect(parseScan(JSON.stringify({ ...s, host: "../x" }))).toBeNull();
    expect(parseScan(JSON.stringify({ ...s, startedNs: 5 }))).toBeNull();
    expect(parseScan(JSON.stringify({ ...s, writers: [{ ino: 12, pid: 3 }] }))).toBeNull();
  });
});

describe("scan, publish and uploadClosed on a fake /proc", () => {
  let dir = "";
  let root = "";
  let proc = "";
  const upload = (name: string) => join(root, "incoming", "alice", "upload", name);

  /** A process of the fake /proc holding `target` with fdinfo `info` as fd 3. */
  function holder(pid: number, target: string, info: string): void {
    mkdirSync(join(proc, String(pid), "fd"), { recursive: true });
    mkdirSync(join(proc, String(pid), "fdinfo"), { recursive: true });
    symlinkSync(target, join(proc, String(pid), "fd", "3"));
    writeFileSync(join(proc, String(pid), "fdinfo", "3"), info);
  }

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), "pypi-sftp-events-"));
    root = join(dir, "pypi");
    proc = join(dir, "proc");
    mkdirSync(join(root, "incoming", "alice", "upload"), { recursive: true });
    mkdirSync(sftpStateDir(root), { recursive: true });
    mkdirSync(proc);
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it("lists writers on the volume only, and reports a paused upload open until it is closed", () => {
    writeFileSync(upload("a-1.tar.gz"), "partial");
    holder(124, upload("a-1.tar.gz"), PAUSED_PUT_FDINFO);
    holder(125, upload("a-1.tar.gz"), READER_FDINFO);
    const dev = statSync(root, { bigint: true }).dev;
    expect(scanWriters(dev, proc, -1)).toEqual([
      { ino: statSync(upload("a-1.tar.gz")).ino.toString(), pid: 124, path: upload("a-1.tar.gz") },
    ]);
    expect(scanWriters(dev + 1n, proc, -1)).toEqual([]);

    const st = statSync(upload("a-1.tar.gz"));
    const raw = Buffer.from("a-1.tar.gz");
    publishScan({ root, host: "app-a", procRoot: proc }, 1);
    expect(uploadClosed(root, "alice", raw, st)).toEqual({
      closed: false,
      why: "open for writing by pid 124 on app-a",
    });
    rmSync(join(proc, "124"), { recursive: true });
    publishScan({ root, host: "app-a", procRoot: proc }, 2);
    const v = uploadClosed(root, "alice", raw, st);
    expect(v.closed, v.why).toBe(true);
    expect(readScans(root).map((s) => [s.host, s.seq])).toEqual([["app-a", 2]]);
  });

  it("waits for a scan newer than the file's last change", () => {
    publishScan({ root, host: "app-a", procRoot: proc }, 1);
    const fd = openSync(upload("b-1.tar.gz"), "w");
    writeSync(fd, "x");
    closeSync(fd);
    // A change time after the scan began, as a write that raced the scan leaves it.
    const later = new Date(Date.now() + 5_000);
    utimesSync(upload("b-1.tar.gz"), later, later);
    const st = statSync(upload("b-1.tar.gz"));
    expect(uploadClosed(root, "alice", Buffer.from("b-1.tar.gz"), st).why).toBe(
      "changed since app-a last looked",
    );
    expect(uploadClosed(root, "alice", Buffer.from("nope"), st).closed).toBe(false);
  });

  it("finds a user's ids in a passwd file", () => {
    writeFileSync(
      join(dir, "passwd"),
      "root:x:0:0::/root:/bin/sh\nwww-data:x:33:33::/var/www:/usr/sbin/nologin\n",
    );
    expect(lookupUser("www-data", join(dir, "passwd"))).toEqual({ uid: 33, gid: 33 });
    expect(() => lookupUser("nobody", join(dir, "passwd"))).toThrow(/nobody/);
  });
});
