import * as aws from "@pulumi/aws";
import * as command from "@pulumi/command";
import * as pulumi from "@pulumi/pulumi";
import { BASE_PACKAGES, rolloutChains } from "./bring-up.js";
import { type AlarmRunbook, HealthAlarms } from "./components/alarms.js";
import { AppServers } from "./components/app-servers.js";
import { BackupBuckets } from "./components/backup-buckets.js";
import { BalancerPair } from "./components/balancer-pair.js";
import { BundleBucket } from "./components/bundle-bucket.js";
import { DrbdVolume } from "./components/drbd-volume.js";
import { type CdnOutput, type DnsOutput, Edge } from "./components/edge.js";
import { type AwsAccount, lambdaFunctionArn } from "./components/iam.js";
import type { LaunchedNode, PlannedNode } from "./components/node.js";
import { PostgresPair } from "./components/postgres-pair.js";
import { ConfigRollout } from "./components/rollout.js";
import { RouteBroker } from "./components/route-broker.js";
import { type SecretKey, StackSecrets } from "./components/secrets.js";
import { StorageSnapshots, snapshotTargetTags } from "./components/storage-snapshots.js";
import { UploadProxy } from "./components/upload-proxy.js";
import type { StackConfig, TlsInput } from "./config.js";
import { ports } from "./layout.js";
import { Network } from "./network.js";
import {
  buildTopology,
  bundleEntriesOf,
  bundleFileLists,
  parametersByNode,
  placeholderIds,
  planNodes,
  routeBrokerName,
} from "./plan.js";
import { renderCloudInit } from "./render/cloud-init.js";
import { runbookMarkdown } from "./runbooks/markdown.js";
import { buildRunbooks, type Runbook } from "./runbooks/runbooks.js";
import { parseTopology } from "./schema.js";
import {
  type FloatingIp,
  type NodeRole,
  nodeByName,
  routeBrokerOf,
  storagePair,
  type Topology,
} from "./topology.js";

/** Public SSM parameter with the current Debian 12 AMI of the region. */
export const DEBIAN_AMI_PARAMETER = "/aws/service/debian/release/12/latest/amd64";

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

/** Where backups land: the `backup` stack output. */
export interface BackupOutput {
  readonly repositoryBucket: string;
  readonly fileCopyBucket: string;
  /** Object Lock (COMPLIANCE) retention of both buckets in days; 0: no lock. */
  readonly objectLockDays: number;
  /** pgBackRest's repository, `s3://<repositoryBucket>/pgbackrest`. */
  readonly repository: string;
  /** The package file copies, `s3://<fileCopyBucket>/packages`. */
  readonly fileCopies: string;
}

/** The storage pair's DLM snapshots: the `storageSnapshots` stack output. */
export interface StorageSnapshotsOutput {
  /** Snapshots kept per DRBD volume; 0: no snapshots (no policy, no role). */
  readonly retainCount: number;
  readonly intervalHours: number;
  /** The DLM lifecycle policy, when there is one. */
  readonly policyId?: string;
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
  /** The Lambda functions that move the writer and storage overlay routes. */
  readonly routeBrokers: { readonly writer: RouteBroker; readonly storage: RouteBroker };
  /** Present only with storageSnapshotRetainCount above 0. */
  readonly snapshots?: StorageSnapshots;
  readonly storageSnapshots: pulumi.Output<StorageSnapshotsOutput>;
  readonly upload: UploadProxy;
  readonly secrets: StackSecrets;
  readonly bundles: BundleBucket;
  readonly backups: BackupBuckets;
  readonly backup: pulumi.Output<BackupOutput>;
  readonly rollout: ConfigRollout;
  readonly healthAlarms: HealthAlarms;
  /** Alarm name -> the runbook that fixes it and what it means. */
  readonly alarms: pulumi.Output<Record<string, AlarmRunbook>>;
  readonly alarmTopicArn: pulumi.Output<string>;
  readonly edge: Edge;
  /** The serving mode and its DNS records: created in the zone, or to create by hand. */
  readonly dns: pulumi.Output<DnsOutput>;
  /** The CloudFront distribution, when `cdn` is on. */
  readonly cdn?: pulumi.Output<CdnOutput>;
  readonly smoke?: command.local.Command;

