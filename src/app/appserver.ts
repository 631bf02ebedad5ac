/**
 * The `appserver` runtime: the index app as its own service (pypi-index.service) instead of
 * processes mod_fcgid spawns. One primary keeps `workers` FastCGI workers on one listening
 * socket that they all accept from. The primary binds it and hands it to each worker as an
 * inherited fd (WORKER_SOCKET_FD), and never accepts on it itself: the socket lives as long as the primary, so
 * while every worker is dead at once requests wait in its backlog instead of being refused. It
 *  - starts a replacement at once when a worker dies, and gives up (for systemd to restart it)
 *    when new workers keep exiting before they listen;
 *  - on SIGHUP replaces the workers one at a time, each only after its successor listens, so a
 *    new script or environment takes effect without refusing a request, and a successor that
 *    cannot start leaves the old workers serving;
 *  - on SIGTERM lets every worker finish what it has accepted (up to `drainMs`), then exits.
 * The workers are the process's own script run again with the same arguments, marked by
 * WORKER_ENV.
 */
import { type ChildProcess, fork } from "node:child_process";
import { lstatSync, rmSync } from "node:fs";
import net from "node:net";
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

/** The listening socket's fd in a worker. */
export const WORKER_SOCKET_FD = 4;
/** Set in a worker's environment: WORKER_SOCKET_FD is the listening socket, and the parent is the primary. */
export const WORKER_ENV = "PYPI_INDEX_WORKER";
/** What a worker sends its primary once it accepts on WORKER_SOCKET_FD. */
export const WORKER_LISTENING = "pypi-index:listening";

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

interface BoundHandle {
  readonly fd: number;
}
type CreateServerHandle = (
  address: string | null,
  port: number,
  addressType: number,
  fd: number | undefined,
  flags: number,
) => BoundHandle | number;

/**
 * A socket bound to `listen` that this process holds but never accepts on. node:net's own
 * server-handle factory (what node:cluster's primary uses for the same purpose): a public
 * net.Server would accept.
 */
function bindWithoutAccepting(listen: Listen): BoundHandle {
  const create = (net as unknown as { _createServerHandle?: CreateServerHandle })._createServerHandle;
  if (typeof create !== "function")
    throw new Error(
      "appserver: this Node.js has no net._createServerHandle; cannot hold the listening socket",
    );
  const bound =
    "path" in listen
      ? create(listen.path, -1, -1, undefined, 0)
      : create(listen.host, listen.port, net.isIP(listen.host) === 6 ? 6 : 4, undefined, 0);
  if (typeof bound === "number")
    throw new Error(
      `appserver: cannot bind ${"path" in listen ? listen.path : `${listen.host}:${listen.port}`} (errno ${bound})`,
    );
  return bound;
}

/** Run the primary. Resolves never; exits the process when stopped or when workers cannot start. */
export function runPrimary(opts: AppServerOptions): void {
  const { log, workers: size, drainMs } = opts;
  const startTimeoutMs = opts.startTimeoutMs ?? 15_000;
  removeStaleSocket(opts.listen, log);
  const socket = bindWithoutAccepting(opts.listen);
  const live = new Set<ChildProcess>();
  /** Workers being replaced or stopped: their exit is expected and not replaced. */
  const retiring = new Set<ChildProcess>();
  const listening = new Set<ChildProcess>();
  /** A reload's new worker until it listens: if it dies first, the reload stops and nothing replaces it. */
  const candidates = new Set<ChildProcess>();
  let failedStarts = 0;
  let stopping = false;
  let rolling: Promise<void> | undefined;
  let rollAgain = false;

  const where = "path" in opts.listen ? opts.listen.path : `${opts.listen.host}:${opts.listen.port}`;

  const isDead = (w: ChildProcess): boolean => w.exitCode !== null || w.signalCode !== null;

  const onListening = (w: ChildProcess): void => {
    if (listening.has(w)) return;
    listening.add(w);
    failedStarts = 0;
    log(`worker ${w.pid} listening on ${where} (${listening.size} of ${size})`);
  };

  const onExit = (w: ChildProcess, code: number | null, signal: NodeJS.Signals | null): void => {
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
    log(`worker ${w.pid} died (${signal ? `signal ${signal}` : `exit ${code}`}); starting another`);
    // A worker that exits by itself before it listens cannot start (a broken script or
    // environment); one killed by a signal could.
    if (!wasListening && code !== null && code !== 0 && ++failedStarts >= MAX_FAILED_STARTS) {
      log(`${failedStarts} workers in a row died before listening; giving up`);
      process.exit(1);
    }
    spawn();
  };

  function spawn(): ChildProcess {
    const w = fork(process.argv[1] as string, process.argv.slice(2), {
      env: { ...process.env, [WORKER_ENV]: "1" },
      execArgv: process.execArgv,
      // Above stdio: libuv never closes fds 0-2, so a worker's stop could not let go of it.
      stdio: ["ignore", "inherit", "inherit", "ipc", socket.fd],
    });
    live.add(w);
    w.on("message", (m) => {
      if (m === WORKER_LISTENING) onListening(w);
    });
    w.on("exit", (code, signal) => onExit(w, code, signal));
    // A worker killed mid-send closes the channel; its exit handles that.
    w.on("error", (err) => log(`worker ${w.pid}: ${err.message}`));
    return w;
  }

  const retire = (w: ChildProcess): void => {
    if (retiring.has(w) || isDead(w)) return;
    retiring.add(w);
    w.kill("SIGTERM");
    setTimeout(() => {
      if (!isDead(w)) {
        log(`worker ${w.pid} still busy ${drainMs} ms after SIGTERM; killing it`);
        w.kill("SIGKILL");
      }
    }, drainMs).unref();
  };

  /** Resolves true once `w` listens, false if it dies or takes longer than startTimeoutMs. */
  const ready = (w: ChildProcess): Promise<boolean> =>
    new Promise((resolve) => {
      if (listening.has(w)) return resolve(true);
      const done = (ok: boolean): void => {
        clearTimeout(timer);
        w.off("message", onMessage);
        w.off("exit", onGone);
        resolve(ok);
      };
      const onMessage = (m: unknown): void => {
        if (m === WORKER_LISTENING) done(true);
      };
      const onGone = (): void => done(false);
      const timer = setTimeout(() => done(false), startTimeoutMs);
      w.on("message", onMessage);
      w.on("exit", onGone);
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

  log(`starting ${size} workers on ${where}`);
  for (let i = 0; i < size; i++) spawn();
}
