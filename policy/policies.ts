import type {
  ReportViolation,
  ResourceValidationArgs,
  ResourceValidationPolicy,
  StackValidationArgs,
  StackValidationPolicy,
} from "@pulumi/policy";
import {
  bucketHardened,
  bucketPrivate,
  encryptedVolumes,
  type GroupFacts,
  imdsv2Required,
  noEipAssociation,
  noOpenIngress,
  noPublicIps,
  noSecretsInUserData,
  type Props,
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

const groupFacts = (g: StackResource | undefined): GroupFacts | undefined =>
  g && { name: g.name, tags: (g.props.tags ?? {}) as Record<string, unknown> };

/** World ingress, per rule, judged with the facts of the group the rule belongs to. */
export function openIngressViolations(
  resources: readonly StackResource[],
): { urn: string; message: string }[] {
  const groups = resources.filter((r) => r.type === T.securityGroup);
  return resources.flatMap((r) => {
    const group = r.type === T.securityGroup ? r : referenced(r, "securityGroupId", groups);
    return noOpenIngress(r.type, r.props, groupFacts(group)).map((m) => ({
      urn: r.urn,
      message: `${r.name}: ${m}`,
    }));
  });
}

/** Every bucket with the access block and encryption resources whose `bucket` input is it. */
export function bucketViolations(resources: readonly StackResource[]): { urn: string; message: string }[] {
  const buckets = resources.filter((r) => r.type === T.bucket || r.type === T.bucketV2);
  const companions = resources.filter((r) => r.props.bucket !== undefined);
  return buckets.flatMap((b) =>
    bucketHardened({
      props: b.props,
      companions: companions.filter((c) => referenced(c, "bucket", [b]) !== undefined),
    }).map((m) => ({ urn: b.urn, message: `${b.name}: ${m}` })),
  );
}

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
    "Instances and launch templates require IMDSv2 (metadataOptions.httpTokens = required).",
    imdsv2Required,
  ),
  resourcePolicy(
    "ebs-encrypted",
    "Root block devices, EBS block devices and EBS volumes are encrypted.",
    encryptedVolumes,
  ),
  resourcePolicy(
    "no-public-ips",
    "No instance, launch template or subnet hands out public addresses; only EIPs are public.",
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
    "no-secrets-in-user-data",
    "User data carries no private keys, AWS keys, password assignments or high-entropy tokens.",
    noSecretsInUserData,
  ),
];

export const stackPolicies: readonly StackValidationPolicy[] = [
  stackPolicy(
    "sg-no-world-ingress",
    "Ingress from 0.0.0.0/0 or ::/0 only on the balancer group, TCP 80, 443 and 22 (SFTP uploads via HAProxy).",
    openIngressViolations,
  ),
  stackPolicy(
    "s3-bucket-private-encrypted",
    "Every bucket has a public access block with all four settings on and default server-side encryption.",
    bucketViolations,
  ),
];

export const policies: (ResourceValidationPolicy | StackValidationPolicy)[] = [
  ...resourcePolicies,
  ...stackPolicies,
];
