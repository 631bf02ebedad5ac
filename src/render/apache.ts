import { GZIP_SUFFIX, PAGE_FILES, PAGE_TYPES } from "../app/pages.js";
import { MEDIA } from "../app/simple.js";
import { ORIGIN_CACHE_CONTROL } from "../edge.js";
import { paths, uploadBodyLimit } from "../layout.js";
import { APP_RUNTIMES, type AppRuntime, type NodeSpec, nodesWithRole, type Topology } from "../topology.js";

/** Debian's config dir; the agent checks a candidate tree of it as a whole (`apache2ctl -t`). */
export const apacheConfDir = "/etc/apache2";
/** Site file; the agent links it into sites-enabled and disables 000-default. */
export const apacheSitePath = `${apacheConfDir}/sites-available/pypi.conf`;
export const apachePortsPath = `${apacheConfDir}/ports.conf`;
/** Replaces Debian's own security.conf, which is enabled by default and sets ServerTokens OS. */
export const apacheSecurityConfPath = `${apacheConfDir}/conf-available/security.conf`;

/** The static site's one shipped file; it also makes the DocumentRoot exist, which the app paths' access checks walk. */
export const robotsTxtPath = `${paths.staticRoot}/robots.txt`;

/** Crawlers stay off the index pages and the package files (as pypi.org asks). */
export function renderRobotsTxt(): string {
  return ["User-agent: *", "Disallow: /simple/", "Disallow: /packages/", "Disallow: /pypi/", ""].join("\n");
}

/** The index app's one executable: mod_fcgid's script, the app server and the command line. */
export const indexFcgiScript = `${paths.appRoot}/index.fcgi`;

/** The app reads its database password from this file (fetched from SSM); only the path is configured. */
/** The app's database credentials, as a pgpass file (host:port:db:user:password). */
export const indexDbPasswordFile = "/etc/pypi-index/pgpass";

/** mod_fcgid timings that do not come from the topology. */
const fcgid = {
  connectTimeout: 5,
  idleTimeout: 300,
  maxRequestsPerProcess: 1000,
  processLifeTime: 3600,
  minProcesses: 1,
} as const;

const proxyConnectTimeout = 5;

/** Paths routed to the index app; under /simple and /pypi only what has no static page. */
const appPaths = ["/simple", "/pypi", "/legacy", "/_health"] as const;

/** mod_proxy's name for the app server's socket; the host part only names the worker. */
export const appServerBackend = `unix:${paths.appSocket}|fcgi://pypi-index`;

// biome-ignore lint/suspicious/noTemplateCurlyInString: Apache expands this from envvars
const apacheLogDir = "${APACHE_LOG_DIR}";

/**
 * Quote one value for an Apache config line. Numbers are emitted bare. Strings are double-quoted;
 * Apache has no escape for a backslash and expands `${VAR}` even inside quotes, so values that
 * would need either are refused rather than mangled.
 */
