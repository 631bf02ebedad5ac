/**
 * `register`: the SFTP door. Uploads in incoming/<user>/upload/ are copied to a private
 * staging file and handed to the one registration (registration.ts) that the upload API uses
 * too. Every crash point leaves a 'pending' row that the next run reconciles. Rejected uploads
 * go to incoming/<user>/rejected/ with a `.reason` file and expire after the retention time.
 */
import { createHash, randomBytes } from "node:crypto";
import {
  closeSync,
  constants,
  existsSync,
  fstatSync,
  fsyncSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readSync,
  renameSync,
  rmSync,
  type Stats,
  unlinkSync,
  writeFileSync,
} from "node:fs";
import type pg from "pg";
import type { AppConfig } from "./config.js";
import { type Db, isConnectionError } from "./db.js";
import { writeAll } from "./fsutil.js";
import { parseFilename } from "./names.js";
import { publishProject, publishRoot, tryProjectLock } from "./publish.js";
import { type Outcome, registerDistribution, type Staged, stagingPath, storeLayout } from "./registration.js";
import { uploadClosed } from "./sftp-events.js";
import { ACCOUNT_RE } from "./tokens.js";

/** Only one registrar at a time across all app servers (they share the volume and the database). */
const REGISTER_LOCK = 7_503_692;
const CHUNK = 1024 * 1024;

export interface RegisterSummary {
  registered: string[];
  rejected: { user: string; file: string; reason: string }[];
  deferred: string[];
  recovered: string[];
  expired: string[];
}

