import { paths } from "../layout.js";
import { type NodeSpec, nodesWithRole, type Topology } from "../topology.js";

/** Backend of the upload sshd servers; runbooks address servers as `${UPLOAD_BACKEND}/<node>`. */
export const UPLOAD_BACKEND = "uploads";
/** Frontend that accepts SFTP on the floating IPs. */
export const UPLOAD_FRONTEND = "uploads_in";

/** Where the rendered configuration is installed. */
export const HAPROXY_CONF_PATH = "/etc/haproxy/haproxy.cfg";

/**
 * Health-check timing. A refused backend is down within one `inter` plus (fall - 1)
 * `fastinter` (under 1 s); a blackholed or hung one fails each check only when it times
 * out, about one `inter`, so it is down in about 3 s.
 */
export const UPLOAD_CHECK = {
  interMs: 1000,
  fastinterMs: 250,
  downinterMs: 2000,
  fall: 2,
  rise: 3,
  timeoutCheckMs: 750,
} as const;

/** SFTP sessions idle for long stretches (large uploads, interactive clients). */
export const UPLOAD_SESSION_TIMEOUT = "1h";
/** Backends are on the LAN; a slow connect means a dead server, so fail over quickly. */
export const UPLOAD_CONNECT_TIMEOUT = "1s";

const SAFE_WORD = /^[A-Za-z0-9_.:/@+,=-]+$/;

/**
 * Quote one value for haproxy.cfg. Plain words pass through; anything else is single-quoted,
 * which turns off escapes and `$` environment expansion.
 */
export function haproxyQuote(value: string | number): string {
  const s = String(value);
  if (s.length === 0) throw new Error("haproxy: empty value");
  // biome-ignore lint/suspicious/noControlCharactersInRegex: rejecting control characters is the point
  if (/[\u0000-\u001f\u007f]/.test(s))
    throw new Error(`haproxy: control character in value: ${JSON.stringify(s)}`);
  if (SAFE_WORD.test(s)) return s;
  if (s.includes("'"))
    throw new Error(`haproxy: value must not contain a single quote: ${JSON.stringify(s)}`);
  return `'${s}'`;
}

const q = haproxyQuote;
const ms = (n: number): string => q(`${n}ms`);

const section = (head: string, body: readonly string[]): string[] => [head, ...body.map((l) => `    ${l}`)];

/** `server` lines of the upload backend: one per app server, named after the node. */
export function uploadServerLines(t: Topology): string[] {
  return nodesWithRole(t, "app").map(
    (a) => `server ${q(a.name)} ${q(`${a.privateIp}:${t.upload.backendPort}`)} check`,
  );
}

/** The complete /etc/haproxy/haproxy.cfg of a balancer: TCP proxy for SFTP uploads. */
export function renderHaproxyCfg(t: Topology, node: NodeSpec): string {
  const c = UPLOAD_CHECK;

  const lines = [
    `# ${t.environment} balancer ${node.name}: SFTP upload proxy`,
    ...section("global", [
      "log /dev/log local0",
      "log /dev/log local1 notice",
      "chroot /var/lib/haproxy",
      `stats socket ${q(paths.haproxySocket)} mode 660 level admin expose-fd listeners`,
      "stats timeout 30s",
      "user haproxy",
      "group haproxy",
      "daemon",
      "maxconn 4096",
    ]),
    "",
    ...section("defaults", [
      "log global",
      "mode tcp",
      "option tcplog",
      "option dontlognull",
      "option log-health-checks",
      `timeout connect ${q(UPLOAD_CONNECT_TIMEOUT)}`,
      `timeout client ${q(UPLOAD_SESSION_TIMEOUT)}`,
      `timeout server ${q(UPLOAD_SESSION_TIMEOUT)}`,
      `timeout check ${ms(c.timeoutCheckMs)}`,
      // A connect that fails before the check notices goes to another server at once.
      "retries 2",
      "option redispatch 1",
    ]),
    "",
    ...section(`frontend ${q(UPLOAD_FRONTEND)}`, [
      // Wildcard: the floating IPs arrive as extra addresses on the interface at failover.
      `bind ${q(`:${t.upload.port}`)}`,
      `default_backend ${q(UPLOAD_BACKEND)}`,
    ]),
    "",
    ...section(`backend ${q(UPLOAD_BACKEND)}`, [
      // Upload sessions are long and uneven; spread by live sessions, not turns.
      "balance leastconn",
      "option tcp-check",
      "tcp-check expect rstring ^SSH-2\\.0-",
      [
        "default-server",
        `inter ${ms(c.interMs)}`,
        `fastinter ${ms(c.fastinterMs)}`,
        `downinter ${ms(c.downinterMs)}`,
        `fall ${q(c.fall)}`,
        `rise ${q(c.rise)}`,
        // Sessions pinned to a dead server would hang until the 1 h timeout.
        "on-marked-down shutdown-sessions",
      ].join(" "),
      ...uploadServerLines(t),
    ]),
  ];
  return `${lines.join("\n")}\n`;
}
