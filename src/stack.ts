import * as aws from "@pulumi/aws";
import * as command from "@pulumi/command";
import * as pulumi from "@pulumi/pulumi";
import { BASE_PACKAGES, rolloutChains } from "./bring-up.js";
import { buildBundles } from "./bundle.js";
import { bundleDirEntries } from "./bundle-dir.js";
import { AppServers } from "./components/app-servers.js";
import { BalancerPair } from "./components/balancer-pair.js";
import { BundleBucket } from "./components/bundle-bucket.js";
import { DrbdVolume } from "./components/drbd-volume.js";
import type { AwsAccount } from "./components/iam.js";
import type { LaunchedNode, PlannedNode } from "./components/node.js";
import { PostgresPair } from "./components/postgres-pair.js";
import { type BundleEntries, ConfigRollout } from "./components/rollout.js";
import { type SecretKey, StackSecrets } from "./components/secrets.js";
import { UploadProxy } from "./components/upload-proxy.js";
import type { StackConfig, TlsInput } from "./config.js";
import { azLetter, hostIp, Network, subnetCidr } from "./network.js";
import { renderCloudInit } from "./render/cloud-init.js";
import { runbookMarkdown } from "./runbooks/markdown.js";
import { buildRunbooks, type Runbook } from "./runbooks/runbooks.js";
import { type FloatingIp, type NodeRole, pgBinDir, storagePair, type Topology } from "./topology.js";
import { validateTopology } from "./validate-topology.js";

/** Public SSM parameter with the current Debian 12 AMI of the region. */
export const DEBIAN_AMI_PARAMETER = "/aws/service/debian/release/12/latest/amd64";

/** What user data installs before the first bundle; each bundle names the rest of its packages. */

/** Node interface name on Nitro instances. */
const INTERFACE = "ens5";

/** AWS ids the topology needs that exist only after `up`. */
export interface ResolvedIds {
  readonly floatingIps: readonly { readonly address: string; readonly allocationId: string }[];
  readonly routeTableIds: readonly string[];
  readonly bucket: string;
  /** Instance id and URN per node name; absent while planning. */
  readonly instances?: Readonly<Record<string, { readonly instanceId: string; readonly urn: string }>>;
  /** EBS data volume id per node name (db nodes, the storage pair); absent while planning. */
  readonly dataVolumes?: Readonly<Record<string, string>>;
}

/**
 * Stand-ins with the shape of the real ids. The topology built from them has the same nodes,
 * files and secrets as the real one, which is what lets the stack create every resource
 * before any output resolves.
 */
export function placeholderIds(cfg: StackConfig): ResolvedIds {
  return {
    floatingIps: Array.from({ length: cfg.floatingIps }, (_, i) => ({
      address: `192.0.2.${10 + i}`,
      allocationId: `eipalloc-pending${i}`,
    })),
    routeTableIds: ["rtb-pending-a", "rtb-pending-b"],
    bucket: `pypi-${cfg.environment}-bundles-pending`,
  };
}

export const secretRefs = (environment: string): Topology["secrets"] => ({
  balancerAuthkey: { parameter: `/pypi/${environment}/heartbeat/balancer-authkey` },
  storageAuthkey: { parameter: `/pypi/${environment}/heartbeat/storage-authkey` },
  postgresReplicationPassword: { parameter: `/pypi/${environment}/postgres/replication-password` },
  postgresAppPassword: { parameter: `/pypi/${environment}/postgres/app-password` },
  tlsKey: { parameter: `/pypi/${environment}/tls/key` },
  tlsCertificate: { parameter: `/pypi/${environment}/tls/certificate` },
  uploadHostKey: { parameter: `/pypi/${environment}/upload/host-key` },
  drbdSecret: { parameter: `/pypi/${environment}/drbd/secret` },
});

/**
 * Every node with its AZ and fixed private addresses, from the config alone: host .10, .11, ...
 * of its tier's /24 in its AZ; balancer spares (one per floating IP) from .20.
 */
