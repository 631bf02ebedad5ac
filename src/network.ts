import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import { formatIpv4, parseCidr } from "./net.js";
import { NFS_SERVER_PORTS } from "./render/nfs.js";

/** Subnet tiers. Each gets one /24 per AZ at a fixed offset, so addresses are known before `up`. */
export type Tier = "public" | "app" | "db";
const TIER_OFFSET: Record<Tier, number> = { public: 0, app: 10, db: 20 };

/** AZ index -> the letter used in node and resource names (`lb-a`, `-private-b`). */
export const azLetter = (index: number): string => String.fromCharCode(97 + index);

/** The /24 of a tier in the AZ with this index (third octet offset + AZ index). */
export function subnetCidr(vpcCidr: string, tier: Tier, azIndex: number): string {
  const vpc = parseCidr(vpcCidr);
  if (!vpc || vpc.prefix > 19) throw new Error(`vpcCidr ${JSON.stringify(vpcCidr)}: expected /16 to /19`);
  return `${formatIpv4(vpc.base + (TIER_OFFSET[tier] + azIndex) * 256)}/24`;
}

/** Host number `host` of a /24 (AWS reserves .0-.3 and .255). */
export function hostIp(cidr: string, host: number): string {
  const parsed = parseCidr(cidr);
  if (parsed?.prefix !== 24 || host < 4 || host > 254)
    throw new Error(`hostIp: ${cidr} host ${host} is outside the usable range of a /24`);
  return formatIpv4(parsed.base + host);
}

export type Group = "balancer" | "app" | "db";
export const WORLD = "0.0.0.0/0";

/** One security-group rule, as data: the designed set is a value tests can compare against. */
export interface RuleSpec {
  readonly group: Group;
  readonly direction: "ingress" | "egress";
  readonly protocol: "tcp" | "udp";
  readonly port: number;
  /** The other side: a group (by reference, never a CIDR) or the world. */
  readonly peer: Group | typeof WORLD;
  readonly description: string;
}

export interface PortPlan {
  readonly http: number;
  readonly https: number;
  readonly heartbeatUdp: number;
  readonly postgres: number;
  readonly drbd: number;
}

/** A pair of rules for group->group traffic: egress on the source, ingress on the destination. */
function flow(from: Group, to: Group, protocol: "tcp" | "udp", port: number, what: string): RuleSpec[] {
  return [
    { group: from, direction: "egress", protocol, port, peer: to, description: `${what} to ${to}` },
    { group: to, direction: "ingress", protocol, port, peer: from, description: `${what} from ${from}` },
  ];
}

/**
 * Every rule except the upload path (UploadProxy owns that). No admin SSH anywhere: admin
 * access is SSM Session Manager. Egress to the world is HTTPS (AWS APIs, S3, SSM) and HTTP
 * (Debian mirrors; apt verifies signatures) only.
 */
export function networkRules(p: PortPlan): RuleSpec[] {
  const world = (group: Group, direction: "ingress" | "egress", port: number, what: string): RuleSpec => ({
    group,
    direction,
    protocol: "tcp",
    port,
    peer: WORLD,
    description: what,
  });
  return [
    world("balancer", "ingress", p.http, "HTTP from clients (redirect to HTTPS)"),
    world("balancer", "ingress", p.https, "HTTPS from clients"),
    ...flow("balancer", "balancer", "udp", p.heartbeatUdp, "Heartbeat ucast"),
    ...flow("balancer", "app", "tcp", p.http, "proxied HTTP"),
    ...flow("app", "app", "udp", p.heartbeatUdp, "storage Heartbeat ucast"),
    ...flow("app", "app", "tcp", p.drbd, "DRBD replication"),
    ...NFS_SERVER_PORTS.flatMap((port) => flow("app", "app", "tcp", port, `NFS (${port})`)),
    ...flow("app", "db", "tcp", p.postgres, "Postgres (peer and writer overlay address)"),
    ...flow("db", "db", "tcp", p.postgres, "Postgres streaming replication"),
    ...(["balancer", "app", "db"] as const).flatMap((g) => [
      world(g, "egress", 443, "HTTPS to AWS APIs, S3 and package mirrors"),
      world(g, "egress", 80, "HTTP to Debian mirrors (signed)"),
    ]),
  ];
}

