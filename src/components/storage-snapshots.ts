import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import { atoms, DLM_INTERVAL_HOURS, show } from "../schema.js";
import type { AwsAccount } from "./iam.js";

/** The tag DLM selects volumes by; the storage pair's data volumes always carry it. */
export const SNAPSHOT_TAG_KEY = "pypi:snapshots";

/** Per environment: stacks that share an account must not share target tags (DLM refuses overlapping policies). */
export const snapshotTargetTags = (environment: string): Record<string, string> => ({
  [SNAPSHOT_TAG_KEY]: `${environment}-storage`,
});

/** AWS's managed policy for DLM's default role: create, tag and delete snapshots. */
export const DLM_SERVICE_ROLE_POLICY = "service-role/AWSDataLifecycleManagerServiceRole";

/** When the first snapshot of each day's slots starts (UTC); DLM starts within the hour after. */
export const SNAPSHOT_START_TIME = "03:00";

export interface StorageSnapshotsArgs {
  /** Stack name; the policy targets volumes tagged `pypi:snapshots = <environment>-storage`. */
  readonly environment: string;
  /**
   * Snapshots kept per volume, 1 to 1000. A stack that wants none creates no StorageSnapshots.
   */
  readonly retainCount: number;
  /**
   * Hours between snapshots: 1, 2, 3, 4, 6, 8, 12 or 24 (what DLM accepts in HOURS).
   * @default 24
   */
  readonly intervalHours?: number;
  /** Partition of the account, for the managed policy's ARN. */
  readonly account: pulumi.Input<AwsAccount>;
  /**
   * Tags on the role and the policy (snapshots copy the volume's own tags).
   * @default {}
   */
  readonly tags?: Readonly<Record<string, string>>;
}

export function validateStorageSnapshotsArgs(args: StorageSnapshotsArgs): void {
  const problem = (arg: string, value: unknown, allowed: string): never => {
    const text = typeof value === "number" ? String(value) : show(value);
    throw new Error(`StorageSnapshots: ${arg} ${text} is not valid; expected ${allowed}`);
  };
  if (!atoms.hostname.schema.safeParse(args.environment).success)
    problem("environment", args.environment, atoms.hostname.allowed);
  const count = args.retainCount;
  if (!atoms.snapshotRetainCount.schema.safeParse(count).success || count === 0)
    problem(
      "retainCount",
      count,
      "a whole number of snapshots from 1 to 1000 (for none, create no StorageSnapshots)",
    );
  const hours = args.intervalHours ?? 24;
  if (!atoms.snapshotIntervalHours.schema.safeParse(hours).success)
    problem("intervalHours", hours, `one of ${DLM_INTERVAL_HOURS.join(", ")}`);
}

/** The role's trust policy: DLM, and nothing else, may assume it. */
export const dlmAssumeRolePolicy = (): string =>
  JSON.stringify({
    Version: "2012-10-17",
    Statement: [{ Effect: "Allow", Principal: { Service: "dlm.amazonaws.com" }, Action: "sts:AssumeRole" }],
  });

/**
 * EBS snapshots of the storage pair's DRBD volumes by Data Lifecycle Manager: an execution role
 * with AWS's managed DLM policy and one policy that snapshots every volume carrying the
 * environment's target tag every `intervalHours` and keeps the newest `retainCount` per volume.
 * The snapshots are crash-consistent copies of the whole volume, DRBD's internal metadata included.
 */
export class StorageSnapshots extends pulumi.ComponentResource {
  readonly role: aws.iam.Role;
  readonly policy: aws.dlm.LifecyclePolicy;

  constructor(name: string, args: StorageSnapshotsArgs, opts: pulumi.ComponentResourceOptions = {}) {
    super("pypi:infra:StorageSnapshots", name, {}, opts);
    validateStorageSnapshotsArgs(args);
    const tags = args.tags ?? {};
    const hours = args.intervalHours ?? 24;
    const parent = { parent: this };
    this.role = new aws.iam.Role(`${name}-role`, { assumeRolePolicy: dlmAssumeRolePolicy(), tags }, parent);
    const attachment = new aws.iam.RolePolicyAttachment(
      `${name}-service-role`,
      {
        role: this.role.name,
        policyArn: pulumi
          .output(args.account)
          .apply((a) => `arn:${a.partition}:iam::aws:policy/${DLM_SERVICE_ROLE_POLICY}`),
      },
      parent,
    );
    this.policy = new aws.dlm.LifecyclePolicy(
      `${name}-policy`,
      {
        // DLM allows only [0-9A-Za-z _-] in descriptions and schedule names.
        description: `pypi ${args.environment} DRBD volume snapshots`,
        executionRoleArn: this.role.arn,
        state: "ENABLED",
        policyDetails: {
          policyType: "EBS_SNAPSHOT_MANAGEMENT",
          resourceTypes: ["VOLUME"],
          targetTags: snapshotTargetTags(args.environment),
          schedules: [
            {
              name: `every ${hours} hours keep ${args.retainCount}`,
              // DLM needs a start time with every interval; slots repeat every `hours` from it.
              createRule: { interval: hours, intervalUnit: "HOURS", times: SNAPSHOT_START_TIME },
              retainRule: { count: args.retainCount },
              copyTags: true,
            },
          ],
        },
        tags,
      },
      // The first run must find the role able to snapshot.
      { parent: this, dependsOn: [attachment] },
    );
    this.registerOutputs({ policyId: this.policy.id, roleArn: this.role.arn });
  }
}
