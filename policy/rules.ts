/// <reference types="node" />
/**
 * The pack's rules as pure functions: resource type token + input properties (+ the few facts
 * a rule needs about related resources) -> violation messages. No Pulumi imports, so the unit
 * tests and the stack tests run them directly; policies.ts wraps them for CrossGuard.
 * Messages never quote a secret value: they say what was found and where.
 */
// The pack runs on Node (ts-node under the CLI); gzip is the one platform API it needs.
import { gunzipSync } from "node:zlib";

export type Props = Readonly<Record<string, unknown>>;

export const T = {
  instance: "aws:ec2/instance:Instance",
  spotInstanceRequest: "aws:ec2/spotInstanceRequest:SpotInstanceRequest",
  launchConfiguration: "aws:ec2/launchConfiguration:LaunchConfiguration",
  launchTemplate: "aws:ec2/launchTemplate:LaunchTemplate",
  spotFleetRequest: "aws:ec2/spotFleetRequest:SpotFleetRequest",
  networkInterface: "aws:ec2/networkInterface:NetworkInterface",
  networkInterfaceAttachment: "aws:ec2/networkInterfaceAttachment:NetworkInterfaceAttachment",
  networkInterfaceSgAttachment:
    "aws:ec2/networkInterfaceSecurityGroupAttachment:NetworkInterfaceSecurityGroupAttachment",
  volume: "aws:ebs/volume:Volume",
  subnet: "aws:ec2/subnet:Subnet",
  eip: "aws:ec2/eip:Eip",
  eipAssociation: "aws:ec2/eipAssociation:EipAssociation",
  securityGroup: "aws:ec2/securityGroup:SecurityGroup",
  securityGroupRule: "aws:ec2/securityGroupRule:SecurityGroupRule",
  ingressRule: "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
  prefixList: "aws:ec2/managedPrefixList:ManagedPrefixList",
  prefixListEntry: "aws:ec2/managedPrefixListEntry:ManagedPrefixListEntry",
  bucket: "aws:s3/bucket:Bucket",
  bucketV2: "aws:s3/bucketV2:BucketV2",
  bucketPolicy: "aws:s3/bucketPolicy:BucketPolicy",
  publicAccessBlock: "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock",
  bucketAcl: "aws:s3/bucketAcl:BucketAcl",
  bucketAclV2: "aws:s3/bucketAclV2:BucketAclV2",
  bucketObject: "aws:s3/bucketObject:BucketObject",
  bucketObjectV2: "aws:s3/bucketObjectv2:BucketObjectv2",
  sse: "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
  sseV2: "aws:s3/bucketServerSideEncryptionConfigurationV2:BucketServerSideEncryptionConfigurationV2",
  bucketVersioning: "aws:s3/bucketVersioning:BucketVersioning",
  bucketVersioningV2: "aws:s3/bucketVersioningV2:BucketVersioningV2",
  metricAlarm: "aws:cloudwatch/metricAlarm:MetricAlarm",
  compositeAlarm: "aws:cloudwatch/compositeAlarm:CompositeAlarm",
  distribution: "aws:cloudfront/distribution:Distribution",
} as const;

/** Every way to launch an instance with its own settings; all of them get the instance rules. */
export const LAUNCHERS: readonly string[] = [
  T.instance,
  T.spotInstanceRequest,
  T.launchConfiguration,
  T.launchTemplate,
];
/** Launchers shaped like aws.ec2.Instance (rootBlockDevice, associatePublicIpAddress, userData). */
const INSTANCE_SHAPED: readonly string[] = [T.instance, T.spotInstanceRequest, T.launchConfiguration];

const rec = (v: unknown): Props =>
  typeof v === "object" && v !== null && !Array.isArray(v) ? (v as Props) : {};
const list = (v: unknown): Props[] => (Array.isArray(v) ? v.map(rec) : []);
const strings = (v: unknown): string[] => (Array.isArray(v) ? v.filter((x) => typeof x === "string") : []);
/** Provider inputs may carry booleans as strings ("true") after serialization. */
const isTrue = (v: unknown): boolean => v === true || v === "true";

// IMDSv2 ---------------------------------------------------------------------------------------

/** Every launcher must require session tokens (IMDSv2): SSRF cannot read the role's keys. */
export function imdsv2Required(type: string, props: Props): string[] {
  if (type === T.spotFleetRequest)
    return list(props.launchSpecifications).length > 0
      ? ["launchSpecifications cannot require IMDSv2; launch from a launch template (launchTemplateConfigs)"]
      : [];
  if (!LAUNCHERS.includes(type)) return [];
  const tokens = rec(props.metadataOptions).httpTokens;
  return tokens === "required"
    ? []
    : [`metadataOptions.httpTokens is ${JSON.stringify(tokens ?? null)}; IMDSv2 requires "required"`];
}

// Encryption -----------------------------------------------------------------------------------

