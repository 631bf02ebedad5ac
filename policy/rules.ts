/**
 * The pack's rules as pure functions: resource type token + input properties (+ the few facts
 * a rule needs about related resources) -> violation messages. No Pulumi imports, so the unit
 * tests and the stack tests run them directly; policies.ts wraps them for CrossGuard.
 * Messages never quote a secret value: they say what was found and where.
 */

export type Props = Readonly<Record<string, unknown>>;

export const T = {
  instance: "aws:ec2/instance:Instance",
  launchTemplate: "aws:ec2/launchTemplate:LaunchTemplate",
  volume: "aws:ebs/volume:Volume",
  subnet: "aws:ec2/subnet:Subnet",
  eip: "aws:ec2/eip:Eip",
  eipAssociation: "aws:ec2/eipAssociation:EipAssociation",
  securityGroup: "aws:ec2/securityGroup:SecurityGroup",
  securityGroupRule: "aws:ec2/securityGroupRule:SecurityGroupRule",
  ingressRule: "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
  bucket: "aws:s3/bucket:Bucket",
  bucketV2: "aws:s3/bucketV2:BucketV2",
  publicAccessBlock: "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock",
  bucketAcl: "aws:s3/bucketAcl:BucketAcl",
  bucketAclV2: "aws:s3/bucketAclV2:BucketAclV2",
  bucketObject: "aws:s3/bucketObject:BucketObject",
  bucketObjectV2: "aws:s3/bucketObjectv2:BucketObjectv2",
  sse: "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
  sseV2: "aws:s3/bucketServerSideEncryptionConfigurationV2:BucketServerSideEncryptionConfigurationV2",
} as const;

const rec = (v: unknown): Props =>
  typeof v === "object" && v !== null && !Array.isArray(v) ? (v as Props) : {};
const list = (v: unknown): Props[] => (Array.isArray(v) ? v.map(rec) : []);
const strings = (v: unknown): string[] => (Array.isArray(v) ? v.filter((x) => typeof x === "string") : []);
/** Provider inputs may carry booleans as strings ("true") after serialization. */
const isTrue = (v: unknown): boolean => v === true || v === "true";

// IMDSv2 ---------------------------------------------------------------------------------------

/** Instances and launch templates must require session tokens (IMDSv2): SSRF cannot read the role's keys. */
export function imdsv2Required(type: string, props: Props): string[] {
  if (type !== T.instance && type !== T.launchTemplate) return [];
  const tokens = rec(props.metadataOptions).httpTokens;
  return tokens === "required"
    ? []
    : [`metadataOptions.httpTokens is ${JSON.stringify(tokens ?? null)}; IMDSv2 requires "required"`];
}

// Encryption -----------------------------------------------------------------------------------

/** Root and data volumes are encrypted: instance root and EBS block devices, launch templates, volumes. */
export function encryptedVolumes(type: string, props: Props): string[] {
  const out: string[] = [];
  if (type === T.instance) {
    if (!isTrue(rec(props.rootBlockDevice).encrypted))
      out.push("rootBlockDevice.encrypted is not true (an absent rootBlockDevice is unencrypted by default)");
    list(props.ebsBlockDevices).forEach((d, i) => {
      if (!isTrue(d.encrypted)) out.push(`ebsBlockDevices[${i}] (${String(d.deviceName)}) is not encrypted`);
    });
  } else if (type === T.launchTemplate) {
    list(props.blockDeviceMappings).forEach((m, i) => {
      if (m.ebs !== undefined && !isTrue(rec(m.ebs).encrypted))
        out.push(`blockDeviceMappings[${i}].ebs.encrypted is not true`);
    });
  } else if (type === T.volume && !isTrue(props.encrypted)) {
    out.push("encrypted is not true");
  }
  return out;
}

// Security-group ingress -----------------------------------------------------------------------

export const WORLD_V4 = "0.0.0.0/0";
export const WORLD_V6 = "::/0";

/**
 * Ports the world may reach, and only on the balancer group: HTTP (redirect) and HTTPS, and 22,
 * which on the balancers is HAProxy in front of the SFTP upload service (chrooted, key-only
 * sshd on the app servers), not an admin shell. Admin access is SSM Session Manager.
 */
export const WORLD_TCP_PORTS: readonly number[] = [80, 443, 22];

