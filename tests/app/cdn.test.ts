/**
 * The CDN purge: which paths a page change makes stale, the bounds of one invalidation, and the
 * queue the page writer fills and the purge job empties (claims, failures, hostile entries).
 */
import {
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  utimesSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  CloudFrontInvalidator,
  cdnPurgeMarkerPath,
  cdnQueueDir,
  DirectoryInvalidator,
  type Invalidator,
  invalidationBatch,
  invalidatorFor,
  MAX_PATHS,
  MAX_WILDCARD_PATHS,
  PURGE_ALL,
  purgeCdn,
  queueStalePaths,
  STALE_CLAIM_MS,
  stalePaths,
} from "../../src/app/cdn.js";
import { loadConfig } from "../../src/app/config.js";
import type { AwsResult } from "../../src/app/copies.js";

describe("stalePaths", () => {
  it("a project's page in every ?format= spelling and its JSON; the root page when the list changed", () => {
    expect(stalePaths("demo-pkg", false)).toEqual(["/simple/demo-pkg/*", "/pypi/demo-pkg/json"]);
    expect(stalePaths("demo-pkg", true)).toEqual(["/simple/demo-pkg/*", "/pypi/demo-pkg/json", "/simple/"]);
    expect(stalePaths(undefined, true)).toEqual(["/simple/"]);
  });

  it("refuses a name that is not normalized: it would purge someone else's pages or nothing", () => {
    for (const bad of ["Demo_Pkg", "../packages", "a/b", "*", "", "demo-"])
      expect(() => stalePaths(bad, false), bad).toThrow(/not a normalized project name/);
  });
});

describe("invalidationBatch", () => {
  it("sorts and drops duplicates", () => {
    expect(invalidationBatch(["/simple/b/*", "/simple/", "/simple/a/*", "/simple/"])).toEqual({
      paths: ["/simple/", "/simple/a/*", "/simple/b/*"],
      collapsed: false,
    });
  });

  it("becomes the two wildcards for everything once it holds more wildcard paths than CloudFront keeps in progress", () => {
    const projects = (n: number) => Array.from({ length: n }, (_, i) => `p${i}`);
    const at = projects(MAX_WILDCARD_PATHS).flatMap((p) => stalePaths(p, false));
    expect(invalidationBatch(at).collapsed).toBe(false);
    const over = projects(MAX_WILDCARD_PATHS + 1).flatMap((p) => stalePaths(p, false));
    expect(invalidationBatch(over)).toEqual({ paths: [...PURGE_ALL], collapsed: true });
    // Within CloudFront's 15 wildcard paths in progress, even with one batch still running.
    expect(2 * MAX_WILDCARD_PATHS).toBeLessThanOrEqual(16);
    const plain = Array.from({ length: MAX_PATHS + 1 }, (_, i) => `/pypi/p${i}/json`);
    expect(invalidationBatch(plain).collapsed).toBe(true);
  });
});

