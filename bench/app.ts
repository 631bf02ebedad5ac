/**
 * Index app benchmark: `/simple/<project>/` for a project with 1,000 files in an index of
 * 10,000 projects, through Apache + mod_fcgid, against Apache serving a static file of the
 * same size; plus the resident memory of each FastCGI worker. Loopback inside a private
 * network namespace only, in the lab's app sandbox (app-a of lab/topology.json). Prints the
 * figures and writes them as JSON.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { AppSandbox } from "../lab/lib/app-sandbox.js";

const PROJECTS = 10_000;
const FILES = 1_000;
const BIG = "big-project";
const LATENCY_REQUESTS = 2_000;
const THROUGHPUT_REQUESTS = 10_000;
const CONCURRENCY = 8;
const OUT = join(process.cwd(), "bench/results/app.json");

interface AbResult {
  rps: number;
  p50: number;
  p90: number;
  p99: number;
  failed: number;
  bytes: number;
}

function ab(sb: AppSandbox, url: string, n: number, c: number): AbResult {
  const csv = `/tmp/ab-${process.pid}-${Math.random().toString(36).slice(2)}.csv`;
  const r = sb.exec(["ab", "-q", "-k", "-n", String(n), "-c", String(c), "-e", csv, url], { timeoutMs: 300_000 });
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
    p90: pct.get(90) ?? Number.NaN,
    p99: pct.get(99) ?? Number.NaN,
    failed: num(/Failed requests:\s+([0-9]+)/) + num(/Non-2xx responses:\s+([0-9]+)/) || 0,
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

function workerRss(sb: AppSandbox): number[] {
  const out = sb.sh(
    "for p in $(pgrep -f '/opt/pypi-index/index.fcgi$'); do awk '/^VmRSS/ {print $2}' /proc/$p/status; done",
  ).stdout;
  return out
    .split("\n")
    .filter(Boolean)
    .map((kb) => Math.round((Number(kb) / 1024) * 10) / 10);
}

async function main(): Promise<void> {
  const started = Date.now();
  const sb = await AppSandbox.start({ prefix: "pypi-bench-" });
  try {
    seed(sb);
    const url = `http://127.0.0.1/simple/${BIG}/`;
    const page = sb.http(`/simple/${BIG}/`);
    if (page.status !== 200) throw new Error(`project page: HTTP ${page.status}`);
    const size = Buffer.byteLength(page.body);
    sb.sh(`head -c ${size} /dev/zero | tr '\\0' 'x' > /srv/www/pypi-static/same-size.html`);
    const staticUrl = "http://127.0.0.1/same-size.html";

    // Warm up: let mod_fcgid spawn its workers and the JIT settle.
    ab(sb, url, 1_000, CONCURRENCY);
    ab(sb, staticUrl, 1_000, CONCURRENCY);

    const latency = ab(sb, url, LATENCY_REQUESTS, 1);
    const staticLatency = ab(sb, staticUrl, LATENCY_REQUESTS, 1);
    const app = ab(sb, url, THROUGHPUT_REQUESTS, CONCURRENCY);
    const stat = ab(sb, staticUrl, THROUGHPUT_REQUESTS, CONCURRENCY);
    const rss = workerRss(sb);

    const result = {
      when: new Date().toISOString(),
      setup: {
        projects: PROJECTS,
        filesInProject: FILES,
        pageBytes: size,
        fcgidMaxProcesses: sb.t.app.maxProcesses,
        concurrency: CONCURRENCY,
        cores: (await import("node:os")).cpus().length,
        note: "Apache 2.4 mpm_event + mod_fcgid + Postgres 15 (fsync off) on loopback in one network namespace; ab -k",
      },
      projectPage: {
        p50Ms: latency.p50,
        p90Ms: latency.p90,
        p99Ms: latency.p99,
        rps: app.rps,
        failed: app.failed + latency.failed,
      },
      staticFile: { p50Ms: staticLatency.p50, rps: stat.rps, failed: stat.failed },
      ratioRps: Math.round((app.rps / stat.rps) * 1000) / 1000,
      workerRssMb: rss,
      goals: {
        p50Under5Ms: latency.p50 < 5,
        ratioAtLeast30Pct: app.rps / stat.rps >= 0.3,
        rssUnder80Mb: rss.length > 0 && rss.every((m) => m < 80),
      },
      seconds: Math.round((Date.now() - started) / 100) / 10,
    };
    mkdirSync(join(process.cwd(), "bench/results"), { recursive: true });
    writeFileSync(OUT, `${JSON.stringify(result, null, 2)}\n`);
    console.log(`/simple/${BIG}/ (${FILES} files, ${size} bytes) in an index of ${PROJECTS} projects`);
    console.log(`  p50 ${latency.p50} ms  p90 ${latency.p90} ms  p99 ${latency.p99} ms (c=1)`);
    console.log(`  ${app.rps} req/s (c=${CONCURRENCY}) vs static same-size file ${stat.rps} req/s: ratio ${result.ratioRps}`);
    console.log(`  static p50 ${staticLatency.p50} ms; failed requests: app ${result.projectPage.failed}, static ${stat.failed}`);
    console.log(`  FCGI worker RSS (MB): ${rss.join(", ")}`);
    console.log(`  goals: ${JSON.stringify(result.goals)}`);
    console.log(`  written to ${OUT}`);
  } finally {
    sb.stop();
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
