import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse } from "yaml";
import {
  checkUploadUsers,
  parsePublicKeyLine,
  SYSTEM_ACCOUNTS,
  SYSTEM_GROUPS,
  type UploadUser,
} from "../src/upload-users.js";

const KEY = "pypi-infra:uploadUsers";

/** Real keys from ssh-keygen, so the parser is checked against what users paste. */
const keys: Record<string, string> = {};
const privateKeys: Record<string, string> = {};
let dir: string;

function keygen(name: string, args: string[]): void {
  const file = join(dir, name);
  execFileSync("ssh-keygen", ["-q", "-N", "", "-C", `${name}@example.org`, "-f", file, ...args]);
  keys[name] = readFileSync(`${file}.pub`, "utf8");
  privateKeys[name] = readFileSync(file, "utf8");
}

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "upload-users-"));
  keygen("ed25519", ["-t", "ed25519"]);
  keygen("ed25519b", ["-t", "ed25519"]);
  keygen("ecdsa256", ["-t", "ecdsa", "-b", "256"]);
  keygen("ecdsa384", ["-t", "ecdsa", "-b", "384"]);
  keygen("ecdsa521", ["-t", "ecdsa", "-b", "521"]);
  keygen("rsa1024", ["-t", "rsa", "-b", "1024"]);
  keygen("rsa2048", ["-t", "rsa", "-b", "2048"]);
  keygen("rsa3072", ["-t", "rsa", "-b", "3072"]);
  keygen("rsapem", ["-t", "rsa", "-b", "2048", "-m", "PEM"]);
  keygen("ecdsapkcs8", ["-t", "ecdsa", "-m", "PKCS8"]);
}, 120_000);

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** SSH wire encoding: each part as a length-prefixed string. */
function wire(...parts: (string | Buffer)[]): string {
  return Buffer.concat(
    parts.flatMap((p) => {
      const bytes = typeof p === "string" ? Buffer.from(p, "latin1") : p;
      const length = Buffer.alloc(4);
      length.writeUInt32BE(bytes.length);
      return [length, bytes];
    }),
  ).toString("base64");
}

const blobOf = (line: string): string => line.trim().split(/\s+/)[1]!;
const user = (over: Record<string, unknown> = {}) => ({
  name: "alice",
  uid: 2001,
  publicKey: keys.ed25519,
  ...over,
});

/** Checks [good user, candidate]; expects exactly one problem and returns it. */
function problemFor(candidate: Record<string, unknown>): string {
  const { problems, users } = checkUploadUsers([
    user({ name: "carol", uid: 2100, publicKey: keys.ed25519b }),
    user(candidate),
  ]);
  expect(problems).toHaveLength(1);
  expect(users.map((u) => u.name)).toEqual(["carol"]);
  return problems[0]!;
}
const pathOf = (message: string): string => message.slice(0, message.indexOf(": "));

describe("parsePublicKeyLine", () => {
  it("parses ed25519, ecdsa and RSA keys with their sizes and comments", () => {
    const cases: [string, string, number][] = [
      ["ed25519", "ssh-ed25519", 256],
      ["ecdsa256", "ecdsa-sha2-nistp256", 256],
      ["ecdsa384", "ecdsa-sha2-nistp384", 384],
      ["ecdsa521", "ecdsa-sha2-nistp521", 521],
      ["rsa2048", "ssh-rsa", 2048],
      ["rsa3072", "ssh-rsa", 3072],
    ];
    for (const [name, type, bits] of cases) {
      const parsed = parsePublicKeyLine(keys[name]!);
      expect(parsed, name).toEqual({
        ok: true,
        type,
        blob: blobOf(keys[name]!),
        comment: `${name}@example.org`,
        bits,
        line: keys[name]!.trim(),
      });
    }
  });

  it("normalises whitespace and accepts a key without a comment", () => {
    const blob = blobOf(keys.ed25519!);
    expect(parsePublicKeyLine(`  ssh-ed25519\t${blob}   my   laptop \r\n`)).toMatchObject({
      ok: true,
      comment: "my laptop",
      line: `ssh-ed25519 ${blob} my laptop`,
    });
    const bare = parsePublicKeyLine(`ssh-ed25519 ${blob}\n`);
    expect(bare).toMatchObject({ ok: true, line: `ssh-ed25519 ${blob}` });
    expect(bare.ok && "comment" in bare).toBe(false);
  });

  it("accepts FIDO (sk-) keys, which carry an application string", () => {
    const ed = wire("sk-ssh-ed25519@openssh.com", Buffer.alloc(32, 7), "ssh:");
    expect(parsePublicKeyLine(`sk-ssh-ed25519@openssh.com ${ed} yubikey`)).toMatchObject({
      ok: true,
      bits: 256,
    });
    const point = Buffer.concat([Buffer.from([4]), Buffer.alloc(64, 9)]);
    const ec = wire("sk-ecdsa-sha2-nistp256@openssh.com", "nistp256", point, "ssh:");
    expect(parsePublicKeyLine(`sk-ecdsa-sha2-nistp256@openssh.com ${ec}`)).toMatchObject({
      ok: true,
      bits: 256,
    });
  });

  it("refuses DSA keys and certificates by name", () => {
    const dss = parsePublicKeyLine(`ssh-dss ${wire("ssh-dss", "p", "q", "g", "y")}`);
    expect(dss).toEqual({
      ok: false,
      reason: expect.stringContaining("DSA (ssh-dss) keys are not accepted"),
    });
    const cert = parsePublicKeyLine(
      `ssh-ed25519-cert-v01@openssh.com ${wire("ssh-ed25519-cert-v01@openssh.com")}`,
    );
    expect(cert).toEqual({ ok: false, reason: expect.stringContaining("certificate is not accepted") });
  });
});

