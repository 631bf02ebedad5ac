import * as pulumi from "@pulumi/pulumi";
import type { EdgeConfig } from "./edge.js";
import { buildTopology, placeholderIds, planNodes } from "./plan.js";
import {
  atoms,
  CONFIG_KEYS,
  ConfigError,
  type ConfigKeyType,
  type DlmIntervalHours,
  invalid,
  PROJECT,
  parseTopology,
  SECRET_KEYS,
} from "./schema.js";
import { checkTlsMaterial } from "./tls-material.js";
import type { AppRuntime, Topology } from "./topology.js";
import { checkUploadUsers, type UploadUser } from "./upload-users.js";

/** The typed stack configuration; src/schema.ts holds every key's bounds and default. */
export interface StackConfig {
  readonly environment: string;
  readonly region: string;
  readonly availabilityZones: readonly [string, string];
  readonly vpcCidr: string;
  readonly domain: string;
  readonly floatingIps: number;
  readonly appServers: number;
  readonly natGateways: 1 | 2;
  readonly instanceTypes: { readonly balancer: string; readonly app: string; readonly db: string };
  readonly rootVolumeGb: number;
  readonly dbVolumeGb: number;
  readonly storageVolumeGb: number;
  readonly postgres: { readonly version: number; readonly synchronous: boolean };
  readonly heartbeat: {
    readonly keepaliveMs: number;
    readonly warntimeMs: number;
    readonly deadtimeMs: number;
    readonly initdeadMs: number;
    readonly autoFailback: boolean;
  };
  readonly app: {
    readonly runtime: AppRuntime;
    readonly maxProcesses: number;
    readonly requestTimeoutSeconds: number;
  };
  readonly upload: {
    readonly users: readonly UploadUser[];
    readonly maxFileBytes: number;
    readonly rejectedRetentionDays: number;
  };
  readonly overlay: { readonly dbWriter: string; readonly storage: string };
  /** The backup settings of the topology the stack derives the locations for, plus the lock. */
  readonly backup: Omit<Topology["backup"], "repository" | "fileCopies" | "stanza"> & {
    /** Object Lock retention on the backup and file copy buckets; 0: no lock. */
    readonly objectLockDays: number;
  };
  /** The health thresholds of the topology; its namespace is derived from the stack name. */
  readonly health: Omit<Topology["health"], "namespace">;
  /** Where alarms go: SNS subscriptions, and whether alarms act at all. */
  readonly alarms: {
    readonly emails: readonly string[];
    readonly httpsEndpoints: readonly string[];
    /** false: alarms notify nobody and recover no instance (a muted staging). */
    readonly actionsEnabled: boolean;
  };
  /** DLM snapshots of the storage pair's DRBD volumes; retainCount 0: none. */
  readonly storageSnapshots: { readonly retainCount: number; readonly intervalHours: DlmIntervalHours };
  /** `generated`: a self-signed certificate from @pulumi/tls; `config`: `--secret` config keys. */
  readonly tlsSource: "generated" | "config";
  /** Instances refuse API termination; data volumes, EIPs and the bundle bucket are protected and retained. */
  readonly deletionProtection: boolean;
  /** Run the post-`up` HTTPS check against every floating IP. */
  readonly smokeCheck: boolean;
  /** DNS and CDN in front of the balancers (edge.ts). */
  readonly edge: EdgeConfig;
}

/** Turns an engine value (a string; objects as JSON) into the key's type; leaves anything else as is. */
function coerce(type: ConfigKeyType, value: unknown): unknown {
  if (typeof value !== "string") return value;
  if (type === "integer" && /^-?[0-9]+(\.[0-9]+)?$/.test(value)) return Number(value);
  if (type === "boolean" && (value === "true" || value === "false")) return value === "true";
  if (type === "array") {
    try {
      return JSON.parse(value);
    } catch {
      return value;
    }
  }
  return value;
}

/**
 * Turns the raw stack config (`pulumi.runtime.allConfig()`: full keys, string values with
 * objects as JSON; or a YAML `config:` map with typed values) into a StackConfig, then runs the
 * planned topology through the schema's rules. Pure; every problem is reported at once, naming
 * the `pypi-infra:` key, the value and what is allowed.
 */
