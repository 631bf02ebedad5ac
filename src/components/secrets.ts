import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import * as random from "@pulumi/random";
import * as tls from "@pulumi/tls";
import type { TlsInput } from "../config.js";
import type { Topology } from "../topology.js";

export type SecretKey = keyof Topology["secrets"];

export interface StackSecretsArgs {
  /** SSM parameter names: exactly the topology's secret references. */
  readonly refs: Topology["secrets"];
  /** Generated (staging) or supplied as secret config (prod). */
  readonly tls: TlsInput;
  /** Subject and SAN of a generated certificate. */
  readonly domain: string;
  /**
   * Validity of a generated certificate.
   * @default 8760 (one year)
   */
  readonly certificateHours?: number;
  /**
   * Tags on every parameter.
   * @default {}
   */
  readonly tags?: Readonly<Record<string, string>>;
}

export function validateStackSecretsArgs(args: StackSecretsArgs): void {
  // A component option with a default, not a config key: the schema never sees it.
  const hours = args.certificateHours ?? 8760;
  if (!Number.isInteger(hours) || hours < 1)
    throw new Error(
      `StackSecrets: certificateHours ${JSON.stringify(hours)} is not valid; expected a positive whole number`,
    );
}

const kebab = (key: string): string => key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);

/** SSM's value limit per tier, in bytes. */
export const PARAMETER_TIER_LIMIT = { Standard: 4096, Advanced: 8192 } as const;
export type ParameterTier = keyof typeof PARAMETER_TIER_LIMIT;

/**
 * A full certificate chain (leaf and intermediates) passes Standard's 4 KB, so the certificate
 * is Advanced (8 KB, $0.05 per month). A fixed tier keeps `up` from flipping it with the chain's
 * length: SSM cannot move a parameter from Advanced back to Standard.
 */
export const parameterTier = (key: SecretKey): ParameterTier =>
  key === "tlsCertificate" ? "Advanced" : "Standard";

/** The value, or an error naming the secret and its size when its tier cannot hold it. */
export function checkParameterSize(key: SecretKey, value: string): string {
  const tier = parameterTier(key);
  const bytes = Buffer.byteLength(value, "utf8");
  if (bytes > PARAMETER_TIER_LIMIT[tier])
    throw new Error(
      `StackSecrets: ${key} is ${bytes} bytes; an SSM ${tier} parameter holds at most ${PARAMETER_TIER_LIMIT[tier]}`,
    );
  return value;
}

/**
 * Every secret of the stack, generated (@pulumi/random, @pulumi/tls) or taken from secret config,
 * stored as SSM SecureString parameters named by the topology. Nodes fetch them at apply time;
 * no value is ever rendered into user data, bundles or outputs.
 */
export class StackSecrets extends pulumi.ComponentResource {
  readonly parameters: Readonly<Record<SecretKey, aws.ssm.Parameter>>;
  /** The balancers' certificate chain (public), for the smoke check's trust anchor. */
  readonly tlsCertificate: pulumi.Output<string>;

  constructor(name: string, args: StackSecretsArgs, opts: pulumi.ComponentResourceOptions = {}) {
    super("pypi:infra:StackSecrets", name, {}, opts);
    validateStackSecretsArgs(args);
    const parent = { parent: this };
    // Alphanumeric only: the values land in pgpass, Heartbeat authkeys and drbd.conf unquoted.
    const password = (role: string): pulumi.Output<string> =>
      new random.RandomPassword(`${name}-${role}`, { length: 32, special: false }, parent).result;
    const hostKey = new tls.PrivateKey(`${name}-upload-host-key`, { algorithm: "ED25519" }, parent);
    let tlsKey: pulumi.Output<string>;
    if (args.tls.source === "config") {
      tlsKey = pulumi.secret(args.tls.key);
      this.tlsCertificate = args.tls.certificate;
    } else {
      const key = new tls.PrivateKey(`${name}-tls-key`, { algorithm: "ECDSA", ecdsaCurve: "P256" }, parent);
      const cert = new tls.SelfSignedCert(
        `${name}-tls-cert`,
        {
          privateKeyPem: key.privateKeyPem,
          subject: { commonName: args.domain, organization: "pypi-infra (self-signed)" },
          dnsNames: [args.domain],
          validityPeriodHours: args.certificateHours ?? 8760,
          earlyRenewalHours: 720,
          allowedUses: ["digital_signature", "key_encipherment", "server_auth"],
        },
        parent,
      );
      tlsKey = key.privateKeyPem;
      this.tlsCertificate = cert.certPem;
    }
    const values: Record<SecretKey, pulumi.Output<string>> = {
      balancerAuthkey: password("balancer-authkey"),
      storageAuthkey: password("storage-authkey"),
      postgresReplicationPassword: password("postgres-replication"),
      postgresAppPassword: password("postgres-app"),
      drbdSecret: password("drbd-secret"),
      uploadHostKey: hostKey.privateKeyOpenssh,
      tlsKey,
      tlsCertificate: this.tlsCertificate,
    };
    const parameters = {} as Record<SecretKey, aws.ssm.Parameter>;
    for (const key of Object.keys(values) as SecretKey[]) {
      parameters[key] = new aws.ssm.Parameter(
        `${name}-${kebab(key)}`,
        {
          name: args.refs[key].parameter,
          type: "SecureString",
          value: pulumi.secret(values[key].apply((v) => checkParameterSize(key, v))),
          tier: parameterTier(key),
          tags: args.tags,
        },
        parent,
      );
    }
    this.parameters = parameters;
    this.registerOutputs({ parameterNames: Object.values(args.refs).map((r) => r.parameter) });
  }
}
