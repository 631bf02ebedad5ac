/**
 * The backup buckets ("nothing lost, ever"): how each is hardened per stack, and that no node
 * role can remove a version or loosen what keeps them, while the db role writes the repository
 * and the app roles the file copies, and nothing else.
 */
import * as pulumi from "@pulumi/pulumi";
import { beforeAll, describe, expect, test } from "vitest";
import {
  backupBucketPolicy,
  NONCURRENT_GRACE_DAYS,
  validateBackupBucketsArgs,
} from "../../src/components/backup-buckets.js";
import { BACKUP_TAMPER_ACTIONS, backupStatements } from "../../src/components/iam.js";
import { parseConfig } from "../../src/config.js";
import { PypiStack } from "../../src/stack.js";
import type { NodeRole } from "../../src/topology.js";
import {
  type Built,
  builtStack,
  createMocks,
  type Recorded,
  rawConfig,
  resolve,
  type StackName,
  settle,
  tlsFor,
  withCheapStackTraces,
} from "./harness.js";
import { asList, covers, groupOfNode, type Statement } from "./iam.js";

const T = {
  bucket: "aws:s3/bucket:Bucket",
  block: "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock",
  sse: "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
  versioning: "aws:s3/bucketVersioning:BucketVersioning",
  lifecycle: "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration",
  policy: "aws:s3/bucketPolicy:BucketPolicy",
  lock: "aws:s3/bucketObjectLockConfiguration:BucketObjectLockConfiguration",
  lockV2: "aws:s3/bucketObjectLockConfigurationV2:BucketObjectLockConfigurationV2",
} as const;

/** The designed Object Lock days of each stack file, written out by hand. */
const LOCK_DAYS: Record<StackName, number> = { prod: 30, staging: 0 };

const BUCKETS = [
  { name: "pypi-backups-repository", prefix: "backups", path: "pgbackrest" },
  { name: "pypi-backups-files", prefix: "files", path: "packages" },
] as const;

/** Whether a statement's resource (an ARN pattern) covers this bucket or objects in it. */
const namesBucket = (resource: string, arn: string): boolean =>
  resource.startsWith(`${arn}/`) || covers(resource, arn) || covers(resource, `${arn}/some/key`);

const bucketNamed = (b: Built, name: string): Recorded => {
  const r = b.ofType(T.bucket).find((x) => x.name === name);
  if (!r) throw new Error(`no bucket ${name}`);
  return r;
};
const companions = (b: Built, type: string, bucket: Recorded) =>
  b.ofType(type).filter((r) => r.inputs.bucket === bucket.id);

