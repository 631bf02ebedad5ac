import { describe, expect, it } from "vitest";
import {
  apacheModules,
  apacheModulesOfOtherRuntimes,
  apacheQuote,
  indexAppEnv,
  renderApachePorts,
  renderApacheSecurityConf,
  renderApacheSite,
} from "../../src/render/apache.js";
import { nodesWithRole, type Topology } from "../../src/topology.js";
import { type Shape, topologyFor, withRuntime } from "../support/topologies.js";

const appNode = (t: Topology) => nodesWithRole(t, "app")[0]!;
const lines = (text: string): string[] => text.split("\n").map((l) => l.trim());

describe.each<Shape>(["staging", "prod"])("apache site (%s)", (shape) => {
  const t = topologyFor(shape);
  const site = renderApacheSite(t, appNode(t));
  const l = lines(site);

  it("serves the domain on the backend port with static and package files", () => {
    expect(l).toContain(`<VirtualHost "*:${t.app.httpPort}">`);
    expect(l).toContain(`ServerName "${t.domain}"`);
    expect(l).toContain('DocumentRoot "/srv/www/pypi-static"');
    expect(l).toContain(`Alias "/packages/" "${t.storage.packageRoot}/packages/"`);
    expect(l).toContain(`<Directory "${t.storage.packageRoot}/packages/">`);
    expect(l.filter((x) => x === "AllowOverride None").length).toBeGreaterThanOrEqual(3);
    // DocumentRoot, packages, and the two page trees.
    expect(l.filter((x) => x.startsWith("Options ") && x.includes("-Indexes")).length).toBe(4);
    expect(l).toContain("RemoveEncoding .gz .tgz .bz2 .Z");
    expect(l).toContain("AddType application/zip .whl .egg .zip");
    expect(l).toContain("AddType application/gzip .gz .tgz");
    expect(site.endsWith("</VirtualHost>\n")).toBe(true);
  });

  it("trusts X-Forwarded-For from the balancers' private addresses only", () => {
    const balancers = nodesWithRole(t, "balancer").map((n) => `"${n.privateIp}"`);
    expect(l).toContain("RemoteIPHeader X-Forwarded-For");
    expect(l).toContain(`RemoteIPInternalProxy ${balancers.join(" ")}`);
    for (const fip of t.floatingIps) expect(site).not.toContain(fip.address);
    expect(site).not.toContain(t.vpcCidr);
    expect(l.find((x) => x.startsWith("LogFormat "))).toMatch(/^LogFormat "%a /);
    expect(l.find((x) => x.startsWith("CustomLog "))).toMatch(/ pypi env=!pypi_health$/);
  });

  it("runs the index app under mod_fcgid with bounded processes and timeouts", () => {
    const l = lines(renderApacheSite(withRuntime(t, "fcgid"), appNode(t)));
    const site = l.join("\n");
    expect(l[1]).toBe(`ServerName "${t.domain}"`);
    expect(l).toContain(`FcgidMaxProcesses ${t.app.maxProcesses}`);
    expect(l).toContain(`FcgidMaxProcessesPerClass ${t.app.maxProcesses}`);
    expect(l).toContain("FcgidMinProcessesPerClass 1");
    expect(l).toContain(`FcgidIOTimeout ${t.app.requestTimeoutSeconds}`);
    expect(l).toContain(`FcgidBusyTimeout ${t.app.requestTimeoutSeconds * 2}`);
    for (const d of [
      "FcgidConnectTimeout",
      "FcgidIdleTimeout",
      "FcgidMaxRequestsPerProcess",
      "FcgidProcessLifeTime",
    ]) {
      expect(l.some((x) => new RegExp(`^${d} \\d+$`).test(x))).toBe(true);
    }
    // Server-config-only directives must sit outside the virtual host.
    const vhostStart = l.findIndex((x) => x.startsWith("<VirtualHost"));
    expect(l.indexOf(`FcgidMaxProcesses ${t.app.maxProcesses}`)).toBeLessThan(vhostStart);
    expect(l.findIndex((x) => x.startsWith("FcgidIdleTimeout"))).toBeLessThan(vhostStart);
    for (const p of ["/simple", "/pypi", "/legacy", "/_health"])
      expect(l).toContain(`Alias "${p}" "/opt/pypi-index/index.fcgi"`);
    // An upload body: the largest file plus the multipart form around it.
    expect(l).toContain(`FcgidMaxRequestLen ${t.upload.maxFileBytes + 1024 * 1024}`);
    expect(l).toContain("SetHandler fcgid-script");
    expect(l).toContain(`FcgidInitialEnv "PYPI_DB_HOST" "${t.overlay.dbWriter}"`);
    expect(l).toContain(`FcgidInitialEnv "PYPI_DB_PORT" "${t.postgres.port}"`);
    expect(l).toContain('FcgidInitialEnv "PYPI_DB_PASSWORD_FILE" "/etc/pypi-index/pgpass"');
    expect(l).toContain(`FcgidInitialEnv "PYPI_PACKAGE_ROOT" "${t.storage.packageRoot}"`);
    expect(site).not.toMatch(/WSGI|ProxyPass|proxy:/);
  });

  it("carries no secret values or parameter names, only the password file path", () => {
    expect(site).not.toMatch(/password"\s+"(?!\/)/i);
    for (const s of Object.values(t.secrets)) expect(site).not.toContain(s.parameter);
  });

  it("sets security headers", () => {
    expect(l).toContain('Header always set X-Content-Type-Options "nosniff"');
    expect(l).toContain('Header always set X-Frame-Options "DENY"');
  });
});

describe("apache: static index pages", () => {
  const t = topologyFor("prod");
  const site = renderApacheSite(t, appNode(t));
  const l = lines(site);
  const root = t.storage.packageRoot;
  const block = (dir: string): string[] => {
    const start = l.indexOf(`<Directory "${dir}">`);
    return l.slice(start, l.indexOf("</Directory>", start));
  };

  it("rewrites a page URL to its type map only when the page exists; the rest goes to the app", () => {
    const i = l.indexOf(`RewriteRule "^/simple/((?:[a-z0-9-]+/)?)$" "${root}/simple/$1index.var" [L]`);
    expect(i).toBeGreaterThan(0);
    expect(l[i - 1]).toBe(`RewriteCond "${root}/simple/$1index.var" -f`);
    expect(l).toContain(`RewriteRule "^/pypi/([a-z0-9-]+)/json$" "${root}/pypi/$1/index.var" [L]`);
    expect(l).toContain(`RewriteCond "${root}/pypi/$1/index.var" -f`);
    // The variants the maps name, and nothing else, are reachable as files.
    const variants = l.find((x) => x.startsWith('RewriteRule "^/simple/((?:[a-z0-9-]+/)?index'));
    const re = new RegExp(/^RewriteRule "([^"]+)"/.exec(variants ?? "")?.[1] ?? "^$");
    for (const ok of ["index.html", "index.v1json.gz", "demo-pkg/index.v1html", "a/index.html.gz"])
      expect(re.test(`/simple/${ok}`), ok).toBe(true);
    for (const bad of ["index.var", "../index.html", "Demo/index.html", "a/b/index.html", "a/index.json"])
      expect(re.test(`/simple/${bad}`), bad).toBe(false);
    expect(l).toContain("RewriteEngine On");
  });

  it("declares each form's type, gzip as an encoding (not a type), and the type-map handler", () => {
    const simple = block(`${root}/simple`);
    expect(simple).toEqual(
      expect.arrayContaining([
        "AddHandler type-map .var",
        "RemoveType .gz",
        "AddEncoding gzip .gz",
        'AddType "text/html; charset=utf-8" .html',
        'AddType "application/vnd.pypi.simple.v1+html" .v1html',
        'AddType "application/vnd.pypi.simple.v1+json" .v1json',
        'Header set Cache-Control "max-age=60, public"',
        'Header always set Vary "Accept, Accept-Encoding"',
        "AllowOverride None",
        "Require all granted",
      ]),
    );
    expect(simple.some((x) => x.startsWith("Header edit ETag "))).toBe(true);
    const api = block(`${root}/pypi`);
    expect(api).toEqual(
      expect.arrayContaining([
        "AddHandler type-map .var",
        "AddEncoding gzip .gz",
        'AddType "application/json" .json',
        "RequestHeader unset Accept",
        'Header always set Vary "Accept-Encoding"',
      ]),
    );
  });

  it("mends the negotiated ETag's missing closing quote, and If-None-Match to match it", () => {
    const edit = l.find((x) => x.startsWith("Header edit ETag "));
    const [, pattern, replacement] = /^Header edit ETag "(.*)" "(.*)"$/.exec(edit ?? "") ?? [];
    const unquote = (s: string): string => s.replace(/\\"/g, '"');
    const fix = (etag: string): string =>
      etag.replace(new RegExp(unquote(pattern as string)), unquote(replacement as string));
    expect(fix('"8-5f;2b9-6e')).toBe('"8-5f;2b9-6e"');
    expect(fix('W/"8-5f;2b9-6e')).toBe('W/"8-5f;2b9-6e"');
    expect(fix('"8-5f"')).toBe('"8-5f"');
    const inm = l.find((x) => x.startsWith("RequestHeader edit* If-None-Match "));
    const [, p2, r2] = /^RequestHeader edit\* If-None-Match "(.*)" "(.*)"$/.exec(inm ?? "") ?? [];
    expect('"8-5f;2b9-6e"'.replace(new RegExp(unquote(p2 as string), "g"), unquote(r2 as string))).toBe(
      '"8-5f;2b9-6e',
    );
    expect('"plain"'.replace(new RegExp(unquote(p2 as string), "g"), unquote(r2 as string))).toBe('"plain"');
  });

  it("?format= overrides Accept for /simple/ only; a type not served becomes an unmatched Accept", () => {
    const sets = l.filter((x) => x.startsWith("RequestHeader set Accept "));
    const parsed = sets.map((x) => {
      const [, value, expr] = /^RequestHeader set Accept "([^"]+)" "expr=(.*)"$/.exec(x) ?? [];
      const regexes = [...(expr ?? "").matchAll(/m#(.*?)#(i?)/g)].map(
        (m) => new RegExp(m[1] as string, m[2]),
      );
      return { value, uri: regexes[0] as RegExp, query: regexes[1] as RegExp };
    });
    // Later lines win: the generic "unsupported" comes first.
    expect(parsed.map((p) => p.value)).toEqual([
      "application/x-unsupported-format",
      "text/html",
      "application/vnd.pypi.simple.v1+html",
      "application/vnd.pypi.simple.v1+json",
    ]);
    const accept = (uri: string, query: string): string | undefined =>
      parsed.filter((p) => p.uri.test(uri) && p.query.test(query)).at(-1)?.value;
    expect(accept("/simple/x/", "format=application/vnd.pypi.simple.v1%2Bjson")).toBe(
      "application/vnd.pypi.simple.v1+json",
    );
    expect(accept("/simple/x/", "a=1&format=application%2Fvnd.pypi.simple.latest+html")).toBe(
      "application/vnd.pypi.simple.v1+html",
    );
    expect(accept("/simple/", "format=TEXT/HTML")).toBe("text/html");
    expect(accept("/simple/x/", "format=application/json")).toBe("application/x-unsupported-format");
    expect(accept("/simple/x/", "format=application/vnd.pypi.simple.v1+jsonx")).toBe(
      "application/x-unsupported-format",
    );
    expect(accept("/simple/x/", "noformat=1")).toBeUndefined();
    expect(accept("/packages/x/", "format=text/html")).toBeUndefined();
  });
});

