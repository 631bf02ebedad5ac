import { beforeAll, describe, expect, test } from "vitest";
import { NFS_SERVER_PORTS } from "../../src/render/nfs.js";
import { type Built, builtStack } from "./harness.js";
import { admitsClient, type Model, modelOf, type Target, walk } from "./reachability.js";

/**
 * AWS APIs every node calls: SSM (agent, parameters, sessions), EC2 (EIP moves, route reads),
 * STS, CloudWatch (health metrics).
 */
const SERVICES = ["ssm", "ssmmessages", "ec2messages", "ec2", "sts", "monitoring"];
/** Only the overlay holders call Lambda: their route broker moves the route on failover. */
const BROKER_SERVICE = "lambda";

/** The nodes that invoke a route broker: the databases and the storage pair. */
const brokerCallers = (b: Built): string[] => {
  const t = b.outputs.topology;
  const apps = t.nodes.filter((n) => n.role === "app").map((n) => n.name);
  return [...t.nodes.filter((n) => n.role === "db").map((n) => n.name), ...apps.slice(0, 2)];
};
const NFS_PORTS = [111, 2049, 20048];

interface Need {
  readonly node: string;
  readonly what: string;
  readonly target: Target;
}

/** What each node must reach, written from the topology (not from src/network.ts). */
function needs(b: Built): Need[] {
  const t = b.outputs.topology;
  const of = (role: string) => t.nodes.filter((n) => n.role === role).map((n) => n.name);
  const [storageA, storageB] = of("app");
  const [dbPrimary] = of("db");
  const peer = (pair: readonly (string | undefined)[], node: string) => pair.find((n) => n !== node) ?? "";
  const out: Need[] = [];
  const add = (node: string, what: string, target: Target) => out.push({ node, what, target });
  for (const n of t.nodes) {
    add(n.name, "apt over HTTP", { kind: "internet", protocol: "tcp", port: 80 });
    add(n.name, "apt over HTTPS", { kind: "internet", protocol: "tcp", port: 443 });
    add(n.name, "bundle, SSM agent package", { kind: "s3" });
    for (const service of SERVICES) add(n.name, `${service} API`, { kind: "service", service });
    if (brokerCallers(b).includes(n.name))
      add(n.name, "Lambda API (route broker)", { kind: "service", service: BROKER_SERVICE });
    if (n.role === "balancer") {
      add(n.name, "Heartbeat ucast", {
        kind: "node",
        node: peer(of("balancer"), n.name),
        protocol: "udp",
        port: t.heartbeat.udpPort,
      });
      for (const app of of("app")) {
        add(n.name, "proxied HTTP", { kind: "node", node: app, protocol: "tcp", port: t.app.httpPort });
        add(n.name, "proxied SFTP", { kind: "node", node: app, protocol: "tcp", port: t.upload.backendPort });
      }
    }
    if (n.role === "app") {
      add(n.name, "Postgres at the writer address", {
        kind: "overlay",
        address: t.overlay.dbWriter,
        holder: dbPrimary ?? "",
        protocol: "tcp",
        port: t.postgres.port,
      });
      for (const port of NFS_PORTS)
        add(n.name, `NFS ${port} at the storage address`, {
          kind: "overlay",
          address: t.overlay.storage,
          holder: storageA ?? "",
          protocol: "tcp",
          port,
        });
      if (n.name === storageA || n.name === storageB) {
        const other = peer([storageA, storageB], n.name);
        add(n.name, "storage Heartbeat ucast", {
          kind: "node",
          node: other,
          protocol: "udp",
          port: t.heartbeat.udpPort,
        });
        add(n.name, "DRBD", { kind: "node", node: other, protocol: "tcp", port: t.storage.drbdPort });
      }
    }
    if (n.role === "db")
      add(n.name, "Postgres replication from the peer", {
        kind: "node",
        node: peer(of("db"), n.name),
        protocol: "tcp",
        port: t.postgres.port,
      });
  }
  return out;
}

/** Things no node may reach: each would need a rule or route the design does not have. */
function forbidden(b: Built): Need[] {
  const t = b.outputs.topology;
  const tcp = (port: number) => ({ protocol: "tcp" as const, port });
  return [
    { node: "lb-a", what: "Postgres on a db node", target: { kind: "node", node: "db-a", ...tcp(5432) } },
    {
      node: "lb-b",
      what: "Postgres at the writer address",
      target: { kind: "overlay", address: t.overlay.dbWriter, holder: "db-a", ...tcp(5432) },
    },
    {
      node: "app-b",
      what: "Postgres on a db node's own address",
      target: { kind: "node", node: "db-b", ...tcp(5432) },
    },
    {
      node: "app-a",
      what: "NFS on a peer's own address",
      target: { kind: "node", node: "app-b", ...tcp(2049) },
    },
    {
      node: "db-a",
      what: "NFS at the storage address",
      target: { kind: "overlay", address: t.overlay.storage, holder: "app-a", ...tcp(2049) },
    },
    { node: "db-a", what: "HTTP on an app server", target: { kind: "node", node: "app-a", ...tcp(80) } },
    { node: "app-a", what: "SSH to the internet", target: { kind: "internet", ...tcp(22) } },
    { node: "lb-a", what: "SSH to the internet", target: { kind: "internet", ...tcp(22) } },
    { node: "db-b", what: "SMTP to the internet", target: { kind: "internet", ...tcp(25) } },
    { node: "app-a", what: "SSH on a balancer", target: { kind: "node", node: "lb-a", ...tcp(22) } },
    // Every node that invokes no broker is refused at the Lambda endpoint (app-c in prod too).
    ...t.nodes
      .filter((n) => !brokerCallers(b).includes(n.name))
      .map(
        (n): Need => ({
          node: n.name,
          what: "the Lambda API",
          target: { kind: "service", service: BROKER_SERVICE },
        }),
      ),
  ];
}

