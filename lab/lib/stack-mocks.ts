/**
 * Builds the stacks under `pulumi.runtime.setMocks` with realistic AWS ids, recording every
 * resource's inputs and every generated secret: the stack test tier and the stack bench.
 */
import { createHash } from "node:crypto";
import * as pulumi from "@pulumi/pulumi";
import { parseConfig, type TlsInput } from "../../src/config.js";
import { DEBIAN_AMI_PARAMETER, PypiStack } from "../../src/stack.js";
import { stackConfigMap } from "./pulumi-yaml.js";

export const ACCOUNT = "123456789012";
export const REGION = "us-east-1";
export const MOCK_AMI = "ami-0debian12mock0001";
/** Prod's `--secret` config, supplied by the tests since the stack file cannot hold it. */
export const PROD_TLS = {
  certificate: "-----BEGIN CERTIFICATE-----\nMOCKPRODCERTIFICATEc3f1a9\n-----END CERTIFICATE-----\n",
  key: "-----BEGIN PRIVATE KEY-----\nMOCKPRODTLSKEYb77e0d42\n-----END PRIVATE KEY-----\n",
};

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
          state = { ...state, bucket: id, arn: `arn:aws:s3:::${id}` };
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
        default:
          throw new Error(`unmocked invoke ${args.token}`);
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
export async function buildStack(stack: StackName, overrides: Record<string, unknown> = {}) {
  const recorder = createMocks();
  await pulumi.runtime.setMocks(recorder.mocks, "pypi-infra", stack, false);
  const config = parseConfig(rawConfig(stack, overrides), stack);
  const tls = tlsFor(config.tlsSource);
  if (tls.source === "config") recorder.secrets.push(PROD_TLS.key, "MOCKPRODTLSKEYb77e0d42");
  const pypi = new PypiStack("pypi", { config, tls });
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
