import type {
  ReportViolation,
  ResourceValidationArgs,
  ResourceValidationPolicy,
  StackValidationArgs,
  StackValidationPolicy,
} from "@pulumi/policy";
import {
  alarmNamesRunbook,
  type BucketFacts,
  backupBucketVersioned,
  bucketHardened,
  bucketPolicyPrivate,
  bucketPrivate,
  distributionTlsAndLogs,
  encryptedVolumes,
  type Ingress,
  imdsv2Required,
  ingressesOf,
  noEipAssociation,
  noInternetIngress,
  noPublicIps,
  noSecretsInUserData,
  type Props,
  ROLE_TAG,
  T,
} from "./rules";

/** The part of a CrossGuard PolicyResource the stack rules read. */
export interface StackResource {
  readonly type: string;
  readonly name: string;
  readonly urn: string;
  readonly props: Props;
  /** Resources each input property was computed from (how a rule finds its group or bucket). */
  readonly propertyDependencies: Readonly<Record<string, readonly { readonly urn: string }[]>>;
}

type Rule = (type: string, props: Props) => string[];

const resourcePolicy = (name: string, description: string, rule: Rule): ResourceValidationPolicy => ({
  name,
  description,
  enforcementLevel: "mandatory",
  validateResource: (args: ResourceValidationArgs, report: ReportViolation) => {
    for (const message of rule(args.type, args.props)) report(`${args.name}: ${message}`);
  },
});

/** The resource that input `key` of `r` refers to: by dependency (preview), else by id (known state). */
export function referenced(
  r: StackResource,
  key: string,
  candidates: readonly StackResource[],
): StackResource | undefined {
  const urns = new Set((r.propertyDependencies[key] ?? []).map((d) => d.urn));
  return (
    candidates.find((c) => urns.has(c.urn)) ??
    candidates.find((c) => c.props.id !== undefined && c.props.id === r.props[key])
  );
}

/**
 * Props with every value that is unknown during preview (CrossGuard's proxy throws on those) read
 * as undefined, so a stack rule sees what is known and resolves the rest via dependencies.
 */
export function knownProps(v: unknown, depth = 0): unknown {
  if (typeof v !== "object" || v === null || depth > 16) return v;
  const out: Record<string, unknown> = Array.isArray(v) ? ([] as unknown as Record<string, unknown>) : {};
  for (const k of Object.keys(v)) {
    try {
      out[k] = knownProps((v as Record<string, unknown>)[k], depth + 1);
    } catch {
      out[k] = undefined;
    }
  }
  return out;
}

/** Every string inside a value (ids in lists and nested blocks). */
const stringsIn = (v: unknown, depth = 0): string[] =>
  typeof v === "string"
    ? [v]
    : typeof v === "object" && v !== null && depth < 8
      ? Object.values(v).flatMap((x) => stringsIn(x, depth + 1))
      : [];

/**
 * The candidates input `key` of `r` refers to, anywhere inside the value (`securityGroups`,
 * `networkInterfaces[].securityGroups`, `primaryNetworkInterface.networkInterfaceId`): by
 * dependency (preview), else by id, or by group name where EC2 takes names.
 */
export function referencedAll(
  r: StackResource,
  key: string,
  candidates: readonly StackResource[],
): StackResource[] {
  const urns = new Set((r.propertyDependencies[key] ?? []).map((d) => d.urn));
  const values = new Set(stringsIn(r.props[key]));
  const byName = key === "securityGroups" || key === "securityGroupNames";
  return candidates.filter(
    (c) =>
      c.urn !== r.urn &&
      (urns.has(c.urn) ||
        (typeof c.props.id === "string" && values.has(c.props.id)) ||
        (byName && typeof c.props.name === "string" && values.has(c.props.name))),
  );
}

/** Inputs through which any resource attaches security groups directly. */
const GROUP_KEYS = ["securityGroups", "securityGroupIds", "vpcSecurityGroupIds", "securityGroupNames"];

const roleOf = (tags: unknown): string | undefined => {
  const role = typeof tags === "object" && tags !== null ? (tags as Props)[ROLE_TAG] : undefined;
  return typeof role === "string" ? role : undefined;
};

