/**
 * Upload users (`pypi-infra:uploadUsers`): the SFTP accounts of the app servers' upload sshd.
 * Pure checks shared by the stack config, the topology validation and the sshd renderer.
 *
 * Messages never echo a public key value: what lands in that field by mistake is often a
 * secret (a private key, a token), and the message ends up in CI logs.
 */

export interface UploadUser {
  readonly name: string;
  readonly uid: number;
  /** Normalised to `type base64 [comment]` on one line. */
  readonly publicKey: string;
}

export const SSH_KEY_TYPES = [
  "ssh-ed25519",
  "ssh-rsa",
  "ecdsa-sha2-nistp256",
  "ecdsa-sha2-nistp384",
  "ecdsa-sha2-nistp521",
  "sk-ssh-ed25519@openssh.com",
  "sk-ecdsa-sha2-nistp256@openssh.com",
] as const;
export type SshKeyType = (typeof SSH_KEY_TYPES)[number];

export const MIN_RSA_BITS = 2048;
export const UPLOAD_UID_MIN = 2000;
export const UPLOAD_UID_MAX = 59999;
export const UPLOAD_USER_NAME = /^[a-z_][a-z0-9_-]{0,31}$/;

/**
 * User names an upload user may not take. The node skips `useradd` for a name that exists, so
 * the upload user would log in as that account (www-data owns the app's files). Sources:
 * - Debian base-passwd (bookworm passwd.master), plus gnats, dropped from new installs in
 *   base-passwd 3.6.0 but kept on upgraded systems;
 * - users the node packages create (postinst adduser, sysusers.d): openssh-server, postgresql-common,
 *   haproxy, heartbeat/cluster-glue, nfs-common, rpcbind, dbus, systemd, polkitd; nginx and
 *   apache2 run as www-data;
 * - the AWS image: admin (Debian cloud images' default user), ssm-user (SSM Session Manager),
 *   and users of time-sync, udev and diagnostic packages an image update may add.
 * The repo's node agent runs as root and its configs name only www-data, postgres and haproxy,
 * so there is no pypi service account to reserve.
 */
export const SYSTEM_ACCOUNTS: ReadonlySet<string> = new Set([
  // base-passwd
  "root",
  "daemon",
  "bin",
  "sys",
  "sync",
  "games",
  "man",
  "lp",
  "mail",
  "news",
  "uucp",
  "proxy",
  "www-data",
  "backup",
  "list",
  "irc",
  "gnats",
  "_apt",
  "nobody",
  // node packages
  "sshd",
  "postgres",
  "haproxy",
  "hacluster",
  "statd",
  "_rpc",
  "messagebus",
  "systemd-network",
  "systemd-timesync",
  "systemd-resolve",
  "systemd-coredump",
  "polkitd",
  // the AWS image
  "admin",
  "ssm-user",
  "_chrony",
  "ntpsec",
  "uuidd",
  "tss",
  "tcpdump",
]);

/**
 * Group names an upload user may not take: `useradd` creates a group named after the user and
 * fails when that group exists, so the node's bring-up would stop. base-passwd group.master and
 * the groups of the node packages (openssh-client, ssl-cert, heartbeat, systemd, udev, cloud-init).
 */
export const SYSTEM_GROUPS: ReadonlySet<string> = new Set([
  "adm",
  "tty",
  "disk",
  "kmem",
  "dialout",
  "fax",
  "voice",
  "cdrom",
  "floppy",
  "tape",
  "sudo",
  "audio",
  "dip",
  "operator",
  "src",
  "shadow",
  "utmp",
  "video",
  "sasl",
  "plugdev",
  "staff",
  "users",
  "nogroup",
  "_ssh",
  "ssl-cert",
  "haclient",
  "systemd-journal",
  "input",
  "kvm",
  "render",
  "sgx",
  "netdev",
  "crontab",
]);

