/**
 * Real SFTP uploads: OpenSSH's sshd with the rendered sshd_config, under the rendered ssh.service
 * size limit, and the upload watcher, all in private namespaces (loopback-only network, own PIDs,
 * copy-on-write /etc and /srv), driven by the real `sftp` client. Proves what the registrar
 * relies on: a paused upload stays open until its client closes it; a finished one is closed; a
 * file over the limit fails its client and stays over the limit; the uploader cannot chmod.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import {
  chmodSync,
  chownSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { buildSync } from "esbuild";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { copyOnWriteMounts, NamespaceHolder } from "../../lab/lib/holder.js";
import { shq } from "../../lab/lib/netns.js";
import { lookupUser, readScans, sftpStateDir, uploadClosed } from "../../src/app/sftp-events.js";
import { projectRoot } from "../../src/project-files.js";
import { renderSshLimitsDropIn, uploadFsizeLimit } from "../../src/render/ssh-limits.js";
import {
  authorizedKeysPath,
  renderAuthorizedKeys,
  renderSshdConfig,
  uploadDir,
  uploadHostKeyPath,
} from "../../src/render/sshd.js";
import { nodesWithRole, type Topology } from "../../src/topology.js";
import { requireTools } from "../support/tools.js";
import { topologyFor } from "../support/topologies.js";

const canRun = requireTools("sftp upload tier", [
  "/usr/sbin/sshd",
  "sftp",
  "ssh-keygen",
  "useradd",
  "prlimit",
  "node",
]);

const PACKAGE_ROOT = "/srv/pypi";
const MAX = 1_000_000;
const PAUSE_MS = 11_000;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const sha = (path: string) => createHash("sha256").update(readFileSync(path)).digest("hex");

async function until<T>(what: string, timeoutMs: number, probe: () => T | undefined): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms: ${what}`);
    await sleep(100);
  }
}

describe.skipIf(!canRun)("SFTP uploads (real sshd and sftp, private namespaces)", { timeout: 90_000 }, () => {
  let scratch = "";
  let root = "";
  let clientKey = "";
  let t: Topology;
  let user = "";
  let holder: NamespaceHolder | undefined;
  const children: ChildProcess[] = [];

  const uploadDirOnHost = () => uploadDir({ ...t, storage: { ...t.storage, packageRoot: root } }, user);
  const hostUpload = (name: string) => `${uploadDirOnHost()}/${name}`;
  const closed = (name: string) => {
    const raw = Buffer.from(name);
    return uploadClosed(root, user, raw, lstatSync(Buffer.concat([Buffer.from(hostUpload("")), raw])));
  };
  const local = (name: string, bytes: number): string => {
    const path = join(scratch, name);
    writeFileSync(path, Buffer.alloc(bytes, name));
    return path;
  };
  const sftpArgv = (extra: readonly string[] = []): string[] => [
    "sftp",
    ...extra,
    "-b",
    "-",
    "-i",
    clientKey,
    "-o",
    "BatchMode=yes",
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-P",
    String(t.upload.backendPort),
    `${user}@127.0.0.1`,
  ];
  const sftp = (batch: string) => {
    if (!holder) throw new Error("no namespace");
    return holder.exec(sftpArgv(), { input: batch, allowFail: true, timeoutMs: 30_000 });
  };

  beforeAll(async () => {
    scratch = mkdtempSync(join(tmpdir(), "pypi-sftp-"));
    chmodSync(scratch, 0o755);
    root = join(scratch, "pypi");
    clientKey = join(scratch, "client_ed25519");
    const wwwData = lookupUser("www-data");
    const base = topologyFor("staging");
    const u0 = base.upload.users[0];
    if (!u0) throw new Error("staging has no upload user");
    user = u0.name;
    const keygen = (path: string) =>
      spawn("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", path], { stdio: "ignore" });
    await Promise.all(
      [clientKey, join(scratch, "host_ed25519")].map(
        (p) =>
          new Promise((resolve, reject) => keygen(p).on("exit", (c) => (c === 0 ? resolve(c) : reject(c)))),
      ),
    );
    const publicKey = readFileSync(`${clientKey}.pub`, "utf8").trim().split(" ").slice(0, 2).join(" ");
    t = {
      ...base,
      storage: { ...base.storage, packageRoot: PACKAGE_ROOT },
      upload: { ...base.upload, maxFileBytes: MAX, users: [{ ...u0, publicKey }] },
    };
    const node = nodesWithRole(t, "app")[0];
    if (!node) throw new Error("no app node");

    // The package layout the storage node makes (ensure_package_layout), on a host directory.
    for (const d of ["", "incoming", `incoming/${user}`])
      mkdirSync(join(root, d), { recursive: true, mode: 0o755 });
    mkdirSync(join(root, "incoming", user, "upload"), { mode: 0o775 });
    chownSync(join(root, "incoming", user, "upload"), u0.uid, wwwData.gid);
    chmodSync(join(root, "incoming", user, "upload"), 0o775);
    mkdirSync(sftpStateDir(root), { mode: 0o755 });
    chownSync(sftpStateDir(root), wwwData.uid, wwwData.gid);
    writeFileSync(join(scratch, "sshd_config"), renderSshdConfig(t, node));
    const fsize = /^LimitFSIZE=([0-9]+)$/m.exec(renderSshLimitsDropIn(t))?.[1];
    expect(Number(fsize)).toBe(uploadFsizeLimit(t));

    // The watcher as the app ships it, minus the CLI around it.
    buildSync({
      stdin: {
        contents: [
          'import { watchUploadWriters } from "./src/app/sftp-events.ts";',
          "const [root, host] = process.argv.slice(2);",
          'void watchUploadWriters({ root, host, intervalMs: 200, writeAs: "www-data", log: (m) => console.error(m) });',
        ].join("\n"),
        resolveDir: projectRoot(),
        loader: "ts",
      },
      bundle: true,
      platform: "node",
      format: "cjs",
      outfile: join(scratch, "watch.cjs"),
      logLevel: "warning",
    });

    holder = await NamespaceHolder.start({
      name: "sftp upload node",
      iso: { net: true, pid: true },
      setup: [
        ...copyOnWriteMounts(["/etc", "/srv"], join(scratch, "cow")),
        "mount -t tmpfs tmpfs /run",
        "mkdir -p /run/sshd",
        `mkdir -p ${shq(PACKAGE_ROOT)} && mount --bind ${shq(root)} ${shq(PACKAGE_ROOT)}`,
        `id ${shq(user)} >/dev/null 2>&1 || useradd --uid ${u0.uid} --no-create-home --home-dir / --shell /usr/sbin/nologin --password '*' ${shq(user)}`,
        `install -m 0600 ${shq(join(scratch, "host_ed25519"))} ${shq(uploadHostKeyPath)}`,
        `install -d -m 0755 ${shq(authorizedKeysPath(user).replace(/\/[^/]+$/, ""))}`,
      ],
    });
    holder.exec(["sh", "-c", `cat >${shq(authorizedKeysPath(user))}`], {
      input: renderAuthorizedKeys(t, user),
    });
    holder.exec(["/usr/sbin/sshd", "-t", "-f", join(scratch, "sshd_config")]);
    const watcher = holder.argv(["node", join(scratch, "watch.cjs"), PACKAGE_ROOT, node.name]);
    const child = spawn(watcher[0] as string, watcher.slice(1), { stdio: ["ignore", "ignore", "pipe"] });
    children.push(child);
    let watcherLog = "";
    child.stderr?.on("data", (d: Buffer) => {
      watcherLog += d.toString();
    });
    // Started after the watcher, as ssh.service's drop-in orders it, under the drop-in's limit.
    holder.exec([
      "prlimit",
      `--fsize=${fsize}`,
      "/usr/sbin/sshd",
      "-f",
      join(scratch, "sshd_config"),
      "-E",
      join(scratch, "sshd.log"),
    ]);
    await until("the watcher's first scan", 10_000, () =>
      readScans(root).some((s) => s.host === node.name) ? true : undefined,
    ).catch((err) => {
      throw new Error(`${err}\n${watcherLog}`);
    });
  });

  afterAll(() => {
    for (const c of children) c.kill("SIGKILL");
    holder?.stop();
    if (scratch) rmSync(scratch, { recursive: true, force: true });
  });

  it("keeps a paused upload open until its client closes it, then reports it closed", async () => {
    const h = holder as NamespaceHolder;
    const src = local("paused-1.0.tar.gz", 600_000);
    // 800 kbit/s: a few seconds of transfer, so the client can be stopped halfway.
    const argv = h.argv([
      "sh",
      "-c",
      `echo $$ >/run/sftp-client.pid && exec ${sftpArgv(["-l", "800"]).map(shq).join(" ")}`,
    ]);
    const client = spawn(argv[0] as string, argv.slice(1), { stdio: ["pipe", "ignore", "pipe"] });
    children.push(client);
    const exited = new Promise<number | null>((resolve) => client.on("exit", (code) => resolve(code)));
    client.stdin?.end(`cd /upload\nput ${src} paused-1.0.tar.gz\n`);

    await until("the upload to start", 10_000, () => {
      try {
        return lstatSync(hostUpload("paused-1.0.tar.gz")).size > 0 ? true : undefined;
      } catch {
        return undefined;
      }
    });
    const pid = h.exec(["cat", "/run/sftp-client.pid"]).stdout.trim();
    h.exec(["kill", "-STOP", pid]);
    const pausedAt = Date.now();
    const verdicts: string[] = [];
    while (Date.now() - pausedAt < PAUSE_MS) {
      const v = closed("paused-1.0.tar.gz");
      expect(v.closed, v.why).toBe(false);
      verdicts.push(v.why);
      await sleep(500);
    }
    const st = lstatSync(hostUpload("paused-1.0.tar.gz"));
    // What the old rule looked at: no write for over 10 s, and the file incomplete.
    expect(Date.now() - st.mtimeMs).toBeGreaterThan(10_000);
    expect(st.size).toBeLessThan(600_000);
    expect(verdicts.at(-1)).toMatch(/^open for writing by pid [0-9]+ on app-/);

    h.exec(["kill", "-CONT", pid]);
    // The process that entered the namespaces stops itself when its child stops: continue it too.
    client.kill("SIGCONT");
    expect(await exited).toBe(0);
    const v = await until("the finished upload to be closed", 10_000, () => {
      const r = closed("paused-1.0.tar.gz");
      return r.closed ? r : undefined;
    });
    expect(v.why).toMatch(/^no writer on 1 app server/);
    expect(sha(hostUpload("paused-1.0.tar.gz"))).toBe(sha(src));
  });

  it("reports a finished upload closed, renamed or not; put, rename and rm work", async () => {
    const src = local("done-1.0.tar.gz", 4_000);
    const r = sftp(
      `cd /upload\nput ${src} tmp.part\nrename tmp.part done-1.0.tar.gz\nput ${src} gone.tar.gz\nrm gone.tar.gz\n`,
    );
    expect(r.status, r.stderr).toBe(0);
    const v = await until("the upload to be closed", 10_000, () => {
      const x = closed("done-1.0.tar.gz");
      return x.closed ? x : undefined;
    });
    expect(v.closed).toBe(true);
    expect(sha(hostUpload("done-1.0.tar.gz"))).toBe(sha(src));
    expect(() => lstatSync(hostUpload("gone.tar.gz"))).toThrow();
  });

  it("stops a file at the size limit while it is written: the client fails, the file is over the limit", async () => {
    const fits = local("fits-1.0.tar.gz", MAX);
    const ok = sftp(`put ${fits} /upload/fits-1.0.tar.gz\n`);
    expect(ok.status, ok.stderr).toBe(0);
    expect(lstatSync(hostUpload("fits-1.0.tar.gz")).size).toBe(MAX);

    const big = local("big-1.0.tar.gz", MAX + 200_000);
    const r = sftp(`put ${big} /upload/big-1.0.tar.gz\n`);
    expect(r.status).not.toBe(0);
    const v = await until("the killed session's file to be closed", 10_000, () => {
      const x = closed("big-1.0.tar.gz");
      return x.closed ? x : undefined;
    });
    expect(v.closed).toBe(true);
    // Closed but over the limit: the registrar rejects it by size, never registers a prefix.
    const size = lstatSync(hostUpload("big-1.0.tar.gz")).size;
    expect(size).toBe(uploadFsizeLimit(t));
    expect(size).toBeGreaterThan(t.upload.maxFileBytes);
  });

  it("refuses chmod, chown, mkdir and links in the upload tree", () => {
    const before = lstatSync(uploadDirOnHost()).mode;
    const src = local("mode-1.0.tar.gz", 100);
    expect(sftp(`put ${src} /upload/mode-1.0.tar.gz\n`).status).toBe(0);
    for (const cmd of [
      "chmod 777 /upload",
      "chmod 600 /upload/mode-1.0.tar.gz",
      "chown 0 /upload/mode-1.0.tar.gz",
      "mkdir /upload/d",
      "symlink /upload/mode-1.0.tar.gz /upload/s",
      "ln /upload/mode-1.0.tar.gz /upload/h",
    ]) {
      const r = sftp(`${cmd}\n`);
      expect(r.status, cmd).not.toBe(0);
      expect(r.stderr, cmd).toMatch(/Permission denied|does not support/);
    }
    expect(lstatSync(uploadDirOnHost()).mode).toBe(before);
    expect(lstatSync(hostUpload("mode-1.0.tar.gz")).mode & 0o777).toBe(0o644);
  });
});
