import { describe, expect, it } from "vitest";
import {
  HSTS_MAX_AGE_SECONDS,
  NGINX_UPSTREAM,
  nginxQuote,
  renderNginxConf,
  upstreamServers,
} from "../../src/render/nginx.js";
import { parseTopology } from "../../src/schema.js";
import { nodeByName, nodesWithRole } from "../../src/topology.js";
import { type Shape, topologyFor } from "../support/topologies.js";

const render = (shape: Shape): string => {
  const t = topologyFor(shape);
  return renderNginxConf(t, nodeByName(t, "lb-a"));
};

/** Trimmed, non-empty lines, so assertions do not depend on indentation. */
const linesOf = (text: string): string[] =>
  text
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l !== "");

/** Lines of the first block whose opening line is `head {`. */
function blockLines(text: string, head: string): string[] {
  const lines = linesOf(text);
  const start = lines.indexOf(`${head} {`);
  if (start < 0) throw new Error(`no block "${head}"`);
  let depth = 0;
  for (let i = start; i < lines.length; i++) {
    const l = lines[i] ?? "";
    if (l.endsWith("{")) depth++;
    if (l === "}") depth--;
    if (depth === 0) return lines.slice(start + 1, i);
  }
  throw new Error(`unterminated block "${head}"`);
}

function serverBlocks(text: string): string[][] {
  const lines = linesOf(text);
  const blocks: string[][] = [];
  let rest = lines.join("\n");
  while (rest.includes("server {")) {
    blocks.push(blockLines(rest, "server"));
    rest = rest.slice(rest.indexOf("server {") + "server {".length);
  }
  return blocks;
}

const httpsBlock = (text: string): string[] => {
  const b = serverBlocks(text).find((s) => s.some((l) => l.startsWith("listen 443")));
  if (!b) throw new Error("no https server block");
  return b;
};

describe.each<Shape>(["staging", "prod"])("renderNginxConf (%s)", (shape) => {
  const t = topologyFor(shape);
  const text = render(shape);
  const lines = linesOf(text);
  const https = httpsBlock(text);

  it("is a complete main config with relative includes and Debian paths", () => {
    expect(lines.slice(1, 6)).toEqual([
      "user www-data;",
      "worker_processes auto;",
      "pid /run/nginx.pid;",
      "error_log /var/log/nginx/error.log;",
      "include modules-enabled/*.conf;",
    ]);
    const includes = lines.filter((l) => l.startsWith("include "));
    expect(includes).toEqual(["include modules-enabled/*.conf;", "include mime.types;"]);
    expect(text).not.toContain("/etc/nginx");
    expect(text.endsWith("}\n")).toBe(true);
  });

  it("hides the version and keeps request bodies small", () => {
    expect(lines).toContain("server_tokens off;");
    expect(lines).toContain("client_max_body_size 1m;");
  });

  it("logs upstream timing", () => {
    expect(text).toContain("uct=$upstream_connect_time urt=$upstream_response_time");
    expect(text).toContain("ua=$upstream_addr us=$upstream_status");
    expect(lines).toContain("access_log /var/log/nginx/access.log pypi;");
  });

  it("terminates TLS with the Mozilla intermediate profile", () => {
    expect(https).toContain("listen 443 ssl http2 default_server;");
    expect(https).toContain(`server_name ${t.domain};`);
    expect(https).toContain("ssl_certificate /etc/pypi/tls/fullchain.pem;");
    expect(https).toContain("ssl_certificate_key /etc/pypi/tls/privkey.pem;");
    expect(https).toContain("ssl_protocols TLSv1.2 TLSv1.3;");
    expect(https).toContain(
      "ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:" +
        "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305;",
    );
    expect(https).toContain("ssl_ecdh_curve X25519:prime256v1:secp384r1;");
    expect(https).toContain("ssl_prefer_server_ciphers on;");
    expect(https).toContain("ssl_session_tickets off;");
    expect(https).toContain("ssl_session_cache shared:TLS:10m;");
    expect(text).not.toMatch(/TLSv1(\.1)?[ ;]/);
    expect(text).not.toMatch(/(?<!EC)DHE-|CBC|SHA1|RC4|3DES/);
  });

  it("sends a two-year HSTS header on every response", () => {
    expect(HSTS_MAX_AGE_SECONDS).toBe(63072000);
    expect(https).toContain("add_header Strict-Transport-Security max-age=63072000 always;");
    // A location-level add_header would drop the server-level one.
    expect(lines.filter((l) => l.startsWith("add_header"))).toHaveLength(1);
  });

  it("redirects all plain HTTP to HTTPS with 301", () => {
    const plain = serverBlocks(text).find((s) => s.includes("listen 80 default_server;"));
    expect(plain).toBeDefined();
    expect(plain).toContain("return 301 https://$host$request_uri;");
    expect(plain?.some((l) => l.startsWith("proxy_pass"))).toBe(false);
  });

  it("listens on wildcard addresses only", () => {
    const listens = lines.filter((l) => l.startsWith("listen "));
    expect(listens).toEqual(["listen 80 default_server;", "listen 443 ssl http2 default_server;"]);
  });

  it("balances over every app server with shared passive health checks and no keepalive pool", () => {
    const apps = nodesWithRole(t, "app");
    expect(apps).toHaveLength(shape === "prod" ? 3 : 2);
    const upstream = blockLines(text, `upstream ${NGINX_UPSTREAM}`);
    // Each again, twice, as a backup never marked failed: every server out at once never means
    // "no live upstreams", and a request killed on both servers gets a second try on each.
    const backups = apps.map((a) => `server ${a.privateIp}:80 backup max_fails=0;`);
    expect(upstream).toEqual([
      `zone ${NGINX_UPSTREAM} 64k;`,
      ...apps.map((a) => `server ${a.privateIp}:80 max_fails=2 fail_timeout=10s;`),
      ...backups,
      ...backups,
    ]);
    expect(upstreamServers(t)).toHaveLength(apps.length * 3);
    expect(https).toContain("proxy_http_version 1.1;");
    expect(upstream.some((l) => l.startsWith("keepalive"))).toBe(false);
  });

  it("retries failed upstreams a bounded number of times with a short connect timeout", () => {
    expect(https).toContain("proxy_next_upstream error timeout http_502 http_503 http_504;");
    // Every entry once: each app server as itself and as its two backups.
    expect(https).toContain(`proxy_next_upstream_tries ${nodesWithRole(t, "app").length * 3};`);
    const connect = https.find((l) => l.startsWith("proxy_connect_timeout "));
    const seconds = Number(connect?.match(/^proxy_connect_timeout (\d+)s;$/)?.[1]);
    expect(seconds).toBeGreaterThan(0);
    expect(seconds).toBeLessThanOrEqual(2);
    const read = t.app.requestTimeoutSeconds + 5;
    expect(https).toContain(`proxy_read_timeout ${read}s;`);
    expect(https).toContain(`proxy_send_timeout ${read}s;`);
  });

  it("forwards client identity headers set by the edge", () => {
    expect(https).toEqual(
      expect.arrayContaining([
        "proxy_set_header Host $host;",
        "proxy_set_header X-Forwarded-For $remote_addr;",
        "proxy_set_header X-Real-IP $remote_addr;",
        "proxy_set_header X-Forwarded-Proto $scheme;",
        "proxy_set_header X-Forwarded-Host $host;",
      ]),
    );
  });

  it("proxies /_health and everything else to the app upstream", () => {
    expect(blockLines(text, "location = /_health")).toEqual([
      "access_log off;",
      `proxy_pass http://${NGINX_UPSTREAM};`,
    ]);
    expect(blockLines(text, "location /")).toEqual(["return 301 https://$host$request_uri;"]);
    const lastLocation = https.lastIndexOf("location / {");
    expect(https[lastLocation + 1]).toBe(`proxy_pass http://${NGINX_UPSTREAM};`);
  });

  it("takes upload bodies only on /legacy/, up to the file limit plus the form, and hides health detail", () => {
    const legacy = blockLines(text, "location = /legacy/");
    expect(legacy).toContain(`client_max_body_size ${t.upload.maxFileBytes + 1024 * 1024};`);
    expect(legacy).toContain(`proxy_pass http://${NGINX_UPSTREAM};`);
    // A POST is never replayed on a second app server.
    expect(https.join("\n")).not.toMatch(/non_idempotent/);
    expect(lines.filter((l) => l.startsWith("client_max_body_size"))).toEqual([
      "client_max_body_size 1m;",
      `client_max_body_size ${t.upload.maxFileBytes + 1024 * 1024};`,
    ]);
    expect(blockLines(text, "location ^~ /_health/")).toEqual(["return 404;"]);
  });

  it("is deterministic and names the node", () => {
    expect(render(shape)).toBe(text);
    expect(lines[0]).toBe(`# ${shape} balancer lb-a: TLS termination for ${t.domain}`);
  });

  it("matches the snapshot", () => {
    expect(text).toMatchSnapshot();
  });
});

