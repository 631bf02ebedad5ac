/** The schema migrations, embedded in the bundle as text. */
import type { Migration } from "./migrate.js";
import init from "./migrations/0001_init.sql";

export const migrations: readonly Migration[] = [{ version: "0001_init", sql: init }];
