import { describe, expect, it } from "vitest";
import type { Topology } from "../src/topology.js";
import {
  isSafeAbsolutePath,
  isSshPublicKey,
  TopologyError,
  validateTopology,
} from "../src/validate-topology.js";
import { topologyFor } from "./support/topologies.js";

type Mutable<T> = { -readonly [K in keyof T]: T[K] extends object ? Mutable<T[K]> : T[K] };

function broken(edit: (t: Mutable<Topology>) => void): Topology {
  const t = structuredClone(topologyFor("staging")) as Mutable<Topology>;
  edit(t);
  return t as Topology;
}

function problemsOf(t: Topology): string[] {
  try {
    validateTopology(t);
  } catch (error) {
    if (error instanceof TopologyError) return [...error.problems];
    throw error;
  }
  return [];
}

describe("validateTopology", () => {
  it("accepts the staging and prod shapes and both Postgres dialects", () => {
    for (const t of [
      topologyFor("staging"),
      topologyFor("prod"),
      topologyFor("staging", 11),
      topologyFor("prod", 17),
    ]) {
      expect(problemsOf(t)).toEqual([]);
    }
  });

  // Each case: the edit, the field the message must name, and the value it must quote.
  const cases: [string, (t: Mutable<Topology>) => void, string, string][] = [
    [
      "bad CIDR",
      (t) => {
        t.vpcCidr = "10.40.0.0/33";
      },
      "vpcCidr",
      '"10.40.0.0/33"',
    ],
    [
      "CIDR with host bits",
      (t) => {
        t.vpcCidr = "10.40.0.1/16";
      },
      "vpcCidr",
      '"10.40.0.1/16"',
    ],
    [
      "data volume id that is no EBS id (it becomes a device path)",
      (t) => {
        (t.nodes[5] as { dataVolumeId?: string }).dataVolumeId = "vol-../../sda";
      },
      "nodes[5].dataVolumeId",
      '"vol-../../sda"',
    ],
    [
      "slot WAL cap below wal_keep_size",
      (t) => {
        (t.postgres as { maxSlotWalKeepMb: number }).maxSlotWalKeepMb = 100;
      },
      "postgres.maxSlotWalKeepMb",
      "100",
    ],
    [
      "bad IP",
      (t) => {
        t.nodes[2]!.privateIp = "10.40.0.300";
      },
      "nodes[2].privateIp",
      '"10.40.0.300"',
    ],
    [
      "IP outside the VPC",
      (t) => {
        t.nodes[0]!.privateIp = "192.0.2.1";
      },
      "nodes[0].privateIp",
      '"192.0.2.1"',
    ],
    [
      "duplicate node names",
      (t) => {
        t.nodes[3]!.name = "app-a";
      },
      "nodes[3].name",
      '"app-a"',
    ],
    [
      "unknown Postgres version",
      (t) => {
        t.postgres.version = 8.4;
      },
      "postgres.version",
      "8.4",
    ],
    [
      "deadtime <= 2 x keepalive",
      (t) => {
        t.heartbeat.deadtimeMs = 1000;
      },
      "heartbeat.deadtimeMs",
      "1000",
    ],
    [
      "no upload users",
      (t) => {
        t.upload.users = [];
      },
      "upload.users",
      "[]",
    ],
    [
      "not an SSH public key",
      (t) => {
        t.upload.users[0]!.publicKey = "ssh-ed25519 bm90IGEga2V5 x@y";
      },
      "upload.users[0].publicKey",
      '"ssh-ed25519 bm90IGEga2V5 x@y"',
    ],
    [
      "path with ..",
      (t) => {
        t.tls.keyPath = "/etc/pypi/../shadow";
      },
      "tls.keyPath",
      '"/etc/pypi/../shadow"',
    ],
    [
      "relative path",
      (t) => {
        t.storage.packageRoot = "srv/pypi";
      },
      "storage.packageRoot",
      '"srv/pypi"',
    ],
    [
      "overlay inside the VPC",
      (t) => {
        t.overlay.dbWriter = "10.40.5.5";
      },
      "overlay.dbWriter",
      '"10.40.5.5"',
    ],
    [
      "floating IP homed on an app server",
      (t) => {
        t.floatingIps[0]!.home = "app-a";
      },
      "floatingIps[0].home",
      '"app-a"',
    ],
    [
      "balancers in one AZ",
      (t) => {
        t.nodes[1]!.az = t.nodes[0]!.az;
      },
      "nodes (role balancer).az",
      "us-east-1a",
    ],
    [
      "one app server",
      (t) => {
        t.nodes = t.nodes.filter((n) => n.name !== "app-b");
      },
      "nodes (role app)",
      "1",
    ],
    [
      "unknown runtime",
      (t) => {
        (t.app as { runtime: string }).runtime = "cgi";
      },
      "app.runtime",
      '"cgi"',
    ],
    [
      "missing spare secondary IP",
      (t) => {
        t.nodes[0]!.secondaryIps = [];
      },
      "nodes[0].secondaryIps",
      "[]",
    ],
    [
      "SQL-unsafe user",
      (t) => {
        t.postgres.appUser = "app;drop";
      },
      "postgres.appUser",
      '"app;drop"',
    ],
    [
      "secret name with ..",
      (t) => {
        t.secrets.tlsKey = { parameter: "/pypi/../root" };
      },
      "secrets.tlsKey.parameter",
      '"/pypi/../root"',
    ],
  ];

  for (const [label, edit, field, quoted] of cases) {
    it(`rejects ${label}, naming ${field} and quoting the value`, () => {
      const problems = problemsOf(broken(edit));
      const hit = problems.find((m) => m.startsWith(`${field}:`));
      expect(hit, `problems were: ${problems.join(" | ")}`).toBeDefined();
      expect(hit).toContain(quoted);
      expect(hit).toMatch(/expected|must/);
    });
  }

  it("reports every problem at once", () => {
    const problems = problemsOf(
      broken((t) => {
        t.vpcCidr = "nope";
        t.postgres.port = 0;
        t.upload.users = [];
      }),
    );
    expect(problems.length).toBeGreaterThanOrEqual(3);
    expect(() =>
      validateTopology(
        broken((t) => {
          t.postgres.port = 0;
        }),
      ),
    ).toThrow(/postgres\.port: 0 is not valid/);
  });
});

describe("helpers", () => {
  it("isSshPublicKey checks the embedded algorithm name", () => {
    expect(isSshPublicKey(topologyFor("staging").upload.users[0]!.publicKey)).toBe(true);
    const [, blob] = topologyFor("staging").upload.users[0]!.publicKey.split(" ");
    expect(isSshPublicKey(`ssh-rsa ${blob}`)).toBe(false);
    expect(isSshPublicKey("-----BEGIN OPENSSH PRIVATE KEY-----")).toBe(false);
  });

  it("isSafeAbsolutePath refuses traversal, relatives, spaces and quotes", () => {
    expect(isSafeAbsolutePath("/etc/nginx/nginx.conf")).toBe(true);
    for (const bad of ["etc/x", "/a/../b", "/a b", '/a"b', "/a//b", "/a;rm"])
      expect(isSafeAbsolutePath(bad)).toBe(false);
  });
});
