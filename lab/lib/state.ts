/**
 * What a lab run made, recorded before it is made, so `lab:down` can undo a crashed run. Every
 * mount lives in a node's own mount namespace and every process in a node's network namespace,
 * so destroying the namespaces ends both. The nodes' data volumes are loop devices on files in
 * the run directory: they are detached, then the run directory is removed.
 */
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import { detachVolumes } from "./lab-node.js";
import { destroyNamespace, killNamespace, namespacesWithPrefix } from "./netns.js";

/** Every lab namespace starts with this, which is how lab:down finds what no state file lists. */
export const NS_PREFIX = "pypilab-";

export interface LabState {
  readonly startedAt: string;
  readonly pid: number;
  readonly namespaces: string[];
  /** Host directories of the run (removed on teardown). */
  readonly dirs: string[];
}

export class StateFile {
  constructor(readonly path: string) {}

  read(): LabState | undefined {
    if (!existsSync(this.path)) return undefined;
    try {
      return JSON.parse(readFileSync(this.path, "utf8")) as LabState;
    } catch {
      return undefined;
    }
  }

  write(state: LabState): void {
    mkdirSync(dirname(this.path), { recursive: true });
    writeFileSync(this.path, `${JSON.stringify(state, null, 2)}\n`);
  }

  /** Record a namespace or directory before it is created. */
  add(kind: "namespaces" | "dirs", item: string): void {
    const state = this.read() ?? {
      startedAt: new Date().toISOString(),
      pid: process.pid,
      namespaces: [],
      dirs: [],
    };
    if (!state[kind].includes(item)) state[kind].push(item);
    this.write(state);
  }

  remove(): void {
    rmSync(this.path, { force: true });
  }
}

export interface TeardownResult {
  readonly namespaces: string[];
  readonly dirs: string[];
  /** Loop devices detached (the nodes' data volumes). */
  readonly volumes: string[];
  readonly errors: string[];
}

/**
 * Remove everything a run made; idempotent, and safe after a crash or a second call. Without a
 * state file, namespaces are found by prefix and `knownDirs` (the default run directory) removed.
 */
export function teardown(state: StateFile, knownDirs: readonly string[] = []): TeardownResult {
  const recorded = state.read();
  const namespaces = [...new Set([...(recorded?.namespaces ?? []), ...namespacesWithPrefix(NS_PREFIX)])];
  const errors: string[] = [];
  // Kill everywhere first, so no node's daemon reaches a peer that is already gone.
  for (const ns of namespaces) {
    try {
      killNamespace(ns);
    } catch (err) {
      errors.push(`kill ${ns}: ${String(err)}`);
    }
  }
  for (const ns of namespaces) {
    try {
      destroyNamespace(ns);
    } catch (err) {
      errors.push(`delete ${ns}: ${String(err)}`);
    }
  }
  const dirs = [...new Set([...(recorded?.dirs ?? []), ...knownDirs.filter((d) => existsSync(d))])];
  const volumes: string[] = [];
  // Also for a run directory already removed: a deleted backing file keeps its path.
  for (const dir of new Set([...dirs, ...knownDirs])) {
    try {
      volumes.push(...detachVolumes(dir));
    } catch (err) {
      errors.push(`detach volumes under ${dir}: ${String(err)}`);
    }
  }
  for (const dir of dirs) {
    try {
      rmSync(dir, { recursive: true, force: true });
    } catch (err) {
      errors.push(`remove ${dir}: ${String(err)}`);
    }
  }
  if (errors.length === 0) state.remove();
  return { namespaces, dirs, volumes, errors };
}
