import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";

let root: string | undefined;

/**
 * The project's root, found from this module's location rather than the working directory,
 * so `pulumi up`, the tests, the lab and the benchmarks all read the same files.
 */
export function projectRoot(): string {
  if (root) return root;
  for (let dir = __dirname; dir !== dirname(dir); dir = dirname(dir)) {
    const manifest = join(dir, "package.json");
    if (existsSync(manifest) && JSON.parse(readFileSync(manifest, "utf8")).name === "pypi-infra") {
      root = dir;
      return dir;
    }
  }
  throw new Error(`pypi-infra's package.json not found above ${__dirname}`);
}

export const projectFile = (relative: string): string => join(projectRoot(), relative);
