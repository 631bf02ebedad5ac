import * as pulumi from "@pulumi/pulumi";
import { parseCidr } from "./net.js";
import type { AppRuntime } from "./topology.js";
import { SUPPORTED_PG_VERSIONS } from "./validate-topology.js";

export const PROJECT = "pypi-infra";

/** Secret keys: read with `getSecret`, never through `parseConfig`, so their values never reach plain data. */
export const SECRET_KEYS = ["tlsCertificate", "tlsKey"] as const;

export interface UploadUser {
  readonly name: string;
  readonly uid: number;
  readonly publicKey: string;
}

/** The typed stack configuration; every optional key has its default here, not in Pulumi.yaml. */
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
  readonly upload: { readonly users: readonly UploadUser[]; readonly maxFileBytes: number };
  readonly overlay: { readonly dbWriter: string; readonly storage: string };
  /** `generated`: a self-signed certificate from @pulumi/tls; `config`: `--secret` config keys. */
  readonly tlsSource: "generated" | "config";
  /** Instances refuse API termination; data volumes, EIPs and the bundle bucket are protected and retained. */
  readonly deletionProtection: boolean;
  /** Run the post-`up` HTTPS check against every floating IP. */
  readonly smokeCheck: boolean;
}

/** Defaults of every optional scalar key; Pulumi.yaml repeats them and a test keeps the two equal. */
export const DEFAULTS = {
  vpcCidr: "10.40.0.0/16",
  floatingIps: 1,
  appServers: 2,
  natGateways: 1,
  balancerInstanceType: "t3.small",
  appInstanceType: "t3.medium",
  dbInstanceType: "t3.medium",
  rootVolumeGb: 16,
  dbVolumeGb: 20,
  storageVolumeGb: 50,
  postgresVersion: 15,
  synchronousReplication: false,
  heartbeatKeepaliveMs: 500,
  heartbeatWarntimeMs: 1000,
  heartbeatDeadtimeMs: 1500,
  heartbeatInitdeadMs: 10000,
  autoFailback: true,
  appRuntime: "fcgid",
  appMaxProcesses: 8,
  appRequestTimeoutSeconds: 30,
  uploadMaxFileBytes: 104857600,
  overlayDbWriter: "100.64.10.5",
  overlayStorage: "100.64.10.6",
  tlsSource: "generated",
  deletionProtection: false,
  smokeCheck: true,
} as const;

/** Keys without a default. */
const REQUIRED = ["domain", "uploadUsers"] as const;
/** Structured keys (objects/lists), outside the scalar schema of Pulumi.yaml. */
const STRUCTURED = ["availabilityZones", "uploadUsers"] as const;

export const KNOWN_KEYS: readonly string[] = [...Object.keys(DEFAULTS), ...REQUIRED, "availabilityZones"];

export class ConfigError extends Error {
  constructor(readonly problems: readonly string[]) {
    super(`invalid stack configuration:\n  - ${problems.join("\n  - ")}`);
    this.name = "ConfigError";
  }
}

const show = (value: unknown): string => JSON.stringify(value) ?? String(value);

/**
 * Turns the raw stack config (`pulumi.runtime.allConfig()`: full keys, string values with
 * objects as JSON; or a YAML `config:` map with typed values) into a StackConfig. Pure; every
 * problem is reported at once, naming the key, the value and what is allowed.
 */