/** What a rule knows about the group it belongs to: its tags and Pulumi name. */
export interface GroupFacts {
  readonly name?: string;
  readonly tags?: Readonly<Record<string, unknown>>;
}

/**
 * The balancer group: `pypi:role=balancer` if tagged, else the Network component's naming,
 * which calls each group `<network>-<role>` and tags it `Name=<network>-<role>`.
 */
export function isBalancerGroup(group: GroupFacts | undefined): boolean {
  if (!group) return false;
  const tags = group.tags ?? {};
  if (tags["pypi:role"] !== undefined) return tags["pypi:role"] === "balancer";
  const name = typeof tags.Name === "string" ? tags.Name : group.name;
  return typeof name === "string" && /(^|-)balancer$/.test(name);
}

/** One ingress permission in a common shape, whichever resource type carried it. */
interface Ingress {
  readonly where: string;
  readonly protocol: string;
  readonly fromPort: number | undefined;
  readonly toPort: number | undefined;
  readonly sources: readonly string[];
}

const num = (v: unknown): number | undefined => {
  const n = typeof v === "string" && v.trim() !== "" ? Number(v) : v;
  return typeof n === "number" && Number.isFinite(n) ? n : undefined;
};

/** Protocol names and numbers as EC2 accepts them; "-1"/"all" is every protocol. */
const normalizeProtocol = (p: unknown): string => {
  const s = String(p ?? "").toLowerCase();
  return s === "6" ? "tcp" : s === "17" ? "udp" : s === "all" ? "-1" : s;
};

function ingressesOf(type: string, props: Props): Ingress[] {
  if (type === T.ingressRule) {
    return [
      {
        where: "rule",
        protocol: normalizeProtocol(props.ipProtocol),
        fromPort: num(props.fromPort),
        toPort: num(props.toPort),
        sources: [props.cidrIpv4, props.cidrIpv6].filter((c): c is string => typeof c === "string"),
      },
    ];
  }
  if (type === T.securityGroupRule) {
    if (props.type !== "ingress") return [];
    return [
      {
        where: "rule",
        protocol: normalizeProtocol(props.protocol),
        fromPort: num(props.fromPort),
        toPort: num(props.toPort),
        sources: [...strings(props.cidrBlocks), ...strings(props.ipv6CidrBlocks)],
      },
    ];
  }
  if (type === T.securityGroup) {
    return list(props.ingress).map((r, i) => ({
      where: `ingress[${i}]`,
      protocol: normalizeProtocol(r.protocol),
      fromPort: num(r.fromPort),
      toPort: num(r.toPort),
      sources: [...strings(r.cidrBlocks), ...strings(r.ipv6CidrBlocks)],
    }));
  }
  return [];
}

/**
 * No ingress from 0.0.0.0/0 or ::/0 except single TCP ports 80, 443 and 22 on the balancer
 * group. `group` describes the rule's security group (for an inline rule, the group itself).
 */
export function noOpenIngress(type: string, props: Props, group?: GroupFacts): string[] {
  const self: GroupFacts | undefined =
    type === T.securityGroup ? { name: group?.name, tags: rec(props.tags) } : group;
  const balancer = isBalancerGroup(self);
  const out: string[] = [];
  for (const r of ingressesOf(type, props)) {
    const open = r.sources.filter((s) => s === WORLD_V4 || s === WORLD_V6);
    if (open.length === 0) continue;
    const ports = r.fromPort === r.toPort ? String(r.fromPort) : `${r.fromPort}-${r.toPort}`;
    const what = `${r.where}: ${r.protocol}/${ports} from ${open.join(", ")}`;
    if (r.protocol !== "tcp" || r.fromPort === undefined || r.fromPort !== r.toPort) {
      out.push(`${what}: world ingress must be a single TCP port`);
    } else if (!WORLD_TCP_PORTS.includes(r.fromPort)) {
      out.push(`${what}: only TCP ${WORLD_TCP_PORTS.join(", ")} may be open to the world`);
    } else if (!balancer) {
      out.push(`${what}: world ingress is allowed only on the balancer security group`);
    }
  }
  return out;
}

// Public addresses -----------------------------------------------------------------------------

/**
 * Public addresses come only from EIPs: the floating IPs (moved by Heartbeat), the balancers'
 * egress addresses and the NAT gateways'. No instance or launch template asks for one, and no
 * subnet hands them out: the public subnets host the balancers (EIPs) and the NAT gateways
 * (EIPs), so nothing there needs a launch-time address.
 */
