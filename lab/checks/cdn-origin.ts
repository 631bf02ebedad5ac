/**
 * The lab cannot run CloudFront. These checks hold the origin (the balancers, through a floating
 * IP) to what the CDN's cache behaviours (src/edge.ts) rely on: per path, the Cache-Control the
 * cache class expects; PEP 691 negotiation by Accept and ?format=, with Vary: Accept; and the
 * staleness bound of index pages, which no invalidation shortens (TTL only).
 */
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

/**
 * CloudFront keeps an index page for the origin's max-age (capped by the policy's maximum TTL),
 * and nothing invalidates it: the newest upload shows through the CDN at most this long after
 * the origin lists it.
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
    "upload to visible through the CDN, at most (listed at the origin + max-age)",
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
  listedSeconds?: number,
): Promise<void> {
  const section = "cdn origin";
  await report.check(section, "each path's Cache-Control matches its CDN cache behaviour", () =>
    cacheHeadersPerPath(lab, wheel, page),
  );
  await report.check(section, "PEP 691 negotiation by Accept and ?format=, with Vary: Accept", () =>
    acceptNegotiation(lab, wheel),
  );
  await report.check(section, "staleness bound of index pages through the CDN (TTL, no invalidation)", () =>
    stalenessBound(lab, wheel, report, listedSeconds),
  );
}
