import { uploadBodyLimit } from "../layout.js";
import { type NodeSpec, nodesWithRole, type Topology } from "../topology.js";

/** Name of the upstream that holds every app server. */
export const NGINX_UPSTREAM = "pypi_app";

/** Where the rendered main configuration is installed. */
export const NGINX_CONF_PATH = "/etc/nginx/nginx.conf";
/** Set in nginx.conf; the agent reads both (node.env) to check that a reload took. */
export const NGINX_PID_PATH = "/run/nginx.pid";
export const NGINX_ERROR_LOG = "/var/log/nginx/error.log";
export const NGINX_ACCESS_LOG = "/var/log/nginx/access.log";

/** HSTS lifetime: two years, the Mozilla recommendation. */
export const HSTS_MAX_AGE_SECONDS = 63072000;

/** Mozilla "intermediate" profile; TLS 1.3 suites are OpenSSL's defaults. */
export const TLS_PROTOCOLS = ["TLSv1.2", "TLSv1.3"] as const;
export const TLS_CIPHERS = [
  "ECDHE-ECDSA-AES128-GCM-SHA256",
  "ECDHE-RSA-AES128-GCM-SHA256",
  "ECDHE-ECDSA-AES256-GCM-SHA384",
  "ECDHE-RSA-AES256-GCM-SHA384",
  "ECDHE-ECDSA-CHACHA20-POLY1305",
  "ECDHE-RSA-CHACHA20-POLY1305",
] as const;
export const TLS_CURVES = ["X25519", "prime256v1", "secp384r1"] as const;

/** Short, so a blackholed app server costs one retry instead of a stalled request. */
export const PROXY_CONNECT_TIMEOUT_SECONDS = 1;
/**
 * Backup entries per app server. While every server is marked failed only the backups are
 * tried, each at most once per request: with one entry each, a request whose worker died on
 * both servers (a crash storm on both) failed with "no live upstreams". Two give it a second
 * try on each server, on another worker.
 */
export const BACKUP_ENTRIES_PER_APP = 2;
/** Attempts per request: every upstream entry once, bounded in time by proxy_next_upstream_timeout. */
export const proxyNextUpstreamTries = (t: Topology): number =>
  nodesWithRole(t, "app").length * (1 + BACKUP_ENTRIES_PER_APP);
/** Head room over the app's own request timeout, so the app's answer wins the race. */
const READ_TIMEOUT_MARGIN_SECONDS = 5;

const SAFE_WORD = /^[A-Za-z0-9_.:/@+=*,~-]+$/;

/**
 * Quote one value for nginx.conf. Plain words pass through; anything else is double-quoted.
 * `$` is rejected because nginx expands variables inside quotes and has no escape for it.
 */
export function nginxQuote(value: string | number): string {
  const s = String(value);
  if (s.length === 0) throw new Error("nginx: empty value");
  if (s.includes("$")) throw new Error(`nginx: value must not contain "$": ${JSON.stringify(s)}`);
  // biome-ignore lint/suspicious/noControlCharactersInRegex: rejecting control characters is the point
  if (/[\u0000-\u001f\u007f]/.test(s))
    throw new Error(`nginx: control character in value: ${JSON.stringify(s)}`);
  if (SAFE_WORD.test(s)) return s;
  return `"${s.replace(/[\\"]/g, (c) => `\\${c}`)}"`;
}

const q = nginxQuote;

/** Fixed header lines every proxied location sends to the app. */
const PROXY_HEADERS = [
  "proxy_http_version 1.1;",
  "proxy_set_header Host $host;",
  // The balancer is the edge: overwrite, never append to, what the client claims.
  "proxy_set_header X-Forwarded-For $remote_addr;",
  "proxy_set_header X-Real-IP $remote_addr;",
  "proxy_set_header X-Forwarded-Proto $scheme;",
  "proxy_set_header X-Forwarded-Host $host;",
];

const indent = (lines: readonly string[], depth = 1): string[] =>
  lines.map((l) => (l === "" ? l : `${"    ".repeat(depth)}${l}`));

const block = (head: string, body: readonly string[]): string[] => [`${head} {`, ...indent(body), "}"];

/**
 * Upstream members: every app server on its HTTP port, then each again as a backup that is never
 * marked failed. Failures (an error, a timeout, a 502/503/504) take a server out for
 * fail_timeout; when every server is out at once (a DB failover makes every app answer 503, a
 * crash on both kills a request each), nginx would answer "no live upstreams" for up to
 * fail_timeout even to requests the servers could serve. The backups keep trying them instead.
 */
export function upstreamServers(t: Topology): string[] {
  const addresses = nodesWithRole(t, "app").map((a) => q(`${a.privateIp}:${t.app.httpPort}`));
  return [
    ...addresses.map((a) => `server ${a} max_fails=2 fail_timeout=10s;`),
    ...Array.from({ length: BACKUP_ENTRIES_PER_APP }, () =>
      addresses.map((a) => `server ${a} backup max_fails=0;`),
    ).flat(),
  ];
}

