/**
 * CDN purge after a page change. The page writer queues the paths a change made stale
 * (queueStalePaths, after the new pages are in place); the cdn-purge job sends everything queued
 * as one bounded CloudFront invalidation per run. In the lab a directory stands in for
 * CloudFront and receives the batch the job would send. The index pages' max-age stays the
 * bound when a purge is late or fails.
 *
 * The queue lives on the package volume, so a purge queued by an app server that dies is sent
 * by the other one. Two jobs never send the same entry: each claims an entry by renaming it.
 */
import { randomBytes } from "node:crypto";
import {
  closeSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  unlinkSync,
  utimesSync,
  writeFileSync,
} from "node:fs";
import { hostname } from "node:os";
import { AWS_CLI_OPTIONS, type AwsRunner, runAws } from "./copies.js";
import { fsyncDir, writeNewFile } from "./fsutil.js";

export const cdnQueueDir = (root: string): string => `${root}/cdn-purge`;
/** The job's wake-up call: its path unit starts the job while this file exists. */
export const cdnPurgeMarkerPath = (root: string): string => `${cdnQueueDir(root)}/wanted`;

const ENTRY = /^[0-9]{13}-[A-Za-z0-9._-]+\.paths$/;
const CLAIM = ".sending";
/** A claim older than this belongs to a job that died mid-send: the entry goes back in the queue. */
export const STALE_CLAIM_MS = 10 * 60_000;

/**
 * After a failed send, a run started by a new entry leaves the queue alone for this long; the
 * job's timer (the same period) tries again. CloudFront refusing (too many invalidations in
 * progress) is answered by waiting, not by a run per upload.
 */
export const RETRY_AFTER_FAILURE_MS = 30_000;
const lastFailurePath = (dir: string): string => `${dir}/last-failure`;

/**
 * The job gathers for this long after the oldest entry was queued, so an upload's files (and
 * uploads close together) go out as one invalidation.
 */
export const BATCH_WINDOW_MS = 2_000;

/**
 * CloudFront keeps at most 15 wildcard paths and 3,000 plain paths in progress per distribution.
 * A batch above either bound here becomes PURGE_ALL: two wildcards for everything that changes.
 */
export const MAX_WILDCARD_PATHS = 8;
export const MAX_PATHS = 100;
export const PURGE_ALL: readonly string[] = ["/pypi/*", "/simple/*"];

const PROJECT = /^[a-z0-9]([a-z0-9-]*[a-z0-9])?$/;
/** What a queue entry may name: index paths only, never a package file or anything else. */
const PURGEABLE = /^\/(simple\/([a-z0-9-]+\/\*)?|pypi\/[a-z0-9-]+\/json|simple\/\*|pypi\/\*)$/;

/**
 * What a change of `project`'s pages (and of the root page, when `root`) makes stale.
 * `/simple/<project>/*` covers the page and every `?format=` spelling (PEP 691) in the cache key;
 * Accept is a header, and an invalidation drops every header variant of a path.
 */
export function stalePaths(project: string | undefined, root: boolean): string[] {
  const paths: string[] = [];
  if (project !== undefined) {
    if (!PROJECT.test(project))
      throw new Error(`cdn: not a normalized project name: ${JSON.stringify(project)}`);
    paths.push(`/simple/${project}/*`, `/pypi/${project}/json`);
  }
  if (root) paths.push("/simple/");
  return paths;
}

/** The paths of one invalidation: sorted, without duplicates, within CloudFront's bounds. */
export function invalidationBatch(paths: Iterable<string>): { paths: string[]; collapsed: boolean } {
  const unique = [...new Set(paths)].sort();
  const wildcards = unique.filter((p) => p.endsWith("*")).length;
  if (wildcards > MAX_WILDCARD_PATHS || unique.length > MAX_PATHS)
    return { paths: [...PURGE_ALL], collapsed: true };
  return { paths: unique, collapsed: false };
}

const message = (err: unknown): string => (err instanceof Error ? err.message : String(err));

/**
 * Queue `paths` for the purge job. Never fails the caller: the change is committed and its pages
 * written; a purge that cannot be queued leaves the CDN stale for at most the pages' max-age.
 */
export function queueStalePaths(root: string, paths: readonly string[], log: (msg: string) => void): void {
  if (paths.length === 0) return;
  const dir = cdnQueueDir(root);
  const name = `${Date.now()}-${hostname().replace(/[^A-Za-z0-9._-]/g, "_")}-${process.pid}-${randomBytes(4).toString("hex")}.paths`;
  try {
    mkdirSync(dir, { recursive: true, mode: 0o755 });
    // Written under a name the job ignores, then renamed: the job never reads half an entry.
    writeNewFile(`${dir}/.${name}`, Buffer.from(`${paths.join("\n")}\n`));
    renameSync(`${dir}/.${name}`, `${dir}/${name}`);
    fsyncDir(dir);
    closeSync(openSync(cdnPurgeMarkerPath(root), "a", 0o644));
  } catch (err) {
    log(`cdn: cannot queue a purge of ${paths.join(" ")} in ${dir} (stale until max-age): ${message(err)}`);
  }
}

