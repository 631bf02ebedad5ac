/**
 * Builds the stacks under `pulumi.runtime.setMocks` with realistic AWS ids, recording every
 * resource's inputs and every generated secret: the stack test tier and the stack bench.
 */
import { createHash } from "node:crypto";
import * as pulumi from "@pulumi/pulumi";
import { parseConfig, type TlsInput } from "../../src/config.js";
import { DEBIAN_AMI_PARAMETER, PypiStack } from "../../src/stack.js";
import { stackConfigMap } from "./pulumi-yaml.js";
import { makeTlsChain } from "./tls-fixture.js";

export const ACCOUNT = "123456789012";
export const REGION = "us-east-1";
export const MOCK_AMI = "ami-0debian12mock0001";
/** Prod's `--secret` config, supplied by the tests since the stack file cannot hold it: a real chain. */
export const PROD_TLS = (() => {
  const made = makeTlsChain("pypi.example.org");
  return { certificate: made.chain, key: made.key };
})();
/** One base64 line of the prod key: it must reach the key's SSM parameter and nothing else. */
export const PROD_TLS_KEY_LINE = PROD_TLS.key.split("\n")[1] ?? "";

/**
 * EC2's answers for the instance types the tests use: memory (MiB), IPv4 addresses per ENI,
 * architectures and hypervisor, as DescribeInstanceTypes reports them.
 */
export const INSTANCE_TYPES: Readonly<
  Record<string, { memoryMib: number; ipv4PerEni: number; arch: string[]; hypervisor: string }>
> = {
  "t3.nano": { memoryMib: 512, ipv4PerEni: 2, arch: ["x86_64"], hypervisor: "nitro" },
  "t3.micro": { memoryMib: 1024, ipv4PerEni: 2, arch: ["x86_64"], hypervisor: "nitro" },
  "t3.small": { memoryMib: 2048, ipv4PerEni: 4, arch: ["x86_64"], hypervisor: "nitro" },
  "t3.medium": { memoryMib: 4096, ipv4PerEni: 6, arch: ["x86_64"], hypervisor: "nitro" },
  "t3.large": { memoryMib: 8192, ipv4PerEni: 12, arch: ["x86_64"], hypervisor: "nitro" },
  "c6i.large": { memoryMib: 4096, ipv4PerEni: 10, arch: ["x86_64"], hypervisor: "nitro" },
  "m6i.large": { memoryMib: 8192, ipv4PerEni: 10, arch: ["x86_64"], hypervisor: "nitro" },
  "r6i.large": { memoryMib: 16384, ipv4PerEni: 10, arch: ["x86_64"], hypervisor: "nitro" },
  "t2.medium": { memoryMib: 4096, ipv4PerEni: 6, arch: ["i386", "x86_64"], hypervisor: "xen" },
  "m7g.large": { memoryMib: 8192, ipv4PerEni: 10, arch: ["arm64"], hypervisor: "nitro" },
};

/** Zones per region; us-east-1e is the old zone that offers none of the current families. */
export const ZONES: Readonly<Record<string, string[]>> = {
  "us-east-1": ["us-east-1a", "us-east-1b", "us-east-1c", "us-east-1d", "us-east-1e", "us-east-1f"],
  "eu-west-1": ["eu-west-1a", "eu-west-1b", "eu-west-1c"],
};
const offered = (type: string, zone: string): boolean => zone !== "us-east-1e" || type.startsWith("t2.");

/** What the invokes of src/aws-facts.ts answer. */
function awsFactsInvoke(token: string, inputs: Record<string, unknown>): Record<string, unknown> | undefined {
  switch (token) {
    case "aws:ec2/getInstanceType:getInstanceType": {
      const type = String(inputs.instanceType);
      const t = INSTANCE_TYPES[type];
      if (!t)
        throw new Error(
          `reading EC2 Instance Type (${type}): operation error EC2: DescribeInstanceTypes, api error InvalidInstanceType: The following supplied instance types do not exist: [${type}]`,
        );
      return {
        id: type,
        instanceType: type,
        memorySize: t.memoryMib,
        maximumIpv4AddressesPerInterface: t.ipv4PerEni,
        supportedArchitectures: t.arch,
        hypervisor: t.hypervisor,
        bareMetal: false,
      };
    }
    case "aws:index/getAvailabilityZones:getAvailabilityZones":
      return { id: REGION, names: ZONES[REGION] ?? [], zoneIds: [], groupNames: [] };
    case "aws:ec2/getInstanceTypeOfferings:getInstanceTypeOfferings": {
      const filters = (inputs.filters ?? []) as { name: string; values: string[] }[];
      const types = filters.find((f) => f.name === "instance-type")?.values ?? [];
      const zones = filters.find((f) => f.name === "location")?.values ?? [];
      const pairs = types.flatMap((t) =>
        zones
          .filter((z) => INSTANCE_TYPES[t] && (ZONES[REGION] ?? []).includes(z) && offered(t, z))
          .map((z) => [t, z]),
      );
      return {
        id: REGION,
        instanceTypes: pairs.map(([t]) => t),
        locations: pairs.map(([, z]) => z),
        locationTypes: pairs.map(() => "availability-zone"),
      };
    }
    default:
      return undefined;
  }
}

