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
/** The node groups, the interface endpoints' group and the Lambda endpoint's own. */
export type GroupName = Group | "endpoint" | "lambda";
export const WORLD = "0.0.0.0/0";

/** A routed address outside the VPC (an overlay IP) as a /32, named by what it stands for. */
export interface CidrPeer {
  readonly cidr: string;
  readonly name: string;
}

/** One security-group rule, as data: the designed set is a value tests can compare against. */
export interface RuleSpec {
  readonly group: GroupName;
  readonly direction: "ingress" | "egress";
  readonly protocol: "tcp" | "udp";
  readonly port: number;
  /** The other side: a group (by reference), the world, or an overlay /32. */
  readonly peer: GroupName | typeof WORLD | CidrPeer;
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

/** The overlay addresses (outside the VPC CIDR) that routes carry to the current primary. */
export interface OverlayPlan {
  /** Postgres writer address, routed to the db primary. */
  readonly dbWriter: string;
  /** NFS address, routed to the storage (DRBD) primary. */
  readonly storage: string;
}

/**
 * Traffic to an overlay address. The egress rule must name the /32: a group reference matches
 * the members' own interface addresses, never an address routed to them. Ingress rules match
 * the packet's source, so the holder's group admits `from` by group reference as usual.
 */
function routed(
  from: Group,
  to: Group,
  overlay: CidrPeer,
  protocol: "tcp" | "udp",
  port: number,
  what: string,
): RuleSpec[] {
  return [
    {
      group: from,
      direction: "egress",
      protocol,
      port,
      peer: overlay,
      description: `${what} to ${overlay.name}`,
    },
    { group: to, direction: "ingress", protocol, port, peer: from, description: `${what} from ${from}` },
  ];
}

/**
 * Every rule except the upload path (UploadProxy owns that). No admin SSH anywhere: admin
 * access is SSM Session Manager. Egress to the world is HTTPS (AWS APIs through the VPC
 * endpoints, S3 through its gateway endpoint, package mirrors) and HTTP (Debian mirrors; apt
 * verifies signatures) only. App servers reach Postgres and NFS only through the overlay
 * addresses, so their egress names those /32s and not the db or app group.
 */
export function networkRules(p: PortPlan, overlay: OverlayPlan): RuleSpec[] {
  const world = (group: Group, direction: "ingress" | "egress", port: number, what: string): RuleSpec => ({
    group,
    direction,
    protocol: "tcp",
    port,
    peer: WORLD,
    description: what,
  });
  const writer: CidrPeer = { cidr: `${overlay.dbWriter}/32`, name: "writer" };
  const storage: CidrPeer = { cidr: `${overlay.storage}/32`, name: "storage" };
  const nodeGroups = ["balancer", "app", "db"] as const;
  return [
    world("balancer", "ingress", p.http, "HTTP from clients (redirect to HTTPS)"),
    world("balancer", "ingress", p.https, "HTTPS from clients"),
    ...flow("balancer", "balancer", "udp", p.heartbeatUdp, "Heartbeat ucast"),
    ...flow("balancer", "app", "tcp", p.http, "proxied HTTP"),
    ...flow("app", "app", "udp", p.heartbeatUdp, "storage Heartbeat ucast"),
    ...flow("app", "app", "tcp", p.drbd, "DRBD replication"),
    ...NFS_SERVER_PORTS.flatMap((port) => routed("app", "app", storage, "tcp", port, `NFS (${port})`)),
    ...routed("app", "db", writer, "tcp", p.postgres, "Postgres"),
    ...flow("db", "db", "tcp", p.postgres, "Postgres streaming replication"),
    ...nodeGroups.flatMap((g) => [
      world(g, "egress", 443, "HTTPS to AWS APIs, S3 and package mirrors"),
      world(g, "egress", 80, "HTTP to Debian mirrors (signed)"),
    ]),
    ...nodeGroups.map(
      (g): RuleSpec => ({
        group: "endpoint",
        direction: "ingress",
        protocol: "tcp",
        port: 443,
        peer: g,
        description: `AWS API calls from ${g}`,
      }),
    ),
  ];
}

/**
 * The Lambda endpoint admits HTTPS from the route brokers' callers only, by their fixed /32s: a
 * group reference would need the storage pair split off the app group. A node outside the list
 * resolves the Lambda API to this endpoint (private DNS) and is refused, so it reaches no
 * function at all; spoofing a caller's address needs source/dest check off, which only the
 * callers themselves have.
 */
export function brokerEndpointRules(callers: readonly CidrPeer[]): RuleSpec[] {
  return callers.map((peer) => ({
    group: "lambda",
    direction: "ingress",
    protocol: "tcp",
    port: 443,
    peer,
    description: `Lambda API calls (route broker) from ${peer.name}`,
  }));
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

const peerName = (peer: RuleSpec["peer"]): string =>
  peer === WORLD ? "world" : typeof peer === "string" ? peer : peer.name;

const ruleName = (r: RuleSpec): string =>
  `${r.group}-${r.direction === "ingress" ? "in" : "out"}-${r.protocol}${r.port}-${peerName(r.peer)}`;

/**
 * One aws.vpc rule resource per spec, named from its meaning (never an index), referencing
 * the peer security group for every group-to-group rule and a CIDR for the world and overlays.
 */
export function createRules(
  parent: pulumi.Resource,
  name: string,
  rules: readonly RuleSpec[],
  groups: Readonly<Record<Group, aws.ec2.SecurityGroup>> & {
    readonly endpoint?: aws.ec2.SecurityGroup;
    readonly lambda?: aws.ec2.SecurityGroup;
  },
): pulumi.CustomResource[] {
  const group = (g: GroupName, r: RuleSpec): aws.ec2.SecurityGroup => {
    const sg = groups[g];
    if (!sg)
      throw new Error(
        `createRules: rule ${ruleName(r)} names group ${JSON.stringify(g)}, which was not given`,
      );
    return sg;
  };
  return rules.map((r) => {
    const args = {
      securityGroupId: group(r.group, r).id,
      ipProtocol: r.protocol,
      fromPort: r.port,
      toPort: r.port,
      description: r.description,
      ...(r.peer === WORLD
        ? { cidrIpv4: WORLD }
        : typeof r.peer === "string"
          ? { referencedSecurityGroupId: group(r.peer, r).id }
          : { cidrIpv4: r.peer.cidr }),
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
  /** Overlay addresses: app servers' egress names them (see networkRules). */
  readonly overlay: OverlayPlan;
  /** Nodes that invoke a route broker (`name`, private address): the only ones the Lambda endpoint admits. */
  readonly routeBrokerCallers: readonly { readonly name: string; readonly address: string }[];
  /** Region of the VPC endpoints' service names (`com.amazonaws.<region>.ssm`). */
  readonly region: string;
  /** Tags on every resource. */
  readonly tags: Readonly<Record<string, string>>;
}

/**
 * Interface endpoints (private DNS on) for every AWS API a node calls: SSM (parameters, agent,
 * Session Manager) and EC2 (EIP moves, route reads), so a failover never depends on a NAT
 * gateway or the internet. Lambda (the route brokers) has an endpoint of its own (see
 * brokerEndpointRules). STS for identity checks (`aws sts get-caller-identity`). CloudWatch
 * (`monitoring`) for the health metrics, so a node's health reaches its alarms even when the NAT
 * or a balancer's egress address is what failed. No KMS:
 * SecureString parameters use the aws/ssm key, and Parameter Store calls KMS on the caller's
 * behalf; the node needs kms:Decrypt permission (the aws/ssm key grants it account-wide) but
 * never a network path to KMS. S3 has a gateway endpoint on every route table instead.
 */
export const INTERFACE_ENDPOINT_SERVICES = [
  "ssm",
  "ssmmessages",
  "ec2messages",
  "ec2",
  "sts",
  "monitoring",
] as const;

/**
 * VPC, public and private subnets in two AZs, NAT egress, the VPC endpoints and the security
 * groups with their rules.
 */
export class Network extends pulumi.ComponentResource {
  readonly vpc: aws.ec2.Vpc;
  readonly subnets: Readonly<Record<Tier, readonly [aws.ec2.Subnet, aws.ec2.Subnet]>>;
  /** One per AZ; the overlay routes live in these. */
  readonly privateRouteTables: readonly [aws.ec2.RouteTable, aws.ec2.RouteTable];
  readonly publicRouteTable: aws.ec2.RouteTable;
  readonly internetGateway: aws.ec2.InternetGateway;
  readonly securityGroups: Readonly<Record<GroupName, aws.ec2.SecurityGroup>>;
  /** The S3 gateway endpoint and the interface endpoints: nodes must not boot before these. */
  readonly endpoints: readonly aws.ec2.VpcEndpoint[];

  constructor(name: string, args: NetworkArgs, opts: pulumi.ComponentResourceOptions = {}) {
    super("pypi:infra:Network", name, {}, opts);
    const parent = { parent: this };
    const tags = (role: string) => ({ ...args.tags, Name: `${name}-${role}` });
    this.vpc = new aws.ec2.Vpc(
      `${name}-vpc`,
      { cidrBlock: args.vpcCidr, enableDnsHostnames: true, enableDnsSupport: true, tags: tags("vpc") },
      parent,
    );
    const igw = new aws.ec2.InternetGateway(`${name}-igw`, { vpcId: this.vpc.id, tags: tags("igw") }, parent);
    this.internetGateway = igw;
    const subnet = (tier: Tier, i: number): aws.ec2.Subnet =>
      new aws.ec2.Subnet(
        `${name}-${tier}-${azLetter(i)}`,
        {
          vpcId: this.vpc.id,
          cidrBlock: subnetCidr(args.vpcCidr, tier, i),
          availabilityZone: args.availabilityZones[i],
          // Public addresses come only from EIPs (floating and balancer egress), never from launch.
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
    this.publicRouteTable = publicRt;
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

    const group = (g: GroupName, description: string): aws.ec2.SecurityGroup =>
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
      endpoint: group("endpoint", "pypi VPC interface endpoints: HTTPS from the nodes only"),
      lambda: group("lambda", "pypi Lambda endpoint: HTTPS from the route brokers' callers only"),
    };
    const callers = args.routeBrokerCallers.map((c) => ({ cidr: `${c.address}/32`, name: c.name }));
    createRules(
      this,
      name,
      [...networkRules(args.ports, args.overlay), ...brokerEndpointRules(callers)],
      this.securityGroups,
    );

    const service = (s: string) => `com.amazonaws.${args.region}.${s}`;
    const s3 = new aws.ec2.VpcEndpoint(
      `${name}-s3`,
      {
        vpcId: this.vpc.id,
        serviceName: service("s3"),
        vpcEndpointType: "Gateway",
        // Every route table, the public one too: bundles, the SSM agent package and WAL
        // archives stay on the AWS network, needing neither NAT nor a public address.
        routeTableIds: [publicRt.id, ...this.privateRouteTables.map((rt) => rt.id)],
        tags: tags("s3"),
      },
      parent,
    );
    const endpoint = (svc: string, group: aws.ec2.SecurityGroup): aws.ec2.VpcEndpoint =>
      new aws.ec2.VpcEndpoint(
        `${name}-${svc}`,
        {
          vpcId: this.vpc.id,
          serviceName: service(svc),
          vpcEndpointType: "Interface",
          privateDnsEnabled: true,
          // One interface per AZ, so losing an AZ leaves the other AZ's nodes their API calls.
          subnetIds: this.subnets.app.map((s) => s.id),
          securityGroupIds: [group.id],
          tags: tags(svc),
        },
        parent,
      );
    const interfaces = INTERFACE_ENDPOINT_SERVICES.map((svc) => endpoint(svc, this.securityGroups.endpoint));
    // The route brokers are on the failover path like the EC2 calls they replaced: no NAT in it.
    const lambda = endpoint("lambda", this.securityGroups.lambda);
    this.endpoints = [s3, ...interfaces, lambda];

    this.registerOutputs({
      vpcId: this.vpc.id,
      privateRouteTableIds: this.privateRouteTables.map((rt) => rt.id),
    });
  }
}