export const layout = (root: string) => ({
  ...storeLayout(root),
  incoming: `${root}/incoming`,
  upload: (user: string) => `${root}/incoming/${user}/upload`,
  rejected: (user: string) => `${root}/incoming/${user}/rejected`,
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

/**
 * Copy the upload (already opened, checked regular) to a private staging file, hashing on the
 * way. The copy, not the uploader's inode, is what gets stored: the uploader cannot change it
 * after the hash was taken.
 */
function stageCopy(fd: number, root: string, maxBytes: number): Staged {
  const path = stagingPath(root);
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
      writeAll(out, buf.subarray(0, n));
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
  const v = uploadClosed(cfg.packageRoot, user, raw, st, { hosts: cfg.uploadHosts });
  if (!v.closed) {
    ctx.summary.deferred.push(`${user}/${shown}`);
    ctx.log(`register: ${user}/${shown} deferred: ${v.why}`);
    return;
  }
  if (name === null) return reject(ctx, user, raw, shown, "filename is not valid UTF-8");
  const parsed = parseFilename(name);
  if (!parsed.ok) return reject(ctx, user, raw, shown, parsed.reason);
  if (st.size > cfg.maxFileBytes)
    return reject(ctx, user, raw, shown, `size ${st.size} exceeds the limit of ${cfg.maxFileBytes} bytes`);
  if (st.nlink > 1) return reject(ctx, user, raw, shown, "file has more than one hard link");

  // O_NOFOLLOW + same inode: the file checked above is the file copied.
  let staged: { path: string; sha256: string; size: number };
  const fd = openSync(source, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  try {
    const fst: Stats = fstatSync(fd);
    if (!fst.isFile() || fst.ino !== st.ino || fst.dev !== st.dev)
      return reject(ctx, user, raw, shown, "file changed while being checked");
    try {
      staged = stageCopy(fd, cfg.packageRoot, cfg.maxFileBytes);
    } catch (err) {
      if (err instanceof Rejection) return reject(ctx, user, raw, shown, err.message);
      throw err;
    }
  } finally {
    closeSync(fd);
  }
  let outcome: Outcome;
  try {
    outcome = await registerDistribution(
      { cfg, client, log: ctx.log },
      { account: user, via: "sftp", filename: name, staged, allowedProjects: null },
    );
  } finally {
    if (existsSync(staged.path)) unlinkSync(staged.path);
  }
  if (!outcome.ok) return reject(ctx, user, raw, shown, outcome.reason);
  unlinkSync(source);
  ctx.summary.registered.push(`${outcome.project}/${name}`);
}

/** Staging files older than this belong to no live registration (an upload takes minutes, not hours). */
const STAGING_STALE_MS = 6 * 3600 * 1000;

/**
 * Finish or undo registrations a crash interrupted: a pending row whose stored file is
 * complete becomes 'ok' (and its upload, if still there, is removed); one without a stored
 * file is deleted, so its upload is retried. A project whose lock is held is being registered
 * right now (the upload API) and is left alone. Stale staging files are removed and dirty
 * pages rewritten.
 */
async function recover(ctx: Context): Promise<void> {
  const L = layout(ctx.cfg.packageRoot);
  const { client, cfg } = ctx;
  const { rows } = await client.query<{
    filename: string;
    project: string;
    sha256: string;
    uploader: string;
  }>("SELECT filename, project, sha256, uploader FROM files WHERE state = 'pending' ORDER BY filename");
  for (const r of rows) {
    await tryProjectLock(client, r.project, async () => {
      const stored = L.stored(r.project, r.filename);
      if (existsSync(stored) && sha256File(stored) === r.sha256) {
        await client.query("UPDATE files SET state = 'ok' WHERE filename = $1 AND state = 'pending'", [
          r.filename,
        ]);
        await client.query("UPDATE projects SET pages_dirty = true WHERE name = $1", [r.project]);
        const upload = `${L.upload(r.uploader)}/${r.filename}`;
        if (existsSync(upload) && lstatSync(upload).isFile() && sha256File(upload) === r.sha256)
          unlinkSync(upload);
        ctx.log(`register: recovered ${r.project}/${r.filename}: stored file complete, marked ok`);
      } else if (existsSync(stored)) {
        ctx.log(
          `register: ${r.project}/${r.filename}: stored file does not match its pending row; left pending for an operator`,
        );
        return;
      } else {
        await client.query("DELETE FROM files WHERE filename = $1 AND state = 'pending'", [r.filename]);
        ctx.log(
          `register: recovered ${r.project}/${r.filename}: no stored file, pending row removed (upload will be retried)`,
        );
      }
      ctx.summary.recovered.push(`${r.project}/${r.filename}`);
    });
  }
  if (existsSync(L.staging))
    for (const f of readdirSync(L.staging)) {
      const path = `${L.staging}/${f}`;
      if (Date.now() - lstatSync(path).mtimeMs > STAGING_STALE_MS) unlinkSync(path);
    }
  const dirty = await client.query<{ name: string }>(
    "SELECT name FROM projects WHERE pages_dirty ORDER BY name",
  );
  for (const { name } of dirty.rows)
    await tryProjectLock(client, name, () => publishProject(client, cfg, name, { root: false }));
  if (dirty.rows.length > 0) await publishRoot(client, cfg);
}

/** Rejected uploads (and their reasons) older than the retention are deleted. */
function expireRejected(ctx: Context, user: string): void {
  const dir = layout(ctx.cfg.packageRoot).rejected(user);
  if (!existsSync(dir)) return;
  const cutoff = Date.now() - ctx.cfg.rejectedRetentionSeconds * 1000;
  for (const raw of readdirSync(dir, { encoding: "buffer" })) {
    const path = Buffer.concat([Buffer.from(`${dir}/`), raw]);
    const st = lstatSync(path);
    if (st.mtimeMs >= cutoff) continue;
    rmSync(path, { recursive: true, force: true });
    ctx.summary.expired.push(`${user}/${decodeName(raw) ?? raw.toString("hex")}`);
  }
}

/** Register every closed upload of `users` (default: every directory under incoming/). */
export async function register(
  cfg: AppConfig,
  db: Db,
  log: (msg: string) => void,
  users?: readonly string[],
): Promise<RegisterSummary> {
  const summary: RegisterSummary = { registered: [], rejected: [], deferred: [], recovered: [], expired: [] };
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
        if (!ACCOUNT_RE.test(user)) {
          log(`register: skipping incoming directory with an invalid user name: ${JSON.stringify(user)}`);
          continue;
        }
        try {
          expireRejected(ctx, user);
        } catch (err) {
          log(
            `register: ${user}: expiring rejected uploads failed: ${err instanceof Error ? err.message : String(err)}`,
          );
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
