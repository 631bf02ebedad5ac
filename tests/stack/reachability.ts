/**
 * A packet walk over the mocked resources' inputs: from a node's interface, through its subnet's
 * route table and the security groups at both ends, to a destination. Pure: it reads the
 * recorded inputs (and takes only IPv4 arithmetic from src/), so a missing route, endpoint,
 * address or rule fails it.
 *
 * What it models of AWS:
 * - Routes: the implicit local route for the VPC CIDR, then the longest matching prefix. S3
 *   takes the gateway endpoint's prefix-list route when the table is associated with one.
 * - An internet gateway forwards only for an address with a public IP: an EIP bound to the
 *   source's primary private address. (An auto-assigned one exists only on an interface
 *   created at launch, never on a pre-created primary ENI, so it is not looked for.)
 * - A NAT gateway works when its own subnet routes 0.0.0.0/0 to an internet gateway.
 * - A route to an interface delivers to that interface's holder, which must have
 *   source/dest check off to accept an address that is not its own.
 * - Security groups: egress matches the destination (a CIDR containing it, or a group
 *   reference, which only matches a member interface's own address); ingress matches the
 *   source (a group reference to the source's group, or a CIDR containing its address).
 * - AWS APIs resolve (private DNS) to the interface endpoint of the service, if one exists
 *   with private DNS on; without one, the call would go to the public endpoint, which is
 *   exactly what a failover must not depend on, so the walk fails.
 */
import { cidrContains, parseCidr, parseIpv4 } from "../../src/net.js";
import type { Recorded } from "./harness.js";

/** Stands in for a Debian mirror and for any internet client. */
export const INTERNET_ADDRESS = "198.51.100.80";
/** Stands in for an address in the region's S3 prefix list (public, outside the VPC). */
export const S3_ADDRESS = "198.51.100.3";

type Protocol = "tcp" | "udp";

export type Target =
  | { readonly kind: "internet"; readonly protocol: Protocol; readonly port: number }
  | { readonly kind: "service"; readonly service: string }
  | { readonly kind: "s3" }
  | { readonly kind: "node"; readonly node: string; readonly protocol: Protocol; readonly port: number }
  | {
      readonly kind: "overlay";
      readonly address: string;
      readonly holder: string;
      readonly protocol: Protocol;
      readonly port: number;
    };

export type Walk =
  | { readonly ok: true; readonly via: string; readonly rules: readonly string[] }
  | { readonly ok: false; readonly reason: string };

interface Rule {
  readonly name: string;
  readonly group: string;
  readonly direction: "ingress" | "egress";
  readonly protocol: string;
  readonly from: number;
  readonly to: number;
  readonly cidr?: string;
  readonly ref?: string;
  readonly prefixList?: string;
}

interface Eni {
  readonly id: string;
  readonly subnet: string;
  readonly addresses: readonly string[];
  readonly groups: readonly string[];
  readonly sourceDestCheck: boolean;
}

interface Route {
  readonly table: string;
  readonly cidr: string;
  readonly gateway?: string;
  readonly nat?: string;
  readonly eni?: string;
}

interface Endpoint {
  readonly service: string;
  readonly type: string;
  readonly subnets: readonly string[];
  readonly tables: readonly string[];
  readonly groups: readonly string[];
  readonly privateDns: boolean;
  readonly prefixList?: string;
}

export interface Model {
  readonly region: string;
  readonly vpcCidr: string;
  readonly vpcDns: boolean;
  readonly subnets: ReadonlyMap<string, { readonly cidr: string; readonly az: string }>;
  readonly tableOf: ReadonlyMap<string, string>;
  readonly routes: readonly Route[];
  readonly igws: ReadonlySet<string>;
  readonly nats: ReadonlyMap<string, string>;
  readonly enis: ReadonlyMap<string, Eni>;
  /** Node name -> its primary interface id. */
  readonly nodes: ReadonlyMap<string, string>;
  /** `eni-id/private-ip` pairs that have an EIP bound. */
  readonly publicAddresses: ReadonlySet<string>;
  readonly endpoints: readonly Endpoint[];
  readonly rules: readonly Rule[];
}