export function planNodes(cfg: StackConfig): PlannedNode[] {
  const node = (role: NodeRole, prefix: string, i: number, tier: "public" | "app" | "db"): PlannedNode => {
    const azIndex = (i % 2) as 0 | 1;
    const cidr = subnetCidr(cfg.vpcCidr, tier, azIndex);
    return {
      name: `${prefix}-${azLetter(i)}`,
      role,
      az: cfg.availabilityZones[azIndex],
      azIndex,
      privateIp: hostIp(cidr, 10 + Math.floor(i / 2)),
      secondaryIps:
        role === "balancer" ? Array.from({ length: cfg.floatingIps }, (_, f) => hostIp(cidr, 20 + f)) : [],
    };
  };
  return [
    node("balancer", "lb", 0, "public"),
    node("balancer", "lb", 1, "public"),
    ...Array.from({ length: cfg.appServers }, (_, i) => node("app", "app", i, "app")),
    node("db", "db", 0, "db"),
    node("db", "db", 1, "db"),
  ];
}

/** The whole deployment as plain data. Pure: the same inputs give the same topology. */
export function buildTopology(cfg: StackConfig, nodes: readonly PlannedNode[], ids: ResolvedIds): Topology {
  const balancers = nodes.filter((n) => n.role === "balancer");
  return {
    environment: cfg.environment,
    backend: "aws",
    region: cfg.region,
    vpcCidr: cfg.vpcCidr,
    domain: cfg.domain,
    nodes: nodes.map((n) => ({
      name: n.name,
      role: n.role,
      az: n.az,
      privateIp: n.privateIp,
      secondaryIps: n.secondaryIps,
      interface: INTERFACE,
      ...(ids.instances?.[n.name] ?? {}),
      ...(ids.dataVolumes?.[n.name] ? { dataVolumeId: ids.dataVolumes[n.name] } : {}),
    })),
    floatingIps: ids.floatingIps.map(
      (f, i): FloatingIp => ({
        address: f.address,
        allocationId: f.allocationId,
        home: balancers[i % 2]?.name ?? "",
      }),
    ),
    overlay: { ...cfg.overlay, routeTableIds: ids.routeTableIds },
    postgres: {
      version: cfg.postgres.version,
      synchronous: cfg.postgres.synchronous,
      port: 5432,
      database: "pypi",
      appUser: "pypi_app",
      replicationUser: "replicator",
      slotName: "standby_slot",
      walKeepMb: 1024,
      maxSlotWalKeepMb: 8192,
      binDir: pgBinDir(cfg.postgres.version),
    },
    heartbeat: { udpPort: 694, ...cfg.heartbeat },
    upload: { port: 22, backendPort: 22, users: cfg.upload.users, maxFileBytes: cfg.upload.maxFileBytes },
    app: { ...cfg.app, httpPort: 80 },
    storage: {
      device: "/dev/nvme1n1",
      drbdPort: 7788,
      drbdMinor: 0,
      volumeMount: "/srv/pypi-volume",
      packageRoot: "/srv/pypi",
    },
    tls: { certificatePath: "/etc/pypi/tls/fullchain.pem", keyPath: "/etc/pypi/tls/privkey.pem" },
    secrets: secretRefs(cfg.environment),
    bundleLocation: `s3://${ids.bucket}/bundles`,
  };
}

/** Each node's bundle as `relative path -> content`. */
export function bundleEntriesOf(t: Topology): Record<string, BundleEntries> {
  return Object.fromEntries(buildBundles(t).map((b) => [b.node, Object.fromEntries(bundleDirEntries(b))]));
}

/** Each node's bundle file list; from the planned topology, so it is known before `up`. */
export const bundleFileLists = (t: Topology): Record<string, string[]> =>
  Object.fromEntries(Object.entries(bundleEntriesOf(t)).map(([node, e]) => [node, Object.keys(e)]));

/** The SSM parameters each node fetches, from its bundle: what its role may read. */
export const parametersByNode = (t: Topology): Record<string, string[]> =>
  Object.fromEntries(buildBundles(t).map((b) => [b.node, b.secrets.map((s) => s.parameter)]));