export type ParsedPublicKey =
  | {
      readonly ok: true;
      readonly type: SshKeyType;
      /** The base64 key data, as given. */
      readonly blob: string;
      readonly comment?: string;
      /** Key size: the RSA modulus, the curve, or 256 for ed25519. */
      readonly bits: number;
      /** `type blob [comment]`, whitespace collapsed. */
      readonly line: string;
    }
  | { readonly ok: false; readonly reason: string };

const KEY_TYPES: ReadonlySet<string> = new Set(SSH_KEY_TYPES);
/** Known to OpenSSH but refused here; recognised so the message can say why. */
const REFUSED_TYPES: ReadonlyMap<string, string> = new Map([
  ["ssh-dss", "DSA (ssh-dss) keys are not accepted: OpenSSH no longer allows them"],
  ...[...SSH_KEY_TYPES, "ssh-dss"].map(
    (t) =>
      [
        t.replace(/(@openssh\.com)?$/, "-cert-v01@openssh.com"),
        "an SSH certificate is not accepted; give the plain public key (the .pub file, not -cert.pub)",
      ] as const,
  ),
]);
const isKnownType = (t: string): boolean => KEY_TYPES.has(t) || REFUSED_TYPES.has(t);

const ALLOWED_KEY = `expected one OpenSSH public key line "<type> <base64> [comment]" (the .pub file), type one of ${SSH_KEY_TYPES.join(", ")}`;

const PRIVATE_KEY = /-{4,5} ?BEGIN [A-Z0-9 ]*PRIVATE KEY|PuTTY-User-Key-File-|b3BlbnNzaC1rZXktdjE/;

/** Describes a value by kind and size only, for values that may be secrets. */
function describe(value: unknown): string {
  if (value === undefined) return "missing";
  if (value === null) return "null";
  if (typeof value === "string") {
    if (value.trim() === "") return value === "" ? "an empty string" : "only whitespace";
    const lines = value.trim().split(/\r\n|\r|\n/).length;
    return `a ${lines > 1 ? `${lines}-line ` : ""}string of ${value.length} characters`;
  }
  if (Array.isArray(value)) return `a list of ${value.length} items`;
  if (typeof value === "object") return "an object";
  return `a ${typeof value}`;
}

/** Quotes short plain tokens (names, numbers); anything else is described, not shown. */
function show(value: unknown): string {
  if (typeof value === "number" && Number.isFinite(value)) return String(value);
  if (typeof value === "string" && /^[A-Za-z0-9._@+-]{1,64}$/.test(value)) return JSON.stringify(value);
  return describe(value);
}

class Reader {
  private at = 0;
  constructor(private readonly bytes: Buffer) {}
  get remaining(): number {
    return this.bytes.length - this.at;
  }
  /** An SSH wire `string`; undefined when the data ends early. */
  string(): Buffer | undefined {
    if (this.remaining < 4) return undefined;
    const length = this.bytes.readUInt32BE(this.at);
    if (length > this.remaining - 4) return undefined;
    this.at += 4 + length;
    return this.bytes.subarray(this.at - length, this.at);
  }
}

const bitLength = (magnitude: Buffer): number => {
  const start = magnitude.findIndex((b) => b !== 0);
  const top = magnitude[start];
  return top === undefined ? 0 : (magnitude.length - start - 1) * 8 + (32 - Math.clz32(top));
};

const CURVES: Record<string, { curve: string; bits: number; point: number }> = {
  "ecdsa-sha2-nistp256": { curve: "nistp256", bits: 256, point: 65 },
  "ecdsa-sha2-nistp384": { curve: "nistp384", bits: 384, point: 97 },
  "ecdsa-sha2-nistp521": { curve: "nistp521", bits: 521, point: 133 },
  "sk-ecdsa-sha2-nistp256@openssh.com": { curve: "nistp256", bits: 256, point: 65 },
};