describe("renderNginxConf inputs", () => {
  it("uses the configured app port and request timeout", () => {
    const base = topologyFor("staging");
    const t = { ...base, app: { ...base.app, httpPort: 8080, requestTimeoutSeconds: 120 } };
    const text = renderNginxConf(t, nodeByName(t, "lb-b"));
    expect(text).toContain("server 10.40.10.10:8080 max_fails=2 fail_timeout=10s;");
    expect(text).toContain("proxy_read_timeout 125s;");
  });

  it("leaves a topology without app servers to parseTopology, which names the role count", () => {
    const t = topologyFor("staging");
    const noApps = { ...t, nodes: t.nodes.filter((n) => n.role !== "app") };
    expect(() => parseTopology(noApps)).toThrow("nodes(role app): 0 is not valid");
  });

  it("quotes a domain or path that is not a plain word", () => {
    const base = topologyFor("staging");
    const t = { ...base, tls: { ...base.tls, certificatePath: "/etc/pypi/tls/my cert.pem" } };
    expect(renderNginxConf(t, nodeByName(t, "lb-a"))).toContain(
      'ssl_certificate "/etc/pypi/tls/my cert.pem";',
    );
  });
});

describe("nginxQuote", () => {
  it("passes plain words through", () => {
    expect(nginxQuote("pypi.example.org")).toBe("pypi.example.org");
    expect(nginxQuote("10.0.0.1:80")).toBe("10.0.0.1:80");
    expect(nginxQuote(42)).toBe("42");
  });

  it("double-quotes and escapes the rest", () => {
    expect(nginxQuote("a b")).toBe('"a b"');
    expect(nginxQuote('a"b;c')).toBe('"a\\"b;c"');
    expect(nginxQuote("a\\b{")).toBe('"a\\\\b{"');
  });

  it("rejects what nginx cannot carry literally", () => {
    expect(() => nginxQuote("")).toThrow(/empty/);
    expect(() => nginxQuote("$host")).toThrow(/\$/);
    expect(() => nginxQuote("a\nb")).toThrow(/control/);
  });
});
