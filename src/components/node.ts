import * as aws from "@pulumi/aws";
import type * as pulumi from "@pulumi/pulumi";
import type { NodeRole } from "../topology.js";

/** A node as planned before anything exists: name, AZ and fixed private addresses. */
export interface PlannedNode {
  readonly name: string;
  readonly role: NodeRole;
  readonly az: string;
  readonly azIndex: 0 | 1;
  readonly privateIp: string;
  /** Balancers: one spare secondary private IP per floating IP. */
  readonly secondaryIps: readonly string[];
}

/** What every node of a role shares at launch. */
export interface LaunchArgs {
  /** AMI id (Debian 12 from the public SSM parameter). Later AMI updates never replace a node. */
  readonly ami: pulumi.Input<string>;
  readonly instanceType: string;
  /** Subnets by AZ index. */
  readonly subnets: readonly [aws.ec2.Subnet, aws.ec2.Subnet];
  readonly securityGroup: aws.ec2.SecurityGroup;
  /**
   * Cloud-init text per node name; stable across config changes. Read at launch only: a later
   * change reaches a node when the rebuild runbook replaces it (see createInstance).
   */
  readonly userData: Readonly<Record<string, pulumi.Input<string>>>;
  /** CloudWatch namespace the nodes publish their health to; the role may write only there. */
  readonly metricNamespace: string;
  /**
   * What a node needs reachable on first boot (VPC endpoints, its egress address). Cloud-init's
   * package step runs once, so the instances wait for these.
   * @default [] - no extra dependencies
   */
  readonly bootAfter?: readonly pulumi.Resource[];
  /**
   * Encrypted gp3 root volume size.
   * @default 16
   */
  readonly rootVolumeGb?: number;
  /**
   * Refuse API termination of the instances.
   * @default false
   */
  readonly deletionProtection?: boolean;
  /**
   * Tags on every resource.
   * @default {}
   */
  readonly tags?: Readonly<Record<string, string>>;
}

export interface LaunchedNode {
  readonly spec: PlannedNode;
  readonly eni: aws.ec2.NetworkInterface;
  readonly instance: aws.ec2.Instance;
}

export function validateLaunchArgs(component: string, nodes: readonly PlannedNode[], args: LaunchArgs): void {
  // User data is built by the stack per node, outside the topology the schema checks.
  for (const node of nodes) {
    if (args.userData[node.name] === undefined)
      throw new Error(`${component}: userData has no entry for node ${JSON.stringify(node.name)}`);
  }
}

/** Route tables are Network outputs the schema never sees; without one the overlay address is unrouted. */
export function requireRouteTables(component: string, key: string, tables: readonly unknown[]): void {
  if (tables.length === 0)
    throw new Error(`${component}: ${key} is empty; expected the private route tables`);
}

/**
 * One node: a network interface with fixed private addresses (so configs can name them before
 * `up`) attached as the primary at launch, and a hardened instance around it: IMDSv2 only,
 * hop limit 1, encrypted root volume, no public address of its own.
 */
export type NodeLaunchArgs = LaunchArgs & {
  readonly profile: aws.iam.InstanceProfile;
  readonly sourceDestCheck: boolean;
  /** The role's policy: the node must not boot before it may read its bundle and secrets. */
  readonly policy: pulumi.Resource;
};

const nodeTags = (spec: PlannedNode, args: LaunchArgs) => ({
  ...args.tags,
  Name: spec.name,
  "pypi:node": spec.name,
  "pypi:role": spec.role,
});

/** Resource name suffix of a node: `lb-a` -> `a`, so children read `${component}-a`. */
export const nodeSuffix = (spec: PlannedNode): string => spec.name.split("-").pop() ?? spec.name;

