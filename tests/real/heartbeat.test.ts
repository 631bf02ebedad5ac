/**
 * Real Heartbeat 3 on a lab-shaped balancer pair: both nodes in their own network, mount and
 * UTS namespaces, bridged through a namespace of their own, running the rendered ha.cf and
 * haresources. Proves the config is accepted, that each floating IP comes up on its home node,
 * and measures how long the survivor takes to hold both after the other dies.
 */
import type { ChildProcess } from "node:child_process";
import { chmodSync, cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, dirname, join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { paths } from "../../src/layout.js";
import { agentScript, renderAgentEnv } from "../../src/render/agent.js";
import {
  type ResourceScript,
  renderBalancerHaCf,
  renderBalancerHaresources,
} from "../../src/render/heartbeat.js";
import { nodeByName, type Topology } from "../../src/topology.js";
import {
  addressesOf,
  createBridgeNamespace,
  createNode,
  destroyNamespace,
  killNamespace,
  spawnInNode,
} from "../support/netns.js";
import { requireTools } from "../support/tools.js";
import { topologyFor } from "../support/topologies.js";

const HEARTBEAT = "/usr/libexec/heartbeat/heartbeat";
const IFACE = "eth0";
const NS = { bridge: "pypihb-br", "lb-a": "pypihb-lb-a", "lb-b": "pypihb-lb-b" } as const;
const FIPS = ["10.98.0.101", "10.98.0.102"];

/** A lab-shaped topology: two balancers on one bridge, two floating IPs homed on each. */
function labTopology(): Topology {
  const base = topologyFor("prod");
  return {
    ...base,
    environment: "lab",
    backend: "lab",
    nodes: base.nodes.map((n) =>
      n.role !== "balancer"
        ? n
        : {
            ...n,
            privateIp: n.name === "lb-a" ? "10.98.0.11" : "10.98.0.12",
            interface: IFACE,
            secondaryIps: [],
          },
    ),
    floatingIps: FIPS.map((address, i) => ({
      address,
      allocationId: `lab-fip-${i}`,
      home: i === 0 ? "lb-a" : "lb-b",
    })),
  };
}

/**
 * What `/etc/ha.d/resource.d/<name>` contains in this test: the rendered wrapper, which execs the
 * real node agent (lab backend). The stand-in below does the same with bare `ip`, for debugging
 * Heartbeat apart from the agent.
 */
export type ResourceScriptSource = (name: ResourceScript) => string;

export const standInResourceScript: ResourceScriptSource = () =>
  [
    "#!/bin/sh",
    "addr=$1",
    `held() { ip -o addr show dev ${IFACE} | grep -q " $addr/"; }`,
    "case $2 in",
    `  start) held || ip addr add "$addr/32" dev ${IFACE} ;;`,
    `  stop) if held; then ip addr del "$addr/32" dev ${IFACE}; fi ;;`,
    "  status) if held; then echo running; else echo stopped; fi ;;",
    "  *) exit 2 ;;",
    "esac",
    "",
  ].join("\n");

/** The agent's own resource script, for when the nodes carry the real agent. */
export const agentResourceScript: ResourceScriptSource = (name) => agentScript(name);

const resourceScript: ResourceScriptSource = agentResourceScript;

const canRun = requireTools("heartbeat real tier", [HEARTBEAT, "ip", "unshare"]);

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function waitFor(what: string, cond: () => boolean, timeoutMs: number): Promise<number> {
  const start = Date.now();
  while (Date.now() - start < timeoutMs) {
    if (cond()) return (Date.now() - start) / 1000;
    await sleep(100);
  }
  throw new Error(`timed out after ${timeoutMs / 1000} s waiting for ${what}`);
}

describe.skipIf(!canRun)("heartbeat balancer pair (real, network namespaces)", { timeout: 30_000 }, () => {
  const t = labTopology();
  const root = mkdtempSync(join(tmpdir(), "pypi-hb-"));
  const procs: ChildProcess[] = [];
  const logOf = (name: string) => join(root, name, "log", "ha-log");
  const readLog = (name: string) => {
    try {
      return readFileSync(logOf(name), "utf8");
    } catch {
      return "";
    }
  };

  beforeAll(() => {
    createBridgeNamespace(NS.bridge);
    for (const name of ["lb-a", "lb-b"] as const) {
      const node = nodeByName(t, name);
      createNode({ ns: NS[name], bridgeNs: NS.bridge, address: `${node.privateIp}/24`, iface: IFACE });
      const dir = join(root, name);
      const etc = join(dir, "ha.d");
      // The package's harc, rc.d, resource.d and shellfuncs, plus this node's rendered files.
      cpSync("/etc/ha.d", etc, { recursive: true, verbatimSymlinks: true });
      writeFileSync(join(etc, "ha.cf"), renderBalancerHaCf(t, node));
      writeFileSync(join(etc, "haresources"), renderBalancerHaresources(t));
      writeFileSync(join(etc, "authkeys"), "auth 1\n1 sha1 lab-test-secret\n", { mode: 0o600 });
      chmodSync(join(etc, "authkeys"), 0o600);
      writeFileSync(join(etc, "resource.d", "pypi-fip"), resourceScript("pypi-fip"), { mode: 0o755 });
      cpSync("/var/lib/heartbeat", join(dir, "lib"), { recursive: true, verbatimSymlinks: true });
      // The real node agent and its node.env, exactly as a bundle ships them.
      mkdirSync(join(dir, "sbin"));
      writeFileSync(join(dir, "sbin", "pypi-node"), agentScript(), { mode: 0o755 });
      // Heartbeat respawns the balancer tool's watchdog.
      writeFileSync(join(dir, "sbin", "pypi-balancer"), agentScript("pypi-balancer"), { mode: 0o755 });
      // The library at its installed path: a private /usr/local/lib holding only the agent's.
      mkdirSync(join(dir, "usr-local-lib", basename(dirname(paths.agentLib))), { recursive: true });
      writeFileSync(
        join(dir, "usr-local-lib", basename(dirname(paths.agentLib)), basename(paths.agentLib)),
        agentScript("lib"),
      );
      writeFileSync(join(etc, "pypi-node.env"), renderAgentEnv(t, node, ["heartbeat"]));
      mkdirSync(join(dir, "log"));
      const child = spawnInNode(
        {
          ns: NS[name],
          hostname: name,
          binds: [
            [etc, "/etc/ha.d"],
            [join(dir, "lib"), "/var/lib/heartbeat"],
            [join(dir, "log"), "/var/log"],
            [join(dir, "sbin"), "/usr/local/sbin"],
            [join(dir, "usr-local-lib"), dirname(dirname(paths.agentLib))],
          ],
          tmpfs: ["/run"],
          // Heartbeat mlocks itself; raise the limit where the sandbox allows it.
          setup:
            "export PYPI_NODE_CONFIG=/etc/ha.d/pypi-node.env; ulimit -l unlimited 2>/dev/null || true; install -d -o hacluster -g haclient -m 0750 /run/heartbeat /run/heartbeat/ccm /run/heartbeat/crm",
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
    for (const ns of [NS["lb-a"], NS["lb-b"], NS.bridge]) {
      try {
        destroyNamespace(ns);
      } catch (err) {
        console.warn(`cleanup of ${ns} failed: ${String(err)}`);
      }
    }
    rmSync(root, { recursive: true, force: true });
  });

  it("accepts the rendered config on both nodes", async () => {
    for (const name of ["lb-a", "lb-b"]) {
      await waitFor(
        `${name} to validate its config`,
        () => readLog(name).includes("Configuration validated"),
        10_000,
      );
      // Failing to mlock (a locked-memory limit) is logged as an error but is not fatal.
      const errors = readLog(name)
        .split("\n")
        .filter((l) => l.includes("ERROR:") && !l.includes("Cannot lock ourselves into memory"));
      expect(errors).toEqual([]);
    }
  });

  it("brings each floating IP up on its home balancer", async () => {
    const [fipA, fipB] = FIPS as [string, string];
    await waitFor(
      "each home to hold its floating IP",
      () => addressesOf(NS["lb-a"], IFACE).includes(fipA) && addressesOf(NS["lb-b"], IFACE).includes(fipB),
      20_000,
    );
    expect(addressesOf(NS["lb-a"], IFACE)).not.toContain(fipB);
    expect(addressesOf(NS["lb-b"], IFACE)).not.toContain(fipA);
  });

  it("moves lb-a's floating IP to lb-b when lb-a dies", async () => {
    killNamespace(NS["lb-a"]);
    const seconds = await waitFor(
      "lb-b to hold both floating IPs",
      () => FIPS.every((a) => addressesOf(NS["lb-b"], IFACE).includes(a)),
      15_000,
    );
    console.log(
      `heartbeat failover: lb-b held both floating IPs ${seconds.toFixed(1)} s after lb-a was killed (deadtime ${t.heartbeat.deadtimeMs} ms)`,
    );
    expect(readLog("lb-b")).toMatch(/lb-a.*dead/i);
  });
});
