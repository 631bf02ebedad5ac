/**
 * The `appserver` runtime: the index app as its own service (pypi-index.service) instead of
 * processes mod_fcgid spawns. One primary keeps `workers` FastCGI workers on one listening
 * socket that they all accept from (node:cluster, shared handle). It
 *  - starts a replacement at once when a worker dies, and gives up (for systemd to restart it)
 *    when new workers keep exiting before they listen;
 *  - on SIGHUP replaces the workers one at a time, each only after its successor listens, so a
 *    new script or environment takes effect without refusing a request, and a successor that
 *    cannot start leaves the old workers serving;
 *  - on SIGTERM lets every worker finish what it has accepted (up to `drainMs`), then exits.
 * The workers are the process's own script run again (cluster.fork), in `serve` mode.
 */
import cluster, { type Worker } from "node:cluster";
import { lstatSync, rmSync } from "node:fs";
import { UsageError } from "./admin.js";

export type Listen = { readonly path: string } | { readonly host: string; readonly port: number };

export interface AppServerOptions {
  readonly workers: number;
  readonly listen: Listen;
  /** How long a stopping worker may take to finish its requests before it is killed. */
  readonly drainMs: number;
  readonly log: (msg: string) => void;
  /** How long a new worker may take to listen. @default 15 s */
  readonly startTimeoutMs?: number;
}

export const SERVE_USAGE = "serve --listen PATH|HOST:PORT [--workers N --drain-seconds S]";

export function parseListen(arg: string): Listen {
  const m = /^(.+):([0-9]+)$/.exec(arg);
  return m && !arg.startsWith("/") ? { host: m[1] as string, port: Number(m[2]) } : { path: arg };
}

export interface ServeArgs {
  readonly listen: Listen;
  /** Set: run as the app server's primary with this many workers. */
  readonly workers?: number;
  readonly drainMs: number;
}

/** `--listen X [--workers N] [--drain-seconds S]`, in any order. */
export function parseServeArgs(args: readonly string[]): ServeArgs {
  let listen: Listen | undefined;
  let workers: number | undefined;
  let drainSeconds = 30;
  const count = (flag: string, raw: string | undefined, min: number, max: number): number => {
    if (!raw || !/^[0-9]+$/.test(raw) || Number(raw) < min || Number(raw) > max)
      throw new UsageError(
        `${flag}: expected a whole number from ${min} to ${max}, got ${JSON.stringify(raw ?? "")}`,
      );
    return Number(raw);
  };
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === "--listen" && args[i + 1]) listen = parseListen(args[++i] as string);
    else if (a === "--workers") workers = count(a, args[++i], 1, 256);
    else if (a === "--drain-seconds") drainSeconds = count(a, args[++i], 1, 3600);
    else throw new UsageError(`unexpected argument ${JSON.stringify(a)}; usage: pypi-index ${SERVE_USAGE}`);
  }
  if (!listen) throw new UsageError(`--listen is required; usage: pypi-index ${SERVE_USAGE}`);
  return { listen, workers, drainMs: drainSeconds * 1000 };
}

/** Workers that exit by themselves before they listen, in a row: the primary gives up (systemd restarts it). */
const MAX_FAILED_STARTS = 5;

/** A stale socket of an earlier primary would make listen fail with EADDRINUSE. */
function removeStaleSocket(listen: Listen, log: (msg: string) => void): void {
  if (!("path" in listen)) return;
  try {
    if (!lstatSync(listen.path).isSocket())
      throw new Error(`appserver: ${listen.path} exists and is not a socket; refusing to remove it`);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return;
    throw err;
  }
  rmSync(listen.path, { force: true });
  log(`removed the stale socket ${listen.path}`);
}

