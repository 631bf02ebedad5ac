/** Ordered SQL migrations, applied once each under an advisory lock, recorded in schema_migrations. */
import { createHash } from "node:crypto";
import type pg from "pg";

export interface Migration {
  /** Sorts the migrations; recorded in schema_migrations. */
  readonly version: string;
  readonly sql: string;
}

/** Arbitrary but fixed: every migrating process of this app takes the same lock. */
const MIGRATION_LOCK = 7_503_691;

const checksum = (sql: string): string => createHash("sha256").update(sql).digest("hex");

/**
 * Apply the migrations not yet recorded, each in its own transaction. A recorded migration
 * whose text changed is an error: the schema must not silently drift from the code.
 */
export async function migrate(
  client: pg.ClientBase,
  migrations: readonly Migration[],
  log: (msg: string) => void,
): Promise<string[]> {
  const applied: string[] = [];
  await client.query("SELECT pg_advisory_lock($1)", [MIGRATION_LOCK]);
  try {
    await client.query(
      "CREATE TABLE IF NOT EXISTS schema_migrations (version text PRIMARY KEY, checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
    );
    const done = new Map(
      (
        await client.query<{ version: string; checksum: string }>(
          "SELECT version, checksum FROM schema_migrations",
        )
      ).rows.map((r) => [r.version, r.checksum]),
    );
    for (const m of [...migrations].sort((a, b) => a.version.localeCompare(b.version))) {
      const sum = checksum(m.sql);
      const previous = done.get(m.version);
      if (previous !== undefined) {
        if (previous !== sum) throw new Error(`migration ${m.version} was applied with different contents`);
        continue;
      }
      await client.query("BEGIN");
      try {
        await client.query(m.sql);
        await client.query("INSERT INTO schema_migrations (version, checksum) VALUES ($1, $2)", [
          m.version,
          sum,
        ]);
        await client.query("COMMIT");
      } catch (err) {
        await client.query("ROLLBACK");
        throw new Error(`migration ${m.version} failed: ${err instanceof Error ? err.message : String(err)}`);
      }
      log(`migrate: applied ${m.version}`);
      applied.push(m.version);
    }
  } finally {
    await client.query("SELECT pg_advisory_unlock($1)", [MIGRATION_LOCK]);
  }
  return applied;
}
