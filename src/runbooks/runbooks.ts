import { paths } from "../layout.js";
import { SCRATCH_PG_PORT } from "../render/pgbackrest.js";
import { PG_SOCKET_DIR, synchronousStandbyNames } from "../render/postgres.js";
import { type NodeSpec, nodesWithRole, peerOf, storagePair, type Topology } from "../topology.js";

/** The operator's workstation (AWS) or the client namespace (lab). */
export const OPERATOR = "operator";

export interface RunbookStep {
  readonly title: string;
  /** Node name, or OPERATOR. */
  readonly host: string;
  readonly command: string;
  /** What a human should see. */
  readonly expect: string;
  /** A regular expression the command's output must match; exit status must be 0 either way. */
  readonly expectOutput?: string;
  /** What to run instead when `host` cannot be reached (e.g. the instance is gone). */
  readonly fallback?: {
    readonly host: string;
    readonly command: string;
    /** What a human should see when the fallback ran. */
    readonly expect?: string;
    /** A regular expression the fallback's output must match. */
    readonly expectOutput?: string;
  };
}

export interface Runbook {
  readonly id: string;
  readonly title: string;
  readonly summary: string;
  readonly steps: readonly RunbookStep[];
  /** Why the lab cannot execute it, when it cannot. */
  readonly labLimitation?: string;
}

const agent = (args: string): string => `${paths.agent} ${args}`;
const escapeRegex = (text: string): string => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

function healthChecks(t: Topology): RunbookStep[] {
  return t.floatingIps.map((fip) => ({
    title: `HTTPS answers on ${fip.address}`,
    host: OPERATOR,
    command: `curl -fsS --max-time 5 --resolve ${t.domain}:443:${fip.address} https://${t.domain}/_health`,
    expect: "HTTP 200 with a JSON body",
  }));
}

function balancerLoss(t: Topology, lost: NodeSpec): Runbook {
  const survivor = peerOf(t, lost);
  const fipsOfLost = t.floatingIps.filter((f) => f.home === lost.name);
  return {
    id: `balancer-loss-${lost.name}`,
    title: `Balancer ${lost.name} lost`,
    summary: `Heartbeat on ${survivor.name} takes over every floating IP within deadtime (${t.heartbeat.deadtimeMs} ms). These steps confirm it and force it if Heartbeat did not.`,
    steps: [
      ...t.floatingIps.map((fip) => ({
        title: `${survivor.name} holds ${fip.address}`,
        host: survivor.name,
        command: agent(`fip ${fip.address} start`),
        expect: "exit 0; idempotent if Heartbeat already took it",
      })),
      {
        title: `${survivor.name} reports every floating IP`,
        host: survivor.name,
        command: agent("status"),
        expect: t.floatingIps.map((f) => `fip ${f.address} running`).join("; "),
        expectOutput: t.floatingIps.map((f) => `fip\\t${escapeRegex(f.address)}\\trunning`).join("[\\s\\S]*"),
      },
      ...healthChecks(t),
      {
        title: `Rebuild ${lost.name}`,
        host: OPERATOR,
        command: `see runbook rebuild-${lost.name}`,
        expect: `${fipsOfLost.map((f) => f.address).join(", ") || "its home addresses"} fail back once it rejoins (auto_failback ${t.heartbeat.autoFailback ? "on" : "off"})`,
      },
    ],
  };
}

function uploadBackendSteps(t: Topology, app: NodeSpec, action: "enable" | "disable"): RunbookStep[] {
  return nodesWithRole(t, "balancer").map((lb) => ({
    title: `${action} upload backend ${app.name} on ${lb.name}`,
    host: lb.name,
    command: agent(`upload-backend ${action} ${app.name}`),
    expect: `${app.name} admin_state=${action === "disable" ? "1" : "0"}`,
    expectOutput: `${escapeRegex(app.name)} admin_state=${action === "disable" ? "[1-9]" : "0"}`,
  }));
}

