/**
 * A second copy of every registered file, outside the package volume: an Object-Locked,
 * versioned S3 bucket on AWS, a directory in the lab. `copy-files` copies what the database
 * says is not copied yet and checks the copy's sha256; `restore-files` brings files back from
 * the copies, and places only bytes whose sha256 equals the file's row.
 *
 * A registration creates the marker `copy-queue/wanted`; the copy job's path unit starts it
 * at once, its timer catches whatever a lost marker or a failed run left behind.
 */
import { spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import {
  chmodSync,
  chownSync,
  closeSync,
  constants,
  existsSync,
  fsyncSync,
  mkdirSync,
  openSync,
  readSync,
  renameSync,
  rmSync,
  statSync,
  unlinkSync,
} from "node:fs";
import { basename, dirname } from "node:path";
import type pg from "pg";
import type { AppConfig } from "./config.js";
import { type Db, isConnectionError } from "./db.js";
import { fsyncDir, writeAll } from "./fsutil.js";
import { inspectDistribution } from "./inspect.js";
import { parseFilename } from "./names.js";
import { publishProject, publishRoot, withProjectLock } from "./publish.js";
import { stagingPath, storeLayout } from "./registration.js";

export const copyQueueDir = (root: string): string => `${root}/copy-queue`;
/** The copy job's wake-up call: its path unit starts the job while this file exists. */
export const copyMarkerPath = (root: string): string => `${copyQueueDir(root)}/wanted`;

/** A file's key in the store: its path below packages/. */
export const copyKey = (project: string, filename: string): string => `${project}/${filename}`;

const message = (err: unknown): string => (err instanceof Error ? err.message : String(err));

/**
 * Ask for a copy run. Never fails the caller: the registration is already committed, and the
 * timer copies the file later if the marker cannot be made.
 */
export function requestCopies(root: string, log: (msg: string) => void): void {
  try {
    mkdirSync(copyQueueDir(root), { recursive: true, mode: 0o755 });
    closeSync(openSync(copyMarkerPath(root), "a", 0o644));
  } catch (err) {
    log(`copies: cannot create ${copyMarkerPath(root)} (the copy timer catches up): ${message(err)}`);
  }
}

export interface CopyStore {
  /** Store `localPath` under `key`; the bytes must hash to `sha256Hex`, else nothing is stored. */
  put(key: string, localPath: string, sha256Hex: string): Promise<void>;
  /** Whether the object under `key` exists and hashes to `sha256Hex`. */
  verify(key: string, sha256Hex: string): Promise<boolean>;
  /** Write the object under `key` to `destPath` (which must not exist); MissingInStore if there is none. */
  fetch(key: string, destPath: string): Promise<void>;
  describe(): string;
}

export class MissingInStore extends Error {
  override readonly name = "MissingInStore";
}

const CHUNK = 1024 * 1024;

/** Stream `fd` to `onChunk`; the caller owns the descriptor. */
function readChunks(fd: number, onChunk: (b: Buffer) => void): void {
  const buf = Buffer.allocUnsafe(CHUNK);
  for (;;) {
    const n = readSync(fd, buf, 0, CHUNK, null);
    if (n === 0) return;
    onChunk(buf.subarray(0, n));
  }
}

/** sha256 of a regular file (a symlink is refused, not followed). */
export function sha256OfFile(path: string): string {
  const hash = createHash("sha256");
  const fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  try {
    readChunks(fd, (b) => hash.update(b));
  } finally {
    closeSync(fd);
  }
  return hash.digest("hex");
}

/** sha256 of `path`, or null when it is missing or not a readable regular file. */
function sha256OrNull(path: string): string | null {
  try {
    return statSync(path).isFile() ? sha256OfFile(path) : null;
  } catch {
    return null;
  }
}

/** Copy `src` to the new file `dest`, fsynced, hashing on the way; on failure `dest` is removed. */
function copyHashing(src: string, dest: string): string {
  const hash = createHash("sha256");
  const input = openSync(src, constants.O_RDONLY | constants.O_NOFOLLOW);
  try {
    const out = openSync(dest, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o644);
    try {
      readChunks(input, (b) => {
        hash.update(b);
        writeAll(out, b);
      });
      fsyncSync(out);
    } catch (err) {
      closeSync(out);
      unlinkSync(dest);
      throw err;
    }
    closeSync(out);
  } finally {
    closeSync(input);
  }
  return hash.digest("hex");
}

/** Keys are `<project>/<filename>`: relative, no empty, `.` or `..` segment, so they stay inside the store. */
function checkKey(key: string): void {
  const parts = key.split("/");
  if (key.includes("\0") || parts.some((p) => p === "" || p === "." || p === ".."))
    throw new Error(`invalid file copy key ${JSON.stringify(key)}`);
}

/**
 * The lab's stand-in for the bucket. An object appears whole or not at all (written beside,
 * fsynced, renamed), and, like a versioned bucket, it never loses a version: other content
 * under a key is kept as `<key>.<timestamp>` and the put reports it as an error.
 */
export class DirectoryStore implements CopyStore {
  constructor(readonly root: string) {}

  private path(key: string): string {
    checkKey(key);
    return `${this.root}/${key}`;
  }

  async put(key: string, localPath: string, sha256Hex: string): Promise<void> {
    const target = this.path(key);
    // The root is the bucket: a missing one (say, an unmounted share) must not be created here.
    if (!statSync(this.root, { throwIfNoEntry: false })?.isDirectory())
      throw new Error(`file copy store ${this.root} is not a directory`);
    const previous = sha256OrNull(target);
    if (previous === sha256Hex) return;
    const dir = dirname(target);
    mkdirSync(dir, { recursive: true, mode: 0o755 });
    // A dot name never collides with a key: no distribution filename starts with a dot.
    const tmp = `${dir}/.${basename(target)}.${randomBytes(6).toString("hex")}.part`;
    const got = copyHashing(localPath, tmp);
    if (got !== sha256Hex) {
      unlinkSync(tmp);
      throw new Error(`${localPath} hashes to ${got}, not ${sha256Hex}: not copied`);
    }
    let kept: string | undefined;
    if (existsSync(target)) {
      kept = `${target}.${new Date().toISOString().replace(/[-:]/g, "")}`;
      if (existsSync(kept)) kept = `${kept}-${randomBytes(3).toString("hex")}`;
      renameSync(target, kept);
    }
    renameSync(tmp, target);
    fsyncDir(dir);
    if (kept !== undefined)
      throw new Error(
        `${this.describe()}: ${key} held other content (sha256 ${previous ?? "unreadable"}), kept as ${basename(kept)}; now ${sha256Hex}`,
      );
  }

  async verify(key: string, sha256Hex: string): Promise<boolean> {
    return sha256OrNull(this.path(key)) === sha256Hex;
  }

  async fetch(key: string, destPath: string): Promise<void> {
    const path = this.path(key);
    if (!existsSync(path)) throw new MissingInStore(`${this.describe()}: no copy of ${key}`);
    copyHashing(path, destPath);
  }

  describe(): string {
    return `directory ${this.root}`;
  }
}

export interface AwsResult {
  readonly status: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs `aws <argv>` (no shell); rejects only when it cannot be started or times out. */
export type AwsRunner = (argv: readonly string[], timeoutMs: number) => Promise<AwsResult>;

/** JSON answers, no pager; a stalled connection fails in a minute rather than at the whole command's timeout. */
export const AWS_CLI_OPTIONS: readonly string[] = [
  "--output",
  "json",
  "--no-cli-pager",
  "--cli-connect-timeout",
  "10",
  "--cli-read-timeout",
  "60",
];

/** Output kept per stream: enough for the CLI's JSON answer and its error message. */
const OUTPUT_CAP = 64 * 1024;

export const runAws: AwsRunner = (argv, timeoutMs) =>
  new Promise((resolve, reject) => {
    const child = spawn("aws", argv, { stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    let timedOut = false;
    child.stdout.setEncoding("utf8").on("data", (s: string) => {
      if (stdout.length < OUTPUT_CAP) stdout += s;
    });
    child.stderr.setEncoding("utf8").on("data", (s: string) => {
      if (stderr.length < OUTPUT_CAP) stderr += s;
    });
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill("SIGKILL");
    }, timeoutMs);
    child.on("error", (err) => {
      clearTimeout(timer);
      reject(new Error(`aws ${argv.slice(0, 2).join(" ")}: ${err.message}`));
    });
    child.on("close", (status) => {
      clearTimeout(timer);
      if (timedOut)
        reject(
          new Error(`aws ${argv.slice(0, 2).join(" ")} timed out after ${timeoutMs} ms: ${stderr.trim()}`),
        );
      else resolve({ status, stdout, stderr });
    });
  });

export interface S3Timeouts {
  /** head-object, and the fixed part of a put. */
  readonly requestMs: number;
  /** A put may also take this long per MB (1000 ms: it must move at least 1 MB/s). */
  readonly msPerMb: number;
  /** A get; its size is not known beforehand. */
  readonly fetchMs: number;
}

const DEFAULT_TIMEOUTS: S3Timeouts = { requestMs: 120_000, msPerMb: 1_000, fetchMs: 3_600_000 };

/** The base64 of the digest, as S3's x-amz-checksum-sha256 carries it. */
export const sha256Base64 = (sha256Hex: string): string => Buffer.from(sha256Hex, "hex").toString("base64");

/** The AWS CLI's answer for a key that is not there (404 on HEAD, NoSuchKey on GET). */
const NOT_FOUND = /\((404|NoSuchKey)\)|Not Found/;

/**
 * The bucket, through the AWS CLI with the instance profile's credentials. Object Lock
 * requires a checksum on every put; S3 refuses a body that does not match it.
 */
export class S3Store implements CopyStore {
  constructor(
    readonly bucket: string,
    readonly prefix: string,
    private readonly run: AwsRunner = runAws,
    private readonly timeouts: S3Timeouts = DEFAULT_TIMEOUTS,
  ) {}

  objectKey(key: string): string {
    checkKey(key);
    return this.prefix === "" ? key : `${this.prefix}/${key}`;
  }

  private async aws(argv: readonly string[], timeoutMs: number): Promise<AwsResult> {
    return this.run([...argv, ...AWS_CLI_OPTIONS], timeoutMs);
  }

  private failure(op: string, key: string, r: AwsResult): Error {
    return new Error(
      `aws s3api ${op} s3://${this.bucket}/${this.objectKey(key)} exited ${r.status}: ${r.stderr.trim()}`,
    );
  }

  async put(key: string, localPath: string, sha256Hex: string): Promise<void> {
    const size = statSync(localPath).size;
    const r = await this.aws(
      [
        "s3api",
        "put-object",
        "--bucket",
        this.bucket,
        "--key",
        this.objectKey(key),
        "--body",
        localPath,
        "--checksum-sha256",
        sha256Base64(sha256Hex),
      ],
      this.timeouts.requestMs + Math.ceil((size / 1e6) * this.timeouts.msPerMb),
    );
    if (r.status !== 0) throw this.failure("put-object", key, r);
  }

  async verify(key: string, sha256Hex: string): Promise<boolean> {
    const r = await this.aws(
      [
        "s3api",
        "head-object",
        "--bucket",
        this.bucket,
        "--key",
        this.objectKey(key),
        "--checksum-mode",
        "ENABLED",
      ],
      this.timeouts.requestMs,
    );
    if (r.status !== 0) {
      if (NOT_FOUND.test(r.stderr)) return false;
      throw this.failure("head-object", key, r);
    }
    let head: { ChecksumSHA256?: unknown };
    try {
      head = JSON.parse(r.stdout);
    } catch {
      throw new Error(
        `aws s3api head-object ${this.objectKey(key)}: unreadable answer ${r.stdout.slice(0, 200)}`,
      );
    }
    return head.ChecksumSHA256 === sha256Base64(sha256Hex);
  }

  async fetch(key: string, destPath: string): Promise<void> {
    if (existsSync(destPath)) throw new Error(`${destPath} exists`);
    // With checksum mode on, the CLI checks the body against the stored checksum.
    const r = await this.aws(
      [
        "s3api",
        "get-object",
        "--bucket",
        this.bucket,
        "--key",
        this.objectKey(key),
        "--checksum-mode",
        "ENABLED",
        destPath,
      ],
      this.timeouts.fetchMs,
    ).catch((err: unknown) => {
      rmSync(destPath, { force: true });
      throw err;
    });
    if (r.status !== 0) {
      rmSync(destPath, { force: true });
      if (NOT_FOUND.test(r.stderr))
        throw new MissingInStore(`${this.describe()}: no copy of ${key}: ${r.stderr.trim()}`);
      throw this.failure("get-object", key, r);
    }
  }

  describe(): string {
    return `s3://${this.bucket}${this.prefix === "" ? "" : `/${this.prefix}`}`;
  }
}

/** The store PYPI_FILE_COPIES names: `s3://bucket[/prefix]` or an absolute directory. */
export function storeFor(location: string, run: AwsRunner = runAws): CopyStore {
  const s3 = /^s3:\/\/([^/]+)(?:\/(.*))?$/.exec(location);
  if (s3) return new S3Store(s3[1] as string, (s3[2] ?? "").replace(/^\/+|\/+$/g, ""), run);
  if (location.startsWith("/")) return new DirectoryStore(location.replace(/(.)\/+$/, "$1"));
  throw new Error(
    `file copy store ${JSON.stringify(location)}: expected s3://bucket/prefix or an absolute directory`,
  );
}

interface FileRow {
  filename: string;
  project: string;
  sha256: string;
  size: string;
  core_metadata_sha256?: string | null;
}

/**
 * A wheel's `.metadata` (PEP 658) is not copied: it is the wheel's own METADATA, so it is read
 * again from the restored wheel and written only if it hashes to the row.
 */
async function restoreCoreMetadata(
  cfg: AppConfig,
  row: FileRow,
  target: string,
  owner: { uid: number; gid: number },
  summary: RestoreSummary,
  log: (msg: string) => void,
): Promise<void> {
  const want = row.core_metadata_sha256;
  const metaPath = `${target}.metadata`;
  if (!want || sha256OrNull(metaPath) === want) return;
  const parsed = parseFilename(row.filename);
  const inspected = parsed.ok ? await inspectDistribution(target, parsed.value) : undefined;
  if (!inspected?.ok) {
    summary.failed++;
    log(`restore-files: ${row.filename}: its metadata cannot be read again from the restored file`);
    return;
  }
  const bytes = inspected.value.coreMetadata;
  if (createHash("sha256").update(bytes).digest("hex") !== want) {
    summary.mismatched++;
    log(`restore-files: ${row.filename}: METADATA does not hash to the row's core_metadata_sha256`);
    return;
  }
  const tmp = stagingPath(cfg.packageRoot);
  try {
    const fd = openSync(tmp, "wx", 0o644);
    try {
      writeAll(fd, bytes);
    } finally {
      closeSync(fd);
    }
    place(tmp, metaPath, owner);
    summary.metadataRestored++;
  } finally {
    rmSync(tmp, { force: true });
  }
}

export interface CopySummary {
  copied: number;
  failed: number;
  /** Rows still without a verified copy after this run (the failed ones, and newer ones). */
  pending: number;
  /** Age of the oldest of them since its registration; 0 when none. */
  oldestPendingSeconds: number;
  bytes: number;
  seconds: number;
}

const elapsed = (since: number): number => Math.round((performance.now() - since) / 10) / 100;

/** A failure of the file or the store, never of the database connection. */
class CopyFailure extends Error {}

async function copyChecked(cfg: AppConfig, store: CopyStore, row: FileRow): Promise<void> {
  const local = storeLayout(cfg.packageRoot).stored(row.project, row.filename);
  const key = copyKey(row.project, row.filename);
  let good: boolean;
  try {
    // A local file that no longer matches its row must not become the copy a restore trusts.
    const got = sha256OfFile(local);
    if (got !== row.sha256) throw new Error(`${local} hashes to ${got}, its row says ${row.sha256}`);
    await store.put(key, local, row.sha256);
    good = await store.verify(key, row.sha256);
  } catch (err) {
    throw new CopyFailure(message(err));
  }
  if (!good)
    throw new CopyFailure(`${store.describe()}: ${key} does not hash to ${row.sha256} after the copy`);
}

/**
 * Copy one file under its row's lock; null when another copier holds the row or it is done.
 * The lock is per file, so a yank waits for one copy at most, never for a batch.
 */
async function copyOne(
  client: pg.ClientBase,
  cfg: AppConfig,
  store: CopyStore,
  filename: string,
): Promise<number | null> {
  await client.query("BEGIN");
  try {
    const { rows } = await client.query<FileRow>(
      `SELECT filename, project, sha256, size FROM files
        WHERE filename = $1 AND state = 'ok' AND copied_at IS NULL FOR UPDATE SKIP LOCKED`,
      [filename],
    );
    const row = rows[0];
    if (!row) {
      await client.query("COMMIT");
      return null;
    }
    await copyChecked(cfg, store, row);
    await client.query("UPDATE files SET copied_at = now() WHERE filename = $1", [row.filename]);
    await client.query("COMMIT");
    return Number(row.size);
  } catch (err) {
    await client.query("ROLLBACK").catch(() => {});
    throw err;
  }
}

/**
 * Copy every served file without a verified copy. Several app servers may run this at once:
 * each file is taken under `FOR UPDATE SKIP LOCKED`. One file's failure does not stop the
 * others; a lost database connection does.
 */
export async function copyFiles(
  cfg: AppConfig,
  db: Db,
  store: CopyStore,
  log: (msg: string) => void,
  opts: { batch?: number } = {},
): Promise<CopySummary> {
  const started = performance.now();
  // Removed before looking: a registration from now on makes a new one, so nothing is missed.
  try {
    rmSync(copyMarkerPath(cfg.packageRoot), { force: true });
  } catch (err) {
    log(`copy-files: cannot remove ${copyMarkerPath(cfg.packageRoot)}: ${message(err)}`);
  }
  const summary: CopySummary = {
    copied: 0,
    failed: 0,
    pending: 0,
    oldestPendingSeconds: 0,
    bytes: 0,
    seconds: 0,
  };
  const client = await db.connect();
  try {
    // Keyset order: a failed file is not retried within the run, the next run tries again.
    let after = "";
    for (;;) {
      const { rows } = await client.query<{ filename: string }>(
        `SELECT filename FROM files WHERE copied_at IS NULL AND state = 'ok' AND filename > $1
          ORDER BY filename LIMIT $2`,
        [after, opts.batch ?? 100],
      );
      if (rows.length === 0) break;
      for (const { filename } of rows) {
        after = filename;
        try {
          const bytes = await copyOne(client, cfg, store, filename);
          if (bytes === null) continue;
          summary.copied++;
          summary.bytes += bytes;
        } catch (err) {
          if (!(err instanceof CopyFailure) && isConnectionError(err)) throw err;
          summary.failed++;
          log(`copy-files: ${filename} not copied to ${store.describe()}: ${message(err)}`);
        }
      }
    }
    const { rows } = await client.query<{ pending: string; oldest: string }>(
      `SELECT count(*) AS pending, COALESCE(EXTRACT(EPOCH FROM now() - min(uploaded_at)), 0) AS oldest
         FROM files WHERE state = 'ok' AND copied_at IS NULL`,
    );
    summary.pending = Number(rows[0]?.pending ?? 0);
    summary.oldestPendingSeconds = Math.max(0, Math.floor(Number(rows[0]?.oldest ?? 0)));
  } finally {
    client.release();
  }
  summary.seconds = elapsed(started);
  return summary;
}

export interface RestoreSummary {
  checked: number;
  restored: number;
  alreadyGood: number;
  /** The store's copy does not hash to the row: the local file is left as it was. */
  mismatched: number;
  missingInStore: number;
  /** Any other error (the store unreachable, a permission): nothing placed. */
  failed: number;
  bytes: number;
  seconds: number;
  /** Restored bytes per second of the run, in MB (10^6). */
  mbPerSecond: number;
  /** PEP 658 `.metadata` files written again from their restored wheel, each equal to its row. */
  metadataRestored: number;
  /** Projects whose static pages were written again (the volume may have lost them too). */
  pagesPublished: number;
}

/**
 * Put a fetched, checked file in place as registration leaves one: mode 0644, owned like
 * packages/ (the app's user) when run as root. The rename replaces a corrupt file atomically.
 */
function place(tmp: string, target: string, owner: { uid: number; gid: number }): void {
  const asRoot = process.getuid?.() === 0;
  const fd = openSync(tmp, constants.O_RDONLY);
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  chmodSync(tmp, 0o644);
  if (asRoot) chownSync(tmp, owner.uid, owner.gid);
  const dir = dirname(target);
  if (!existsSync(dir)) {
    mkdirSync(dir, { mode: 0o755 });
    if (asRoot) chownSync(dir, owner.uid, owner.gid);
    fsyncDir(dirname(dir));
  }
  renameSync(tmp, target);
  fsyncDir(dir);
}

/**
 * Bring back every served file that is missing or whose bytes differ from its row (every
 * served file with `all`) from the store. Each copy is fetched into .staging/ on the package
 * volume and placed only when its sha256 equals the row's; the pages are not touched.
 */
export async function restoreFiles(
  cfg: AppConfig,
  db: Db,
  store: CopyStore,
  log: (msg: string) => void,
  opts: { all?: boolean; batch?: number } = {},
): Promise<RestoreSummary> {
  const started = performance.now();
  const L = storeLayout(cfg.packageRoot);
  const owner = statSync(L.packages);
  const summary: RestoreSummary = {
    checked: 0,
    restored: 0,
    alreadyGood: 0,
    mismatched: 0,
    missingInStore: 0,
    failed: 0,
    bytes: 0,
    seconds: 0,
    mbPerSecond: 0,
    metadataRestored: 0,
    pagesPublished: 0,
  };
  const client = await db.connect();
  try {
    let after = "";
    for (;;) {
      const { rows } = await client.query<FileRow>(
        `SELECT filename, project, sha256, size, core_metadata_sha256 FROM files
          WHERE state = 'ok' AND filename > $1 ORDER BY filename LIMIT $2`,
        [after, opts.batch ?? 500],
      );
      if (rows.length === 0) break;
      for (const row of rows) {
        after = row.filename;
        summary.checked++;
        const target = L.stored(row.project, row.filename);
        if (!opts.all && sha256OrNull(target) === row.sha256) {
          summary.alreadyGood++;
          await restoreCoreMetadata(cfg, row, target, owner, summary, log);
          continue;
        }
        const key = copyKey(row.project, row.filename);
        const tmp = stagingPath(cfg.packageRoot);
        try {
          await store.fetch(key, tmp);
          const got = sha256OfFile(tmp);
          if (got !== row.sha256) {
            summary.mismatched++;
            log(`restore-files: ${store.describe()}: ${key} hashes to ${got}, its row says ${row.sha256}`);
            continue;
          }
          place(tmp, target, owner);
          summary.restored++;
          summary.bytes += Number(row.size);
          await restoreCoreMetadata(cfg, row, target, owner, summary, log);
        } catch (err) {
          if (err instanceof MissingInStore) summary.missingInStore++;
          else summary.failed++;
          log(`restore-files: ${key} not restored: ${message(err)}`);
        } finally {
          rmSync(tmp, { force: true });
        }
      }
    }
    // The pages live on the same volume: write every project's again, then the root.
    const projects = await client.query<{ name: string }>("SELECT name FROM projects ORDER BY name");
    for (const { name } of projects.rows) {
      await withProjectLock(client, name, () => publishProject(client, cfg, name, { root: false }));
      summary.pagesPublished++;
    }
    await publishRoot(client, cfg);
  } finally {
    client.release();
  }
  summary.seconds = elapsed(started);
  summary.mbPerSecond =
    summary.seconds > 0 ? Math.round((summary.bytes / 1e6 / summary.seconds) * 100) / 100 : 0;
  return summary;
}
