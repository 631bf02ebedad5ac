import { describe, expect, it } from "vitest";
import {
  mountUnitName,
  NFS_MOUNT_OPTIONS,
  nfsMountSource,
  nfsToken,
  PACKAGE_EXPORT_FSID,
  packageMountUnitPath,
  renderExports,
  renderNfsConf,
  renderPackageMount,
} from "../../src/render/nfs.js";
import { parseTopology } from "../../src/schema.js";
import { nodesWithRole, type Topology } from "../../src/topology.js";
import { type Shape, topologyFor } from "../support/topologies.js";

const opts = `rw,sync,no_subtree_check,root_squash,fsid=${PACKAGE_EXPORT_FSID}`;

describe.each<Shape>(["staging", "prod"])("nfs (%s)", (shape) => {
  const t = topologyFor(shape);

  it("exports the volume to each app server's /32 and the overlay address only", () => {
    const [comment, line, end, ...rest] = renderExports(t).split("\n");
    expect(comment).toMatch(/^#/);
    expect(end).toBe("");
    expect(rest).toEqual([]);
    const [path, ...clients] = (line ?? "").split(" ");
    expect(path).toBe("/srv/pypi-volume");
    expect(clients).toEqual([
      ...nodesWithRole(t, "app").map((n) => `${n.privateIp}/32(${opts})`),
      `100.64.10.6/32(${opts})`,
    ]);
    expect(clients).toHaveLength(shape === "prod" ? 4 : 3);
    expect(line).not.toMatch(/no_root_squash|async|\*/);
  });

  it("mounts the overlay export at the package root, hard, NFSv3", () => {
    expect(nfsMountSource(t)).toBe("100.64.10.6:/srv/pypi-volume");
    expect(packageMountUnitPath(t)).toBe("/etc/systemd/system/srv-pypi.mount");
    const unit = renderPackageMount(t).split("\n");
    expect(unit).toEqual(
      expect.arrayContaining([
        "What=100.64.10.6:/srv/pypi-volume",
        "Where=/srv/pypi",
        "Type=nfs",
        "Options=vers=3,proto=tcp,hard,timeo=100,retrans=3,nolock,noatime",
      ]),
    );
    expect(NFS_MOUNT_OPTIONS).toContain("hard");
    expect(NFS_MOUNT_OPTIONS).not.toContain("soft");
  });
});

describe("nfs helpers", () => {
  it("pins mountd and disables v4", () => {
    expect(renderNfsConf().split("\n")).toEqual([
      "[nfsd]",
      "vers3=y",
      "vers4=n",
      "[mountd]",
      "port=20048",
      "",
    ]);
  });

  it("escapes mount unit names like systemd-escape --path", () => {
    expect(mountUnitName("/srv/pypi")).toBe("srv-pypi.mount");
    expect(mountUnitName("/srv/pypi-volume/")).toBe("srv-pypi\\x2dvolume.mount");
  });

  it("rejects values that would change the file's meaning", () => {
    expect(() => nfsToken("storage.volumeMount", "/a b")).toThrow(/storage\.volumeMount.*"\/a b"/);
    const t = topologyFor("staging");
    const bad: Topology = { ...t, storage: { ...t.storage, volumeMount: "/srv/x(rw,no_root_squash)" } };
    expect(() => renderExports(bad)).toThrow(/storage\.volumeMount/);
  });

  it("leaves relative and traversing paths to parseTopology, which names the field", () => {
    const t = topologyFor("staging");
    const rel: Topology = { ...t, storage: { ...t.storage, packageRoot: "srv/../etc" } };
    expect(() => parseTopology(rel)).toThrow('storage.packageRoot: "srv/../etc" is not valid');
  });
});