/** The upload path: port 22 from anywhere to the balancers, HAProxy to the app servers' sshd. */
export function uploadRules(port: number, backendPort: number): RuleSpec[] {
  return [
    {
      group: "balancer",
      direction: "ingress",
      protocol: "tcp",
      port,
      peer: WORLD,
      description: "SFTP uploads from clients",
    },
    ...flow("balancer", "app", "tcp", backendPort, "proxied SFTP uploads"),
  ];
}

const ruleName = (r: RuleSpec): string =>
  `${r.group}-${r.direction === "ingress" ? "in" : "out"}-${r.protocol}${r.port}-${r.peer === WORLD ? "world" : r.peer}`;

/**
 * One aws.vpc rule resource per spec, named from its meaning (never an index), referencing
 * the peer security group for every internal rule.
 */
export function createRules(
  parent: pulumi.Resource,
  name: string,
  rules: readonly RuleSpec[],
  groups: Readonly<Record<Group, aws.ec2.SecurityGroup>>,
): pulumi.CustomResource[] {
  return rules.map((r) => {
    const args = {
      securityGroupId: groups[r.group].id,
      ipProtocol: r.protocol,
      fromPort: r.port,
      toPort: r.port,
      description: r.description,
      ...(r.peer === WORLD ? { cidrIpv4: WORLD } : { referencedSecurityGroupId: groups[r.peer].id }),
    };
    const ruleResourceName = `${name}-${ruleName(r)}`;
    return r.direction === "ingress"
      ? new aws.vpc.SecurityGroupIngressRule(ruleResourceName, args, { parent })
      : new aws.vpc.SecurityGroupEgressRule(ruleResourceName, args, { parent });
  });
}

export interface NetworkArgs {
  /** VPC range, /16 to /19; subnets are /24s at fixed offsets inside it. */
  readonly vpcCidr: string;
  /** The two AZs every pair is spread over. */
  readonly availabilityZones: readonly [string, string];
  /**
   * NAT gateways for the private subnets: 2 keeps egress up when one AZ fails.
   * @default 1 - one gateway in the first AZ, shared by both private route tables
   */
  readonly natGateways?: 1 | 2;
  readonly ports: PortPlan;
  /** Tags on every resource. */
  readonly tags: Readonly<Record<string, string>>;
}

export function validateNetworkArgs(args: NetworkArgs): void {
  const c = parseCidr(args.vpcCidr);
  if (!c || c.prefix < 16 || c.prefix > 19)
    throw new Error(`Network: vpcCidr ${JSON.stringify(args.vpcCidr)} is not valid; expected /16 to /19`);
  if (args.availabilityZones.length !== 2 || args.availabilityZones[0] === args.availabilityZones[1])
    throw new Error(
      `Network: availabilityZones ${JSON.stringify(args.availabilityZones)} is not valid; expected two different AZs`,
    );
  if (args.natGateways !== undefined && args.natGateways !== 1 && args.natGateways !== 2)
    throw new Error(`Network: natGateways ${JSON.stringify(args.natGateways)} is not valid; expected 1 or 2`);
}

/** VPC, public and private subnets in two AZs, NAT egress and the security groups with their rules. */
export class Network extends pulumi.ComponentResource {
  readonly vpc: aws.ec2.Vpc;
  readonly subnets: Readonly<Record<Tier, readonly [aws.ec2.Subnet, aws.ec2.Subnet]>>;
  /** One per AZ; the overlay routes live in these. */
  readonly privateRouteTables: readonly [aws.ec2.RouteTable, aws.ec2.RouteTable];
  readonly securityGroups: Readonly<Record<Group, aws.ec2.SecurityGroup>>;

