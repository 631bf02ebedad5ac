import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** Directories each sandboxed node gets a private, writable copy of (overlayfs upper layers). */
const PRIVATE_TREES = ["/etc", "/var/lib", "/var/log", "/srv", "/opt", "/usr/local/sbin", "/usr/local/lib"];

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
  const mounts = PRIVATE_TREES.map((tree, i) => {
    const upper = join(scratch, `upper${i}`);
    const work = join(scratch, `work${i}`);
    mkdirSync(upper);
    mkdirSync(work);
    return `mount -t overlay overlay -o lowerdir=${tree},upperdir=${upper},workdir=${work} ${tree}`;
  });
  const setup = [
    "set -e",
    ...mounts,
    "mount -t tmpfs tmpfs /run",
    "mkdir -p /run/lock /run/sshd /run/postgresql /run/haproxy",
    `hostname ${hostname}`,
    "set +e",
  ].join("\n");
  try {
    const result = spawnSync(
      "unshare",
      [
        "--mount",
        "--uts",
        "--net",
        "--pid",
        "--mount-proc",
        "--fork",
        "--propagation",
        "private",
        "sh",
        "-c",
        `${setup}\nip link set lo up\n${script}`,
      ],
      { encoding: "utf8", env: { ...process.env, ...env }, timeout: 120_000 },
    );
    return { status: result.status ?? -1, stdout: result.stdout, stderr: result.stderr };
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
}
