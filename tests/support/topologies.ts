import { execFileSync } from "node:child_process";
import { chmodSync, mkdirSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname } from "node:path";
import { stackConfigMap } from "../../lab/lib/pulumi-yaml.js";
import { parseConfig } from "../../src/config.js";
import { pgBinDir } from "../../src/layout.js";
import { buildTopology, planNodes } from "../../src/plan.js";
import type { Topology } from "../../src/topology.js";

export type Shape = "staging" | "prod";

/**
 * A deployment shaped like the staging or prod stack: the stack file's config through the same
 * parse and plan as `pulumi up`, with fixed AWS-like ids. `pgVersion` overrides the major without
 * validation, for renderer tests of dialects a parsed topology no longer allows.
 */
export function topologyFor(shape: Shape, pgVersion = 15): Topology {
  const cfg = parseConfig(stackConfigMap(shape), shape);
  const fips = shape === "prod" ? ["198.51.100.10", "198.51.100.11"] : ["198.51.100.20"];
  const t = buildTopology(cfg, planNodes(cfg), {
    floatingIps: fips.map((address, i) => ({ address, allocationId: `eipalloc-0f${i}c0ffee${i}` })),
    routeTableIds: ["rtb-0a1", "rtb-0b2"],
    bucket: `pypi-${shape}-bundles-0abc`,
    backupBucket: `pypi-${shape}-backups-0abc`,
    fileCopyBucket: `pypi-${shape}-files-0abc`,
  });
  return pgVersion === t.postgres.version
    ? t
    : { ...t, postgres: { ...t.postgres, version: pgVersion, binDir: pgBinDir(pgVersion) } };
}

/**
 * The same deployment driven by the agent's lab backend (no AWS, no systemd). The backup
 * buckets become directories beside the bundles (see `prepareBackupDirs`): no node ever reaches S3.
 */
export function asLab(t: Topology, bundleLocation = "/var/lib/pypi-lab"): Topology {
  return {
    ...t,
    backend: "lab",
    bundleLocation,
    nodes: t.nodes.map((n) => ({ ...n, interface: "eth0" })),
    backup: {
      ...t.backup,
      repository: `${bundleLocation}/backup/pgbackrest`,
      fileCopies: `${bundleLocation}/backup/files`,
    },
  };
}

/** The stand-ins for the backup buckets of an `asLab` topology, owned by the users that write them. */
export function prepareBackupDirs(t: Topology): void {
  for (const [dir, user] of [
    [t.backup.repository, "postgres"],
    [t.backup.fileCopies, "www-data"],
  ] as const) {
    mkdirSync(dir, { recursive: true });
    execFileSync("chown", [`${user}:${user}`, dir]);
    chmodSync(dir, 0o750);
    // A test's root is a private mkdtemp directory: the writers must be able to pass through it.
    for (let up = dirname(dir); up !== "/" && up !== tmpdir(); up = dirname(up))
      chmodSync(up, statSync(up).mode | 0o111);
  }
}

/** Replace the app runtime (appserver, fcgid). */
export const withRuntime = (t: Topology, runtime: Topology["app"]["runtime"]): Topology => ({
  ...t,
  app: { ...t.app, runtime },
});
