import { describe, expect, it } from "vitest";
import {
  authorizedKeyLine,
  authorizedKeysPath,
  renderAuthorizedKeys,
  renderSshdConfig,
  sshdQuote,
  uploadDir,
} from "../../src/render/sshd.js";
import { parseTopology } from "../../src/schema.js";
import { nodesWithRole, type Topology } from "../../src/topology.js";
import { type Shape, topologyFor } from "../support/topologies.js";

const appNode = (t: Topology) => nodesWithRole(t, "app")[0]!;

/** sshd uses the first value of a keyword, so each must appear exactly once. */
function settings(text: string): Map<string, string> {
  const map = new Map<string, string>();
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const [key, ...rest] = line.split(" ");
    expect(map.has(key!), `duplicate ${key}`).toBe(false);
    map.set(key!, rest.join(" "));
  }
  return map;
}

describe.each<Shape>(["staging", "prod"])("upload sshd_config (%s)", (shape) => {
  const t = topologyFor(shape);
  const text = renderSshdConfig(t, appNode(t));
  const s = settings(text);

  it("listens on the backend port with the shared ed25519 host key", () => {
    expect(s.get("Port")).toBe(String(t.upload.backendPort));
    expect(s.get("HostKey")).toBe("/etc/ssh/ssh_host_ed25519_key");
    expect(s.get("LogLevel")).toBe("VERBOSE");
    expect(text.endsWith("\n")).toBe(true);
    expect(text).not.toMatch(/^Include/m);
  });

  it("allows key authentication only, for the upload users only", () => {
    expect(s.get("PasswordAuthentication")).toBe("no");
    expect(s.get("KbdInteractiveAuthentication")).toBe("no");
    expect(s.get("PubkeyAuthentication")).toBe("yes");
    expect(s.get("AuthenticationMethods")).toBe("publickey");
    expect(s.get("PermitRootLogin")).toBe("no");
    expect(s.get("PermitEmptyPasswords")).toBe("no");
    expect(s.get("AuthorizedKeysFile")).toBe("/etc/ssh/authorized_keys/%u");
    expect(s.get("AllowUsers")).toBe(t.upload.users.map((u) => u.name).join(" "));
  });

  it("offers chrooted SFTP and nothing else", () => {
    expect(s.get("Subsystem")).toBe("sftp internal-sftp -u 0022 -l INFO");
    expect(s.get("ForceCommand")).toBe("internal-sftp -u 0022 -l INFO");
    expect(s.get("ChrootDirectory")).toBe(`${t.storage.packageRoot}/incoming/%u`);
    for (const k of [
      "AllowTcpForwarding",
      "AllowStreamLocalForwarding",
      "AllowAgentForwarding",
      "X11Forwarding",
      "PermitTunnel",
      "GatewayPorts",
      "PermitUserRC",
      "PermitTTY",
      "PermitUserEnvironment",
    ]) {
      expect(s.get(k), k).toBe("no");
    }
    expect(s.get("DisableForwarding")).toBe("yes");
    expect(s.get("PermitOpen")).toBe("none");
  });

  it("bounds unauthenticated connections", () => {
    expect(s.get("LoginGraceTime")).toBe("30");
    expect(s.get("MaxStartups")).toBe("10:30:60");
    expect(s.get("MaxAuthTries")).toBe("3");
  });

  it("renders one restricted authorized_keys file per user", () => {
    for (const u of t.upload.users) {
      expect(authorizedKeysPath(u.name)).toBe(`/etc/ssh/authorized_keys/${u.name}`);
      expect(renderAuthorizedKeys(t, u.name)).toBe(`restrict ${u.publicKey}\n`);
      expect(uploadDir(t, u.name)).toBe(`${t.storage.packageRoot}/incoming/${u.name}/upload`);
    }
    expect(() => renderAuthorizedKeys(t, "mallory")).toThrow(/mallory/);
  });
});

describe("sshd helpers", () => {
  it("sshdQuote leaves plain tokens bare and quotes the rest", () => {
    expect(sshdQuote("/srv/pypi/incoming/%u")).toBe("/srv/pypi/incoming/%u");
    expect(sshdQuote(22)).toBe("22");
    expect(sshdQuote('a b"c')).toBe('"a b\\"c"');
    expect(() => sshdQuote("a\nb")).toThrow();
    expect(() => sshdQuote("")).toThrow();
  });

  it("restricts each key on one line", () => {
    const key = topologyFor("staging").upload.users[0]!.publicKey;
    expect(authorizedKeyLine(`${key}\n`)).toBe(`restrict ${key}`);
  });

  it("leaves bad user names and keys to parseTopology, which names the field", () => {
    const t = topologyFor("staging");
    const key = t.upload.users[0]!.publicKey;
    const withUser = (name: string, publicKey = key) => ({
      ...t,
      upload: { ...t.upload, users: [{ name, uid: 2001, publicKey }] },
    });
    for (const bad of ["root", "Alice", "a b", "../x", "", "a;b"])
      expect(() => parseTopology(withUser(bad))).toThrow("upload.users[0].name");
    expect(() => parseTopology(withUser("alice", `${key}\nssh-ed25519 AAAA evil`))).toThrow(
      "upload.users[0].publicKey",
    );
    expect(() => parseTopology(withUser("alice", `command="sh" ${key}`))).toThrow(
      "upload.users[0].publicKey",
    );
  });
});