function appServerLoss(t: Topology, lost: NodeSpec): Runbook {
  const [storagePrimary] = storagePair(t);
  return {
    id: `app-server-loss-${lost.name}`,
    title: `App server ${lost.name} lost`,
    summary: `nginx stops sending to ${lost.name} after max_fails and HAProxy marks its upload sshd down within about 3 s; both happen without an operator. Drain it explicitly so it does not come back half-built.`,
    steps: [
      ...uploadBackendSteps(t, lost, "disable"),
      ...healthChecks(t),
      ...(lost.name === storagePrimary.name
        ? [
            {
              title: `${lost.name} was the storage primary`,
              host: OPERATOR,
              command: `see runbook storage-primary-loss-${lost.name}`,
              expect: "the package volume is served by the peer",
            },
          ]
        : []),
      {
        title: `Rebuild ${lost.name}`,
        host: OPERATOR,
        command: `see runbook rebuild-${lost.name}`,
        expect: "node back",
      },
      ...uploadBackendSteps(t, lost, "enable"),
    ],
  };
}

function uploadBackendLoss(t: Topology, lost: NodeSpec): Runbook {
  const [lb] = nodesWithRole(t, "balancer");
  if (!lb) throw new Error("no balancer");
  return {
    id: `upload-backend-loss-${lost.name}`,
    title: `Upload sshd on ${lost.name} down`,
    summary:
      "ssh.service restarts a crashed sshd by itself (Restart=on-failure) within about a second. This is for an sshd its unit left down (exit 255, or the start limit hit): HAProxy's SSH banner check takes the backend out within about 3 s and new SFTP sessions go to the other app servers. Restart sshd and confirm HAProxy puts it back.",
    steps: [
      {
        title: `HAProxy sees ${lost.name} down`,
        host: lb.name,
        command: agent("upload-backends"),
        expect: `${lost.name} DOWN, the others UP`,
        expectOutput: `${escapeRegex(lost.name)} (DOWN|MAINT)`,
      },
      {
        title: `Restart sshd on ${lost.name}`,
        host: lost.name,
        command: agent("service ssh restart"),
        expect: "exit 0",
      },
      {
        title: `HAProxy sees ${lost.name} up`,
        host: lb.name,
        command: agent(`upload-backends --wait ${lost.name}`),
        expect: `${lost.name} UP`,
        expectOutput: `${escapeRegex(lost.name)} UP`,
      },
    ],
  };
}

function dbPrimaryLoss(t: Topology, primary: NodeSpec): Runbook {
  const standby = peerOf(t, primary);
  const [app] = nodesWithRole(t, "app");
  if (!app) throw new Error("no app server");
  const sync = t.postgres.synchronous;
  const standbyApp = primary.name;
  const instance = primary.instanceId ?? `<${primary.name} instance id>`;
  return {
    id: `db-primary-loss-${primary.name}`,
    title: `Database primary ${primary.name} lost`,
    summary: `Fence ${primary.name}, promote ${standby.name}, move the writer address ${t.overlay.dbWriter}, verify, then re-attach ${primary.name} as the new standby with pg_rewind.${sync ? " Replication is synchronous: commits stall while no standby is attached, so synchronous_standby_names is relaxed until the re-attach." : ""}`,
    steps: [
      {
        title: `Fence ${primary.name}`,
        host: primary.name,
        command: agent("db-fence"),
        expect: `fenced ${primary.name}; if the fallback ran, its instance is stopped`,
        expectOutput: `fenced ${escapeRegex(primary.name)}`,
        // stop-instances returns while the instance is still "stopping" and may still take
        // writes; the promotion must wait until it is stopped.
        fallback: {
          host: OPERATOR,
          command: [
            `aws ec2 stop-instances --region ${t.region} --force --instance-ids ${instance} --query 'StoppingInstances[].CurrentState.Name' --output text`,
            `aws ec2 wait instance-stopped --region ${t.region} --instance-ids ${instance}`,
            `aws ec2 describe-instances --region ${t.region} --instance-ids ${instance} --query 'Reservations[].Instances[].State.Name' --output text`,
          ].join(" && "),
          expect: `${primary.name} stopped (the waiter gives up with exit 255 after 10 minutes)`,
          expectOutput: "stopped\\s*$",
        },
      },
      {
        title: `Promote ${standby.name}`,
        host: standby.name,
        command: agent("db-promote"),
        expect: `promoted ${standby.name}`,
        expectOutput: `promoted ${escapeRegex(standby.name)}`,
      },
      ...(sync
        ? [
            {
              title: "Let commits proceed without a synchronous standby",
              host: standby.name,
              command: agent("db-sync off"),
              expect: "synchronous_standby_names = ''",
              expectOutput: "synchronous_standby_names = ''",
            },
          ]
        : []),
      {
        title: `Move the writer address ${t.overlay.dbWriter} to ${standby.name}`,
        host: standby.name,
        command: agent(`overlay ${t.overlay.dbWriter} take`),
        expect: "exit 0",
      },
      {
        title: `${standby.name} is primary and holds the writer address`,
        host: standby.name,
        command: agent("status"),
        expect: `postgres primary; writer ${t.overlay.dbWriter} running`,
        expectOutput: `writer\\t${escapeRegex(t.overlay.dbWriter)}\\trunning[\\s\\S]*postgres\\tprimary`,
      },
      {
        title: "The app reaches a writable primary through the writer address",
        host: app.name,
        command: agent("db-writer-check"),
        expect: `writer ${t.overlay.dbWriter} is primary`,
        expectOutput: "is primary",
      },
      {
        // archive_mode is on on both nodes: the promoted one archives without a step; this proves it.
        title: `${standby.name}'s WAL, on its new timeline, reaches the backup repository`,
        host: standby.name,
        command: agent("db-archive-check"),
        expect: "archive ok: <newest WAL segment of the new timeline>",
        expectOutput: "^archive ok: ",
      },
      {
        title: `Re-attach ${primary.name} as standby`,
        host: primary.name,
        command: agent("db-reattach"),
        expect: `reattached ${primary.name} via pg_rewind (pg_basebackup if the timelines cannot be rewound)`,
        expectOutput: `reattached ${escapeRegex(primary.name)} via`,
      },
      {
        title: `${primary.name} streams from ${standby.name}`,
        host: standby.name,
        command: agent(`db-replication --wait ${standbyApp}`),
        // Still async here when synchronous: the next step restores synchronous_standby_names.
        expect: `${standbyApp} streaming async`,
        expectOutput: `${standbyApp} streaming`,
      },
      ...(sync
        ? [
            {
              title: "Restore synchronous replication",
              host: standby.name,
              command: agent("db-sync on"),
              expect: `synchronous_standby_names = '${synchronousStandbyNames(t, standby)}'`,
              expectOutput: "synchronous_standby_names = '.+'",
            },
          ]
        : []),
    ],
  };
}

