import { beforeAll, describe, expect, test } from "vitest";
import { type Built, builtStack, plain } from "./harness.js";
import { sharedStackTests } from "./shared.js";

let built: Built;
beforeAll(async () => {
  built = await builtStack("staging");
}, 60_000);

describe("staging stack under mocks", () => {
  sharedStackTests(() => built, { floatingIps: 1, appServers: 2, nat: 1 });

  test("TLS is generated with @pulumi/tls and is the smoke check's trust anchor", () => {
    const cert = built.ofType("tls:index/selfSignedCert:SelfSignedCert");
    expect(cert).toHaveLength(1);
    expect(cert[0]?.inputs.dnsNames).toEqual(["staging.pypi.example.org"]);
    const certParam = built
      .ofType("aws:ssm/parameter:Parameter")
      .find((p) => p.inputs.name === "/pypi/staging/tls/certificate");
    expect(plain(certParam?.inputs.value)).toBe(cert[0]?.state.certPem);
    const smoke = built.ofType("command:local:Command").find((c) => c.name === "pypi-smoke");
    expect((smoke?.inputs.environment as Record<string, string> | undefined)?.PYPI_CA_PEM).toBe(
      cert[0]?.state.certPem,
    );
    const hostKey = built
      .ofType("tls:index/privateKey:PrivateKey")
      .find((k) => k.name.includes("upload-host-key"));
    expect(hostKey?.inputs.algorithm).toBe("ED25519");
  });

  test("no deletion protection, asynchronous replication", () => {
    for (const i of built.ofType("aws:ec2/instance:Instance"))
      expect(i.inputs.disableApiTermination).toBe(false);
    expect(built.outputs.topology.postgres.synchronous).toBe(false);
  });
});