export function noPublicIps(type: string, props: Props): string[] {
  if (type === T.instance && isTrue(props.associatePublicIpAddress))
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

// Secrets in user data -------------------------------------------------------------------------

/** Base64 decode without platform APIs (the pack compiles without DOM or Node types); Latin-1 out. */
export function decodeBase64(text: string): string | undefined {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  const clean = text.replace(/\s+/g, "");
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(clean) || clean.length % 4 !== 0) return undefined;
  const bytes: number[] = [];
  let bits = 0;
  let value = 0;
  for (const c of clean.replace(/=+$/, "")) {
    value = (value << 6) | alphabet.indexOf(c);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      bytes.push((value >> bits) & 0xff);
    }
  }
  // Latin-1 is enough: every pattern below is ASCII.
  return String.fromCharCode(...bytes);
}

/** Shannon entropy in bits per character. */
export function entropy(s: string): number {
  const counts = new Map<string, number>();
  for (const c of s) counts.set(c, (counts.get(c) ?? 0) + 1);
  let h = 0;
  for (const n of counts.values()) h -= (n / s.length) * Math.log2(n / s.length);
  return h;
}

/** Public key material is not a secret: OpenSSH public keys and certificates. */
const PUBLIC_KEY =
  /\b(ssh-(ed25519|rsa|dss)|ecdsa-sha2-nistp(256|384|521)|sk-[a-z0-9@.-]+) [A-Za-z0-9+/]+={0,3}/g;
const PUBLIC_PEM = /-----BEGIN (CERTIFICATE|PUBLIC KEY|PGP PUBLIC KEY BLOCK)-----[\s\S]*?-----END \1-----/g;

/**
 * Things that look like secrets, by kind (never the value): PEM/OpenSSH private keys, AWS access
 * key ids, `password=`-style assignments of a literal, and long high-entropy tokens (mixed case
 * and digits, 20+ characters, entropy >= 4 bits/char: random passwords and API keys, but not
 * paths, package names, hex digests or the bootstrap's words).
 */
export function findSecrets(text: string): string[] {
  const found = new Set<string>();
  if (/-----BEGIN ([A-Z0-9]+ )*PRIVATE KEY( BLOCK)?-----/.test(text)) found.add("a PEM/OpenSSH private key");
  if (/\b(AKIA|ASIA|AIDA|AROA|AGPA)[A-Z0-9]{16}\b/.test(text)) found.add("an AWS access key id");
  if (/aws_secret_access_key|AWS_SECRET_ACCESS_KEY\s*[=:]/.test(text)) found.add("an AWS secret access key");
  // A literal value, not a variable reference or a prompt.
  if (
    /(password|passwd|passphrase|secret|token|api[_-]?key|authkey)\s*[=:]\s*['"]?(?![$%{<'"\s])[^\s'"]{4,}/i.test(
      text,
    )
  )
    found.add("a password/secret assignment");
  const scrubbed = text.replace(PUBLIC_KEY, " ").replace(PUBLIC_PEM, " ");
  for (const token of scrubbed.match(/[A-Za-z0-9+/_=-]{20,}/g) ?? []) {
    // Assignments, snake/kebab-case names and path segments are words, not tokens.
    for (const part of token.split(token.startsWith("/") ? /[/=_-]/ : /[=_-]/)) {
      if (
        part.length >= 20 &&
        /[a-z]/.test(part) &&
        /[A-Z]/.test(part) &&
        /[0-9]/.test(part) &&
        entropy(part) >= 4
      ) {
        found.add("a high-entropy token");
      }
    }
  }
  return [...found];
}

/** User data of instances and launch templates must not carry secrets: it is readable via IMDS and the API. */
export function noSecretsInUserData(type: string, props: Props): string[] {
  if (type !== T.instance && type !== T.launchTemplate) return [];
  const texts: [string, string][] = [];
  if (typeof props.userData === "string") {
    const decoded = type === T.launchTemplate ? decodeBase64(props.userData) : undefined;
    texts.push(["userData", decoded ?? props.userData]);
  }
  if (typeof props.userDataBase64 === "string")
    texts.push(["userDataBase64", decodeBase64(props.userDataBase64) ?? props.userDataBase64]);
  return texts.flatMap(([key, text]) => findSecrets(text).map((kind) => `${key} contains ${kind}`));
}