export interface Recorded {
  readonly type: string;
  readonly name: string;
  readonly id: string;
  readonly inputs: Record<string, unknown>;
  readonly state: Record<string, unknown>;
}

/** Mocks that give every resource realistic ids and record inputs and every generated secret. */
export function createMocks() {
  const resources: Recorded[] = [];
  const secrets: string[] = [];
  const invokes: string[] = [];
  const short = (name: string) => createHash("sha256").update(name).digest("hex").slice(0, 17);
  let eipCount = 0;
  const mocks: pulumi.runtime.Mocks = {
    newResource(args) {
      const inputs = args.inputs as Record<string, unknown>;
      const h = short(`${args.type}/${args.name}`);
      let id = `${args.name}-id`;
      let state: Record<string, unknown> = { ...inputs };
      switch (args.type) {
        case "aws:ec2/instance:Instance":
          id = `i-${h}`;
          state = { ...state, arn: `arn:aws:ec2:${REGION}:${ACCOUNT}:instance/${id}` };
          break;
        case "aws:ec2/eip:Eip":
          eipCount++;
          id = `eipalloc-${h}`;
          state = { ...state, allocationId: id, publicIp: `203.0.113.${10 + eipCount}` };
          break;
        case "aws:ec2/networkInterface:NetworkInterface":
          id = `eni-${h}`;
          break;
        case "aws:ebs/volume:Volume":
          id = `vol-${h}`;
          break;
        case "aws:ec2/routeTable:RouteTable":
          id = `rtb-${h}`;
          break;
        case "aws:ec2/securityGroup:SecurityGroup":
          id = `sg-${h}`;
          break;
        case "aws:ec2/subnet:Subnet":
          id = `subnet-${h}`;
          break;
        case "aws:ec2/vpc:Vpc":
          id = `vpc-${h}`;
          break;
        case "aws:s3/bucket:Bucket":
          id = `${String(inputs.bucketPrefix ?? "bucket-")}${h.slice(0, 8)}`;
          state = {
            ...state,
            bucket: id,
            arn: `arn:aws:s3:::${id}`,
            bucketDomainName: `${id}.s3.amazonaws.com`,
          };
          break;
        case "aws:cloudfront/distribution:Distribution":
          id = `E${h.slice(0, 12).toUpperCase()}`;
          state = {
            ...state,
            arn: `arn:aws:cloudfront::${ACCOUNT}:distribution/${id}`,
            domainName: `d${h.slice(0, 12)}.cloudfront.net`,
            hostedZoneId: "Z2FDTNDATAQYW2",
          };
          break;
        case "aws:acm/certificate:Certificate":
          state = {
            ...state,
            arn: `arn:aws:acm:us-east-1:${ACCOUNT}:certificate/00000000-0000-4000-8000-${h.slice(0, 12)}`,
            domainValidationOptions: [
              {
                domainName: inputs.domainName,
                resourceRecordName: `_${h.slice(0, 8)}.${String(inputs.domainName)}.`,
                resourceRecordType: "CNAME",
                resourceRecordValue: `_${h.slice(8, 16)}.acm-validations.aws.`,
              },
            ],
          };
          break;
        case "aws:route53/healthCheck:HealthCheck":
          id = `hc-${h}`;
          break;
        case "aws:route53/record:Record":
          state = { ...state, fqdn: String(inputs.name) };
          break;
        case "aws:sns/topic:Topic":
          state = { ...state, arn: `arn:aws:sns:${REGION}:${ACCOUNT}:${String(inputs.name)}` };
          break;
        case "aws:kms/key:Key":
          state = { ...state, arn: `arn:aws:kms:${REGION}:${ACCOUNT}:key/${id}`, keyId: id };
          break;
        case "aws:ssm/parameter:Parameter":
          id = String(inputs.name);
          state = { ...state, arn: `arn:aws:ssm:${REGION}:${ACCOUNT}:parameter${String(inputs.name)}` };
          break;
        case "aws:iam/role:Role":
          state = {
            ...state,
            name: `${args.name}-${h.slice(0, 7)}`,
            arn: `arn:aws:iam::${ACCOUNT}:role/${args.name}`,
          };
          break;
        case "aws:iam/instanceProfile:InstanceProfile":
          state = { ...state, name: `${args.name}-${h.slice(0, 7)}` };
          break;
        case "random:index/randomPassword:RandomPassword": {
          const result = `Pw${h}${h}`.slice(0, Number(inputs.length ?? 32));
          secrets.push(result);
          state = { ...state, result };
          break;
        }
        case "tls:index/privateKey:PrivateKey": {
          const pem = `-----BEGIN PRIVATE KEY-----\nMOCKKEY${h}\n-----END PRIVATE KEY-----\n`;
          const openssh = `-----BEGIN OPENSSH PRIVATE KEY-----\nMOCKSSH${h}\n-----END OPENSSH PRIVATE KEY-----\n`;
          secrets.push(pem, openssh, `MOCKKEY${h}`, `MOCKSSH${h}`);
          state = {
            ...state,
            privateKeyPem: pem,
            privateKeyOpenssh: openssh,
            publicKeyOpenssh: `ssh-ed25519 PUB${h}`,
          };
          break;
        }
        case "tls:index/selfSignedCert:SelfSignedCert":
          state = {
            ...state,
            certPem: `-----BEGIN CERTIFICATE-----\nMOCKCERT${h}\n-----END CERTIFICATE-----\n`,
          };
          break;
      }
      resources.push({ type: args.type, name: args.name, id, inputs, state });
      return { id, state };
    },
    call(args) {
      invokes.push(args.token);
      switch (args.token) {
        case "aws:index/getCallerIdentity:getCallerIdentity":
          return {
            accountId: ACCOUNT,
            arn: `arn:aws:iam::${ACCOUNT}:user/ci`,
            userId: "AIDAMOCK",
            id: ACCOUNT,
          };
        case "aws:ssm/getParameter:getParameter":
          if (args.inputs.name !== DEBIAN_AMI_PARAMETER)
            throw new Error(`unexpected getParameter ${args.inputs.name}`);
          return {
            id: DEBIAN_AMI_PARAMETER,
            name: DEBIAN_AMI_PARAMETER,
            type: "String",
            value: MOCK_AMI,
            version: 1,
          };
        case "aws:route53/getZone:getZone": {
          const zoneName = String(args.inputs.name ?? "example.org");
          return {
            id: String(args.inputs.zoneId ?? "Z0MOCKZONE01"),
            zoneId: String(args.inputs.zoneId ?? "Z0MOCKZONE01"),
            name: zoneName,
            privateZone: false,
          };
        }
        default: {
          const answer = awsFactsInvoke(args.token, args.inputs as Record<string, unknown>);
          if (answer) return answer;
          throw new Error(`unmocked invoke ${args.token}`);
        }
      }
    },
  };
  return { mocks, resources, secrets, invokes };
}

