/**
 * API tokens for the upload API (user `__token__`). A token is `pypi-<id>_<secret>`: the id
 * finds the row, and only the SHA-256 of the 256-bit secret is stored, so a database dump
 * holds no usable credential.
 */
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import type pg from "pg";

export const TOKEN_USER = "__token__";
const TOKEN_RE = /^pypi-([0-9a-f]{16})_([A-Za-z0-9_-]{43})$/;
export const ACCOUNT_RE = /^[a-z_][a-z0-9_-]{0,31}$/;

const sha256 = (s: string): string => createHash("sha256").update(s, "utf8").digest("hex");

export interface TokenRow {
  readonly id: string;
  readonly account: string;
  readonly projects: readonly string[] | null;
  readonly description: string;
  readonly created_at: Date;
  readonly last_used_at: Date | null;
  readonly revoked_at: Date | null;
}

export interface Principal {
  readonly account: string;
  readonly tokenId: string;
  /** Projects the token is limited to (normalized names); null: every project the account may upload to. */
  readonly projects: readonly string[] | null;
}

export function parseToken(token: string): { id: string; secret: string } | null {
  const m = TOKEN_RE.exec(token);
  return m ? { id: m[1] as string, secret: m[2] as string } : null;
}

/** The account named by a token, or null for a malformed, unknown or revoked one. */
export async function authenticate(client: pg.ClientBase, token: string): Promise<Principal | null> {
  const parsed = parseToken(token);
  if (!parsed) return null;
  const { rows } = await client.query<{ account: string; secret_sha256: string; projects: string[] | null }>(
    "SELECT account, secret_sha256, projects FROM api_tokens WHERE id = $1 AND revoked_at IS NULL",
    [parsed.id],
  );
  const row = rows[0];
  // Compared even when no row matched, so timing does not tell which ids exist.
  const want = Buffer.from(row?.secret_sha256 ?? "0".repeat(64), "hex");
  const got = Buffer.from(sha256(parsed.secret), "hex");
  if (!row || !timingSafeEqual(want, got)) return null;
  await client.query("UPDATE api_tokens SET last_used_at = now() WHERE id = $1", [parsed.id]);
  return { account: row.account, tokenId: parsed.id, projects: row.projects };
}

export async function ensureAccount(client: pg.ClientBase, account: string): Promise<void> {
  if (!ACCOUNT_RE.test(account))
    throw new Error(`account ${JSON.stringify(account)}: expected ${ACCOUNT_RE} (the SFTP user name rules)`);
  await client.query("INSERT INTO accounts (name) VALUES ($1) ON CONFLICT DO NOTHING", [account]);
}

/** Create a token; the returned text is the only copy of the secret. */
export async function createToken(
  client: pg.ClientBase,
  account: string,
  projects: readonly string[] | null,
  description: string,
): Promise<{ id: string; token: string }> {
  await ensureAccount(client, account);
  const id = randomBytes(8).toString("hex");
  const secret = randomBytes(32).toString("base64url");
  await client.query(
    "INSERT INTO api_tokens (id, account, secret_sha256, projects, description) VALUES ($1, $2, $3, $4, $5)",
    [id, account, sha256(secret), projects, description],
  );
  return { id, token: `pypi-${id}_${secret}` };
}

export async function listTokens(client: pg.ClientBase, account?: string): Promise<TokenRow[]> {
  const { rows } = await client.query<TokenRow>(
    `SELECT id, account, projects, description, created_at, last_used_at, revoked_at FROM api_tokens
      ${account === undefined ? "" : "WHERE account = $1"} ORDER BY account, created_at`,
    account === undefined ? [] : [account],
  );
  return rows;
}

/** True when a live token was revoked. */
export async function revokeToken(client: pg.ClientBase, id: string): Promise<boolean> {
  const r = await client.query(
    "UPDATE api_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
    [id],
  );
  return (r.rowCount ?? 0) > 0;
}
