/**
 * The one schema of the deployment: every stack config key (type, default, bounds, the topology
 * field it feeds) and the topology itself, with the cross-field rules as one named table. The
 * stack config, the planned topology, the resolved one and the lab's topology.json all go through
 * it; renderers and components take its result and check nothing again.
 */

import { Region } from "@pulumi/aws/types/enums";
import { z } from "zod";
import { CLOUDFRONT_TARGET } from "./app/cdn.js";
import { cidrContains, parseCidr, parseIpv4 } from "./net.js";
import { APP_RUNTIMES, type NodeRole, type Topology } from "./topology.js";
import { checkUploadUsers } from "./upload-users.js";

export const PROJECT = "pypi-infra";

/** Read with `getSecret`/`requireSecret` only; never parsed with the plain keys, never echoed. */
export const SECRET_KEYS = ["tlsCertificate", "tlsKey"] as const;

export const show = (value: unknown): string => JSON.stringify(value) ?? String(value);

/** The one shape of a problem with a setting: what it is called, its value, and what is allowed. */
export const invalid = (name: string, value: unknown, allowed: string): string =>
  `${name}: ${show(value)} is not valid; expected ${allowed}`;

/** A problem in the stack config: every message names the `pypi-infra:` key a user sets. */
export class ConfigError extends Error {
  constructor(readonly problems: readonly string[]) {
    super(`invalid stack configuration:\n  - ${problems.join("\n  - ")}`);
    this.name = "ConfigError";
  }
}

/** A problem in a topology file (the lab's topology.json): messages name the field. */
export class TopologyError extends Error {
  constructor(readonly problems: readonly string[]) {
    super(`invalid topology:\n  - ${problems.join("\n  - ")}`);
    this.name = "TopologyError";
  }
}

/** A value's schema together with the words that say what it allows (for messages and docs). */
export interface Atom<T extends z.ZodType = z.ZodType> {
  readonly schema: T;
  readonly allowed: string;
}

const atom = <T extends z.ZodType>(allowed: string, build: (error: string) => T): Atom<T> => ({
  schema: build(allowed),
  allowed,
});

const whole = (min: number, max: number, unit = "") =>
  atom(`a whole number${unit} from ${min} to ${max}`, (e) => z.number(e).int(e).min(min, e).max(max, e));

const pattern = (allowed: string, re: RegExp) => atom(allowed, (e) => z.string(e).regex(re, e));

/** Safe in every file format we render: no whitespace, quotes, `..` or shell metacharacters. */
export function isSafeAbsolutePath(path: string): boolean {
  return /^\/[A-Za-z0-9._@+\-/]*$/.test(path) && !path.split("/").includes("..") && !path.includes("//");
}

const AWS_REGIONS: readonly string[] = Object.values(Region);

/** Majors a node can run: 15 from Debian 12; 11 only from the lab's own binaries (recovery.conf). */
export const PG_MAJORS = [11, 15] as const;

/** Hours between snapshots that DLM accepts for an interval in HOURS. */
export const DLM_INTERVAL_HOURS = [1, 2, 3, 4, 6, 8, 12, 24] as const;
export type DlmIntervalHours = (typeof DLM_INTERVAL_HOURS)[number];

/** No entry twice, ignoring case: each address is one SNS subscription. */
const distinct = (list: readonly string[]): boolean =>
  new Set(list.map((s) => s.toLowerCase())).size === list.length;