const SECRET_SIG = "4dabf18193072939515e22adb298388d";

/** Whether a mocked input arrived as a Pulumi secret. */
export const isSecret = (v: unknown): boolean =>
  typeof v === "object" && v !== null && SECRET_SIG in v && "value" in v;

/** A mocked input with its secret wrapper (if any) removed. */
export const plain = (v: unknown): unknown => (isSecret(v) ? (v as { value: unknown }).value : v);

export function resolve<T>(output: pulumi.Output<T>): Promise<T> {
  return new Promise((res) => output.apply((v) => res(v)));
}

/** Wait until registrations stop arriving (mocks register asynchronously). */
export async function settle(resources: readonly unknown[]): Promise<void> {
  let last = -1;
  let stable = 0;
  while (stable < 5) {
    await new Promise((r) => setTimeout(r, 10));
    if (resources.length === last) stable++;
    else stable = 0;
    last = resources.length;
  }
}

export type StackName = "staging" | "prod";

export function rawConfig(
  stack: StackName,
  overrides: Record<string, unknown> = {},
): Record<string, unknown> {
  return { ...stackConfigMap(stack), ...overrides };
}

export function tlsFor(tlsSource: string): TlsInput {
  return tlsSource === "config"
    ? { source: "config", certificate: pulumi.secret(PROD_TLS.certificate), key: pulumi.secret(PROD_TLS.key) }
    : { source: "generated" };
}

/** Builds one stack from its real Pulumi.<stack>.yaml under fresh mocks and waits for every resource. */
export async function buildStack(
  stack: StackName,
  overrides: Record<string, unknown> = {},
  opts: pulumi.ComponentResourceOptions = {},
) {
  return build(stack, overrides, opts);
}

