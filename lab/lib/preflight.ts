/**
 * What `npm run lab` needs from the machine: root, the Debian packages the nodes run, and
 * Debian 12's nodejs for the app nodes.
 */
import { execFileSync, spawnSync } from "node:child_process";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  writeFileSync,
} from "node:fs";
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

/** Debian 12's nodejs: the app servers run the index app on it, not on this host's node. */
export const DEBIAN_NODE_MAJOR = 18;
/** Unpacked packages, kept between runs, outside the repository and the run directory. */
export const LAB_CACHE = "/var/cache/pypi-lab";

const aptEnv = () => ({ ...process.env, DEBIAN_FRONTEND: "noninteractive" });

/** The newest nodejs DEBIAN_NODE_MAJOR.x in the apt lists (Debian's, whatever this host runs). */
function debianNodeVersion(): string | undefined {
  const versions = execFileSync("apt-cache", ["madison", "nodejs"], { encoding: "utf8" })
    .split("\n")
    .map((line) => line.split("|")[1]?.trim() ?? "")
    .filter((v) => v.startsWith(`${DEBIAN_NODE_MAJOR}.`));
  return versions.reduce<string | undefined>((best, v) => {
    if (best === undefined) return v;
    return spawnSync("dpkg", ["--compare-versions", v, "gt", best]).status === 0 ? v : best;
  }, undefined);
}

/** nodejs=VERSION and what it needs that this host does not have installed. */
function debianNodePackages(version: string): string[] {
  const closure = execFileSync(
    "apt-cache",
    [
      "depends",
      "--recurse",
      "--no-recommends",
      "--no-suggests",
      "--no-conflicts",
      "--no-breaks",
      "--no-replaces",
      "--no-enhances",
      `nodejs=${version}`,
    ],
    { encoding: "utf8" },
  )
    .split("\n")
    .filter((line) => /^[a-z0-9]/.test(line))
    .map((line) => line.trim());
  const missing = [...new Set(closure)].filter((p) => p !== "nodejs" && !installed(p));
  // libnode is nodejs itself, split out: it must be the same version.
  return [`nodejs=${version}`, ...missing.map((p) => (p.startsWith("libnode") ? `${p}=${version}` : p))];
}

/**
 * Debian's nodejs DEBIAN_NODE_MAJOR.x and the libraries this host lacks, unpacked (never
 * installed) into a tree holding `usr/`, which the app nodes lay over their /usr. Downloads
 * with `apt-get download` only when the cache lacks it; returns the tree.
 */
export function ensureDebianNode(log: (msg: string) => void): string {
  let version = debianNodeVersion();
  if (version === undefined) {
    execFileSync("apt-get", ["update", "-q"], { stdio: "ignore", env: aptEnv(), timeout: 300_000 });
    version = debianNodeVersion();
  }
  if (version === undefined) throw new Error(`no nodejs ${DEBIAN_NODE_MAJOR}.x in the apt lists`);
  const root = join(LAB_CACHE, `nodejs-${version}`);
  if (existsSync(join(root, ".complete"))) return root;
  const packages = debianNodePackages(version);
  log(`unpacking Debian's nodejs ${version} for the app nodes: ${packages.join(" ")}`);
  mkdirSync(LAB_CACHE, { recursive: true });
  const tmp = mkdtempSync(join(LAB_CACHE, ".download-"));
  try {
    execFileSync("apt-get", ["download", "-q", "-o", "APT::Sandbox::User=root", ...packages], {
      cwd: tmp,
      stdio: ["ignore", "ignore", "pipe"],
      env: aptEnv(),
      timeout: 300_000,
    });
    const tree = join(tmp, "root");
    for (const deb of readdirSync(tmp).filter((f) => f.endsWith(".deb")))
      execFileSync("dpkg-deb", ["-x", join(tmp, deb), tree]);
    writeFileSync(join(tree, ".complete"), `${packages.join("\n")}\n`);
    try {
      renameSync(tree, root);
    } catch (err) {
      // Another run unpacked it meanwhile.
      if (!existsSync(join(root, ".complete"))) throw err;
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  return root;
}