export function parseConfig(raw: Readonly<Record<string, unknown>>, stack: string): StackConfig {
  const problems: string[] = [];
  const known = new Set(CONFIG_KEYS.map((k) => k.key));
  for (const full of Object.keys(raw)) {
    const [ns, name] = full.split(":", 2);
    // The value is not echoed: an unknown key might be a misspelt secret.
    if (ns === PROJECT && (name === undefined || !known.has(name)))
      problems.push(`${full}: is not a known key; known keys: ${[...known].join(", ")}`);
  }
  const region = raw["aws:region"];
  const regionCheck = atoms.region.schema.safeParse(region);
  if (!regionCheck.success) problems.push(invalid("aws:region", region, atoms.region.allowed));
  const regionText = regionCheck.success ? regionCheck.data : "us-east-1";
  if (!atoms.hostname.schema.safeParse(stack).success)
    problems.push(invalid("stack", stack, "a lower-case stack name like staging or prod"));

  const defaults: Record<string, unknown> = {
    availabilityZones: [`${regionText}a`, `${regionText}b`],
    alarmEmails: [],
    alarmHttpsEndpoints: [],
    ...(typeof raw[`${PROJECT}:domain`] === "string"
      ? {
          uploadHostname: `upload.${raw[`${PROJECT}:domain`]}`,
          cdnOriginHostname: `origin.${raw[`${PROJECT}:domain`]}`,
        }
      : {}),
  };
  const values: Record<string, unknown> = {};
  for (const k of CONFIG_KEYS) {
    if (k.secret) continue;
    const given = raw[`${PROJECT}:${k.key}`];
    const value = coerce(k.type, given ?? k.default ?? defaults[k.key]);
    const result = k.atom.schema.safeParse(value);
    if (result.success) values[k.key] = result.data;
    else
      problems.push(
        invalid(
          `${PROJECT}:${k.key}`,
          value,
          `${k.atom.allowed}${given === undefined && k.default === undefined ? " (required)" : ""}`,
        ),
      );
  }
  if (values.uploadUsers !== undefined) {
    const users = checkUploadUsers(values.uploadUsers, `${PROJECT}:uploadUsers`);
    problems.push(...users.problems);
    values.uploadUsers = users.users;
  }
  if (problems.length === 0) problems.push(...edgeProblems(values));
  if (problems.length > 0) throw new ConfigError(problems);

  // Every value below passed its key's schema.
  const str = (k: string) => values[k] as string;
  const num = (k: string) => values[k] as number;
  const bool = (k: string) => values[k] as boolean;
  const config: StackConfig = {
    environment: stack,
    region: regionText,
    availabilityZones: values.availabilityZones as [string, string],
    vpcCidr: str("vpcCidr"),
    domain: str("domain"),
    floatingIps: num("floatingIps"),
    appServers: num("appServers"),
    natGateways: num("natGateways") === 2 ? 2 : 1,
    instanceTypes: {
      balancer: str("balancerInstanceType"),
      app: str("appInstanceType"),
      db: str("dbInstanceType"),
    },
    rootVolumeGb: num("rootVolumeGb"),
    dbVolumeGb: num("dbVolumeGb"),
    storageVolumeGb: num("storageVolumeGb"),
    postgres: { version: num("postgresVersion"), synchronous: bool("synchronousReplication") },
    heartbeat: {
      keepaliveMs: num("heartbeatKeepaliveMs"),
      warntimeMs: num("heartbeatWarntimeMs"),
      deadtimeMs: num("heartbeatDeadtimeMs"),
      initdeadMs: num("heartbeatInitdeadMs"),
      autoFailback: bool("autoFailback"),
    },
    app: {
      runtime: str("appRuntime") as AppRuntime,
      maxProcesses: num("appMaxProcesses"),
      requestTimeoutSeconds: num("appRequestTimeoutSeconds"),
    },
    upload: {
      users: values.uploadUsers as UploadUser[],
      maxFileBytes: num("uploadMaxFileBytes"),
      rejectedRetentionDays: num("uploadRejectedRetentionDays"),
    },
    overlay: { dbWriter: str("overlayDbWriter"), storage: str("overlayStorage") },
    backup: {
      retentionFull: num("backupRetentionFull"),
      retentionDiff: num("backupRetentionDiff"),
      fullSchedule: str("backupFullSchedule"),
      diffSchedule: str("backupDiffSchedule"),
      restoreTestSchedule: str("restoreTestSchedule"),
      archiveTimeoutSeconds: num("archiveTimeoutSeconds"),
      fileCopyIntervalSeconds: num("fileCopyIntervalSeconds"),
      objectLockDays: num("backupObjectLockDays"),
    },
    health: {
      intervalSeconds: num("healthIntervalSeconds"),
      periodSeconds: num("alarmPeriodSeconds"),
      diskUsePercent: num("alarmDiskUsePercent"),
      certDaysLeft: num("alarmCertDaysLeft"),
      replayLagSeconds: num("alarmReplayLagSeconds"),
      replayLagMb: num("alarmReplayLagMb"),
      registerQueueSeconds: num("alarmRegisterQueueSeconds"),
      backupAgeHours: num("alarmBackupAgeHours"),
    },
    alarms: {
      emails: values.alarmEmails as string[],
      httpsEndpoints: values.alarmHttpsEndpoints as string[],
      actionsEnabled: bool("alarmActions"),
    },
    storageSnapshots: {
      retainCount: num("storageSnapshotRetainCount"),
      intervalHours: num("storageSnapshotIntervalHours") as DlmIntervalHours,
    },
    tlsSource: str("tlsSource") as "generated" | "config",
    deletionProtection: bool("deletionProtection"),
    smokeCheck: bool("smokeCheck"),
    edge: edgeConfigOf(values),
  };
  // Cross-field rules run once, over the planned topology, naming the keys that feed it.
  parseTopology(buildTopology(config, planNodes(config), placeholderIds(config)), { origin: "stack" });
  return config;
}