/** Root and data volumes are encrypted: every launcher's root and EBS block devices, and volumes. */
export function encryptedVolumes(type: string, props: Props): string[] {
  const out: string[] = [];
  if (INSTANCE_SHAPED.includes(type)) {
    if (!isTrue(rec(props.rootBlockDevice).encrypted))
      out.push("rootBlockDevice.encrypted is not true (an absent rootBlockDevice is unencrypted by default)");
    list(props.ebsBlockDevices).forEach((d, i) => {
      if (!isTrue(d.encrypted)) out.push(`ebsBlockDevices[${i}] (${String(d.deviceName)}) is not encrypted`);
    });
  } else if (type === T.launchTemplate) {
    const mappings = list(props.blockDeviceMappings);
    // Without a mapping the root volume is the AMI's snapshot as is: unencrypted for public AMIs.
    if (!mappings.some((m) => m.ebs !== undefined))
      out.push("has no EBS blockDeviceMappings (the root volume would be unencrypted by default)");
    mappings.forEach((m, i) => {
      if (m.ebs !== undefined && !isTrue(rec(m.ebs).encrypted))
        out.push(`blockDeviceMappings[${i}].ebs.encrypted is not true`);
    });
  } else if (type === T.volume && !isTrue(props.encrypted)) {
    out.push("encrypted is not true");
  }
  return out;
}

// CIDR ranges ----------------------------------------------------------------------------------

/** An inclusive address interval; bigint so IPv4 and IPv6 share one helper. */
export type Span = readonly [bigint, bigint];

export interface Cidr {
  readonly family: 4 | 6;
  readonly span: Span;
}

function ipv4Value(text: string): bigint | undefined {
  const parts = text.split(".");
  if (parts.length !== 4 || !parts.every((p) => /^\d{1,3}$/.test(p) && Number(p) <= 255)) return undefined;
  return parts.reduce((v, p) => (v << 8n) | BigInt(p), 0n);
}