async function build(
  stack: StackName,
  overrides: Record<string, unknown>,
  opts: pulumi.ComponentResourceOptions,
) {
  const recorder = createMocks();
  await pulumi.runtime.setMocks(recorder.mocks, "pypi-infra", stack, false);
  const config = parseConfig(rawConfig(stack, overrides), stack);
  const tls = tlsFor(config.tlsSource);
  if (tls.source === "config") recorder.secrets.push(PROD_TLS.key, PROD_TLS_KEY_LINE);
  const pypi = new PypiStack("pypi", { config, tls }, opts);
  const [floatingIps, nodes, runbooks, runbookData, topology, digests] = await Promise.all([
    resolve(pypi.floatingIps),
    resolve(pypi.nodes),
    resolve(pypi.runbooks),
    resolve(pypi.runbookData),
    resolve(pypi.topology),
    resolve(pypi.rollout.digests),
  ]);
  const outputs = { floatingIps, nodes, runbooks, runbookData, topology, digests };
  await settle(recorder.resources);
  const ofType = (type: string) => recorder.resources.filter((r) => r.type === type);
  return { config, pypi, outputs, ...recorder, ofType };
}

export type Built = Awaited<ReturnType<typeof buildStack>>;

/**
 * Runs a stack build without the stack traces Pulumi takes for its own diagnostics: one for
 * every promise it tracks (for its leak report) and a full one for every resource it registers
 * (its source position), which vitest then maps through source maps. They make up most of a
 * build's time. Nothing a test reads comes from them.
 *
 * If the build fails, it runs once more with stack traces on, so the error that reaches the
 * test carries its stack: `run` must be repeatable (install its own mocks and config).
 */
export async function withCheapStackTraces<T>(run: () => Promise<T>): Promise<T> {
  // V8's own formatting when unset (@types/node declares the hook as always present).
  const traces = Error as {
    prepareStackTrace?: ErrorConstructor["prepareStackTrace"];
    stackTraceLimit: number;
  };
  const { prepareStackTrace, stackTraceLimit } = traces;
  const restore = () => {
    traces.prepareStackTrace = prepareStackTrace;
    traces.stackTraceLimit = stackTraceLimit;
  };
  traces.prepareStackTrace = undefined;
  traces.stackTraceLimit = 0;
  try {
    return await run();
  } catch (error) {
    restore();
    await run();
    throw new Error("the stack build failed only without stack traces", { cause: error });
  } finally {
    restore();
  }
}

/** An instance's launch options as the component code passed them: the mocks never see options. */
export interface InstanceOptions {
  readonly name: string;
  readonly ignoreChanges: readonly string[] | undefined;
  readonly deleteBeforeReplace: boolean | undefined;
  readonly userDataReplaceOnChange: unknown;
}

/** A stack built once per process and shared, read-only, by every test that only reads it. */
export type SharedBuilt = Built & { readonly instanceOptions: readonly InstanceOptions[] };

function deepFreeze<T>(value: T, seen = new WeakSet<object>()): T {
  if (typeof value === "object" && value !== null && !seen.has(value)) {
    seen.add(value);
    Object.freeze(value);
    for (const v of Object.values(value)) deepFreeze(v, seen);
  }
  return value;
}

const sharedBuilds = new Map<StackName, Promise<SharedBuilt>>();
/** Builds run one after another: the mocks are global, and each build installs its own. */
let lastBuild: Promise<unknown> = Promise.resolve();

/**
 * `buildStack(stack)`, built once per process (a vitest worker that runs its files without
 * isolation shares it between them) and frozen: a test that writes to it fails instead of
 * changing what the next file reads. A recording transformation on the top component, which
 * changes nothing, also keeps each instance's resource options (`instanceOptions`).
 *
 * The build is settled (every registration recorded) before it is handed out, so a later
 * `setMocks` by a file that builds a modified stack cannot reach it.
 */
export function builtStack(stack: StackName): Promise<SharedBuilt> {
  let shared = sharedBuilds.get(stack);
  if (!shared) {
    shared = lastBuild.catch(() => undefined).then(() => buildShared(stack));
    lastBuild = shared;
    sharedBuilds.set(stack, shared);
  }
  return shared;
}

async function buildShared(stack: StackName): Promise<SharedBuilt> {
  let instanceOptions: InstanceOptions[] = [];
  const record: pulumi.ResourceTransformation = ({ type, name, props, opts }) => {
    if (type === "aws:ec2/instance:Instance") {
      const custom = opts as pulumi.CustomResourceOptions;
      instanceOptions.push({
        name,
        ignoreChanges: custom.ignoreChanges ? [...custom.ignoreChanges] : undefined,
        deleteBeforeReplace: custom.deleteBeforeReplace,
        userDataReplaceOnChange: props.userDataReplaceOnChange,
      });
    }
    return undefined;
  };
  const built = await withCheapStackTraces(() => {
    instanceOptions = [];
    return build(stack, {}, { transformations: [record] });
  });
  deepFreeze([built.config, built.outputs, built.resources, built.secrets, built.invokes, instanceOptions]);
  deepFreeze([built.pypi.plannedTopology, built.pypi.plannedFiles, built.pypi.endpoints]);
  return { ...built, instanceOptions };
}