/** The edge settings from checked values. */
function edgeConfigOf(values: Readonly<Record<string, unknown>>): EdgeConfig {
  const zone = values.dnsZone as string;
  const certificateArn = values.cdnCertificateArn as string;
  return {
    ...(zone ? { dnsZone: /^Z[A-Z0-9]+$/.test(zone) ? { id: zone } : { name: zone } } : {}),
    uploadHostname: values.uploadHostname as string,
    cdn: {
      enabled: values.cdn as boolean,
      ...(certificateArn ? { certificateArn } : {}),
      originHostname: values.cdnOriginHostname as string,
    },
  };
}

/** What the edge keys allow together: names apart and in the zone, a way to a CDN certificate. */
function edgeProblems(values: Readonly<Record<string, unknown>>): string[] {
  const edge = edgeConfigOf(values);
  const domain = values.domain as string;
  const k = (name: string) => `${PROJECT}:${name}`;
  const problems: string[] = [];
  if (edge.cdn.enabled && !edge.dnsZone && !edge.cdn.certificateArn)
    problems.push(
      `${k("cdn")}: true needs ${k("dnsZone")} (a new ACM certificate is validated through it) or ${k("cdnCertificateArn")} (an ACM certificate in us-east-1 for ${domain}, such as the TLS secret's, imported)`,
    );
  if (!edge.cdn.enabled && edge.cdn.certificateArn)
    problems.push(`${k("cdnCertificateArn")}: is set but ${k("cdn")} is false; set cdn: true or remove it`);
  const named: [string, string][] = [
    ["domain", domain],
    ["uploadHostname", edge.uploadHostname],
    ...(edge.cdn.enabled ? ([["cdnOriginHostname", edge.cdn.originHostname]] as [string, string][]) : []),
  ];
  for (const [i, [key, name]] of named.entries()) {
    const first = named.findIndex(([, n]) => n === name);
    if (first !== i)
      problems.push(
        invalid(
          k(key),
          name,
          `a name of its own: ${k(named[first]?.[0] ?? "")} is ${JSON.stringify(name)} already`,
        ),
      );
  }
  if (edge.dnsZone && "name" in edge.dnsZone) {
    const zone = edge.dnsZone.name;
    for (const [key, name] of named)
      if (name !== zone && !name.endsWith(`.${zone}`))
        problems.push(
          invalid(k(key), name, `a name in ${k("dnsZone")} ${JSON.stringify(zone)} (${zone} or *.${zone})`),
        );
  }
  return problems;
}

