/** The schema migrations, embedded in the bundle as text. */
import type { Migration } from "./migrate.js";
import init from "./migrations/0001_init.sql";
import accounts from "./migrations/0002_accounts_tokens_metadata.sql";
import fileCopies from "./migrations/0003_file_copies.sql";

export const migrations: readonly Migration[] = [
  { version: "0001_init", sql: init },
  { version: "0002_accounts_tokens_metadata", sql: accounts },
  { version: "0003_file_copies", sql: fileCopies },
];