/**
 * The complete /etc/nginx/nginx.conf of a balancer. Includes are relative to the config
 * directory so a copy of /etc/nginx can be checked in place with `nginx -t -c`.
 */
export function renderNginxConf(t: Topology, node: NodeSpec): string {
  const readTimeout = t.app.requestTimeoutSeconds + READ_TIMEOUT_MARGIN_SECONDS;

  // No keepalive pool: a request on a kept-alive connection to a dead (blackholed) app server
  // waits out the read timeout, while a fresh connect fails over after the connect timeout.
  // The zone shares max_fails across workers, so the first failures take it out everywhere.
  const upstream = block(`upstream ${q(NGINX_UPSTREAM)}`, [
    `zone ${q(NGINX_UPSTREAM)} 64k;`,
    ...upstreamServers(t),
  ]);

  const redirect = block("server", [
    "listen 80 default_server;",
    "server_name _;",
    ...block("location /", ["return 301 https://$host$request_uri;"]),
  ]);

  const proxied = [`proxy_pass http://${q(NGINX_UPSTREAM)};`];
  const https = block("server", [
    // Wildcard: the floating IPs arrive as extra addresses on the interface at failover.
    "listen 443 ssl http2 default_server;",
    `server_name ${q(t.domain)};`,
    "",
    `ssl_certificate ${q(t.tls.certificatePath)};`,
    `ssl_certificate_key ${q(t.tls.keyPath)};`,
    `ssl_protocols ${TLS_PROTOCOLS.map(q).join(" ")};`,
    `ssl_ciphers ${q(TLS_CIPHERS.join(":"))};`,
    `ssl_ecdh_curve ${q(TLS_CURVES.join(":"))};`,
    // Every listed cipher is an AEAD suite; the server's order still wins so clients cannot pick
    // a weaker one first (testssl.sh rates a missing server order HIGH).
    "ssl_prefer_server_ciphers on;",
    "ssl_session_timeout 1d;",
    "ssl_session_cache shared:TLS:10m;",
    // Tickets would need key rotation shared by both balancers; the cache is enough.
    "ssl_session_tickets off;",
    "",
    // Only here: a location with its own add_header would silently drop this one.
    `add_header Strict-Transport-Security ${q(`max-age=${HSTS_MAX_AGE_SECONDS}`)} always;`,
    "",
    ...PROXY_HEADERS,
    `proxy_connect_timeout ${q(`${PROXY_CONNECT_TIMEOUT_SECONDS}s`)};`,
    `proxy_send_timeout ${q(`${readTimeout}s`)};`,
    `proxy_read_timeout ${q(`${readTimeout}s`)};`,
    "proxy_next_upstream error timeout http_502 http_503 http_504;",
    `proxy_next_upstream_tries ${q(proxyNextUpstreamTries(t))};`,
    `proxy_next_upstream_timeout ${q(`${readTimeout}s`)};`,
    "",
    // Public health is status only; the detail path is for the balancers' own checks.
    ...block("location = /_health", ["access_log off;", ...proxied]),
    ...block("location ^~ /_health/", ["return 404;"]),
    // The upload API: the only large bodies. nginx buffers them before choosing an app server,
    // and never retries a POST on another one (no non_idempotent), so an upload is sent once.
    ...block("location = /legacy/", [
      `client_max_body_size ${q(uploadBodyLimit(t.upload.maxFileBytes))};`,
      "client_body_buffer_size 1m;",
      ...proxied,
    ]),
    ...block("location /", proxied),
  ]);

  const http = block("http", [
    "sendfile on;",
    "tcp_nopush on;",
    "types_hash_max_size 2048;",
    "server_tokens off;",
    "include mime.types;",
    "default_type application/octet-stream;",
    // Everywhere but the upload API, bodies are small.
    "client_max_body_size 1m;",
    "",
    "log_format pypi '$remote_addr - $remote_user [$time_local] \"$request\" $status $body_bytes_sent '",
    '    \'"$http_referer" "$http_user_agent" host=$host rt=$request_time \'',
    "    'ua=$upstream_addr us=$upstream_status uct=$upstream_connect_time urt=$upstream_response_time';",
    `access_log ${NGINX_ACCESS_LOG} pypi;`,
    "",
    ...upstream,
    "",
    ...redirect,
    "",
    ...https,
  ]);

  const lines = [
    `# ${t.environment} balancer ${node.name}: TLS termination for ${t.domain}`,
    "user www-data;",
    "worker_processes auto;",
    `pid ${NGINX_PID_PATH};`,
    `error_log ${NGINX_ERROR_LOG};`,
    "include modules-enabled/*.conf;",
    "",
    ...block("events", ["worker_connections 1024;"]),
    "",
    ...http,
  ];
  return `${lines.join("\n")}\n`;
}
