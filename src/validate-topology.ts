import { cidrContains, parseCidr, parseIpv4 } from "./net.js";
import type { NodeRole, Topology } from "./topology.js";

/** Supported Postgres majors: 9.6–11 render recovery.conf, 12+ standby.signal. */
export const SUPPORTED_PG_VERSIONS: readonly number[] = [9.6, 10, 11, 12, 13, 14, 15, 16, 17];

const SSH_KEY_TYPES = [
  "ssh-ed25519",
  "ssh-rsa",
  "ecdsa-sha2-nistp256",
  "ecdsa-sha2-nistp384",
  "ecdsa-sha2-nistp521",
  "sk-ssh-ed25519@openssh.com",
  "sk-ecdsa-sha2-nistp256@openssh.com",
];

export class TopologyError extends Error {
  constructor(readonly problems: readonly string[]) {
    super(`invalid topology:\n  - ${problems.join("\n  - ")}`);
    this.name = "TopologyError";
  }
}

const show = (value: unknown): string => JSON.stringify(value) ?? String(value);

/** Collects every problem so one run reports them all. */
class Problems {
  readonly list: string[] = [];
  add(field: string, value: unknown, allowed: string): void {
    this.list.push(`${field}: ${show(value)} is not valid; ${allowed}`);
  }
}

/** Safe in every file format we render: no whitespace, quotes, `..` or shell metacharacters. */
export function isSafeAbsolutePath(path: string): boolean {
  return /^\/[A-Za-z0-9._@+\-/]*$/.test(path) && !path.split("/").includes("..") && !path.includes("//");
}

/** The decoded key blob must name the same algorithm as the key's type field. */
export function isSshPublicKey(line: string): boolean {
  const [type, blob] = line.trim().split(/\s+/);
  if (!type || !blob || !SSH_KEY_TYPES.includes(type)) return false;
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(blob)) return false;
  const bytes = Buffer.from(blob, "base64");
  if (bytes.length < 4) return false;
  const length = bytes.readUInt32BE(0);
  return bytes.subarray(4, 4 + length).toString("latin1") === type;
}

const HOSTNAME = /^[a-z][a-z0-9-]{0,30}[a-z0-9]$/;
const IDENTIFIER = /^[a-z_][a-z0-9_]{0,62}$/;
const UNIX_USER = /^[a-z_][a-z0-9_-]{0,31}$/;
const SSM_NAME = /^\/[A-Za-z0-9_.\-/]{1,1000}$/;

function checkIp(p: Problems, field: string, value: string): number | undefined {
  const parsed = parseIpv4(value);
  if (parsed === undefined) p.add(field, value, "expected an IPv4 address such as 10.0.1.5");
  return parsed;
}

function checkPort(p: Problems, field: string, value: number): void {
  if (!Number.isInteger(value) || value < 1 || value > 65535) p.add(field, value, "expected a port 1-65535");
}

function checkPath(p: Problems, field: string, value: string): void {
  if (!isSafeAbsolutePath(value)) {
    p.add(field, value, "expected an absolute path of [A-Za-z0-9._@+-/] without '..' or '//'");
  }
}

function checkCount(p: Problems, t: Topology, role: NodeRole, allowed: (n: number) => boolean, text: string) {
  const count = t.nodes.filter((n) => n.role === role).length;
  if (!allowed(count)) p.add(`nodes (role ${role})`, count, text);
}

