/**
 * pypi-index: one executable for the whole app.
 *   (no arguments)      FastCGI responder on fd 0, as mod_fcgid starts it
 *   serve --listen X [--workers N --drain-seconds S]
 *                       FastCGI responder on a Unix socket path or host:port; with --workers,
 *                       the app server (appserver.ts): a primary keeping N workers
 *   migrate             apply the schema migrations (on the primary, at bootstrap)
 *   register [USER...]  register closed uploads from incoming/<user>/upload/
 *   copy-files          copy registered files not yet copied to PYPI_FILE_COPIES, verified
 *   restore-files [--all]
 *                       bring back missing or damaged files (every file: --all) from the copies
 *   watch-uploads …     publish which uploads are open for writing (root; see sftp-events.ts)
 *   cdn-purge           send the queued CDN purge as one invalidation (see cdn.ts)
 *   admin …             tokens, project roles, yanking (see ADMIN_USAGE)
 */
import { fstatSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { APP_DB_POOL, uploadBodyLimit } from "../layout.js";
import { ADMIN_USAGE, admin, UsageError } from "./admin.js";
import {
  type Listen,
  parseServeArgs,
  runPrimary,
  SERVE_USAGE,
  type ServeArgs,
  WORKER_ENV,
  WORKER_LISTENING,
  WORKER_SOCKET_FD,
} from "./appserver.js";
import { backfill } from "./backfill.js";
import { invalidatorFor, purgeCdn } from "./cdn.js";
import { loadConfig, operatorEnv } from "./config.js";
import { copyFiles, restoreFiles, storeFor } from "./copies.js";
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
const RESTORE_USAGE = "restore-files [--all]";
const USAGE = `usage: pypi-index [${SERVE_USAGE} | migrate | register [USER...] | copy-files | ${RESTORE_USAGE} | ${WATCH_USAGE} | cdn-purge | admin …]\n${ADMIN_USAGE}`;

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

/**
 * One FastCGI responder. Under mod_fcgid (fd 0) a stop is immediate: mod_fcgid only stops idle
 * processes. An app server worker (`drainMs` set) stops accepting and finishes its requests first.
 */
function serve(listen: { fd: number } | Listen, drainMs?: number): void {
  const cfg = loadConfig();
  // Requests run concurrently in one process; the pool bounds its Postgres connections.
  const db = new Db(cfg.db, log, { max: APP_DB_POOL });
  const server = serveFastCgi(makeHandler(cfg, db, log), listen, log, {
    maxBodyBytes: uploadBodyLimit(cfg.maxFileBytes),
    spoolDir: join(tmpdir(), "pypi-index-spool"),
  });
  let stopping = false;
  const exit = (): void => {
    db.end().finally(() => process.exit(0));
  };
  const stop = (): void => {
    if (stopping) return;
    stopping = true;
    if (drainMs === undefined) {
      server.close();
      exit();
      setTimeout(() => process.exit(0), 2_000).unref();
      return;
    }
    server.close(exit);
    setTimeout(() => process.exit(0), drainMs).unref();
  };
  process.on("SIGTERM", stop);
  process.on("SIGUSR1", stop);
  if (process.send) {
    // An app server worker: tell the primary once it accepts, and stop when the primary is gone.
    server.once("listening", () => process.send?.(WORKER_LISTENING));
    process.on("disconnect", stop);
  }
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
    case "serve": {
      let opts: ServeArgs;
      try {
        opts = parseServeArgs(args);
      } catch (err) {
        if (!(err instanceof UsageError)) throw err;
        process.stderr.write(`pypi-index: ${err.message}\n`);
        return 2;
      }
      if (process.env[WORKER_ENV] === "1") {
        // An app server worker: its primary holds the listening socket and hands it over.
        serve({ fd: WORKER_SOCKET_FD }, opts.drainMs);
        return -1;
      }
      if (opts.workers === undefined) {
        serve(opts.listen);
        return -1;
      }
      // A bad environment fails here, once, rather than in every worker.
      loadConfig();
      runPrimary({ workers: opts.workers, listen: opts.listen, drainMs: opts.drainMs, log });
      return -1;
    }
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
    case "copy-files": {
      const cfg = loadConfig();
      const store = storeFor(cfg.fileCopies);
      const db = new Db(cfg.db, log, { max: 1, statementTimeoutMs: 60_000 });
      try {
        const summary = await copyFiles(cfg, db, store, log);
        process.stdout.write(`${JSON.stringify(summary)}\n`);
        return summary.failed > 0 ? 1 : 0;
      } finally {
        await db.end();
      }
    }
    case "restore-files": {
      if (args.some((a) => a !== "--all")) {
        process.stderr.write(`usage: pypi-index ${RESTORE_USAGE}\n`);
        return 2;
      }
      const cfg = loadConfig(operatorEnv());
      const store = storeFor(cfg.fileCopies);
      const db = new Db(cfg.db, log, { max: 1, statementTimeoutMs: 60_000 });
      try {
        const summary = await restoreFiles(cfg, db, store, log, { all: args.includes("--all") });
        process.stdout.write(`${JSON.stringify(summary)}\n`);
        return summary.mismatched + summary.missingInStore + summary.failed > 0 ? 1 : 0;
      } finally {
        await db.end();
      }
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
    case "cdn-purge": {
      const cfg = loadConfig();
      if (!cfg.cdnInvalidations) {
        process.stderr.write(
          "pypi-index cdn-purge: PYPI_CDN_INVALIDATIONS is not set (this stack has no CDN)\n",
        );
        return 2;
      }
      const summary = await purgeCdn(cfg.packageRoot, invalidatorFor(cfg.cdnInvalidations), log);
      process.stdout.write(`${JSON.stringify(summary)}\n`);
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
