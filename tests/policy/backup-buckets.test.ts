import { beforeAll, describe, expect, test } from "vitest";
import { backupVersioningViolations, type StackResource } from "../../policy/policies.js";
import { BACKUP_BUCKET_NAME, backupBucketVersioned, isBackupBucket, T } from "../../policy/rules.js";
import { type Built, builtStack } from "../stack/harness.js";
import { firstPreview, runPack, stackResources } from "./pack.js";

describe("s3-backup-buckets-versioned", () => {
  const enabled = { type: T.bucketVersioning, props: { versioningConfiguration: { status: "Enabled" } } };

  test("backup buckets are recognised by name or name prefix, other buckets are not", () => {
    for (const name of ["pypi-prod-backups-", "pypi-staging-files-0abc", "pypi-a-b-backups-x"])
      expect(BACKUP_BUCKET_NAME.test(name), name).toBe(true);
    for (const name of ["pypi-prod-bundles-", "pypi-backups-", "backups-pypi-prod-", "pypi-prod-filesx-"])
      expect(BACKUP_BUCKET_NAME.test(name), name).toBe(false);
    expect(isBackupBucket({ bucketPrefix: "pypi-prod-files-" })).toBe(true);
    expect(isBackupBucket({ bucket: "pypi-prod-backups-0abc" })).toBe(true);
    expect(isBackupBucket({ bucketPrefix: "pypi-prod-bundles-" })).toBe(false);
  });

  test("a backup bucket needs versioning Enabled and nothing suspending it", () => {
    const props = { bucketPrefix: "pypi-prod-backups-" };
    expect(backupBucketVersioned({ props, companions: [enabled] })).toEqual([]);
    expect(backupBucketVersioned({ props, companions: [] })).toEqual([
      "is a backup bucket without versioning; add a BucketVersioning with status Enabled",
    ]);
    const suspended = {
      type: T.bucketVersioningV2,
      props: { versioningConfiguration: { status: "Suspended" } },
    };
    expect(backupBucketVersioned({ props, companions: [enabled, suspended] })).toEqual([
      'is a backup bucket with versioning status "Suspended"; it must be "Enabled"',
    ]);
    // The deprecated inline block counts both ways.
    expect(
      backupBucketVersioned({ props: { ...props, versioning: { enabled: true } }, companions: [] }),
    ).toEqual([]);
    expect(
      backupBucketVersioned({ props: { ...props, versioning: { enabled: false } }, companions: [enabled] }),
    ).toHaveLength(1);
    // Not a backup bucket: not this rule's business.
    expect(backupBucketVersioned({ props: { bucketPrefix: "pypi-prod-bundles-" }, companions: [] })).toEqual(
      [],
    );
  });

  describe.each(["staging", "prod"] as const)("on the %s stack", (stack) => {
    let built: Built;
    let resources: StackResource[];
    beforeAll(async () => {
      built = await builtStack(stack);
      resources = stackResources(built, stack);
    }, 60_000);
    const bucket = (name: string) => {
      const r = resources.find((x) => x.type === T.bucket && x.name === name);
      if (!r) throw new Error(`no bucket ${name}`);
      return r;
    };
    const fired = async (rs: readonly StackResource[]) =>
      [...new Set((await runPack(rs)).map((v) => v.policy))].sort();

    test("both backup buckets are seen and pass, also in a first preview", () => {
      const backups = resources.filter((r) => r.type === T.bucket && isBackupBucket(r.props));
      expect(backups.map((r) => r.name).sort()).toEqual(["pypi-backups-files", "pypi-backups-repository"]);
      expect(backupVersioningViolations(resources)).toEqual([]);
      expect(backupVersioningViolations(firstPreview(resources))).toEqual([]);
    });

    test.each(["pypi-backups-repository", "pypi-backups-files"])(
      "%s without its BucketVersioning, or with it suspended, turns the pack red",
      async (name) => {
        const target = bucket(name);
        const isMine = (r: StackResource) =>
          r.type === T.bucketVersioning && r.props.bucket === target.props.id;
        expect(resources.filter(isMine)).toHaveLength(1);
        expect(await fired(resources.filter((r) => !isMine(r)))).toEqual(["s3-backup-buckets-versioned"]);
        const suspended = resources.map((r) =>
          isMine(r) ? { ...r, props: { ...r.props, versioningConfiguration: { status: "Suspended" } } } : r,
        );
        const violations = (await runPack(suspended)).filter(
          (v) => v.policy === "s3-backup-buckets-versioned",
        );
        expect(violations).toEqual([
          {
            policy: "s3-backup-buckets-versioned",
            message: `${name}: is a backup bucket with versioning status "Suspended"; it must be "Enabled"`,
            urn: target.urn,
          },
        ]);
      },
    );

    test("the bundle bucket is not held to it", async () => {
      const bundles = bucket("pypi-bundles-bucket");
      const others = resources.filter(
        (r) => !(r.type === T.bucketVersioning && r.props.bucket === bundles.props.id),
      );
      expect(others).toHaveLength(resources.length - 1);
      expect(await fired(others)).toEqual([]);
    });
  });
});