function ipv6Value(text: string): bigint | undefined {
  // A dotted IPv4 tail (::ffff:192.0.2.1) is the last two 16-bit words.
  const dotted = /^(.*:)(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  const v4 = dotted ? ipv4Value(dotted[2] ?? "") : undefined;
  if (dotted && v4 === undefined) return undefined;
  const s =
    dotted && v4 !== undefined
      ? `${dotted[1]}${(v4 >> 16n).toString(16)}:${(v4 & 0xffffn).toString(16)}`
      : text;
  const halves = s.split("::");
  if (halves.length > 2) return undefined;
  const words = (h: string | undefined) => (h ? h.split(":") : []);
  const head = words(halves[0]);
  const tail = words(halves[1]);
  if (![...head, ...tail].every((w) => /^[0-9a-f]{1,4}$/i.test(w))) return undefined;
  const given = head.length + tail.length;
  if (halves.length === 1 ? given !== 8 : given > 7) return undefined;
  return [...head, ...Array<string>(8 - given).fill("0"), ...tail].reduce(
    (v, w) => (v << 16n) | BigInt(`0x${w}`),
    0n,
  );
}

/** `a.b.c.d/n` or an IPv6 prefix, host bits masked off as EC2 does; undefined if malformed. */
export function parseCidr(text: string): Cidr | undefined {
  const [address = "", prefix, extra] = text.trim().split("/");
  if (extra !== undefined) return undefined;
  const family = address.includes(":") ? 6 : 4;
  const width = family === 4 ? 32 : 128;
  const value = family === 4 ? ipv4Value(address) : ipv6Value(address);
  const bits = prefix === undefined ? width : /^\d{1,3}$/.test(prefix) ? Number(prefix) : -1;
  if (value === undefined || bits < 0 || bits > width) return undefined;
  const size = 1n << BigInt(width - bits);
  const base = (value / size) * size;
  return { family, span: [base, base + size - 1n] };
}

/** The union of intervals as sorted, disjoint, non-adjacent intervals. */
export function mergeSpans(spans: readonly Span[]): Span[] {
  const sorted = [...spans].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  const out: [bigint, bigint][] = [];
  for (const [lo, hi] of sorted) {
    const last = out[out.length - 1];
    if (!last || lo > last[1] + 1n) out.push([lo, hi]);
    else if (hi > last[1]) last[1] = hi;
  }
  return out;
}

const spansOf = (cidrs: readonly string[]): Span[] =>
  cidrs.map(parseCidr).flatMap((c) => (c ? [c.span] : []));

/** Addresses of merged `a` that fall in merged `b`. */
function overlap(a: readonly Span[], b: readonly Span[]): bigint {
  let n = 0n;
  for (const [alo, ahi] of a)
    for (const [blo, bhi] of b) {
      // bigint has no Math.min/max.
      const [lo] = [alo, blo].sort((x, y) => (x < y ? 1 : -1));
      const [hi] = [ahi, bhi].sort((x, y) => (x < y ? -1 : 1));
      if (lo !== undefined && hi !== undefined && lo <= hi) n += hi - lo + 1n;
    }
  return n;
}

/** IPv4 space that is not the internet: this-network, RFC 1918, CGNAT, loopback, link-local, multicast/reserved. */
const NON_PUBLIC_V4 = mergeSpans(
  spansOf([
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "224.0.0.0/3",
  ]),
);
const PUBLIC_V4: Span[] = (() => {
  const out: Span[] = [];
  let next = 0n;
  for (const [lo, hi] of NON_PUBLIC_V4) {
    if (lo > next) out.push([next, lo - 1n]);
    next = hi + 1n;
  }
  if (next <= 0xffffffffn) out.push([next, 0xffffffffn]);
  return out;
})();
/** Global unicast: the only IPv6 space routed on the internet. */
const PUBLIC_V6 = spansOf(["2000::/3"]);

/**
 * "Open to the internet" means the union of the sources holds at least a /8's worth of public
 * IPv4 addresses (2^24) or a /32's worth of global IPv6 ones (2^96, an ISP's whole allocation).
 * Judged on the union, so 0.0.0.0/1 + 128.0.0.0/1, or 256 scattered /16s, count as the world;
 * private and reserved space never counts. No partner or office range this stack admits is
 * anywhere near that size.
 */
export const INTERNET_V4_ADDRESSES = 1n << 24n;
export const INTERNET_V6_ADDRESSES = 1n << 96n;

/** Public addresses the union of `cidrs` holds, per family. */
export function publicAddresses(cidrs: readonly string[]): { readonly v4: bigint; readonly v6: bigint } {
  const parsed = cidrs.map(parseCidr).filter((c): c is Cidr => c !== undefined);
  const union = (family: 4 | 6) => mergeSpans(parsed.filter((c) => c.family === family).map((c) => c.span));
  return { v4: overlap(union(4), PUBLIC_V4), v6: overlap(union(6), PUBLIC_V6) };
}

const hasPublic = (cidrs: readonly string[]): boolean => {
  const n = publicAddresses(cidrs);
  return n.v4 > 0n || n.v6 > 0n;
};

export function coversInternet(cidrs: readonly string[]): boolean {
  const n = publicAddresses(cidrs);
  return n.v4 >= INTERNET_V4_ADDRESSES || n.v6 >= INTERNET_V6_ADDRESSES;
}

// Security-group ingress -----------------------------------------------------------------------

/**
 * Ports the internet may reach, and only on balancer nodes: HTTP (redirect) and HTTPS, and 22,
 * which on the balancers is HAProxy in front of the SFTP upload service (chrooted, key-only
 * sshd on the app servers), not an admin shell. Admin access is SSM Session Manager.
 */
export const WORLD_TCP_PORTS: readonly number[] = [80, 443, 22];

/** The role tag the Node component puts on every instance and interface. */
export const ROLE_TAG = "pypi:role";

/** One ingress permission in a common shape, whichever resource type carried it. */
export interface Ingress {
  /** Where it came from, for messages: a rule resource's name or `<group>.ingress[i]`. */
  readonly where: string;
  readonly protocol: string;
  readonly fromPort: number | undefined;
  readonly toPort: number | undefined;
  /** CIDR sources, IPv4 and IPv6 (group references are not internet sources). */
  readonly sources: readonly string[];
  /** Managed prefix list ids; the pack adds their entries' CIDRs to `sources` where it sees them. */
  readonly prefixListIds: readonly string[];
}

const num = (v: unknown): number | undefined => {
  const n = typeof v === "string" && v.trim() !== "" ? Number(v) : v;
  return typeof n === "number" && Number.isFinite(n) ? n : undefined;
};

/** Protocol names and numbers as EC2 accepts them; "-1"/"all" is every protocol. */
const normalizeProtocol = (p: unknown): string => {
  const s = String(p ?? "").toLowerCase();
  const names: Record<string, string> = { "6": "tcp", "17": "udp", "1": "icmp", "58": "icmpv6", all: "-1" };
  return names[s] ?? s;
};

/** The ingress permissions a group, a SecurityGroupRule or a SecurityGroupIngressRule carries. */
export function ingressesOf(type: string, props: Props, where = "rule"): Ingress[] {
  if (type === T.ingressRule) {
    return [
      {
        where,
        protocol: normalizeProtocol(props.ipProtocol),
        fromPort: num(props.fromPort),
        toPort: num(props.toPort),
        sources: [props.cidrIpv4, props.cidrIpv6].filter((c): c is string => typeof c === "string"),
        prefixListIds: typeof props.prefixListId === "string" ? [props.prefixListId] : [],
      },
    ];
  }
  if (type === T.securityGroupRule) {
    if (props.type !== "ingress") return [];
    return [
      {
        where,
        protocol: normalizeProtocol(props.protocol),
        fromPort: num(props.fromPort),
        toPort: num(props.toPort),
        sources: [...strings(props.cidrBlocks), ...strings(props.ipv6CidrBlocks)],
        prefixListIds: strings(props.prefixListIds),
      },
    ];
  }
  if (type === T.securityGroup) {
    return list(props.ingress).map((r, i) => ({
      where: `${where}.ingress[${i}]`,
      protocol: normalizeProtocol(r.protocol),
      fromPort: num(r.fromPort),
      toPort: num(r.toPort),
      sources: [...strings(r.cidrBlocks), ...strings(r.ipv6CidrBlocks)],
      prefixListIds: strings(r.prefixListIds),
    }));
  }
  return [];
}

/** A protocol (and for TCP/UDP a port range) the internet reaches, and through which permissions. */
export interface Exposure {
  /** "tcp", "udp", another protocol, or "-1": every protocol not reported on its own. */
  readonly protocol: string;
  readonly ports?: readonly [number, number];
  readonly via: readonly Ingress[];
}

const PORTED = ["tcp", "udp"];

/**
 * What the internet reaches through a set of permissions (all groups of one node): for every
 * protocol and port, the union of the CIDRs of every permission that covers it. TCP ranges are
 * split at the world ports so each of those is judged on its own.
 */
export function internetExposure(ingress: readonly Ingress[]): Exposure[] {
  const candidates = ingress.filter((r) => hasPublic(r.sources));
  const out: Exposure[] = [];
  const protocols = new Set(["tcp", "udp", ...candidates.map((r) => r.protocol)]);
  for (const protocol of protocols) {
    const covering = candidates.filter((r) => r.protocol === protocol || r.protocol === "-1");
    if (covering.length === 0) continue;
    if (!PORTED.includes(protocol)) {
      // ICMP type/code and "all" carry no ports: the whole protocol is one unit.
      if (coversInternet(covering.flatMap((r) => r.sources))) out.push({ protocol, via: covering });
      continue;
    }
    const range = (r: Ingress): [number, number] =>
      r.protocol === "-1" || r.fromPort === undefined || r.fromPort < 0
        ? [0, 65535]
        : [Math.max(0, r.fromPort), Math.min(65535, r.toPort ?? r.fromPort)];
    const cuts = new Set([0, 65536]);
    for (const r of covering) {
      const [lo, hi] = range(r);
      cuts.add(lo).add(hi + 1);
    }
    if (protocol === "tcp") for (const p of WORLD_TCP_PORTS) cuts.add(p).add(p + 1);
    const sorted = [...cuts].filter((c) => c >= 0 && c <= 65536).sort((a, b) => a - b);
    for (let i = 0; i + 1 < sorted.length; i++) {
      const lo = sorted[i] as number;
      const hi = (sorted[i + 1] as number) - 1;
      const via = covering.filter((r) => {
        const [a, b] = range(r);
        return a <= lo && hi <= b;
      });
      if (via.length > 0 && coversInternet(via.flatMap((r) => r.sources)))
        out.push({ protocol, ports: [lo, hi], via });
    }
  }
  return out;
}

const describeExposure = (e: Pick<Exposure, "protocol" | "ports">): string =>
  e.protocol === "-1"
    ? "every other protocol"
    : e.ports === undefined
      ? e.protocol
      : `${e.protocol}/${e.ports[0] === e.ports[1] ? e.ports[0] : `${e.ports[0]}-${e.ports[1]}`}`;

/**
 * Internet ingress a node may have, judged on everything attached to it: only a node tagged
 * `pypi:role=balancer` takes any, and only on TCP 80, 443 and 22; app and db nodes, untagged
 * nodes and groups attached to nothing take none. `role` is the node's `pypi:role` tag.
 */
export function noInternetIngress(role: string | undefined, ingress: readonly Ingress[]): string[] {
  const balancer = role === "balancer";
  const allowed = (e: Exposure) =>
    balancer &&
    e.protocol === "tcp" &&
    e.ports !== undefined &&
    e.ports[0] === e.ports[1] &&
    WORLD_TCP_PORTS.includes(e.ports[0]);
  // Adjacent ranges of one protocol read as one finding.
  const merged: { protocol: string; ports?: [number, number]; via: Set<Ingress> }[] = [];
  for (const e of internetExposure(ingress).filter((x) => !allowed(x))) {
    const last = merged[merged.length - 1];
    if (last?.protocol === e.protocol && last.ports && e.ports && last.ports[1] + 1 === e.ports[0]) {
      last.ports[1] = e.ports[1];
      for (const v of e.via) last.via.add(v);
    } else
      merged.push({
        protocol: e.protocol,
        ports: e.ports && [e.ports[0], e.ports[1]],
        via: new Set(e.via),
      });
  }
  const why = balancer
    ? `a balancer takes only TCP ${WORLD_TCP_PORTS.join(", ")} from the internet`
    : `only balancers (${ROLE_TAG}=balancer) take internet ingress; this has ${role ? `${ROLE_TAG}=${role}` : `no ${ROLE_TAG} tag`}`;
  return merged.map((m) => {
    const via = [...m.via].map((r) => `${r.where} (${r.sources.filter((s) => hasPublic([s])).join(", ")})`);
    return `${describeExposure(m)} is open to the internet via ${via.join(", ")}: ${why}`;
  });
}

// Public addresses -----------------------------------------------------------------------------

/**
 * Public addresses come only from EIPs: the floating IPs (moved by Heartbeat), the balancers'
 * egress addresses and the NAT gateways'. No launcher asks for one, and no subnet hands them
 * out: the public subnets host the balancers (EIPs) and the NAT gateways (EIPs), so nothing
 * there needs a launch-time address.
 */
export function noPublicIps(type: string, props: Props): string[] {
  if (INSTANCE_SHAPED.includes(type) && isTrue(props.associatePublicIpAddress))
    return ["associatePublicIpAddress is true; public addresses come only from the floating IPs"];
  if (type === T.launchTemplate)
    return list(props.networkInterfaces)
      .map((n, i) => (isTrue(n.associatePublicIpAddress) ? i : -1))
      .filter((i) => i >= 0)
      .map((i) => `networkInterfaces[${i}].associatePublicIpAddress is true`);
  if (type === T.subnet && isTrue(props.mapPublicIpOnLaunch))
    return ["mapPublicIpOnLaunch is true; instances get public addresses only from EIPs"];
  return [];
}

// EIP associations -----------------------------------------------------------------------------

/**
 * Heartbeat owns the floating IPs' associations; a managed one would undo every failover on `up`.
 * The one exception is a balancer's egress address (tag `pypi:egress`, no `pypi:home`): bound
 * inline to an interface and an explicit private IP (the node's primary), which Heartbeat never
 * moves.
 */
export function noEipAssociation(type: string, props: Props): string[] {
  if (type === T.eipAssociation)
    return ["EipAssociation: Heartbeat (pypi-node fip) associates the floating IPs, not Pulumi"];
  if (type === T.eip) {
    const given = (k: string) => props[k] !== undefined && props[k] !== null && props[k] !== "";
    const set = ["instance", "networkInterface", "associateWithPrivateIp"].filter(given);
    const tags = rec(props.tags);
    const egress =
      typeof tags["pypi:egress"] === "string" &&
      tags["pypi:home"] === undefined &&
      !given("instance") &&
      given("networkInterface") &&
      given("associateWithPrivateIp");
    if (set.length > 0 && !egress)
      return [`Eip sets ${set.join(", ")}: an inline association; Heartbeat owns the associations`];
  }
  return [];
}

// Buckets --------------------------------------------------------------------------------------

const PUBLIC_ACLS = ["public-read", "public-read-write", "authenticated-read"];
const PUBLIC_GRANTEES = /acs\.amazonaws\.com\/groups\/global\/(AllUsers|AuthenticatedUsers)/;

/** Per resource: no public canned ACL or grant, and a public access block blocks everything. */
export function bucketPrivate(type: string, props: Props): string[] {
  const out: string[] = [];
  if (type === T.publicAccessBlock) {
    for (const k of ["blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets"])
      if (!isTrue(props[k])) out.push(`${k} is not true`);
  }
  if (
    [T.bucket, T.bucketV2, T.bucketAcl, T.bucketAclV2, T.bucketObject, T.bucketObjectV2].includes(
      type as never,
    )
  ) {
    if (typeof props.acl === "string" && PUBLIC_ACLS.includes(props.acl))
      out.push(`acl is ${JSON.stringify(props.acl)}`);
    if (PUBLIC_GRANTEES.test(JSON.stringify(props.grants ?? props.accessControlPolicy ?? null)))
      out.push("grants access to AllUsers or AuthenticatedUsers");
  }
  return out;
}

/**
 * Condition keys that pin a request to our network, accounts or AWS services, the ones S3's own
 * "is this policy public" test accepts. aws:SourceIp restricts only if its ranges are not the
 * internet.
 */
const RESTRICTING_KEYS = new Set(
  [
    "aws:SourceVpce",
    "aws:SourceVpc",
    "aws:SourceIp",
    "aws:SourceArn",
    "aws:SourceAccount",
    "aws:SourceOwner",
    "aws:SourceOrgID",
    "aws:PrincipalAccount",
    "aws:PrincipalArn",
    "aws:PrincipalOrgID",
    "aws:userid",
    "s3:DataAccessPointArn",
    "s3:DataAccessPointAccount",
  ].map((k) => k.toLowerCase()),
);
/** Positive matches only: negated operators (StringNotEquals...) admit everyone else. */
const RESTRICTING_OPERATORS =
  /^(ForAnyValue:)?(StringEquals(IgnoreCase)?|StringLike|ArnEquals|ArnLike|IpAddress)$/i;

const wildcardOnly = (v: string) => /^[*?]*$/.test(v);
/** A value that names nothing in particular: empty, all wildcards, or an ARN with a wildcard account. */
const loose = (v: string) => wildcardOnly(v) || /^arn:[^:]*:[^:]*:[^:]*:[^:]*[*?]/.test(v);

function restrictedByCondition(condition: unknown): boolean {
  return Object.entries(rec(condition)).some(
    ([operator, tests]) =>
      RESTRICTING_OPERATORS.test(operator) &&
      Object.entries(rec(tests)).some(([key, value]) => {
        const values = (Array.isArray(value) ? value : [value]).map(String);
        if (!RESTRICTING_KEYS.has(key.toLowerCase()) || values.length === 0 || values.some(loose))
          return false;
        return key.toLowerCase() !== "aws:sourceip" || !coversInternet(values);
      }),
  );
}

/** `"*"`, `{"AWS": "*"}`, `{"AWS": ["*"]}`, a wildcard account, or any principal key holding "*". */
function publicPrincipal(principal: unknown): boolean {
  if (principal === undefined) return false;
  const values = typeof principal === "string" ? [principal] : Object.values(rec(principal)).flat();
  return values.some((v) => typeof v === "string" && (wildcardOnly(v) || /^arn:[^:]*:iam::[*?]/.test(v)));
}

/** A policy document from a JSON string or an object; undefined if it does not parse. */
function policyDocument(policy: unknown): Props | undefined {
  if (typeof policy !== "string") return rec(policy);
  try {
    return rec(JSON.parse(policy));
  } catch {
    return undefined;
  }
}

/**
 * No bucket policy grants the public: an Allow to `*` (or via NotPrincipal) must carry a
 * condition that pins it (VPC endpoint, accounts/org, source ARN/account, non-internet IPs).
 * Deny statements with `*` are how TLS-only policies are written and always pass.
 */
export function bucketPolicyPrivate(type: string, props: Props): string[] {
  if (type !== T.bucketPolicy && type !== T.bucket && type !== T.bucketV2) return [];
  if (props.policy === undefined || props.policy === null || props.policy === "") return [];
  const doc = policyDocument(props.policy);
  if (!doc) return ["policy is not valid JSON; it cannot be checked"];
  const statements = Array.isArray(doc.Statement) ? list(doc.Statement) : [rec(doc.Statement)];
  return statements.flatMap((s, i) => {
    if (String(s.Effect).toLowerCase() !== "allow") return [];
    const who =
      s.NotPrincipal !== undefined ? "NotPrincipal" : publicPrincipal(s.Principal) ? "Principal" : "";
    if (!who || restrictedByCondition(s.Condition)) return [];
    const sid = typeof s.Sid === "string" ? ` (${s.Sid})` : "";
    return [
      `policy Statement[${i}]${sid} allows the public (${who}) without a restricting Condition (e.g. aws:SourceVpce, aws:PrincipalOrgID)`,
    ];
  });
}

/** A bucket and the companion resources that point at it (by their `bucket` input). */
export interface BucketFacts {
  readonly props: Props;
  /** Types of the resources whose `bucket` input is this bucket, with their inputs. */
  readonly companions: readonly { readonly type: string; readonly props: Props }[];
}

/** Per bucket: a public access block that blocks everything, and default encryption. */
export function bucketHardened(bucket: BucketFacts): string[] {
  const out: string[] = [];
  const blocks = bucket.companions.filter((c) => c.type === T.publicAccessBlock);
  if (blocks.length === 0) out.push("has no BucketPublicAccessBlock");
  for (const b of blocks)
    out.push(...bucketPrivate(T.publicAccessBlock, b.props).map((m) => `access block: ${m}`));
  const sse = bucket.companions.filter((c) => c.type === T.sse || c.type === T.sseV2);
  const algorithms = [
    ...sse.flatMap((c) => list(c.props.rules)),
    ...list(rec(rec(bucket.props.serverSideEncryptionConfiguration).rule)),
    ...list(rec(bucket.props.serverSideEncryptionConfiguration).rules),
  ].map((r) => rec(r.applyServerSideEncryptionByDefault).sseAlgorithm);
  if (!algorithms.some((a) => a === "AES256" || a === "aws:kms" || a === "aws:kms:dsse"))
    out.push("has no server-side encryption configuration (AES256 or aws:kms)");
  return out;
}

/** `pypi-<env>-backups-…` (pgBackRest's repository) and `pypi-<env>-files-…` (the package file copies). */
export const BACKUP_BUCKET_NAME = /^pypi-[a-z0-9-]+-(backups|files)-/;

/** Whether a bucket's name or name prefix makes it a backup bucket. */
export const isBackupBucket = (props: Props): boolean =>
  [props.bucket, props.bucketPrefix].some((n) => typeof n === "string" && BACKUP_BUCKET_NAME.test(n));

/**
 * A backup bucket keeps every version: a delete must leave the old version behind. Versioning
 * is Enabled by a BucketVersioning (or the deprecated inline block), and nothing suspends it.
 */
export function backupBucketVersioned(bucket: BucketFacts): string[] {
  if (!isBackupBucket(bucket.props)) return [];
  const inline = rec(bucket.props.versioning);
  const statuses = [
    ...bucket.companions
      .filter((c) => c.type === T.bucketVersioning || c.type === T.bucketVersioningV2)
      .map((c) => rec(c.props.versioningConfiguration).status),
    ...(inline.enabled === undefined ? [] : [isTrue(inline.enabled) ? "Enabled" : "Suspended"]),
  ];
  if (statuses.length === 0)
    return ["is a backup bucket without versioning; add a BucketVersioning with status Enabled"];
  return statuses
    .filter((st) => st !== "Enabled")
    .map(
      (st) => `is a backup bucket with versioning status ${JSON.stringify(st ?? null)}; it must be "Enabled"`,
    );
}

// Secrets in user data -------------------------------------------------------------------------

/** Strict base64 to bytes (Buffer's decoder skips junk, which would hide a plain-text value). */
export function decodeBase64Bytes(text: string): Uint8Array | undefined {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  const clean = text.replace(/\s+/g, "");
  if (clean === "" || !/^[A-Za-z0-9+/]*={0,2}$/.test(clean) || clean.length % 4 !== 0) return undefined;
  const bytes: number[] = [];
  let bits = 0;
  let value = 0;
  for (const c of clean.replace(/=+$/, "")) {
    value = ((value << 6) | alphabet.indexOf(c)) & 0xffffff;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      bytes.push((value >> bits) & 0xff);
    }
  }
  return Uint8Array.from(bytes);
}