  constructor(name: string, args: PypiStackArgs, opts: pulumi.ComponentResourceOptions = {}) {
    super("pypi:infra:Stack", name, {}, opts);
    const cfg = args.config;
    const plan = planNodes(cfg);
    // Bundles are listed from the planned topology (placeholder ids): known before any id exists.
    this.plannedTopology = parseTopology(buildTopology(cfg, plan, placeholderIds(cfg)), { origin: "stack" });
    this.plannedFiles = bundleFileLists(this.plannedTopology);
    const ctx: StepContext = {
      name,
      cfg,
      plan,
      planned: this.plannedTopology,
      tags: { "pypi:environment": cfg.environment, "pypi:managed-by": "pulumi" },
      parent: { parent: this },
    };

    const base = this.foundation(ctx, args.tls);
    this.network = base.network;
    this.secrets = base.secrets;
    this.bundles = base.bundles;
    this.backups = base.backups;

    const tiers = this.launchTiers(ctx, base);
    this.balancers = tiers.balancers;
    this.apps = tiers.apps;
    this.databases = tiers.databases;
    this.storage = tiers.storage;
    this.routeBrokers = tiers.routeBrokers;
    this.snapshots = tiers.snapshots;
    this.upload = tiers.upload;

    // Before the bundles: the app servers' purge job names the distribution.
    this.edge = new Edge(
      `${name}-edge`,
      {
        environment: cfg.environment,
        domain: cfg.domain,
        edge: cfg.edge,
        publicIps: tiers.balancers.eips.map((e) => e.publicIp),
        retain: cfg.deletionProtection,
        tags: ctx.tags,
      },
      ctx.parent,
    );
    if (this.edge.distribution) tiers.apps.grantCdnPurge(this.edge.distribution.arn);

    const resolved = this.resolvedTopology(ctx, base, tiers, this.edge.distribution?.id);
    this.rollout = new ConfigRollout(
      `${name}-rollout`,
      {
        bucket: base.bundles.bucket,
        // A bundle starts the backups it names: both buckets must be locked and versioned first.
        bucketReady: [...base.bundles.ready, ...base.backups.ready],
        files: this.plannedFiles,
        entries: resolved.apply(bundleEntriesOf),
        chains: rolloutChains(plan),
        instances: Object.fromEntries(tiers.launched.map((n) => [n.spec.name, n.instance])),
        region: cfg.region,
      },
      ctx.parent,
    );

    // The alarms follow the planned topology: which alarms exist is known before any id does.
    this.healthAlarms = new HealthAlarms(
      `${name}-alarms`,
      {
        topology: this.plannedTopology,
        instanceIds: Object.fromEntries(tiers.launched.map((n) => [n.spec.name, n.instance.id])),
        account: base.account,
        emails: cfg.alarms.emails,
        httpsEndpoints: cfg.alarms.httpsEndpoints,
        actionsEnabled: cfg.alarms.actionsEnabled,
        tags: ctx.tags,
      },
      // After the rollout, whose apply starts each node's health timer: a new stack's alarms
      // then see data from their first period instead of paging for the silence of the build.
      { ...ctx.parent, dependsOn: [...this.rollout.done] },
    );
    this.alarms = this.healthAlarms.alarmRunbooks;
    this.alarmTopicArn = this.healthAlarms.topicArn;

    this.topology = withInstanceIds(resolved, tiers.launched);
    this.backup = pulumi
      .all([base.backups.repository.bucket, base.backups.fileCopies.bucket, resolved])
      .apply(([repositoryBucket, fileCopyBucket, t]) => ({
        repositoryBucket,
        fileCopyBucket,
        objectLockDays: cfg.backup.objectLockDays,
        repository: t.backup.repository,
        fileCopies: t.backup.fileCopies,
      }));
    const { retainCount, intervalHours } = cfg.storageSnapshots;
    this.storageSnapshots = tiers.snapshots
      ? tiers.snapshots.policy.id.apply((policyId) => ({ retainCount, intervalHours, policyId }))
      : pulumi.output({ retainCount, intervalHours });
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
    this.dns = this.edge.dns;
    this.cdn = this.edge.cdn;
    if (cfg.smokeCheck) this.smoke = this.smokeCheck(ctx, args.tls);

    this.registerOutputs({
      floatingIps: this.floatingIps,
      nodes: this.nodes,
      endpoints: this.endpoints,
      runbooks: this.runbooks,
      backup: this.backup,
      storageSnapshots: this.storageSnapshots,
      alarms: this.alarms,
      alarmTopicArn: this.alarmTopicArn,
      dns: this.dns,
      cdn: this.cdn,
    });
  }

