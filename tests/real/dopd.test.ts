/**
 * DRBD's fence-peer path on the real Heartbeat 3 of Debian: the storage pair's rendered ha.cf
 * with dopd respawned, two nodes in network namespaces. From app-a, the shipped handler and the
 * drbd-peer-outdater it calls must get the live peer's disk outdated through app-b's dopd (4),
 * and report a peer Heartbeat declared dead at once (5). No kernel here has DRBD: `drbdadm` on
 * app-b is a stand-in that records the call.
 */
import { type ChildProcess, spawnSync } from "node:child_process";
import {
  chmodSync,
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { agentScript } from "../../src/render/agent.js";
import { DOPD, DRBD_RESOURCE, dopdHaCfLines } from "../../src/render/drbd.js";
import { renderStorageHaCf } from "../../src/render/heartbeat.js";
import { nodeByName, type Topology } from "../../src/topology.js";
import {
  createBridgeNamespace,
  createNode,
  destroyNamespace,
  enterArgv,
  killNamespace,
  namespacePids,
  spawnInNode,
} from "../support/netns.js";
import { requireTools } from "../support/tools.js";
import { topologyFor } from "../support/topologies.js";

const HEARTBEAT = "/usr/libexec/heartbeat/heartbeat";
const OUTDATER = "/usr/libexec/heartbeat/drbd-peer-outdater";
const IFACE = "eth0";
const NODES = ["app-a", "app-b"] as const;
const NS = { bridge: "pypidopd-br", "app-a": "pypidopd-a", "app-b": "pypidopd-b" } as const;
const ADDRESS = { "app-a": "10.97.0.11", "app-b": "10.97.0.12" } as const;

/** The staging storage pair on one bridge. */
function labTopology(): Topology {
  const base = topologyFor("staging");
  return {
    ...base,
    backend: "lab",
    nodes: base.nodes.map((n) =>
      n.name === "app-a" || n.name === "app-b" ? { ...n, privateIp: ADDRESS[n.name], interface: IFACE } : n,
    ),
  };
}

/** The rendered ha.cf, with dopd's lines unless the renderer already carries them. */
function haCf(t: Topology, name: string): string {
  const rendered = renderStorageHaCf(t, nodeByName(t, name));
  const missing = dopdHaCfLines.filter((l) => !rendered.split("\n").includes(l));
  return `${rendered}${missing.map((l) => `${l}\n`).join("")}`;
}

const canRun = requireTools("dopd real tier", [HEARTBEAT, OUTDATER, DOPD, "ip", "unshare", "nsenter"]);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function waitFor(what: string, cond: () => boolean, timeoutMs: number): Promise<void> {
  const start = Date.now();
  while (Date.now() - start < timeoutMs) {
    if (cond()) return;
    await sleep(100);
  }
  throw new Error(`timed out after ${timeoutMs / 1000} s waiting for ${what}`);
}

describe.skipIf(!canRun)(
  "dopd on the storage pair's Heartbeat (real, network namespaces)",
  { timeout: 60_000 },
  () => {
    const t = labTopology();
    const root = mkdtempSync(join(tmpdir(), "pypi-dopd-"));
    const procs: ChildProcess[] = [];
    const readLog = (name: string) => {
      try {
        return readFileSync(join(root, name, "log", "ha-log"), "utf8");
      } catch {
        return "";
      }
    };
    const dopdRunning = (name: (typeof NODES)[number]) =>
      namespacePids(NS[name]).some((pid) => {
        try {
          return readFileSync(`/proc/${pid}/comm`, "utf8").trim() === "dopd";
        } catch {
          return false;
        }
      });
    /** drbd-peer-outdater inside app-a, as the fence-peer handler runs it. */
    /** A command inside app-a (its mount, UTS, IPC and network namespaces). */
    const inAppA = (command: string[], env: Record<string, string> = {}) => {
      const pid = procs[0]?.pid;
      if (pid === undefined) throw new Error("app-a is not running");
      const started = Date.now();
      const [cmd, ...args] = enterArgv(pid, { uts: true, ipc: true }, command);
      const r = spawnSync(cmd as string, args, {
        encoding: "utf8",
        env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin", ...env },
      });
      return { status: r.status, stderr: r.stderr, seconds: (Date.now() - started) / 1000 };
    };
    /** drbd-peer-outdater, as the handler calls it. */
    const outdate = (timeoutSeconds: number) =>
      inAppA([OUTDATER, "-t", String(timeoutSeconds), "-r", DRBD_RESOURCE, "-p", "app-b"]);
    /** The shipped handler, as drbdadm runs it. */
    const fencePeer = () => {
      const lib = join(root, "lib.sh");
      writeFileSync(lib, agentScript("lib"));
      const handler = join(root, "pypi-drbd");
      const text = agentScript("pypi-drbd").replace(/^PYPI_LIB=.*$/m, `PYPI_LIB='${lib}'`);
      writeFileSync(handler, text);
      return inAppA(["sh", handler, "fence-peer"], { DRBD_RESOURCE, DRBD_PEER: "app-b" });
    };

    beforeAll(() => {
      createBridgeNamespace(NS.bridge);
      for (const name of NODES) {
        createNode({ ns: NS[name], bridgeNs: NS.bridge, address: `${ADDRESS[name]}/24`, iface: IFACE });
        const dir = join(root, name);
        const etc = join(dir, "ha.d");
        cpSync("/etc/ha.d", etc, { recursive: true, verbatimSymlinks: true });
        writeFileSync(join(etc, "ha.cf"), haCf(t, name));
        // No resources: this tier is about dopd, not the storage group (its own tier is the lab).
        writeFileSync(join(etc, "haresources"), "");
        writeFileSync(join(etc, "authkeys"), "auth 1\n1 sha1 lab-test-secret\n", { mode: 0o600 });
        chmodSync(join(etc, "authkeys"), 0o600);
        cpSync("/var/lib/heartbeat", join(dir, "lib"), { recursive: true, verbatimSymlinks: true });
        mkdirSync(join(dir, "log"));
        // What dopd runs on the peer: `drbdadm outdate <resource>`; exit 0 means outdated.
        const drbdadm = join(dir, "drbdadm");
        writeFileSync(drbdadm, `#!/bin/sh\necho "$*" >>'${join(dir, "drbdadm.log")}'\nexit 0\n`);
        chmodSync(drbdadm, 0o755);
        const child = spawnInNode(
          {
            ns: NS[name],
            hostname: name,
            binds: [
              [etc, "/etc/ha.d"],
              [join(dir, "lib"), "/var/lib/heartbeat"],
              [join(dir, "log"), "/var/log"],
              [drbdadm, "/usr/sbin/drbdadm"],
            ],
            tmpfs: ["/run"],
            setup:
              "ulimit -l unlimited 2>/dev/null || true; install -d -o hacluster -g haclient -m 0750 /run/heartbeat /run/heartbeat/ccm /run/heartbeat/crm /run/heartbeat/dopd",
          },
          [HEARTBEAT, "-f"],
        );
        child.stdout?.resume();
        child.stderr?.resume();
        procs.push(child);
      }
    });

    afterAll(() => {
      for (const p of procs) p.kill("SIGKILL");
      for (const ns of [NS["app-a"], NS["app-b"], NS.bridge]) {
        try {
          destroyNamespace(ns);
        } catch (err) {
          console.warn(`cleanup of ${ns} failed: ${String(err)}`);
        }
      }
      rmSync(root, { recursive: true, force: true });
    });

    it("Heartbeat accepts the storage ha.cf with dopd and respawns dopd on both nodes", async () => {
      for (const name of NODES) {
        await waitFor(
          `${name} to validate its config`,
          () => readLog(name).includes("Configuration validated"),
          10_000,
        );
        await waitFor(`dopd on ${name}`, () => dopdRunning(name), 10_000);
      }
      await waitFor(
        "each node to see the other up",
        () => /app-b.*(up|active)/.test(readLog("app-a")),
        20_000,
      );
      const errors = readLog("app-a")
        .split("\n")
        .filter((l) => l.includes("ERROR:") && !l.includes("Cannot lock ourselves into memory"));
      expect(errors).toEqual([]);
    });

    it("outdates a live peer's disk through its dopd (exit 4)", async () => {
      let r = outdate(5);
      // Right after dopd starts its socket is not open yet, and drbd-peer-outdater says 5.
      for (let i = 0; i < 20 && r.status !== 4; i++) {
        await sleep(500);
        r = outdate(5);
      }
      expect(r.status).toBe(4);
      expect(readFileSync(join(root, "app-b", "drbdadm.log"), "utf8")).toContain(`outdate ${DRBD_RESOURCE}`);
      expect(existsSync(join(root, "app-a", "drbdadm.log"))).toBe(false);
    });

    it("the shipped fence-peer handler gets the same answer", () => {
      const r = fencePeer();
      expect(r.status, r.stderr).toBe(4);
      expect(r.stderr).toContain("fence-peer pypi: app-b is Outdated (exit 4)");
    });

    it("reports a peer Heartbeat declared dead at once (exit 5), with dopd agreeing", async () => {
      killNamespace(NS["app-b"]);
      await waitFor("app-a to declare app-b dead", () => /app-b.*dead/i.test(readLog("app-a")), 15_000);
      const handler = fencePeer();
      expect(handler.status, handler.stderr).toBe(5);
      expect(handler.seconds).toBeLessThan(2);
      // dopd's own answer, from Heartbeat's membership (it may be respawning: ask until it answers).
      await waitFor(
        "dopd to report app-b dead",
        () => outdate(2).status === 5 && /dopd: .*Cluster node: app-b: status: dead/.test(readLog("app-a")),
        15_000,
      );
      const log = readLog("app-a");
      const crashes = log.split("\n").filter((l) => /dopd process \d+ killed by signal 11/.test(l)).length;
      console.log(`dopd on app-a: ${crashes} SIGSEGV during this tier, each respawned by Heartbeat`);
    });
  },
);
