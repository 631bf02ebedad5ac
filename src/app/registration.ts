/**
 * The one registration both upload doors (SFTP and the HTTP upload API) end in: the filename,
 * the archive and its metadata are checked, ownership is enforced, then the row and the stored
 * file become visible together and the project's static pages are rewritten.
 *
 * Order, so every crash point is recoverable (see `recoverPending`): a 'pending' row, the file
 * linked under its final name (never replacing), its core metadata beside it, the row 'ok'
 * with the project's pages marked dirty, the pages written, the flag cleared.
 */
import { createHash, randomBytes } from "node:crypto";
import { existsSync, linkSync, mkdirSync, readFileSync, rmSync, unlinkSync } from "node:fs";
import type pg from "pg";
import type { AppConfig } from "./config.js";
import { requestCopies } from "./copies.js";
import { fsyncDir, writeNewFile } from "./fsutil.js";
import { type Inspected, inspectDistribution } from "./inspect.js";
import { type ParsedFilename, parseFilename } from "./names.js";
import { normalizeVersion, versionKey } from "./pep440.js";
import { publishProject, withProjectLock } from "./publish.js";
import { ensureAccount } from "./tokens.js";

export const storeLayout = (root: string) => ({
  packages: `${root}/packages`,
  staging: `${root}/.staging`,
  stored: (project: string, filename: string) => `${root}/packages/${project}/${filename}`,
});

export interface Staged {
  /** A private copy under `.staging/`: the uploader cannot change it any more. */
  readonly path: string;
  readonly sha256: string;
  readonly size: number;
}

export interface Candidate {
  readonly account: string;
  readonly via: "sftp" | "http";
  readonly filename: string;
  readonly staged: Staged;
  /** A token limited to these projects; null when the credential is not limited. */
  readonly allowedProjects: readonly string[] | null;
}

export type Outcome =
  | { readonly ok: true; readonly project: string; readonly filename: string }
  | { readonly ok: false; readonly status: 400 | 403 | 409 | 413; readonly reason: string };

export interface RegistrationContext {
  readonly cfg: AppConfig;
  readonly client: pg.ClientBase;
  readonly log: (msg: string) => void;
}

const refuse = (status: 400 | 403 | 409 | 413, reason: string): Outcome => ({ ok: false, status, reason });

/** A spelling-independent filename: re-spelled names of one distribution collide on it. */
export function canonicalFilename(f: ParsedFilename): string {
  // "/" cannot occur in a project, a version or a tag, so no two distributions' keys can meet.
  const key = versionKey(f.version) ?? f.version.toLowerCase();
  if (f.packagetype === "sdist") return `${f.project}/${key}/${f.archive}`;
  const parts = f.filename.slice(0, -".whl".length).split("-");
  return `${[f.project, key, ...parts.slice(2).map((p) => p.toLowerCase())].join("/")}/whl`;
}

/** Create a staging file name on the package volume, so storing it is a link, not a copy. */
export function stagingPath(root: string): string {
  const dir = storeLayout(root).staging;
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  return `${dir}/${Date.now()}-${randomBytes(12).toString("hex")}`;
}

/** Write bytes under `target` without ever replacing: staged, fsynced, then linked. */
function writeOnce(root: string, target: string, bytes: Buffer): void {
  if (existsSync(target)) {
    if (readFileSync(target).equals(bytes)) return;
    throw new Error(`${target} exists with other contents`);
  }
  const tmp = stagingPath(root);
  writeNewFile(tmp, bytes);
  try {
    linkSync(tmp, target);
  } finally {
    unlinkSync(tmp);
  }
}

interface Access {
  readonly exists: boolean;
  readonly role: string | null;
  readonly owners: number;
}

async function accessOf(client: pg.ClientBase, project: string, account: string): Promise<Access> {
  const { rows } = await client.query<{ exists: boolean; role: string | null; owners: string }>(
    `SELECT EXISTS (SELECT 1 FROM projects WHERE name = $1) AS exists,
            (SELECT role FROM project_roles WHERE project = $1 AND account = $2) AS role,
            (SELECT count(*) FROM project_roles WHERE project = $1 AND role = 'owner') AS owners`,
    [project, account],
  );
  const r = rows[0];
  return { exists: r?.exists ?? false, role: r?.role ?? null, owners: Number(r?.owners ?? 0) };
}

/**
 * Register one staged upload. Refusals come back as an Outcome with the reason the uploader is
 * shown; infrastructure errors throw. The staged file is consumed (linked or left for the
 * caller to remove) either way.
 */
export async function registerDistribution(ctx: RegistrationContext, c: Candidate): Promise<Outcome> {
  const parsed = parseFilename(c.filename);
  if (!parsed.ok)
    return refuse(400, `Invalid distribution filename ${JSON.stringify(c.filename)}: ${parsed.reason}`);
  const f = parsed.value;
  if (c.staged.size > ctx.cfg.maxFileBytes)
    return refuse(413, `File too large: ${c.staged.size} bytes, the limit is ${ctx.cfg.maxFileBytes}`);
  if (c.allowedProjects !== null && !c.allowedProjects.includes(f.project))
    return refuse(
      403,
      `This token is limited to the projects ${c.allowedProjects.join(", ") || "(none)"}; it cannot upload to ${f.project}`,
    );
  const inspected = await inspectDistribution(c.staged.path, f);
  if (!inspected.ok) return refuse(400, `Invalid distribution ${c.filename}: ${inspected.reason}`);
  return withProjectLock(ctx.client, f.project, () => storeChecked(ctx, c, f, inspected.value));
}