/** Checks the key data against its type; returns the key size or why it is refused. */
function parseBlob(type: SshKeyType, bytes: Buffer): { bits: number } | { reason: string } {
  const r = new Reader(bytes);
  const short = {
    reason: `the key data is cut short (${bytes.length} bytes decode to an incomplete ${type} key); copy the whole .pub line again`,
  };
  const inner = r.string();
  if (!inner) return short;
  const innerType = inner.toString("latin1");
  if (innerType !== type) {
    const held = isKnownType(innerType) ? `an ${innerType} key` : "no known key type";
    return {
      reason: `the line says ${type} but its key data holds ${held}; copy the whole .pub line unchanged`,
    };
  }
  let bits: number;
  if (type === "ssh-rsa") {
    const e = r.string();
    const n = r.string();
    if (!e || !n) return short;
    if ((e[0] ?? 0) & 0x80 || (n[0] ?? 0) & 0x80 || bitLength(e) < 2 || bitLength(n) === 0)
      return { reason: "the RSA key data is malformed (bad exponent or modulus)" };
    bits = bitLength(n);
    if (bits < MIN_RSA_BITS) {
      return {
        reason: `is a ${bits}-bit RSA key; RSA keys need at least ${MIN_RSA_BITS} bits (make a new one with ssh-keygen -t ed25519, or -t rsa -b 3072)`,
      };
    }
  } else if (type === "ssh-ed25519" || type === "sk-ssh-ed25519@openssh.com") {
    const point = r.string();
    if (!point) return short;
    if (point.length !== 32) return { reason: "the ed25519 key data is malformed (the key is not 32 bytes)" };
    bits = 256;
  } else {
    const want = CURVES[type];
    const curve = r.string();
    const point = r.string();
    if (!want || !curve || !point) return short;
    if (curve.toString("latin1") !== want.curve || point.length !== want.point || point[0] !== 4)
      return { reason: `the ${type} key data is malformed (wrong curve or point)` };
    bits = want.bits;
  }
  if (type.startsWith("sk-") && !r.string()) return short; // the FIDO application, e.g. "ssh:"
  if (r.remaining > 0)
    return {
      reason: `the key data has ${r.remaining} bytes after the ${type} key; copy the .pub line unchanged`,
    };
  return { bits };
}

/** Decodes a token as a key blob and returns the key type it names, if it is one. */
function blobType(token: string): string | undefined {
  if (!/^AAAA[A-Za-z0-9+/]+={0,2}$/.test(token)) return undefined;
  const inner = new Reader(Buffer.from(token, "base64")).string()?.toString("latin1");
  return inner !== undefined && isKnownType(inner) ? inner : undefined;
}

/**
 * Parses one OpenSSH public key line: `type base64 [comment]`. Refuses authorized_keys options,
 * several keys, private keys and other formats; reasons never contain the input, except key
 * type names.
 */
