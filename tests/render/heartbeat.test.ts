import { describe, expect, it } from "vitest";
import { agentScript, agentScriptPaths } from "../../src/render/agent.js";
import {
  haToken,
  heartbeatPaths,
  renderBalancerHaCf,
  renderBalancerHaresources,
  renderStorageHaCf,
  renderStorageHaresources,
} from "../../src/render/heartbeat.js";
import { parseTopology } from "../../src/schema.js";
import { nodeByName, type Topology } from "../../src/topology.js";
import { asLab, type Shape, topologyFor } from "../support/topologies.js";

const lines = (text: string) => text.split("\n");

describe.each<Shape>(["staging", "prod"])("heartbeat (%s)", (shape) => {
  const t = topologyFor(shape);
  const lbA = nodeByName(t, "lb-a");
  const lbB = nodeByName(t, "lb-b");

  it("unicasts to the peer balancer after udpport, with explicit timings", () => {
    const cf = lines(renderBalancerHaCf(t, lbA));
    expect(cf).toContain("ucast ens5 10.40.1.10");
    expect(cf.filter((l) => l.startsWith("ucast"))).toEqual(["ucast ens5 10.40.1.10"]);
    expect(cf.indexOf("udpport 694")).toBeGreaterThan(-1);
    expect(cf.indexOf("udpport 694")).toBeLessThan(cf.findIndex((l) => l.startsWith("ucast")));
    expect(cf).toEqual(
      expect.arrayContaining([
        "keepalive 500ms",
        "warntime 1000ms",
        "deadtime 1500ms",
        "initdead 10000ms",
        "auto_failback on",
        "autojoin none",
        "node lb-a",
        "node lb-b",
        "crm no",
        `logfile ${heartbeatPaths.logfile}`,
        "logfacility local0",
      ]),
    );
    expect(lines(renderBalancerHaCf(t, lbB))).toContain("ucast ens5 10.40.0.10");
    expect(renderBalancerHaCf(t, lbA).endsWith("\n")).toBe(true);
  });

  it("respawns the agent's nginx watchdog on balancers only", () => {
    expect(lines(renderBalancerHaCf(t, lbA))).toContain("respawn root /usr/local/sbin/pypi-balancer watch");
    const storage = renderStorageHaCf(t, nodeByName(t, "app-a"));
    expect(storage).not.toMatch(/pypi-balancer/);
  });

  it("renders auto_failback off when asked", () => {
    const off: Topology = { ...t, heartbeat: { ...t.heartbeat, autoFailback: false } };
    expect(lines(renderBalancerHaCf(off, lbA))).toContain("auto_failback off");
  });

  it("homes each floating IP on its balancer", () => {
    const res = lines(renderBalancerHaresources(t)).filter((l) => l !== "" && !l.startsWith("#"));
    expect(res).toEqual(t.floatingIps.map((f) => `${f.home} pypi-fip::${f.address}`));
    expect(res[0]).toMatch(/^lb-a /);
    if (shape === "prod") expect(res[1]).toMatch(/^lb-b /);
  });

  it("runs the storage group on the first app server, in start order", () => {
    const appA = nodeByName(t, "app-a");
    const cf = lines(renderStorageHaCf(t, appA));
    expect(cf.filter((l) => l.startsWith("ucast"))).toEqual([
      `ucast ens5 ${nodeByName(t, "app-b").privateIp}`,
    ]);
    expect(cf).toEqual(expect.arrayContaining(["node app-a", "node app-b", "crm no"]));
    expect(cf).not.toContain("node app-c");
    expect(lines(renderStorageHaresources(t))).toEqual([
      "app-a drbddisk::pypi Filesystem::/dev/drbd0::/srv/pypi-volume::ext4 pypi-nfs pypi-overlay::100.64.10.6",
      "",
    ]);
    // DRBD's fence-peer handler reaches the peer through dopd, which Heartbeat runs.
    expect(cf).toEqual(
      expect.arrayContaining(["respawn root /usr/libexec/heartbeat/dopd", "apiauth dopd uid=root"]),
    );
  });

  it("in the lab, whose kernel has no DRBD, the storage group starts at the NFS resource", () => {
    const lab = asLab(t);
    expect(lines(renderStorageHaresources(lab))).toEqual(["app-a pypi-nfs pypi-overlay::100.64.10.6", ""]);
    expect(renderStorageHaCf(lab, nodeByName(lab, "app-a"))).not.toContain("dopd");
  });
});

