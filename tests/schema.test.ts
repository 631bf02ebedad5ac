import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { isSafeAbsolutePath, parseTopology, TOPOLOGY_RULES, TopologyError } from "../src/schema.js";
import type { Topology } from "../src/topology.js";
import { asLab, topologyFor } from "./support/topologies.js";

type Mutable<T> = { -readonly [K in keyof T]: T[K] extends object ? Mutable<T[K]> : T[K] };

function broken(edit: (t: Mutable<Topology>) => void): Topology {
  const t = structuredClone(topologyFor("staging")) as Mutable<Topology>;
  edit(t);
  return t as Topology;
}

function problemsOf(t: Topology): string[] {
  try {
    parseTopology(t);
  } catch (error) {
    if (error instanceof TopologyError) return [...error.problems];
    throw error;
  }
  return [];
}

describe("parseTopology", () => {
  it("accepts the staging and prod shapes, the lab's file, and Postgres 11 in the lab", () => {
    const lab = JSON.parse(readFileSync("lab/topology.json", "utf8")) as Topology;
    for (const t of [
      topologyFor("staging"),
      topologyFor("prod"),
      lab,
      asLab({ ...topologyFor("prod"), postgres: { ...topologyFor("prod").postgres, version: 11 } }),
    ]) {
      expect(problemsOf(t)).toEqual([]);
    }
  });

  it("refuses Postgres 11 on AWS and anything but 11 or 15 anywhere, saying why", () => {
    const pg = (version: number, t = topologyFor("staging")) => ({
      ...t,
      postgres: { ...t.postgres, version },
    });
    expect(problemsOf(pg(11))).toEqual([
      "postgres.version: 11 is not valid; expected 15: Debian 12 ships only Postgres 15 and the nodes have no other package source (the lab runs 11 from its own binaries to prove the recovery.conf dialect)",
    ]);
    for (const v of [9.6, 16, 17]) expect(problemsOf(asLab(pg(v)))[0]).toMatch(/^postgres\.version: /);
  });

  it("refuses a misspelt field in a topology file without echoing its value", () => {
    const t = {
      ...topologyFor("staging"),
      heartbeat: { ...topologyFor("staging").heartbeat, deadtimeMS: 1500 },
    };
    expect(problemsOf(t as Topology)).toEqual(["heartbeat.deadtimeMS: not a known field"]);
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
      "empty list",
    ],
    [
      "not an SSH public key",
      (t) => {
        t.upload.users[0]!.publicKey = "ssh-ed25519 bm90IGEga2V5 x@y";
      },
      "upload.users[0].publicKey",
      "ssh-ed25519",
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
      "nodes(role balancer).az",
      "us-east-1a",
    ],
    [
      "one app server",
      (t) => {
        t.nodes = t.nodes.filter((n) => n.name !== "app-b");
      },
      "nodes(role app)",
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
      expect(hit).toMatch(/expected|must|only|copy/);
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
      parseTopology(
        broken((t) => {
          t.postgres.port = 0;
        }),
      ),
    ).toThrow(/postgres\.port: 0 is not valid/);
  });
});

describe("the rule table", () => {
  // One topology per rule that breaks it, so every rule is shown to fire.
  const breaks: Record<string, (t: Mutable<Topology>) => void> = {
    "heartbeat-deadtime": (t) => {
      t.heartbeat.deadtimeMs = 1000;
    },
    "heartbeat-warntime": (t) => {
      t.heartbeat.warntimeMs = 400;
    },
    "heartbeat-initdead": (t) => {
      t.heartbeat.initdeadMs = 2000;
    },
    "postgres-package-source": (t) => {
      t.postgres.version = 11;
    },
    "postgres-slot-wal": (t) => {
      t.postgres.maxSlotWalKeepMb = 512;
    },
    "health-interval": (t) => {
      t.health.intervalSeconds = t.health.periodSeconds;
    },
    "role-counts": (t) => {
      t.nodes = t.nodes.filter((n) => n.name !== "db-b");
    },
    "unique-node-names": (t) => {
      t.nodes[3]!.name = "app-a";
    },
    "pairs-split-over-azs": (t) => {
      t.nodes[1]!.az = t.nodes[0]!.az;
    },
    "azs-in-region": (t) => {
      t.nodes[0]!.az = "eu-west-1a";
    },
    "addresses-in-vpc": (t) => {
      t.nodes[0]!.privateIp = "192.0.2.1";
    },
    "one-spare-per-floating-ip": (t) => {
      t.nodes[2]!.secondaryIps = ["10.40.10.99"];
    },
    "floating-ips": (t) => {
      t.floatingIps[0]!.home = "db-a";
    },
    "overlay-outside-vpc": (t) => {
      t.overlay.storage = t.overlay.dbWriter;
    },
    "route-brokers": (t) => {
      // An AWS stack whose nodes could not have their overlay routes moved at all.
      delete t.overlay.routeBrokers;
    },
    "bundle-location": (t) => {
      t.bundleLocation = "/var/lib/bundles";
    },
    "cdn-invalidations": (t) => {
      // An AWS stack whose purge would go to a local directory: silently no purge at all.
      t.cdnInvalidations = "/srv/pypi-cdn";
    },
  };
  it("has a breaking case for every rule, and each case fires only its rule", () => {
    expect(Object.keys(breaks).sort()).toEqual(TOPOLOGY_RULES.map((r) => r.id).sort());
    for (const rule of TOPOLOGY_RULES) {
      const t = broken(breaks[rule.id]!);
      const fired = TOPOLOGY_RULES.filter((r) => r.check(t, (f) => f).length > 0).map((r) => r.id);
      expect(fired, rule.id).toContain(rule.id);
      expect(problemsOf(t).length, rule.id).toBeGreaterThan(0);
    }
  });
});

describe("helpers", () => {
  it("isSafeAbsolutePath refuses traversal, relatives, spaces and quotes", () => {
    expect(isSafeAbsolutePath("/etc/nginx/nginx.conf")).toBe(true);
    for (const bad of ["etc/x", "/a/../b", "/a b", '/a"b', "/a//b", "/a;rm"])
      expect(isSafeAbsolutePath(bad)).toBe(false);
  });
});