  /** Step 1: the network, the secrets, the bundle and backup buckets: what every node needs before it boots. */
  private foundation(ctx: StepContext, tls: TlsInput): Foundation {
    const { name, cfg, planned, tags, parent } = ctx;
    const network = new Network(
      `${name}-net`,
      {
        vpcCidr: cfg.vpcCidr,
        availabilityZones: cfg.availabilityZones,
        natGateways: cfg.natGateways,
        ports: {
          http: planned.app.httpPort,
          https: ports.https,
          heartbeatUdp: planned.heartbeat.udpPort,
          postgres: planned.postgres.port,
          drbd: planned.storage.drbdPort,
        },
        overlay: cfg.overlay,
        routeBrokerCallers: planned.nodes
          .filter((n) => routeBrokerOf(planned, n) !== undefined)
          .map((n) => ({ name: n.name, address: n.privateIp })),
        region: cfg.region,
        tags,
      },
      parent,
    );
    const secrets = new StackSecrets(
      `${name}-secrets`,
      { refs: planned.secrets, tls, domain: cfg.domain, tags },
      parent,
    );
    const bundles = new BundleBucket(
      `${name}-bundles`,
      { environment: cfg.environment, retain: cfg.deletionProtection, tags },
      parent,
    );
    const account: pulumi.Output<AwsAccount> = aws.getCallerIdentityOutput({}, parent).apply((id) => ({
      partition: id.arn.split(":")[1] ?? "aws",
      accountId: id.accountId,
      region: cfg.region,
    }));
    const backups = new BackupBuckets(
      `${name}-backups`,
      {
        environment: cfg.environment,
        objectLockDays: cfg.backup.objectLockDays,
        retain: cfg.deletionProtection,
        tags,
      },
      parent,
    );
    return { network, secrets, bundles, backups, account };
  }