async function storeChecked(
  ctx: RegistrationContext,
  c: Candidate,
  f: ParsedFilename,
  inspected: Inspected,
): Promise<Outcome> {
  const { client, cfg } = ctx;
  await ensureAccount(client, c.account);
  const access = await accessOf(client, f.project, c.account);
  if (access.exists && access.role === null)
    return refuse(
      403,
      access.owners === 0
        ? `The project ${f.project} has no owner; an operator must assign one before uploads are accepted`
        : `The account ${c.account} is not an owner or maintainer of the project ${f.project}`,
    );

  const canonical = canonicalFilename(f);
  const clash = await client.query<{ filename: string; sha256: string }>(
    "SELECT filename, sha256 FROM files WHERE filename = $1 OR canonical_filename = $2",
    [f.filename, canonical],
  );
  const existing = clash.rows[0];
  if (existing) {
    const same = existing.sha256 === c.staged.sha256 ? "identical content" : "different content";
    return refuse(
      409,
      existing.filename === f.filename
        ? `File already exists: ${f.filename} (${same}); files are never replaced, upload a new version`
        : `File already exists under another spelling: ${existing.filename}; files are never replaced`,
    );
  }

  // One release per PEP 440 version: a new spelling of a known version joins it.
  const key = versionKey(f.version) ?? f.version;
  const known = await client.query<{ version: string; yanked_at: Date | null; yanked_reason: string | null }>(
    `SELECT version, yanked_at, yanked_reason FROM files WHERE project = $1 AND COALESCE(version_key, version) = $2
      ORDER BY yanked_at DESC NULLS LAST, uploaded_at LIMIT 1`,
    [f.project, key],
  );
  const release = known.rows[0];
  const version = release?.version ?? normalizeVersion(f.version) ?? f.version;
  // A new file of a yanked release is yanked too: a yank must not be undone by an upload.
  const yanked = release?.yanked_at ? { at: release.yanked_at, reason: release.yanked_reason } : null;
  const served = await client.query("SELECT 1 FROM files WHERE project = $1 AND state = 'ok' LIMIT 1", [
    f.project,
  ]);
  const firstServed = served.rowCount === 0;
  const metadataSha =
    f.packagetype === "bdist_wheel"
      ? createHash("sha256").update(inspected.coreMetadata).digest("hex")
      : null;

  try {
    await client.query("BEGIN");
    if (!access.exists) {
      await client.query("INSERT INTO projects (name, display_name) VALUES ($1, $2)", [
        f.project,
        inspected.metadata.name,
      ]);
      await client.query("INSERT INTO project_roles (project, account, role) VALUES ($1, $2, 'owner')", [
        f.project,
        c.account,
      ]);
    }
    await client.query(
      `INSERT INTO files (filename, project, version, packagetype, sha256, size, requires_python, uploader, state,
                          version_key, canonical_filename, core_metadata_sha256, metadata, via, yanked_at, yanked_reason)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', $9, $10, $11, $12, $13, $14, $15)`,
      [
        f.filename,
        f.project,
        version,
        f.packagetype,
        c.staged.sha256,
        c.staged.size,
        inspected.requiresPython,
        c.account,
        key,
        canonical,
        metadataSha,
        JSON.stringify(inspected.metadata.fields),
        c.via,
        yanked?.at ?? null,
        yanked?.reason ?? null,
      ],
    );
    await client.query("COMMIT");
  } catch (err) {
    await client.query("ROLLBACK").catch(() => {});
    if ((err as { code?: string }).code === "23505")
      return refuse(409, `File already exists: ${f.filename}; files are never replaced`);
    throw err;
  }

  const L = storeLayout(cfg.packageRoot);
  const dir = `${L.packages}/${f.project}`;
  const target = L.stored(f.project, f.filename);
  let linked = false;
  try {
    mkdirSync(dir, { recursive: true, mode: 0o755 });
    linkSync(c.staged.path, target);
    linked = true;
    if (metadataSha) writeOnce(cfg.packageRoot, `${target}.metadata`, inspected.coreMetadata);
    fsyncDir(dir);
  } catch (err) {
    // Undo our own link, so a failed registration leaves no unindexed file behind.
    if (linked) rmSync(target, { force: true });
    await client.query("DELETE FROM files WHERE filename = $1 AND state = 'pending'", [f.filename]);
    if ((err as NodeJS.ErrnoException).code === "EEXIST")
      return refuse(
        409,
        "A stored file of this name already exists (not in the index); it is never replaced",
      );
    throw err;
  }
  unlinkSync(c.staged.path);
  try {
    await client.query("BEGIN");
    await client.query(
      "UPDATE files SET state = 'ok', uploaded_at = now() WHERE filename = $1 AND state = 'pending'",
      [f.filename],
    );
    await client.query("UPDATE projects SET pages_dirty = true WHERE name = $1", [f.project]);
    await client.query("COMMIT");
  } catch (err) {
    // The pending row and the stored file stay for recovery to finish.
    await client.query("ROLLBACK").catch(() => {});
    throw err;
  }
  requestCopies(cfg.packageRoot, ctx.log);
  ctx.log(
    `register: stored ${f.project}/${f.filename} from ${c.account} via ${c.via} sha256=${c.staged.sha256} size=${c.staged.size}`,
  );
  await publishProject(client, cfg, f.project, { root: firstServed });
  return { ok: true, project: f.project, filename: f.filename };
}