describe("checkUploadUsers: accepted", () => {
  it("accepts users with ed25519, ecdsa and RSA (2048, 3072) keys, normalised", () => {
    const input = [
      { name: "alice", uid: 2000, publicKey: keys.ed25519 },
      { name: "bob", uid: 2001, publicKey: keys.ecdsa256 },
      { name: "_ci", uid: 2002, publicKey: keys.ecdsa384 },
      { name: "deploy-bot", uid: 2003, publicKey: keys.ecdsa521 },
      { name: "rsa_user", uid: 2004, publicKey: keys.rsa3072 },
      { name: "r2048", uid: 59999, publicKey: ` ${keys.rsa2048}` },
    ];
    const { users, problems } = checkUploadUsers(input);
    expect(problems).toEqual([]);
    expect(users).toEqual<UploadUser[]>(
      input.map((u) => ({ name: u.name, uid: u.uid, publicKey: u.publicKey!.trim() })),
    );
    expect(users.every((u) => !u.publicKey.includes("\n"))).toBe(true);
  });

  it("accepts a uid given as a decimal string (pulumi config set --path stores strings)", () => {
    expect(checkUploadUsers([user({ uid: "2500" })])).toMatchObject({ problems: [], users: [{ uid: 2500 }] });
  });

  it("accepts the users of the repo's stack configs", () => {
    for (const stack of ["staging", "prod"]) {
      const doc = parse(readFileSync(join(process.cwd(), `Pulumi.${stack}.yaml`), "utf8"));
      const { problems, users } = checkUploadUsers(doc.config[KEY]);
      expect(problems, stack).toEqual([]);
      expect(users.length, stack).toBeGreaterThan(0);
    }
  });
});

describe("checkUploadUsers: names", () => {
  it.each(["www-data", "root", "postgres", "sshd", "nobody", "admin", "ssm-user", "hacluster", "_apt"])(
    "refuses the system account %s",
    (name) => {
      const message = problemFor({ name });
      expect(pathOf(message)).toBe(`${KEY}[1].name`);
      expect(message).toContain(`"${name}" is a system account`);
      expect(message).toContain("would log in as it");
    },
  );

  it("refuses a system group name, where useradd would fail", () => {
    const message = problemFor({ name: "sudo" });
    expect(pathOf(message)).toBe(`${KEY}[1].name`);
    expect(message).toContain('"sudo" is a system group');
  });

  it.each([["Alice"], ["1bob"], ["bob.smith"], ["a".repeat(33)], [""]])("refuses the bad name %j", (name) => {
    const message = problemFor({ name });
    expect(pathOf(message)).toBe(`${KEY}[1].name`);
    expect(message).toContain("is not a Unix user name; expected a lower-case letter or _");
  });

  it("does not echo a name that is not a plain token", () => {
    const secret = "correct horse battery staple";
    const message = problemFor({ name: secret });
    expect(pathOf(message)).toBe(`${KEY}[1].name`);
    expect(message).not.toContain("horse");
    expect(message).toContain("a string of 28 characters");
    expect(pathOf(problemFor({ name: 42 }))).toBe(`${KEY}[1].name`);
  });

  it("refuses a duplicate name, pointing at the first", () => {
    const { problems, users } = checkUploadUsers([user(), user({ uid: 2002, publicKey: keys.ed25519b })]);
    expect(problems).toEqual([`${KEY}[1].name: "alice" repeats ${KEY}[0].name; names must be unique`]);
    expect(users).toHaveLength(1);
  });
});

