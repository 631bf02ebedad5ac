/** The app's settings, all from the environment that Apache (FcgidInitialEnv) or the agent sets. */
import { readFileSync } from "node:fs";
import { APP_ENV_FILE } from "../layout.js";
import { invalidatorFor } from "./cdn.js";

export interface AppConfig {
  readonly db: {
    readonly host: string;
    readonly port: number;
    readonly database: string;
    readonly user: string;
    /** A pgpass-format file (`host:port:database:user:password`), read on every connect. */
    readonly passwordFile: string | undefined;
  };
  readonly packageRoot: string;
  /** URL prefix of the stored files, ending in `/`. */
  readonly packagesUrl: string;
  readonly maxFileBytes: number;
  /**
   * App servers whose upload watchers must have published before any upload counts as closed
   * (sftp-events.ts); empty: whichever have published.
   */
  readonly uploadHosts: readonly string[];
  /** Rejected uploads are deleted after this many seconds. */
  readonly rejectedRetentionSeconds: number;
  /** When set, /_health also requires the package root to be a mount point. */
  readonly requireMount: boolean;
  /** Where every registered file is copied: `s3://bucket/prefix` or an absolute directory. */
  readonly fileCopies: string;
  /**
   * Where the CDN purge goes (`cloudfront:<distribution id>`, or the lab's directory);
   * undefined without a CDN: nothing is queued.
   */
  readonly cdnInvalidations: string | undefined;
}

export const DEFAULT_MAX_FILE_BYTES = 100 * 1024 * 1024;

function positiveInt(env: NodeJS.ProcessEnv, key: string, fallback: number): number {
  const raw = env[key];
  if (raw === undefined || raw === "") return fallback;
  if (!/^[0-9]+$/.test(raw))
    throw new Error(`${key}: expected a non-negative integer, got ${JSON.stringify(raw)}`);
  return Number(raw);
}

function required(env: NodeJS.ProcessEnv, key: string): string {
  const v = env[key];
  if (!v) throw new Error(`${key} is not set`);
  return v;
}

const FILE_COPIES_FORMS = "s3://bucket/prefix or an absolute directory";

/** PYPI_FILE_COPIES: a bucket (lower-case S3 name, optional key prefix) or an absolute path. */
function fileCopies(env: NodeJS.ProcessEnv): string {
  const raw = env.PYPI_FILE_COPIES;
  if (!raw) throw new Error(`PYPI_FILE_COPIES is not set (expected ${FILE_COPIES_FORMS})`);
  const s3 = /^s3:\/\/[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](\/[A-Za-z0-9._-]+)*\/?$/.test(raw);
  const dir = /^\/+[^/]/.test(raw) && !raw.split("/").includes("..") && !raw.includes("\0");
  if (!s3 && !dir)
    throw new Error(`PYPI_FILE_COPIES: expected ${FILE_COPIES_FORMS}, got ${JSON.stringify(raw)}`);
  return s3 ? raw.replace(/\/+$/, "") : raw.replace(/(.)\/+$/, "$1");
}

/** PYPI_CDN_INVALIDATIONS: unset or empty without a CDN. */
function cdnInvalidations(env: NodeJS.ProcessEnv): string | undefined {
  const raw = env.PYPI_CDN_INVALIDATIONS;
  if (!raw) return undefined;
  invalidatorFor(raw);
  return raw;
}

export function loadConfig(env: NodeJS.ProcessEnv = process.env): AppConfig {
  const packagesUrl = env.PYPI_PACKAGES_URL || "/packages/";
  return {
    db: {
      host: required(env, "PYPI_DB_HOST"),
      port: positiveInt(env, "PYPI_DB_PORT", 5432),
      database: required(env, "PYPI_DB_NAME"),
      user: required(env, "PYPI_DB_USER"),
      passwordFile: env.PYPI_DB_PASSWORD_FILE || undefined,
    },
    packageRoot: required(env, "PYPI_PACKAGE_ROOT").replace(/\/+$/, ""),
    packagesUrl: packagesUrl.endsWith("/") ? packagesUrl : `${packagesUrl}/`,
    maxFileBytes: positiveInt(env, "PYPI_MAX_FILE_BYTES", DEFAULT_MAX_FILE_BYTES),
    uploadHosts: (env.PYPI_UPLOAD_HOSTS ?? "")
      .split(",")
      .map((h) => h.trim())
      .filter((h) => h !== ""),
    rejectedRetentionSeconds: positiveInt(env, "PYPI_REJECTED_RETENTION_SECONDS", 7 * 24 * 3600),
    requireMount: env.PYPI_REQUIRE_MOUNT === "1",
    fileCopies: fileCopies(env),
    cdnInvalidations: cdnInvalidations(env),
  };
}

/** Split one pgpass line into fields, honouring `\:` and `\\` as libpq does. */
function pgpassFields(line: string): string[] {
  const fields: string[] = [];
  let cur = "";
  for (let i = 0; i < line.length; i++) {
    const c = line[i] as string;
    if (c === "\\" && i + 1 < line.length) {
      cur += line[++i];
    } else if (c === ":" && fields.length < 4) {
      fields.push(cur);
      cur = "";
    } else {
      cur += c;
    }
  }
  fields.push(cur);
  return fields;
}

/**
 * The password for host/port/database/user from pgpass text, matched like libpq: first
 * matching line wins, `*` matches anything, `#` starts a comment line.
 */
export function pgpassLookup(
  text: string,
  want: { host: string; port: number; database: string; user: string },
): string | undefined {
  const values = [want.host, String(want.port), want.database, want.user];
  for (const raw of text.split(/\r?\n/)) {
    if (raw === "" || raw.startsWith("#")) continue;
    const fields = pgpassFields(raw);
    if (fields.length !== 5) continue;
    if (values.every((v, i) => fields[i] === "*" || fields[i] === v)) return fields[4];
  }
  return undefined;
}

export function readPassword(cfg: AppConfig["db"]): string | undefined {
  if (!cfg.passwordFile) return undefined;
  const password = pgpassLookup(readFileSync(cfg.passwordFile, "utf8"), cfg);
  if (password === undefined)
    throw new Error(
      `${cfg.passwordFile}: no pgpass line for ${cfg.host}:${cfg.port}:${cfg.database}:${cfg.user}`,
    );
  return password;
}

/** Parse an EnvironmentFile as systemd does: KEY=value lines, double quotes with `\\` and `\"`, `#` comments. */
export function parseEnvFile(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of text.split("\n")) {
    const m = /^\s*([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(line);
    if (!m || line.trimStart().startsWith("#")) continue;
    const raw = (m[2] as string).trim();
    out[m[1] as string] =
      raw.startsWith('"') && raw.endsWith('"') && raw.length >= 2
        ? raw.slice(1, -1).replace(/\\(.)/g, "$1")
        : raw;
  }
  return out;
}

/**
 * The environment for commands an operator runs by hand (`admin`): the process's own when it
 * names the database, else the node's env file, so `pypi-index admin …` works in a plain shell.
 */
export function operatorEnv(env: NodeJS.ProcessEnv = process.env, file = APP_ENV_FILE): NodeJS.ProcessEnv {
  if (env.PYPI_DB_HOST) return env;
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch {
    return env;
  }
  return { ...parseEnvFile(text), ...env };
}
