/**
 * pypi-fip's AWS branch (the EIP move Heartbeat runs on takeover) under real `sh`, against fake
 * `aws`/`curl`/`ip`: bounded retries with short timeouts, a verified association, a loud IMDS
 * failure, and an idempotent release.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { renderAgentEnv } from "../../src/render/agent.js";
import { nodeByName } from "../../src/topology.js";
import { asLab, topologyFor } from "../support/topologies.js";
import { type FakeCloud, fakeCloud, MY_ENI } from "./fake-cloud.js";

const t = topologyFor("prod");
const lbA = nodeByName(t, "lb-a");
const fip = t.floatingIps[0]!;
const secondary = lbA.secondaryIps[0]!;
const SHORT_TIMEOUTS = "--cli-connect-timeout 2 --cli-read-timeout 5";
const held = (eni: string, ip = secondary) => ({ stdout: `${eni}\t${ip}\n` });
const fail = { status: 255 };

describe("pypi-fip on AWS", { timeout: 30_000 }, () => {
  let cloud: FakeCloud;
  beforeEach(() => {
    cloud = fakeCloud(renderAgentEnv(t, lbA, ["haproxy", "nginx", "heartbeat"]));
  });
  afterEach(() => cloud.cleanup());

  it("fails loudly when IMDS is down, and never calls associate-address", () => {
    cloud.imdsDown();
    cloud.answer("associate-address", {});
    const r = cloud.run("pypi-fip", [fip.address, "start"]);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/IMDS/);
    expect(cloud.awsCalls("associate-address")).toEqual([]);
    // A few quick tries, each with short timeouts.
    expect(cloud.curlCalls().length).toBeGreaterThan(1);
    expect(cloud.curlCalls().length).toBeLessThanOrEqual(3);
    for (const call of cloud.curlCalls()) expect(call).toContain("--connect-timeout 1 --max-time 2");
  });

  it("rides out an IMDS request that times out", () => {
    cloud.imdsFlaky(1);
    cloud.answer("associate-address", {});
    cloud.answer("describe-addresses", held(MY_ENI));
    const r = cloud.run("pypi-fip", [fip.address, "start"]);
    expect(r.status).toBe(0);
    expect(cloud.awsCalls("associate-address")[0]).toContain(`--network-interface-id ${MY_ENI} `);
  });

  it("refuses an interface id from IMDS that is not one", () => {
    cloud.imdsInterfaceId("<html>proxy error</html>");
    cloud.answer("associate-address", {});
    const r = cloud.run("pypi-fip", [fip.address, "start"]);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/IMDS/);
    expect(cloud.awsCalls()).toEqual([]);
  });

  it("retries a failing associate-address, then verifies the association", () => {
    cloud.answer("associate-address", fail, fail, {});
    cloud.answer("describe-addresses", held(MY_ENI));
    const r = cloud.run("pypi-fip", [fip.address, "start"]);
    expect(r.stderr).not.toContain("pypi-node: error");
    expect(r.status).toBe(0);
    const calls = cloud.awsCalls("associate-address");
    expect(calls).toHaveLength(3);
    for (const call of calls) {
      expect(call).toContain(SHORT_TIMEOUTS);
      // One request per try: the CLI's own retries are off.
      expect(call).toMatch(/^AWS_MAX_ATTEMPTS=1 /);
      expect(call).toContain(`--allocation-id ${fip.allocationId} --network-interface-id ${MY_ENI} `);
      expect(call).toContain(`--private-ip-address ${secondary} --allow-reassociation`);
    }
    expect(cloud.awsCalls("describe-addresses")).toHaveLength(1);
    expect(cloud.awsCalls("describe-addresses")[0]).toContain(SHORT_TIMEOUTS);
    expect(cloud.sleeps()).toEqual([1, 1]);
  });

  it("fails when describe-addresses shows the EIP on another interface after associating", () => {
    cloud.answer("associate-address", {});
    cloud.answer("describe-addresses", held("eni-0other", "10.40.1.20"));
    const r = cloud.run("pypi-fip", [fip.address, "start"]);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain("eni-0other");
    expect(cloud.awsCalls("associate-address")).toHaveLength(1);
  });

  it("fails when the EIP lands on this interface but another private address", () => {
    cloud.answer("associate-address", {});
    cloud.answer("describe-addresses", held(MY_ENI, "10.40.0.99"));
    const r = cloud.run("pypi-fip", [fip.address, "start"]);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain("10.40.0.99");
  });

  it("gives up after 5 attempts within a bounded time when associate-address always fails", () => {
    cloud.cleanup();
    cloud = fakeCloud(renderAgentEnv(t, lbA, ["haproxy", "nginx", "heartbeat"]), { realSleep: true });
    cloud.answer("associate-address", fail);
    const r = cloud.run("pypi-fip", [fip.address, "start"]);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/associate-address.*failed 5 times/);
    expect(cloud.awsCalls("associate-address")).toHaveLength(5);
    expect(cloud.awsCalls("describe-addresses")).toEqual([]);
    // Pauses of 1+1+2+2 s between tries; the fake answers at once.
    expect(r.seconds).toBeGreaterThan(5);
    expect(r.seconds).toBeLessThan(12);
  });

  it("stop leaves the association alone: the last holder serves until a peer takes the EIP", () => {
    cloud.answer("describe-addresses", { stdout: `${MY_ENI}\teipassoc-0mine\n` });
    const r = cloud.run("pypi-fip", [fip.address, "stop"]);
    expect(r.status).toBe(0);
    expect(cloud.awsCalls()).toEqual([]);
    expect(cloud.curlCalls()).toEqual([]);
    expect(r.stderr).toContain("left associated until a peer takes it over");
  });

  it("reclaim after a boot serves an EIP still associated with this node, and only that", () => {
    cloud.answer("describe-addresses", { stdout: `${MY_ENI}\teipassoc-0mine\n` });
    expect(cloud.run("pypi-fip", [fip.address, "reclaim"]).status).toBe(0);
    expect(cloud.ipCalls()).toContain(`addr add ${secondary}/24 dev ens5`);
    expect(cloud.awsCalls("associate-address")).toEqual([]);
    const other = fakeCloud(renderAgentEnv(t, lbA, ["heartbeat"]));
    try {
      other.answer("describe-addresses", { stdout: "eni-0other\teipassoc-0peer\n" });
      expect(other.run("pypi-fip", [fip.address, "reclaim"]).status).toBe(0);
      expect(other.ipCalls().filter((c) => c.startsWith("addr add"))).toEqual([]);
    } finally {
      other.cleanup();
    }
  });

  it("status never reports running when it cannot tell", () => {
    cloud.imdsDown();
    const r = cloud.run("pypi-fip", [fip.address, "status"]);
    expect(r.stdout.trim()).toBe("unknown");
    expect(r.status).not.toBe(0);
  });

  it("status reports running only for this node's interface", () => {
    cloud.answer("describe-addresses", { stdout: `${MY_ENI}\teipassoc-0mine\n` });
    expect(cloud.run("pypi-fip", [fip.address, "status"]).stdout.trim()).toBe("running");
    cloud.answer("describe-addresses", { stdout: "eni-0other\teipassoc-0peer\n" });
    expect(cloud.run("pypi-fip", [fip.address, "status"]).stdout.trim()).toBe("stopped");
  });

  it("held: 1 for an address on this node's interface or on another, 0 for none or an association here without the address", () => {
    const heldValue = () => {
      const r = cloud.run("pypi-fip", [fip.address, "held"]);
      expect(r.status, r.stderr).toBe(0);
      return r.stdout.trim();
    };
    cloud.answer("describe-addresses", { stdout: `${MY_ENI}\teipassoc-0mine\n` });
    expect(heldValue()).toBe("0");
    cloud.run("pypi-fip", [fip.address, "reclaim"]);
    expect(heldValue()).toBe("1");
    cloud.answer("describe-addresses", { stdout: "eni-0other\teipassoc-0peer\n" });
    expect(heldValue()).toBe("1");
    cloud.answer("describe-addresses", { stdout: "None\tNone\n" });
    expect(heldValue()).toBe("0");
    // Unknown is never counted as held.
    cloud.answer("describe-addresses", fail);
    const r = cloud.run("pypi-fip", [fip.address, "held"]);
    expect(r.stdout.trim()).toBe("");
    expect(r.status).not.toBe(0);
  });

  it("leaves the lab backend to ip (no cloud call)", () => {
    const store = mkdtempSync(join(tmpdir(), "pypi-fip-lab-"));
    const lab = asLab(t, store);
    const labCloud = fakeCloud(renderAgentEnv(lab, nodeByName(lab, "lb-a"), ["heartbeat"]));
    try {
      labCloud.install("arping", "#!/bin/sh\n");
      const r = labCloud.run("pypi-fip", [fip.address, "start"]);
      expect(r.status, r.stderr).toBe(0);
      expect(labCloud.ipCalls()).toContain(`addr add ${fip.address}/32 dev eth0`);
      expect(labCloud.awsCalls()).toEqual([]);
      // The association goes where the lab's stand-in for EC2 reads it.
      expect(labCloud.run("pypi-fip", [fip.address, "status"]).stdout.trim()).toBe("running");
      expect(labCloud.run("pypi-fip", [fip.address, "stop"]).status).toBe(0);
      expect(labCloud.ipCalls()).not.toContain(`addr del ${fip.address}/32 dev eth0`);
      expect(labCloud.curlCalls()).toEqual([]);
      expect(readFileSync(join(store, "cloud", "eips", fip.address), "utf8")).toBe("lb-a\n");
      expect(labCloud.run("pypi-fip", [fip.address, "held"]).stdout.trim()).toBe("1");
      // Associated here but the address gone from the interface: nobody answers for it.
      writeFileSync(join(labCloud.dir, "ip.addrs"), "");
      expect(labCloud.run("pypi-fip", [fip.address, "held"]).stdout.trim()).toBe("0");
      writeFileSync(join(store, "cloud", "eips", fip.address), "lb-b\n");
      expect(labCloud.run("pypi-fip", [fip.address, "held"]).stdout.trim()).toBe("1");
      rmSync(join(store, "cloud", "eips", fip.address));
      expect(labCloud.run("pypi-fip", [fip.address, "held"]).stdout.trim()).toBe("0");
    } finally {
      labCloud.cleanup();
      rmSync(store, { recursive: true, force: true });
    }
  });

  it("refuses an address that is not one of the stack's floating IPs", () => {
    const r = cloud.run("pypi-fip", ["192.0.2.1", "start"]);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain("not a floating IP");
    expect(cloud.awsCalls()).toEqual([]);
  });
});