export function createInterface(
  parent: pulumi.Resource,
  name: string,
  spec: PlannedNode,
  args: LaunchArgs & { readonly sourceDestCheck: boolean },
): aws.ec2.NetworkInterface {
  const tags = nodeTags(spec, args);
  return new aws.ec2.NetworkInterface(
    `${name}-eni`,
    {
      subnetId: args.subnets[spec.azIndex].id,
      securityGroups: [args.securityGroup.id],
      // Ordered list: the first address is the primary, the rest are the floating IPs' spares.
      privateIpListEnabled: true,
      privateIpLists: [spec.privateIp, ...spec.secondaryIps],
      // Overlay addresses are routed to this interface; it must accept packets not addressed to it.
      sourceDestCheck: args.sourceDestCheck,
      description: `${spec.name} primary interface`,
      tags,
    },
    { parent },
  );
}

export function createInstance(
  parent: pulumi.Resource,
  name: string,
  spec: PlannedNode,
  eni: aws.ec2.NetworkInterface,
  args: NodeLaunchArgs,
): aws.ec2.Instance {
  const tags = nodeTags(spec, args);
  return new aws.ec2.Instance(
    name,
    {
      ami: args.ami,
      instanceType: args.instanceType,
      iamInstanceProfile: args.profile.name,
      primaryNetworkInterface: { networkInterfaceId: eni.id },
      userData: args.userData[spec.name],
      // Never replace on a user-data change (see ignoreChanges below).
      userDataReplaceOnChange: false,
      metadataOptions: { httpEndpoint: "enabled", httpTokens: "required", httpPutResponseHopLimit: 1 },
      rootBlockDevice: {
        encrypted: true,
        volumeType: "gp3",
        volumeSize: args.rootVolumeGb ?? 16,
        deleteOnTermination: true,
        tags,
      },
      disableApiTermination: args.deletionProtection ?? false,
      tags,
    },
    {
      parent,
      dependsOn: [args.policy, ...(args.bootAfter ?? [])],
      // The interface (and its addresses) outlives the instance; it can only be attached to one.
      deleteBeforeReplace: true,
      // "latest" moves with every Debian point release. User data is read once, at launch, and an
      // in-place update stops and starts the instance: on `up` that would bounce every node at
      // once, both halves of every pair. Both reach a node only when the rebuild runbook
      // (`rebuild-<node>` in src/runbooks/runbooks.ts) replaces it, one node at a time; a
      // replacement is a create, so it takes the current AMI and user data.
      ignoreChanges: ["ami", "userData"],
    },
  );
}

export function launchNode(
  parent: pulumi.Resource,
  name: string,
  spec: PlannedNode,
  args: NodeLaunchArgs,
): LaunchedNode {
  const eni = createInterface(parent, name, spec, args);
  return { spec, eni, instance: createInstance(parent, name, spec, eni, args) };
}

/** Where the data volume appears on every node (nvme1n1 on Nitro). */
export const DATA_DEVICE_NAME = "/dev/sdf";

export interface DataVolumeArgs {
  readonly sizeGb: number;
  /** The volume's Name tag. */
  readonly nameTag: string;
  readonly tags?: Readonly<Record<string, string>>;
  /** Protect, retain on delete and snapshot on destroy (prod). */
  readonly retain: boolean;
}

/** An encrypted gp3 volume in the node's AZ, attached as DATA_DEVICE_NAME. */
export function attachDataVolume(
  parent: pulumi.Resource,
  name: string,
  { spec, instance }: LaunchedNode,
  args: DataVolumeArgs,
): aws.ebs.Volume {
  const volume = new aws.ebs.Volume(
    name,
    {
      availabilityZone: spec.az,
      size: args.sizeGb,
      type: "gp3",
      encrypted: true,
      finalSnapshot: args.retain,
      tags: { ...args.tags, Name: args.nameTag, "pypi:node": spec.name },
    },
    { parent, protect: args.retain, retainOnDelete: args.retain },
  );
  new aws.ec2.VolumeAttachment(
    name,
    {
      deviceName: DATA_DEVICE_NAME,
      volumeId: volume.id,
      instanceId: instance.id,
      stopInstanceBeforeDetaching: true,
    },
    { parent },
  );
  return volume;
}