export const SMOKE_SCRIPT = `${[
  "set -eu",
  'cacert=""',
  // biome-ignore lint/suspicious/noTemplateCurlyInString: shell parameter expansion
  'if [ -n "${PYPI_CA_PEM:-}" ]; then',
  "  ca=$(mktemp)",
  "  trap 'rm -f \"$ca\"' EXIT",
  '  printf "%s\\n" "$PYPI_CA_PEM" >"$ca"',
  '  cacert="--cacert $ca"',
  "fi",
  "for ip in $PYPI_FLOATING_IPS; do",
  "  # shellcheck disable=SC2086",
  "  curl -fsS -o /dev/null --retry 30 --retry-delay 10 --retry-all-errors --max-time 10 $cacert \\",
  '    --resolve "$PYPI_DOMAIN:443:$ip" "https://$PYPI_DOMAIN/_health"',
  '  echo "$ip serves https://$PYPI_DOMAIN/_health"',
  "done",
].join("\n")}\n`;

export interface PypiStackArgs {
  /** Validated stack config (parseConfig). */
  readonly config: StackConfig;
  /** TLS material source; `config` carries the secret Outputs. */
  readonly tls: TlsInput;
}

export interface NodeOutput {
  readonly instanceId: string;
  readonly privateIp: string;
  readonly role: NodeRole;
  readonly az: string;
}

/** The PyPI deployment of one environment: network, secrets, the three node tiers, bundles and their rollout. */
export class PypiStack extends pulumi.ComponentResource {
  /** Topology before any id exists (placeholders): what the plain resource graph is built from. */
  readonly plannedTopology: Topology;
  readonly plannedFiles: Readonly<Record<string, readonly string[]>>;
  /** The resolved topology with instance ids and URNs. */
  readonly topology: pulumi.Output<Topology>;
  readonly floatingIps: pulumi.Output<FloatingIp[]>;
  readonly nodes: pulumi.Output<Record<string, NodeOutput>>;
  readonly endpoints: { readonly https: string; readonly upload: string };
  readonly runbooks: pulumi.Output<Record<string, string>>;
  readonly runbookData: pulumi.Output<Runbook[]>;
  readonly network: Network;
  readonly balancers: BalancerPair;
  readonly apps: AppServers;
  readonly databases: PostgresPair;
  readonly storage: DrbdVolume;
  readonly upload: UploadProxy;
  readonly secrets: StackSecrets;
  readonly bundles: BundleBucket;
  readonly rollout: ConfigRollout;
  readonly smoke?: command.local.Command;