/** Latin-1 is enough: every pattern below is ASCII. Chunked: spreading 1 MiB overflows the stack. */
const latin1 = (bytes: Uint8Array): string => {
  let out = "";
  for (let i = 0; i < bytes.length; i += 8192) out += String.fromCharCode(...bytes.subarray(i, i + 8192));
  return out;
};

export function decodeBase64(text: string): string | undefined {
  const bytes = decodeBase64Bytes(text);
  return bytes && latin1(bytes);
}

/** Inflated user data is capped: a gzip bomb must not stall a preview. */
export const MAX_USER_DATA_BYTES = 1 << 20;

const isGzip = (b: Uint8Array) => b[0] === 0x1f && b[1] === 0x8b;
/** No control bytes but tab, newlines, VT and FF: random binary of any length has some. */
const isText = (b: Uint8Array) => b.every((c) => (c >= 0x20 && c !== 0x7f) || (c >= 0x09 && c <= 0x0d));

/**
 * The text cloud-init would read from one user-data input, or why it cannot be checked.
 * `base64`: the input is always base64 (userDataBase64, launch templates). Plain userData that is
 * valid base64 is sent as is by the provider, so the instance decodes it too; it is decoded
 * when that gives text or gzip.
 */
export function userDataText(raw: string, base64: boolean): { text: string } | { problem: string } {
  const bytes = decodeBase64Bytes(raw);
  if (!bytes) return { text: raw };
  if (isGzip(bytes)) {
    try {
      return { text: latin1(gunzipSync(bytes, { maxOutputLength: MAX_USER_DATA_BYTES })) };
    } catch {
      return { problem: `is gzip that is corrupt or inflates past ${MAX_USER_DATA_BYTES} bytes` };
    }
  }
  if (isText(bytes)) return { text: latin1(bytes) };
  return base64 ? { problem: "decodes to binary that is neither text nor gzip" } : { text: raw };
}