const str = (v: unknown): string | undefined => (typeof v === "string" && v !== "" ? v : undefined);
const strs = (v: unknown): string[] =>
  Array.isArray(v) ? v.filter((x): x is string => typeof x === "string") : [];
const tagName = (r: Recorded): string => String((r.inputs.tags as Record<string, string> | undefined)?.Name);

/** The network facts of a mocked stack, from the recorded inputs (and ids) only. */
export function modelOf(resources: readonly Recorded[], region: string): Model {
  const of = (type: string) => resources.filter((r) => r.type === `aws:${type}`);
  const vpc = of("ec2/vpc:Vpc")[0];
  if (!vpc) throw new Error("no VPC");
  const enis = new Map(
    of("ec2/networkInterface:NetworkInterface").map((r) => [
      r.id,
      {
        id: r.id,
        subnet: String(r.inputs.subnetId),
        addresses: strs(r.inputs.privateIpLists),
        groups: strs(r.inputs.securityGroups),
        sourceDestCheck: r.inputs.sourceDestCheck !== false,
      },
    ]),
  );
  const publicAddresses = new Set([
    ...of("ec2/eip:Eip")
      .filter((r) => str(r.inputs.networkInterface) && str(r.inputs.associateWithPrivateIp))
      .map((r) => `${r.inputs.networkInterface}/${r.inputs.associateWithPrivateIp}`),
    ...of("ec2/eipAssociation:EipAssociation")
      .filter((r) => str(r.inputs.networkInterfaceId) && str(r.inputs.privateIpAddress))
      .map((r) => `${r.inputs.networkInterfaceId}/${r.inputs.privateIpAddress}`),
  ]);
  const rule =
    (direction: "ingress" | "egress") =>
    (r: Recorded): Rule => ({
      name: r.name,
      group: String(r.inputs.securityGroupId),
      direction,
      protocol: String(r.inputs.ipProtocol),
      from: Number(r.inputs.fromPort),
      to: Number(r.inputs.toPort),
      cidr: str(r.inputs.cidrIpv4),
      ref: str(r.inputs.referencedSecurityGroupId),
      prefixList: str(r.inputs.prefixListId),
    });
  return {
    region,
    vpcCidr: String(vpc.inputs.cidrBlock),
    vpcDns: vpc.inputs.enableDnsSupport === true && vpc.inputs.enableDnsHostnames === true,
    subnets: new Map(
      of("ec2/subnet:Subnet").map((r) => [
        r.id,
        { cidr: String(r.inputs.cidrBlock), az: String(r.inputs.availabilityZone) },
      ]),
    ),
    tableOf: new Map(
      of("ec2/routeTableAssociation:RouteTableAssociation").map((r) => [
        String(r.inputs.subnetId),
        String(r.inputs.routeTableId),
      ]),
    ),
    routes: of("ec2/route:Route").map((r) => ({
      table: String(r.inputs.routeTableId),
      cidr: String(r.inputs.destinationCidrBlock),
      gateway: str(r.inputs.gatewayId),
      nat: str(r.inputs.natGatewayId),
      eni: str(r.inputs.networkInterfaceId),
    })),
    igws: new Set(of("ec2/internetGateway:InternetGateway").map((r) => r.id)),
    nats: new Map(of("ec2/natGateway:NatGateway").map((r) => [r.id, String(r.inputs.subnetId)])),
    enis,
    nodes: new Map(
      of("ec2/instance:Instance").map((r) => [
        tagName(r),
        String(
          (r.inputs.primaryNetworkInterface as { networkInterfaceId?: string } | undefined)
            ?.networkInterfaceId,
        ),
      ]),
    ),
    publicAddresses,
    endpoints: of("ec2/vpcEndpoint:VpcEndpoint").map((r) => ({
      service: String(r.inputs.serviceName),
      type: String(r.inputs.vpcEndpointType ?? "Gateway"),
      subnets: strs(r.inputs.subnetIds),
      tables: strs(r.inputs.routeTableIds),
      groups: strs(r.inputs.securityGroupIds),
      privateDns: r.inputs.privateDnsEnabled === true,
      prefixList: str(r.state.prefixListId),
    })),
    rules: [
      ...of("vpc/securityGroupIngressRule:SecurityGroupIngressRule").map(rule("ingress")),
      ...of("vpc/securityGroupEgressRule:SecurityGroupEgressRule").map(rule("egress")),
    ],
  };
}

