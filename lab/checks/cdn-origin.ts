/**
 * The lab cannot run CloudFront. These checks hold the origin (the balancers, through a floating
 * IP) to what the CDN's cache behaviours (src/edge.ts) rely on: per path, the Cache-Control the
 * cache class expects; PEP 691 negotiation by Accept and ?format=, with Vary: Accept; the purge
 * a registration sends (to the directory standing in for CloudFront), which must name exactly
 * the paths that changed; and the staleness bound when a purge fails (max-age).
 */
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { stalePaths } from "../../src/app/cdn.js";
import { normalizeName } from "../../src/app/names.js";
import {
  CACHE_BEHAVIOURS,
  type CacheClass,
  cacheClassOf,
  INDEX_MAX_TTL_SECONDS,
  INDEX_TTL_SECONDS,
  ORIGIN_CACHE_CONTROL,
} from "../../src/edge.js";
import { clientCommand, curlVia, type Lab } from "../lib/lab.js";
import type { Report } from "../lib/report.js";
import type { Wheel } from "../lib/wheel.js";

interface Answer {
  readonly status: number;
  readonly headers: ReadonlyMap<string, string>;
}

/** The status and headers of a GET through `fip`, with the headers CloudFront forwards. */
async function headersVia(lab: Lab, fip: string, path: string, accept?: string): Promise<Answer> {
  const r = await lab.client.execAsync(
    clientCommand([
      ...curlVia(lab, fip),
      "-o",
      "/dev/null",
      "-D",
      "-",
      ...(accept ? ["-H", `Accept: ${accept}`] : []),
      `https://${lab.t.domain}${path}`,
    ]),
    { timeoutMs: 10_000 },
  );
  if (r.status !== 0) throw new Error(`GET ${path}: curl exit ${r.status}: ${r.stderr}`);
  const lines = r.stdout.split(/\r?\n/);
  const status = Number(/^HTTP\/\S+ (\d{3})/.exec(lines[0] ?? "")?.[1] ?? 0);
  const headers = new Map<string, string>();
  for (const line of lines.slice(1)) {
    const m = /^([^:]+):\s*(.*)$/.exec(line);
    if (m) headers.set((m[1] as string).toLowerCase(), m[2] as string);
  }
  return { status, headers };
}

/** The path of the wheel's file, from the href on its /simple/ page. */
function filePath(lab: Lab, wheel: Wheel, page: string): string {
  const href = new RegExp(`href="([^"#]*${wheel.filename.replace(/\./g, "\\.")})#`).exec(page)?.[1];
  if (!href) throw new Error(`no link to ${wheel.filename} on /simple/${wheel.name}/`);
  return new URL(href, `https://${lab.t.domain}/simple/${wheel.name}/`).pathname;
}

async function cacheHeadersPerPath(lab: Lab, wheel: Wheel, page: string): Promise<string> {
  const fip = lab.t.floatingIps[0]?.address ?? "";
  const samples = [
    filePath(lab, wheel, page),
    `/simple/${wheel.name}/`,
    "/simple/",
    `/pypi/${wheel.name}/json`,
    "/_health",
    "/legacy/",
  ];
  const seen = new Set<CacheClass>();
  const lines: string[] = [];
  for (const path of samples) {
    const cls = cacheClassOf(path);
    const a = await headersVia(lab, fip, path);
    const cc = a.headers.get("cache-control") ?? "";
    if (cc !== ORIGIN_CACHE_CONTROL[cls])
      throw new Error(
        `${path} (${cls}): Cache-Control ${JSON.stringify(cc)}, the CDN's ${cls} behaviour expects ${JSON.stringify(ORIGIN_CACHE_CONTROL[cls])} (status ${a.status})`,
      );
    seen.add(cls);
    lines.push(`${path} ${a.status} ${cls}: ${cc}`);
  }
  // Every class the distribution has was looked at.
  const classes = new Set(CACHE_BEHAVIOURS.map((b) => b.cache));
  for (const c of classes) if (!seen.has(c)) throw new Error(`no sample path of cache class ${c}`);
  return lines.join("; ");
}

async function acceptNegotiation(lab: Lab, wheel: Wheel): Promise<string> {
  const fip = lab.t.floatingIps[0]?.address ?? "";
  const path = `/simple/${wheel.name}/`;
  const json = "application/vnd.pypi.simple.v1+json";
  const cases: [string, string | undefined, RegExp][] = [
    [path, json, /^application\/vnd\.pypi\.simple\.v1\+json/],
    [path, "text/html", /^text\/html/],
    [path, undefined, /^text\/html/],
    [`${path}?format=${encodeURIComponent(json)}`, "text/html", /^application\/vnd\.pypi\.simple\.v1\+json/],
  ];
  const out: string[] = [];
  for (const [p, accept, want] of cases) {
    const a = await headersVia(lab, fip, p, accept);
    const type = a.headers.get("content-type") ?? "";
    const vary = (a.headers.get("vary") ?? "").split(",").map((v) => v.trim().toLowerCase());
    if (a.status !== 200 || !want.test(type))
      throw new Error(`${p} with Accept ${accept ?? "(none)"}: ${a.status} ${type}, expected ${want}`);
    if (!vary.includes("accept"))
      throw new Error(
        `${p}: Vary ${JSON.stringify(a.headers.get("vary") ?? "")} lacks Accept: a cache would hand one form to every client`,
      );
    out.push(`${accept ?? "no Accept"}${p.includes("?") ? " + ?format" : ""} -> ${type.split(";")[0]}`);
  }
  return `${out.join("; ")}; Vary: Accept on each`;
}