/** Shannon entropy in bits per character. */
export function entropy(s: string): number {
  const counts = new Map<string, number>();
  for (const c of s) counts.set(c, (counts.get(c) ?? 0) + 1);
  let h = 0;
  for (const n of counts.values()) h -= (n / s.length) * Math.log2(n / s.length);
  return h;
}

/**
 * Whether a 20+ character run reads as random rather than as words. It needs both cases, and
 * a digit or at least 20% capitals among the letters after the first (camelCase identifiers
 * run ~15%, random [A-Za-z0-9] ~50%). Its entropy must be within 1.5 bits of log2(length), the
 * most n characters can carry (capped at 4): random 32-character strings average 4.5 and
 * reached no lower than 3.69 in 5 million draws, while a flat 4 missed one in 4000.
 */
export function looksRandom(part: string): boolean {
  if (part.length < 20 || !/[a-z]/.test(part) || !/[A-Z]/.test(part)) return false;
  const letters = part.slice(1).replace(/[^A-Za-z]/g, "");
  const capitals = letters.replace(/[^A-Z]/g, "").length;
  if (!/[0-9]/.test(part) && capitals < 0.2 * letters.length) return false;
  return entropy(part) >= Math.min(4, Math.log2(part.length) - 1.5);
}

/** Public key material is not a secret: OpenSSH public keys and certificates. */
const PUBLIC_KEY =
  /\b(ssh-(ed25519|rsa|dss)|ecdsa-sha2-nistp(256|384|521)|sk-[a-z0-9@.-]+) [A-Za-z0-9+/]+={0,3}/g;