/** Where invalidations go. */
export interface Invalidator {
  /** Send one invalidation; resolves to its id. */
  send(paths: readonly string[], callerReference: string): Promise<string>;
  describe(): string;
}

/** The InvalidationBatch of CloudFront's API, as `aws cloudfront create-invalidation` takes it. */
export const invalidationBatchJson = (paths: readonly string[], callerReference: string) => ({
  Paths: { Quantity: paths.length, Items: [...paths] },
  CallerReference: callerReference,
});

/** CloudFront through the AWS CLI, with the instance profile's credentials (the app role may invalidate this distribution only). */
export class CloudFrontInvalidator implements Invalidator {
  constructor(
    readonly distributionId: string,
    private readonly run: AwsRunner = runAws,
  ) {}

  async send(paths: readonly string[], callerReference: string): Promise<string> {
    const r = await this.run(
      [
        "cloudfront",
        "create-invalidation",
        "--distribution-id",
        this.distributionId,
        "--invalidation-batch",
        JSON.stringify(invalidationBatchJson(paths, callerReference)),
        ...AWS_CLI_OPTIONS,
      ],
      120_000,
    );
    if (r.status !== 0)
      throw new Error(
        `aws cloudfront create-invalidation --distribution-id ${this.distributionId} exited ${r.status}: ${r.stderr.trim()}`,
      );
    let id: unknown;
    try {
      id = (JSON.parse(r.stdout) as { Invalidation?: { Id?: unknown } }).Invalidation?.Id;
    } catch {
      id = undefined;
    }
    if (typeof id !== "string")
      throw new Error(`aws cloudfront create-invalidation: unreadable answer ${r.stdout.slice(0, 200)}`);
    return id;
  }

  describe(): string {
    return `cloudfront:${this.distributionId}`;
  }
}

/** The lab's stand-in for CloudFront: each invalidation becomes `<dir>/<caller reference>.json`. */
export class DirectoryInvalidator implements Invalidator {
  constructor(readonly dir: string) {}

  async send(paths: readonly string[], callerReference: string): Promise<string> {
    const body = JSON.stringify({
      InvalidationBatch: invalidationBatchJson(paths, callerReference),
      CreateTime: new Date().toISOString(),
    });
    const name = `${callerReference}.json`;
    writeNewFile(`${this.dir}/.${name}`, Buffer.from(`${body}\n`));
    renameSync(`${this.dir}/.${name}`, `${this.dir}/${name}`);
    return callerReference;
  }

  describe(): string {
    return this.dir;
  }
}

export const CDN_INVALIDATIONS_FORMS = "cloudfront:<distribution id> or an absolute directory";
/** A CloudFront distribution as the purge's target; the schema takes the same form. */
export const CLOUDFRONT_TARGET = /^cloudfront:([A-Z0-9]{1,64})$/;

/** The invalidator PYPI_CDN_INVALIDATIONS names. */
export function invalidatorFor(location: string, run: AwsRunner = runAws): Invalidator {
  const cf = CLOUDFRONT_TARGET.exec(location);
  if (cf) return new CloudFrontInvalidator(cf[1] as string, run);
  if (location.startsWith("/") && !location.split("/").includes(".."))
    return new DirectoryInvalidator(location);
  throw new Error(
    `PYPI_CDN_INVALIDATIONS: expected ${CDN_INVALIDATIONS_FORMS}, got ${JSON.stringify(location)}`,
  );
}

export interface PurgeSummary {
  /** Queue entries this run sent (0: nothing was queued, or the run deferred). */
  readonly entries: number;
  /** The last send failed less than RETRY_AFTER_FAILURE_MS ago: the queue waits for the timer's run. */
  readonly deferred?: boolean;
  readonly paths: readonly string[];
  /** The batch exceeded a bound and became PURGE_ALL. */
  readonly collapsed: boolean;
  readonly invalidation?: string;
  /** Entries left out: unreadable, or naming a path the purge never sends. */
  readonly dropped: number;
}

