import { posix } from "node:path";
import { dataVolumeDevice, paths } from "../layout.js";
import { storagePair, type Topology } from "../topology.js";

/** The one DRBD resource: the package volume replicated between the storage pair. */
export const DRBD_RESOURCE = "pypi";

export const drbdPaths = {
  resource: `/etc/drbd.d/${DRBD_RESOURCE}.res`,
  /** Replaces Debian's, whose `common` section would clash with the one in the secret file. */
  globalCommon: "/etc/drbd.d/global_common.conf",
  /**
   * Written by the agent from the DRBD secret, mode 0600, as `renderDrbdSecretFile` shows. It
   * must exist before drbdadm reads the resource (the include is mandatory), and its name matches
   * neither include of Debian's /etc/drbd.conf (`global_common.conf`, `*.res`).
   */
  secret: `/etc/drbd.d/${DRBD_RESOURCE}.secret`,
  /** The agent's DRBD tool: first bring-up, and the fence-peer and after-resync-target handlers (src/agent/pypi-drbd.sh). */
  tool: `${posix.dirname(paths.agentLib)}/pypi-drbd`,
} as const;

/**
 * Fencing: resource-level (`fencing resource-only`), with Heartbeat as the other path.
 *
 * A Primary that loses its peer, and a disconnected node asked to become Primary, first run the
 * fence-peer handler; a disconnected node is promoted only once the handler reports the peer
 * Outdated or dead. Heartbeat runs R1 mode without Pacemaker, so crm-fence-peer.sh (a CIB
 * constraint) has nothing to talk to. The handler instead asks Heartbeat: a peer it holds dead
 * (`cl_status nodestatus`) is reported dead at once, and a live one is outdated through dopd,
 * Heartbeat's DRBD outdate-peer daemon shipped in Debian's heartbeat package, which messages the
 * peer's dopd over Heartbeat's own authenticated links and has it run `drbdadm outdate`. No new
 * daemon protocol, port, key or SSH trust. Debian 12's dopd has crashed after every request
 * it served in tests/real/dopd.test.ts (free() in its client-disconnect callback); Heartbeat
 * respawns it and the handler retries. Not STONITH: in a partition both sides see a dead peer (on AWS Heartbeat and DRBD
 * share the network), and `after-sb-2pri disconnect` leaves that split to a human.
 *
 * The storage pair's ha.cf must carry these lines. dopd runs as root because it runs `drbdadm
 * outdate` itself; as hacluster that lacks the rights, and dopd maps a failed outdate to 5.
 */
export const DOPD = "/usr/libexec/heartbeat/dopd";
export const dopdHaCfLines: readonly string[] = [`respawn root ${DOPD}`, "apiauth dopd uid=root"];

/** drbd.conf keeps at most this many bytes of `shared-secret`. */
export const DRBD_SECRET_MAX = 64;

/**
 * The single quoting helper for drbd.conf: a double-quoted string with `\` and `"` escaped
 * (the drbdadm scanner unescapes both). Control characters cannot be represented and are rejected.
 */
export function drbdString(field: string, value: string): string {
  if (value === "" || [...value].some((c) => c.charCodeAt(0) < 0x20 || c === "\x7f")) {
    throw new Error(
      `drbd: ${field} must be non-empty without control characters; got ${JSON.stringify(value)}`,
    );
  }
  return `"${value.replace(/[\\"]/g, (c) => `\\${c}`)}"`;
}

/** `/etc/drbd.d/pypi.res` for both members of the storage pair (DRBD 8.4 syntax). */
export function renderDrbdResource(t: Topology): string {
  const s = t.storage;
  const pair = storagePair(t);
  return [
    `# DRBD 8.4 resource of ${t.environment}: the package volume of the storage pair.`,
    // The shared secret lives in a root-only file the agent writes; drbdadm allows include only here.
    `include ${drbdString("secret include", drbdPaths.secret)};`,
    "",
    `resource ${drbdString("resource", DRBD_RESOURCE)} {`,
    `  device ${drbdString("device", `/dev/drbd${s.drbdMinor}`)};`,
    "  meta-disk internal;",
    "  net {",
    // Synchronous: a write completes only once it is on both disks.
    "    protocol C;",
    "    cram-hmac-alg sha1;",
    // Split brain: drop the side that changed nothing, else the secondary's changes; a split with
    // two primaries needs a human.
    "    after-sb-0pri discard-zero-changes;",
    "    after-sb-1pri discard-secondary;",
    "    after-sb-2pri disconnect;",
    "  }",
    // See dopdHaCfLines: the handler outdates the peer through Heartbeat's dopd.
    "  disk {",
    "    fencing resource-only;",
    "  }",
    "  handlers {",
    `    split-brain ${drbdString("split-brain handler", "/usr/lib/drbd/notify-split-brain.sh root")};`,
    `    fence-peer ${drbdString("fence-peer handler", `${drbdPaths.tool} fence-peer`)};`,
    `    after-resync-target ${drbdString("after-resync-target handler", `${drbdPaths.tool} after-resync-target`)};`,
    "  }",
    ...pair.flatMap((n) => [
      `  on ${drbdString("node name", n.name)} {`,
      // Each node's own EBS volume by its stable name; NVMe probe order can swap at boot.
      `    disk ${drbdString("storage.device", n.dataVolumeId ? dataVolumeDevice(n.dataVolumeId) : s.device)};`,
      // drbdadm refuses a quoted address: a literal ipv4:port, which the schema guarantees.
      `    address ${n.privateIp}:${s.drbdPort};`,
      "  }",
    ]),
    "}",
    "",
  ].join("\n");
}

/** `/etc/drbd.d/global_common.conf`: global options only (the `common` section is the secret file's). */
export function renderDrbdGlobalCommon(): string {
  return ["global {", "  usage-count no;", "}", ""].join("\n");
}

/**
 * Content of the secret file the agent writes at apply time (shown here so the agent, the lab
 * and the tests agree on it). drbdadm merges this `common` net section into the resource's.
 */
export function renderDrbdSecretFile(secret: string): string {
  if (Buffer.byteLength(secret) > DRBD_SECRET_MAX) {
    throw new Error(
      `drbd: the shared secret must be at most ${DRBD_SECRET_MAX} bytes; got ${Buffer.byteLength(secret)}`,
    );
  }
  return [
    "common {",
    "  net {",
    `    shared-secret ${drbdString("shared secret", secret)};`,
    "  }",
    "}",
    "",
  ].join("\n");
}