describe("heartbeat timings and homes: parseTopology judges them, the renderer does not", () => {
  const t = topologyFor("staging");
  const withHb = (hb: Partial<Topology["heartbeat"]>): Topology => ({
    ...t,
    heartbeat: { ...t.heartbeat, ...hb },
  });

  it("rejects deadtime <= 2 * keepalive, naming field and value", () => {
    expect(() => parseTopology(withHb({ deadtimeMs: 1000 }))).toThrow(
      "heartbeat.deadtimeMs: 1000 is not valid",
    );
    expect(() => parseTopology(withHb({ deadtimeMs: 1001 }))).not.toThrow();
  });

  it("rejects initdead below 2 x deadtime and warntime outside (keepalive, deadtime)", () => {
    expect(() => parseTopology(withHb({ initdeadMs: 1500 }))).toThrow(
      "heartbeat.initdeadMs: 1500 is not valid",
    );
    expect(() => parseTopology(withHb({ initdeadMs: 3000 }))).not.toThrow();
    expect(() => parseTopology(withHb({ warntimeMs: 1500 }))).toThrow(
      "heartbeat.warntimeMs: 1500 is not valid",
    );
    expect(() => parseTopology(withHb({ keepaliveMs: 0.5 }))).toThrow(
      "heartbeat.keepaliveMs: 0.5 is not valid",
    );
  });

  it("rejects a floating IP homed outside the balancers", () => {
    const bad: Topology = { ...t, floatingIps: [{ ...t.floatingIps[0]!, home: "app-a" }] };
    expect(() => parseTopology(bad)).toThrow('floatingIps[0].home: "app-a" is not valid');
  });
});

describe("haToken", () => {
  it("rejects tokens that would change ha.cf's meaning", () => {
    expect(haToken("x", "eth0")).toBe("eth0");
    for (const bad of ["", "a b", "a\nb", "a#b", "a::b", "a\tb"]) {
      expect(() => haToken("node.interface", bad)).toThrow(/node\.interface/);
    }
    const t = topologyFor("staging");
    const evil: Topology = {
      ...t,
      nodes: t.nodes.map((n) => (n.name === "lb-a" ? { ...n, interface: "ens5\nnode evil" } : n)),
    };
    expect(() => renderBalancerHaCf(evil, nodeByName(evil, "lb-a"))).toThrow(/lb-a\.interface/);
  });
});

describe("resource scripts", () => {
  it("carry their own logic and source the agent library from its installed path", () => {
    for (const name of ["pypi-fip", "pypi-nfs", "pypi-overlay"] as const) {
      const text = agentScript(name);
      expect(agentScriptPaths[name]).toBe(`/etc/ha.d/resource.d/${name}`);
      expect(lines(text).slice(0, 2)).toEqual(["#!/bin/sh", "PYPI_LIB='/usr/local/lib/pypi-node/lib.sh'"]);
      expect(text).not.toMatch(/exec \/usr\/local\/sbin\/pypi-node/);
    }
    expect(agentScript("pypi-fip")).toContain("associate-address");
  });

  it("tools find the library next to themselves, so an unpacked bundle runs its own", () => {
    expect(lines(agentScript("pypi-node"))[1]).toBe('PYPI_LIB="$(dirname "$0")/../lib/pypi-node/lib.sh"');
    expect(lines(agentScript("pypi-db"))[1]).toBe('PYPI_LIB="$(dirname "$0")/../lib/pypi-node/lib.sh"');
  });
});