export function parsePublicKeyLine(line: string): ParsedPublicKey {
  const fail = (reason: string): ParsedPublicKey => ({ ok: false, reason });
  if (PRIVATE_KEY.test(line)) {
    return fail(
      `looks like a private key (${describe(line)}, not shown); only the public key line belongs here: the .pub file, "ssh-ed25519 AAAA... you@host". Treat that private key as exposed and make a new one`,
    );
  }
  if (/-{4,5} ?BEGIN SSH2 PUBLIC KEY/.test(line))
    return fail("is an RFC 4716 (SSH2) public key; convert it with ssh-keygen -i -f key.pub");
  if (/-----BEGIN (RSA )?PUBLIC KEY-----/.test(line))
    return fail(
      "is a PEM public key; convert it with ssh-keygen -i -m PKCS8 -f key.pem (-m PEM for RSA PUBLIC KEY)",
    );
  if (/-----BEGIN /.test(line)) return fail(`is a PEM block (${describe(line)}, not shown); ${ALLOWED_KEY}`);

  const lines = line
    .replace(/^\uFEFF/, "")
    .split(/\r\n|\r|\n/)
    .map((l) => l.trim())
    .filter((l) => l !== "");
  if (lines.length === 0) return fail(`is ${describe(line)}; ${ALLOWED_KEY}`);

  const tokensOf = (l: string): string[] => l.split(/\s+/);
  const found = lines.flatMap(tokensOf).flatMap((t) => blobType(t) ?? []);
  if (found.length > 1) {
    const where = lines.length > 1 ? ` on ${lines.length} lines` : " on one line";
    return fail(
      `holds ${found.length} public keys${where} (${found.join(", ")}); expected exactly one: give each key its own upload user`,
    );
  }
  if (lines.length > 1) {
    return fail(
      `holds ${lines.length} lines; expected exactly one OpenSSH public key line (join a key that was wrapped onto several lines)`,
    );
  }

  const tokens = tokensOf(lines[0] ?? "");
  const typeAt = tokens.findIndex(isKnownType);
  if (typeAt > 0) {
    return fail(
      'has options or other text before the key type (authorized_keys options such as command="..." or from="..." are not accepted: the renderer restricts every key itself); keep only "<type> <base64> [comment]"',
    );
  }
  if (typeAt < 0) {
    if (found.length === 1) return fail(`is missing the key type before the key data; ${ALLOWED_KEY}`);
    return fail(`is not an OpenSSH public key (${describe(line)}, not shown); ${ALLOWED_KEY}`);
  }
  const type = tokens[0] ?? "";
  const refused = REFUSED_TYPES.get(type);
  if (refused) return fail(refused);
  const keyType = type as SshKeyType;
  const blob = tokens[1];
  if (blob === undefined) return fail(`has the key type ${type} but no key data after it; ${ALLOWED_KEY}`);
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(blob) || blob.length % 4 !== 0) {
    return fail(
      `the key data after ${type} is not valid base64 (${blob.length} characters; it may be cut short); copy the whole .pub line again`,
    );
  }
  const parsed = parseBlob(keyType, Buffer.from(blob, "base64"));
  if ("reason" in parsed) return fail(parsed.reason);
  const comment = tokens.slice(2).join(" ");
  // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters would corrupt authorized_keys
  if (/[\u0000-\u001f\u007f]/.test(comment))
    return fail("the comment after the key contains control characters");
  return {
    ok: true,
    type: keyType,
    blob,
    ...(comment === "" ? {} : { comment }),
    bits: parsed.bits,
    line: comment === "" ? `${type} ${blob}` : `${type} ${blob} ${comment}`,
  };
}

const UID_RULE = `expected a whole number from ${UPLOAD_UID_MIN} to ${UPLOAD_UID_MAX} (Debian gives people's accounts 1000-59999; this stack leaves 1000-1999 to the image's own users)`;

/** Why a uid outside the upload range is refused, by Debian policy's uid ranges (9.2.2). */
function uidRange(uid: number): string {
  if (uid < 0) return "negative";
  if (uid === 0) return "root's uid";
  if (uid <= 99) return "in 0-99, Debian's statically allocated system ids";
  if (uid <= 999) return "in 100-999, the system ids packages get when they create their users";
  if (uid <= 1999) return "in 1000-1999, left for people's accounts on the image (admin, ssm-user)";
  if (uid <= 64999) return "in 60000-64999, ids the Debian project allocates to packages";
  if (uid <= 65533) return "in 65000-65533, reserved by Debian";
  if (uid === 65534) return "nobody's uid";
  if (uid === 65535) return "(uid_t)-1 for 16-bit uids, which must never be used";
  return "above 65535, which adduser does not allocate by default and where subordinate (container) ids live";
}

const FIELDS = ["name", "uid", "publicKey"];

export interface UploadUsersCheck {
  /** The valid entries, normalised; use them only when `problems` is empty. */
  readonly users: UploadUser[];
  /** Every problem, each naming its element path, e.g. `pypi-infra:uploadUsers[1].uid`. */
  readonly problems: string[];
}