export function apacheQuote(value: string | number): string {
  if (typeof value === "number") {
    if (!Number.isSafeInteger(value) || value < 0)
      throw new Error(`apache: not a non-negative integer: ${value}`);
    return String(value);
  }
  // biome-ignore lint/suspicious/noControlCharactersInRegex: rejecting control characters is the point
  if (/[\u0000-\u001f\u007f"\\]/.test(value) || value.includes("${") || value === "") {
    throw new Error(`apache: value cannot be quoted safely: ${JSON.stringify(value)}`);
  }
  return `"${value}"`;
}

/** Modules the agent enables (`a2enmod`) for a runtime, besides Debian's defaults. */
export function apacheModules(runtime: AppRuntime): string[] {
  const base = [
    "alias",
    "authz_core",
    "authz_host",
    "headers",
    "mime",
    "negotiation",
    "remoteip",
    "rewrite",
    "setenvif",
  ];
  switch (runtime) {
    case "appserver":
      return [...base, "proxy", "proxy_fcgi"];
    case "fcgid":
      return [...base, "fcgid"];
  }
}

/** Modules of the other runtimes: the agent removes them, so a runtime switch leaves none behind. */
export function apacheModulesOfOtherRuntimes(runtime: AppRuntime): string[] {
  const mine = new Set(apacheModules(runtime));
  return [...new Set(APP_RUNTIMES.flatMap((r) => apacheModules(r)))].filter((m) => !mine.has(m));
}

/**
 * Environment of the index app: where the database writer and the packages are. No secret
 * values, only the path of the password file.
 */
export function indexAppEnv(t: Topology): ReadonlyArray<readonly [string, string]> {
  return [
    ["PYPI_DB_HOST", t.overlay.dbWriter],
    ["PYPI_DB_PORT", String(t.postgres.port)],
    ["PYPI_DB_NAME", t.postgres.database],
    ["PYPI_DB_USER", t.postgres.appUser],
    ["PYPI_DB_PASSWORD_FILE", indexDbPasswordFile],
    ["PYPI_PACKAGE_ROOT", t.storage.packageRoot],
    ["PYPI_PACKAGES_URL", "/packages/"],
    ["PYPI_MAX_FILE_BYTES", String(t.upload.maxFileBytes)],
    ["PYPI_REJECTED_RETENTION_SECONDS", String(t.upload.rejectedRetentionDays * 86_400)],
    // On AWS the package root is an NFS mount; the lab shares a plain directory.
    ["PYPI_REQUIRE_MOUNT", t.backend === "aws" ? "1" : "0"],
    // The file copy job's store; on AWS the job's aws CLI calls need a region, and nothing else gives the app one.
    ["PYPI_FILE_COPIES", t.backup.fileCopies],
    ...(t.backend === "aws" ? [["AWS_DEFAULT_REGION", t.region] as const] : []),
    // Page changes queue a CDN purge only when a CDN serves the index.
    ...(t.cdnInvalidations ? [["PYPI_CDN_INVALIDATIONS", t.cdnInvalidations] as const] : []),
  ];
}

export function renderApachePorts(t: Topology, _node: NodeSpec): string {
  return `${["# Managed by pypi-node; the only listener is the balancers' backend port.", `Listen ${apacheQuote(t.app.httpPort)}`].join("\n")}\n`;
}

export function renderApacheSecurityConf(_t: Topology, _node: NodeSpec): string {
  return `${[
    "# Managed by pypi-node.",
    "ServerTokens Prod",
    "ServerSignature Off",
    "TraceEnable Off",
    "FileETag MTime Size",
  ].join("\n")}\n`;
}

function fcgidServerLines(t: Topology): string[] {
  // FcgidMaxProcesses, FcgidIdleTimeout and FcgidProcessLifeTime are server-config only.
  return [
    `FcgidMaxProcesses ${apacheQuote(t.app.maxProcesses)}`,
    `FcgidIdleTimeout ${apacheQuote(fcgid.idleTimeout)}`,
    `FcgidProcessLifeTime ${apacheQuote(fcgid.processLifeTime)}`,
    "",
  ];
}

function fcgidVhostLines(t: Topology): string[] {
  const timeout = t.app.requestTimeoutSeconds;
  return [
    "  # The index app: one FastCGI process class, bounded so Postgres connections stay bounded.",
    `  FcgidMaxProcessesPerClass ${apacheQuote(t.app.maxProcesses)}`,
    `  FcgidMinProcessesPerClass ${apacheQuote(Math.min(fcgid.minProcesses, t.app.maxProcesses))}`,
    `  FcgidConnectTimeout ${apacheQuote(fcgid.connectTimeout)}`,
    `  FcgidIOTimeout ${apacheQuote(timeout)}`,
    `  FcgidBusyTimeout ${apacheQuote(timeout * 2)}`,
    `  FcgidMaxRequestsPerProcess ${apacheQuote(fcgid.maxRequestsPerProcess)}`,
    // Uploads through /legacy/ arrive as one multipart body.
    `  FcgidMaxRequestLen ${apacheQuote(uploadBodyLimit(t.upload.maxFileBytes))}`,
    ...indexAppEnv(t).map(([k, v]) => `  FcgidInitialEnv ${apacheQuote(k)} ${apacheQuote(v)}`),
    ...appPaths.map((p) => `  Alias ${apacheQuote(p)} ${apacheQuote(indexFcgiScript)}`),
    `  <Directory ${apacheQuote(paths.appRoot)}>`,
    "    Options ExecCGI",
    "    AllowOverride None",
    "    Require all denied",
    `    <Files ${apacheQuote(indexFcgiScript.slice(paths.appRoot.length + 1))}>`,
    "      SetHandler fcgid-script",
    "      AcceptPathInfo On",
    "      Require all granted",
    "    </Files>",
    "  </Directory>",
  ];
}

/**
 * The app server (pypi-index.service) behind mod_proxy_fcgi. Only requests that no static page
 * or package file answered reach it: the rule runs after the page rules, which end with [L].
 * retry=0: a refused connect (the service restarting) must not take the socket out of service
 * for mod_proxy's default 60 s.
 */
function appServerVhostLines(t: Topology): string[] {
  const timeout = t.app.requestTimeoutSeconds;
  const prefixes = appPaths.map((p) => p.slice(1)).join("|");
  return [
    "  # The index app: the app server's socket, through mod_proxy_fcgi.",
    `  <Proxy ${apacheQuote(appServerBackend)}>`,
    `    ProxySet connectiontimeout=${apacheQuote(proxyConnectTimeout)} timeout=${apacheQuote(timeout)} retry=0`,
    "  </Proxy>",
    `  RewriteCond %{REQUEST_URI} ${apacheQuote(`^/(${prefixes})(/|$)`)}`,
    `  RewriteRule ^ - ${apacheQuote(`[H=proxy:${appServerBackend}]`)}`,
  ];
}

/** A `?format=` value for `expr=`: the media type with `/` and `+` as sent or percent-encoded. */
function formatQueryRegex(media: string): string {
  const [major, minor] = media.split("/") as [string, string];
  const sub = minor
    .replace(/\./g, "[.]")
    .replace("vnd[.]pypi[.]simple[.]v1+", "vnd[.]pypi[.]simple[.](v1|latest)([+]|%2B)");
  return `(^|&)format=${major}(/|%2F)${sub}(&|$)`;
}

/**
 * `/simple/` and `/pypi/<project>/json` as static pages (src/app/pages.ts): one file per form,
 * each with its gzip form, chosen by mod_negotiation from the directory's type map, which
 * honours Accept q-values and Accept-Encoding. A path without a page (an unknown or not
 * normalized name) is not rewritten and falls through to the index app.
 */
function pageLines(t: Topology): string[] {
  const simpleDir = `${t.storage.packageRoot}/simple`;
  const apiDir = `${t.storage.packageRoot}/pypi`;
  const onSimple = "%{REQUEST_URI} =~ m#^/simple/#";
  const format = (media: string): string =>
    apacheQuote(`expr=${onSimple} && %{QUERY_STRING} =~ m#${formatQueryRegex(media)}#i`);
  const variants = Object.values(PAGE_FILES.simple)
    .map((f) => f.replace("index.", ""))
    .join("|");
  const gz = GZIP_SUFFIX.replace(".", "[.]");
  const map = PAGE_FILES.typeMap;
  const mimeLines = (exts: readonly string[]): string[] => [
    `    AddHandler type-map ${map.slice(map.lastIndexOf("."))}`,
    // Each variant's gzip form keeps its variant's type and is sent with Content-Encoding.
    `    RemoveType ${GZIP_SUFFIX}`,
    `    AddEncoding gzip ${GZIP_SUFFIX}`,
    ...PAGE_TYPES.filter(([ext]) => exts.includes(ext)).map(
      ([ext, type]) => `    AddType ${apacheQuote(type)} ${ext}`,
    ),
  ];
  const dirOpen = (dir: string): string[] => [
    `  <Directory ${apacheQuote(dir)}>`,
    "    Options -Indexes -ExecCGI -Includes -MultiViews",
    "    AllowOverride None",
    "    Require all granted",
  ];
  return [
    "  # Index pages: static, negotiated by type maps; missing pages go to the index app.",
    "  RewriteEngine On",
    // PEP 691 ?format= overrides Accept; a format not served ends in 406.
    `  RequestHeader set Accept ${apacheQuote("application/x-unsupported-format")} ${apacheQuote(`expr=${onSimple} && %{QUERY_STRING} =~ m#(^|&)format=#`)}`,
    ...[MEDIA.text, MEDIA.html, MEDIA.json].map(
      (m) => `  RequestHeader set Accept ${apacheQuote(m)} ${format(m)}`,
    ),
    `  RewriteCond ${apacheQuote(`${simpleDir}/$1${map}`)} -f`,
    `  RewriteRule ${apacheQuote("^/simple/((?:[a-z0-9-]+/)?)$")} ${apacheQuote(`${simpleDir}/$1${map}`)} [L]`,
    // The variant a type map picked arrives as an internal redirect to its own name.
    `  RewriteCond ${apacheQuote(`${simpleDir}/$1`)} -f`,
    `  RewriteRule ${apacheQuote(`^/simple/((?:[a-z0-9-]+/)?index[.](?:${variants})(?:${gz})?)$`)} ${apacheQuote(`${simpleDir}/$1`)} [L]`,
    `  RewriteCond ${apacheQuote(`${apiDir}/$1/${map}`)} -f`,
    `  RewriteRule ${apacheQuote("^/pypi/([a-z0-9-]+)/json$")} ${apacheQuote(`${apiDir}/$1/${map}`)} [L]`,
    `  RewriteCond ${apacheQuote(`${apiDir}/$1`)} -f`,
    `  RewriteRule ${apacheQuote(`^/pypi/([a-z0-9-]+/index[.]json(?:${gz})?)$`)} ${apacheQuote(`${apiDir}/$1`)} [L]`,
    ...dirOpen(simpleDir),
    ...mimeLines([".html", ".v1html", ".v1json"]),
    `    Header set Cache-Control ${apacheQuote(pageCacheControl)}`,
    '    Header always set Vary "Accept, Accept-Encoding"',
    ...negotiatedHeaderLines,
    "  </Directory>",
    ...dirOpen(apiDir),
    ...mimeLines([".json"]),
    // One type only: any Accept gets the JSON rather than a 406.
    "    RequestHeader unset Accept",
    `    Header set Cache-Control ${apacheQuote(pageCacheControl)}`,
    '    Header always set Vary "Accept-Encoding"',
    ...negotiatedHeaderLines,
    "  </Directory>",
  ];
}

/** Index pages change on every upload; a short lifetime keeps caches (and the CDN) close to the database. */
const pageCacheControl = ORIGIN_CACHE_CONTROL.index;

const negotiatedHeaderLines = [
  "    Header always unset TCN",
  "    Header always unset Content-Location",
  // mod_negotiation's structured ETag (variant;variant-list) lacks its closing quote: add it
  // on the way out, and take it off again in If-None-Match so the comparison still matches.
  String.raw`    Header edit ETag "^((?:W/)?\"[^\"]*)$" "$1\""`,
  String.raw`    RequestHeader edit* If-None-Match "(\"[^\",;]*;[^\",]*)\"" "$1"`,
];

/** The site: static files, packages from the package volume, the index pages and the index app. */
export function renderApacheSite(t: Topology, _node: NodeSpec): string {
  const balancers = nodesWithRole(t, "balancer").map((n) => n.privateIp);
  const packagesDir = `${t.storage.packageRoot}/packages/`;
  const runtime = t.app.runtime;
  const appLines = runtime === "fcgid" ? fcgidVhostLines(t) : appServerVhostLines(t);
  const lines = [
    "# Managed by pypi-node.",
    `ServerName ${apacheQuote(t.domain)}`,
    ...(runtime === "fcgid" ? fcgidServerLines(t) : []),
    `<VirtualHost ${apacheQuote(`*:${t.app.httpPort}`)}>`,
    `  ServerName ${apacheQuote(t.domain)}`,
    `  DocumentRoot ${apacheQuote(paths.staticRoot)}`,
    "",
    // InternalProxy (not TrustedProxy) because clients may themselves have private addresses
    // (the lab); only the balancers' own addresses are trusted to set the header.
    "  RemoteIPHeader X-Forwarded-For",
    `  RemoteIPInternalProxy ${balancers.map(apacheQuote).join(" ")}`,
    '  LogFormat "%a %l %u %t \\"%r\\" %>s %O \\"%{Referer}i\\" \\"%{User-Agent}i\\" %D" pypi',
    '  SetEnvIf Request_URI "^/_health(/detail)?$" pypi_health',
    `  ErrorLog ${apacheLogDir}/pypi-error.log`,
    `  CustomLog ${apacheLogDir}/pypi-access.log pypi env=!pypi_health`,
    "",
    '  Header always set X-Content-Type-Options "nosniff"',
    '  Header always set X-Frame-Options "DENY"',
    '  Header always set Referrer-Policy "strict-origin-when-cross-origin"',
    "",
    `  <Directory ${apacheQuote(paths.staticRoot)}>`,
    "    Options -Indexes -ExecCGI -Includes -MultiViews",
    "    AllowOverride None",
    "    Require all granted",
    "  </Directory>",
    "",
    `  Alias ${apacheQuote("/packages/")} ${apacheQuote(packagesDir)}`,
    `  <Directory ${apacheQuote(packagesDir)}>`,
    "    Options -Indexes -ExecCGI -Includes -MultiViews",
    "    AllowOverride None",
    "    Require all granted",
    // Archives are served as they are stored: a Content-Encoding would make clients unpack
    // them and fail the hash check.
    "    RemoveEncoding .gz .tgz .bz2 .Z",
    "    AddType application/zip .whl .egg .zip",
    "    AddType application/gzip .gz .tgz",
    "    AddType application/x-bzip2 .bz2",
    "    AddType text/plain .asc .metadata",
    // A file name is never reused with other content: caches and the CDN keep it for a year.
    // (`set` without `always`: a 404 for a file not uploaded yet is not made long-lived.)
    `    Header set Cache-Control ${apacheQuote(ORIGIN_CACHE_CONTROL.immutable)}`,
    "  </Directory>",
    "",
    // The upload token travels in Authorization, which Apache hides from FastCGI unless told.
    `  <Location ${apacheQuote("/legacy")}>`,
    "    CGIPassAuth On",
    `    LimitRequestBody ${apacheQuote(uploadBodyLimit(t.upload.maxFileBytes))}`,
    "  </Location>",
    // Health detail (writer address, standby names, lag) only for the balancers' checks and the
    // node itself; through nginx it is a 404. mod_remoteip has already replaced a proxied
    // request's address with the client's, so a forwarded request never matches.
    `  <Location ${apacheQuote("/_health/detail")}>`,
    `    Require ip ${[...balancers, "127.0.0.1", "::1"].map(apacheQuote).join(" ")}`,
    "  </Location>",
    "",
    ...pageLines(t),
    "",
    ...appLines,
    "</VirtualHost>",
  ];
  return `${lines.join("\n")}\n`;
}