describe("the purge queue and job", () => {
  let root = "";
  let sent: { paths: readonly string[]; ref: string }[] = [];
  const log: string[] = [];
  const recorder: Invalidator = {
    async send(paths, ref) {
      sent.push({ paths, ref });
      return `I${sent.length}`;
    },
    describe: () => "recorder",
  };
  const entries = () => readdirSync(cdnQueueDir(root)).filter((n) => n !== "wanted" && n !== "last-failure");

  beforeEach(() => {
    root = mkdtempSync(join(tmpdir(), "cdn-"));
    sent = [];
    log.length = 0;
  });
  afterEach(() => rmSync(root, { recursive: true, force: true }));

  it("sends nothing when nothing is queued", async () => {
    expect(await purgeCdn(root, recorder, (m) => log.push(m))).toMatchObject({ entries: 0, paths: [] });
    expect(sent).toEqual([]);
  });

  it("changes queued close together go out as one invalidation of exactly their paths, then the queue is empty", async () => {
    queueStalePaths(root, stalePaths("alpha", true), (m) => log.push(m));
    queueStalePaths(root, stalePaths("beta", false), (m) => log.push(m));
    queueStalePaths(root, stalePaths("alpha", false), (m) => log.push(m));
    expect(readFileSync(cdnPurgeMarkerPath(root), "utf8")).toBe("");
    const summary = await purgeCdn(root, recorder, (m) => log.push(m), { windowMs: 0, node: "app-a" });
    expect(sent).toHaveLength(1);
    expect(sent[0]?.paths).toEqual([
      "/pypi/alpha/json",
      "/pypi/beta/json",
      "/simple/",
      "/simple/alpha/*",
      "/simple/beta/*",
    ]);
    expect(sent[0]?.ref).toMatch(/^app-a-\d+-[0-9a-f]{8}$/);
    expect(summary).toMatchObject({ entries: 3, invalidation: "I1", collapsed: false, dropped: 0 });
    expect(entries()).toEqual([]);
    // The marker goes first: whatever is queued after this run starts another.
    expect(readdirSync(cdnQueueDir(root))).toEqual([]);
  });

  it("waits out the batch window after the oldest entry before it sends", async () => {
    queueStalePaths(root, stalePaths("alpha", false), () => {});
    const started = Date.now();
    await purgeCdn(root, recorder, () => {}, { windowMs: 300 });
    expect(Date.now() - started).toBeGreaterThanOrEqual(250);
    expect(sent).toHaveLength(1);
  });

  it("an entry stamped in the future (another app server's clock) delays a run by one window at most", async () => {
    const dir = cdnQueueDir(root);
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, `${Date.now() + 3_600_000}-app-b-1-cc.paths`), "/simple/ahead/*\n");
    const started = Date.now();
    await purgeCdn(root, recorder, () => {}, { windowMs: 300 });
    expect(Date.now() - started).toBeLessThan(2_000);
    expect(sent.map((s) => s.paths)).toEqual([["/simple/ahead/*"]]);
  });

  it("a failed send keeps every entry for the next run, which sends them", async () => {
    queueStalePaths(root, stalePaths("alpha", false), () => {});
    const failing: Invalidator = {
      send: async () => {
        throw new Error("TooManyInvalidationsInProgress");
      },
      describe: () => "failing",
    };
    await expect(purgeCdn(root, failing, () => {}, { windowMs: 0 })).rejects.toThrow(
      /1 queued purge\(s\) kept for the next run: TooManyInvalidationsInProgress/,
    );
    expect(entries()).toHaveLength(1);
    expect(entries()[0]).toMatch(/\.paths$/);
    // A run a new upload starts right after the failure waits for the timer's.
    queueStalePaths(root, stalePaths("beta", false), () => {});
    expect(await purgeCdn(root, recorder, (m) => log.push(m), { windowMs: 0 })).toMatchObject({
      deferred: true,
      entries: 0,
    });
    expect(log.join("\n")).toMatch(/the last send failed \d+ s ago; the timer's run tries again/);
    expect(sent).toEqual([]);
    expect(entries()).toHaveLength(2);
    // The timer's run, a retry period later, sends both.
    await purgeCdn(root, recorder, () => {}, { windowMs: 0, retryAfterFailureMs: 0 });
    expect(sent.map((s) => s.paths)).toEqual([
      ["/pypi/alpha/json", "/pypi/beta/json", "/simple/alpha/*", "/simple/beta/*"],
    ]);
    expect(readdirSync(cdnQueueDir(root))).toEqual([]);
  });

  it("a second job (the other app server) started mid-send leaves the first job's claims alone", async () => {
    for (const p of ["p0", "p1", "p2"]) queueStalePaths(root, stalePaths(p, false), () => {});
    const byJob: Record<string, readonly string[]> = {};
    const second: Invalidator = {
      async send(paths) {
        byJob.b = paths;
        return "IB";
      },
      describe: () => "b",
    };
    const first: Invalidator = {
      async send(paths) {
        byJob.a = paths;
        // While A's batch is in flight: one more change, and app-b's job runs.
        queueStalePaths(root, stalePaths("p3", false), () => {});
        await purgeCdn(root, second, () => {}, { windowMs: 0, node: "app-b" });
        return "IA";
      },
      describe: () => "a",
    };
    await purgeCdn(root, first, () => {}, { windowMs: 0, node: "app-a" });
    expect(byJob.a).toEqual(["p0", "p1", "p2"].flatMap((p) => stalePaths(p, false)).sort());
    expect(byJob.b).toEqual(stalePaths("p3", false).sort());
    expect(entries()).toEqual([]);
  });

  it("a claim left by a job that died mid-send goes back to the queue after STALE_CLAIM_MS", async () => {
    queueStalePaths(root, stalePaths("alpha", false), () => {});
    const [name] = entries();
    const dir = cdnQueueDir(root);
    const claim = join(dir, `${name}.app-b.sending`);
    writeFileSync(claim, readFileSync(join(dir, name as string)));
    rmSync(join(dir, name as string));
    // Fresh: another job is sending it; nothing to do.
    await purgeCdn(root, recorder, () => {}, { windowMs: 0 });
    expect(sent).toEqual([]);
    const old = new Date(Date.now() - STALE_CLAIM_MS - 1000);
    utimesSync(claim, old, old);
    await purgeCdn(root, recorder, () => {}, { windowMs: 0 });
    expect(sent.map((s) => s.paths)).toEqual([["/pypi/alpha/json", "/simple/alpha/*"]]);
    expect(readdirSync(dir)).toEqual([]);
  });

  it("an entry naming anything but index paths is dropped, not sent (a hostile or damaged queue)", async () => {
    const dir = cdnQueueDir(root);
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, `${Date.now()}-evil-1-aa.paths`), "/*\n/packages/demo/demo-1.0.whl\n");
    writeFileSync(join(dir, `${Date.now()}-empty-1-bb.paths`), "");
    queueStalePaths(root, stalePaths("alpha", false), () => {});
    const summary = await purgeCdn(root, recorder, (m) => log.push(m), { windowMs: 0 });
    expect(sent.map((s) => s.paths)).toEqual([["/pypi/alpha/json", "/simple/alpha/*"]]);
    expect(summary.dropped).toBe(2);
    expect(log.join("\n")).toMatch(/not an index path: "\/\*"/);
    expect(entries()).toEqual([]);
  });

  it("a queue that cannot be written logs and never fails the registration", () => {
    writeFileSync(join(root, "cdn-purge"), "a file where the directory should be");
    expect(() => queueStalePaths(root, stalePaths("alpha", false), (m) => log.push(m))).not.toThrow();
    expect(log.join("\n")).toMatch(
      /cannot queue a purge of \/simple\/alpha\/\* \/pypi\/alpha\/json .*stale until max-age/,
    );
  });

  it("the directory stand-in records the batch as CloudFront's API takes it", async () => {
    const dir = join(root, "cloudfront");
    mkdirSync(dir);
    const id = await new DirectoryInvalidator(dir).send(["/simple/"], "ref-1");
    expect(id).toBe("ref-1");
    const body = JSON.parse(readFileSync(join(dir, "ref-1.json"), "utf8"));
    expect(body.InvalidationBatch).toEqual({
      Paths: { Quantity: 1, Items: ["/simple/"] },
      CallerReference: "ref-1",
    });
    expect(Date.parse(body.CreateTime)).not.toBeNaN();
  });
});

