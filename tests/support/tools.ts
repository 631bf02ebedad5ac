import { execFileSync } from "node:child_process";

/** True when the tests run in CI, where a tier that cannot run must fail instead of skipping. */
export const inCi = process.env.CI === "true";

export function hasCommand(cmd: string): boolean {
  try {
    execFileSync("sh", ["-c", `command -v ${cmd}`], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

export const isRoot = (): boolean => process.getuid?.() === 0;

/**
 * Decide whether a real-daemon tier can run. Outside CI a missing prerequisite skips the
 * tier (returns false); in CI it throws, so the run fails instead of silently skipping.
 */
export function requireTools(tier: string, commands: readonly string[], needsRoot = true): boolean {
  const missing = commands.filter((c) => !hasCommand(c));
  const problems = [
    ...missing.map((c) => `command "${c}" not found`),
    ...(needsRoot && !isRoot() ? ["needs root (network namespaces, mounts)"] : []),
  ];
  if (problems.length === 0) return true;
  const message = `${tier}: cannot run: ${problems.join("; ")}`;
  if (inCi) throw new Error(message);
  console.warn(`${message} (skipped outside CI)`);
  return false;
}