describe("checkUploadUsers: uids", () => {
  it.each([
    [0, "root's uid"],
    [999, "in 100-999, the system ids"],
    [42, "in 0-99, Debian's statically allocated"],
    [1000, "in 1000-1999, left for people's accounts on the image"],
    [1500, "in 1000-1999, left for people's accounts on the image"],
    [1999, "in 1000-1999"],
    [60000, "in 60000-64999"],
    [65534, "nobody's uid"],
    [65535, "(uid_t)-1"],
    [100000, "above 65535"],
    [-5, "negative"],
  ])("refuses uid %d (%s)", (uid, why) => {
    const message = problemFor({ uid });
    expect(pathOf(message)).toBe(`${KEY}[1].uid`);
    expect(message).toContain(`: ${uid} is ${why}`);
    expect(message).toContain("expected a whole number from 2000 to 59999");
  });

  it.each([[2000.5], ["2k"], [null], [undefined]])("refuses the non-integer uid %j", (uid) => {
    const message = problemFor({ uid });
    expect(pathOf(message)).toBe(`${KEY}[1].uid`);
    expect(message).toContain("is not a whole number; expected a whole number from 2000 to 59999");
  });

  it("refuses a duplicate uid, pointing at the first", () => {
    const { problems } = checkUploadUsers([user(), user({ name: "bob", publicKey: keys.ed25519b })]);
    expect(problems).toEqual([`${KEY}[1].uid: 2001 repeats ${KEY}[0].uid; uids must be unique`]);
  });
});