export function parseConfig(raw: Readonly<Record<string, unknown>>, stack: string): StackConfig {
  const problems: string[] = [];
  const bad = (key: string, value: unknown, allowed: string): void => {
    problems.push(
      `${key.includes(":") ? key : `${PROJECT}:${key}`}: ${show(value)} is not valid; ${allowed}`,
    );
  };
  const secret = new Set<string>(SECRET_KEYS);
  for (const full of Object.keys(raw)) {
    const [ns, key] = full.split(":", 2);
    if (ns !== PROJECT || key === undefined || secret.has(key)) continue;
    if (!KNOWN_KEYS.includes(key)) {
      // The value is not echoed: an unknown key might be a misspelt secret.
      problems.push(`${full}: is not a known key; known keys: ${KNOWN_KEYS.join(", ")}`);
    }
  }
  const value = (key: string): unknown => raw[`${PROJECT}:${key}`];

  const str = (key: keyof typeof DEFAULTS, test: (s: string) => boolean, allowed: string): string => {
    const v = value(key) ?? DEFAULTS[key];
    if (typeof v !== "string" || !test(v)) {
      bad(key, v, allowed);
      return String(DEFAULTS[key]);
    }
    return v;
  };
  const num = (key: keyof typeof DEFAULTS, min: number, max: number, integer = true): number => {
    const v = value(key) ?? DEFAULTS[key];
    const n = typeof v === "string" && /^-?[0-9]+(\.[0-9]+)?$/.test(v) ? Number(v) : v;
    if (
      typeof n !== "number" ||
      !Number.isFinite(n) ||
      (integer && !Number.isInteger(n)) ||
      n < min ||
      n > max
    ) {
      bad(key, v, `expected ${integer ? "a whole number" : "a number"} from ${min} to ${max}`);
      return Number(DEFAULTS[key]);
    }
    return n;
  };
  const bool = (key: keyof typeof DEFAULTS): boolean => {
    const v = value(key) ?? DEFAULTS[key];
    if (v === true || v === "true") return true;
    if (v === false || v === "false") return false;
    bad(key, v, "expected true or false");
    return Boolean(DEFAULTS[key]);
  };
  const structured = (key: (typeof STRUCTURED)[number]): unknown => {
    const v = value(key);
    if (typeof v !== "string") return v;
    try {
      return JSON.parse(v);
    } catch {
      return v;
    }
  };

  const region = raw["aws:region"];
  if (typeof region !== "string" || !/^[a-z]{2}(-[a-z]+)+-[0-9]$/.test(region)) {
    bad(
      "aws:region",
      region,
      "expected an AWS region such as us-east-1 (pulumi config set aws:region us-east-1)",
    );
  }
  const regionText = typeof region === "string" ? region : "us-east-1";
  if (!/^[a-z][a-z0-9-]{0,30}[a-z0-9]$/.test(stack))
    bad("stack", stack, "expected a lower-case stack name like staging or prod");

  const azsRaw = structured("availabilityZones") ?? [`${regionText}a`, `${regionText}b`];
  let availabilityZones: [string, string] = [`${regionText}a`, `${regionText}b`];
  if (
    Array.isArray(azsRaw) &&
    azsRaw.length === 2 &&
    azsRaw.every(
      (az) => typeof az === "string" && az.startsWith(regionText) && /^[a-z0-9-]+[a-z]$/.test(az),
    ) &&
    azsRaw[0] !== azsRaw[1]
  ) {
    availabilityZones = [azsRaw[0] as string, azsRaw[1] as string];
  } else {
    bad(
      "availabilityZones",
      azsRaw,
      `expected two different zones of ${regionText}, e.g. ["${regionText}a", "${regionText}b"]`,
    );
  }

  const vpcCidr = str(
    "vpcCidr",
    (s) => {
      const c = parseCidr(s);
      return c !== undefined && c.prefix >= 16 && c.prefix <= 19;
    },
    "expected an IPv4 CIDR from /16 to /19 with host bits zero, e.g. 10.40.0.0/16",
  );

  const domainRaw = value("domain");
  let domain = "pypi.invalid";
  if (typeof domainRaw === "string" && /^([a-z0-9]([a-z0-9-]*[a-z0-9])?\.)+[a-z]{2,}$/.test(domainRaw)) {
    domain = domainRaw;
  } else {
    bad("domain", domainRaw, "expected the public DNS name, e.g. pypi.example.org (required)");
  }

  const runtimes: readonly AppRuntime[] = ["fcgid", "wsgi", "gunicorn"];
  const runtime = str(
    "appRuntime",
    (s) => (runtimes as readonly string[]).includes(s),
    `expected one of ${runtimes.join(", ")}`,
  );
  const pgVersion = (() => {
    const v = value("postgresVersion") ?? DEFAULTS.postgresVersion;
    const n = typeof v === "string" ? Number(v) : v;
    if (typeof n !== "number" || !SUPPORTED_PG_VERSIONS.includes(n)) {
      bad("postgresVersion", v, `expected one of ${SUPPORTED_PG_VERSIONS.join(", ")}`);
      return DEFAULTS.postgresVersion;
    }
    return n;
  })();
  const tlsSource = str(
    "tlsSource",
    (s) => s === "generated" || s === "config",
    'expected "generated" or "config"',
  );
  const natGateways = num("natGateways", 1, 2);
  const instanceType = (key: "balancerInstanceType" | "appInstanceType" | "dbInstanceType"): string =>
    str(key, (s) => /^[a-z][a-z0-9-]*\.[a-z0-9]+$/.test(s), "expected an EC2 instance type such as t3.small");

  const keepaliveMs = num("heartbeatKeepaliveMs", 100, 60000);
  const warntimeMs = num("heartbeatWarntimeMs", 100, 600000);
  const deadtimeMs = num("heartbeatDeadtimeMs", 100, 600000);
  const initdeadMs = num("heartbeatInitdeadMs", 100, 3600000);
  if (deadtimeMs <= 2 * keepaliveMs)
    bad(
      "heartbeatDeadtimeMs",
      deadtimeMs,
      `expected more than 2 x heartbeatKeepaliveMs (${2 * keepaliveMs})`,
    );
  if (warntimeMs <= keepaliveMs || warntimeMs >= deadtimeMs)
    bad(
      "heartbeatWarntimeMs",
      warntimeMs,
      `expected between heartbeatKeepaliveMs (${keepaliveMs}) and heartbeatDeadtimeMs (${deadtimeMs})`,
    );
  if (initdeadMs < 2 * deadtimeMs)
    bad("heartbeatInitdeadMs", initdeadMs, `expected at least 2 x heartbeatDeadtimeMs (${2 * deadtimeMs})`);

  const usersRaw = structured("uploadUsers");
  const users: UploadUser[] = [];
  if (!Array.isArray(usersRaw) || usersRaw.length === 0) {
    bad("uploadUsers", usersRaw, "expected a list of {name, uid, publicKey} (at least one; required)");
  } else {
    usersRaw.forEach((u: unknown, i) => {
      const rec = (typeof u === "object" && u !== null ? u : {}) as Record<string, unknown>;
      const uid = typeof rec.uid === "string" ? Number(rec.uid) : rec.uid;
      if (typeof rec.name !== "string" || typeof rec.publicKey !== "string" || typeof uid !== "number") {
        bad(`uploadUsers[${i}]`, u, "expected {name: string, uid: number, publicKey: string}");
        return;
      }
      users.push({ name: rec.name, uid, publicKey: rec.publicKey });
    });
  }

  const ipv4 = (s: string): boolean => /^([0-9]{1,3}\.){3}[0-9]{1,3}$/.test(s);
  const config: StackConfig = {
    environment: stack,
    region: regionText,
    availabilityZones,
    vpcCidr,
    domain,
    floatingIps: num("floatingIps", 1, 8),
    appServers: num("appServers", 2, 16),
    natGateways: natGateways === 2 ? 2 : 1,
    instanceTypes: {
      balancer: instanceType("balancerInstanceType"),
      app: instanceType("appInstanceType"),
      db: instanceType("dbInstanceType"),
    },
    rootVolumeGb: num("rootVolumeGb", 8, 1024),
    dbVolumeGb: num("dbVolumeGb", 1, 16384),
    storageVolumeGb: num("storageVolumeGb", 1, 16384),
    postgres: { version: pgVersion, synchronous: bool("synchronousReplication") },
    heartbeat: { keepaliveMs, warntimeMs, deadtimeMs, initdeadMs, autoFailback: bool("autoFailback") },
    app: {
      runtime: runtime as AppRuntime,
      maxProcesses: num("appMaxProcesses", 1, 256),
      requestTimeoutSeconds: num("appRequestTimeoutSeconds", 1, 600),
    },
    upload: { users, maxFileBytes: num("uploadMaxFileBytes", 1, 2 ** 40) },
    overlay: {
      dbWriter: str("overlayDbWriter", ipv4, "expected an IPv4 address outside vpcCidr, e.g. 100.64.10.5"),
      storage: str("overlayStorage", ipv4, "expected an IPv4 address outside vpcCidr, e.g. 100.64.10.6"),
    },
    tlsSource: tlsSource as "generated" | "config",
    deletionProtection: bool("deletionProtection"),
    smokeCheck: bool("smokeCheck"),
  };
  if (problems.length > 0) throw new ConfigError(problems);
  return config;
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

/** Reads and validates this stack's config: the only place besides src/index.ts that touches pulumi.Config. */
export function readStackConfig(): { config: StackConfig; tls: TlsInput } {
  const stack = pulumi.getStack();
  const config = parseConfig(pulumi.runtime.allConfig(), stack);
  if (config.tlsSource === "generated") return { config, tls: { source: "generated" } };
  const bag = new pulumi.Config(PROJECT);
  // Presence only: reading the value with `get` would warn that it is a secret.
  const present = {
    certificate: pulumi.runtime.getConfig(`${PROJECT}:tlsCertificate`) !== undefined,
    key: pulumi.runtime.getConfig(`${PROJECT}:tlsKey`) !== undefined,
  };
  const problem = missingTlsSecrets(stack, present);
  if (problem) throw new ConfigError([problem]);
  return {
    config,
    tls: {
      source: "config",
      certificate: bag.requireSecret("tlsCertificate"),
      key: bag.requireSecret("tlsKey"),
    },
  };
}
