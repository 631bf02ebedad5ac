import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import { atoms } from "../schema.js";
import { BUCKET_PREFIX_MAX } from "./bundle-bucket.js";

export interface BackupBucketsArgs {
  /** Stack name; the buckets' names start with `pypi-<environment>-backups-` and `pypi-<environment>-files-`. */
  readonly environment: string;
  /**
   * S3 Object Lock default retention (COMPLIANCE mode) in days on both buckets; 0: no Object
   * Lock. Changing it between 0 and more than 0 replaces both buckets (see BackupBuckets).
   * @default 0
   */
  readonly objectLockDays?: number;
  /**
   * Protect and retain the buckets (deletionProtection).
   * @default false
   */
  readonly retain?: boolean;
  /**
   * Tags on every resource.
   * @default {}
   */
  readonly tags?: Readonly<Record<string, string>>;
}

export const backupBucketPrefix = (environment: string): string => `pypi-${environment}-backups-`;
export const fileCopyBucketPrefix = (environment: string): string => `pypi-${environment}-files-`;

/** Key prefixes the nodes write under: pgBackRest's `repo1-path` and the file copies. */
export const REPOSITORY_PREFIX = "pgbackrest";
export const FILE_COPY_PREFIX = "packages";

/** Noncurrent versions are kept this many days past the lock (or past becoming noncurrent, unlocked). */
export const NONCURRENT_GRACE_DAYS = 30;
export const ABORT_MULTIPART_DAYS = 7;

export function validateBackupBucketsArgs(args: BackupBucketsArgs): void {
  for (const prefix of [backupBucketPrefix(args.environment), fileCopyBucketPrefix(args.environment)])
    if (prefix.length > BUCKET_PREFIX_MAX)
      throw new Error(
        `BackupBuckets: environment ${JSON.stringify(args.environment)} is too long; the bucket prefix ${prefix} must be at most ${BUCKET_PREFIX_MAX} characters`,
      );
  const days = args.objectLockDays ?? 0;
  if (!atoms.objectLockDays.schema.safeParse(days).success)
    throw new Error(
      `BackupBuckets: objectLockDays ${typeof days === "number" ? String(days) : JSON.stringify(days)} is not valid; expected ${atoms.objectLockDays.allowed}`,
    );
}

/** The statements of the bucket policy: TLS only, and no principal deletes an object version. */
export function backupBucketPolicy(bucketArn: string): string {
  return JSON.stringify({
    Version: "2012-10-17",
    Statement: [
      {
        Sid: "DenyInsecureTransport",
        Effect: "Deny",
        Principal: "*",
        Action: "s3:*",
        Resource: [bucketArn, `${bucketArn}/*`],
        Condition: { Bool: { "aws:SecureTransport": "false" } },
      },
      {
        // A delete in a versioned bucket only adds a delete marker; removing a version is what a
        // compromised node or a bad version-aware cleanup would need. It binds every principal,
        // admins included, so lifting it takes a stack change. Lifecycle expiry is not a request
        // and still runs.
        Sid: "DenyObjectVersionDeletion",
        Effect: "Deny",
        Principal: "*",
        Action: "s3:DeleteObjectVersion",
        Resource: `${bucketArn}/*`,
      },
    ],
  });
}

/**
 * The two buckets backups land in: pgBackRest's repository (`pgbackrest/`) and a copy of every
 * registered package file (`packages/`). Each is private, encrypted, versioned, TLS-only, keeps
 * noncurrent versions for the lock period plus NONCURRENT_GRACE_DAYS, and refuses version
 * deletion to everyone.
 *
 * With objectLockDays > 0 both carry Object Lock with a COMPLIANCE default retention: no one,
 * root included, can delete or shorten a version's lock until it runs out. The provider treats
 * the bucket's `objectLockEnabled` as create-only, so changing objectLockDays between 0 and a
 * positive value replaces both buckets (new names, empty): with `retain` the protected old
 * buckets stop the `up`; without it the old ones are deleted. Changing a positive value only
 * updates the default retention of new versions.
 */
export class BackupBuckets extends pulumi.ComponentResource {
  /** pgBackRest's repository (`repo1-path=/pgbackrest`). */
  readonly repository: aws.s3.Bucket;
  /** Copies of every registered package file, under `packages/`. */
  readonly fileCopies: aws.s3.Bucket;
  /** Completes once both buckets are private, encrypted, versioned and under their policy: write after it. */
  readonly ready: pulumi.Resource[];

