/**
 * `pypi-node converge` on app servers, the part no kernel here can run for real: DRBD's first
 * bring-up on the storage pair and the NFS mount unit. The shipped agent runs under `sh` against
 * fake drbdadm, modprobe, wipefs, mkfs.ext4, systemctl, psql and runuser that log their calls;
 * the data volume is a block device node that nothing backs.
 */
import { execFileSync } from "node:child_process";
import { appendFileSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { renderAgentEnv } from "../../src/render/agent.js";
import { mountUnitName } from "../../src/render/nfs.js";
import { nodeByName, type Topology } from "../../src/topology.js";
import { topologyFor } from "../support/topologies.js";
import { type FakeCloud, fakeCloud } from "./fake-cloud.js";

const base = topologyFor("prod");
const t: Topology = {
  ...base,
  nodes: base.nodes.map((n) =>
    n.name === "app-a"
      ? { ...n, dataVolumeId: "vol-0123456789abcdef0" }
      : n.name === "app-b"
        ? { ...n, dataVolumeId: "vol-0fedcba9876543210" }
        : n,
  ),
};

/** Logs every call; `dump-md` fails until create-md ran, `cstate` says Connected, `dstate` reads a file. */
const fakeDrbdadm = (dir: string) => `#!/bin/sh
echo "$*" >>'${dir}/drbd.log'
case "$*" in
  "dump-md "*) [ -e '${dir}/md' ] || exit 255 ;;
  "-- --force create-md "*) : >'${dir}/md' ;;
  "cstate "*) echo Connected ;;
  "dstate "*) cat '${dir}/dstate' ;;
esac
exit 0
`;
const logger = (dir: string, name: string) => `#!/bin/sh\necho "$*" >>'${dir}/${name}.log'\n`;

let cloud: FakeCloud | undefined;
afterEach(() => cloud?.cleanup());

function storageNode(name: string, opts: { wipefs?: string; dstate?: string; synced?: boolean } = {}) {
  const node = nodeByName(t, name);
  const env0 = renderAgentEnv(t, node, ["ssh", "apache2", "heartbeat", "pypi-index-register"]);
  const c = fakeCloud(env0);
  cloud = c;
  const device = join(c.dir, "disk");
  execFileSync("mknod", [device, "b", "7", "250"]);
  const state = join(c.dir, "state");
  const root = join(c.dir, "packages");
  mkdirSync(join(root, "incoming"), { recursive: true });
  mkdirSync(state);
  if (opts.synced) writeFileSync(join(state, "drbd-initial-sync"), "");
  writeFileSync(join(c.dir, "app.env"), "");
  writeFileSync(join(c.dir, "dstate"), `${opts.dstate ?? "Inconsistent/Inconsistent"}\n`);
  // The node's own paths pointed into the test directory; everything else as rendered.
  appendFileSync(
    join(c.dir, "node.env"),
    `PYPI_DATA_DEVICE='${device}'\nPYPI_AGENT_STATE='${state}'\nPYPI_PACKAGE_ROOT='${root}'\nPYPI_APP_ENV='${join(c.dir, "app.env")}'\n`,
  );
  c.install("drbdadm", fakeDrbdadm(c.dir));
  c.install("wipefs", `#!/bin/sh\nprintf '%s' '${opts.wipefs ?? ""}'\n`);
  for (const tool of ["modprobe", "mkfs.ext4", "systemctl", "runuser"]) c.install(tool, logger(c.dir, tool));
  c.install("psql", "#!/bin/sh\necho f\n");
  const log = (file: string): string[] => {
    try {
      return readFileSync(join(c.dir, `${file}.log`), "utf8")
        .split("\n")
        .filter(Boolean);
    } catch {
      return [];
    }
  };
  return { run: () => c.run("pypi-node", ["converge"]), log, state };
}

describe("converge on the storage pair (DRBD's first bring-up)", () => {
  it("the home node puts metadata on its new disk and forces the first sync, once", () => {
    const n = storageNode("app-a");
    const r = n.run();
    expect(r.status, r.stderr).toBe(0);
    expect(n.log("drbd")).toEqual([
      "dump-md pypi",
      "-- --force create-md pypi",
      "cstate pypi",
      "cstate pypi",
      "dstate pypi",
      "primary --force pypi",
      "secondary pypi",
    ]);
    expect(n.log("mkfs.ext4")).toEqual(["-q -L pypi-packages /dev/drbd0"]);
    expect(n.log("systemctl")).toEqual(
      expect.arrayContaining([`enable --now ${mountUnitName(t.storage.packageRoot)}`]),
    );
    expect(n.log("runuser").some((l) => l.endsWith(" migrate"))).toBe(true);
    expect(r.stdout).toContain("converge: app-a serves the index");
    // A second converge (a reboot) neither re-creates metadata nor forces a sync again.
    const again = n.run();
    expect(again.status, again.stderr).toBe(0);
    expect(n.log("drbd").filter((l) => /create-md|primary --force/.test(l))).toHaveLength(2);
    expect(n.log("mkfs.ext4")).toHaveLength(1);
  });

  it("the peer never forces a sync nor makes a filesystem", () => {
    const n = storageNode("app-b");
    const r = n.run();
    expect(r.status, r.stderr).toBe(0);
    expect(n.log("drbd")).toEqual(["dump-md pypi", "-- --force create-md pypi", "cstate pypi"]);
    expect(n.log("mkfs.ext4")).toEqual([]);
  });

  it("the home node does not force a sync when the peer already has data", () => {
    const n = storageNode("app-a", { dstate: "Inconsistent/UpToDate" });
    expect(n.run().status).toBe(0);
    expect(n.log("drbd").some((l) => l.startsWith("primary"))).toBe(false);
    expect(n.log("mkfs.ext4")).toEqual([]);
  });

  it("a disk with data on it but no DRBD metadata is never touched", () => {
    const n = storageNode("app-a", { wipefs: "ext4" });
    const r = n.run();
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain("carries data but no DRBD metadata");
    expect(n.log("drbd")).toEqual(["dump-md pypi"]);
    expect(n.log("mkfs.ext4")).toEqual([]);
  });

  it("an app server outside the pair has no DRBD to bring up", () => {
    const n = storageNode("app-c");
    expect(n.run().status).toBe(0);
    expect(n.log("drbd")).toEqual([]);
    expect(n.log("modprobe")).toEqual([]);
  });
});