/** Environment variables the operator sets before a runbook whose steps need a value only they know. */
export const PITR_TARGET_VAR = "PITR_TARGET";

function dbPointInTime(t: Topology, primary: NodeSpec): Runbook {
  const scratch = peerOf(t, primary);
  return {
    id: `db-pitr-${primary.name}`,
    title: `Point-in-time restore while ${primary.name} is primary`,
    summary: `After a mistaken DELETE, DROP or migration: restore the database as of the second before it onto a scratch server on ${scratch.name} (port ${SCRATCH_PG_PORT}, beside the standby; the pair keeps serving), and check the rows there. Set ${PITR_TARGET_VAR} to that moment first, e.g. ${PITR_TARGET_VAR}='2026-11-30 17:04:59+00'.`,
    steps: [
      {
        title: "The primary's WAL up to now is in the repository",
        host: primary.name,
        command: agent("db-archive-check"),
        expect: "archive ok: <newest WAL segment>",
        expectOutput: "^archive ok: ",
      },
      {
        title: `Restore as of $${PITR_TARGET_VAR} onto ${scratch.name}'s scratch server`,
        host: scratch.name,
        command: agent(`db-pitr "$${PITR_TARGET_VAR}"`),
        expect: `scratch server on port ${SCRATCH_PG_PORT} holds ${t.postgres.database} as of the target`,
        expectOutput: `scratch server on port ${SCRATCH_PG_PORT} holds`,
      },
      {
        title: "The registrations as they were",
        host: scratch.name,
        command: agent(`db-scratch-sql "SELECT count(*) FROM files"`),
        expect: "the number of file rows at the target",
        expectOutput: "^\\d+\\s*$",
      },
      {
        title: "Copy back what the mistake removed",
        host: scratch.name,
        command: `runuser -u postgres -- pg_dump -h ${PG_SOCKET_DIR} -p ${SCRATCH_PG_PORT} --data-only --table=<table> ${t.postgres.database} > /var/lib/postgresql/pitr-rows.sql`,
        expect:
          "a data-only dump of the table; review it, then apply the rows it lacks on the primary with psql (a judgement, not a step the lab runs)",
      },
      {
        title: "Remove the scratch server",
        host: scratch.name,
        command: agent("db-scratch-stop"),
        expect: "scratch server stopped and removed",
        expectOutput: "stopped and removed",
      },
    ],
    labLimitation: "the copy-back is the operator's judgement over the rows; the lab checks them instead",
  };
}

