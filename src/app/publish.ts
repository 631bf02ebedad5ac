/**
 * Rewrite a project's static pages (/simple/<project>/ in every form, /pypi/<project>/json) from
 * the database, under the project's lock, then clear its dirty flag. The root page follows
 * when a project appears.
 */
import type pg from "pg";
import { queueStalePaths, stalePaths } from "./cdn.js";
import type { AppConfig } from "./config.js";
import { type ProjectSnapshot, type ReleaseFile, writeProjectPages, writeRootPages } from "./pages.js";

/** Lock class for per-project advisory locks (the second key is hashtext(project)). */
export const PROJECT_LOCK = 7_503_693;
/** No project is named "/": the root page's own lock. */
const ROOT_LOCK_NAME = "/";

/** Run `fn` holding the project's advisory lock (session level: it spans commits and file work). */
export async function withProjectLock<T>(
  client: pg.ClientBase,
  project: string,
  fn: () => Promise<T>,
): Promise<T> {
  await client.query("SELECT pg_advisory_lock($1, hashtext($2))", [PROJECT_LOCK, project]);
  try {
    return await fn();
  } finally {
    await unlockProject(client, project);
  }
}

/**
 * Release the lock. An aborted transaction would make the unlock fail and leave the lock held
 * by a pooled connection, so roll back first (outside a transaction that is only a notice).
 */
async function unlockProject(client: pg.ClientBase, project: string): Promise<void> {
  await client.query("ROLLBACK").catch(() => {});
  await client.query("SELECT pg_advisory_unlock($1, hashtext($2))", [PROJECT_LOCK, project]);
}

/** Like withProjectLock, but gives up at once: false when another holder has it. */
export async function tryProjectLock(
  client: pg.ClientBase,
  project: string,
  fn: () => Promise<void>,
): Promise<boolean> {
  const r = await client.query<{ ok: boolean }>("SELECT pg_try_advisory_lock($1, hashtext($2)) AS ok", [
    PROJECT_LOCK,
    project,
  ]);
  if (!r.rows[0]?.ok) return false;
  try {
    await fn();
  } finally {
    await unlockProject(client, project);
  }
  return true;
}

interface FileRow {
  filename: string;
  version: string;
  packagetype: "bdist_wheel" | "sdist";
  sha256: string;
  size: string;
  uploaded_at: Date;
  requires_python: string | null;
  core_metadata_sha256: string | null;
  yanked_at: Date | null;
  yanked_reason: string | null;
  metadata: Record<string, string[]> | null;
}

export async function loadSnapshot(client: pg.ClientBase, project: string): Promise<ProjectSnapshot | null> {
  const p = await client.query<{ display_name: string }>(
    "SELECT display_name FROM projects WHERE name = $1",
    [project],
  );
  const display = p.rows[0]?.display_name;
  if (display === undefined) return null;
  const { rows } = await client.query<FileRow>(
    `SELECT filename, version, packagetype, sha256, size, uploaded_at, requires_python, core_metadata_sha256,
            yanked_at, yanked_reason, metadata
       FROM files WHERE project = $1 AND state = 'ok' ORDER BY filename`,
    [project],
  );
  const files: ReleaseFile[] = rows.map((r) => ({
    filename: r.filename,
    version: r.version,
    sha256: r.sha256,
    size: Number(r.size),
    uploadTime: r.uploaded_at,
    requiresPython: r.requires_python,
    coreMetadataSha256: r.core_metadata_sha256,
    yanked: r.yanked_at === null ? null : (r.yanked_reason ?? ""),
    packagetype: r.packagetype,
    metadata: r.metadata,
  }));
  return { project, displayName: display, files };
}

export async function rootProjects(client: pg.ClientBase): Promise<string[]> {
  const { rows } = await client.query<{ name: string }>(
    "SELECT p.name FROM projects p WHERE EXISTS (SELECT 1 FROM files f WHERE f.project = p.name AND f.state = 'ok') ORDER BY p.name",
  );
  return rows.map((r) => r.name);
}

/** Caller holds the project's lock (registration) or is the only registrar (recovery). */
export async function publishProject(
  client: pg.ClientBase,
  cfg: AppConfig,
  project: string,
  opts: { root: boolean },
): Promise<void> {
  const snap = await loadSnapshot(client, project);
  if (snap) writeProjectPages(cfg.packageRoot, snap, cfg.packagesUrl);
  if (cfg.cdnInvalidations) queueStalePaths(cfg.packageRoot, stalePaths(project, false), warn);
  if (opts.root) await publishRoot(client, cfg);
  await client.query("UPDATE projects SET pages_dirty = false WHERE name = $1", [project]);
}

const warn = (msg: string): void => {
  process.stderr.write(`pypi-index[${process.pid}]: ${msg}\n`);
};

/** The root page is read and written under its own lock, so two new projects cannot undo each other. */
export async function publishRoot(client: pg.ClientBase, cfg: AppConfig): Promise<void> {
  await withProjectLock(client, ROOT_LOCK_NAME, async () => {
    writeRootPages(
      cfg.packageRoot,
      (await rootProjects(client)).map((name) => ({ name })),
    );
    if (cfg.cdnInvalidations) queueStalePaths(cfg.packageRoot, stalePaths(undefined, true), warn);
  });
}
