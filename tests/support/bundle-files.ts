import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { bundleDirEntries } from "../../src/bundle-dir.js";
import type { NodeBundle } from "../../src/bundle-types.js";

/** Writes a bundle in the form the agent reads (manifest, secrets, files/...) and returns its dir. */
export function writeBundleDir(bundle: NodeBundle, parent?: string): string {
  const dir = mkdtempSync(join(parent ?? tmpdir(), `bundle-${bundle.node}-`));
  for (const [relative, content] of bundleDirEntries(bundle)) {
    const path = join(dir, relative);
    mkdirSync(dirname(path), { recursive: true });
    writeFileSync(path, content);
  }
  return dir;
}

/** The agent script as shipped inside a bundle directory. */
export const agentIn = (bundleDir: string): string => join(bundleDir, "files/usr/local/sbin/pypi-node");