function dbBothLost(t: Topology): Runbook {
  const [first, second] = nodesWithRole(t, "db");
  const [app] = nodesWithRole(t, "app");
  if (!first || !second || !app) throw new Error("need two db nodes and an app server");
  const urns = [first, second].map((n) => n.urn ?? `<URN of ${n.name}'s instance>`);
  return {
    id: "db-both-lost",
    title: "Both database nodes lost",
    summary: `Replace both db instances and their data volumes. The writer route then points at a deleted interface (a blackhole: held by nobody), so ${first.name}'s first boot, finding its peer down and backups in the repository (${t.backup.repository}), restores from them to the end of the archive (every commit older than archive_timeout, ${t.backup.archiveTimeoutSeconds} s, is kept), becomes primary and takes ${t.overlay.dbWriter}; ${second.name} copies it as its standby. On a node that already runs, pypi-node db-restore does the same.`,
    steps: [
      {
        title: "Replace both db nodes and their volumes",
        host: OPERATOR,
        command: `pulumi up --stack ${t.environment} --yes ${urns.map((u) => `--replace '${u}'`).join(" ")} (and each data volume's URN)`,
        expect: "2 instances and 2 volumes replaced; their first boot restores",
      },
      {
        title: `${first.name} is primary, restored, and holds the writer address`,
        host: first.name,
        command: agent("status"),
        expect: `writer ${t.overlay.dbWriter} running; postgres primary; backup newest …`,
        expectOutput: `writer\\t${escapeRegex(t.overlay.dbWriter)}\\trunning[\\s\\S]*postgres\\tprimary[\\s\\S]*backup\\tnewest`,
      },
      {
        title: `${second.name} streams from ${first.name}`,
        host: first.name,
        command: agent("db-replication"),
        expect: `${second.name} streaming`,
        expectOutput: `${escapeRegex(second.name)} streaming`,
      },
      {
        title: "The app reaches a writable primary through the writer address",
        host: app.name,
        command: agent("db-writer-check"),
        expect: `writer ${t.overlay.dbWriter} is primary`,
        expectOutput: "is primary",
      },
      {
        title: "A full backup of the restored cluster (a new timeline)",
        host: first.name,
        command: agent("db-backup full"),
        expect: "backup full done",
        expectOutput: "^backup full done",
      },
    ],
    labLimitation: "the lab replaces a node by starting it on an empty disk and volume, not with pulumi",
  };
}

function packageFilesLost(t: Topology): Runbook {
  const [storagePrimary] = storagePair(t);
  return {
    id: "package-files-lost",
    title: "Package files lost",
    summary: `The DRBD pair is gone, or a bad rm on the primary (which DRBD copies to its peer) removed files: restore every file from the copies (${t.backup.fileCopies}) and check each file's sha256 against its database row.`,
    steps: [
      {
        title: "The package volume is mounted and writable",
        host: storagePrimary.name,
        command: agent("storage-check"),
        expect: `storage ${t.storage.packageRoot} writable (rebuild the storage pair first if it is gone)`,
        expectOutput: "writable",
      },
      {
        title: "Restore every missing or damaged file from the copies",
        host: storagePrimary.name,
        command: agent("files-restore"),
        expect: "JSON: mismatched 0, missingInStore 0; restored and alreadyGood add up to checked",
        expectOutput: '"mismatched":0,"missingInStore":0',
      },
      {
        title: "Every file matches its row",
        host: storagePrimary.name,
        command: agent("files-restore --all"),
        expect: "JSON: every row checked again from the copies, mismatched 0",
        expectOutput: '"mismatched":0,"missingInStore":0',
      },
      ...healthChecks(t),
    ],
  };
}

