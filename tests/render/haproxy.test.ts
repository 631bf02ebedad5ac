import { describe, expect, it } from "vitest";
import { paths } from "../../src/layout.js";
import {
  haproxyQuote,
  renderHaproxyCfg,
  UPLOAD_BACKEND,
  UPLOAD_CHECK,
  UPLOAD_FRONTEND,
  uploadServerLines,
} from "../../src/render/haproxy.js";
import { parseTopology } from "../../src/schema.js";
import { nodeByName, nodesWithRole } from "../../src/topology.js";
import { type Shape, topologyFor } from "../support/topologies.js";

const render = (shape: Shape): string => {
  const t = topologyFor(shape);
  return renderHaproxyCfg(t, nodeByName(t, "lb-a"));
};

/** Body lines (trimmed) of the section whose header line is `head`. */
function sectionLines(text: string, head: string): string[] {
  const lines = text.split("\n");
  const start = lines.indexOf(head);
  if (start < 0) throw new Error(`no section "${head}"`);
  const body: string[] = [];
  for (const l of lines.slice(start + 1)) {
    if (!l.startsWith(" ")) break;
    body.push(l.trim());
  }
  return body;
}

const durationMs = (v: string): number => {
  const m = v.match(/^(\d+)(ms|s|m|h)?$/);
  if (!m) throw new Error(`not a duration: ${v}`);
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[m[2] ?? "ms"] ?? 1;
  return Number(m[1]) * unit;
};

describe.each<Shape>(["staging", "prod"])("renderHaproxyCfg (%s)", (shape) => {
  const t = topologyFor(shape);
  const text = render(shape);
  const global = sectionLines(text, "global");
  const defaults = sectionLines(text, "defaults");
  const frontend = sectionLines(text, `frontend ${UPLOAD_FRONTEND}`);
  const backend = sectionLines(text, `backend ${UPLOAD_BACKEND}`);

  it("has the sections in order and ends with a newline", () => {
    const heads = text.split("\n").filter((l) => /^[a-z]/.test(l));
    expect(heads).toEqual(["global", "defaults", `frontend ${UPLOAD_FRONTEND}`, `backend ${UPLOAD_BACKEND}`]);
    expect(text.endsWith("check\n")).toBe(true);
  });

  it("runs chrooted as haproxy with the admin socket the runbooks use", () => {
    expect(paths.haproxySocket).toBe("/run/haproxy/admin.sock");
    expect(global).toEqual(
      expect.arrayContaining([
        "log /dev/log local0",
        "chroot /var/lib/haproxy",
        "stats socket /run/haproxy/admin.sock mode 660 level admin expose-fd listeners",
        "user haproxy",
        "group haproxy",
        "daemon",
        "maxconn 4096",
      ]),
    );
  });

  it("proxies TCP with long session timeouts and a short connect timeout", () => {
    expect(defaults).toContain("mode tcp");
    expect(defaults).toContain("option tcplog");
    const timeout = (name: string): number => {
      const line = defaults.find((l) => l.startsWith(`timeout ${name} `));
      if (!line) throw new Error(`no timeout ${name}`);
      return durationMs(line.split(" ")[2] ?? "");
    };
    expect(timeout("client")).toBe(3_600_000);
    expect(timeout("server")).toBe(3_600_000);
    expect(timeout("connect")).toBeLessThanOrEqual(2000);
    expect(timeout("check")).toBeLessThanOrEqual(1000);
    expect(defaults).toContain("option redispatch 1");
  });

  it("listens on the upload port on every address", () => {
    expect(frontend).toEqual(["bind :22", `default_backend ${UPLOAD_BACKEND}`]);
  });

  it("checks the SSH banner of each backend", () => {
    expect(backend.slice(0, 3)).toEqual([
      "balance leastconn",
      "option tcp-check",
      "tcp-check expect rstring ^SSH-2\\.0-",
    ]);
    expect(text).toContain("tcp-check expect rstring ^SSH-2\\.0-\n");
  });

  it("marks a dead backend down within about 3 s and cuts its sessions", () => {
    const defaultServer = backend.find((l) => l.startsWith("default-server "));
    expect(defaultServer).toBe(
      "default-server inter 1000ms fastinter 250ms downinter 2000ms fall 2 rise 3 on-marked-down shutdown-sessions",
    );
    const c = UPLOAD_CHECK;
    // Worst case: wait for the next check, then `fall` checks that each time out after about `inter`.
    const worstMs = c.interMs + c.fall * c.interMs + (c.fall - 1) * c.fastinterMs;
    expect(worstMs).toBeLessThanOrEqual(3500);
  });

  it("names one server per app server after its node", () => {
    const apps = nodesWithRole(t, "app");
    expect(apps).toHaveLength(shape === "prod" ? 3 : 2);
    const servers = backend.filter((l) => l.startsWith("server "));
    expect(servers).toEqual(apps.map((a) => `server ${a.name} ${a.privateIp}:22 check`));
    expect(uploadServerLines(t)).toEqual(servers);
    expect(servers[0]).toBe("server app-a 10.40.10.10:22 check");
  });

  it("is deterministic and names the node", () => {
    expect(render(shape)).toBe(text);
    expect(text.split("\n")[0]).toBe(`# ${shape} balancer lb-a: SFTP upload proxy`);
  });

  it("matches the snapshot", () => {
    expect(text).toMatchSnapshot();
  });
});

describe("renderHaproxyCfg inputs", () => {
  it("uses the configured frontend and backend ports", () => {
    const base = topologyFor("staging");
    const t = { ...base, upload: { ...base.upload, port: 2022, backendPort: 2222 } };
    const text = renderHaproxyCfg(t, nodeByName(t, "lb-b"));
    expect(text).toContain("    bind :2022\n");
    expect(text).toContain("    server app-b 10.40.11.10:2222 check\n");
  });

  it("leaves a topology without app servers to parseTopology, which names the role count", () => {
    const t = topologyFor("prod");
    const noApps = { ...t, nodes: t.nodes.filter((n) => n.role !== "app") };
    expect(() => parseTopology(noApps)).toThrow("nodes(role app): 0 is not valid");
  });
});

describe("haproxyQuote", () => {
  it("passes plain words through", () => {
    expect(haproxyQuote("app-a")).toBe("app-a");
    expect(haproxyQuote("10.0.0.1:22")).toBe("10.0.0.1:22");
    expect(haproxyQuote(3)).toBe("3");
  });

  it("single-quotes the rest, which disables escapes and $ expansion", () => {
    expect(haproxyQuote("a b")).toBe("'a b'");
    expect(haproxyQuote("$HOME#x")).toBe("'$HOME#x'");
  });

  it("rejects what it cannot quote", () => {
    expect(() => haproxyQuote("")).toThrow(/empty/);
    expect(() => haproxyQuote("it's")).toThrow(/single quote/);
    expect(() => haproxyQuote("a\nb")).toThrow(/control/);
  });
});