/** Value schemas shared by the config keys and the topology fields they feed. */
export const atoms = {
  port: whole(1, 65535),
  hostname: pattern("a host name like lb-a: [a-z0-9-], 2 to 32 characters", /^[a-z][a-z0-9-]{0,30}[a-z0-9]$/),
  ipv4: atom("an IPv4 address such as 10.0.1.5", (e) =>
    z.string(e).refine((s) => parseIpv4(s) !== undefined, e),
  ),
  cidr: atom("an IPv4 CIDR such as 10.40.0.0/16 with the host bits zero", (e) =>
    z.string(e).refine((s) => parseCidr(s) !== undefined, e),
  ),
  vpcCidr: atom("an IPv4 CIDR from /16 to /19 with the host bits zero, e.g. 10.40.0.0/16", (e) =>
    z.string(e).refine((s) => {
      const c = parseCidr(s);
      return c !== undefined && c.prefix >= 16 && c.prefix <= 19;
    }, e),
  ),
  dnsName: pattern(
    "a lower-case DNS name such as pypi.example.org",
    /^(?=.{4,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$/,
  ),
  dnsZone: atom(
    'a Route 53 public hosted zone id (Z followed by upper-case letters and digits) or the zone\'s name such as example.org, or "" for none',
    (e) =>
      z
        .string(e)
        .regex(/^$|^Z[A-Z0-9]{1,32}$|^(?=.{4,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$/, e),
  ),
  acmCertificateArn: pattern(
    'an ACM certificate ARN in us-east-1 (arn:aws:acm:us-east-1:<account>:certificate/<id>), or "" for none',
    /^$|^arn:aws[a-z-]*:acm:us-east-1:[0-9]{12}:certificate\/[0-9a-f-]{36}$/,
  ),
  region: atom("an AWS region such as us-east-1 (pulumi config set aws:region us-east-1)", (e) =>
    z.string(e).refine((s) => AWS_REGIONS.includes(s), e),
  ),
  az: pattern("an availability zone name such as us-east-1a", /^[a-z0-9-]+[a-z]$/),
  interface: pattern("a network interface name like ens5", /^[a-z][a-z0-9]{1,14}$/),
  sqlIdentifier: pattern("a lower-case SQL identifier [a-z_][a-z0-9_]*", /^[a-z_][a-z0-9_]{0,62}$/),
  path: atom("an absolute path of [A-Za-z0-9._@+-/] without '..' or '//'", (e) =>
    z.string(e).refine(isSafeAbsolutePath, e),
  ),
  awsId: pattern("an AWS id like eipalloc-0123 or rtb-0123", /^[A-Za-z0-9-]{1,64}$/),
  lambdaName: pattern("a Lambda function name: [A-Za-z0-9_-], 1 to 64 characters", /^[A-Za-z0-9_-]{1,64}$/),
  instanceType: pattern(
    "an EC2 instance type such as t3.small (checked against AWS at preview)",
    /^[a-z][a-z0-9-]*\.[a-z0-9]+$/,
  ),
  volumeId: pattern("an EBS volume id like vol-0123456789abcdef0", /^vol-[0-9a-f]{8,17}$/),
  ssmName: atom("an SSM parameter name like /pypi/prod/postgres/app-password", (e) =>
    z
      .string(e)
      .regex(/^\/[A-Za-z0-9_.\-/]{1,1000}$/, e)
      .refine((s) => !s.split("/").includes(".."), e),
  ),
  postgresVersion: atom("15 (Debian 12's Postgres); the lab also runs 11 from its own binaries", (e) =>
    z.number(e).refine((v) => (PG_MAJORS as readonly number[]).includes(v), e),
  ),
  appRuntime: atom(
    'one of "appserver", "fcgid" ("wsgi" and "gunicorn" are gone: no bundle ships a Python app; "appserver" is the persistent, supervised app server they stood for)',
    (e) => z.enum(APP_RUNTIMES, e),
  ),
  boolean: atom("true or false", (e) => z.boolean(e)),
  heartbeat: {
    keepaliveMs: whole(100, 60_000, " of ms"),
    warntimeMs: whole(100, 600_000, " of ms"),
    deadtimeMs: whole(100, 600_000, " of ms"),
    initdeadMs: whole(100, 3_600_000, " of ms"),
  },
  maxProcesses: whole(1, 256),
  requestTimeoutSeconds: whole(1, 600, " of seconds"),
  maxFileBytes: whole(1, 2 ** 40, " of bytes"),
  rejectedRetentionDays: whole(1, 365, " of days"),
  floatingIps: whole(1, 8),
  appServers: whole(2, 16),
  retentionCount: whole(1, 100, " backups"),
  archiveTimeoutSeconds: whole(1, 300, " of seconds"),
  fileCopyIntervalSeconds: whole(5, 3600, " of seconds"),
  objectLockDays: whole(0, 36500, " of days (0: no Object Lock)"),
  snapshotRetainCount: whole(0, 1000, " of snapshots per volume (0: no snapshots)"),
  snapshotIntervalHours: atom(`one of ${DLM_INTERVAL_HOURS.join(", ")} (hours; what DLM accepts)`, (e) =>
    z.number(e).refine((v) => (DLM_INTERVAL_HOURS as readonly number[]).includes(v), e),
  ),
  healthIntervalSeconds: whole(1, 60, " of seconds"),
  alarmPeriodSeconds: atom("one of 10, 30, 60 (CloudWatch high-resolution alarm periods)", (e) =>
    z.number(e).refine((v) => [10, 30, 60].includes(v), e),
  ),
  diskUsePercent: whole(50, 99, " (percent)"),
  certDaysLeft: whole(1, 90, " of days"),
  replayLagSeconds: whole(5, 86_400, " of seconds"),
  replayLagMb: whole(1, 1_048_576, " of MiB"),
  registerQueueSeconds: whole(30, 86_400, " of seconds"),
  backupAgeHours: whole(1, 24 * 31, " of hours"),
  alarmEmails: atom("a list of up to 20 different e-mail addresses such as [oncall@example.org]", (e) =>
    z
      .array(z.string(e).regex(/^[^\s@'"<>]+@[a-z0-9.-]+\.[a-z]{2,63}$/i, e), e)
      .max(20, e)
      .refine(distinct, e),
  ),
  alarmHttpsEndpoints: atom("a list of up to 20 different https:// URLs (a pager's SNS webhook)", (e) =>
    z
      .array(z.string(e).regex(/^https:\/\/[A-Za-z0-9.-]+(:[0-9]{1,5})?(\/[^\s'"<>]*)?$/, e), e)
      .max(20, e)
      .refine(distinct, e),
  ),
  metricNamespace: pattern(
    "a CloudWatch namespace like PyPI/prod: [A-Za-z0-9/._-], not AWS/",
    /^(?!AWS\/)[A-Za-z0-9/._-]{1,255}$/,
  ),
  // systemd-analyze calendar judges the rest; the tests run it over every default and example.
  calendar: pattern(
    'a systemd OnCalendar= expression such as "Sun *-*-* 02:00:00" or "daily"',
    /^[A-Za-z0-9*:.,/~ -]{1,64}$/,
  ),
  backupLocation: atom("s3://bucket/path (AWS) or an absolute directory (lab)", (e) =>
    z
      .string(e)
      .refine((s) => /^s3:\/\/[a-z0-9.-]{3,63}(\/[A-Za-z0-9._-]+)*$/.test(s) || isSafeAbsolutePath(s), e),
  ),
  cdnInvalidations: atom("cloudfront:<distribution id> (AWS) or an absolute directory (lab)", (e) =>
    z.string(e).refine((s) => CLOUDFRONT_TARGET.test(s) || isSafeAbsolutePath(s), e),
  ),
} as const;

/** The Pulumi.yaml type of a key; structured keys are set as YAML in the stack file. */
export type ConfigKeyType = "string" | "integer" | "boolean" | "array";

/** One `pypi-infra:` config key. */
export interface ConfigKey {
  readonly key: string;
  readonly type: ConfigKeyType;
  readonly atom: Atom;
  /** Absent: the key is required (or derived, see `defaultText`). */
  readonly default?: string | number | boolean;
  /** How a default that depends on other keys is derived. */
  readonly defaultText?: string;
  readonly description: string;
  /** The topology field(s) it feeds, so rules over the topology name this key. */
  readonly fields?: readonly string[];
  /** Read as a secret; `allowed` describes it, the value is never quoted. */
  readonly secret?: boolean;
}

const key = (k: ConfigKey): ConfigKey => k;

/** Every `pypi-infra:` key, in the order the docs list them. */
export const CONFIG_KEYS: readonly ConfigKey[] = [
  key({
    key: "domain",
    type: "string",
    atom: atoms.dnsName,
    description: "Public host name served over HTTPS and used for uploads (required)",
    fields: ["domain"],
  }),
  key({
    key: "vpcCidr",
    type: "string",
    atom: atoms.vpcCidr,
    default: "10.40.0.0/16",
    description: "VPC range, /16 to /19; subnets are /24s at fixed offsets",
    fields: ["vpcCidr"],
  }),
  key({
    key: "availabilityZones",
    type: "array",
    atom: atom("two different zones of aws:region, e.g. [us-east-1a, us-east-1b]", (e) =>
      z.tuple([atoms.az.schema, atoms.az.schema], e),
    ),
    defaultText: "[<region>a, <region>b]",
    description: "The two AZs the pairs are split over (checked against AWS at preview)",
    fields: ["nodes.az"],
  }),
  key({
    key: "floatingIps",
    type: "integer",
    atom: atoms.floatingIps,
    default: 1,
    description: "Floating IPs (EIPs) shared by the balancers, 1-8; homes alternate between them",
    fields: ["floatingIps", "nodes.secondaryIps"],
  }),
  key({
    key: "appServers",
    type: "integer",
    atom: atoms.appServers,
    default: 2,
    description: "App servers, 2-16, spread over both AZs; the first two form the storage pair",
    fields: ["nodes(role app)"],
  }),
  key({
    key: "natGateways",
    type: "integer",
    atom: whole(1, 2),
    default: 1,
    description: "NAT gateways for the private subnets, 1 or 2 (one per AZ)",
  }),
  key({
    key: "balancerInstanceType",
    type: "string",
    atom: atoms.instanceType,
    default: "t3.small",
    description: "Balancer instance type: x86_64 Nitro, 1 GiB+, one ENI address per floating IP plus one",
  }),
  key({
    key: "appInstanceType",
    type: "string",
    atom: atoms.instanceType,
    default: "t3.medium",
    description: "App server instance type: x86_64 Nitro, memory for appMaxProcesses workers",
  }),
  key({
    key: "dbInstanceType",
    type: "string",
    atom: atoms.instanceType,
    default: "t3.medium",
    description: "Database instance type: x86_64 Nitro, 2 GiB+",
  }),
  key({
    key: "rootVolumeGb",
    type: "integer",
    atom: whole(8, 1024, " of GB"),
    default: 16,
    description: "Encrypted root volume of every node, GB",
  }),
  key({
    key: "dbVolumeGb",
    type: "integer",
    atom: whole(1, 16384, " of GB"),
    default: 20,
    description: "Encrypted Postgres data volume per database node, GB",
  }),
  key({
    key: "storageVolumeGb",
    type: "integer",
    atom: whole(1, 16384, " of GB"),
    default: 50,
    description: "Encrypted DRBD volume per storage node, GB",
  }),
  key({
    key: "postgresVersion",
    type: "integer",
    atom: atoms.postgresVersion,
    default: 15,
    description: "Postgres major version; Debian 12 ships 15, the only one a node can install",
    fields: ["postgres.version"],
  }),
  key({
    key: "synchronousReplication",
    type: "boolean",
    atom: atoms.boolean,
    default: false,
    description: "Synchronous streaming replication (RPO 0)",
    fields: ["postgres.synchronous"],
  }),
  key({
    key: "heartbeatKeepaliveMs",
    type: "integer",
    atom: atoms.heartbeat.keepaliveMs,
    default: 500,
    description: "Heartbeat keepalive interval",
    fields: ["heartbeat.keepaliveMs"],
  }),
  key({
    key: "heartbeatWarntimeMs",
    type: "integer",
    atom: atoms.heartbeat.warntimeMs,
    default: 1000,
    description: "Heartbeat late-heartbeat warning",
    fields: ["heartbeat.warntimeMs"],
  }),
  key({
    key: "heartbeatDeadtimeMs",
    type: "integer",
    atom: atoms.heartbeat.deadtimeMs,
    default: 1500,
    description: "Heartbeat declares the peer dead after this silence",
    fields: ["heartbeat.deadtimeMs"],
  }),
  key({
    key: "heartbeatInitdeadMs",
    type: "integer",
    atom: atoms.heartbeat.initdeadMs,
    default: 10000,
    description: "Heartbeat deadtime right after start, while the network settles",
    fields: ["heartbeat.initdeadMs"],
  }),
  key({
    key: "autoFailback",
    type: "boolean",
    atom: atoms.boolean,
    default: true,
    description: "Floating IPs return to their home balancer when it rejoins",
    fields: ["heartbeat.autoFailback"],
  }),
  key({
    key: "appRuntime",
    type: "string",
    atom: atoms.appRuntime,
    default: "appserver",
    description:
      "appserver: the app as its own systemd service (pypi-index.service, appMaxProcesses workers) behind mod_proxy_fcgi; fcgid: Apache's mod_fcgid starts and recycles the app's processes",
    fields: ["app.runtime"],
  }),
  key({
    key: "appMaxProcesses",
    type: "integer",
    atom: atoms.maxProcesses,
    default: 8,
    description: "Index app worker processes per app server (each holds up to 2 Postgres connections)",
    fields: ["app.maxProcesses"],
  }),
  key({
    key: "appRequestTimeoutSeconds",
    type: "integer",
    atom: atoms.requestTimeoutSeconds,
    default: 30,
    description: "Longest request the app server waits for",
    fields: ["app.requestTimeoutSeconds"],
  }),
  key({
    key: "uploadUsers",
    type: "array",
    atom: atom("a list of {name, uid, publicKey} (at least one; required)", (e) => z.array(z.unknown(), e)),
    description: "SFTP upload accounts: name, fixed uid (2000-59999), one OpenSSH public key (required)",
    fields: ["upload.users"],
  }),
  key({
    key: "uploadMaxFileBytes",
    type: "integer",
    atom: atoms.maxFileBytes,
    default: 104857600,
    description: "Largest upload accepted",
    fields: ["upload.maxFileBytes"],
  }),
  key({
    key: "uploadRejectedRetentionDays",
    type: "integer",
    atom: atoms.rejectedRetentionDays,
    default: 7,
    description:
      "Days a refused SFTP upload stays in the uploader's rejected/ directory (with its reason) before the register job removes it",
    fields: ["upload.rejectedRetentionDays"],
  }),
  key({
    key: "overlayDbWriter",
    type: "string",
    atom: atoms.ipv4,
    default: "100.64.10.5",
    description: "Writer overlay address (outside the VPC CIDR), routed to the Postgres primary",
    fields: ["overlay.dbWriter"],
  }),
  key({
    key: "overlayStorage",
    type: "string",
    atom: atoms.ipv4,
    default: "100.64.10.6",
    description: "NFS overlay address (outside the VPC CIDR), routed to the DRBD primary",
    fields: ["overlay.storage"],
  }),
  key({
    key: "tlsSource",
    type: "string",
    atom: atom('"generated" or "config"', (e) => z.enum(["generated", "config"], e)),
    default: "generated",
    description: "generated (self-signed via @pulumi/tls) or config (secret keys tlsCertificate and tlsKey)",
  }),
  key({
    key: "tlsCertificate",
    type: "string",
    atom: atom("the PEM chain, leaf first, set with --secret (tlsSource config)", (e) => z.string(e)),
    description: "Certificate chain for domain (secret; checked at preview)",
    secret: true,
  }),
  key({
    key: "tlsKey",
    type: "string",
    atom: atom("the leaf's PEM private key, set with --secret (tlsSource config)", (e) => z.string(e)),
    description: "Private key of the leaf certificate (secret; checked at preview)",
    secret: true,
  }),
  key({
    key: "backupRetentionFull",
    type: "integer",
    atom: atoms.retentionCount,
    default: 4,
    description: "Full Postgres backups kept in the repository (older ones and their WAL expire)",
    fields: ["backup.retentionFull"],
  }),
  key({
    key: "backupRetentionDiff",
    type: "integer",
    atom: atoms.retentionCount,
    default: 6,
    description: "Differential Postgres backups kept",
    fields: ["backup.retentionDiff"],
  }),
  key({
    key: "backupFullSchedule",
    type: "string",
    atom: atoms.calendar,
    default: "Sun *-*-* 02:00:00",
    description: "When the primary takes a full backup (systemd OnCalendar=, UTC)",
    fields: ["backup.fullSchedule"],
  }),
  key({
    key: "backupDiffSchedule",
    type: "string",
    atom: atoms.calendar,
    default: "Mon..Sat *-*-* 02:00:00",
    description: "When the primary takes a differential backup (systemd OnCalendar=, UTC)",
    fields: ["backup.diffSchedule"],
  }),
  key({
    key: "restoreTestSchedule",
    type: "string",
    atom: atoms.calendar,
    default: "*-*-* 05:00:00",
    description:
      "When the standby proves the newest backup restores (pgbackrest verify, then a restore into a scratch directory)",
    fields: ["backup.restoreTestSchedule"],
  }),
  key({
    key: "archiveTimeoutSeconds",
    type: "integer",
    atom: atoms.archiveTimeoutSeconds,
    default: 10,
    description:
      "Postgres archive_timeout: bounds the committed writes lost when both database nodes are lost",
    fields: ["backup.archiveTimeoutSeconds"],
  }),
  key({
    key: "fileCopyIntervalSeconds",
    type: "integer",
    atom: atoms.fileCopyIntervalSeconds,
    default: 30,
    description:
      "Timer of the package file copy job (a registration starts it at once; the timer catches what that missed)",
    fields: ["backup.fileCopyIntervalSeconds"],
  }),
  key({
    key: "backupObjectLockDays",
    type: "integer",
    atom: atoms.objectLockDays,
    default: 0,
    description:
      "S3 Object Lock (compliance mode) on the backup and file copy buckets: days each object version cannot be deleted, by anyone; 0 for none",
  }),
  key({
    key: "storageSnapshotRetainCount",
    type: "integer",
    atom: atoms.snapshotRetainCount,
    default: 0,
    description:
      "EBS snapshots (Data Lifecycle Manager) kept of each DRBD volume; 0 for none (no DLM policy or role)",
  }),
  key({
    key: "storageSnapshotIntervalHours",
    type: "integer",
    atom: atoms.snapshotIntervalHours,
    default: 24,
    description:
      "Hours between DRBD volume snapshots, in slots from 03:00 UTC; used when storageSnapshotRetainCount is above 0",
  }),
  key({
    key: "healthIntervalSeconds",
    type: "integer",
    atom: atoms.healthIntervalSeconds,
    default: 5,
    description:
      "How often every node runs `pypi-node health` and publishes it as high-resolution CloudWatch metrics",
    fields: ["health.intervalSeconds"],
  }),
  key({
    key: "alarmPeriodSeconds",
    type: "integer",
    atom: atoms.alarmPeriodSeconds,
    default: 10,
    description:
      "Period of every health alarm; one period with a critical value (or no value, for `reporting`) fires it",
    fields: ["health.periodSeconds"],
  }),
  key({
    key: "alarmDiskUsePercent",
    type: "integer",
    atom: atoms.diskUsePercent,
    default: 90,
    description: "A filesystem (root, Postgres data, package volume) this full or more is critical",
    fields: ["health.diskUsePercent"],
  }),
  key({
    key: "alarmCertDaysLeft",
    type: "integer",
    atom: atoms.certDaysLeft,
    default: 14,
    description: "A TLS certificate with fewer days left is critical (twice this is a warning)",
    fields: ["health.certDaysLeft"],
  }),
  key({
    key: "alarmReplayLagSeconds",
    type: "integer",
    atom: atoms.replayLagSeconds,
    default: 60,
    description: "A standby replaying this far behind its primary is critical",
    fields: ["health.replayLagSeconds"],
  }),
  key({
    key: "alarmReplayLagMb",
    type: "integer",
    atom: atoms.replayLagMb,
    default: 256,
    description:
      "A standby holding this much received WAL it has not replayed yet is critical (a failover must replay it first)",
    fields: ["health.replayLagMb"],
  }),
  key({
    key: "alarmRegisterQueueSeconds",
    type: "integer",
    atom: atoms.registerQueueSeconds,
    default: 300,
    description: "An upload waiting this long in the register queue is critical",
    fields: ["health.registerQueueSeconds"],
  }),
  key({
    key: "alarmBackupAgeHours",
    type: "integer",
    atom: atoms.backupAgeHours,
    default: 30,
    description:
      "The primary's newest pgBackRest backup this old is critical (the default schedules back up daily)",
    fields: ["health.backupAgeHours"],
  }),
  key({
    key: "alarmEmails",
    type: "array",
    atom: atoms.alarmEmails,
    defaultText: "[] (no e-mail subscription)",
    description: "E-mail subscriptions of the alarm topic (each address confirms by mail)",
  }),
  key({
    key: "alarmHttpsEndpoints",
    type: "array",
    atom: atoms.alarmHttpsEndpoints,
    defaultText: "[] (no HTTPS subscription)",
    description: "HTTPS subscriptions of the alarm topic: a pager's SNS endpoint (PagerDuty, Opsgenie, …)",
  }),
  key({
    key: "alarmActions",
    type: "boolean",
    atom: atoms.boolean,
    default: true,
    description:
      "false mutes the alarms: they still change state and show in the console, but notify nobody and recover no instance (staging)",
  }),
  key({
    key: "deletionProtection",
    type: "boolean",
    atom: atoms.boolean,
    default: false,
    description:
      "Termination protection on instances; protect and retain volumes, EIPs and the bundle bucket",
  }),
  key({
    key: "dnsZone",
    type: "string",
    atom: atoms.dnsZone,
    default: "",
    description:
      "Route 53 hosted zone for domain: health-checked multivalue A records per floating IP (and the CDN's records); empty: the stack outputs the records to create by hand",
  }),
  key({
    key: "uploadHostname",
    type: "string",
    atom: atoms.dnsName,
    defaultText: "upload.<domain>",
    description: "The SFTP upload endpoint's own name: A records on the floating IPs (never through the CDN)",
  }),
  key({
    key: "cdn",
    type: "boolean",
    atom: atoms.boolean,
    default: false,
    description:
      "Serve domain through CloudFront, with the balancers as origin (needs dnsZone or cdnCertificateArn)",
  }),
  key({
    key: "cdnCertificateArn",
    type: "string",
    atom: atoms.acmCertificateArn,
    default: "",
    description:
      "CloudFront's certificate for domain: an ACM certificate in us-east-1 (the TLS secret's, imported); empty: one is requested and validated through dnsZone",
  }),
  key({
    key: "cdnOriginHostname",
    type: "string",
    atom: atoms.dnsName,
    defaultText: "origin.<domain>",
    description: "The origin-only name CloudFront connects to: A records on the floating IPs",
  }),
  key({
    key: "smokeCheck",
    type: "boolean",
    atom: atoms.boolean,
    default: true,
    description: "After up, fetch /_health over HTTPS from every floating IP",
  }),
];

/** `pypi-infra:<key>` for a topology field fed by a config key; `aws:region` for the region. */
export function configKeyOfField(field: string): string | undefined {
  if (field === "region") return "aws:region";
  const normal = field.replace(/\[[0-9]+\]|\(role [a-z]+\)/g, "");
  const owner = CONFIG_KEYS.find((k) =>
    k.fields?.some((f) => normal === f || normal.startsWith(`${f}.`) || normal.startsWith(`${f}[`)),
  );
  return owner ? `${PROJECT}:${owner.key}` : undefined;
}

// ---------------------------------------------------------------------------------------------
// The topology.

const node = z
  .object({
    name: atoms.hostname.schema,
    role: atom("balancer, app or db", (e) => z.enum(["balancer", "app", "db"], e)).schema,
    az: atoms.az.schema,
    privateIp: atoms.ipv4.schema,
    secondaryIps: z.array(atoms.ipv4.schema),
    interface: atoms.interface.schema,
    instanceId: pattern("an instance id like i-0123456789abcdef0", /^i-[0-9a-f]{8,17}$/).schema.optional(),
    urn: z.string().optional(),
    dataVolumeId: atoms.volumeId.schema.optional(),
  })
  .strict();

const secretRef = z.object({ parameter: atoms.ssmName.schema }).strict();

const topologySchema = z
  .object({
    environment: atoms.hostname.schema,
    backend: atom('"aws" or "lab"', (e) => z.enum(["aws", "lab"], e)).schema,
    region: atoms.region.schema,
    vpcCidr: atoms.cidr.schema,
    domain: atoms.dnsName.schema,
    nodes: z.array(node),
    floatingIps: atom("1 to 8 floating IPs", (e) =>
      z
        .array(
          z
            .object({ address: atoms.ipv4.schema, allocationId: atoms.awsId.schema, home: z.string() })
            .strict(),
          e,
        )
        .min(1, e)
        .max(8, e),
    ).schema,
    overlay: z
      .object({
        dbWriter: atoms.ipv4.schema,
        storage: atoms.ipv4.schema,
        routeTableIds: z.array(atoms.awsId.schema),
        routeBrokers: z
          .object({ writer: atoms.lambdaName.schema, storage: atoms.lambdaName.schema })
          .strict()
          .optional(),
      })
      .strict(),
    postgres: z
      .object({
        version: atoms.postgresVersion.schema,
        synchronous: atoms.boolean.schema,
        port: atoms.port.schema,
        database: atoms.sqlIdentifier.schema,
        appUser: atoms.sqlIdentifier.schema,
        replicationUser: atoms.sqlIdentifier.schema,
        slotName: atoms.sqlIdentifier.schema,
        walKeepMb: whole(16, 1_048_576, " of MB").schema,
        maxSlotWalKeepMb: whole(16, 1_048_576, " of MB").schema,
        binDir: atoms.path.schema,
      })
      .strict(),
    heartbeat: z
      .object({
        udpPort: atoms.port.schema,
        keepaliveMs: atoms.heartbeat.keepaliveMs.schema,
        warntimeMs: atoms.heartbeat.warntimeMs.schema,
        deadtimeMs: atoms.heartbeat.deadtimeMs.schema,
        initdeadMs: atoms.heartbeat.initdeadMs.schema,
        autoFailback: atoms.boolean.schema,
      })
      .strict(),
    upload: z
      .object({
        port: atoms.port.schema,
        backendPort: atoms.port.schema,
        // Shape only here; checkUploadUsers judges names, uids and keys.
        users: z.array(z.object({ name: z.string(), uid: z.number(), publicKey: z.string() }).strict()),
        maxFileBytes: atoms.maxFileBytes.schema,
        rejectedRetentionDays: atoms.rejectedRetentionDays.schema,
      })
      .strict(),
    app: z
      .object({
        runtime: atoms.appRuntime.schema,
        httpPort: atoms.port.schema,
        maxProcesses: atoms.maxProcesses.schema,
        requestTimeoutSeconds: atoms.requestTimeoutSeconds.schema,
      })
      .strict(),
    storage: z
      .object({
        device: atoms.path.schema,
        drbdPort: atoms.port.schema,
        drbdMinor: whole(0, 255).schema,
        volumeMount: atoms.path.schema,
        packageRoot: atoms.path.schema,
      })
      .strict(),
    tls: z.object({ certificatePath: atoms.path.schema, keyPath: atoms.path.schema }).strict(),
    secrets: z
      .object({
        balancerAuthkey: secretRef,
        storageAuthkey: secretRef,
        postgresReplicationPassword: secretRef,
        postgresAppPassword: secretRef,
        tlsKey: secretRef,
        tlsCertificate: secretRef,
        uploadHostKey: secretRef,
        drbdSecret: secretRef,
      })
      .strict(),
    bundleLocation: z.string(),
    backup: z
      .object({
        repository: atoms.backupLocation.schema,
        fileCopies: atoms.backupLocation.schema,
        stanza: atoms.sqlIdentifier.schema,
        retentionFull: atoms.retentionCount.schema,
        retentionDiff: atoms.retentionCount.schema,
        fullSchedule: atoms.calendar.schema,
        diffSchedule: atoms.calendar.schema,
        restoreTestSchedule: atoms.calendar.schema,
        archiveTimeoutSeconds: atoms.archiveTimeoutSeconds.schema,
        fileCopyIntervalSeconds: atoms.fileCopyIntervalSeconds.schema,
      })
      .strict(),
    health: z
      .object({
        namespace: atoms.metricNamespace.schema,
        intervalSeconds: atoms.healthIntervalSeconds.schema,
        periodSeconds: atoms.alarmPeriodSeconds.schema,
        diskUsePercent: atoms.diskUsePercent.schema,
        certDaysLeft: atoms.certDaysLeft.schema,
        replayLagSeconds: atoms.replayLagSeconds.schema,
        replayLagMb: atoms.replayLagMb.schema,
        registerQueueSeconds: atoms.registerQueueSeconds.schema,
        backupAgeHours: atoms.backupAgeHours.schema,
      })
      .strict(),
    cdnInvalidations: atoms.cdnInvalidations.schema.optional(),
  })
  .strict();

// The schema describes exactly the Topology type.
const _exact: z.ZodType<Topology> = topologySchema;
void _exact;

/** One finding of a rule: the field it is about, the value, and what is allowed. */
export interface Finding {
  readonly field: string;
  readonly value: unknown;
  readonly allowed: string;
}

/** Names a topology field the way the user sets it. */
export type FieldNamer = (field: string) => string;

/** A cross-field rule: what it checks, and the findings when it does not hold. */
export interface TopologyRule {
  readonly id: string;
  readonly holds: string;
  readonly check: (t: Topology, name: FieldNamer) => readonly Finding[];
}

const ofRole = (t: Topology, role: NodeRole) => t.nodes.filter((n) => n.role === role);

const ROLE_COUNTS: Readonly<Record<NodeRole, { min: number; max: number; text: string }>> = {
  balancer: { min: 2, max: 2, text: "exactly 2 balancers (one Heartbeat pair)" },
  app: { min: 2, max: 16, text: "2 to 16 app servers (the first two are the storage pair)" },
  db: { min: 2, max: 2, text: "exactly 2 database nodes (primary and standby)" },
};

/** The cross-field rules, each written once, over the topology every source produces. */
export const TOPOLOGY_RULES: readonly TopologyRule[] = [
  {
    id: "heartbeat-deadtime",
    holds: "heartbeat deadtime > 2 x keepalive",
    check: ({ heartbeat: hb }, name) =>
      hb.deadtimeMs > 2 * hb.keepaliveMs
        ? []
        : [
            {
              field: "heartbeat.deadtimeMs",
              value: hb.deadtimeMs,
              allowed: `more than 2 x ${name("heartbeat.keepaliveMs")} (${2 * hb.keepaliveMs}): one lost packet must not declare the peer dead`,
            },
          ],
  },
  {
    id: "heartbeat-warntime",
    holds: "keepalive < warntime < deadtime",
    check: ({ heartbeat: hb }, name) =>
      hb.warntimeMs > hb.keepaliveMs && hb.warntimeMs < hb.deadtimeMs
        ? []
        : [
            {
              field: "heartbeat.warntimeMs",
              value: hb.warntimeMs,
              allowed: `between ${name("heartbeat.keepaliveMs")} (${hb.keepaliveMs}) and ${name("heartbeat.deadtimeMs")} (${hb.deadtimeMs})`,
            },
          ],
  },
  {
    id: "heartbeat-initdead",
    holds: "initdead >= 2 x deadtime",
    check: ({ heartbeat: hb }, name) =>
      hb.initdeadMs >= 2 * hb.deadtimeMs
        ? []
        : [
            {
              field: "heartbeat.initdeadMs",
              value: hb.initdeadMs,
              allowed: `at least 2 x ${name("heartbeat.deadtimeMs")} (${2 * hb.deadtimeMs}): the network needs that long to settle after a boot`,
            },
          ],
  },
  {
    id: "postgres-package-source",
    holds: "on AWS the Postgres major is 15",
    check: (t) =>
      t.backend === "aws" && t.postgres.version !== 15
        ? [
            {
              field: "postgres.version",
              value: t.postgres.version,
              allowed:
                "15: Debian 12 ships only Postgres 15 and the nodes have no other package source (the lab runs 11 from its own binaries to prove the recovery.conf dialect)",
            },
          ]
        : [],
  },
  {
    id: "postgres-slot-wal",
    holds: "maxSlotWalKeepMb >= walKeepMb",
    check: ({ postgres: pg }, name) =>
      pg.maxSlotWalKeepMb >= pg.walKeepMb
        ? []
        : [
            {
              field: "postgres.maxSlotWalKeepMb",
              value: pg.maxSlotWalKeepMb,
              allowed: `at least ${name("postgres.walKeepMb")} (${pg.walKeepMb})`,
            },
          ],
  },
  {
    id: "role-counts",
    holds: "2 balancers, 2 to 16 app servers, 2 database nodes",
    check: (t) =>
      (Object.keys(ROLE_COUNTS) as NodeRole[]).flatMap((role) => {
        const { min, max, text } = ROLE_COUNTS[role];
        const count = ofRole(t, role).length;
        return count >= min && count <= max
          ? []
          : [{ field: `nodes(role ${role})`, value: count, allowed: text }];
      }),
  },
  {
    id: "unique-node-names",
    holds: "node names are unique",
    check: (t) =>
      t.nodes.flatMap((n, i) =>
        t.nodes.findIndex((m) => m.name === n.name) === i
          ? []
          : [{ field: `nodes[${i}].name`, value: n.name, allowed: "a name no other node has" }],
      ),
  },
  {
    id: "pairs-split-over-azs",
    holds: "each pair (balancers, databases, the storage pair) sits in two different AZs",
    check: (t) =>
      (["balancer", "db", "app"] as const).flatMap((role) => {
        // The storage pair is the first two app servers; the rest may share zones.
        const azs = ofRole(t, role)
          .slice(0, 2)
          .map((n) => n.az);
        return new Set(azs).size === azs.length
          ? []
          : [{ field: `nodes(role ${role}).az`, value: azs, allowed: "two different availability zones" }];
      }),
  },
  {
    id: "azs-in-region",
    holds: "on AWS every AZ belongs to the region",
    check: (t, name) =>
      t.backend !== "aws"
        ? []
        : t.nodes.flatMap((n, i) =>
            n.az.startsWith(t.region)
              ? []
              : [
                  {
                    field: `nodes[${i}].az`,
                    value: n.az,
                    allowed: `a zone of ${name("region")} ${t.region}`,
                  },
                ],
          ),
  },
  {
    id: "addresses-in-vpc",
    holds: "private addresses are unique and inside the VPC CIDR",
    check: (t, name) => {
      const vpc = parseCidr(t.vpcCidr);
      const seen = new Set<string>();
      return t.nodes.flatMap((n, i) =>
        [
          [`nodes[${i}].privateIp`, n.privateIp] as const,
          ...n.secondaryIps.map((s, j) => [`nodes[${i}].secondaryIps[${j}]`, s] as const),
        ].flatMap(([field, ip]) => {
          const found: Finding[] = [];
          const parsed = parseIpv4(ip);
          if (vpc && parsed !== undefined && !cidrContains(vpc, parsed))
            found.push({ field, value: ip, allowed: `an address inside ${name("vpcCidr")} ${t.vpcCidr}` });
          if (seen.has(ip)) found.push({ field, value: ip, allowed: "an address no other node uses" });
          seen.add(ip);
          return found;
        }),
      );
    },
  },
  {
    id: "one-spare-per-floating-ip",
    holds: "each balancer has one spare address per floating IP; other nodes none",
    check: (t) =>
      t.nodes.flatMap((n, i) => {
        const want = n.role === "balancer" ? t.floatingIps.length : 0;
        return n.secondaryIps.length === want
          ? []
          : [
              {
                field: `nodes[${i}].secondaryIps`,
                value: n.secondaryIps,
                allowed: `${want} addresses (one per floating IP on balancers, none elsewhere)`,
              },
            ];
      }),
  },
  {
    id: "health-interval",
    holds: "health intervalSeconds <= half of periodSeconds",
    check: ({ health: h }, name) =>
      2 * h.intervalSeconds <= h.periodSeconds
        ? []
        : [
            {
              field: "health.intervalSeconds",
              value: h.intervalSeconds,
              allowed: `at most half of ${name("health.periodSeconds")} (${h.periodSeconds / 2}): every alarm period must see two reports, or one late report fires the reporting alarm`,
            },
          ],
  },
  {
    id: "floating-ips",
    holds: "floating IPs are unique and each has a balancer as its home",
    check: (t) => {
      const balancers = ofRole(t, "balancer").map((n) => n.name);
      return t.floatingIps.flatMap((f, i) => [
        ...(t.floatingIps.findIndex((g) => g.address === f.address) === i
          ? []
          : [
              {
                field: `floatingIps[${i}].address`,
                value: f.address,
                allowed: "an address no other floating IP has",
              },
            ]),
        ...(balancers.includes(f.home)
          ? []
          : [
              {
                field: `floatingIps[${i}].home`,
                value: f.home,
                allowed: `a balancer name (${balancers.join(", ")})`,
              },
            ]),
      ]);
    },
  },
  {
    id: "overlay-outside-vpc",
    holds: "overlay addresses are distinct and outside the VPC CIDR",
    check: (t, name) => {
      const vpc = parseCidr(t.vpcCidr);
      const found: Finding[] = (["dbWriter", "storage"] as const).flatMap((k) => {
        const parsed = parseIpv4(t.overlay[k]);
        return vpc && parsed !== undefined && cidrContains(vpc, parsed)
          ? [
              {
                field: `overlay.${k}`,
                value: t.overlay[k],
                allowed: `an address OUTSIDE ${name("vpcCidr")} ${t.vpcCidr}: overlay addresses are routed, not assigned`,
              },
            ]
          : [];
      });
      if (t.overlay.dbWriter === t.overlay.storage)
        found.push({
          field: "overlay.storage",
          value: t.overlay.storage,
          allowed: `an address other than ${name("overlay.dbWriter")}`,
        });
      return found;
    },
  },
  {
    id: "route-brokers",
    holds: "an AWS topology names two route brokers: nodes move overlay routes only through them",
    check: (t) => {
      const b = t.overlay.routeBrokers;
      if (t.backend !== "aws") return [];
      if (b === undefined)
        return [
          {
            field: "overlay.routeBrokers",
            value: b,
            allowed: "the writer and storage brokers' function names (the nodes may not replace routes)",
          },
        ];
      return b.writer === b.storage
        ? [
            {
              field: "overlay.routeBrokers.storage",
              value: b.storage,
              allowed: "a function other than the writer's",
            },
          ]
        : [];
    },
  },
  {
    id: "bundle-location",
    holds: "bundles come from s3://bucket/prefix on AWS, a directory in the lab",
    check: (t) => {
      const ok =
        t.backend === "aws"
          ? /^s3:\/\/[a-z0-9.-]{3,63}(\/[A-Za-z0-9._-]+)*$/.test(t.bundleLocation)
          : isSafeAbsolutePath(t.bundleLocation);
      return ok
        ? []
        : [
            {
              field: "bundleLocation",
              value: t.bundleLocation,
              allowed: t.backend === "aws" ? "s3://bucket/prefix" : "an absolute directory",
            },
          ];
    },
  },
  {
    id: "cdn-invalidations",
    holds: "the CDN purge goes to a CloudFront distribution on AWS, a directory in the lab",
    check: (t) => {
      if (t.cdnInvalidations === undefined) return [];
      const cloudFront = t.cdnInvalidations.startsWith("cloudfront:");
      return cloudFront === (t.backend === "aws")
        ? []
        : [
            {
              field: "cdnInvalidations",
              value: t.cdnInvalidations,
              allowed: t.backend === "aws" ? "cloudfront:<distribution id>" : "an absolute directory",
            },
          ];
    },
  },
];

const valueAt = (input: unknown, path: readonly PropertyKey[]): unknown =>
  path.reduce<unknown>(
    (v, k) => (typeof v === "object" && v !== null ? (v as Record<PropertyKey, unknown>)[k] : undefined),
    input,
  );

const fieldOf = (path: readonly PropertyKey[]): string =>
  path.reduce<string>(
    (s, k) => (typeof k === "number" ? `${s}[${k}]` : s === "" ? String(k) : `${s}.${String(k)}`),
    "",
  );

/** Zod issues as our messages: the field (as the user names it), the value, what is allowed. */
export function issueMessages(error: z.ZodError, input: unknown, name: FieldNamer): string[] {
  return error.issues.map((issue) => {
    const field = fieldOf(issue.path);
    if (issue.code === "unrecognized_keys") {
      // Values are not echoed: an unknown key might be a misplaced secret.
      return `${issue.keys.map((k) => name(field ? `${field}.${k}` : k)).join(", ")}: not a known field`;
    }
    return invalid(name(field), valueAt(input, issue.path), issue.message);
  });
}

export interface TopologyParse {
  /** How fields are named in messages: as topology fields, or as the config keys that feed them. */
  readonly origin: "file" | "stack";
}

/** The one way into a Topology: shape and bounds by the schema, then every rule of the table. */
export function parseTopology(input: unknown, opts: TopologyParse = { origin: "file" }): Topology {
  const name: FieldNamer =
    opts.origin === "stack"
      ? (field) => configKeyOfField(field) ?? `topology field ${field} (set by the program)`
      : (field) => field;
  const fail = (problems: string[]): never => {
    throw opts.origin === "stack" ? new ConfigError(problems) : new TopologyError(problems);
  };
  const users = (input as { upload?: { users?: unknown } } | undefined)?.upload?.users;
  const userProblems = checkUploadUsers(users, name("upload.users")).problems;
  const parsed = topologySchema.safeParse(input);
  if (!parsed.success) fail([...issueMessages(parsed.error, input, name), ...userProblems]);
  const t = input as Topology;
  const problems = TOPOLOGY_RULES.flatMap((rule) =>
    rule.check(t, name).map((f) => invalid(name(f.field), f.value, f.allowed)),
  );
  problems.push(...userProblems);
  if (problems.length > 0) fail(problems);
  return t;
}
