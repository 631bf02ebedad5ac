import type * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import { attachDataVolume, type LaunchedNode, nodeSuffix, requireRouteTables } from "./node.js";
import { overlayRoutes } from "./postgres-pair.js";

export interface DrbdVolumeArgs {
  /** The storage pair (the first two app servers), primary first. */
  readonly pair: readonly [LaunchedNode, LaunchedNode];
  /** Size of each replica's encrypted EBS volume. */
  readonly sizeGb: number;
  /** Storage (NFS) overlay address, routed to the DRBD primary. */
  readonly storageAddress: string;
  /** Private route tables that carry the storage route. */
  readonly routeTables: readonly aws.ec2.RouteTable[];
  /**
   * Protect and retain the volumes.
   * @default false
   */
  readonly retainData?: boolean;
  /**
   * Tags on every resource.
   * @default {}
   */
  readonly tags?: Readonly<Record<string, string>>;
  /**
   * Further tags on the two volumes only, e.g. the target tag of the snapshot policy.
   * @default {}
   */
  readonly volumeTags?: Readonly<Record<string, string>>;
}

export function validateDrbdVolumeArgs(args: DrbdVolumeArgs): void {
  requireRouteTables("DrbdVolume", "routeTables", args.routeTables);
}

/** The DRBD-replicated package volume: one encrypted EBS volume per storage node and the NFS overlay route. */
export class DrbdVolume extends pulumi.ComponentResource {
  readonly volumes: readonly aws.ebs.Volume[];
  readonly routes: readonly aws.ec2.Route[];

  constructor(name: string, args: DrbdVolumeArgs, opts: pulumi.ComponentResourceOptions = {}) {
    super("pypi:infra:DrbdVolume", name, {}, opts);
    validateDrbdVolumeArgs(args);
    const retain = args.retainData ?? false;
    this.volumes = args.pair.map((node) =>
      attachDataVolume(this, `${name}-${nodeSuffix(node.spec)}`, node, {
        sizeGb: args.sizeGb,
        nameTag: `${node.spec.name}-drbd`,
        tags: { ...args.tags, ...args.volumeTags },
        retain,
      }),
    );
    const primary = args.pair[0];
    this.routes = overlayRoutes(this, `${name}-overlay`, args.storageAddress, args.routeTables, primary.eni);
    this.registerOutputs({ volumeIds: this.volumes.map((v) => v.id) });
  }
}
