import { describe, expect, it } from "vitest";
import {
  renderSshLimitsDropIn,
  renderUploadWatchService,
  sshLimitsDropInPath,
  uploadFsizeLimit,
  uploadWatchUnitPath,
} from "../../src/render/ssh-limits.js";
import {
  authorizedKeyLine,
  authorizedKeysPath,
  renderAuthorizedKeys,
  renderSshdConfig,
  sftpAllowedRequests,
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
    const flags = `-u 0022 -l INFO -p ${sftpAllowedRequests.join(",")}`;
    expect(s.get("Subsystem")).toBe(`sftp internal-sftp ${flags}`);
    expect(s.get("ForceCommand")).toBe(`internal-sftp ${flags}`);
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

  it("lets the uploader put, rename and remove files, but never change modes or make links", () => {
    expect(sftpAllowedRequests).toEqual(
      expect.arrayContaining(["open", "write", "close", "rename", "remove"]),
    );
    for (const denied of [
      "setstat",
      "fsetstat",
      "lsetstat",
      "mkdir",
      "rmdir",
      "symlink",
      "hardlink",
      "copy-data",
    ])
      expect(sftpAllowedRequests as readonly string[]).not.toContain(denied);
    expect(text).toMatchSnapshot();
  });

  it("limits the file size of ssh.service one byte above the upload limit, after the watcher", () => {
    const dropIn = renderSshLimitsDropIn(t);
    expect(sshLimitsDropInPath).toBe("/etc/systemd/system/ssh.service.d/pypi-upload.conf");
    expect(dropIn).toContain(`\nLimitFSIZE=${t.upload.maxFileBytes + 1}\n`);
    expect(uploadFsizeLimit(t)).toBe(t.upload.maxFileBytes + 1);
    expect(dropIn).toMatch(/^Wants=pypi-upload-watch\.service$/m);
    expect(dropIn).not.toMatch(/^Requires=/m);
    expect(dropIn).toMatch(/^After=pypi-upload-watch\.service$/m);
    expect(dropIn).toMatchSnapshot();
  });

  it("runs the upload watcher as root, writing only its state directory", () => {
    const unit = renderUploadWatchService(t, appNode(t));
    expect(uploadWatchUnitPath).toBe("/etc/systemd/system/pypi-upload-watch.service");
    expect(unit).toMatch(
      new RegExp(
        `^ExecStart=/opt/pypi-index/index.fcgi watch-uploads --host "${appNode(t).name}" --write-as www-data$`,
        "m",
      ),
    );
    expect(unit).toMatch(/^Restart=always$/m);
    expect(unit).toMatch(/^Before=ssh\.service$/m);
    expect(unit).not.toMatch(/^User=/m);
    expect(unit).toContain(`\nReadWritePaths="${t.storage.packageRoot}/.sftp-state"\n`);
    expect(unit).toMatchSnapshot();
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
