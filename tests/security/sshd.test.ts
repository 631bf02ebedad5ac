import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, test } from "vitest";
import { isolatedArgv } from "../../lab/lib/netns.js";
import { renderSshdConfig, uploadChrootRoot } from "../../src/render/sshd.js";
import { requireTools } from "../support/tools.js";
import { topologyFor } from "../support/topologies.js";

const SSHD = "/usr/sbin/sshd";
const canRun = requireTools("sshd -T", [SSHD, "ssh-keygen", "unshare"]);
const dir = mkdtempSync(join(tmpdir(), "pypi-sshd-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/**
 * sshd's effective settings for a connection: `sshd -T` with the Match context of `-C`.
 * sshd wants its privilege-separation directory; if the host has none, it gets a private
 * tmpfs /run in a mount namespace of its own, so nothing is created on the host. The host
 * key comes from a throwaway key passed with -h (the configured path may not exist here).
 */
function effective(config: string, connection: string): Map<string, string> {
  const file = join(dir, "sshd_config");
  const key = join(dir, "host_key");
  writeFileSync(file, config);
  if (!existsSync(key)) execFileSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", key]);
  const sshd = [SSHD, "-T", "-f", file, "-h", key, "-C", connection];
  const out = existsSync("/run/sshd")
    ? execFileSync(sshd[0]!, sshd.slice(1), { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] })
    : (() => {
        const [cmd, ...args] = isolatedArgv({}, 'mount -t tmpfs tmpfs /run && mkdir /run/sshd && exec "$@"', [
          "sh",
          ...sshd,
        ]);
        return execFileSync(cmd as string, args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
      })();
  const settings = new Map<string, string>();
  for (const line of out.split("\n")) {
    const m = /^(\S+) (.*)$/.exec(line);
    if (m && !settings.has(m[1]!)) settings.set(m[1]!, m[2]!);
  }
  return settings;
}

describe.skipIf(!canRun)("upload sshd: effective settings from the real sshd -T", () => {
  const t = topologyFor("staging", 15);
  const node = t.nodes.find((n) => n.role === "app")!;
  const config = renderSshdConfig(t, node);
  const user = t.upload.users[0]!.name;

  test("an upload user gets key-only, chrooted SFTP and nothing else", () => {
    const s = effective(config, `user=${user},host=x,addr=10.0.0.1`);
    expect(Object.fromEntries(s)).toMatchObject({
      passwordauthentication: "no",
      kbdinteractiveauthentication: "no",
      permitrootlogin: "no",
      allowtcpforwarding: "no",
      allowagentforwarding: "no",
      allowstreamlocalforwarding: "no",
      x11forwarding: "no",
      permittunnel: "no",
      gatewayports: "no",
      disableforwarding: "yes",
      permittty: "no",
      permituserrc: "no",
      permitemptypasswords: "no",
      hostbasedauthentication: "no",
      authenticationmethods: "publickey",
      chrootdirectory: `${uploadChrootRoot(t)}/%u`,
      usepam: "no",
    });
    expect(s.get("chrootdirectory")).toBe("/srv/pypi/incoming/%u");
    expect(s.get("forcecommand")).toMatch(/^internal-sftp( |$)/);
    expect(s.get("allowusers")?.split(" ")).toEqual(t.upload.users.map((u) => u.name));
    expect(s.get("authorizedkeysfile")).toBe("/etc/ssh/authorized_keys/%u");
  });

  test("root and other addresses get the same closed settings (no Match block loosens them)", () => {
    for (const connection of ["user=root,host=x,addr=127.0.0.1", `user=${user},host=y,addr=203.0.113.7`]) {
      const s = effective(config, connection);
      expect(s.get("permitrootlogin"), connection).toBe("no");
      expect(s.get("passwordauthentication"), connection).toBe("no");
      expect(s.get("forcecommand"), connection).toMatch(/^internal-sftp/);
      expect(s.get("disableforwarding"), connection).toBe("yes");
    }
  });

  test("the check can fail: a loosened config shows up in the effective settings", () => {
    const loose = `${config}Match User ${user}\n  PasswordAuthentication yes\n  AllowTcpForwarding yes\n`;
    const s = effective(loose, `user=${user},host=x,addr=10.0.0.1`);
    expect(s.get("passwordauthentication")).toBe("yes");
    expect(s.get("allowtcpforwarding")).toBe("yes");
  });
});
