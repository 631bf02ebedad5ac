import { beforeAll, describe, expect, test } from "vitest";
import { dataVolumeDevice } from "../../src/layout.js";
import { bundleEntriesOf } from "../../src/plan.js";
import { storagePair } from "../../src/topology.js";
import { type Built, builtStack } from "./harness.js";

const envOf = (text: string): Record<string, string> =>
  Object.fromEntries(
    text
      .trim()
      .split("\n")
      .map((line) => {
        const [key, ...rest] = line.split("=");
        return [key ?? "", rest.join("=").replace(/^'|'$/g, "")];
      }),
  );

for (const stack of ["staging", "prod"] as const) {
  describe(`${stack}: each node finds its own data volume by its stable name`, () => {
    let b: Built;
    beforeAll(async () => {
      b = await builtStack(stack);
    }, 60_000);

    test("db nodes and the storage pair carry the by-id name of the volume attached to them; no one else", () => {
      const t = b.outputs.topology;
      const entries = bundleEntriesOf(t);
      const attachments = b.ofType("aws:ec2/volumeAttachment:VolumeAttachment");
      const volumes = new Set(b.ofType("aws:ebs/volume:Volume").map((v) => v.id));
      const owners = new Set(
        [...t.nodes.filter((n) => n.role === "db"), ...storagePair(t)].map((n) => n.name),
      );
      for (const node of t.nodes) {
        const env = envOf(entries[node.name]?.["files/etc/pypi-node/node.env"] ?? "");
        if (!owners.has(node.name)) {
          expect(env.PYPI_DATA_DEVICE, node.name).toBeUndefined();
          continue;
        }
        const volumeId = node.dataVolumeId ?? "";
        expect(volumes.has(volumeId), `${node.name}: ${volumeId} is a volume of the stack`).toBe(true);
        expect(env.PYPI_DATA_DEVICE).toBe(dataVolumeDevice(volumeId));
        expect(env.PYPI_DATA_DEVICE).toMatch(
          /^\/dev\/disk\/by-id\/nvme-Amazon_Elastic_Block_Store_vol[0-9a-f]{17}$/,
        );
        const attachment = attachments.find((a) => a.inputs.volumeId === volumeId);
        expect(attachment?.inputs.instanceId, `${node.name}'s volume is attached to it`).toBe(
          node.instanceId,
        );
        if (node.role === "db") expect(env.PYPI_DATA_MOUNT).toBe("/var/lib/postgresql");
      }
    });
  });
}