describe.each(["prod", "staging"] as const)("backup buckets of the %s stack", (stack) => {
  let b: Built;
  beforeAll(async () => {
    b = await builtStack(stack);
  }, 60_000);
  const days = LOCK_DAYS[stack];

  test("the stack file sets the designed Object Lock days", () => {
    expect(b.config.backup.objectLockDays).toBe(days);
  });

  test.each(BUCKETS)(
    "$name: private, encrypted, versioned, TLS-only, versions kept past the lock",
    (spec) => {
      const bucket = bucketNamed(b, spec.name);
      const arn = `arn:aws:s3:::${bucket.id}`;
      expect(bucket.inputs.bucketPrefix).toBe(`pypi-${stack}-${spec.prefix}-`);
      expect(bucket.state.arn).toBe(arn);
      const one = (type: string) => {
        const found = companions(b, type, bucket);
        expect(found, type).toHaveLength(1);
        return found[0]?.inputs ?? {};
      };
      expect(one(T.block)).toEqual({
        bucket: bucket.id,
        blockPublicAcls: true,
        blockPublicPolicy: true,
        ignorePublicAcls: true,
        restrictPublicBuckets: true,
      });
      expect(one(T.sse).rules).toEqual([{ applyServerSideEncryptionByDefault: { sseAlgorithm: "AES256" } }]);
      expect(one(T.versioning).versioningConfiguration).toEqual({ status: "Enabled" });
      expect(one(T.lifecycle).rules).toEqual([
        {
          id: "noncurrent-versions",
          status: "Enabled",
          filter: { prefix: "" },
          noncurrentVersionExpiration: { noncurrentDays: days + 30 },
          abortIncompleteMultipartUpload: { daysAfterInitiation: 7 },
          expiration: { expiredObjectDeleteMarker: true },
        },
      ]);
      expect(NONCURRENT_GRACE_DAYS).toBe(30);
      // The policy as written out by hand, with this bucket's ARN.
      expect(JSON.parse(String(one(T.policy).policy))).toEqual({
        Version: "2012-10-17",
        Statement: [
          {
            Sid: "DenyInsecureTransport",
            Effect: "Deny",
            Principal: "*",
            Action: "s3:*",
            Resource: [arn, `${arn}/*`],
            Condition: { Bool: { "aws:SecureTransport": "false" } },
          },
          {
            Sid: "DenyObjectVersionDeletion",
            Effect: "Deny",
            Principal: "*",
            Action: "s3:DeleteObjectVersion",
            Resource: `${arn}/*`,
          },
        ],
      });
    },
  );

  test.each(BUCKETS)("$name: Object Lock exactly when the stack sets days", (spec) => {
    const bucket = bucketNamed(b, spec.name);
    const locks = companions(b, T.lock, bucket);
    if (stack === "prod") {
      expect(bucket.inputs.objectLockEnabled).toBe(true);
      expect(locks).toHaveLength(1);
      expect(locks[0]?.inputs.rule).toEqual({ defaultRetention: { mode: "COMPLIANCE", days: 30 } });
      // A compliance lock cannot be emptied anyway, and prod retains its buckets.
      expect(bucket.inputs.forceDestroy).toBe(false);
    } else {
      expect(bucket.inputs.objectLockEnabled).toBe(false);
      expect(locks).toEqual([]);
      expect(bucket.inputs.forceDestroy).toBe(true);
    }
    expect(b.ofType(T.lockV2)).toEqual([]);
    expect(b.ofType(T.lock)).toHaveLength(stack === "prod" ? 2 : 0);
  });

  test("the backup output names both buckets, the lock and the topology's locations", async () => {
    const repository = bucketNamed(b, "pypi-backups-repository");
    const files = bucketNamed(b, "pypi-backups-files");
    const out = await resolve(b.pypi.backup);
    expect(out).toEqual({
      repositoryBucket: repository.id,
      fileCopyBucket: files.id,
      objectLockDays: days,
      repository: `s3://${repository.id}/pgbackrest`,
      fileCopies: `s3://${files.id}/packages`,
    });
    expect(b.outputs.topology.backup.repository).toBe(out.repository);
    expect(b.outputs.topology.backup.fileCopies).toBe(out.fileCopies);
    expect(repository.id).toMatch(new RegExp(`^pypi-${stack}-backups-[0-9a-f]{8}$`));
    expect(files.id).toMatch(new RegExp(`^pypi-${stack}-files-[0-9a-f]{8}$`));
  });

  describe("IAM of every node role on the backup buckets", () => {
    const arns = () => ({
      repository: String(bucketNamed(b, "pypi-backups-repository").state.arn),
      fileCopies: String(bucketNamed(b, "pypi-backups-files").state.arn),
    });
    const roleOf = (node: string): NodeRole => {
      const role = b.outputs.topology.nodes.find((n) => n.name === node)?.role;
      if (!role) throw new Error(`no node ${node}`);
      return role;
    };
    const allows = (statements: readonly Statement[]) => statements.filter((s) => s.Effect === "Allow");
    /** Statements with an S3 action on this bucket, by name or by wildcard. */
    const naming = (statements: readonly Statement[], arn: string) =>
      statements.filter(
        (s) =>
          s.Action.some((a) => covers(a, "s3:x") || a.toLowerCase().startsWith("s3:")) &&
          asList(s.Resource).some((r) => namesBucket(r, arn)),
      );

    test("no node may DeleteObjectVersion or loosen the buckets, by name or by wildcard", () => {
      const nodes = [...groupOfNode(b)];
      expect(nodes.map(([n]) => n).sort()).toEqual(b.outputs.topology.nodes.map((n) => n.name).sort());
      for (const [node, g] of nodes) {
        for (const s of g.statements) {
          expect("NotAction" in s, `${node} ${s.Sid}`).toBe(false);
          if (s.Effect !== "Allow") continue;
          for (const action of BACKUP_TAMPER_ACTIONS)
            expect(
              s.Action.filter((a) => covers(a, action)),
              `${node} ${s.Sid} allows ${action}`,
            ).toEqual([]);
        }
      }
    });

    test("every node role carries the explicit Deny on both buckets and their objects", () => {
      const { repository, fileCopies } = arns();
      for (const [node, g] of groupOfNode(b)) {
        const deny = g.statements.filter((s) => s.Sid === "DenyBackupTampering");
        expect(deny, node).toHaveLength(1);
        expect(deny[0]?.Effect).toBe("Deny");
        expect(deny[0]?.Condition).toBeUndefined();
        expect([...(deny[0]?.Action ?? [])].sort()).toEqual(
          [
            "s3:DeleteObjectVersion",
            "s3:PutBucketVersioning",
            "s3:PutBucketObjectLockConfiguration",
            "s3:PutObjectRetention",
            "s3:PutObjectLegalHold",
            "s3:BypassGovernanceRetention",
            "s3:PutLifecycleConfiguration",
            "s3:PutBucketPolicy",
            "s3:DeleteBucketPolicy",
            "s3:DeleteBucket",
          ].sort(),
        );
        expect(asList(deny[0]?.Resource).sort()).toEqual(
          [repository, `${repository}/*`, fileCopies, `${fileCopies}/*`].sort(),
        );
      }
    });

    test("the db role writes the repository only; the app roles the file copies only; balancers neither", () => {
      const { repository, fileCopies } = arns();
      for (const [node, g] of groupOfNode(b)) {
        const role = roleOf(node);
        const mine = allows(g.statements);
        const onRepository = naming(mine, repository);
        const onFiles = naming(mine, fileCopies);
        const put = mine
          .filter((s) => s.Action.some((a) => covers(a, "s3:PutObject")))
          .flatMap((s) => asList(s.Resource));
        if (role === "db") {
          expect(put, node).toEqual([`${repository}/pgbackrest/*`]);
          expect(onFiles, node).toEqual([]);
          expect(onRepository, node).toEqual([
            {
              Sid: "WriteBackupRepository",
              Effect: "Allow",
              Action: ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
              Resource: `${repository}/pgbackrest/*`,
            },
            {
              Sid: "ListBackupRepository",
              Effect: "Allow",
              Action: ["s3:ListBucket"],
              Resource: repository,
              Condition: { StringLike: { "s3:prefix": ["pgbackrest/", "pgbackrest/*"] } },
            },
          ]);
        } else if (role === "app") {
          expect(put, node).toEqual([`${fileCopies}/packages/*`]);
          expect(onRepository, node).toEqual([]);
          expect(onFiles, node).toEqual([
            {
              Sid: "WriteFileCopies",
              Effect: "Allow",
              Action: ["s3:GetObject", "s3:PutObject"],
              Resource: `${fileCopies}/packages/*`,
            },
            {
              Sid: "ListFileCopies",
              Effect: "Allow",
              Action: ["s3:ListBucket"],
              Resource: fileCopies,
              Condition: { StringLike: { "s3:prefix": ["packages/", "packages/*"] } },
            },
          ]);
          // The app servers never delete a copy.
          expect(
            mine.filter((s) => s.Action.some((a) => covers(a, "s3:DeleteObject"))),
            node,
          ).toEqual([]);
        } else {
          expect(put, node).toEqual([]);
          expect([...onRepository, ...onFiles], node).toEqual([]);
        }
      }
    });
  });
});