/** TLS material of the balancers: generated by the stack, or supplied as secret config. */
export type TlsInput =
  | { readonly source: "generated" }
  | {
      readonly source: "config";
      readonly certificate: pulumi.Output<string>;
      readonly key: pulumi.Output<string>;
    };

/**
 * Which secret keys a `tlsSource: config` stack still lacks, as an error that says how to set them.
 * Pure: the caller tells which keys are present.
 */
export function missingTlsSecrets(
  stack: string,
  present: { certificate: boolean; key: boolean },
): string | undefined {
  const missing = [
    ...(present.certificate
      ? []
      : [`pulumi config set --stack ${stack} --secret ${PROJECT}:tlsCertificate < fullchain.pem`]),
    ...(present.key ? [] : [`pulumi config set --stack ${stack} --secret ${PROJECT}:tlsKey < privkey.pem`]),
  ];
  if (missing.length === 0) return undefined;
  return [
    `stack ${stack} has ${PROJECT}:tlsSource "config" but its TLS certificate/key secrets are not set. Run:`,
    ...missing.map((m) => `  ${m}`),
  ].join("\n");
}

/** Whether the engine handed `key` over as secret config (`pulumi config set --secret`). */
function isSecretConfig(key: string): boolean {
  // Not in the SDK's typings, but it is how `Config.get` itself tells secret keys apart.
  const runtime = pulumi.runtime as unknown as { isConfigSecret?: (k: string) => boolean };
  if (typeof runtime.isConfigSecret !== "function")
    throw new Error("this @pulumi/pulumi cannot tell secret config apart; cannot check the TLS secrets");
  return runtime.isConfigSecret(key);
}

/**
 * Reads and validates this stack's config: with src/program.ts, the only code that touches
 * Pulumi's config. A supplied certificate and key are checked here, before any resource exists.
 */
export function readStackConfig(now = new Date()): { config: StackConfig; tls: TlsInput } {
  const stack = pulumi.getStack();
  const config = parseConfig(pulumi.runtime.allConfig(), stack);
  // `getConfig` reads without the secret warning `Config.get` prints; the values are never logged.
  const raw = {
    certificate: pulumi.runtime.getConfig(`${PROJECT}:tlsCertificate`),
    key: pulumi.runtime.getConfig(`${PROJECT}:tlsKey`),
  };
  if (config.tlsSource === "generated") {
    const stray = SECRET_KEYS.filter((k) => pulumi.runtime.getConfig(`${PROJECT}:${k}`) !== undefined);
    if (stray.length > 0)
      throw new ConfigError(
        stray.map(
          (k) =>
            `${PROJECT}:${k}: is set but ${PROJECT}:tlsSource is "generated"; expected ${PROJECT}:tlsSource config to use it, or remove the key`,
        ),
      );
    return { config, tls: { source: "generated" } };
  }
  const problem = missingTlsSecrets(stack, {
    certificate: raw.certificate !== undefined,
    key: raw.key !== undefined,
  });
  if (problem) throw new ConfigError([problem]);
  const problems = [
    ...SECRET_KEYS.filter((k) => !isSecretConfig(`${PROJECT}:${k}`)).map(
      (k) =>
        `${PROJECT}:${k}: is plain text in Pulumi.${stack}.yaml; expected secret config (pulumi config set --stack ${stack} --secret ${PROJECT}:${k} < file), and treat the exposed value as compromised`,
    ),
    ...checkTlsMaterial({
      certificatePem: raw.certificate ?? "",
      keyPem: raw.key ?? "",
      domain: config.domain,
      now,
    }),
  ];
  if (problems.length > 0) throw new ConfigError(problems);
  const bag = new pulumi.Config(PROJECT);
  return {
    config,
    tls: {
      source: "config",
      certificate: bag.requireSecret("tlsCertificate"),
      key: bag.requireSecret("tlsKey"),
    },
  };
}