describe("apache runtimes", () => {
  const t = topologyFor("prod");

  it("appserver: after the page rules, the app paths go to the app server's socket", () => {
    const site = renderApacheSite(withRuntime(t, "appserver"), appNode(t));
    const l = lines(site);
    expect(l).toContain('<Proxy "unix:/run/pypi-index/app.sock|fcgi://pypi-index">');
    // retry=0: a restarting app server must not be taken out of service for 60 s.
    expect(l).toContain(`ProxySet connectiontimeout=5 timeout=${t.app.requestTimeoutSeconds} retry=0`);
    expect(l).toContain('RewriteCond %{REQUEST_URI} "^/(simple|pypi|legacy|_health)(/|$)"');
    const handler = 'RewriteRule ^ - "[H=proxy:unix:/run/pypi-index/app.sock|fcgi://pypi-index]"';
    expect(l).toContain(handler);
    // Every page rule ends the rewrite pass before the handler rule is reached.
    const pageRules = l.filter((x) => x.startsWith("RewriteRule ") && x !== handler);
    expect(pageRules.length).toBe(4);
    expect(pageRules.every((x) => x.endsWith("[L]"))).toBe(true);
    expect(l.indexOf(handler)).toBeGreaterThan(Math.max(...pageRules.map((x) => l.indexOf(x))));
    expect(l.some((x) => x.startsWith("Fcgid") || x.startsWith('Alias "/simple"'))).toBe(false);
    expect(l).toContain(`LimitRequestBody ${t.upload.maxFileBytes + 1024 * 1024}`);
  });

  it("fcgid: the app paths are aliases of the script, bounded by appMaxProcesses", () => {
    const l = lines(renderApacheSite(withRuntime(t, "fcgid"), appNode(t)));
    expect(l).toContain(`FcgidMaxProcessesPerClass ${t.app.maxProcesses}`);
    expect(l).toContain('Alias "/simple" "/opt/pypi-index/index.fcgi"');
    expect(l).toContain(`FcgidMaxRequestLen ${t.upload.maxFileBytes + 1024 * 1024}`);
    expect(l.some((x) => x.includes("proxy:"))).toBe(false);
  });

  it("lists the modules each runtime needs, and the agent removes the other runtime's", () => {
    expect(apacheModules("fcgid")).toEqual(
      expect.arrayContaining(["remoteip", "headers", "fcgid", "negotiation", "rewrite", "mime"]),
    );
    expect(apacheModules("appserver")).toEqual(expect.arrayContaining(["remoteip", "proxy", "proxy_fcgi"]));
    expect(apacheModules("appserver")).not.toContain("fcgid");
    expect(apacheModulesOfOtherRuntimes("appserver")).toEqual(["fcgid"]);
    expect(apacheModulesOfOtherRuntimes("fcgid")).toEqual(["proxy", "proxy_fcgi"]);
  });

  it("is deterministic", () => {
    expect(renderApacheSite(t, appNode(t))).toBe(renderApacheSite(topologyFor("prod"), appNode(t)));
  });
});

describe("apache conf files", () => {
  const t = topologyFor("staging");
  it("listens only on the backend port", () => {
    expect(
      renderApachePorts(t, appNode(t))
        .split("\n")
        .filter((x) => x.startsWith("Listen")),
    ).toEqual(["Listen 80"]);
  });
  it("hides the version", () => {
    const l = lines(renderApacheSecurityConf(t, appNode(t)));
    expect(l).toContain("ServerTokens Prod");
    expect(l).toContain("ServerSignature Off");
    expect(l).toContain("TraceEnable Off");
  });
  it("app env has no secrets", () => {
    expect(indexAppEnv(t).map(([k]) => k)).not.toContain("PYPI_DB_PASSWORD");
  });
});

describe("apacheQuote", () => {
  it("quotes strings and leaves integers bare", () => {
    expect(apacheQuote("/srv/pypi")).toBe('"/srv/pypi"');
    expect(apacheQuote(80)).toBe("80");
  });
  it("refuses what Apache cannot hold in a quoted word", () => {
    for (const bad of ['a"b', "a\\b", "a\nb", "x${HOME", ""]) expect(() => apacheQuote(bad)).toThrow();
    expect(() => apacheQuote(1.5)).toThrow();
  });
});