  constructor(name: string, args: NetworkArgs, opts: pulumi.ComponentResourceOptions = {}) {
    super("pypi:infra:Network", name, {}, opts);
    validateNetworkArgs(args);
    const parent = { parent: this };
    const tags = (role: string) => ({ ...args.tags, Name: `${name}-${role}` });
    this.vpc = new aws.ec2.Vpc(
      `${name}-vpc`,
      { cidrBlock: args.vpcCidr, enableDnsHostnames: true, enableDnsSupport: true, tags: tags("vpc") },
      parent,
    );
    const igw = new aws.ec2.InternetGateway(`${name}-igw`, { vpcId: this.vpc.id, tags: tags("igw") }, parent);
    const subnet = (tier: Tier, i: number): aws.ec2.Subnet =>
      new aws.ec2.Subnet(
        `${name}-${tier}-${azLetter(i)}`,
        {
          vpcId: this.vpc.id,
          cidrBlock: subnetCidr(args.vpcCidr, tier, i),
          availabilityZone: args.availabilityZones[i],
          // Public addresses come only from the floating IPs (EIPs), never from launch.
          mapPublicIpOnLaunch: false,
          tags: tags(`${tier}-${azLetter(i)}`),
        },
        parent,
      );
    const pair = (tier: Tier): [aws.ec2.Subnet, aws.ec2.Subnet] => [subnet(tier, 0), subnet(tier, 1)];
    this.subnets = { public: pair("public"), app: pair("app"), db: pair("db") };

    const publicRt = new aws.ec2.RouteTable(
      `${name}-public`,
      { vpcId: this.vpc.id, tags: tags("public") },
      parent,
    );
    new aws.ec2.Route(
      `${name}-public-default`,
      { routeTableId: publicRt.id, destinationCidrBlock: "0.0.0.0/0", gatewayId: igw.id },
      parent,
    );
    this.subnets.public.forEach((s, i) => {
      new aws.ec2.RouteTableAssociation(
        `${name}-public-${azLetter(i)}`,
        { subnetId: s.id, routeTableId: publicRt.id },
        parent,
      );
    });

    const natCount = args.natGateways ?? 1;
    const nats = Array.from({ length: natCount }, (_, i) => {
      const eip = new aws.ec2.Eip(
        `${name}-nat-${azLetter(i)}`,
        { domain: "vpc", tags: tags(`nat-${azLetter(i)}`) },
        parent,
      );
      return new aws.ec2.NatGateway(
        `${name}-nat-${azLetter(i)}`,
        {
          allocationId: eip.allocationId,
          subnetId: this.subnets.public[i as 0 | 1].id,
          tags: tags(`nat-${azLetter(i)}`),
        },
        { parent: this, dependsOn: [igw] },
      );
    });
    const privateRt = (i: 0 | 1): aws.ec2.RouteTable => {
      const rt = new aws.ec2.RouteTable(
        `${name}-private-${azLetter(i)}`,
        { vpcId: this.vpc.id, tags: tags(`private-${azLetter(i)}`) },
        parent,
      );
      const nat = nats[Math.min(i, nats.length - 1)];
      new aws.ec2.Route(
        `${name}-private-${azLetter(i)}-default`,
        { routeTableId: rt.id, destinationCidrBlock: "0.0.0.0/0", natGatewayId: nat?.id },
        parent,
      );
      for (const tier of ["app", "db"] as const) {
        new aws.ec2.RouteTableAssociation(
          `${name}-${tier}-${azLetter(i)}`,
          { subnetId: this.subnets[tier][i].id, routeTableId: rt.id },
          parent,
        );
      }
      return rt;
    };
    this.privateRouteTables = [privateRt(0), privateRt(1)];

    const group = (g: Group, description: string): aws.ec2.SecurityGroup =>
      new aws.ec2.SecurityGroup(
        `${name}-${g}`,
        { vpcId: this.vpc.id, description, tags: tags(g), revokeRulesOnDelete: true },
        parent,
      );
    this.securityGroups = {
      balancer: group(
        "balancer",
        "pypi balancers: HTTP(S) and uploads from anywhere, Heartbeat between the pair",
      ),
      app: group("app", "pypi app servers: from the balancers; DRBD, NFS and Heartbeat between app servers"),
      db: group("db", "pypi databases: Postgres from app servers and the peer"),
    };
    createRules(this, name, networkRules(args.ports), this.securityGroups);

    this.registerOutputs({
      vpcId: this.vpc.id,
      privateRouteTableIds: this.privateRouteTables.map((rt) => rt.id),
    });
  }
}
