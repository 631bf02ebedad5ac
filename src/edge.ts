/**
 * How clients reach the balancers: the serving mode, the DNS records it needs, and the CDN's
 * cache behaviours. Pure: the stack's Edge component (components/edge.ts) creates what this
 * plans, the mock tests assert it, and the lab checks the origin against CACHE_BEHAVIOURS.
 *
 *   direct  no zone, no CDN: the stack outputs the records to create by hand.
 *   dns     a Route 53 zone: one multivalue A record per floating IP for `domain` and the upload
 *           name, each with a health check through that address.
 *   cdn     CloudFront serves `domain`; its origin is an origin-only name with the health-checked
 *           multivalue records; the upload name stays on the floating IPs (SSH does not pass a CDN).
 */

export type ServingMode = "direct" | "dns" | "cdn";

/** The edge settings of a stack (config keys dnsZone, uploadHostname, cdn, cdnCertificateArn, cdnOriginHostname). */
export interface EdgeConfig {
  /** Route 53 hosted zone: its id (`Z…`) or its name; undefined: records are created by hand. */
  readonly dnsZone?: { readonly id: string } | { readonly name: string };
  readonly uploadHostname: string;
  readonly cdn: {
    readonly enabled: boolean;
    /** An ACM certificate in us-east-1 for `domain` (the TLS secret's, imported); else one validated through the zone. */
    readonly certificateArn?: string;
    readonly originHostname: string;
  };
}

export const servingMode = (edge: EdgeConfig): ServingMode =>
  edge.cdn.enabled ? "cdn" : edge.dnsZone ? "dns" : "direct";

/** What a Route 53 health check probes through one floating IP. */
export type EdgeProbe = "https" | "ssh";

/** Seconds between a health checker's probes, and the failures in a row that mark an address down. */
export const HEALTH_CHECK_INTERVAL_SECONDS = 10;
export const HEALTH_CHECK_FAILURES = 3;
/** TTL of the health-checked records: short, so a resolver stops handing out a dead address soon. */
export const RECORD_TTL_SECONDS = 60;

/** One DNS name and where it points. */
export interface EdgeRecord {
  readonly name: string;
  /** `multivalue-a`: one A record per floating IP, each answered only while its check passes. */
  readonly kind: "multivalue-a" | "cdn-alias";
  /** The floating IPs' public addresses (multivalue-a), or the distribution's name (cdn-alias). */
  readonly targets: readonly string[];
  /** multivalue-a: what each address's health check probes. */
  readonly probe?: EdgeProbe;
  readonly purpose: string;
}

/**
 * The records of a mode. `publicIps` are the floating IPs' public addresses; `cdnDomain` is the
 * distribution's `*.cloudfront.net` name (cdn mode).
 */
export function edgeRecords(
  domain: string,
  edge: EdgeConfig,
  publicIps: readonly string[],
  cdnDomain = "<distribution>.cloudfront.net",
): EdgeRecord[] {
  const upload: EdgeRecord = {
    name: edge.uploadHostname,
    kind: "multivalue-a",
    targets: publicIps,
    probe: "ssh",
    purpose: "SFTP uploads (HAProxy on the balancers, port 22)",
  };
  if (servingMode(edge) === "cdn")
    return [
      {
        name: domain,
        kind: "cdn-alias",
        targets: [cdnDomain],
        purpose: "the index and package files through CloudFront",
      },
      {
        name: edge.cdn.originHostname,
        kind: "multivalue-a",
        targets: publicIps,
        probe: "https",
        purpose: "CloudFront's origin: the balancers (HTTPS); pip clients may use it directly too",
      },
      upload,
    ];
  return [
    {
      name: domain,
      kind: "multivalue-a",
      targets: publicIps,
      probe: "https",
      purpose: "the index and package files (HTTPS on the balancers)",
    },
    upload,
  ];
}

/** How a path is cached at the CDN. */
export type CacheClass = "immutable" | "index" | "uncached";

/** One CloudFront cache behaviour: a path pattern, its cache class and the methods it allows. */
export interface CacheBehaviour {
  readonly pathPattern: string;
  readonly cache: CacheClass;
  /** `all`: GET, HEAD, OPTIONS, PUT, POST, PATCH, DELETE (uploads); `read`: GET, HEAD. */
  readonly methods: "read" | "all";
}

/**
 * In CloudFront's order (first match wins; the default behaviour is `index`). Package files
 * never change once uploaded; /simple/ and the JSON API change on every upload and vary on
 * Accept (PEP 691); uploads and the health check must never be cached.
 */
export const CACHE_BEHAVIOURS: readonly CacheBehaviour[] = [
  { pathPattern: "/packages/*", cache: "immutable", methods: "read" },
  { pathPattern: "/simple/*", cache: "index", methods: "read" },
  { pathPattern: "/pypi/*/json", cache: "index", methods: "read" },
  { pathPattern: "/legacy/*", cache: "uncached", methods: "all" },
  { pathPattern: "/_health", cache: "uncached", methods: "read" },
];
export const DEFAULT_CACHE: CacheClass = "index";

/** The cache class CloudFront applies to a request path (CloudFront's `*` matches across `/`). */
export function cacheClassOf(path: string): CacheClass {
  const matches = (pattern: string): boolean =>
    new RegExp(`^${pattern.replace(/[.+?^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*")}$`).test(path);
  return CACHE_BEHAVIOURS.find((b) => matches(b.pathPattern))?.cache ?? DEFAULT_CACHE;
}

/** A year: package files are immutable (a file name is never reused with other content). */
export const IMMUTABLE_TTL_SECONDS = 31_536_000;
/**
 * The origin's max-age for index pages, which the index cache policy obeys up to
 * INDEX_MAX_TTL_SECONDS. Registration purges what it changed (app/cdn.ts) within seconds; this
 * bounds how stale a page can be when a purge fails or is late.
 */
export const INDEX_TTL_SECONDS = 60;
export const INDEX_MAX_TTL_SECONDS = 300;

/** The Cache-Control the origin sends per cache class, which CloudFront's TTLs follow. */
export const ORIGIN_CACHE_CONTROL: Readonly<Record<CacheClass, string>> = {
  immutable: `max-age=${IMMUTABLE_TTL_SECONDS}, public, immutable`,
  index: `max-age=${INDEX_TTL_SECONDS}, public`,
  uncached: "no-store",
};