function storagePrimaryLoss(t: Topology, lost: NodeSpec): Runbook {
  const survivor = peerOf(t, lost);
  const apps = nodesWithRole(t, "app");
  return {
    id: `storage-primary-loss-${lost.name}`,
    title: `Storage primary ${lost.name} lost`,
    summary: `The storage Heartbeat cluster on ${survivor.name} makes DRBD primary, mounts ${t.storage.volumeMount}, starts NFS and takes ${t.overlay.storage}. These steps confirm or force that order.`,
    labLimitation: "the lab kernel has no DRBD module and no nfsd; the lab shares a directory instead",
    steps: [
      { title: "DRBD primary", host: survivor.name, command: "drbdadm primary pypi", expect: "exit 0" },
      {
        title: "Mount the volume",
        host: survivor.name,
        command: `mountpoint -q ${t.storage.volumeMount} || mount /dev/drbd${t.storage.drbdMinor} ${t.storage.volumeMount}`,
        expect: "exit 0",
      },
      { title: "NFS server", host: survivor.name, command: agent("nfs start"), expect: "exit 0" },
      {
        title: "Storage address",
        host: survivor.name,
        command: agent(`overlay ${t.overlay.storage} take`),
        expect: "exit 0",
      },
      ...apps
        .filter((a) => a.name !== lost.name)
        .map((a) => ({
          title: `${a.name} can write the package root`,
          host: a.name,
          command: agent("storage-check"),
          expect: `storage ${t.storage.packageRoot} writable`,
          expectOutput: "writable",
        })),
      {
        title: `Rebuild ${lost.name}`,
        host: OPERATOR,
        command: `see runbook rebuild-${lost.name}`,
        expect: "DRBD resyncs to UpToDate/UpToDate",
      },
    ],
  };
}

function rebuildNode(t: Topology, node: NodeSpec): Runbook {
  const urn = node.urn ?? `<URN of ${node.name}'s instance: pulumi stack --show-urns>`;
  const roleSteps: RunbookStep[] =
    node.role === "db"
      ? [
          {
            title: "Start as fenced",
            host: node.name,
            command: agent("db-fence"),
            expect: `fenced ${node.name}`,
          },
          {
            title: "Attach as standby",
            host: node.name,
            command: agent("db-reattach"),
            expect: `reattached ${node.name}`,
          },
        ]
      : node.role === "app"
        ? uploadBackendSteps(t, node, "enable")
        : [];
  return {
    id: `rebuild-${node.name}`,
    title: `Rebuild ${node.name}`,
    summary: `Replace ${node.name}'s instance${node.instanceId ? ` (${node.instanceId})` : ""}; cloud-init fetches its bundle and the agent applies it. Nothing else in the stack changes.`,
    labLimitation: "the lab rebuilds a node by restarting its namespace (npm run lab), not with pulumi",
    steps: [
      {
        title: `Replace ${node.name}`,
        host: OPERATOR,
        command: `pulumi up --stack ${t.environment} --yes --replace '${urn}'`,
        expect: "1 replaced",
      },
      {
        title: "Bundle applied",
        host: node.name,
        command: agent("status"),
        expect: "every service running",
        expectOutput: "service\\t",
      },
      ...roleSteps,
    ],
  };
}

/** A regex over `pypi-node health` output: the record of `check` is in state ok (or warn). */
const healthOk = (check: string): string => `"check":"${escapeRegex(check)}","state":"(ok|warn)"`;

function diskFull(t: Topology, node: NodeSpec): Runbook {
  const volume = node.dataVolumeId;
  const grow = (which: "data" | "root"): RunbookStep[] => [
    {
      title: `Grow ${which === "data" ? `the data volume${volume ? ` ${volume}` : ""}` : "the root volume"}`,
      host: OPERATOR,
      command:
        which === "data" && volume
          ? `aws ec2 modify-volume --region ${t.region} --volume-id ${volume} --size <GiB>`
          : `aws ec2 modify-volume --region ${t.region} --volume-id <root volume of ${node.instanceId ?? node.name}> --size <GiB>`,
      expect: "the modification reaches the optimizing state (the volume is usable meanwhile)",
    },
    {
      title: `Grow the ${which} filesystem online`,
      host: node.name,
      command: agent(`volume-grow ${which}`),
      expect: "resize2fs reports the new size; disk-report shows the free space",
      expectOutput: "^disk\t",
    },
  ];
  return {
    labLimitation:
      "online resize2fs needs CAP_SYS_RESOURCE, which the lab machine lacks; the lab runs the other steps and frees the space instead of growing the volume",
    id: `disk-full-${node.name}`,
    title: `A filesystem on ${node.name} is nearly full`,
    summary: `Find what grows, then grow the volume (EBS grows online: no stop, no detach). On a database node, WAL piling up in pg_wal means archiving fails (see db-backups-stalled) or a slot holds it (see db-standby-lost); growing buys the time to fix that.${node.role === "app" ? " The package volume is DRBD on both app servers: grow both backing volumes, then run the grow step on the storage primary." : ""}`,
    steps: [
      {
        title: "What is full, and what fills it",
        host: node.name,
        command: agent("disk-report"),
        expect: "each watched filesystem's use, then its five largest directories",
        expectOutput: "^disk\t",
      },
      ...(volume ? grow("data") : grow("root")),
      {
        title: "The disk checks are no longer critical",
        host: node.name,
        command: agent("health"),
        expect: `disk-root and disk-data below ${t.health.diskUsePercent} %`,
        expectOutput: healthOk(volume ? "disk-data" : "disk-root"),
      },
    ],
  };
}