  constructor(name: string, args: PypiStackArgs, opts: pulumi.ComponentResourceOptions = {}) {
    super("pypi:infra:Stack", name, {}, opts);
    const cfg = args.config;
    const plan = planNodes(cfg);
    // Fails here, synchronously, with every field that is wrong, rather than inside an apply.
    this.plannedTopology = validateTopology(buildTopology(cfg, plan, placeholderIds(cfg)));
    const planned = this.plannedTopology;
    this.plannedFiles = bundleFileLists(planned);
    const tags = { "pypi:environment": cfg.environment, "pypi:managed-by": "pulumi" };
    const protect = cfg.deletionProtection;
    const parent = { parent: this };

    const identity = aws.getCallerIdentityOutput({}, parent);
    const account: pulumi.Output<AwsAccount> = identity.apply((id) => ({
      partition: id.arn.split(":")[1] ?? "aws",
      accountId: id.accountId,
      region: cfg.region,
    }));
    const ami = aws.ssm.getParameterOutput({ name: DEBIAN_AMI_PARAMETER }, parent).value;

    this.network = new Network(
      `${name}-net`,
      {
        vpcCidr: cfg.vpcCidr,
        availabilityZones: cfg.availabilityZones,
        natGateways: cfg.natGateways,
        ports: {
          http: planned.app.httpPort,
          https: 443,
          heartbeatUdp: planned.heartbeat.udpPort,
          postgres: planned.postgres.port,
          drbd: planned.storage.drbdPort,
        },
        overlay: cfg.overlay,
        region: cfg.region,
        tags,
      },
      parent,
    );
    const net = this.network;
    this.secrets = new StackSecrets(
      `${name}-secrets`,
      { refs: planned.secrets, tls: args.tls, domain: cfg.domain, tags },
      parent,
    );
    const byName = new Map(
      (Object.keys(planned.secrets) as SecretKey[]).map((k) => [planned.secrets[k].parameter, k] as const),
    );
    const nodeParameters = parametersByNode(planned);
    // A role may read what its nodes' bundles name, no more.
    const parameterArns = (nodes: readonly PlannedNode[]): pulumi.Output<string>[] =>
      [...new Set(nodes.flatMap((n) => nodeParameters[n.name] ?? []))].map((p) => {
        const key = byName.get(p);
        if (!key) throw new Error(`bundle secret ${p} is not one of the topology's secret references`);
        return this.secrets.parameters[key].arn;
      });
    this.bundles = new BundleBucket(
      `${name}-bundles`,
      { environment: cfg.environment, retain: protect, tags },
      parent,
    );
    const bucket = this.bundles.bucket;

    // User data depends on the bucket name only: never on a rendered config.
    const userData = Object.fromEntries(
      plan.map((n) => [
        n.name,
        bucket.bucket.apply((b) => {
          const t = buildTopology(cfg, plan, { ...placeholderIds(cfg), bucket: b });
          const spec = t.nodes.find((x) => x.name === n.name);
          if (!spec) throw new Error(`no planned node ${n.name}`);
          return renderCloudInit(t, spec, BASE_PACKAGES);
        }),
      ]),
    );
    const launch = (role: NodeRole) => ({
      ami,
      subnets: role === "balancer" ? net.subnets.public : role === "app" ? net.subnets.app : net.subnets.db,
      securityGroup: net.securityGroups[role],
      instanceType: cfg.instanceTypes[role],
      rootVolumeGb: cfg.rootVolumeGb,
      userData,
      deletionProtection: protect,
      bundleBucketArn: bucket.arn,
      parameterArns: parameterArns(plan.filter((n) => n.role === role)),
      account,
      // Bootstrap fetches through the endpoints; cloud-init's one try must find them.
      bootAfter: net.endpoints,
      tags,
    });
    const ofRole = (role: NodeRole) => plan.filter((n) => n.role === role);
    const storageNames = storagePair(planned).map((n) => n.name);
    const inStoragePair = (n: PlannedNode): boolean => storageNames.includes(n.name);
    const pairOf = (role: NodeRole): [PlannedNode, PlannedNode] => {
      const [a, b] = ofRole(role);
      if (!a || !b) throw new Error(`need two ${role} nodes`);
      return [a, b];
    };

    this.balancers = new BalancerPair(
      `${name}-lb`,
      {
        ...launch("balancer"),
        nodes: pairOf("balancer"),
        floatingIps: cfg.floatingIps,
        retainAddresses: protect,
        internetGateway: net.internetGateway,
      },
      parent,
    );
    this.apps = new AppServers(
      `${name}-app`,
      {
        ...launch("app"),
        nodes: ofRole("app"),
        parameterArns: parameterArns(ofRole("app").filter((n) => !inStoragePair(n))),
        storageParameterArns: parameterArns(ofRole("app").filter(inStoragePair)),
        routeTableIds: net.privateRouteTables.map((rt) => rt.id),
      },
      parent,
    );
    this.databases = new PostgresPair(
      `${name}-db`,
      {
        ...launch("db"),
        nodes: pairOf("db"),
        dataVolumeGb: cfg.dbVolumeGb,
        writerAddress: cfg.overlay.dbWriter,
        routeTables: net.privateRouteTables,
        retainData: protect,
      },
      parent,
    );
    const [storageA, storageB] = this.apps.nodes;
    if (!storageA || !storageB) throw new Error("need two app servers for the storage pair");
    this.storage = new DrbdVolume(
      `${name}-storage`,
      {
        pair: [storageA, storageB],
        sizeGb: cfg.storageVolumeGb,
        storageAddress: cfg.overlay.storage,
        routeTables: net.privateRouteTables,
        retainData: protect,
        tags,
      },
      parent,
    );
    this.upload = new UploadProxy(
      `${name}-upload`,
      {
        securityGroups: net.securityGroups,
        port: planned.upload.port,
        backendPort: planned.upload.backendPort,
        domain: cfg.domain,
      },
      parent,
    );

    // The one boundary where AWS ids meet the pure core: topology -> bundles -> entries.
    // Bundles need no instance ids, so the objects exist before the instances boot and fetch them.
    // Each node's agent finds its data volume by the volume id (its stable NVMe name).
    const volumeOwners = [
      ...this.databases.nodes.map((n, i) => [n.spec.name, this.databases.dataVolumes[i]] as const),
      ...[storageA, storageB].map((n, i) => [n.spec.name, this.storage.volumes[i]] as const),
    ];
    const resolvedTopology = pulumi
      .all([
        pulumi.all(this.balancers.eips.map((e) => pulumi.all([e.publicIp, e.allocationId]))),
        pulumi.all(net.privateRouteTables.map((rt) => rt.id)),
        bucket.bucket,
        pulumi.all(volumeOwners.map(([node, volume]) => pulumi.all([node, volume?.id ?? ""]))),
      ])
      .apply(([fips, routeTableIds, bucketName, volumes]) =>
        buildTopology(cfg, plan, {
          floatingIps: fips.map(([address, allocationId]) => ({ address, allocationId })),
          routeTableIds,
          bucket: bucketName,
          dataVolumes: Object.fromEntries(volumes.filter(([, id]) => id !== "")),
        }),
      );
    const entries = resolvedTopology.apply(bundleEntriesOf);

    const launched: LaunchedNode[] = [...this.balancers.nodes, ...this.apps.nodes, ...this.databases.nodes];
    const instances = Object.fromEntries(launched.map((n) => [n.spec.name, n.instance]));
    this.rollout = new ConfigRollout(
      `${name}-rollout`,
      {
        bucket,
        bucketReady: this.bundles.ready,
        files: this.plannedFiles,
        entries,
        chains: rolloutChains(plan),
        instances,
        region: cfg.region,
      },
      parent,
    );

    this.topology = pulumi
      .all([
        resolvedTopology,
        pulumi.all(launched.map((n) => pulumi.all([n.spec.name, n.instance.id, n.instance.urn]))),
      ])
      .apply(([t, ids]) => ({
        ...t,
        nodes: t.nodes.map((node) => {
          const found = ids.find(([nodeName]) => nodeName === node.name);
          return found ? { ...node, instanceId: found[1], urn: found[2] } : node;
        }),
      }));
    this.floatingIps = this.topology.apply((t) => [...t.floatingIps]);
    this.nodes = this.topology.apply((t) =>
      Object.fromEntries(
        t.nodes.map((n) => [
          n.name,
          { instanceId: n.instanceId ?? "", privateIp: n.privateIp, role: n.role, az: n.az },
        ]),
      ),
    );
    this.runbookData = this.topology.apply((t) => buildRunbooks(t));
    this.runbooks = this.topology.apply((t) =>
      Object.fromEntries(buildRunbooks(t).map((rb) => [rb.id, runbookMarkdown(t, rb)])),
    );
    this.endpoints = { https: `https://${cfg.domain}/`, upload: this.upload.endpoint };

    if (cfg.smokeCheck) {
      const addresses = this.floatingIps.apply((f) => f.map((x) => x.address).join(" "));
      this.smoke = new command.local.Command(
        `${name}-smoke`,
        {
          create: SMOKE_SCRIPT,
          interpreter: ["/bin/sh", "-c"],
          environment: {
            PYPI_DOMAIN: cfg.domain,
            PYPI_FLOATING_IPS: addresses,
            // A generated certificate is its own trust anchor; a supplied one chains to a public CA.
            ...(args.tls.source === "generated" ? { PYPI_CA_PEM: this.secrets.tlsCertificate } : {}),
          },
          // Re-check after every rollout.
          triggers: [addresses, this.rollout.digests.apply((d) => JSON.stringify(d))],
        },
        { parent: this, dependsOn: [...this.rollout.done] },
      );
    }

    this.registerOutputs({
      floatingIps: this.floatingIps,
      nodes: this.nodes,
      endpoints: this.endpoints,
      runbooks: this.runbooks,
    });
  }
}