describe("checkUploadUsers: public keys", () => {
  it("refuses an RSA key under 2048 bits", () => {
    const message = problemFor({ publicKey: keys.rsa1024 });
    expect(pathOf(message)).toBe(`${KEY}[1].publicKey`);
    expect(message).toContain("is a 1024-bit RSA key; RSA keys need at least 2048 bits");
  });

  it("refuses a pasted OpenSSH private key without echoing any of it", () => {
    const secret = privateKeys.ed25519!;
    expect(secret).toContain("BEGIN OPENSSH PRIVATE KEY");
    const message = problemFor({ publicKey: secret });
    expect(pathOf(message)).toBe(`${KEY}[1].publicKey`);
    expect(message).toContain("looks like a private key");
    expect(message).toContain("only the public key line belongs here: the .pub file");
    const body = secret.split("\n").filter((l) => l !== "" && !l.startsWith("-----"));
    expect(body.length).toBeGreaterThan(2);
    for (const line of body) expect(message).not.toContain(line);
    for (const chunk of body.join("").match(/.{12}/g)!) expect(message).not.toContain(chunk);
    expect(message).not.toContain("-----");
  });

  it.each(["rsapem", "ecdsapkcs8"])("refuses a PEM private key (%s) without echoing it", (name) => {
    const secret = privateKeys[name]!;
    expect(secret).toMatch(/-----BEGIN (RSA |EC )?PRIVATE KEY-----/);
    const message = problemFor({ publicKey: secret });
    expect(pathOf(message)).toBe(`${KEY}[1].publicKey`);
    expect(message).toContain("looks like a private key");
    for (const line of secret.split("\n").filter((l) => l.length > 8)) expect(message).not.toContain(line);
  });

  it("refuses a PuTTY key file and a private key body pasted without its armor lines", () => {
    const putty =
      "PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\nPrivate-Lines: 1\nAAAAIBu5ecretSecretSecret\n";
    const putMessage = problemFor({ publicKey: putty });
    expect(pathOf(putMessage)).toBe(`${KEY}[1].publicKey`);
    expect(putMessage).toContain("looks like a private key");
    expect(putMessage).not.toContain("ecretSecret");

    const body = privateKeys.ed25519!.split("\n").filter((l) => l !== "" && !l.startsWith("-----"));
    const bareMessage = problemFor({ publicKey: body.join("\n") });
    expect(pathOf(bareMessage)).toBe(`${KEY}[1].publicKey`);
    expect(bareMessage).toContain("looks like a private key");
    for (const line of body) expect(bareMessage).not.toContain(line);
  });

  it("refuses two keys in one entry, on one line or two, saying how many", () => {
    const oneLine = problemFor({ publicKey: `${keys.ed25519!.trim()} ${keys.ecdsa256!.trim()}` });
    expect(pathOf(oneLine)).toBe(`${KEY}[1].publicKey`);
    expect(oneLine).toContain("holds 2 public keys on one line (ssh-ed25519, ecdsa-sha2-nistp256)");
    expect(oneLine).toContain("give each key its own upload user");

    const twoLines = problemFor({ publicKey: `${keys.ed25519}${keys.ed25519b}${keys.rsa3072}` });
    expect(pathOf(twoLines)).toBe(`${KEY}[1].publicKey`);
    expect(twoLines).toContain("holds 3 public keys on 3 lines");
    expect(twoLines).not.toContain(blobOf(keys.ed25519!));
  });

  it("refuses a key wrapped onto several lines", () => {
    const line = keys.ed25519!.trim();
    const message = problemFor({ publicKey: `${line.slice(0, 40)}\n${line.slice(40)}` });
    expect(pathOf(message)).toBe(`${KEY}[1].publicKey`);
    expect(message).toContain("holds 2 lines; expected exactly one OpenSSH public key line");
  });

  it("refuses authorized_keys options before the key type without echoing them", () => {
    const message = problemFor({ publicKey: `command="/usr/bin/rsync --server",no-pty ${keys.ed25519}` });
    expect(pathOf(message)).toBe(`${KEY}[1].publicKey`);
    expect(message).toContain("has options or other text before the key type");
    expect(message).toContain("are not accepted");
    expect(message).not.toContain("rsync");
    expect(pathOf(problemFor({ publicKey: `restrict ${keys.ed25519}` }))).toBe(`${KEY}[1].publicKey`);
  });

  it("refuses a key whose type does not match its key data", () => {
    const message = problemFor({ publicKey: `ssh-rsa ${blobOf(keys.ed25519!)} x@y` });
    expect(pathOf(message)).toBe(`${KEY}[1].publicKey`);
    expect(message).toContain("the line says ssh-rsa but its key data holds an ssh-ed25519 key");
    const other = problemFor({ publicKey: `ssh-ed25519 ${wire("hello-world", Buffer.alloc(32))}` });
    expect(other).toContain("the line says ssh-ed25519 but its key data holds no known key type");
  });

  it("refuses truncated key data, whether the base64 or the decoded key is cut", () => {
    const bytes = Buffer.from(blobOf(keys.ed25519!), "base64");
    const cut = bytes.subarray(0, bytes.length - 6).toString("base64");
    const decoded = problemFor({ publicKey: `ssh-ed25519 ${cut} alice` });
    expect(pathOf(decoded)).toBe(`${KEY}[1].publicKey`);
    expect(decoded).toContain("the key data is cut short");

    const rsa = Buffer.from(blobOf(keys.rsa3072!), "base64");
    const rsaCut = problemFor({ publicKey: `ssh-rsa ${rsa.subarray(0, 200).toString("base64")}` });
    expect(rsaCut).toContain("the key data is cut short");

    const text = problemFor({ publicKey: `ssh-ed25519 ${blobOf(keys.ed25519!).slice(0, 50)}` });
    expect(pathOf(text)).toBe(`${KEY}[1].publicKey`);
    expect(text).toContain("the key data after ssh-ed25519 is not valid base64 (50 characters");
  });

  it("refuses extra bytes after the key and a malformed ed25519 key", () => {
    const extra = Buffer.concat([Buffer.from(blobOf(keys.ed25519!), "base64"), Buffer.alloc(3)]);
    const message = problemFor({ publicKey: `ssh-ed25519 ${extra.toString("base64")}` });
    expect(pathOf(message)).toBe(`${KEY}[1].publicKey`);
    expect(message).toContain("has 3 bytes after the ssh-ed25519 key");
    const short = problemFor({ publicKey: `ssh-ed25519 ${wire("ssh-ed25519", Buffer.alloc(16))}` });
    expect(short).toContain("the key is not 32 bytes");
  });

  it("describes other values by kind and length only", () => {
    const token = "ghp_0123456789abcdefghijABCDEFGHIJ012345";
    const message = problemFor({ publicKey: token });
    expect(pathOf(message)).toBe(`${KEY}[1].publicKey`);
    expect(message).toContain(
      `is not an OpenSSH public key (a string of ${token.length} characters, not shown)`,
    );
    expect(message).not.toContain("ghp_");
    expect(problemFor({ publicKey: "" })).toContain(`${KEY}[1].publicKey: is an empty string`);
    expect(problemFor({ publicKey: 12 })).toContain(`${KEY}[1].publicKey: is a number`);
    expect(problemFor({ publicKey: `${blobOf(keys.ed25519!)} alice` })).toContain("missing the key type");
  });

  it("points RFC 4716 and PEM public keys at ssh-keygen -i", () => {
    const rfc = `---- BEGIN SSH2 PUBLIC KEY ----\nComment: "x"\n${blobOf(keys.ed25519!)}\n---- END SSH2 PUBLIC KEY ----`;
    const message = problemFor({ publicKey: rfc });
    expect(pathOf(message)).toBe(`${KEY}[1].publicKey`);
    expect(message).toContain("RFC 4716 (SSH2) public key; convert it with ssh-keygen -i");
  });
});