  /** Step 2: the three node tiers, the storage pair's volumes (and their snapshots) and the upload proxy. */
  private launchTiers(ctx: StepContext, base: Foundation): Tiers {
    const { name, cfg, plan, planned, tags, parent } = ctx;
    const { network: net, secrets, bundles, backups, account } = base;
    const protect = cfg.deletionProtection;
    const bucket = bundles.bucket;
    const ami = aws.ssm.getParameterOutput({ name: DEBIAN_AMI_PARAMETER }, parent).value;

    const byName = new Map(
      (Object.keys(planned.secrets) as SecretKey[]).map((k) => [planned.secrets[k].parameter, k] as const),
    );
    const nodeParameters = parametersByNode(planned);
    // A role may read what its nodes' bundles name, no more.
    const parameterArns = (nodes: readonly PlannedNode[]): pulumi.Output<string>[] =>
      [...new Set(nodes.flatMap((n) => nodeParameters[n.name] ?? []))].map((p) => {
        const key = byName.get(p);
        if (!key) throw new Error(`bundle secret ${p} is not one of the topology's secret references`);
        return secrets.parameters[key].arn;
      });

    // User data depends on the bundle bucket name only: never on a rendered config (nor on the
    // backup buckets, which reach the nodes through their bundles).
    const userData = Object.fromEntries(
      plan.map((n) => [
        n.name,
        bucket.bucket.apply((b) => {
          const t = buildTopology(cfg, plan, { ...placeholderIds(cfg), bucket: b });
          return renderCloudInit(t, nodeByName(t, n.name), BASE_PACKAGES);
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
      backupBucketArns: { repository: backups.repository.arn, fileCopies: backups.fileCopies.arn },
      parameterArns: parameterArns(plan.filter((n) => n.role === role)),
      account,
      metricNamespace: planned.health.namespace,
      // Bootstrap fetches through the endpoints; cloud-init's one try must find them.
      bootAfter: net.endpoints,
      tags,
    });
    const ofRole = (role: NodeRole) => plan.filter((n) => n.role === role);
    const storageNames = storagePair(planned).map((n) => n.name);
    const inStoragePair = (n: PlannedNode): boolean => storageNames.includes(n.name);
    // The schema guarantees two of each paired role.
    const pairOf = (role: NodeRole) => ofRole(role).slice(0, 2) as [PlannedNode, PlannedNode];
    // Known before the functions exist: the functions need the nodes' interfaces first.
    const brokerNames = {
      writer: routeBrokerName(cfg.environment, "writer"),
      storage: routeBrokerName(cfg.environment, "storage"),
    };
    const brokerArn = (fn: string) => account.apply((a) => lambdaFunctionArn(a, fn));

    const balancers = new BalancerPair(
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
    const apps = new AppServers(
      `${name}-app`,
      {
        ...launch("app"),
        nodes: ofRole("app"),
        parameterArns: parameterArns(ofRole("app").filter((n) => !inStoragePair(n))),
        storageParameterArns: parameterArns(ofRole("app").filter(inStoragePair)),
        storageRouteBrokerArn: brokerArn(brokerNames.storage),
      },
      parent,
    );
    const databases = new PostgresPair(
      `${name}-db`,
      {
        ...launch("db"),
        nodes: pairOf("db"),
        dataVolumeGb: cfg.dbVolumeGb,
        writerAddress: cfg.overlay.dbWriter,
        routeTables: net.privateRouteTables,
        routeBrokerArn: brokerArn(brokerNames.writer),
        retainData: protect,
      },
      parent,
    );
    const storagePairNodes = apps.nodes.slice(0, 2) as [LaunchedNode, LaunchedNode];
    const storage = new DrbdVolume(
      `${name}-storage`,
      {
        pair: storagePairNodes,
        sizeGb: cfg.storageVolumeGb,
        storageAddress: cfg.overlay.storage,
        routeTables: net.privateRouteTables,
        retainData: protect,
        tags,
        // Always tagged: without a policy the tag selects nothing, and turning snapshots on touches no volume.
        volumeTags: snapshotTargetTags(cfg.environment),
      },
      parent,
    );
    const broker = (address: "writer" | "storage", holders: readonly LaunchedNode[]) =>
      new RouteBroker(
        `${name}-route-${address}`,
        {
          functionName: brokerNames[address],
          address: address === "writer" ? cfg.overlay.dbWriter : cfg.overlay.storage,
          routeTableIds: net.privateRouteTables.map((rt) => rt.id),
          holders: holders.map((n) => n.eni.id),
          account,
          tags,
        },
        parent,
      );
    const routeBrokers = {
      writer: broker("writer", databases.nodes),
      storage: broker("storage", storagePairNodes),
    };
    const { retainCount, intervalHours } = cfg.storageSnapshots;
    // Off (0) registers nothing, not even an empty component.
    const snapshots =
      retainCount > 0
        ? new StorageSnapshots(
            `${name}-storage-snapshots`,
            { environment: cfg.environment, retainCount, intervalHours, account, tags },
            parent,
          )
        : undefined;
    const upload = new UploadProxy(
      `${name}-upload`,
      {
        securityGroups: net.securityGroups,
        port: planned.upload.port,
        backendPort: planned.upload.backendPort,
        domain: cfg.edge.uploadHostname,
      },
      parent,
    );
    const launched = [...balancers.nodes, ...apps.nodes, ...databases.nodes];
    return {
      balancers,
      apps,
      databases,
      storage,
      routeBrokers,
      snapshots,
      storagePair: storagePairNodes,
      upload,
      launched,
    };
  }

  /**
   * Step 3: the topology with the real EIPs, route tables, bucket and data volume ids: the one
   * boundary where AWS ids meet the pure core. Bundles need no instance ids, so the objects exist
   * before the instances boot and fetch them.
   */
  private resolvedTopology(
    ctx: StepContext,
    base: Foundation,
    tiers: Tiers,
    cdnDistributionId: pulumi.Output<string> | undefined,
  ): pulumi.Output<Topology> {
    const { cfg, plan } = ctx;
    const volumeOwners = [
      ...tiers.databases.nodes.map((n, i) => [n.spec.name, tiers.databases.dataVolumes[i]] as const),
      ...tiers.storagePair.map((n, i) => [n.spec.name, tiers.storage.volumes[i]] as const),
    ];
    return pulumi
      .all([
        pulumi.all(tiers.balancers.eips.map((e) => pulumi.all([e.publicIp, e.allocationId]))),
        pulumi.all(base.network.privateRouteTables.map((rt) => rt.id)),
        base.bundles.bucket.bucket,
        base.backups.repository.bucket,
        base.backups.fileCopies.bucket,
        pulumi.all(volumeOwners.map(([node, volume]) => pulumi.all([node, volume?.id ?? ""]))),
        cdnDistributionId ?? pulumi.output(undefined),
      ])
      .apply(([fips, routeTableIds, bucketName, backupBucket, fileCopyBucket, volumes, distributionId]) =>
        buildTopology(cfg, plan, {
          floatingIps: fips.map(([address, allocationId]) => ({ address, allocationId })),
          routeTableIds,
          bucket: bucketName,
          backupBucket,
          fileCopyBucket,
          dataVolumes: Object.fromEntries(volumes.filter(([, id]) => id !== "")),
          ...(distributionId ? { cdnDistributionId: distributionId } : {}),
        }),
      );
  }

  /** Step 4: after every rollout, fetch /_health over HTTPS through every floating IP. */
  private smokeCheck(ctx: StepContext, tls: TlsInput): command.local.Command {
    const addresses = this.floatingIps.apply((f) => f.map((x) => x.address).join(" "));
    return new command.local.Command(
      `${ctx.name}-smoke`,
      {
        create: SMOKE_SCRIPT,
        interpreter: ["/bin/sh", "-c"],
        environment: {
          PYPI_DOMAIN: ctx.cfg.domain,
          PYPI_FLOATING_IPS: addresses,
          // A generated certificate is its own trust anchor; a supplied one chains to a public CA.
          ...(tls.source === "generated" ? { PYPI_CA_PEM: this.secrets.tlsCertificate } : {}),
        },
        // Re-check after every rollout.
        triggers: [addresses, this.rollout.digests.apply((d) => JSON.stringify(d))],
      },
      { parent: this, dependsOn: [...this.rollout.done] },
    );
  }
}

interface StepContext {
  readonly name: string;
  readonly cfg: StackConfig;
  readonly plan: readonly PlannedNode[];
  readonly planned: Topology;
  readonly tags: Readonly<Record<string, string>>;
  readonly parent: { readonly parent: pulumi.Resource };
}

interface Foundation {
  readonly network: Network;
  readonly secrets: StackSecrets;
  readonly bundles: BundleBucket;
  readonly backups: BackupBuckets;
  /** Partition, account and region of the caller: what the ARNs are built from. */
  readonly account: pulumi.Output<AwsAccount>;
}

interface Tiers {
  readonly balancers: BalancerPair;
  readonly apps: AppServers;
  readonly databases: PostgresPair;
  readonly storage: DrbdVolume;
  readonly routeBrokers: { readonly writer: RouteBroker; readonly storage: RouteBroker };
  readonly snapshots: StorageSnapshots | undefined;
  readonly storagePair: readonly [LaunchedNode, LaunchedNode];
  readonly upload: UploadProxy;
  readonly launched: readonly LaunchedNode[];
}

/** The resolved topology with each node's instance id and URN filled in. */
function withInstanceIds(resolved: pulumi.Output<Topology>, launched: readonly LaunchedNode[]) {
  return pulumi
    .all([
      resolved,
      pulumi.all(launched.map((n) => pulumi.all([n.spec.name, n.instance.id, n.instance.urn]))),
    ])
    .apply(
      ([t, ids]): Topology => ({
        ...t,
        nodes: t.nodes.map((node) => {
          const found = ids.find(([nodeName]) => nodeName === node.name);
          return found ? { ...node, instanceId: found[1], urn: found[2] } : node;
        }),
      }),
    );
}