/** Throws a TopologyError naming every field that is wrong, with its value and what is allowed. */
export function validateTopology(t: Topology): Topology {
  const p = new Problems();
  if (!HOSTNAME.test(t.environment))
    p.add("environment", t.environment, "expected a lower-case name like staging");
  if (t.backend !== "aws" && t.backend !== "lab") p.add("backend", t.backend, 'expected "aws" or "lab"');
  if (!/^[a-z]{2}-[a-z]+-[0-9]$/.test(t.region))
    p.add("region", t.region, "expected an AWS region like us-east-1");
  if (!/^([a-z0-9-]+\.)+[a-z]{2,}$/.test(t.domain)) p.add("domain", t.domain, "expected a DNS name");
  const vpc = parseCidr(t.vpcCidr);
  if (!vpc) p.add("vpcCidr", t.vpcCidr, "expected an IPv4 CIDR such as 10.40.0.0/16 (host bits zero)");

  const names = new Set<string>();
  const addresses = new Set<string>();
  t.nodes.forEach((node, i) => {
    const f = `nodes[${i}]`;
    if (!HOSTNAME.test(node.name)) p.add(`${f}.name`, node.name, "expected a hostname like lb-a");
    if (names.has(node.name)) p.add(`${f}.name`, node.name, "node names must be unique");
    names.add(node.name);
    if (!["balancer", "app", "db"].includes(node.role))
      p.add(`${f}.role`, node.role, "expected balancer, app or db");
    if (!/^[a-z][a-z0-9]{1,14}$/.test(node.interface))
      p.add(`${f}.interface`, node.interface, "expected a name like ens5");
    if (node.dataVolumeId !== undefined && !/^vol-[0-9a-f]{8,17}$/.test(node.dataVolumeId))
      p.add(`${f}.dataVolumeId`, node.dataVolumeId, "expected an EBS volume id like vol-0123456789abcdef0");
    for (const [field, ip] of [
      [`${f}.privateIp`, node.privateIp],
      ...node.secondaryIps.map((s, j) => [`${f}.secondaryIps[${j}]`, s] as const),
    ] as const) {
      const parsed = checkIp(p, field, ip);
      if (parsed !== undefined && vpc && !cidrContains(vpc, parsed))
        p.add(field, ip, `expected an address inside vpcCidr ${t.vpcCidr}`);
      if (addresses.has(ip)) p.add(field, ip, "private addresses must be unique");
      addresses.add(ip);
    }
    const wantSecondaries = node.role === "balancer" ? t.floatingIps.length : 0;
    if (node.secondaryIps.length !== wantSecondaries) {
      p.add(
        `${f}.secondaryIps`,
        node.secondaryIps,
        `expected ${wantSecondaries} (one per floating IP on balancers, none elsewhere)`,
      );
    }
  });
  checkCount(p, t, "balancer", (n) => n === 2, "expected exactly 2 balancers");
  checkCount(p, t, "app", (n) => n >= 2 && n <= 16, "expected 2 to 16 app servers");
  checkCount(p, t, "db", (n) => n === 2, "expected exactly 2 database nodes");
  for (const role of ["balancer", "db"] as const) {
    const azs = t.nodes.filter((n) => n.role === role).map((n) => n.az);
    if (new Set(azs).size !== azs.length)
      p.add(`nodes (role ${role}).az`, azs, "the pair must sit in two different AZs");
  }

  if (t.floatingIps.length < 1 || t.floatingIps.length > 8)
    p.add("floatingIps", t.floatingIps.length, "expected 1 to 8 floating IPs");
  const fips = new Set<string>();
  t.floatingIps.forEach((fip, i) => {
    const f = `floatingIps[${i}]`;
    checkIp(p, `${f}.address`, fip.address);
    if (fips.has(fip.address)) p.add(`${f}.address`, fip.address, "floating IPs must be unique");
    fips.add(fip.address);
    if (!/^[A-Za-z0-9-]{1,64}$/.test(fip.allocationId))
      p.add(`${f}.allocationId`, fip.allocationId, "expected an id like eipalloc-0123");
    const home = t.nodes.find((n) => n.name === fip.home);
    if (home?.role !== "balancer")
      p.add(
        `${f}.home`,
        fip.home,
        `expected a balancer name (${t.nodes
          .filter((n) => n.role === "balancer")
          .map((n) => n.name)
          .join(", ")})`,
      );
  });

  for (const key of ["dbWriter", "storage"] as const) {
    const value = t.overlay[key];
    const parsed = checkIp(p, `overlay.${key}`, value);
    if (parsed !== undefined && vpc && cidrContains(vpc, parsed)) {
      p.add(
        `overlay.${key}`,
        value,
        `expected an address OUTSIDE vpcCidr ${t.vpcCidr} (overlay IPs are routed, not assigned)`,
      );
    }
  }
  if (t.overlay.dbWriter === t.overlay.storage)
    p.add("overlay.storage", t.overlay.storage, "must differ from overlay.dbWriter");
  t.overlay.routeTableIds.forEach((id, i) => {
    if (!/^[A-Za-z0-9-]{1,64}$/.test(id))
      p.add(`overlay.routeTableIds[${i}]`, id, "expected an id like rtb-0123");
  });

  const pgc = t.postgres;
  if (!SUPPORTED_PG_VERSIONS.includes(pgc.version))
    p.add("postgres.version", pgc.version, `expected one of ${SUPPORTED_PG_VERSIONS.join(", ")}`);
  checkPort(p, "postgres.port", pgc.port);
  for (const key of ["database", "appUser", "replicationUser", "slotName"] as const) {
    if (!IDENTIFIER.test(pgc[key]))
      p.add(`postgres.${key}`, pgc[key], "expected a lower-case SQL identifier [a-z_][a-z0-9_]*");
  }
  if (!Number.isInteger(pgc.walKeepMb) || pgc.walKeepMb < 16)
    p.add("postgres.walKeepMb", pgc.walKeepMb, "expected a whole number of MB >= 16");
  if (!Number.isInteger(pgc.maxSlotWalKeepMb) || pgc.maxSlotWalKeepMb < pgc.walKeepMb)
    p.add(
      "postgres.maxSlotWalKeepMb",
      pgc.maxSlotWalKeepMb,
      `expected a whole number of MB >= postgres.walKeepMb (${pgc.walKeepMb})`,
    );
  checkPath(p, "postgres.binDir", pgc.binDir);

  const hb = t.heartbeat;
  checkPort(p, "heartbeat.udpPort", hb.udpPort);
  for (const key of ["keepaliveMs", "warntimeMs", "deadtimeMs", "initdeadMs"] as const) {
    if (!Number.isInteger(hb[key]) || hb[key] < 100)
      p.add(`heartbeat.${key}`, hb[key], "expected whole milliseconds >= 100");
  }
  if (hb.deadtimeMs <= 2 * hb.keepaliveMs) {
    p.add(
      "heartbeat.deadtimeMs",
      hb.deadtimeMs,
      `must be greater than 2 x keepaliveMs (${2 * hb.keepaliveMs}) or one lost packet declares the peer dead`,
    );
  }
  if (hb.warntimeMs <= hb.keepaliveMs || hb.warntimeMs >= hb.deadtimeMs) {
    p.add(
      "heartbeat.warntimeMs",
      hb.warntimeMs,
      `expected between keepaliveMs (${hb.keepaliveMs}) and deadtimeMs (${hb.deadtimeMs})`,
    );
  }
  if (hb.initdeadMs < 2 * hb.deadtimeMs)
    p.add("heartbeat.initdeadMs", hb.initdeadMs, `expected at least 2 x deadtimeMs (${2 * hb.deadtimeMs})`);

  const up = t.upload;
  checkPort(p, "upload.port", up.port);
  checkPort(p, "upload.backendPort", up.backendPort);
  if (up.users.length === 0)
    p.add("upload.users", up.users, "expected at least one upload user (name + SSH public key)");
  const userNames = new Set<string>();
  const uids = new Set<number>();
  up.users.forEach((user, i) => {
    if (!UNIX_USER.test(user.name) || user.name === "root")
      p.add(`upload.users[${i}].name`, user.name, "expected a Unix user name (not root)");
    if (userNames.has(user.name))
      p.add(`upload.users[${i}].name`, user.name, "upload user names must be unique");
    userNames.add(user.name);
    if (!Number.isInteger(user.uid) || user.uid < 2000 || user.uid > 59999 || uids.has(user.uid)) {
      p.add(`upload.users[${i}].uid`, user.uid, "expected a unique uid from 2000 to 59999");
    }
    uids.add(user.uid);
    if (!isSshPublicKey(user.publicKey)) {
      p.add(
        `upload.users[${i}].publicKey`,
        user.publicKey,
        `expected an OpenSSH public key line (${SSH_KEY_TYPES.slice(0, 3).join(", ")}, ...)`,
      );
    }
  });
  if (!Number.isInteger(up.maxFileBytes) || up.maxFileBytes < 1)
    p.add("upload.maxFileBytes", up.maxFileBytes, "expected a positive whole number");

  if (!["fcgid", "wsgi", "gunicorn"].includes(t.app.runtime))
    p.add("app.runtime", t.app.runtime, 'expected "fcgid", "wsgi" or "gunicorn"');
  checkPort(p, "app.httpPort", t.app.httpPort);
  if (!Number.isInteger(t.app.maxProcesses) || t.app.maxProcesses < 1 || t.app.maxProcesses > 256)
    p.add("app.maxProcesses", t.app.maxProcesses, "expected 1-256");
  if (
    !Number.isInteger(t.app.requestTimeoutSeconds) ||
    t.app.requestTimeoutSeconds < 1 ||
    t.app.requestTimeoutSeconds > 600
  ) {
    p.add("app.requestTimeoutSeconds", t.app.requestTimeoutSeconds, "expected 1-600");
  }

  checkPath(p, "storage.device", t.storage.device);
  checkPath(p, "storage.volumeMount", t.storage.volumeMount);
  checkPath(p, "storage.packageRoot", t.storage.packageRoot);
  checkPort(p, "storage.drbdPort", t.storage.drbdPort);
  if (!Number.isInteger(t.storage.drbdMinor) || t.storage.drbdMinor < 0 || t.storage.drbdMinor > 255)
    p.add("storage.drbdMinor", t.storage.drbdMinor, "expected 0-255");
  checkPath(p, "tls.certificatePath", t.tls.certificatePath);
  checkPath(p, "tls.keyPath", t.tls.keyPath);

  for (const [key, ref] of Object.entries(t.secrets)) {
    if (!SSM_NAME.test(ref.parameter) || ref.parameter.split("/").includes("..")) {
      p.add(
        `secrets.${key}.parameter`,
        ref.parameter,
        "expected an SSM parameter name like /pypi/prod/postgres/app-password",
      );
    }
  }
  const bundleOk =
    t.backend === "aws"
      ? /^s3:\/\/[a-z0-9.-]{3,63}(\/[A-Za-z0-9._-]+)*$/.test(t.bundleLocation)
      : isSafeAbsolutePath(t.bundleLocation);
  if (!bundleOk)
    p.add(
      "bundleLocation",
      t.bundleLocation,
      t.backend === "aws" ? "expected s3://bucket/prefix" : "expected an absolute directory",
    );

  if (p.list.length > 0) throw new TopologyError(p.list);
  return t;
}