/** A launch template's role: the tags it gives instances, else its own. */
const templateRole = (lt: StackResource): string | undefined =>
  (Array.isArray(lt.props.tagSpecifications) ? (lt.props.tagSpecifications as Props[]) : [])
    .filter((t) => t?.resourceType === "instance")
    .map((t) => roleOf(t.tags))
    .find((r) => r !== undefined) ?? roleOf(lt.props.tags);

/** Something groups are attached to, with its role and every group attached to it. */
export interface AttachedNode {
  readonly node: StackResource;
  readonly role: string | undefined;
  readonly groups: readonly StackResource[];
}

/**
 * Per instance, spot request, launch template, free-standing interface and any other resource
 * that takes security groups (VPC endpoints, load balancers): the groups in effect on it. An
 * instance gets its own groups, its interfaces' (primary, listed, attached by a
 * NetworkInterfaceAttachment or the interface's own `attachments`) with any group a
 * NetworkInterfaceSecurityGroupAttachment adds, and its launch template's. The role comes from
 * the instance's `pypi:role` tag (else its launch template's), never from a group's name.
 */
export function attachedNodes(resources: readonly StackResource[]): AttachedNode[] {
  const of = (type: string) => resources.filter((r) => r.type === type);
  const groups = of(T.securityGroup);
  const enis = of(T.networkInterface);
  const templates = of(T.launchTemplate);
  const instances = resources.filter((r) => r.type === T.instance || r.type === T.spotInstanceRequest);
  const sgAttachments = of(T.networkInterfaceSgAttachment);
  const eniAttachments = of(T.networkInterfaceAttachment);

  const direct = (r: StackResource) => GROUP_KEYS.flatMap((k) => referencedAll(r, k, groups));
  const eniGroups = (eni: StackResource) => [
    ...referencedAll(eni, "securityGroups", groups),
    ...sgAttachments
      .filter((a) => referencedAll(a, "networkInterfaceId", [eni]).length > 0)
      .flatMap((a) => referencedAll(a, "securityGroupId", groups)),
  ];
  const templateEnis = (lt: StackResource) => referencedAll(lt, "networkInterfaces", enis);
  const templateGroups = (lt: StackResource) => [
    ...direct(lt),
    ...referencedAll(lt, "networkInterfaces", groups),
    ...templateEnis(lt).flatMap(eniGroups),
  ];
  const instanceEnis = (i: StackResource) => [
    ...referencedAll(i, "primaryNetworkInterface", enis),
    ...referencedAll(i, "networkInterfaces", enis),
    ...eniAttachments
      .filter((a) => referencedAll(a, "instanceId", [i]).length > 0)
      .flatMap((a) => referencedAll(a, "networkInterfaceId", enis)),
    ...enis.filter((e) => referencedAll(e, "attachments", [i]).length > 0),
  ];

  const attachedEnis = new Set<string>();
  const nodes: AttachedNode[] = [];
  const add = (node: StackResource, role: string | undefined, found: readonly StackResource[]) =>
    nodes.push({ node, role, groups: [...new Map(found.map((g) => [g.urn, g])).values()] });

  for (const i of instances) {
    const lts = referencedAll(i, "launchTemplate", templates);
    const own = instanceEnis(i);
    for (const e of own) attachedEnis.add(e.urn);
    add(i, roleOf(i.props.tags) ?? lts.map(templateRole).find((r) => r !== undefined), [
      ...direct(i),
      ...own.flatMap(eniGroups),
      ...lts.flatMap(templateGroups),
    ]);
  }
  for (const lt of templates) {
    for (const e of templateEnis(lt)) attachedEnis.add(e.urn);
    add(lt, templateRole(lt), templateGroups(lt));
  }
  for (const e of enis) if (!attachedEnis.has(e.urn)) add(e, roleOf(e.props.tags), eniGroups(e));
  const handled = new Set<string>([
    ...instances.map((r) => r.urn),
    ...templates.map((r) => r.urn),
    ...enis.map((r) => r.urn),
  ]);
  for (const r of resources) {
    if (handled.has(r.urn) || r.type === T.securityGroup || r.type === T.securityGroupRule) continue;
    const found = [...direct(r), ...referencedAll(r, "networkInterfaces", groups)];
    if (found.length > 0) add(r, roleOf(r.props.tags), found);
  }
  return nodes;
}