describe("protection and locks follow the config", () => {
  /** A stack build that also records each bucket's resource options (the mocks never see options). */
  async function buildRecording(stack: StackName, overrides: Record<string, unknown> = {}) {
    return withCheapStackTraces(async () => {
      const options: Record<string, pulumi.CustomResourceOptions> = {};
      const record: pulumi.ResourceTransformation = ({ type, name, opts }) => {
        if (type === T.bucket) options[name] = opts as pulumi.CustomResourceOptions;
        return undefined;
      };
      const recorder = createMocks();
      await pulumi.runtime.setMocks(recorder.mocks, "pypi-infra", stack, false);
      const config = parseConfig(rawConfig(stack, overrides), stack);
      const pypi = new PypiStack(
        "pypi",
        { config, tls: tlsFor(config.tlsSource) },
        { transformations: [record] },
      );
      const backup = await resolve(pypi.backup);
      await settle(recorder.resources);
      const ofType = (type: string) => recorder.resources.filter((r) => r.type === type);
      return { options, backup, ofType, resources: recorder.resources };
    });
  }
  const names = ["pypi-backups-files", "pypi-backups-repository", "pypi-bundles-bucket"];

  test("prod: every bucket protected and retained on delete", async () => {
    const { options } = await buildRecording("prod");
    expect(Object.keys(options).sort()).toEqual(names);
    for (const [name, o] of Object.entries(options)) {
      expect(o.protect, name).toBe(true);
      expect(o.retainOnDelete, name).toBe(true);
    }
  }, 60_000);

  test("staging: neither protected nor retained", async () => {
    const { options } = await buildRecording("staging");
    expect(Object.keys(options).sort()).toEqual(names);
    for (const [name, o] of Object.entries(options)) {
      expect(o.protect, name).toBe(false);
      expect(o.retainOnDelete, name).toBe(false);
    }
  }, 60_000);

  test("staging with a 7-day lock: locked buckets lose forceDestroy, retention and lifecycle follow", async () => {
    const b = await buildRecording("staging", { "pypi-infra:backupObjectLockDays": 7 });
    expect(b.backup.objectLockDays).toBe(7);
    const buckets = b.ofType(T.bucket);
    const force = Object.fromEntries(buckets.map((x) => [x.name, x.inputs.forceDestroy]));
    expect(force).toEqual({
      "pypi-bundles-bucket": true,
      "pypi-backups-repository": false,
      "pypi-backups-files": false,
    });
    for (const spec of BUCKETS) {
      const bucket = buckets.find((x) => x.name === spec.name);
      expect(bucket?.inputs.objectLockEnabled).toBe(true);
      const of = (type: string) => b.ofType(type).filter((r) => r.inputs.bucket === bucket?.id);
      expect(of(T.lock).map((l) => l.inputs.rule)).toEqual([
        { defaultRetention: { mode: "COMPLIANCE", days: 7 } },
      ]);
      expect(
        of(T.lifecycle).map(
          (l) =>
            (l.inputs.rules as { noncurrentVersionExpiration: unknown }[])[0]?.noncurrentVersionExpiration,
        ),
      ).toEqual([{ noncurrentDays: 37 }]);
    }
  }, 60_000);
});

