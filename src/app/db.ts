/**
 * Database access with bounded reconnects: after a failed connect, further attempts wait out
 * a backoff (doubling to a cap) and fail fast meanwhile, so a worker whose database is gone
 * answers 503 quickly instead of piling up connects or exiting.
 */
import pg from "pg";
import { type AppConfig, readPassword } from "./config.js";

export class DbUnavailable extends Error {
  override readonly name = "DbUnavailable";
}

const BACKOFF_MIN_MS = 250;
const BACKOFF_MAX_MS = 5_000;

export class Db {
  private pool: pg.Pool;
  private failures = 0;
  private retryAt = 0;

  constructor(
    cfg: AppConfig["db"],
    private readonly log: (msg: string) => void,
    opts: { max?: number; statementTimeoutMs?: number } = {},
  ) {
    this.pool = new pg.Pool({
      host: cfg.host,
      port: cfg.port,
      database: cfg.database,
      user: cfg.user,
      // Read on each connect, so a rotated password needs no restart.
      password: () => readPassword(cfg) ?? "",
      max: opts.max ?? 2,
      connectionTimeoutMillis: 3_000,
      idleTimeoutMillis: 60_000,
      keepAlive: true,
      statement_timeout: opts.statementTimeoutMs ?? 10_000,
      application_name: "pypi-index",
    });
    // An idle client dropped by a failover must not crash the process; the pool replaces it.
    this.pool.on("error", (err) => this.log(`db: idle connection lost: ${err.message}`));
  }

  /** Check out a client, or throw DbUnavailable (fast while backing off). */
  async connect(): Promise<pg.PoolClient> {
    const now = Date.now();
    if (now < this.retryAt)
      throw new DbUnavailable(`database unreachable; retrying in ${this.retryAt - now} ms`);
    try {
      const client = await this.pool.connect();
      this.failures = 0;
      this.retryAt = 0;
      return client;
    } catch (err) {
      this.failures++;
      const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** (this.failures - 1));
      this.retryAt = Date.now() + delay;
      const msg = err instanceof Error ? err.message : String(err);
      this.log(`db: connect failed (${this.failures} in a row, next try in ${delay} ms): ${msg}`);
      throw new DbUnavailable(msg);
    }
  }

  /** Run `fn` with a client; a client that saw a connection-level error is discarded. */
  async with<T>(fn: (c: pg.PoolClient) => Promise<T>): Promise<T> {
    const client = await this.connect();
    let broken: Error | undefined;
    // A connection lost mid-checkout surfaces through the query; the event alone must not crash.
    const onError = (err: Error): void => {
      broken = err;
    };
    client.on("error", onError);
    try {
      return await fn(client);
    } catch (err) {
      if (isConnectionError(err)) {
        broken = err instanceof Error ? err : new Error(String(err));
        throw new DbUnavailable(broken.message);
      }
      throw err;
    } finally {
      client.off("error", onError);
      client.release(broken);
    }
  }

  async query<R extends pg.QueryResultRow>(text: string, values: unknown[] = []): Promise<pg.QueryResult<R>> {
    return this.with((c) => c.query<R>(text, values));
  }

  async end(): Promise<void> {
    await this.pool.end();
  }
}

/** Socket-level errno codes: the database host or the path to it is gone. */
const NETWORK_ERRNO = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "ECONNABORTED",
  "EPIPE",
  "ETIMEDOUT",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ENOTFOUND",
  "EAI_AGAIN",
]);

/**
 * Errors that mean the connection (not the statement) is bad, so retrying elsewhere may work:
 * pg's own connection errors (no code, a message about the connection), socket errnos, and the SQLSTATEs of a server going
 * away or of a standby reached after a failover. A filesystem error (it names a syscall and a
 * path, e.g. EACCES on an upload) is not one: it must not stop the registrar.
 */
export function isConnectionError(err: unknown): boolean {
  if (err instanceof DbUnavailable) return true;
  if (!(err instanceof Error)) return false;
  const { code, syscall } = err as { code?: unknown; syscall?: unknown };
  if (typeof code === "string" && NETWORK_ERRNO.has(code)) return true;
  // pg reports a lost connection as a plain Error ("Connection terminated unexpectedly", "… not queryable").
  if (typeof code !== "string")
    return typeof syscall !== "string" && /connection|terminated|not queryable/i.test(err.message);
  if (!/^[0-9A-Z]{5}$/.test(code)) return false;
  // 08: connection exception; 57P01-03: admin/crash shutdown, cannot connect now; 25006: read-only.
  return code.startsWith("08") || /^57P0[1-3]$/.test(code) || code === "25006";
}