/** Each group's ingress permissions, inline and from rule resources, with prefix lists expanded. */
export function groupIngress(resources: readonly StackResource[]): {
  readonly byGroup: ReadonlyMap<string, readonly Ingress[]>;
  /** Rules whose group is not in the stack (or not yet resolvable): judged on their own. */
  readonly orphans: readonly { readonly rule: StackResource; readonly ingress: readonly Ingress[] }[];
} {
  const groups = resources.filter((r) => r.type === T.securityGroup);
  const lists = resources.filter((r) => r.type === T.prefixList);
  const entries = resources.filter((r) => r.type === T.prefixListEntry);
  const cidrsOf = (pl: StackResource) => [
    ...(Array.isArray(pl.props.entries) ? (pl.props.entries as Props[]) : []).map((e) => e?.cidr),
    ...entries.filter((e) => referencedAll(e, "prefixListId", [pl]).length > 0).map((e) => e.props.cidr),
  ];
  const expand = (r: StackResource, key: string, ingress: Ingress[]): Ingress[] =>
    ingress.map((i) => {
      const pls = new Set([
        ...lists.filter((pl) => typeof pl.props.id === "string" && i.prefixListIds.includes(pl.props.id)),
        // A rule resource's prefix list may be known only by dependency during preview.
        ...(r.type === T.securityGroup ? [] : referencedAll(r, key, lists)),
      ]);
      const extra = [...pls].flatMap(cidrsOf).filter((c): c is string => typeof c === "string");
      return extra.length > 0 ? { ...i, sources: [...i.sources, ...extra] } : i;
    });

  const byGroup = new Map<string, Ingress[]>(
    groups.map((g) => [g.urn, expand(g, "ingress", ingressesOf(T.securityGroup, g.props, g.name))]),
  );
  const orphans: { rule: StackResource; ingress: Ingress[] }[] = [];
  for (const r of resources) {
    if (r.type !== T.ingressRule && r.type !== T.securityGroupRule) continue;
    const key = r.type === T.ingressRule ? "prefixListId" : "prefixListIds";
    const ingress = expand(r, key, ingressesOf(r.type, r.props, r.name));
    if (ingress.length === 0) continue;
    const group = referenced(r, "securityGroupId", groups);
    const into = group && byGroup.get(group.urn);
    if (into) into.push(...ingress);
    else orphans.push({ rule: r, ingress });
  }
  return { byGroup, orphans };
}

/**
 * Internet ingress judged per node on the union of every group attached to it, by its role; a
 * group attached to nothing, and a rule whose group cannot be found, as if on an untagged node.
 */
export function openIngressViolations(stack: readonly StackResource[]): { urn: string; message: string }[] {
  const resources = stack.map((r) => ({ ...r, props: knownProps(r.props) as Props }));
  const { byGroup, orphans } = groupIngress(resources);
  const nodes = attachedNodes(resources);
  const attached = new Set(nodes.flatMap((n) => n.groups.map((g) => g.urn)));
  const report = (r: StackResource, messages: string[], prefix = "") =>
    messages.map((m) => ({ urn: r.urn, message: `${r.name}: ${prefix}${m}` }));
  return [
    ...nodes.flatMap((n) =>
      report(
        n.node,
        noInternetIngress(
          n.role,
          n.groups.flatMap((g) => byGroup.get(g.urn) ?? []),
        ),
      ),
    ),
    ...resources
      .filter((g) => g.type === T.securityGroup && !attached.has(g.urn))
      .flatMap((g) =>
        report(g, noInternetIngress(undefined, byGroup.get(g.urn) ?? []), "(attached to nothing) "),
      ),
    ...orphans.flatMap((o) => report(o.rule, noInternetIngress(undefined, o.ingress), "(group not found) ")),
  ];
}

