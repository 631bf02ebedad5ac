/**
 * pypi-index: one executable for the whole app.
 *   (no arguments)      FastCGI responder on fd 0, as mod_fcgid starts it
 *   serve --listen X    FastCGI responder on a Unix socket path or host:port
 *   migrate             apply the schema migrations (on the primary, at bootstrap)
 *   register [USER...]  register closed uploads from incoming/<user>/upload/
 *   watch-uploads …     publish which uploads are open for writing (root; see sftp-events.ts)
 *   admin …             tokens, project roles, yanking (see ADMIN_USAGE)
 */
import { fstatSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { APP_DB_POOL, uploadBodyLimit } from "../layout.js";
import { ADMIN_USAGE, admin, UsageError } from "./admin.js";
import { backfill } from "./backfill.js";
import { loadConfig, operatorEnv } from "./config.js";
import { Db } from "./db.js";
import { serveFastCgi } from "./fastcgi.js";
import { migrate } from "./migrate.js";
import { migrations } from "./migrations.js";
import { register } from "./register.js";
import { lookupUser, publishScan, watchUploadWriters } from "./sftp-events.js";
import { makeHandler } from "./web.js";

const log = (msg: string): void => {
  process.stderr.write(`pypi-index[${process.pid}]: ${msg}\n`);
};

const WATCH_USAGE = "watch-uploads --host NAME --write-as USER [--once]";
const USAGE = `usage: pypi-index [serve --listen PATH|HOST:PORT | migrate | register [USER...] | ${WATCH_USAGE} | admin …]\n${ADMIN_USAGE}`;

/** `--host NAME --write-as USER [--once]`, in any order; both names required. */
function parseWatchArgs(args: readonly string[]): { host: string; writeAs: string; once: boolean } {
  let host: string | undefined;
  let writeAs: string | undefined;
  let once = false;
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === "--once") once = true;
    else if (a === "--host" && args[i + 1]) host = args[++i];
    else if (a === "--write-as" && args[i + 1]) writeAs = args[++i];
    else throw new UsageError(`unexpected argument ${JSON.stringify(a)}; usage: pypi-index ${WATCH_USAGE}`);
  }
  if (!host || !writeAs) throw new UsageError(`usage: pypi-index ${WATCH_USAGE}`);
  return { host, writeAs, once };
}

function parseListen(arg: string | undefined): { path: string } | { port: number; host: string } {
  if (!arg) throw new Error(USAGE);
  const m = /^(.+):([0-9]+)$/.exec(arg);
  return m && !arg.startsWith("/") ? { host: m[1] as string, port: Number(m[2]) } : { path: arg };
}

function serve(listen: { fd: number } | { path: string } | { port: number; host: string }): void {
  const cfg = loadConfig();
  // One request at a time per process under mod_fcgid: a second connection is for health overlap.
  const db = new Db(cfg.db, log, { max: APP_DB_POOL });
  const server = serveFastCgi(makeHandler(cfg, db, log), listen, log, {
    maxBodyBytes: uploadBodyLimit(cfg.maxFileBytes),
    spoolDir: join(tmpdir(), "pypi-index-spool"),
  });
  const stop = (): void => {
    server.close();
    db.end().finally(() => process.exit(0));
    setTimeout(() => process.exit(0), 2_000).unref();
  };
  process.on("SIGTERM", stop);
  process.on("SIGUSR1", stop);
  // mod_fcgid closes the pipe on shutdown; a write then must not kill the process noisily.
  process.on("SIGPIPE", () => {});
  process.on("unhandledRejection", (err) => log(`unhandled rejection: ${String(err)}`));
}

async function main(argv: readonly string[]): Promise<number> {
  const [cmd, ...args] = argv;
  switch (cmd) {
    case undefined: {
      let socket = false;
      try {
        socket = fstatSync(0).isSocket();
      } catch {
        socket = false;
      }
      if (!socket) {
        process.stderr.write(`${USAGE}\n(with no arguments, fd 0 must be the FastCGI listening socket)\n`);
        return 2;
      }
      serve({ fd: 0 });
      return -1;
    }
    case "serve":
      if (args[0] !== "--listen") throw new Error(USAGE);
      serve(parseListen(args[1]));
      return -1;
    case "migrate": {
      const db = new Db(loadConfig().db, log, { max: 1, statementTimeoutMs: 0 });
      try {
        const applied = await db.with((c) => migrate(c, migrations, log));
        const filled = await db.with((c) => backfill(c, log));
        log(`migrate: ${applied.length} applied, ${filled} rows backfilled, schema current`);
      } finally {
        await db.end();
      }
      return 0;
    }
    case "register": {
      const cfg = loadConfig();
      const db = new Db(cfg.db, log, { max: 1, statementTimeoutMs: 60_000 });
      try {
        const summary = await register(cfg, db, log, args.length > 0 ? args : undefined);
        process.stdout.write(`${JSON.stringify(summary)}\n`);
        // The path unit fires again at once while an upload is still open: pace those re-runs.
        if (summary.deferred.length > 0) await new Promise((resolve) => setTimeout(resolve, 2_000));
      } finally {
        await db.end();
      }
      return 0;
    }
    case "watch-uploads": {
      let opts: ReturnType<typeof parseWatchArgs>;
      try {
        opts = parseWatchArgs(args);
      } catch (err) {
        if (!(err instanceof UsageError)) throw err;
        process.stderr.write(`pypi-index: ${err.message}\n`);
        return 2;
      }
      const cfg = loadConfig();
      const { host, writeAs } = opts;
      if (opts.once) {
        // One round of what the watcher publishes, for a registrar run by hand (the app sandbox).
        const scan = publishScan({ root: cfg.packageRoot, host, writeAs: lookupUser(writeAs) }, 1);
        process.stdout.write(`${JSON.stringify(scan)}\n`);
        return 0;
      }
      const stop = new AbortController();
      const abort = (): void => stop.abort();
      process.once("SIGTERM", abort);
      process.once("SIGINT", abort);
      await watchUploadWriters({ root: cfg.packageRoot, host, writeAs, log, signal: stop.signal });
      return 0;
    }
    case "admin": {
      const cfg = loadConfig(operatorEnv());
      const db = new Db(cfg.db, log, { max: 1, statementTimeoutMs: 60_000 });
      try {
        await db.with((c) => admin(c, cfg, args, (line) => process.stdout.write(`${line}\n`)));
      } catch (err) {
        if (err instanceof UsageError) {
          process.stderr.write(`pypi-index admin: ${err.message}\n`);
          return 2;
        }
        throw err;
      } finally {
        await db.end();
      }
      return 0;
    }
    case "-h":
    case "--help":
      process.stdout.write(`${USAGE}\n`);
      return 0;
    default:
      process.stderr.write(`${USAGE}\n`);
      return 2;
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    if (code >= 0) process.exitCode = code;
  },
  (err: unknown) => {
    log(err instanceof Error ? err.message : String(err));
    process.exitCode = 1;
  },
);