const ip = (text: string): number => {
  const v = parseIpv4(text);
  if (v === undefined) throw new Error(`not an IPv4 address: ${text}`);
  return v;
};
const inCidr = (cidr: string, address: string): boolean => {
  const c = parseCidr(cidr);
  return c !== undefined && cidrContains(c, ip(address));
};
const prefixOf = (cidr: string): number => parseCidr(cidr)?.prefix ?? -1;

/** The one place a packet leaves for, by longest prefix (local wins for the VPC). */
function route(m: Model, table: string | undefined, address: string): Route | "local" | undefined {
  const candidates = m.routes
    .filter((r) => r.table === table && inCidr(r.cidr, address))
    .sort((a, b) => prefixOf(b.cidr) - prefixOf(a.cidr));
  const best = candidates[0];
  if (inCidr(m.vpcCidr, address) && (!best || prefixOf(best.cidr) <= prefixOf(m.vpcCidr))) return "local";
  return best;
}

interface Peer {
  /** Addresses a CIDR rule must contain (all of them: an endpoint's address is any in its subnet). */
  readonly addresses: readonly string[];
  /** Groups a reference may name: only when the address is the interface's own. */
  readonly groups: readonly string[];
  readonly prefixList?: string;
}

function matching(
  m: Model,
  direction: "ingress" | "egress",
  own: readonly string[],
  protocol: Protocol,
  port: number,
  peer: Peer,
): Rule[] {
  return m.rules.filter(
    (r) =>
      r.direction === direction &&
      own.includes(r.group) &&
      (r.protocol === protocol || r.protocol === "-1") &&
      r.from <= port &&
      port <= r.to &&
      ((r.cidr !== undefined && peer.addresses.every((a) => inCidr(r.cidr as string, a))) ||
        (r.ref !== undefined && peer.groups.includes(r.ref)) ||
        (r.prefixList !== undefined && r.prefixList === peer.prefixList)),
  );
}

/** Whether the path beyond the route table gets out: a public IP for an IGW, a working NAT. */
function outside(m: Model, eni: Eni, hop: Route | "local" | undefined): string | { reason: string } {
  if (hop === undefined) return { reason: "no route" };
  if (hop === "local") return { reason: "an internet address routed locally" };
  if (hop.gateway && m.igws.has(hop.gateway)) {
    const primary = eni.addresses[0];
    return m.publicAddresses.has(`${eni.id}/${primary}`)
      ? "internet gateway (EIP on the primary address)"
      : { reason: `internet gateway, but ${primary} has no public IP` };
  }
  if (hop.nat) {
    const natSubnet = m.nats.get(hop.nat);
    const onward = route(m, natSubnet && m.tableOf.get(natSubnet), INTERNET_ADDRESS);
    return onward !== "local" && onward?.gateway && m.igws.has(onward.gateway)
      ? "NAT gateway"
      : { reason: `NAT gateway ${hop.nat} has no internet gateway route` };
  }
  return { reason: `route to ${JSON.stringify(hop)} does not reach the internet` };
}

