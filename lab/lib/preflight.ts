/** What `npm run lab` needs from the machine: root, and the Debian packages the nodes run. */
import { execFileSync, spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";

/** Packages the lab needs beyond the nodes' own (.ci/debian-packages): its client tools. */
const LAB_CLIENT_PACKAGES = ["python3-pip", "python3"] as const;

export function debianPackages(repoRoot: string): string[] {
  const listed = readFileSync(join(repoRoot, ".ci", "debian-packages"), "utf8")
    .split("\n")
    .map((l) => l.replace(/#.*/, "").trim())
    .filter((l) => l !== "");
  return [...new Set([...listed, ...LAB_CLIENT_PACKAGES])];
}

function installed(pkg: string): boolean {
  // biome-ignore lint/suspicious/noTemplateCurlyInString: a dpkg-query format, not a template
  const r = spawnSync("dpkg-query", ["-W", "-f=${Status}", pkg], { encoding: "utf8" });
  return r.status === 0 && r.stdout.includes("install ok installed");
}

/** Install what is missing with apt-get (only then is the package index refreshed). */
export function ensureDebianPackages(repoRoot: string, log: (msg: string) => void): string[] {
  const missing = debianPackages(repoRoot).filter((p) => !installed(p));
  if (missing.length === 0) return [];
  log(`installing missing Debian packages: ${missing.join(" ")}`);
  const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" };
  execFileSync("apt-get", ["update", "-q"], { stdio: "inherit", env, timeout: 300_000 });
  execFileSync("apt-get", ["install", "-y", "-q", "--no-install-recommends", ...missing], {
    stdio: "inherit",
    env,
    timeout: 600_000,
  });
  return missing;
}

export function requireRoot(): void {
  if (process.getuid?.() !== 0)
    throw new Error("the lab needs root (network namespaces, mounts): run it as root");
}