/** Runs a per-bucket rule on every bucket with the resources whose `bucket` input is it. */
const perBucket =
  (rule: (bucket: BucketFacts) => string[]) =>
  (resources: readonly StackResource[]): { urn: string; message: string }[] => {
    const buckets = resources.filter((r) => r.type === T.bucket || r.type === T.bucketV2);
    // During a first preview a companion's `bucket` is unknown: its dependency names the bucket.
    const companions = resources.filter(
      (r) => r.propertyDependencies.bucket !== undefined || r.props.bucket !== undefined,
    );
    return buckets.flatMap((b) =>
      rule({
        props: b.props,
        companions: companions.filter((c) => referenced(c, "bucket", [b]) !== undefined),
      }).map((m) => ({ urn: b.urn, message: `${b.name}: ${m}` })),
    );
  };

/** Every bucket with the access block and encryption resources whose `bucket` input is it. */
export const bucketViolations = perBucket(bucketHardened);

/** Every backup bucket with its versioning resources; unknown preview values read as undefined. */
export const backupVersioningViolations = (stack: readonly StackResource[]) =>
  perBucket(backupBucketVersioned)(stack.map((r) => ({ ...r, props: knownProps(r.props) as Props })));

const stackPolicy = (
  name: string,
  description: string,
  check: (resources: readonly StackResource[]) => { urn: string; message: string }[],
): StackValidationPolicy => ({
  name,
  description,
  enforcementLevel: "mandatory",
  validateStack: (args: StackValidationArgs, report: ReportViolation) => {
    for (const v of check(args.resources)) report(v.message, v.urn);
  },
});

export const resourcePolicies: readonly ResourceValidationPolicy[] = [
  resourcePolicy(
    "ec2-imdsv2-required",
    "Instances, spot requests, launch configurations and launch templates require IMDSv2 (httpTokens = required).",
    imdsv2Required,
  ),
  resourcePolicy(
    "ebs-encrypted",
    "Every launcher's root and EBS block devices, launch-template EBS mappings and EBS volumes are encrypted.",
    encryptedVolumes,
  ),
  resourcePolicy(
    "no-public-ips",
    "No launcher or subnet hands out public addresses; only EIPs are public.",
    noPublicIps,
  ),
  resourcePolicy(
    "no-eip-association",
    "No EipAssociation and no inline EIP association: Heartbeat owns the floating IPs' associations.",
    noEipAssociation,
  ),
  resourcePolicy(
    "s3-no-public-access",
    "No public canned ACL or public grant on buckets and objects; access blocks block everything.",
    bucketPrivate,
  ),
  resourcePolicy(
    "s3-no-public-bucket-policy",
    "No bucket policy allows a public principal (*) without a Condition pinning it to our VPC endpoints, accounts or sources.",
    bucketPolicyPrivate,
  ),
  resourcePolicy(
    "no-secrets-in-user-data",
    "User data (base64 and gzip undone) carries no private keys, AWS keys, password assignments or random tokens.",
    noSecretsInUserData,
  ),
  resourcePolicy(
    "alarm-names-runbook",
    'Every CloudWatch metric or composite alarm named pypi-* has a description starting "runbook <id>: ", the runbook that fixes it.',
    alarmNamesRunbook,
  ),
  resourcePolicy(
    "cdn-tls12-and-logs",
    "A CloudFront distribution uses TLS 1.2 or later toward viewers (an ACM certificate) and toward every custom origin (https-only), and writes access logs.",
    distributionTlsAndLogs,
  ),
];

export const stackPolicies: readonly StackValidationPolicy[] = [
  stackPolicy(
    "sg-no-world-ingress",
    "Internet ingress (the union of CIDRs on a port across all groups attached to a node) only on pypi:role=balancer nodes, TCP 80, 443 and 22.",
    openIngressViolations,
  ),
  stackPolicy(
    "s3-bucket-private-encrypted",
    "Every bucket has a public access block with all four settings on and default server-side encryption.",
    bucketViolations,
  ),
  stackPolicy(
    "s3-backup-buckets-versioned",
    "Every backup bucket (pypi-<env>-backups-*, pypi-<env>-files-*) has versioning Enabled and never Suspended.",
    backupVersioningViolations,
  ),
];

export const policies: (ResourceValidationPolicy | StackValidationPolicy)[] = [
  ...resourcePolicies,
  ...stackPolicies,
];