describe("CloudFrontInvalidator", () => {
  it("calls create-invalidation on its distribution with the batch, and returns the invalidation id", async () => {
    const calls: (readonly string[])[] = [];
    const ok = async (argv: readonly string[]): Promise<AwsResult> => {
      calls.push(argv);
      return {
        status: 0,
        stdout: JSON.stringify({ Invalidation: { Id: "I2ABC", Status: "InProgress" } }),
        stderr: "",
      };
    };
    const cf = new CloudFrontInvalidator("E1ABCDEF", ok);
    expect(await cf.send(["/simple/a/*", "/pypi/a/json"], "ref-2")).toBe("I2ABC");
    const argv = calls[0] ?? [];
    expect(argv.slice(0, 4)).toEqual(["cloudfront", "create-invalidation", "--distribution-id", "E1ABCDEF"]);
    const batch = JSON.parse(argv[argv.indexOf("--invalidation-batch") + 1] ?? "");
    expect(batch).toEqual({
      Paths: { Quantity: 2, Items: ["/simple/a/*", "/pypi/a/json"] },
      CallerReference: "ref-2",
    });
  });

  it("a refused call fails with what the CLI said", async () => {
    const refused = async (): Promise<AwsResult> => ({
      status: 254,
      stdout: "",
      stderr: "An error occurred (AccessDenied) when calling the CreateInvalidation operation",
    });
    await expect(new CloudFrontInvalidator("E1ABCDEF", refused).send(["/simple/"], "r")).rejects.toThrow(
      /exited 254: An error occurred \(AccessDenied\)/,
    );
  });
});

describe("PYPI_CDN_INVALIDATIONS", () => {
  const base = {
    PYPI_DB_HOST: "127.0.0.1",
    PYPI_DB_NAME: "pypi",
    PYPI_DB_USER: "pypi_app",
    PYPI_PACKAGE_ROOT: "/srv/pypi",
    PYPI_FILE_COPIES: "/srv/copies",
  };

  it("unset or empty: no CDN; a distribution or a directory otherwise", () => {
    expect(loadConfig(base).cdnInvalidations).toBeUndefined();
    expect(loadConfig({ ...base, PYPI_CDN_INVALIDATIONS: "" }).cdnInvalidations).toBeUndefined();
    expect(
      loadConfig({ ...base, PYPI_CDN_INVALIDATIONS: "cloudfront:E2QWRUHEXAMPLE" }).cdnInvalidations,
    ).toBe("cloudfront:E2QWRUHEXAMPLE");
    expect(invalidatorFor("cloudfront:E2QWRUHEXAMPLE")).toBeInstanceOf(CloudFrontInvalidator);
    expect(invalidatorFor("/srv/cdn")).toBeInstanceOf(DirectoryInvalidator);
  });

  it("a typo fails at start, naming the key, the value and the forms", () => {
    for (const bad of [
      "E2QWRUHEXAMPLE",
      "cloudfront:e2qwru",
      "cloudfront:",
      "s3://bucket",
      "relative/dir",
      "/srv/../etc",
    ])
      expect(() => loadConfig({ ...base, PYPI_CDN_INVALIDATIONS: bad }), bad).toThrow(
        `PYPI_CDN_INVALIDATIONS: expected cloudfront:<distribution id> or an absolute directory, got ${JSON.stringify(bad)}`,
      );
  });
});