describe("pure parts", () => {
  test("validation errors name the arg, the value and what is allowed", () => {
    expect(() => validateBackupBucketsArgs({ environment: "prod" })).not.toThrow();
    expect(() => validateBackupBucketsArgs({ environment: "prod", objectLockDays: 0 })).not.toThrow();
    expect(() => validateBackupBucketsArgs({ environment: "prod", objectLockDays: 36500 })).not.toThrow();
    expect(() => validateBackupBucketsArgs({ environment: "x".repeat(23) })).not.toThrow();
    expect(() => validateBackupBucketsArgs({ environment: "x".repeat(24) })).toThrow(
      `BackupBuckets: environment "${"x".repeat(24)}" is too long; the bucket prefix pypi-${"x".repeat(24)}-backups- must be at most 37 characters`,
    );
    const allowed = "expected a whole number of days (0: no Object Lock) from 0 to 36500";
    for (const bad of [-1, 1.5, 36501, Number.NaN])
      expect(() => validateBackupBucketsArgs({ environment: "prod", objectLockDays: bad })).toThrow(
        `BackupBuckets: objectLockDays ${bad} is not valid; ${allowed}`,
      );
    expect(() =>
      validateBackupBucketsArgs({ environment: "prod", objectLockDays: "30" as unknown as number }),
    ).toThrow(`BackupBuckets: objectLockDays "30" is not valid; ${allowed}`);
  });

  test("statement builders: each role gets its own bucket, every role the Deny", () => {
    const arns = { repository: "arn:aws:s3:::r", fileCopies: "arn:aws:s3:::f" };
    const sids = (role: NodeRole) => backupStatements(role, arns).map((s) => s.Sid);
    expect(sids("db")).toEqual(["WriteBackupRepository", "ListBackupRepository", "DenyBackupTampering"]);
    expect(sids("app")).toEqual(["WriteFileCopies", "ListFileCopies", "DenyBackupTampering"]);
    expect(sids("balancer")).toEqual(["DenyBackupTampering"]);
    expect(backupStatements("db", undefined)).toEqual([]);
    expect(JSON.stringify(backupStatements("db", arns).slice(0, 2))).not.toContain(arns.fileCopies);
    expect(JSON.stringify(backupStatements("app", arns).slice(0, 2))).not.toContain(arns.repository);
  });

  test("the wildcard matchers the IAM tests rely on", () => {
    const arn = "arn:aws:s3:::pypi-prod-backups-0123abcd";
    expect(namesBucket("*", arn)).toBe(true);
    expect(namesBucket("arn:aws:s3:::pypi-*", arn)).toBe(true);
    expect(namesBucket(`${arn}/pgbackrest/*`, arn)).toBe(true);
    expect(namesBucket(arn, arn)).toBe(true);
    expect(namesBucket("arn:aws:s3:::pypi-prod-bundles-0123abcd/*", arn)).toBe(false);
    expect(namesBucket(`${arn}0`, arn)).toBe(false);
    expect(covers("s3:*", "s3:DeleteObjectVersion")).toBe(true);
    expect(covers("s3:Delete*", "s3:DeleteObjectVersion")).toBe(true);
    expect(covers("*", "s3:DeleteObjectVersion")).toBe(true);
    expect(covers("S3:deleteobjectversion", "s3:DeleteObjectVersion")).toBe(true);
    expect(covers("s3:DeleteObject", "s3:DeleteObjectVersion")).toBe(false);
    expect(covers("s3:GetObject", "s3:GetObjectVersion")).toBe(false);
    expect(covers("s3:Put?bject", "s3:PutObject")).toBe(true);
  });

  test("the bucket policy is deny-only", () => {
    const doc = JSON.parse(backupBucketPolicy("arn:aws:s3:::x"));
    expect(doc.Statement.map((s: { Effect: string }) => s.Effect)).toEqual(["Deny", "Deny"]);
  });
});
