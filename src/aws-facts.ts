/**
 * What AWS itself says about the config, asked at preview before any resource is registered:
 * the instance types exist, boot the amd64 Debian AMI on Nitro, hold the floating IPs on one ENI
 * and have the memory their role needs; the AZs exist and offer the types.
 */
import * as aws from "@pulumi/aws";
import type { StackConfig } from "./config.js";
import { invalid, PROJECT } from "./schema.js";
import type { NodeRole } from "./topology.js";

export interface InstanceTypeFacts {
  readonly instanceType: string;
  readonly memoryMib: number;
  readonly maxIpv4PerInterface: number;
  readonly architectures: readonly string[];
  readonly hypervisor: string;
  readonly bareMetal: boolean;
}

export interface AwsFacts {
  /** Zones of the region in state `available`. */
  readonly zones: readonly string[];
  /** Per instance type: its facts, or what AWS answered when it does not know the type. */
  readonly instanceTypes: Readonly<Record<string, InstanceTypeFacts | { readonly unknown: string }>>;
  /** `type@zone` for every configured type offered in a configured zone. */
  readonly offerings: readonly string[];
}

const ROLE_KEYS: Readonly<Record<NodeRole, string>> = {
  balancer: "balancerInstanceType",
  app: "appInstanceType",
  db: "dbInstanceType",
};

/**
 * Memory a role needs, in MiB, and why. App: the lab measured 91.5 MB RSS per index worker; the
 * base covers Apache, the upload sshd, NFS and (storage pair) DRBD and the NFS server. Db: Postgres
 * with 128 MB shared_buffers, one backend (~10 MB) per pooled app connection, and page cache.
 */
export const MEMORY_MINIMUMS: Readonly<Record<NodeRole, { mib: (cfg: StackConfig) => number; why: string }>> =
  {
    balancer: {
      mib: () => 1024,
      why: "nginx, HAProxy, Heartbeat and the agent, with room for TLS handshakes",
    },
    app: {
      mib: (cfg) => 768 + 100 * cfg.app.maxProcesses,
      why: "768 MiB for Apache, sshd, NFS and DRBD plus 100 MiB per index worker (appMaxProcesses)",
    },
    db: {
      mib: (cfg) => 1536 + 20 * cfg.appServers * cfg.app.maxProcesses,
      why: "1.5 GiB for Postgres and its page cache plus 20 MiB per app worker's connections",
    },
  };

/** One rule over the config and AWS's answers; returns its problems. */
export interface AwsFactRule {
  readonly id: string;
  readonly holds: string;
  readonly check: (cfg: StackConfig, facts: AwsFacts) => readonly string[];
}

const roles: readonly NodeRole[] = ["balancer", "app", "db"];

/** Facts of a role's type, when AWS knows it (the `instance-type-exists` rule reports the rest). */
function factsOf(cfg: StackConfig, facts: AwsFacts, role: NodeRole): InstanceTypeFacts | undefined {
  const f = facts.instanceTypes[cfg.instanceTypes[role]];
  return f && "memoryMib" in f ? f : undefined;
}

const problem = (key: string, value: unknown, allowed: string): string =>
  invalid(key.includes(":") ? key : `${PROJECT}:${key}`, value, allowed);

