import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { copyOnWriteMounts, namespaceSetup } from "../../lab/lib/holder.js";
import { type Isolation, isolatedArgv, shq } from "../../lab/lib/netns.js";

/** Directories each sandboxed node gets a private, writable copy of (overlayfs upper layers). */
const PRIVATE_TREES = ["/etc", "/var/lib", "/var/log", "/srv", "/opt", "/usr/local/sbin", "/usr/local/lib"];

/** No network but loopback, and a PID namespace so every daemon the script starts dies with it. */
const SANDBOX: Isolation = { net: true, uts: true, pid: true };

export interface SandboxResult {
  readonly status: number;
  readonly stdout: string;
  readonly stderr: string;
}

/**
 * Runs `script` (sh) as root in a private mount + UTS namespace that looks like a fresh node:
 * its own hostname, copy-on-write /etc, /var/lib, /var/log, /srv, /opt, an empty /run, no
 * network but loopback, and its own PID namespace, so every daemon it starts dies with it.
 * Nothing it writes reaches the host.
 */
export function runInNodeSandbox(
  hostname: string,
  script: string,
  env: Record<string, string> = {},
): SandboxResult {
  const scratch = mkdtempSync(join(tmpdir(), `pypi-sandbox-${hostname}-`));
  try {
    const setup = [
      "set -e",
      ...namespaceSetup(SANDBOX),
      ...copyOnWriteMounts(PRIVATE_TREES, scratch),
      "mount -t tmpfs tmpfs /run",
      "mkdir -p /run/lock /run/sshd /run/postgresql /run/haproxy",
      `hostname ${shq(hostname)}`,
      "set +e",
    ].join("\n");
    const [cmd, ...args] = isolatedArgv(SANDBOX, `${setup}\n${script}`);
    const result = spawnSync(cmd as string, args, {
      encoding: "utf8",
      env: { ...process.env, ...env },
      timeout: 120_000,
    });
    return { status: result.status ?? -1, stdout: result.stdout, stderr: result.stderr };
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
}
