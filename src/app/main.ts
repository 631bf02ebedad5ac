/**
 * pypi-index: one executable for the whole app.
 *   (no arguments)      FastCGI responder on fd 0, as mod_fcgid starts it
 *   serve --listen X    FastCGI responder on a Unix socket path or host:port
 *   migrate             apply the schema migrations (on the primary, at bootstrap)
 *   register [USER...]  register settled uploads from incoming/<user>/upload/
 */
import { fstatSync } from "node:fs";
import { APP_DB_POOL } from "../layout.js";
import { loadConfig } from "./config.js";
import { Db } from "./db.js";
import { serveFastCgi } from "./fastcgi.js";
import { migrate } from "./migrate.js";
import { migrations } from "./migrations.js";
import { register } from "./register.js";
import { makeHandler } from "./web.js";

const log = (msg: string): void => {
  process.stderr.write(`pypi-index[${process.pid}]: ${msg}\n`);
};

const USAGE = "usage: pypi-index [serve --listen PATH|HOST:PORT | migrate | register [USER...]]";

function parseListen(arg: string | undefined): { path: string } | { port: number; host: string } {
  if (!arg) throw new Error(USAGE);
  const m = /^(.+):([0-9]+)$/.exec(arg);
  return m && !arg.startsWith("/") ? { host: m[1] as string, port: Number(m[2]) } : { path: arg };
}

function serve(listen: { fd: number } | { path: string } | { port: number; host: string }): void {
  const cfg = loadConfig();
  // One request at a time per process under mod_fcgid: a second connection is for health overlap.
  const db = new Db(cfg.db, log, { max: APP_DB_POOL });
  const server = serveFastCgi(makeHandler(cfg, db), listen, log);
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
        log(`migrate: ${applied.length} applied, schema current`);
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