function bundleRefused(t: Topology, node: NodeSpec): Runbook {
  return {
    id: `bundle-refused-${node.name}`,
    title: `${node.name} refused its newest config bundle`,
    summary: `The agent validates every candidate (each daemon's own check, an expired certificate, a reload that does not take) and keeps the previous files when one fails, so ${node.name} still serves on its last good bundle. Read why, fix the stack config, roll out again.`,
    steps: [
      {
        title: "Why the candidate was refused",
        host: node.name,
        command: agent("bundle-check"),
        expect:
          "refused <n> s ago, and the agent's reasons (the daemon's complaint, or the expired certificate)",
        expectOutput: "refused\t\\d+ s ago",
      },
      {
        title: "Fix the config and roll out",
        host: OPERATOR,
        command: `pulumi config set … --stack ${t.environment}; pulumi up --stack ${t.environment}`,
        expect: "the rollout applies the corrected bundle to one node of a pair at a time",
      },
      {
        title: `Apply the corrected bundle on ${node.name}`,
        host: node.name,
        command: agent("apply"),
        expect: "applied <n> changes",
        expectOutput: "applied\t\\d+ changes",
      },
      {
        title: "No refused candidate remains",
        host: node.name,
        command: agent("bundle-check"),
        expect: "refused none",
        expectOutput: "refused\tnone",
      },
    ],
  };
}

function tlsCertificate(t: Topology): Runbook {
  const balancers = nodesWithRole(t, "balancer");
  return {
    id: "tls-certificate",
    title: `The TLS certificate of ${t.domain} expires soon`,
    summary: `Renew it and roll it out: the certificate travels as an SSM parameter that every balancer's apply reads; an expired candidate is refused (see bundle-refused), so the live one keeps serving meanwhile.`,
    steps: [
      ...balancers.map((lb) => ({
        title: `The certificate ${lb.name} serves`,
        host: lb.name,
        command: `openssl x509 -noout -subject -enddate -in ${t.tls.certificatePath}`,
        expect: "its subject and notAfter",
        expectOutput: "notAfter=",
      })),
      {
        title: "Renew and set it",
        host: OPERATOR,
        command: `pulumi config set --secret pypi-infra:tlsCertificate < fullchain.pem; pulumi config set --secret pypi-infra:tlsKey < privkey.pem; pulumi up --stack ${t.environment}`,
        expect: "the rollout applies the new certificate on one balancer at a time",
      },
      ...balancers.map((lb) => ({
        title: `${lb.name} serves the new certificate`,
        host: lb.name,
        command: agent("health"),
        expect: `cert-days-left at ${t.health.certDaysLeft} or more`,
        expectOutput: healthOk("cert-days-left"),
      })),
    ],
  };
}

