/** Columns added after files were registered, filled once by `migrate` from what is stored. */
import type pg from "pg";
import { parseFilename } from "./names.js";
import { versionKey } from "./pep440.js";
import { canonicalFilename } from "./registration.js";

export async function backfill(client: pg.ClientBase, log: (msg: string) => void): Promise<number> {
  const { rows } = await client.query<{ filename: string; version: string }>(
    "SELECT filename, version FROM files WHERE version_key IS NULL ORDER BY uploaded_at, filename",
  );
  let filled = 0;
  for (const r of rows) {
    const parsed = parseFilename(r.filename);
    const key = versionKey(r.version) ?? r.version;
    const canonical = parsed.ok ? canonicalFilename(parsed.value) : null;
    try {
      await client.query("UPDATE files SET version_key = $2, canonical_filename = $3 WHERE filename = $1", [
        r.filename,
        key,
        canonical,
      ]);
    } catch (err) {
      if ((err as { code?: string }).code !== "23505") throw err;
      // Two old files are spellings of one name: both stay served; new re-spellings are refused.
      await client.query("UPDATE files SET version_key = $2 WHERE filename = $1", [r.filename, key]);
      log(`migrate: ${r.filename} re-spells an older file's name; kept without a canonical name`);
    }
    filled++;
  }
  return filled;
}