/** Walks one need from `node`'s primary interface. */
export function walk(m: Model, node: string, target: Target): Walk {
  const eni = m.enis.get(m.nodes.get(node) ?? "");
  if (!eni) return { ok: false, reason: `no interface for ${node}` };
  const source = eni.addresses[0] ?? "";
  const table = m.tableOf.get(eni.subnet);
  const fail = (reason: string): Walk => ({
    ok: false,
    reason: `${node} -> ${JSON.stringify(target)}: ${reason}`,
  });
  const egress = (protocol: Protocol, port: number, peer: Peer) =>
    matching(m, "egress", eni.groups, protocol, port, peer).map((r) => r.name);
  const ingress = (at: readonly string[], protocol: Protocol, port: number) =>
    matching(m, "ingress", at, protocol, port, { addresses: [source], groups: eni.groups }).map(
      (r) => r.name,
    );

  switch (target.kind) {
    case "internet": {
      const via = outside(m, eni, route(m, table, INTERNET_ADDRESS));
      if (typeof via !== "string") return fail(via.reason);
      const out = egress(target.protocol, target.port, { addresses: [INTERNET_ADDRESS], groups: [] });
      return out.length ? { ok: true, via, rules: out } : fail("no egress rule");
    }
    case "s3": {
      const gateway = m.endpoints.find(
        (e) =>
          e.service === `com.amazonaws.${m.region}.s3` &&
          e.type === "Gateway" &&
          e.tables.includes(table ?? ""),
      );
      if (!gateway) return fail("no S3 gateway endpoint on this route table");
      const out = egress("tcp", 443, { addresses: [S3_ADDRESS], groups: [], prefixList: gateway.prefixList });
      return out.length ? { ok: true, via: "S3 gateway endpoint", rules: out } : fail("no egress rule");
    }
    case "service": {
      if (!m.vpcDns) return fail("VPC DNS support or hostnames off: private DNS cannot resolve");
      const endpoint = m.endpoints.find(
        (e) => e.service === `com.amazonaws.${m.region}.${target.service}` && e.type === "Interface",
      );
      if (!endpoint?.privateDns)
        return fail("no interface endpoint with private DNS: the call would leave the VPC");
      const az = m.subnets.get(eni.subnet)?.az;
      const subnet = endpoint.subnets.find((s) => m.subnets.get(s)?.az === az);
      const cidr = subnet && m.subnets.get(subnet)?.cidr;
      if (!cidr) return fail(`the endpoint has no interface in ${az}`);
      // Any address of the endpoint's subnet: first and last usable stand for all of them.
      const base = parseCidr(cidr);
      if (!base) return fail(`bad subnet ${cidr}`);
      const addresses = [4, 254].map((h) =>
        [24, 16, 8, 0].map((s) => Math.floor((base.base + h) / 2 ** s) % 256).join("."),
      );
      if (addresses.some((a) => route(m, table, a) !== "local"))
        return fail("endpoint not reached by the local route");
      const out = egress("tcp", 443, { addresses, groups: endpoint.groups });
      if (!out.length) return fail("no egress rule to the endpoint");
      const inn = ingress(endpoint.groups, "tcp", 443);
      if (!inn.length) return fail("the endpoint's security group does not admit this node");
      return { ok: true, via: `interface endpoint in ${subnet}`, rules: [...out, ...inn] };
    }
    case "node": {
      const peer = m.enis.get(m.nodes.get(target.node) ?? "");
      const address = peer?.addresses[0];
      if (!peer || !address) return fail("no such node");
      if (route(m, table, address) !== "local") return fail("peer not on the local route");
      const out = egress(target.protocol, target.port, { addresses: [address], groups: peer.groups });
      if (!out.length) return fail("no egress rule");
      const inn = ingress(peer.groups, target.protocol, target.port);
      if (!inn.length) return fail("no ingress rule at the peer");
      return { ok: true, via: "local", rules: [...out, ...inn] };
    }
    case "overlay": {
      const hop = route(m, table, target.address);
      if (hop === undefined || hop === "local" || !hop.eni)
        return fail("no route to an interface for the overlay address");
      const holder = m.enis.get(hop.eni);
      if (!holder) return fail(`route to unknown interface ${hop.eni}`);
      if (hop.eni !== m.nodes.get(target.holder)) return fail(`routed to ${hop.eni}, not ${target.holder}`);
      if (holder.sourceDestCheck) return fail("the holder's source/dest check drops a foreign destination");
      // A group reference matches only the holder's own addresses, never the overlay: no groups.
      const out = egress(target.protocol, target.port, { addresses: [target.address], groups: [] });
      if (!out.length) return fail("no egress rule for the overlay /32");
      const inn = ingress(holder.groups, target.protocol, target.port);
      if (!inn.length) return fail("no ingress rule at the holder");
      return { ok: true, via: `route to ${target.holder}`, rules: [...out, ...inn] };
    }
  }
}

/** Ingress rules that admit an internet client to `node` (the floating IPs land on its interface). */
export function admitsClient(m: Model, node: string, protocol: Protocol, port: number): string[] {
  const eni = m.enis.get(m.nodes.get(node) ?? "");
  if (!eni) return [];
  return matching(m, "ingress", eni.groups, protocol, port, {
    addresses: [INTERNET_ADDRESS],
    groups: [],
  }).map((r) => r.name);
}
