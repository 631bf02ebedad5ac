import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";

export interface BundleBucketArgs {
  /** Stack name; the bucket name starts with `pypi-<environment>-bundles-`. */
  readonly environment: string;
  /**
   * Protect and retain the bucket (its versions are the config history).
   * @default false
   */
  readonly retain?: boolean;
  /**
   * Tags on every resource.
   * @default {}
   */
  readonly tags?: Readonly<Record<string, string>>;
}

/** Every public access switch of an S3 bucket, on. */
export const BLOCK_ALL_PUBLIC_ACCESS = {
  blockPublicAcls: true,
  blockPublicPolicy: true,
  ignorePublicAcls: true,
  restrictPublicBuckets: true,
} as const;

/** The provider refuses a longer `bucketPrefix`. */
export const BUCKET_PREFIX_MAX = 37;

export const bundleBucketPrefix = (environment: string): string => `pypi-${environment}-bundles-`;

export function validateBundleBucketArgs(args: BundleBucketArgs): void {
  // The schema allows 32-character stack names; the prefix derived from them has a lower limit.
  const prefix = bundleBucketPrefix(args.environment);
  if (prefix.length > BUCKET_PREFIX_MAX)
    throw new Error(
      `BundleBucket: environment ${JSON.stringify(args.environment)} is too long; the bucket prefix ${prefix} must be at most ${BUCKET_PREFIX_MAX} characters`,
    );
}

/** Private, versioned, encrypted bucket the nodes fetch their config bundles from. */
export class BundleBucket extends pulumi.ComponentResource {
  readonly bucket: aws.s3.Bucket;
  /** Completes once public access is blocked and encryption is on: write objects after it. */
  readonly ready: pulumi.Resource[];

  constructor(name: string, args: BundleBucketArgs, opts: pulumi.ComponentResourceOptions = {}) {
    super("pypi:infra:BundleBucket", name, {}, opts);
    validateBundleBucketArgs(args);
    const retain = args.retain ?? false;
    const parent = { parent: this };
    this.bucket = new aws.s3.Bucket(
      `${name}-bucket`,
      { bucketPrefix: bundleBucketPrefix(args.environment), forceDestroy: !retain, tags: args.tags },
      { parent: this, protect: retain, retainOnDelete: retain },
    );
    const bucket = this.bucket.id;
    const block = new aws.s3.BucketPublicAccessBlock(
      `${name}-public-access`,
      { bucket, ...BLOCK_ALL_PUBLIC_ACCESS },
      parent,
    );
    const ownership = new aws.s3.BucketOwnershipControls(
      `${name}-ownership`,
      { bucket, rule: { objectOwnership: "BucketOwnerEnforced" } },
      parent,
    );
    const encryption = new aws.s3.BucketServerSideEncryptionConfiguration(
      `${name}-encryption`,
      { bucket, rules: [{ applyServerSideEncryptionByDefault: { sseAlgorithm: "AES256" } }] },
      parent,
    );
    const versioning = new aws.s3.BucketVersioning(
      `${name}-versioning`,
      { bucket, versioningConfiguration: { status: "Enabled" } },
      parent,
    );
    this.ready = [block, ownership, encryption, versioning];
    this.registerOutputs({ bucket: this.bucket.bucket });
  }
}