/** Milliseconds since `path` was last written; undefined when it does not exist. */
function ageMs(path: string): number | undefined {
  try {
    return Date.now() - statSync(path).mtimeMs;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw err;
  }
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const queuedAt = (name: string): number => Number(name.slice(0, 13));

/** Put back the entries of a job that died while sending them. */
function releaseStaleClaims(dir: string, now: number): void {
  for (const name of readdirSync(dir)) {
    if (!name.endsWith(CLAIM)) continue;
    const claimed = `${dir}/${name}`;
    let age: number;
    try {
      age = now - statSync(claimed).mtimeMs;
    } catch {
      continue;
    }
    if (age < STALE_CLAIM_MS) continue;
    const original = name.slice(0, name.indexOf(".paths") + ".paths".length);
    try {
      renameSync(claimed, `${dir}/${original}`);
    } catch {
      // Another job released it first.
    }
  }
}

/**
 * Send what is queued as one invalidation. Entries are removed only after CloudFront accepted
 * the batch; a failure (TooManyInvalidationsInProgress, no route to the API) puts them back, and
 * the job's timer retries with whatever has been queued since.
 */
export async function purgeCdn(
  root: string,
  invalidator: Invalidator,
  log: (msg: string) => void,
  opts: { windowMs?: number; node?: string; retryAfterFailureMs?: number } = {},
): Promise<PurgeSummary> {
  const dir = cdnQueueDir(root);
  const idle: PurgeSummary = { entries: 0, paths: [], collapsed: false, dropped: 0 };
  // Before looking: an entry queued from now on makes a new marker, and so a new run.
  rmSync(cdnPurgeMarkerPath(root), { force: true });
  const queued = (): string[] => {
    try {
      return readdirSync(dir)
        .filter((n) => ENTRY.test(n))
        .sort();
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return [];
      throw err;
    }
  };
  try {
    releaseStaleClaims(dir, Date.now());
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return idle;
    throw err;
  }
  const sinceFailure = ageMs(lastFailurePath(dir));
  if (sinceFailure !== undefined && sinceFailure < (opts.retryAfterFailureMs ?? RETRY_AFTER_FAILURE_MS)) {
    log(`cdn: the last send failed ${Math.round(sinceFailure / 1000)} s ago; the timer's run tries again`);
    return { ...idle, deferred: true };
  }
  const first = queued()[0];
  if (first === undefined) return idle;
  const windowMs = opts.windowMs ?? BATCH_WINDOW_MS;
  // At most one window: an entry stamped ahead (another app server's clock) must not stall the job.
  const wait = Math.min(windowMs, queuedAt(first) + windowMs - Date.now());
  if (wait > 0) await sleep(wait);

  const node = (opts.node ?? hostname()).replace(/[^A-Za-z0-9._-]/g, "_");
  const claims: { entry: string; claim: string }[] = [];
  for (const name of queued()) {
    const claim = `${dir}/${name}.${node}${CLAIM}`;
    try {
      renameSync(`${dir}/${name}`, claim);
      // A rename keeps the queue time; the claim's age must count from now (releaseStaleClaims).
      const now = new Date();
      utimesSync(claim, now, now);
      claims.push({ entry: `${dir}/${name}`, claim });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
    }
  }
  if (claims.length === 0) return idle;

  const wanted: string[] = [];
  let dropped = 0;
  for (const { claim } of claims) {
    const lines = readFileSync(claim, "utf8")
      .split("\n")
      .filter((l) => l !== "");
    const bad = lines.filter((l) => !PURGEABLE.test(l));
    if (bad.length > 0 || lines.length === 0) {
      dropped++;
      log(
        `cdn: dropped ${claim}: ${bad.length > 0 ? `not an index path: ${JSON.stringify(bad[0])}` : "empty"}`,
      );
      continue;
    }
    wanted.push(...lines);
  }
  const batch = invalidationBatch(wanted);
  let invalidation: string | undefined;
  if (wanted.length > 0) {
    const callerReference = `${node}-${Date.now()}-${randomBytes(4).toString("hex")}`;
    try {
      invalidation = await invalidator.send(batch.paths, callerReference);
    } catch (err) {
      for (const { entry, claim } of claims) {
        try {
          renameSync(claim, entry);
        } catch {
          // Already gone: nothing to put back.
        }
      }
      writeFileSync(lastFailurePath(dir), `${message(err)}\n`);
      throw new Error(`cdn: ${claims.length} queued purge(s) kept for the next run: ${message(err)}`);
    }
    log(
      `cdn: invalidation ${invalidation} via ${invalidator.describe()}: ${batch.paths.join(" ")}${batch.collapsed ? ` (${new Set(wanted).size} paths over the bound)` : ""}`,
    );
  }
  for (const { claim } of claims) unlinkSync(claim);
  rmSync(lastFailurePath(dir), { force: true });
  return {
    entries: claims.length,
    paths: invalidation ? batch.paths : [],
    collapsed: batch.collapsed,
    invalidation,
    dropped,
  };
}
