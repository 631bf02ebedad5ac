/**
 * A lab node's life: its root disk and data volume survive a crash, a crash ends every process
 * at once (even a respawning parent that double-forks), and freeze/thaw stop and resume it.
 * Uses namespaces of its own (pypilc<pid>-*), so it runs beside a lab.
 */
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { detachVolumes, LabNode } from "../../lab/lib/lab-node.js";
import { createBridgeNamespace, createNode, destroyNamespace, namespacePids } from "../../lab/lib/netns.js";
import { dataVolumeDevice } from "../../src/layout.js";
import { requireTools } from "../support/tools.js";

const canRun = requireTools("lab node lifecycle", ["ip", "unshare", "nsenter", "setpriv", "losetup", "perl"]);

const tag = `pypilc${process.pid % 100000}`;
const BRIDGE = `${tag}-br`;
const NS = `${tag}-n`;
const VOLUME = "vol-0c0ffee000000000a";
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Every tree the node keeps on its disk, with a file the test writes there. */
const PERSISTENT = [
  "/etc/pypi-lc-test",
  "/var/lib/pypi-lc-test",
  "/var/log/pypi-lc-test",
  "/srv/pypi-lc-test",
  "/opt/pypi-lc-test",
  "/usr/local/lib/pypi-lc-test",
  "/etc/postgresql/pypi-lc-test",
  "/var/lib/postgresql/pypi-lc-test",
];

describe.skipIf(!canRun)("lab node: disk, volume, crash, reboot", { timeout: 60_000 }, () => {
  let disk = "";
  let node: LabNode | undefined;
  const network = { iface: "eth0", address: "10.97.0.11/24", routes: ["10.97.1.0/24"] };
  const opts = { volume: { id: VOLUME, sizeBytes: 64 * 1024 ** 2 }, network };
  const n = (): LabNode => {
    if (!node) throw new Error("node not started");
    return node;
  };

  beforeAll(async () => {
    disk = mkdtempSync(join(tmpdir(), "pypi-lc-"));
    createBridgeNamespace(BRIDGE);
    createNode({ ns: NS, bridgeNs: BRIDGE, address: network.address });
    node = await LabNode.start("lc-a", NS, disk, opts);
  });

  afterAll(() => {
    node?.stop();
    destroyNamespace(NS);
    destroyNamespace(BRIDGE);
    if (disk) {
      detachVolumes(disk);
      rmSync(disk, { recursive: true, force: true });
    }
  });

  it("boots with empty Postgres trees, its hostname and its volume under the EBS name", async () => {
    expect(n().run(["hostname"]).trim()).toBe("lc-a");
    expect(
      n()
        .run(["sh", "-c", "ls -A /etc/postgresql /var/lib/postgresql | grep -v : | grep -c . || true"])
        .trim(),
    ).toBe("0");
    expect(n().run(["stat", "-c", "%U", "/var/lib/postgresql"]).trim()).toBe("postgres");
    const device = dataVolumeDevice(VOLUME);
    expect(device).toBe("/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0c0ffee000000000a");
    expect(n().run(["readlink", "-f", device]).trim()).toBe(n().volumeDevice);
    expect(n().exec(["test", "-b", device]).status).toBe(0);
    // The node sees its own disks only, and its own processes only.
    expect(n().run(["ls", "/dev/disk/by-id"]).trim().split("\n")).toEqual([device.split("/").pop()]);
    expect(n().run(["cat", "/proc/1/comm"]).trim()).toBe("perl");
  });

  it("keeps its disk and volume across a crash; /run starts empty", async () => {
    const files = [...PERSISTENT, "/run/pypi-lc-test"];
    await n().sh(`for f in ${files.join(" ")}; do echo before-crash > "$f"; done`);
    await n().sh(
      `printf 'lab volume\\n' | dd of=${dataVolumeDevice(VOLUME)} bs=512 conv=notrunc status=none`,
    );
    for (const f of files) expect(existsSync(f), `${f} leaked to the host`).toBe(false);

    const loop = n().volumeDevice;
    await n().crash();
    node = await LabNode.start("lc-a", NS, disk, opts);

    for (const f of PERSISTENT) expect(n().run(["cat", f]).trim(), f).toBe("before-crash");
    expect(n().exec(["test", "-e", "/run/pypi-lc-test"]).status).toBe(1);
    expect(n().volumeDevice).toBe(loop);
    expect(n().run(["head", "-c", "11", dataVolumeDevice(VOLUME)])).toBe("lab volume\n");
    // Boot configured the interface again: primary address, no leftovers, routes back.
    const addrs = n().run(["ip", "-o", "-4", "addr", "show", "dev", "eth0"]);
    expect(addrs).toContain("10.97.0.11/24");
    expect(n().run(["ip", "route", "show", "10.97.1.0/24"])).toContain("dev eth0");
  });

  it("a crash kills every process at once, a respawning double-forker included", async () => {
    // A parent that keeps double-forking daemons, and a second parent that respawns the first.
    await n().sh("cat >/run/forker.sh", { input: "while :; do sh -c 'sleep 1000 &'; sleep 0.02; done\n" });
    await n().sh("cat >/run/respawn.sh", { input: "while :; do sh /run/forker.sh; done\n" });
    await n().sh("nohup sh /run/respawn.sh >/dev/null 2>&1 &");
    await sleep(500);
    // The short-lived `sh -c` parents come and go; the daemons only pile up until the crash.
    const daemons = namespacePids(NS).filter((pid) => {
      try {
        return readFileSync(`/proc/${pid}/cmdline`, "utf8") === "sleep\u00001000\u0000";
      } catch {
        return false;
      }
    }).length;
    expect(daemons).toBeGreaterThan(10);
    const had = await n().crash();
    expect(had).toBeGreaterThanOrEqual(daemons);
    expect(namespacePids(NS)).toEqual([]);
    expect(n().processes()).toEqual([]);
    await sleep(1_000);
    expect(namespacePids(NS)).toEqual([]);
    expect(execFileSync("ip", ["-n", NS, "-o", "link", "show", "eth0"], { encoding: "utf8" })).toMatch(
      /state DOWN/,
    );
    expect(n().up).toBe(false);
  });

  it("reboot() boots the same object again; freeze() stops the node and thaw() resumes it", async () => {
    await n().boot();
    await n().sh(
      "nohup sh -c 'i=0; while :; do i=$((i+1)); echo $i > /run/count; sleep 0.05; done' >/dev/null 2>&1 &",
    );
    await sleep(300);
    const frozen = n().freeze();
    expect(frozen).toBeGreaterThan(2);
    await sleep(100);
    const a = n().run(["cat", "/run/count"]);
    await sleep(500);
    expect(n().run(["cat", "/run/count"])).toBe(a);
    n().thaw();
    await sleep(500);
    expect(Number(n().run(["cat", "/run/count"]))).toBeGreaterThan(Number(a));
    await n().reboot();
    expect(n().exec(["test", "-e", "/run/count"]).status).toBe(1);
    expect(n().run(["cat", "/etc/pypi-lc-test"]).trim()).toBe("before-crash");
  });

  it("lab down's volume cleanup detaches the loop device, also after a crash", async () => {
    await n().crash();
    const devices = detachVolumes(disk);
    expect(devices).toHaveLength(1);
    expect(detachVolumes(disk)).toEqual([]);
  });
});