describe("checkUploadUsers: shape", () => {
  it("refuses a missing, empty or non-list value", () => {
    expect(checkUploadUsers(undefined).problems).toEqual([
      `${KEY}: is missing; expected a list of {name, uid, publicKey}, at least one`,
    ]);
    expect(checkUploadUsers([]).problems).toEqual([
      `${KEY}: is an empty list; expected at least one upload user {name, uid, publicKey}`,
    ]);
    const leaked = checkUploadUsers(privateKeys.ed25519).problems;
    expect(leaked).toHaveLength(1);
    expect(pathOf(leaked[0]!)).toBe(KEY);
    expect(leaked[0]).not.toContain("OPENSSH");
  });

  it("refuses elements that are not objects, and unknown fields", () => {
    const { problems } = checkUploadUsers(["alice", user({ key: "x", publickey: "y" })]);
    expect(problems).toEqual([
      `${KEY}[0]: is a string of 5 characters; expected {name, uid, publicKey}`,
      `${KEY}[1].key: unknown field; expected only name, uid and publicKey`,
      `${KEY}[1].publickey: unknown field; expected only name, uid and publicKey`,
    ]);
  });

  it("reports every problem at once, each with its own path, under a custom key", () => {
    const { problems, users } = checkUploadUsers(
      [
        { name: "www-data", uid: 33, publicKey: keys.rsa1024 },
        { name: "ok", uid: 2001, publicKey: keys.ed25519 },
        { name: "ok", uid: 2001, publicKey: privateKeys.ed25519 },
      ],
      "upload.users",
    );
    expect(problems.map(pathOf)).toEqual([
      "upload.users[0].name",
      "upload.users[0].uid",
      "upload.users[0].publicKey",
      "upload.users[2].name",
      "upload.users[2].uid",
      "upload.users[2].publicKey",
    ]);
    expect(users).toEqual([{ name: "ok", uid: 2001, publicKey: keys.ed25519!.trim() }]);
  });
});

describe("SYSTEM_ACCOUNTS", () => {
  it("holds base-passwd's users, the node packages' users and the image's users", () => {
    const expected = [
      ...["root", "daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news", "uucp", "proxy"],
      ...["www-data", "backup", "list", "irc", "gnats", "_apt", "nobody"],
      ...["sshd", "postgres", "haproxy", "hacluster", "statd", "_rpc", "messagebus"],
      ...["systemd-network", "systemd-timesync", "systemd-resolve", "admin", "ssm-user"],
    ];
    for (const name of expected) expect(SYSTEM_ACCOUNTS.has(name), name).toBe(true);
    for (const name of [...SYSTEM_ACCOUNTS, ...SYSTEM_GROUPS])
      expect(name, name).toMatch(/^[a-z_][a-z0-9_-]{0,31}$/);
    expect([...SYSTEM_GROUPS].filter((g) => SYSTEM_ACCOUNTS.has(g))).toEqual([]);
  });
});