/** Checks the raw `uploadUsers` config value and reports every problem at once. */
export function checkUploadUsers(users: unknown, key = "pypi-infra:uploadUsers"): UploadUsersCheck {
  const problems: string[] = [];
  const valid: UploadUser[] = [];
  if (!Array.isArray(users)) {
    problems.push(`${key}: is ${describe(users)}; expected a list of {name, uid, publicKey}, at least one`);
    return { users: valid, problems };
  }
  if (users.length === 0) {
    problems.push(`${key}: is an empty list; expected at least one upload user {name, uid, publicKey}`);
  }
  const names = new Map<string, number>();
  const uids = new Map<number, number>();
  users.forEach((entry: unknown, i) => {
    const at = `${key}[${i}]`;
    if (typeof entry !== "object" || entry === null || Array.isArray(entry)) {
      problems.push(`${at}: is ${describe(entry)}; expected {name, uid, publicKey}`);
      return;
    }
    const rec = entry as Record<string, unknown>;
    for (const field of Object.keys(rec).filter((f) => !FIELDS.includes(f))) {
      const path = /^[A-Za-z0-9_-]{1,40}$/.test(field)
        ? `${at}.${field}`
        : `${at} (a field with an odd name)`;
      problems.push(`${path}: unknown field; expected only name, uid and publicKey`);
    }

    let name: string | undefined;
    const rawName = rec.name;
    if (typeof rawName !== "string" || !UPLOAD_USER_NAME.test(rawName)) {
      problems.push(
        `${at}.name: ${show(rawName)} is not a Unix user name; expected a lower-case letter or _ then up to 31 of a-z 0-9 _ -`,
      );
    } else if (SYSTEM_ACCOUNTS.has(rawName)) {
      problems.push(
        `${at}.name: "${rawName}" is a system account on the nodes (or reserved); the upload user would log in as it. Choose another name`,
      );
    } else if (SYSTEM_GROUPS.has(rawName)) {
      problems.push(
        `${at}.name: "${rawName}" is a system group on the nodes; creating the user's own group would fail. Choose another name`,
      );
    } else {
      name = rawName;
    }
    if (typeof rawName === "string") {
      const first = names.get(rawName);
      if (first !== undefined) {
        problems.push(`${at}.name: ${show(rawName)} repeats ${key}[${first}].name; names must be unique`);
        name = undefined;
      } else names.set(rawName, i);
    }

    let uid: number | undefined;
    const rawUid = typeof rec.uid === "string" && /^[0-9]{1,10}$/.test(rec.uid) ? Number(rec.uid) : rec.uid;
    if (typeof rawUid !== "number" || !Number.isInteger(rawUid)) {
      problems.push(`${at}.uid: ${show(rec.uid)} is not a whole number; ${UID_RULE}`);
    } else if (rawUid < UPLOAD_UID_MIN || rawUid > UPLOAD_UID_MAX) {
      problems.push(`${at}.uid: ${rawUid} is ${uidRange(rawUid)}; ${UID_RULE}`);
    } else {
      const first = uids.get(rawUid);
      if (first !== undefined) {
        problems.push(`${at}.uid: ${rawUid} repeats ${key}[${first}].uid; uids must be unique`);
      } else {
        uids.set(rawUid, i);
        uid = rawUid;
      }
    }

    let publicKey: string | undefined;
    if (typeof rec.publicKey !== "string") {
      problems.push(`${at}.publicKey: is ${describe(rec.publicKey)}; ${ALLOWED_KEY}`);
    } else {
      const parsed = parsePublicKeyLine(rec.publicKey);
      if (parsed.ok) publicKey = parsed.line;
      else problems.push(`${at}.publicKey: ${parsed.reason}`);
    }

    if (name !== undefined && uid !== undefined && publicKey !== undefined)
      valid.push({ name, uid, publicKey });
  });
  return { users: valid, problems };
}
