import type * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import { attachDataVolume, type LaunchedNode, nodeSuffix } from "./node.js";
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
}

export function validateDrbdVolumeArgs(args: DrbdVolumeArgs): void {
  const [a, b] = args.pair;
  if (args.pair.length !== 2 || a.spec.role !== "app" || b.spec.role !== "app")
    throw new Error(
      `DrbdVolume: pair ${JSON.stringify(args.pair.map((n) => n.spec.name))} is not valid; expected 2 app servers`,
    );
  if (a.spec.azIndex === b.spec.azIndex)
    throw new Error(
      `DrbdVolume: ${a.spec.name} and ${b.spec.name} share AZ ${JSON.stringify(a.spec.az)}; expected two AZs`,
    );
  if (!Number.isInteger(args.sizeGb) || args.sizeGb < 1 || args.sizeGb > 16384)
    throw new Error(`DrbdVolume: sizeGb ${JSON.stringify(args.sizeGb)} is not valid; expected 1-16384`);
  if (!/^([0-9]{1,3}\.){3}[0-9]{1,3}$/.test(args.storageAddress))
    throw new Error(
      `DrbdVolume: storageAddress ${JSON.stringify(args.storageAddress)} is not valid; expected an IPv4 address`,
    );
  if (args.routeTables.length === 0)
    throw new Error("DrbdVolume: routeTables is empty; expected the private route tables");
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
        tags: args.tags,
        retain,
      }),
    );
    const primary = args.pair[0];
    this.routes = overlayRoutes(this, `${name}-overlay`, args.storageAddress, args.routeTables, primary.eni);
    this.registerOutputs({ volumeIds: this.volumes.map((v) => v.id) });
  }
}
