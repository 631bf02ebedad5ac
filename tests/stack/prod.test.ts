import { beforeAll, describe, expect, test } from "vitest";
import { type Built, builtStack, PROD_TLS, plain } from "./harness.js";
import { sharedStackTests } from "./shared.js";

let built: Built;
beforeAll(async () => {
  built = await builtStack("prod");
}, 60_000);

describe("prod stack under mocks", () => {
  sharedStackTests(() => built, { floatingIps: 2, appServers: 3, nat: 2 });

  test("TLS comes from secret config, nothing is generated for it", () => {
    expect(built.ofType("tls:index/selfSignedCert:SelfSignedCert")).toHaveLength(0);
    const value = (name: string) =>
      plain(built.ofType("aws:ssm/parameter:Parameter").find((p) => p.inputs.name === name)?.inputs.value);
    expect(value("/pypi/prod/tls/key")).toBe(PROD_TLS.key);
    expect(value("/pypi/prod/tls/certificate")).toBe(PROD_TLS.certificate);
    const smoke = built.ofType("command:local:Command").find((c) => c.name === "pypi-smoke");
    expect((smoke?.inputs.environment as Record<string, string> | undefined)?.PYPI_CA_PEM).toBeUndefined();
  });

  test("synchronous replication, larger volumes, deletion protection", () => {
    expect(built.outputs.topology.postgres.synchronous).toBe(true);
    for (const i of built.ofType("aws:ec2/instance:Instance")) {
      expect(i.inputs.disableApiTermination).toBe(true);
      expect(i.inputs.rootBlockDevice).toMatchObject({ volumeSize: 32 });
    }
    const sizes = built.ofType("aws:ebs/volume:Volume").map((v) => v.inputs.size);
    expect(sizes.sort()).toEqual([2000, 2000, 500, 500]);
    for (const v of built.ofType("aws:ebs/volume:Volume")) expect(v.inputs.finalSnapshot).toBe(true);
    const buckets = built.ofType("aws:s3/bucket:Bucket");
    expect(buckets.map((b) => b.name).sort()).toEqual([
      "pypi-backups-files",
      "pypi-backups-repository",
      "pypi-bundles-bucket",
    ]);
    for (const b of buckets) expect(b.inputs.forceDestroy, b.name).toBe(false);
  });

  test("two floating IPs, one spare secondary IP per floating IP on each balancer", () => {
    const { floatingIps, topology } = built.outputs;
    expect(floatingIps.map((f) => f.home)).toEqual(["lb-a", "lb-b"]);
    for (const lb of topology.nodes.filter((n) => n.role === "balancer"))
      expect(lb.secondaryIps).toHaveLength(2);
  });
});