interface RecordedInvalidation {
  readonly name: string;
  readonly paths: readonly string[];
  readonly at: number;
}

/** What the app servers' purge job sent to CloudFront's stand-in since `since` (ms). */
function invalidationsSince(lab: Lab, since: number): RecordedInvalidation[] {
  const dir = lab.dirs.cdnInvalidations;
  return readdirSync(dir)
    .filter((n) => n.endsWith(".json") && !n.startsWith("."))
    .map((name) => {
      const body = JSON.parse(readFileSync(join(dir, name), "utf8")) as {
        InvalidationBatch: { Paths: { Items: string[] } };
        CreateTime: string;
      };
      return { name, paths: body.InvalidationBatch.Paths.Items, at: Date.parse(body.CreateTime) };
    })
    .filter((r) => r.at >= since)
    .sort((a, b) => a.at - b.at);
}

/**
 * The registration of `wheel` (a new project) queued its purge and an app server's purge job
 * sent it, by itself: its page in every form, its JSON and the root list; nothing else.
 */
async function purgeOfRegistration(
  lab: Lab,
  report: Report,
  wheel: Wheel,
  uploadedAt: number,
): Promise<string> {
  const expected = [...stalePaths(normalizeName(wheel.name), true)].sort();
  const deadline = Date.now() + 60_000;
  let sent: RecordedInvalidation[] = [];
  let named = new Set<string>();
  for (;;) {
    sent = invalidationsSince(lab, uploadedAt);
    named = new Set(sent.flatMap((r) => r.paths));
    if (expected.every((p) => named.has(p))) break;
    if (Date.now() > deadline)
      throw new Error(
        `no invalidation named ${expected.filter((p) => !named.has(p)).join(" ")} within 60 s of the upload; sent since: ${JSON.stringify(sent.map((r) => r.paths))}`,
      );
    await new Promise((r) => setTimeout(r, 200));
  }
  const extra = [...named].filter((p) => !expected.includes(p));
  if (extra.length > 0)
    throw new Error(
      `the purge named paths that did not change: ${extra.join(" ")} (expected exactly ${expected.join(" ")})`,
    );
  // When the purges sent so far first covered every changed path.
  const covered = new Set<string>();
  let doneAt = Date.now();
  for (const r of sent) {
    for (const p of r.paths) covered.add(p);
    if (expected.every((p) => covered.has(p))) {
      doneAt = r.at;
      break;
    }
  }
  const seconds = Math.round(((doneAt - uploadedAt) / 1000) * 10) / 10;
  report.figure("cdn origin", "upload to CDN purge sent (batched invalidation)", seconds, "s");
  return `${sent.length} invalidation(s) since the upload, naming exactly ${expected.join(" ")}; the last ${seconds} s after the upload`;
}

/**
 * When a purge fails (or CloudFront is slow to apply it), CloudFront keeps an index page for the
 * origin's max-age (capped by the policy's maximum TTL): the newest upload shows through the CDN
 * at most this long after the origin lists it.
 */
async function stalenessBound(
  lab: Lab,
  wheel: Wheel,
  report: Report,
  listedSeconds?: number,
): Promise<string> {
  const fip = lab.t.floatingIps[0]?.address ?? "";
  const a = await headersVia(lab, fip, `/simple/${wheel.name}/`);
  const maxAge = Number(/max-age=(\d+)/.exec(a.headers.get("cache-control") ?? "")?.[1] ?? Number.NaN);
  // INDEX_TTL_SECONDS is within the policy's maximum, so equality is the whole check.
  if (maxAge !== INDEX_TTL_SECONDS)
    throw new Error(
      `/simple/ max-age ${maxAge}, the index policy expects ${INDEX_TTL_SECONDS} (at most ${INDEX_MAX_TTL_SECONDS})`,
    );
  const bound = (listedSeconds ?? 0) + maxAge;
  report.figure(
    "cdn origin",
    "upload to visible through the CDN if the purge fails, at most (listed at the origin + max-age)",
    Math.round(bound * 10) / 10,
    "s",
    `${listedSeconds ?? "?"} s + ${maxAge} s`,
  );
  return `an upload shows through the CDN within ${bound} s: listed at the origin after ${listedSeconds ?? "?"} s, then at most max-age ${maxAge} s in the cache`;
}

/** The CDN-facing checks, once the wheel is listed; `page` is its /simple/ page. */
export async function runCdnOriginChecks(
  lab: Lab,
  report: Report,
  wheel: Wheel,
  page: string,
  uploadedAt: number,
  listedSeconds?: number,
): Promise<void> {
  const section = "cdn origin";
  await report.check(section, "each path's Cache-Control matches its CDN cache behaviour", () =>
    cacheHeadersPerPath(lab, wheel, page),
  );
  await report.check(section, "PEP 691 negotiation by Accept and ?format=, with Vary: Accept", () =>
    acceptNegotiation(lab, wheel),
  );
  await report.check(section, "the registration's purge names exactly the paths that changed", () =>
    purgeOfRegistration(lab, report, wheel, uploadedAt),
  );
  await report.check(
    section,
    "staleness bound of index pages through the CDN when a purge fails (max-age)",
    () => stalenessBound(lab, wheel, report, listedSeconds),
  );
}
