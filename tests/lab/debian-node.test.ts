/**
 * App nodes run the index app on Debian 12's nodejs (18), as the app servers do on AWS, not on
 * this host's node: the lab's preflight unpacks Debian's packages and the node lays them over
 * its /usr. Downloads them once (apt-get download) when the cache lacks them.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { LabNode } from "../../lab/lib/lab-node.js";
import { createNamespace, destroyNamespace } from "../../lab/lib/netns.js";
import { DEBIAN_NODE_MAJOR, ensureDebianNode } from "../../lab/lib/preflight.js";
import { indexAppScript } from "../../src/app-artifact.js";
import { indexScriptPath } from "../../src/render/systemd.js";
import { inCi, requireTools } from "../support/tools.js";

function debianNode(): string | undefined {
  if (!requireTools("Debian nodejs in lab nodes", ["ip", "unshare", "nsenter", "apt-get", "dpkg-deb"]))
    return;
  try {
    return ensureDebianNode((msg) => console.log(msg));
  } catch (err) {
    if (inCi) throw err;
    console.warn(
      `Debian nodejs in lab nodes: cannot get Debian's nodejs (${String(err)}) (skipped outside CI)`,
    );
    return undefined;
  }
}

const tree = debianNode();
const NS = `pypidn${process.pid % 100000}`;

describe.skipIf(!tree)("lab app node: Debian 12's nodejs", { timeout: 60_000 }, () => {
  let disk = "";
  let node: LabNode | undefined;
  const n = (): LabNode => {
    if (!node) throw new Error("node not started");
    return node;
  };

  beforeAll(async () => {
    createNamespace(NS);
    disk = mkdtempSync(join(tmpdir(), "pypi-dn-"));
    node = await LabNode.start("dn-app", NS, disk, { usrLayers: [tree as string] });
  });

  afterAll(() => {
    node?.stop();
    destroyNamespace(NS);
    if (disk) rmSync(disk, { recursive: true, force: true });
  });

  it(`runs node v${DEBIAN_NODE_MAJOR} as /usr/bin/node, and the host keeps its own`, () => {
    expect(n().run(["node", "--version"]).trim()).toMatch(new RegExp(`^v${DEBIAN_NODE_MAJOR}\\.`));
    expect(n().run(["sh", "-c", "command -v node"]).trim()).toBe("/usr/bin/node");
    expect(process.version.startsWith(`v${DEBIAN_NODE_MAJOR}.`)).toBe(false);
  });

  it("starts the index app bundle through its shebang", async () => {
    await n().sh(`mkdir -p /opt/pypi-index && cat >${indexScriptPath} && chmod 0755 ${indexScriptPath}`, {
      input: indexAppScript(),
    });
    const r = n().exec([indexScriptPath, "--help"]);
    expect(r.stderr).toBe("");
    expect(r.stdout).toMatch(/^usage: pypi-index/);
    expect(r.status).toBe(0);
  });
});