/** Run the primary. Resolves never; exits the process when stopped or when workers cannot start. */
export function runPrimary(opts: AppServerOptions): void {
  const { log, workers: size, drainMs } = opts;
  const startTimeoutMs = opts.startTimeoutMs ?? 15_000;
  removeStaleSocket(opts.listen, log);
  const live = new Set<Worker>();
  /** Workers being replaced or stopped: their exit is expected and not replaced. */
  const retiring = new Set<Worker>();
  const listening = new Set<Worker>();
  /** A reload's new worker until it listens: if it dies first, the reload stops and nothing replaces it. */
  const candidates = new Set<Worker>();
  let failedStarts = 0;
  let stopping = false;
  let rolling: Promise<void> | undefined;
  let rollAgain = false;

  const where = "path" in opts.listen ? opts.listen.path : `${opts.listen.host}:${opts.listen.port}`;

  const spawn = (): Worker => {
    const w = cluster.fork();
    live.add(w);
    return w;
  };

  const retire = (w: Worker): void => {
    if (retiring.has(w) || w.isDead()) return;
    retiring.add(w);
    w.process.kill("SIGTERM");
    setTimeout(() => {
      if (!w.isDead()) {
        log(`worker ${w.process.pid} still busy ${drainMs} ms after SIGTERM; killing it`);
        w.process.kill("SIGKILL");
      }
    }, drainMs).unref();
  };

  cluster.on("listening", (w) => {
    if (listening.has(w)) return;
    listening.add(w);
    failedStarts = 0;
    log(`worker ${w.process.pid} listening on ${where} (${listening.size} of ${size})`);
  });

  cluster.on("exit", (w, code, signal) => {
    live.delete(w);
    const expected = retiring.delete(w) || candidates.delete(w);
    const wasListening = listening.delete(w);
    if (stopping) {
      if (live.size === 0) {
        log("all workers stopped");
        process.exit(0);
      }
      return;
    }
    if (expected) return;
    log(`worker ${w.process.pid} died (${signal ? `signal ${signal}` : `exit ${code}`}); starting another`);
    // A worker that exits by itself before it listens cannot start (a broken script or
    // environment); one killed by a signal could.
    if (!wasListening && code !== null && code !== 0 && ++failedStarts >= MAX_FAILED_STARTS) {
      log(`${failedStarts} workers in a row died before listening; giving up`);
      process.exit(1);
    }
    // At once, whatever the rate: node:cluster closes the shared socket when its last worker
    // is gone, and a slower replacement would turn kills from outside into refused requests.
    spawn();
  });

  /** Resolves true once `w` listens, false if it dies or takes longer than startTimeoutMs. */
  const ready = (w: Worker): Promise<boolean> =>
    new Promise((resolve) => {
      if (listening.has(w)) return resolve(true);
      const done = (ok: boolean): void => {
        clearTimeout(timer);
        w.off("listening", onListening);
        w.off("exit", onExit);
        resolve(ok);
      };
      const onListening = (): void => done(true);
      const onExit = (): void => done(false);
      const timer = setTimeout(() => done(false), startTimeoutMs);
      w.on("listening", onListening);
      w.on("exit", onExit);
    });

  const roll = async (): Promise<void> => {
    const old = [...live].filter((w) => !retiring.has(w));
    log(`reload: replacing ${old.length} workers one at a time`);
    let replaced = 0;
    for (const w of old) {
      if (stopping) return;
      const fresh = spawn();
      candidates.add(fresh);
      const ok = await ready(fresh);
      candidates.delete(fresh);
      if (!ok) {
        log(
          `reload: a new worker did not start listening; the ${old.length - replaced} old workers keep serving`,
        );
        retire(fresh);
        return;
      }
      retire(w);
      replaced++;
    }
    log(`reload: ${replaced} workers replaced`);
  };

  process.on("SIGHUP", () => {
    if (stopping) return;
    if (rolling) {
      rollAgain = true;
      return;
    }
    const run = async (): Promise<void> => {
      do {
        rollAgain = false;
        await roll();
      } while (rollAgain && !stopping);
      rolling = undefined;
    };
    rolling = run();
  });

  const stop = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    log(`${signal}: stopping ${live.size} workers`);
    if (live.size === 0) process.exit(0);
    for (const w of live) retire(w);
    setTimeout(() => process.exit(0), drainMs + 1_000).unref();
  };
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));
  process.on("SIGPIPE", () => {});

  // Shared accept, not round-robin: with round-robin the primary accepts and hands the
  // connection to a worker, and a worker killed before it took the handle leaves that request
  // hanging until Apache's timeout. With a shared socket a dead worker's own connections are
  // reset (nginx retries them) and the rest wait in the backlog for the others.
  cluster.schedulingPolicy = cluster.SCHED_NONE;
  log(`starting ${size} workers on ${where}`);
  for (let i = 0; i < size; i++) spawn();
}
