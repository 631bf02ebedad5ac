/**
 * Index app benchmark: `/simple/<project>/` for a project with 1,000 files in an index of
 * 10,000 projects, as Apache serves it from the page writer's static files (negotiated by type
 * map), against Apache serving a plain static file of the same size. Both forms: JSON with
 * pip's Accept, HTML with `*\/*`; plus the gzip form pip actually gets, the dynamic fallback for
 * comparison, and the resident memory of each FastCGI worker. Loopback inside a private
 * network namespace only, in the lab's app sandbox (app-a of lab/topology.json). Prints a
 * table and writes bench/results/app.json; `--json` prints one JSON line instead.
 */
import { createHash } from "node:crypto";
import { mkdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { cpus } from "node:os";
import { join } from "node:path";
import { AppSandbox } from "../lab/lib/app-sandbox.js";
import { type ProjectSnapshot, type ReleaseFile, writeProjectPages, writeRootPages } from "../src/app/pages.js";

const PROJECTS = 10_000;
const FILES = 1_000;
const BIG = "big-project";
const LATENCY_REQUESTS = 2_000;
const THROUGHPUT_REQUESTS = 20_000;
const DYNAMIC_REQUESTS = 2_000;
const CONCURRENCY = 8;
const OUT = join(process.cwd(), "bench/results/app.json");
const JSON_ONLY = process.argv.includes("--json");

const PIP_ACCEPT =
  "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01";

const say = (line: string): void => {
  if (!JSON_ONLY) console.log(line);
};

interface AbResult {
  rps: number;
  p50: number;
  p99: number;
  max: number;
  failed: number;
  bytes: number;
}

function ab(sb: AppSandbox, url: string, n: number, c: number, headers: readonly string[] = []): AbResult {
  const csv = `/tmp/ab-${process.pid}-${Math.random().toString(36).slice(2)}.csv`;
  const r = sb.exec(
    ["ab", "-q", "-k", "-n", String(n), "-c", String(c), "-e", csv, ...headers.flatMap((h) => ["-H", h]), url],
    { timeoutMs: 300_000 },
  );
  const num = (re: RegExp): number => Number(re.exec(r.stdout)?.[1] ?? Number.NaN);
  const pct = new Map(
    sb
      .exec(["cat", csv])
      .stdout.split("\n")
      .slice(1)
      .filter(Boolean)
      .map((l) => l.split(",").map(Number) as [number, number]),
  );
  sb.exec(["rm", "-f", csv]);
  return {
    rps: num(/Requests per second:\s+([0-9.]+)/),
    p50: pct.get(50) ?? Number.NaN,
    p99: pct.get(99) ?? Number.NaN,
    max: pct.get(100) ?? Number.NaN,
    failed: num(/Failed requests:\s+([0-9]+)/) + (num(/Non-2xx responses:\s+([0-9]+)/) || 0),
    bytes: num(/Document Length:\s+([0-9]+) bytes/),
  };
}

function seed(sb: AppSandbox): void {
  const hex = "md5(i::text) || md5((i + 1)::text)";
  sb.psql(
    [
      "BEGIN;",
      `INSERT INTO projects (name, display_name) SELECT 'proj-' || lpad(i::text, 5, '0'), 'proj_' || i FROM generate_series(1, ${PROJECTS - 1}) i;`,
      `INSERT INTO projects (name, display_name) VALUES ('${BIG}', '${BIG}');`,
      `INSERT INTO files (filename, project, version, packagetype, sha256, size, uploader, state)
         SELECT 'proj_' || lpad(i::text, 5, '0') || '-1.0.tar.gz', 'proj-' || lpad(i::text, 5, '0'), '1.0', 'sdist', ${hex}, 1000, 'bench', 'ok'
           FROM generate_series(1, ${PROJECTS - 1}) i;`,
      `INSERT INTO files (filename, project, version, packagetype, sha256, size, requires_python, uploader, state)
         SELECT 'big_project-' || (i / 10) || '.' || (i % 10) || '.0-py3-none-any.whl', '${BIG}', (i / 10) || '.' || (i % 10) || '.0',
                'bdist_wheel', ${hex}, 123456, '>=3.8', 'bench', 'ok'
           FROM generate_series(1, ${FILES}) i;`,
      "COMMIT;",
      "ANALYZE;",
    ].join("\n"),
    "pypi",
  );
}

interface Row {
  filename: string;
  version: string;
  packagetype: "bdist_wheel" | "sdist";
  sha256: string;
  size: number;
  uploaded_at: string;
  requires_python: string | null;
}

/**
 * The big project's snapshot from its seeded rows, with what a real project page carries on
 * top: a core metadata hash and metadata for every wheel, and a yanked file in every hundred.
 */
function bigSnapshot(sb: AppSandbox): ProjectSnapshot {
  const json = sb.psql(
    `SELECT json_agg(json_build_object('filename', filename, 'version', version, 'packagetype', packagetype,
       'sha256', sha256, 'size', size, 'uploaded_at', uploaded_at, 'requires_python', requires_python) ORDER BY filename)
       FROM files WHERE project = '${BIG}' AND state = 'ok'`,
    "pypi",
  );
  const rows = JSON.parse(json) as Row[];
  const files: ReleaseFile[] = rows.map((r, i) => ({
    filename: r.filename,
    version: r.version,
    sha256: r.sha256,
    size: Number(r.size),
    uploadTime: new Date(r.uploaded_at),
    requiresPython: r.requires_python,
    yanked: i % 100 === 99 ? "broken build" : null,
    coreMetadataSha256: createHash("sha256").update(r.filename).digest("hex"),
    packagetype: r.packagetype,
    metadata: { Summary: ["A big project"], "Requires-Python": [">=3.8"], "Requires-Dist": ["requests>=2"] },
  }));
  return { project: BIG, displayName: BIG, files };
}

function workerRss(sb: AppSandbox): number[] {
  const out = sb.sh(
    "for p in $(pgrep -f '/opt/pypi-index/index.fcgi( serve .*)?$'); do awk '/^VmRSS/ {print $2}' /proc/$p/status; done",
  ).stdout;
  return out
    .split("\n")
    .filter(Boolean)
    .map((kb) => Math.round((Number(kb) / 1024) * 10) / 10);
}

const round = (x: number, d = 3): number => Math.round(x * 10 ** d) / 10 ** d;

interface FormResult {
  bytes: number;
  c1: AbResult;
  c8: AbResult;
  staticC1: AbResult;
  staticC8: AbResult;
  ratio: number;
}

/** One form of the page against a static file of its size, latency at c=1 and throughput at c=8. */
function measureForm(sb: AppSandbox, url: string, headers: string[], bytes: number, name: string): FormResult {
  sb.sh(`head -c ${bytes} /dev/zero | tr '\\0' 'x' > /srv/www/pypi-static/${name}`);
  const staticUrl = `http://127.0.0.1/${name}`;
  // Warm up: page cache, Apache's workers.
  ab(sb, url, 2_000, CONCURRENCY, headers);
  ab(sb, staticUrl, 2_000, CONCURRENCY);
  const c1 = ab(sb, url, LATENCY_REQUESTS, 1, headers);
  const staticC1 = ab(sb, staticUrl, LATENCY_REQUESTS, 1);
  const c8 = ab(sb, url, THROUGHPUT_REQUESTS, CONCURRENCY, headers);
  const staticC8 = ab(sb, staticUrl, THROUGHPUT_REQUESTS, CONCURRENCY);
  if (c8.bytes !== bytes) throw new Error(`${url}: served ${c8.bytes} bytes, the page has ${bytes}`);
  return { bytes, c1, c8, staticC1, staticC8, ratio: round(c8.rps / staticC8.rps) };
}

async function main(): Promise<void> {
  const started = Date.now();
  const sb = await AppSandbox.start({ prefix: "pypi-bench-" });
  try {
    seed(sb);
    const url = `http://127.0.0.1/simple/${BIG}/`;
    const pip = [`Accept: ${PIP_ACCEPT}`];

    // The dynamic path (what the app renders when no page exists), for comparison.
    const dynamicPage = sb.http(`/simple/${BIG}/`, PIP_ACCEPT);
    if (dynamicPage.status !== 200) throw new Error(`dynamic project page: HTTP ${dynamicPage.status}`);
    ab(sb, url, 200, CONCURRENCY, pip);
    const dynamic = ab(sb, url, DYNAMIC_REQUESTS, CONCURRENCY, pip);

    const snap = bigSnapshot(sb);
    const names = sb
      .psql("SELECT name FROM projects ORDER BY name", "pypi")
      .split("\n")
      .filter(Boolean)
      .map((name) => ({ name }));
    const w0 = process.hrtime.bigint();
    writeProjectPages(sb.packageRoot, snap, "/packages/");
    const writeMs = Number(process.hrtime.bigint() - w0) / 1e6;
    const r0 = process.hrtime.bigint();
    writeRootPages(sb.packageRoot, names);
    const rootWriteMs = Number(process.hrtime.bigint() - r0) / 1e6;
    const dir = `${sb.packageRoot}/simple/${BIG}`;
    const jsonBytes = statSync(`${dir}/index.v1json`).size;
    const htmlBytes = statSync(`${dir}/index.html`).size;
    const gzBytes = statSync(`${dir}/index.v1json.gz`).size;

    // The static page must answer, as written, with the headers the goals ask for.
    const check = sb.http(`/simple/${BIG}/`, PIP_ACCEPT);
    if (check.status !== 200 || check.body !== readFileSync(`${dir}/index.v1json`, "utf8"))
      throw new Error(`static project page: HTTP ${check.status}`);
    if (!/^Last-Modified:/im.test(check.headers)) throw new Error("project page not served as a static file");

    const json = measureForm(sb, url, pip, jsonBytes, "same-size.json.html");
    const html = measureForm(sb, url, [], htmlBytes, "same-size.html");
    const gzip = ab(sb, url, THROUGHPUT_REQUESTS, CONCURRENCY, [...pip, "Accept-Encoding: gzip, deflate"]);
    if (gzip.bytes !== gzBytes) throw new Error(`gzip form: served ${gzip.bytes} bytes, expected ${gzBytes}`);

    // A worker exists (the dynamic run spawned them); its memory after the run.
    sb.http("/_health");
    const rss = workerRss(sb);
    const rssMb = rss.length > 0 ? Math.max(...rss) : 0;

    const form = (f: FormResult) => ({
      pageBytes: f.bytes,
      c1: { p50Ms: f.c1.p50, p99Ms: f.c1.p99, maxMs: f.c1.max },
      c8: { rps: f.c8.rps, p50Ms: f.c8.p50, p99Ms: f.c8.p99, maxMs: f.c8.max },
      static: { c1P50Ms: f.staticC1.p50, c8Rps: f.staticC8.rps, c8P99Ms: f.staticC8.p99 },
      ratioRps: f.ratio,
      failed: f.c1.failed + f.c8.failed + f.staticC1.failed + f.staticC8.failed,
    });
    const stall = (f: FormResult): boolean => f.c1.max >= 1000 || f.c8.max >= 1000;
    const result = {
      when: new Date().toISOString(),
      setup: {
        projects: PROJECTS,
        filesInProject: FILES,
        appRuntime: sb.t.app.runtime,
        appMaxProcesses: sb.t.app.maxProcesses,
        concurrency: CONCURRENCY,
        cores: cpus().length,
        note: "Apache 2.4 mpm_event serving the page writer's files through mod_negotiation type maps, vs a plain static file of the same size; loopback in one network namespace; ab -k",
      },
      json: form(json),
      html: form(html),
      gzipJson: { pageBytes: gzBytes, c8: { rps: gzip.rps, p50Ms: gzip.p50, p99Ms: gzip.p99, maxMs: gzip.max } },
      dynamicJson: { rps: dynamic.rps, p50Ms: dynamic.p50, p99Ms: dynamic.p99, failed: dynamic.failed },
      writer: { projectPagesMs: round(writeMs, 1), rootPagesMs: round(rootWriteMs, 1) },
      workerRssMb: rss,
      goals: {
        ratioAtLeast50Pct: json.ratio >= 0.5 && html.ratio >= 0.5,
        p99AtC8Under20Ms: json.c8.p99 <= 20 && html.c8.p99 <= 20,
        noOneSecondStalls: !stall(json) && !stall(html),
        p50Under2Ms: json.c1.p50 < 2 && html.c1.p50 < 2,
      },
      seconds: round((Date.now() - started) / 1000, 1),
    };
    mkdirSync(join(process.cwd(), "bench/results"), { recursive: true });
    writeFileSync(OUT, `${JSON.stringify(result, null, 2)}\n`);
    if (JSON_ONLY) {
      console.log(
        JSON.stringify({
          ratio: json.ratio,
          p50_ms: json.c1.p50,
          p99_ms: json.c8.p99,
          rss_mb: rssMb,
          static_rps: json.staticC8.rps,
          html_ratio: html.ratio,
          html_p50_ms: html.c1.p50,
          html_p99_ms: html.c8.p99,
          max_ms: Math.max(json.c8.max, html.c8.max),
        }),
      );
      return;
    }
    const row = (cells: (string | number)[]): string =>
      cells.map((c, i) => (i === 0 ? String(c).padEnd(24) : String(c).padStart(12))).join("");
    say(`/simple/${BIG}/ (${FILES} files) in an index of ${PROJECTS} projects, static pages via type map`);
    say(row(["", "bytes", "p50 c=1", "p99 c=8", "max c=8", "req/s c=8", "static r/s", "ratio"]));
    for (const [label, f] of [
      ["JSON (pip's Accept)", json],
      ["HTML (Accept: */*)", html],
    ] as const)
      say(row([label, f.bytes, f.c1.p50, f.c8.p99, f.c8.max, f.c8.rps, f.staticC8.rps, f.ratio]));
    say(row(["JSON gzip (as pip gets)", gzBytes, "", gzip.p99, gzip.max, gzip.rps, "", ""]));
    say(row(["JSON dynamic (fallback)", Buffer.byteLength(dynamicPage.body), "", dynamic.p99, "", dynamic.rps, "", ""]));
    say(`  times in ms; page writer: project ${result.writer.projectPagesMs} ms, root (${PROJECTS}) ${result.writer.rootPagesMs} ms`);
    say(`  FCGI worker RSS (MB): ${rss.join(", ") || "none running"}`);
    say(`  goals: ${JSON.stringify(result.goals)}`);
    say(`  written to ${OUT}`);
  } finally {
    sb.stop();
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