function dbStandbyLost(t: Topology, standby: NodeSpec): Runbook {
  const primary = peerOf(t, standby);
  const sync = t.postgres.synchronous;
  return {
    id: `db-standby-lost-${standby.name}`,
    title: `Standby ${standby.name} stopped streaming from ${primary.name}`,
    summary: `${primary.name} is primary and ${standby.name} does not stream from it (down, cut off, or too far behind).${sync ? " Replication is synchronous, so commits on the primary stall until the relief step." : ""} Re-attach ${standby.name}: pg_rewind, or a fresh base backup when the WAL it needs is gone.`,
    steps: [
      {
        title: `${standby.name} reaches ${primary.name}'s Postgres`,
        host: standby.name,
        command: `pg_isready -h ${primary.privateIp} -p ${t.postgres.port} -t 3`,
        expect:
          "accepting connections; otherwise mend the path first (security group, network ACL, the primary's pg_hba)",
        expectOutput: "accepting connections",
      },
      {
        title: `Who streams from ${primary.name}`,
        host: primary.name,
        command: agent("db-replication"),
        expect: `no row for ${standby.name}, or one not streaming`,
      },
      ...(sync
        ? [
            {
              title: "Relieve the stalled commits",
              host: primary.name,
              command: agent("db-sync off"),
              expect: "synchronous_standby_names = ''",
              expectOutput: "synchronous_standby_names = ''",
            },
          ]
        : []),
      {
        title: `Fence ${standby.name}`,
        host: standby.name,
        command: agent("db-fence"),
        expect: `fenced ${standby.name}`,
        expectOutput: `fenced ${escapeRegex(standby.name)}`,
      },
      {
        title: `Re-attach ${standby.name}`,
        host: standby.name,
        command: agent("db-reattach"),
        expect: `reattached ${standby.name} via pg_rewind or pg_basebackup`,
        expectOutput: `reattached ${escapeRegex(standby.name)} via`,
      },
      {
        title: `${standby.name} streams from ${primary.name}`,
        host: primary.name,
        command: agent(`db-replication --wait ${standby.name}`),
        expect: `${standby.name} streaming`,
        expectOutput: `${escapeRegex(standby.name)} streaming`,
      },
      ...(sync
        ? [
            {
              title: "Restore synchronous replication",
              host: primary.name,
              command: agent("db-sync on"),
              expect: `synchronous_standby_names = '${synchronousStandbyNames(t, primary)}'`,
              expectOutput: "synchronous_standby_names = '.+'",
            },
          ]
        : []),
    ],
  };
}

function dbBackupsStalled(t: Topology, primary: NodeSpec): Runbook {
  const standby = peerOf(t, primary);
  return {
    id: `db-backups-stalled-${primary.name}`,
    title: `Backups of ${primary.name} stalled or unsound`,
    summary: `${primary.name} is primary and its WAL does not reach the repository (${t.backup.repository}), its newest backup is older than ${t.health.backupAgeHours} h, or the last restore test failed. Find the cause (permissions, the bucket, a damaged file), then take a full backup and prove it restores.`,
    steps: [
      {
        title: "WAL reaches the repository",
        host: primary.name,
        command: agent("db-archive-check"),
        expect: "archive ok: <newest WAL segment>; otherwise pgbackrest's error names the cause",
        expectOutput: "^archive ok: ",
      },
      {
        title: "A new full backup",
        host: primary.name,
        command: agent("db-backup full"),
        expect: "backup full done in <n> s: <label>",
        expectOutput: "^backup full done",
      },
      {
        title: `${standby.name} proves it restores`,
        host: standby.name,
        command: agent("db-restore-test"),
        expect: "restore test ok: backup <label> verified and restored",
        expectOutput: "^restore test ok",
      },
    ],
  };
}

/** Every runbook of the deployment, filled in with its hosts, addresses and ids. */
export function buildRunbooks(t: Topology): Runbook[] {
  const [storagePrimary] = storagePair(t);
  const [dbPrimary] = nodesWithRole(t, "db");
  if (!dbPrimary) throw new Error("no database node");
  return [
    ...nodesWithRole(t, "balancer").map((n) => balancerLoss(t, n)),
    ...nodesWithRole(t, "app").map((n) => appServerLoss(t, n)),
    ...nodesWithRole(t, "app").map((n) => uploadBackendLoss(t, n)),
    ...nodesWithRole(t, "db").map((n) => dbPrimaryLoss(t, n)),
    ...nodesWithRole(t, "db").map((n) => dbPointInTime(t, n)),
    dbBothLost(t),
    packageFilesLost(t),
    storagePrimaryLoss(t, storagePrimary),
    ...t.nodes.map((n) => rebuildNode(t, n)),
    ...nodesWithRole(t, "db").map((n) => dbStandbyLost(t, n)),
    ...nodesWithRole(t, "db").map((n) => dbBackupsStalled(t, n)),
    ...t.nodes.map((n) => diskFull(t, n)),
    ...t.nodes.map((n) => bundleRefused(t, n)),
    tlsCertificate(t),
  ];
}
