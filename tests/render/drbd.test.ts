import { describe, expect, it } from "vitest";
import { buildBundles } from "../../src/bundle.js";
import { agentScriptPaths } from "../../src/render/agent.js";
import {
  DOPD,
  dopdHaCfLines,
  drbdPaths,
  drbdString,
  renderDrbdGlobalCommon,
  renderDrbdResource,
  renderDrbdSecretFile,
} from "../../src/render/drbd.js";
import { parseTopology } from "../../src/schema.js";
import { nodeByName, type Topology } from "../../src/topology.js";
import { type Shape, topologyFor } from "../support/topologies.js";

const lines = (text: string) => text.split("\n").map((l) => l.trim());

describe.each<Shape>(["staging", "prod"])("drbd (%s)", (shape) => {
  const t = topologyFor(shape);
  const res = renderDrbdResource(t);

  it("includes the secret file at top level, before the resource", () => {
    const l = lines(res);
    expect(l).toContain(`include "${drbdPaths.secret}";`);
    expect(l.indexOf(`include "${drbdPaths.secret}";`)).toBeLessThan(l.indexOf('resource "pypi" {'));
    expect(res).not.toMatch(/shared-secret/);
  });

  it("is protocol C with internal metadata on the EBS device", () => {
    expect(lines(res)).toEqual(
      expect.arrayContaining([
        'device "/dev/drbd0";',
        'disk "/dev/nvme1n1";',
        "meta-disk internal;",
        "protocol C;",
        "cram-hmac-alg sha1;",
        "after-sb-0pri discard-zero-changes;",
        "after-sb-1pri discard-secondary;",
        "after-sb-2pri disconnect;",
        'split-brain "/usr/lib/drbd/notify-split-brain.sh root";',
      ]),
    );
  });

  it("names each node's own data volume by its by-id name, once the volume ids are known", () => {
    const withVolumes: typeof t = {
      ...t,
      nodes: t.nodes.map((n) =>
        n.name === "app-a"
          ? { ...n, dataVolumeId: "vol-0123456789abcdef0" }
          : n.name === "app-b"
            ? { ...n, dataVolumeId: "vol-0fedcba9876543210" }
            : n,
      ),
    };
    const l = lines(renderDrbdResource(withVolumes));
    const onA = l.indexOf('on "app-a" {');
    const onB = l.indexOf('on "app-b" {');
    expect(l[onA + 1]).toBe('disk "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0123456789abcdef0";');
    expect(l[onB + 1]).toBe('disk "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0fedcba9876543210";');
    expect(l.filter((x) => x.startsWith('disk "/dev/nvme'))).toEqual([]);
  });

  it("fences the peer's disk through the agent's dopd handler", () => {
    const l = lines(res);
    const disk = l.indexOf("disk {");
    expect(disk).toBeGreaterThan(-1);
    expect(l.slice(disk, disk + 3)).toEqual(["disk {", "fencing resource-only;", "}"]);
    const handlers = l.slice(l.indexOf("handlers {"));
    const handler = "/usr/local/lib/pypi-node/pypi-drbd";
    expect(handlers.slice(0, handlers.indexOf("}"))).toEqual([
      "handlers {",
      'split-brain "/usr/lib/drbd/notify-split-brain.sh root";',
      `fence-peer "${handler} fence-peer";`,
      `after-resync-target "${handler} after-resync-target";`,
    ]);
    expect(drbdPaths.tool).toBe(handler);
    expect(agentScriptPaths["pypi-drbd"]).toBe(handler);
    // No Pacemaker here: nothing of crm-fence-peer's, and no STONITH policy.
    expect(res).not.toMatch(/crm-|resource-and-stonith/);
  });

  it("names exactly the storage pair with their private IPs", () => {
    const l = lines(res);
    expect(l.filter((x) => x.startsWith("on "))).toEqual(['on "app-a" {', 'on "app-b" {']);
    expect(l).toContain(`address ${nodeByName(t, "app-a").privateIp}:7788;`);
    expect(l).toContain(`address ${nodeByName(t, "app-b").privateIp}:7788;`);
    expect(res).not.toContain("app-c");
    expect(res.endsWith("}\n")).toBe(true);
  });
});

describe("drbd fencing", () => {
  it("ships the handler on the storage pair only, as an executable checked script", () => {
    for (const b of buildBundles(topologyFor("prod"))) {
      const handler = b.files.find((f) => f.path === drbdPaths.tool);
      const storage = b.files.some((f) => f.path === drbdPaths.resource);
      expect(handler !== undefined, b.node).toBe(storage);
      if (handler) {
        expect(handler.mode).toBe("0755");
        expect(handler.validator).toBe("sh");
        expect(handler.content).toContain("drbd-peer-outdater");
      }
    }
  });

  it("runs dopd as root under Heartbeat, allowed on its API", () => {
    expect(dopdHaCfLines).toEqual([`respawn root ${DOPD}`, "apiauth dopd uid=root"]);
    expect(DOPD).toBe("/usr/libexec/heartbeat/dopd");
  });
});

describe("drbd helpers", () => {
  it("quotes and escapes strings, rejecting control characters", () => {
    expect(drbdString("x", 'a"b\\c')).toBe('"a\\"b\\\\c"');
    expect(() => drbdString("storage.device", "/dev/x\n}")).toThrow(/storage\.device/);
    expect(() => drbdString("storage.device", "")).toThrow(/storage\.device/);
  });

  it("leaves bad addresses and ports to parseTopology, which names the field", () => {
    const t = topologyFor("staging");
    const badPort: Topology = { ...t, storage: { ...t.storage, drbdPort: 70000 } };
    expect(() => parseTopology(badPort)).toThrow("storage.drbdPort: 70000 is not valid");
    const badIp: Topology = {
      ...t,
      nodes: t.nodes.map((n) => (n.name === "app-b" ? { ...n, privateIp: "10.0.0.1; }" } : n)),
    };
    const appB = badIp.nodes.findIndex((n) => n.name === "app-b");
    expect(() => parseTopology(badIp)).toThrow(`nodes[${appB}].privateIp: "10.0.0.1; }" is not valid`);
  });

  it("renders the secret file as a common net section", () => {
    expect(renderDrbdSecretFile("s3cr3t")).toBe('common {\n  net {\n    shared-secret "s3cr3t";\n  }\n}\n');
    expect(() => renderDrbdSecretFile("x".repeat(65))).toThrow(/at most 64/);
  });

  it("keeps global options only in global_common.conf", () => {
    expect(renderDrbdGlobalCommon()).toBe("global {\n  usage-count no;\n}\n");
  });
});