export const AWS_FACT_RULES: readonly AwsFactRule[] = [
  {
    id: "instance-type-exists",
    holds: "each instance type exists in the region",
    check: (cfg, facts) =>
      roles.flatMap((role) => {
        const type = cfg.instanceTypes[role];
        const f = facts.instanceTypes[type];
        return f && "unknown" in f
          ? [
              problem(
                ROLE_KEYS[role],
                type,
                `an EC2 instance type that exists in ${cfg.region}${f.unknown ? ` (AWS: ${f.unknown})` : ""}`,
              ),
            ]
          : [];
      }),
  },
  {
    id: "amd64-nitro",
    holds: "each instance type is x86_64 on Nitro",
    check: (cfg, facts) =>
      roles.flatMap((role) => {
        const f = factsOf(cfg, facts, role);
        if (!f) return [];
        const found: string[] = [];
        if (!f.architectures.includes("x86_64"))
          found.push(
            problem(
              ROLE_KEYS[role],
              f.instanceType,
              `an x86_64 type: the nodes boot Debian 12's amd64 AMI (this one is ${f.architectures.join(", ")})`,
            ),
          );
        if (f.hypervisor !== "nitro" && !f.bareMetal)
          found.push(
            problem(
              ROLE_KEYS[role],
              f.instanceType,
              `a Nitro type: the agent finds data volumes by their NVMe names and the interface as ens5 (this one runs on ${f.hypervisor || "an unknown hypervisor"})`,
            ),
          );
        return found;
      }),
  },
  {
    id: "floating-ips-fit-one-eni",
    holds: "floatingIps + 1 <= the balancer type's IPv4 addresses per ENI",
    check: (cfg, facts) => {
      const f = factsOf(cfg, facts, "balancer");
      if (!f || cfg.floatingIps + 1 <= f.maxIpv4PerInterface) return [];
      return [
        problem(
          "floatingIps",
          cfg.floatingIps,
          `at most ${f.maxIpv4PerInterface - 1} on balancerInstanceType ${f.instanceType}: its ENI holds ${f.maxIpv4PerInterface} IPv4 addresses, the primary plus one spare per floating IP`,
        ),
      ];
    },
  },
  {
    id: "memory-per-role",
    holds: "each role's type has the memory the role needs",
    check: (cfg, facts) =>
      roles.flatMap((role) => {
        const f = factsOf(cfg, facts, role);
        const need = MEMORY_MINIMUMS[role].mib(cfg);
        return f && f.memoryMib < need
          ? [
              problem(
                ROLE_KEYS[role],
                f.instanceType,
                `a type with at least ${need} MiB (this one has ${f.memoryMib}): ${MEMORY_MINIMUMS[role].why}`,
              ),
            ]
          : [];
      }),
  },
  {
    id: "zones-exist",
    holds: "both availability zones exist and are available",
    check: (cfg, facts) => {
      const missing = cfg.availabilityZones.filter((az) => !facts.zones.includes(az));
      return missing.length === 0
        ? []
        : [
            problem(
              "availabilityZones",
              cfg.availabilityZones,
              `available zones of ${cfg.region} (${missing.join(", ")} is not; available: ${facts.zones.join(", ")})`,
            ),
          ];
    },
  },
  {
    id: "types-offered-in-zones",
    holds: "each instance type is offered in both zones",
    check: (cfg, facts) =>
      roles.flatMap((role) => {
        const type = cfg.instanceTypes[role];
        if (!factsOf(cfg, facts, role)) return [];
        const missing = cfg.availabilityZones.filter(
          (az) => facts.zones.includes(az) && !facts.offerings.includes(`${type}@${az}`),
        );
        return missing.length === 0
          ? []
          : [
              problem(
                ROLE_KEYS[role],
                type,
                `a type offered in ${cfg.availabilityZones.join(" and ")} (not offered in ${missing.join(", ")})`,
              ),
            ];
      }),
  },
];

export const checkAwsFacts = (cfg: StackConfig, facts: AwsFacts): string[] =>
  AWS_FACT_RULES.flatMap((rule) => rule.check(cfg, facts));

const firstLine = (e: unknown): string =>
  (e instanceof Error ? e.message : String(e))
    .split("\n")
    .find((l) => l.trim() !== "")
    ?.trim() ?? "";

/** Asks AWS (the provider's data sources) for the facts the rules need. */
export async function fetchAwsFacts(cfg: StackConfig): Promise<AwsFacts> {
  const types = [...new Set(Object.values(cfg.instanceTypes))];
  const [zones, described, offered] = await Promise.all([
    aws.getAvailabilityZones({ state: "available" }),
    Promise.all(
      types.map(async (type): Promise<[string, InstanceTypeFacts | { unknown: string }]> => {
        try {
          const t = await aws.ec2.getInstanceType({ instanceType: type });
          return [
            type,
            {
              instanceType: type,
              memoryMib: t.memorySize,
              maxIpv4PerInterface: t.maximumIpv4AddressesPerInterface,
              architectures: t.supportedArchitectures,
              hypervisor: t.hypervisor,
              bareMetal: t.bareMetal,
            },
          ];
        } catch (e) {
          return [type, { unknown: firstLine(e) }];
        }
      }),
    ),
    aws.ec2.getInstanceTypeOfferings({
      locationType: "availability-zone",
      filters: [
        { name: "instance-type", values: types },
        { name: "location", values: [...cfg.availabilityZones] },
      ],
    }),
  ]);
  return {
    zones: zones.names,
    instanceTypes: Object.fromEntries(described),
    offerings: offered.instanceTypes.map((t, i) => `${t}@${offered.locations[i]}`),
  };
}