const PUBLIC_PEM = /-----BEGIN (CERTIFICATE|PUBLIC KEY|PGP PUBLIC KEY BLOCK)-----[\s\S]*?-----END \1-----/g;

/**
 * A secret-named key (bare, quoted or JSON-escaped) assigned a literal: quoted values of any
 * length, bare ones of 4+ characters. Not a variable reference, template or prompt
 * ($X, ${X}, %X%, {{ x }}, <x>), and not a boolean setting (lock_passwd: true).
 */
const ASSIGNMENT =
  /(?:password|passwd|passphrase|secret|token|api[_-]?key|authkey)\\?['"]?\s*[=:]\s*(?:\\?(['"])(?![$%{<])[^'"\\\n]+\\?\1|(?![$%{<'"\\\s]|(?:true|false|yes|no|null|none)\b)[^\s'",;}\]]{4,})/i;

/**
 * Things that look like secrets, by kind (never the value): PEM/OpenSSH private keys, AWS access
 * key ids, assignments of a literal to a secret-named key (`password=`, `"api_key": "..."`), and
 * long random tokens (see looksRandom: random passwords and API keys, but not camelCase words,
 * paths, package names, hex digests or the bootstrap's words).
 */
export function findSecrets(text: string): string[] {
  const found = new Set<string>();
  if (/-----BEGIN ([A-Z0-9]+ )*PRIVATE KEY( BLOCK)?-----/.test(text)) found.add("a PEM/OpenSSH private key");
  if (/\b(AKIA|ASIA|AIDA|AROA|AGPA)[A-Z0-9]{16}\b/.test(text)) found.add("an AWS access key id");
  if (/aws_secret_access_key|AWS_SECRET_ACCESS_KEY\s*[=:]/.test(text)) found.add("an AWS secret access key");
  if (ASSIGNMENT.test(text)) found.add("a password/secret assignment");
  const scrubbed = text.replace(PUBLIC_KEY, " ").replace(PUBLIC_PEM, " ");
  for (const token of scrubbed.match(/[A-Za-z0-9+/_=-]{20,}/g) ?? []) {
    // Assignments, snake/kebab-case names and path segments are words, not tokens.
    if (token.split(token.startsWith("/") ? /[/=_-]/ : /[=_-]/).some(looksRandom))
      found.add("a high-entropy token");
  }
  return [...found];
}

/** User data of every launcher must not carry secrets: it is readable via IMDS and the API. */
export function noSecretsInUserData(type: string, props: Props): string[] {
  if (!LAUNCHERS.includes(type)) return [];
  const inputs: [string, boolean][] = [
    ["userData", type === T.launchTemplate],
    ["userDataBase64", true],
  ];
  return inputs.flatMap(([key, base64]) => {
    const raw = props[key];
    if (typeof raw !== "string") return [];
    const decoded = userDataText(raw, base64);
    if ("problem" in decoded) return [`${key} ${decoded.problem}; it cannot be checked for secrets`];
    return findSecrets(decoded.text).map((kind) => `${key} contains ${kind}`);
  });
}

// Alarms -----------------------------------------------------------------------------------------

/** An alarm description that names its runbook first, as the pager shows it: `runbook <id>: ...`. */
export const RUNBOOK_DESCRIPTION = /^runbook [a-z0-9][a-z0-9-]*: \S/;

/** Every pypi- alarm (metric or composite) tells on-call which runbook fixes it. */
export function alarmNamesRunbook(type: string, props: Props): string[] {
  const name = type === T.metricAlarm ? props.name : type === T.compositeAlarm ? props.alarmName : undefined;
  if (typeof name !== "string" || !name.startsWith("pypi-")) return [];
  const description = props.alarmDescription;
  return typeof description === "string" && RUNBOOK_DESCRIPTION.test(description)
    ? []
    : [
        `alarm ${name}: alarmDescription ${JSON.stringify(description ?? null)} does not start with "runbook <id>: " (the runbook that fixes it)`,
      ];
}

// CDN --------------------------------------------------------------------------------------------

/** CloudFront viewer policies that allow nothing older than TLS 1.2. */
export const TLS12_VIEWER_POLICIES: readonly string[] = [
  "TLSv1.2_2018",
  "TLSv1.2_2019",
  "TLSv1.2_2021",
  "TLSv1.2_2025",
  "TLSv1.3_2025",
];

/**
 * A distribution speaks TLS 1.2 or later to viewers (its own certificate: the default
 * *.cloudfront.net one accepts TLS 1.0) and to every custom origin (HTTPS only), and logs.
 */
export function distributionTlsAndLogs(type: string, props: Props): string[] {
  if (type !== T.distribution) return [];
  const what = `distribution ${JSON.stringify(props.comment ?? props.aliases ?? "")}`;
  const problems: string[] = [];
  const viewer = rec(props.viewerCertificate);
  if (viewer.cloudfrontDefaultCertificate === true || !viewer.acmCertificateArn)
    problems.push(
      `${what}: viewerCertificate uses CloudFront's default certificate, which accepts TLS 1.0; give it an ACM certificate`,
    );
  if (!TLS12_VIEWER_POLICIES.includes(String(viewer.minimumProtocolVersion)))
    problems.push(
      `${what}: viewerCertificate.minimumProtocolVersion ${JSON.stringify(viewer.minimumProtocolVersion ?? null)} allows less than TLS 1.2; use one of ${TLS12_VIEWER_POLICIES.join(", ")}`,
    );
  for (const origin of list(props.origins)) {
    const custom = rec(origin.customOriginConfig);
    if (Object.keys(custom).length === 0) continue;
    const id = JSON.stringify(origin.originId ?? origin.domainName ?? "");
    if (custom.originProtocolPolicy !== "https-only")
      problems.push(
        `${what}: origin ${id} has originProtocolPolicy ${JSON.stringify(custom.originProtocolPolicy ?? null)}; only https-only keeps the origin leg encrypted`,
      );
    const protocols = Array.isArray(custom.originSslProtocols) ? custom.originSslProtocols.map(String) : [];
    const old = protocols.filter((p) => p !== "TLSv1.2");
    if (protocols.length === 0 || old.length > 0)
      problems.push(
        `${what}: origin ${id} allows ${JSON.stringify(protocols)} toward the origin; only TLSv1.2 (CloudFront's newest origin protocol)`,
      );
  }
  if (!rec(props.loggingConfig).bucket)
    problems.push(`${what}: has no loggingConfig.bucket; a distribution must log its requests`);
  return problems;
}