describe.each(["staging", "prod"] as const)("reachability of the %s stack", (stack) => {
  let built: Built;
  let model: Model;
  beforeAll(async () => {
    built = await builtStack(stack);
    model = modelOf(built.resources, built.config.region);
  }, 60_000);

  test("every node reaches everything it needs", () => {
    expect(NFS_SERVER_PORTS).toEqual(NFS_PORTS);
    const failed = needs(built)
      .map((n) => walk(model, n.node, n.target))
      .filter((w) => !w.ok)
      .map((w) => (w.ok ? "" : w.reason));
    expect(failed).toEqual([]);
  });

  test("paths: AWS APIs and S3 stay inside the VPC; balancers go out on their own EIP, the rest by NAT", () => {
    for (const n of built.outputs.topology.nodes) {
      const via = (target: Target) => {
        const w = walk(model, n.name, target);
        return w.ok ? w.via : w.reason;
      };
      for (const service of SERVICES)
        expect(via({ kind: "service", service })).toMatch(/^interface endpoint in /);
      expect(via({ kind: "service", service: BROKER_SERVICE })).toMatch(
        brokerCallers(built).includes(n.name)
          ? /^interface endpoint in /
          : /the endpoint's security group does not admit this node$/,
      );
      expect(via({ kind: "s3" })).toBe("S3 gateway endpoint");
      expect(via({ kind: "internet", protocol: "tcp", port: 443 })).toBe(
        n.role === "balancer" ? "internet gateway (EIP on the primary address)" : "NAT gateway",
      );
    }
  });

  test("nothing else: every rule serves a need, world egress is HTTP(S) only, probes fail", () => {
    const used = new Set(
      needs(built).flatMap((n) => {
        const w = walk(model, n.node, n.target);
        return w.ok ? w.rules : [];
      }),
    );
    // Clients reach the balancers' floating IPs on HTTP, HTTPS and the SFTP upload port.
    for (const lb of ["lb-a", "lb-b"])
      for (const port of [80, 443, built.outputs.topology.upload.port])
        for (const r of admitsClient(model, lb, "tcp", port)) used.add(r);
    const unused = model.rules.filter((r) => !used.has(r.name)).map((r) => r.name);
    expect(unused).toEqual([]);
    for (const r of model.rules.filter((x) => x.direction === "egress" && x.cidr === "0.0.0.0/0"))
      expect([80, 443], r.name).toContain(r.from);
    for (const r of model.rules) expect(r.from, r.name).toBe(r.to);
    for (const f of forbidden(built)) {
      const w = walk(model, f.node, f.target);
      expect(w.ok, `${f.node}: ${f.what}`).toBe(false);
    }
  });

  test("the interface endpoints span both AZs; Lambda's admits the broker callers only, the rest every node group", () => {
    const azs = new Set(built.config.availabilityZones);
    const interfaces = model.endpoints.filter((e) => e.type === "Interface");
    const service = (s: string) => `com.amazonaws.${built.config.region}.${s}`;
    expect(interfaces.map((e) => e.service).sort()).toEqual(
      [...SERVICES, BROKER_SERVICE].map(service).sort(),
    );
    const nodeGroups = new Set([...model.enis.values()].flatMap((x) => x.groups));
    const t = built.outputs.topology;
    const callerCidrs = brokerCallers(built).map((n) => `${t.nodes.find((x) => x.name === n)?.privateIp}/32`);
    expect(callerCidrs).toHaveLength(brokerCallers(built).length);
    for (const e of interfaces) {
      expect(new Set(e.subnets.map((s) => model.subnets.get(s)?.az))).toEqual(azs);
      expect(e.groups).toHaveLength(1);
      const rules = model.rules.filter((r) => e.groups.includes(r.group));
      expect(rules.every((r) => r.direction === "ingress" && r.protocol === "tcp" && r.from === 443)).toBe(
        true,
      );
      if (e.service === service(BROKER_SERVICE)) {
        expect(rules.map((r) => r.ref).filter((r) => r !== undefined)).toEqual([]);
        expect(rules.map((r) => r.cidr).sort()).toEqual([...callerCidrs].sort());
        // A group of its own: sharing one would admit every node group to Lambda.
        expect(interfaces.filter((x) => x.groups[0] === e.groups[0])).toEqual([e]);
      } else {
        expect(new Set(rules.map((r) => r.ref))).toEqual(nodeGroups);
      }
    }
    const [s3] = model.endpoints.filter((e) => e.type === "Gateway");
    expect(new Set(s3?.tables)).toEqual(new Set(model.tableOf.values()));
  });
});
