/**
 * `register`: move uploads from incoming/<user>/upload/ into packages/<project>/ and record
 * them. A file becomes visible only when its row is 'ok' and its file is in place; every
 * crash point leaves a 'pending' row that the next run reconciles. Rejected uploads go to
 * incoming/<user>/rejected/ with a `.reason` file: nothing is deleted, nothing overwritten.
 */
import { createHash, randomBytes } from "node:crypto";
import {
  closeSync,
  constants,
  createReadStream,
  existsSync,
  fstatSync,
  fsyncSync,
  linkSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  renameSync,
  type Stats,
  unlinkSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { createGunzip } from "node:zlib";
import type pg from "pg";
import type { AppConfig } from "./config.js";
import { type Db, isConnectionError } from "./db.js";
import { type ParsedFilename, parseFilename } from "./names.js";

/** Only one registrar at a time across all app servers (they share the volume and the database). */
const REGISTER_LOCK = 7_503_692;
const USER_RE = /^[a-z_][a-z0-9_-]{0,31}$/;
const CHUNK = 1024 * 1024;

export interface RegisterSummary {
  registered: string[];
  rejected: { user: string; file: string; reason: string }[];
  deferred: string[];
  recovered: string[];
}

export const layout = (root: string) => ({
  incoming: `${root}/incoming`,
  packages: `${root}/packages`,
  staging: `${root}/.staging`,
  upload: (user: string) => `${root}/incoming/${user}/upload`,
  rejected: (user: string) => `${root}/incoming/${user}/rejected`,
  stored: (project: string, filename: string) => `${root}/packages/${project}/${filename}`,
});

class Rejection extends Error {}

function sha256File(path: string | Buffer): string {
  const hash = createHash("sha256");
  const fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  try {
    const buf = Buffer.allocUnsafe(CHUNK);
    for (;;) {
      const n = readSync(fd, buf, 0, CHUNK, null);
      if (n === 0) break;
      hash.update(buf.subarray(0, n));
    }
  } finally {
    closeSync(fd);
  }
  return hash.digest("hex");
}

function fsyncDir(dir: string): void {
  const fd = openSync(dir, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/**
 * Copy the upload (already opened, checked regular) to a private staging file, hashing on the
 * way. The copy, not the uploader's inode, is what gets stored: the uploader cannot change it
 * after the hash was taken.
 */
function stageCopy(
  fd: number,
  stagingDir: string,
  maxBytes: number,
): { path: string; sha256: string; size: number } {
  const path = `${stagingDir}/${randomBytes(12).toString("hex")}`;
  const out = openSync(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o644);
  const hash = createHash("sha256");
  let size = 0;
  try {
    const buf = Buffer.allocUnsafe(CHUNK);
    for (;;) {
      const n = readSync(fd, buf, 0, CHUNK, null);
      if (n === 0) break;
      size += n;
      if (size > maxBytes)
        throw new Rejection(`file grew past the size limit of ${maxBytes} bytes while copying`);
      hash.update(buf.subarray(0, n));
      let off = 0;
      while (off < n) off += writeSync(out, buf, off, n - off);
    }
    fsyncSync(out);
  } catch (err) {
    closeSync(out);
    unlinkSync(path);
    throw err;
  }
  closeSync(out);
  return { path, sha256: hash.digest("hex"), size };
}

/** A zip (wheel or zip sdist) ends with an end-of-central-directory record. */
function checkZip(path: string, size: number): void {
  const tail = Math.min(size, 22 + 65535);
  if (size < 22) throw new Rejection("not a zip archive: too short");
  const fd = openSync(path, "r");
  try {
    const buf = Buffer.alloc(tail);
    readSync(fd, buf, 0, tail, size - tail);
    const head = Buffer.alloc(4);
    readSync(fd, head, 0, 4, 0);
    if (head.readUInt32LE(0) !== 0x04034b50)
      throw new Rejection("not a zip archive: bad local header signature");
    if (buf.lastIndexOf(Buffer.from([0x50, 0x4b, 0x05, 0x06])) < 0)
      throw new Rejection(
        "not a complete zip archive: no end-of-central-directory record (truncated upload?)",
      );
  } finally {
    closeSync(fd);
  }
}

/** A .tar.gz must inflate completely, CRC included: catches truncated uploads. */
async function checkGzip(path: string): Promise<void> {
  const head = readFileSync(path).subarray(0, 2);
  if (head.length < 2 || head[0] !== 0x1f || head[1] !== 0x8b) throw new Rejection("not a gzip file");
  await new Promise<void>((resolve, reject) => {
    const gunzip = createGunzip();
    gunzip.on("data", () => {});
    gunzip.on("end", resolve);
    gunzip.on("error", (err) => reject(new Rejection(`corrupt or truncated gzip: ${err.message}`)));
    createReadStream(path).on("error", reject).pipe(gunzip);
  });
}

interface Context {
  cfg: AppConfig;
  client: pg.PoolClient;
  log: (msg: string) => void;
  summary: RegisterSummary;
}

function decodeName(raw: Buffer): string | null {
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(raw);
  } catch {
    return null;
  }
}

/** Move a rejected upload aside with its reason; never overwrite an earlier rejection. */
function reject(ctx: Context, user: string, raw: Buffer, shown: string, reason: string): void {
  const L = layout(ctx.cfg.packageRoot);
  const dir = L.rejected(user);
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  let target = Buffer.concat([Buffer.from(`${dir}/`), raw]);
  if (existsSync(target))
    target = Buffer.concat([target, Buffer.from(`.${Date.now()}-${randomBytes(3).toString("hex")}`)]);
  renameSync(Buffer.concat([Buffer.from(`${L.upload(user)}/`), raw]), target);
  writeFileSync(
    Buffer.concat([target, Buffer.from(".reason")]),
    `${JSON.stringify({ file: shown, reason, at: new Date().toISOString() })}\n`,
    { mode: 0o644 },
  );
  ctx.log(`register: rejected ${user}/${shown}: ${reason}`);
  ctx.summary.rejected.push({ user, file: shown, reason });
}

async function registerOne(ctx: Context, user: string, raw: Buffer): Promise<void> {
  const { cfg, client } = ctx;
  const L = layout(cfg.packageRoot);
  const name = decodeName(raw);
  const shown = name ?? `0x${raw.toString("hex")}`;
  const source = Buffer.concat([Buffer.from(`${L.upload(user)}/`), raw]);
  const st = lstatSync(source);
  if (st.isSymbolicLink()) return reject(ctx, user, raw, shown, "is a symbolic link");
  if (!st.isFile()) return reject(ctx, user, raw, shown, "is not a regular file");
  if (Date.now() - st.mtimeMs < cfg.settleSeconds * 1000) {
    ctx.summary.deferred.push(`${user}/${shown}`);
    return;
  }
  if (name === null) return reject(ctx, user, raw, shown, "filename is not valid UTF-8");
  const parsed = parseFilename(name);
  if (!parsed.ok) return reject(ctx, user, raw, shown, parsed.reason);
  if (st.size > cfg.maxFileBytes)
    return reject(ctx, user, raw, shown, `size ${st.size} exceeds the limit of ${cfg.maxFileBytes} bytes`);
  if (st.nlink > 1) return reject(ctx, user, raw, shown, "file has more than one hard link");

  const dup = await client.query<{ sha256: string }>("SELECT sha256 FROM files WHERE filename = $1", [name]);
  if (dup.rows[0])
    return reject(ctx, user, raw, shown, duplicateReason(dup.rows[0].sha256, sha256File(source)));

  // O_NOFOLLOW + same inode: the file checked above is the file copied.
  let staged: { path: string; sha256: string; size: number };
  const fd = openSync(source, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  try {
    const fst: Stats = fstatSync(fd);
    if (!fst.isFile() || fst.ino !== st.ino || fst.dev !== st.dev)
      return reject(ctx, user, raw, shown, "file changed while being checked");
    mkdirSync(L.staging, { recursive: true, mode: 0o700 });
    try {
      staged = stageCopy(fd, L.staging, cfg.maxFileBytes);
    } catch (err) {
      if (err instanceof Rejection) return reject(ctx, user, raw, shown, err.message);
      throw err;
    }
  } finally {
    closeSync(fd);
  }
  try {
    if (parsed.value.archive === "zip") checkZip(staged.path, staged.size);
    else await checkGzip(staged.path);
    await store(ctx, user, parsed.value, staged);
  } catch (err) {
    if (existsSync(staged.path)) unlinkSync(staged.path);
    if (err instanceof Rejection) return reject(ctx, user, raw, shown, err.message);
    throw err;
  }
  unlinkSync(source);
  ctx.log(
    `register: stored ${parsed.value.project}/${name} from ${user} sha256=${staged.sha256} size=${staged.size}`,
  );
  ctx.summary.registered.push(`${parsed.value.project}/${name}`);
}

const duplicateReason = (existing: string, incoming: string): string =>
  existing === incoming
    ? "duplicate: this filename is already registered (identical content); files are never replaced"
    : "duplicate: this filename is already registered with different content; files are never replaced, upload a new version";

/** Pending row, then the file under its final name (link: never replaces), then 'ok'. */
async function store(
  ctx: Context,
  user: string,
  f: ParsedFilename,
  staged: { path: string; sha256: string; size: number },
): Promise<void> {
  const { client, cfg } = ctx;
  const L = layout(cfg.packageRoot);
  try {
    await client.query("BEGIN");
    await client.query(
      "INSERT INTO projects (name, display_name) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
      [f.project, f.name],
    );
    await client.query(
      "INSERT INTO files (filename, project, version, packagetype, sha256, size, uploader, state) VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending')",
      [f.filename, f.project, f.version, f.packagetype, staged.sha256, staged.size, user],
    );
    await client.query("COMMIT");
  } catch (err) {
    await client.query("ROLLBACK").catch(() => {});
    if ((err as { code?: string }).code === "23505") {
      const row = await client.query<{ sha256: string }>("SELECT sha256 FROM files WHERE filename = $1", [
        f.filename,
      ]);
      throw new Rejection(duplicateReason(row.rows[0]?.sha256 ?? "", staged.sha256));
    }
    throw err;
  }
  const dir = `${L.packages}/${f.project}`;
  const target = L.stored(f.project, f.filename);
  try {
    mkdirSync(dir, { recursive: true, mode: 0o755 });
    linkSync(staged.path, target);
    fsyncDir(dir);
  } catch (err) {
    await client.query("DELETE FROM files WHERE filename = $1 AND state = 'pending'", [f.filename]);
    if ((err as NodeJS.ErrnoException).code === "EEXIST")
      throw new Rejection(
        "a stored file of this name already exists (not in the index); it is never replaced",
      );
    throw err;
  }
  unlinkSync(staged.path);
  await client.query(
    "UPDATE files SET state = 'ok', uploaded_at = now() WHERE filename = $1 AND state = 'pending'",
    [f.filename],
  );
}

/**
 * Finish or undo registrations a crash interrupted: a pending row whose stored file is
 * complete becomes 'ok' (and its upload, if still there, is removed); one without a stored
 * file is deleted, so its upload is retried. Staging leftovers are removed.
 */
async function recover(ctx: Context): Promise<void> {
  const L = layout(ctx.cfg.packageRoot);
  const { rows } = await ctx.client.query<{
    filename: string;
    project: string;
    sha256: string;
    uploader: string;
  }>("SELECT filename, project, sha256, uploader FROM files WHERE state = 'pending' ORDER BY filename");
  for (const r of rows) {
    const stored = L.stored(r.project, r.filename);
    if (existsSync(stored) && sha256File(stored) === r.sha256) {
      await ctx.client.query("UPDATE files SET state = 'ok' WHERE filename = $1 AND state = 'pending'", [
        r.filename,
      ]);
      const upload = `${L.upload(r.uploader)}/${r.filename}`;
      if (existsSync(upload) && lstatSync(upload).isFile() && sha256File(upload) === r.sha256)
        unlinkSync(upload);
      ctx.log(`register: recovered ${r.project}/${r.filename}: stored file complete, marked ok`);
    } else if (existsSync(stored)) {
      ctx.log(
        `register: ${r.project}/${r.filename}: stored file does not match its pending row; left pending for an operator`,
      );
      continue;
    } else {
      await ctx.client.query("DELETE FROM files WHERE filename = $1 AND state = 'pending'", [r.filename]);
      ctx.log(
        `register: recovered ${r.project}/${r.filename}: no stored file, pending row removed (upload will be retried)`,
      );
    }
    ctx.summary.recovered.push(`${r.project}/${r.filename}`);
  }
  if (existsSync(L.staging)) for (const f of readdirSync(L.staging)) unlinkSync(`${L.staging}/${f}`);
}

/** Register every settled upload of `users` (default: every directory under incoming/). */
export async function register(
  cfg: AppConfig,
  db: Db,
  log: (msg: string) => void,
  users?: readonly string[],
): Promise<RegisterSummary> {
  const summary: RegisterSummary = { registered: [], rejected: [], deferred: [], recovered: [] };
  const L = layout(cfg.packageRoot);
  const client = await db.connect();
  try {
    const lock = await client.query<{ ok: boolean }>("SELECT pg_try_advisory_lock($1) AS ok", [
      REGISTER_LOCK,
    ]);
    if (!lock.rows[0]?.ok) {
      log("register: another registrar holds the lock; nothing done");
      return summary;
    }
    const ctx: Context = { cfg, client, log, summary };
    try {
      await recover(ctx);
      const all = existsSync(L.incoming)
        ? readdirSync(L.incoming, { withFileTypes: true })
            .filter((d) => d.isDirectory())
            .map((d) => d.name)
        : [];
      for (const user of (users ?? all).filter((u) => all.includes(u)).sort()) {
        if (!USER_RE.test(user)) {
          log(`register: skipping incoming directory with an invalid user name: ${JSON.stringify(user)}`);
          continue;
        }
        const dir = L.upload(user);
        if (!existsSync(dir)) continue;
        const entries = readdirSync(dir, { encoding: "buffer" }).sort(Buffer.compare);
        for (const raw of entries) {
          try {
            await registerOne(ctx, user, raw);
          } catch (err) {
            // Left in place for the next run: an infrastructure error is not the uploader's fault.
            log(
              `register: ${user}/${decodeName(raw) ?? raw.toString("hex")} left for retry: ${err instanceof Error ? err.message : String(err)}`,
            );
            if (isConnectionError(err)) throw err;
          }
        }
      }
    } finally {
      await client.query("SELECT pg_advisory_unlock($1)", [REGISTER_LOCK]).catch(() => {});
    }
  } finally {
    client.release();
  }
  return summary;
}