  constructor(name: string, args: BackupBucketsArgs, opts: pulumi.ComponentResourceOptions = {}) {
    super("pypi:infra:BackupBuckets", name, {}, opts);
    validateBackupBucketsArgs(args);
    const settings: BucketSettings = {
      lockDays: args.objectLockDays ?? 0,
      retain: args.retain ?? false,
      tags: args.tags ?? {},
    };
    const repository = hardenedBucket(
      this,
      `${name}-repository`,
      backupBucketPrefix(args.environment),
      settings,
    );
    const fileCopies = hardenedBucket(
      this,
      `${name}-files`,
      fileCopyBucketPrefix(args.environment),
      settings,
    );
    this.repository = repository.bucket;
    this.fileCopies = fileCopies.bucket;
    this.ready = [...repository.ready, ...fileCopies.ready];
    this.registerOutputs({ repository: this.repository.bucket, fileCopies: this.fileCopies.bucket });
  }
}

interface BucketSettings {
  readonly lockDays: number;
  readonly retain: boolean;
  readonly tags: Readonly<Record<string, string>>;
}

function hardenedBucket(
  parent: pulumi.Resource,
  name: string,
  prefix: string,
  { lockDays, retain, tags }: BucketSettings,
): { bucket: aws.s3.Bucket; ready: pulumi.Resource[] } {
  const locked = lockDays > 0;
  const bucket = new aws.s3.Bucket(
    name,
    {
      bucketPrefix: prefix,
      objectLockEnabled: locked,
      // forceDestroy cannot delete versions under a COMPLIANCE lock anyway; with a lock a
      // destroy must wait for the retention to run out.
      forceDestroy: !retain && !locked,
      tags,
    },
    { parent, protect: retain, retainOnDelete: retain },
  );
  const opts = { parent };
  const id = bucket.id;
  const block = new aws.s3.BucketPublicAccessBlock(
    `${name}-public-access`,
    {
      bucket: id,
      blockPublicAcls: true,
      blockPublicPolicy: true,
      ignorePublicAcls: true,
      restrictPublicBuckets: true,
    },
    opts,
  );
  const ownership = new aws.s3.BucketOwnershipControls(
    `${name}-ownership`,
    { bucket: id, rule: { objectOwnership: "BucketOwnerEnforced" } },
    opts,
  );
  // SSE-S3 rather than KMS: a KMS key adds one more thing whose deletion or disabling makes every
  // locked version unreadable, which Object Lock does not prevent, plus key grants for each role
  // and a KMS endpoint for the nodes. Access is already limited by IAM and the bucket policy.
  const encryption = new aws.s3.BucketServerSideEncryptionConfiguration(
    `${name}-encryption`,
    { bucket: id, rules: [{ applyServerSideEncryptionByDefault: { sseAlgorithm: "AES256" } }] },
    opts,
  );
  const versioning = new aws.s3.BucketVersioning(
    `${name}-versioning`,
    { bucket: id, versioningConfiguration: { status: "Enabled" } },
    opts,
  );
  const lifecycle = new aws.s3.BucketLifecycleConfiguration(
    `${name}-lifecycle`,
    {
      bucket: id,
      rules: [
        {
          id: "noncurrent-versions",
          status: "Enabled",
          // The whole bucket; `prefix: ""` is the form every provider version accepts silently.
          filter: { prefix: "" },
          // Past the lock, so S3 never tries to expire a version it must keep.
          noncurrentVersionExpiration: { noncurrentDays: Math.max(lockDays, 0) + NONCURRENT_GRACE_DAYS },
          abortIncompleteMultipartUpload: { daysAfterInitiation: ABORT_MULTIPART_DAYS },
          // pgBackRest's expire leaves a delete marker per WAL file; drop them once alone.
          expiration: { expiredObjectDeleteMarker: true },
        },
      ],
    },
    { parent, dependsOn: [versioning] },
  );
  const policy = new aws.s3.BucketPolicy(
    `${name}-policy`,
    { bucket: id, policy: bucket.arn.apply(backupBucketPolicy) },
    // S3 rejects concurrent changes to one bucket's access settings.
    { parent, dependsOn: [block] },
  );
  const ready: pulumi.Resource[] = [block, ownership, encryption, versioning, lifecycle, policy];
  if (locked)
    ready.push(
      new aws.s3.BucketObjectLockConfiguration(
        `${name}-object-lock`,
        { bucket: id, rule: { defaultRetention: { mode: "COMPLIANCE", days: lockDays } } },
        { parent, dependsOn: [versioning] },
      ),
    );
  return { bucket, ready };
}
