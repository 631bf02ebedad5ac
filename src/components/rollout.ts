import { createHash } from "node:crypto";
import * as aws from "@pulumi/aws";
import * as command from "@pulumi/command";
import * as pulumi from "@pulumi/pulumi";
import { bootstrapScriptPath } from "../render/cloud-init.js";

/** A node's bundle: relative path -> content (bundleDirEntries as a plain object). */
export type BundleEntries = Readonly<Record<string, string>>;

/** Order-independent digest of a bundle; the rollout trigger of its node. */
export function bundleDigest(entries: BundleEntries): string {
  const hash = createHash("sha256");
  for (const key of Object.keys(entries).sort()) hash.update(`${key}\0${entries[key]}\0`);
  return hash.digest("hex");
}

/** How long the rollout waits for a node, and how often it asks. */
export interface ApplyTiming {
  /** Seconds between SSM polls. */
  readonly pollSeconds: number;
  /** Overall limit per node in seconds, from the start of its step (first boot included). */
  readonly deadlineSeconds: number;
  /** SSM's limit for the bootstrap run on the node, in seconds. */
  readonly executionTimeoutSeconds: number;
  /** How long InvocationDoesNotExist right after send-command counts as "not registered yet". */
  readonly notFoundGraceSeconds: number;
}

export const DEFAULT_APPLY_TIMING: ApplyTiming = {
  pollSeconds: 5,
  // 15 min for a first boot to come online in SSM, the bootstrap's 30 min, and delivery.
  deadlineSeconds: 3000,
  executionTimeoutSeconds: 1800,
  notFoundGraceSeconds: 30,
};

/** SSM's in-progress states; every other answer ends the wait. */
export const SSM_PENDING_STATES = ["Pending", "InProgress", "Delayed"] as const;

export function validateApplyTiming(t: ApplyTiming): void {
  // Timing is a component option, not a config key: the schema never sees it.
  for (const [key, value] of Object.entries(t)) {
    if (!Number.isInteger(value) || value < 0)
      throw new Error(
        `ConfigRollout: timing.${key} ${JSON.stringify(value)} is not valid; expected seconds >= 0`,
      );
  }
  if (t.deadlineSeconds <= t.pollSeconds)
    throw new Error(
      `ConfigRollout: timing.deadlineSeconds ${t.deadlineSeconds} is not valid; expected more than pollSeconds (${t.pollSeconds})`,
    );
}

/**
 * Re-applies one node's bundle through SSM Run Command and waits for the result. Runs on the
 * operator's machine with the operator's credentials: wait until the node is online in SSM
 * (first boot), run the bootstrap (fetch bundle, `pypi-node apply`), poll the invocation.
 * Exits 0 only when the invocation's status is Success; a terminal status prints the node's own
 * stderr, and an AWS CLI error (expired or missing credentials, a vanished invocation) or the
 * deadline fails at once instead of being taken for "still pending".
 */
export function renderApplyScript(timing: ApplyTiming = DEFAULT_APPLY_TIMING): string {
  validateApplyTiming(timing);
  const { pollSeconds, deadlineSeconds, executionTimeoutSeconds, notFoundGraceSeconds } = timing;
  const invocation = 'ssm get-command-invocation --command-id "$cid" --instance-id "$PYPI_INSTANCE_ID"';
  return `${[
    "set -eu",
    'aws_() { aws --region "$PYPI_REGION" --output text "$@"; }',
    'node="$PYPI_NODE ($PYPI_INSTANCE_ID)"',
    'cid=""',
    "err=$(mktemp)",
    "trap 'rm -f \"$err\"' EXIT",
    `deadline=$(($(date +%s) + ${deadlineSeconds}))`,
    // The CLI's error text goes to $err so a failure can be named, never mistaken for "pending".
    'call() { aws_ "$@" 2>"$err"; }',
    'fail() { echo "pypi-node apply on $node: $*" >&2; exit 1; }',
    "cli_error() {",
    '  echo "pypi-node apply on $node: aws $1 failed:" >&2',
    '  cat "$err" >&2',
    '  if [ -n "$cid" ]; then echo "command $cid may still be running on the node" >&2; fi',
    "  exit 1",
    "}",
    "report() {",
    `  details=$(call ${invocation} --query '[StatusDetails,ResponseCode]') || details=unknown`,
    '  echo "pypi-node apply on $node: $1 ($details), command $cid; its stderr:" >&2',
    `  call ${invocation} --query StandardErrorContent >&2 || cat "$err" >&2`,
    '  echo "last lines of its stdout:" >&2',
    `  { call ${invocation} --query StandardOutputContent || true; } | tail -n 20 >&2`,
    "  exit 1",
    "}",
    "while :; do",
    '  ping=$(call ssm describe-instance-information --filters "Key=InstanceIds,Values=$PYPI_INSTANCE_ID" \\',
    "    --query 'InstanceInformationList[0].PingStatus') || cli_error describe-instance-information",
    '  if [ "$ping" = Online ]; then break; fi',
    '  if [ "$(date +%s)" -ge "$deadline" ]; then',
    `    fail "not online in SSM within ${deadlineSeconds}s (PingStatus $ping)"`,
    "  fi",
    `  sleep ${pollSeconds}`,
    "done",
    'cid=$(call ssm send-command --instance-ids "$PYPI_INSTANCE_ID" --document-name AWS-RunShellScript \\',
    '  --comment "pypi-node apply $PYPI_NODE $(printf %.12s "$PYPI_BUNDLE_SHA256")" \\',
    `  --parameters 'commands=["${bootstrapScriptPath}"],executionTimeout=["${executionTimeoutSeconds}"]' \\`,
    "  --query Command.CommandId) || cli_error send-command",
    "sent=$(date +%s)",
    "status=unregistered",
    "while :; do",
    `  if status=$(call ${invocation} --query Status); then`,
    '    case "$status" in',
    "      Success) break ;;",
    `      ${SSM_PENDING_STATES.join(" | ")}) ;;`,
    // Failed, Cancelled, TimedOut, Cancelling, Undeliverable, Terminated, or anything undocumented.
    '      *) report "$status" ;;',
    "    esac",
    `  elif grep -q InvocationDoesNotExist "$err" && [ $(($(date +%s) - sent)) -lt ${notFoundGraceSeconds} ]; then`,
    "    status=unregistered",
    "  else",
    "    cli_error get-command-invocation",
    "  fi",
    '  if [ "$(date +%s)" -ge "$deadline" ]; then',
    `    fail "still $status after ${deadlineSeconds}s, command $cid; giving up (it may still finish on the node)"`,
    "  fi",
    `  sleep ${pollSeconds}`,
    "done",
    'echo "$PYPI_NODE applied bundle $PYPI_BUNDLE_SHA256"',
  ].join("\n")}\n`;
}

export interface ConfigRolloutArgs {
  /** Bucket holding `bundles/<node>/...`. */
  readonly bucket: aws.s3.Bucket;
  /** Bucket settings (public access block, encryption) that must exist before any object. */
  readonly bucketReady: readonly pulumi.Resource[];
  /**
   * Each node's bundle file list (relative paths). Plain: computed from the pre-topology, so the
   * set of objects is known before any output resolves.
   */
  readonly files: Readonly<Record<string, readonly string[]>>;
  /** Each node's bundle content, from the resolved topology. */
  readonly entries: pulumi.Output<Readonly<Record<string, BundleEntries>>>;
  /** Rollout chains: chains run side by side, the nodes of one chain one at a time, in order. */
  readonly chains: readonly (readonly string[])[];
  /** The instance of every node named in `chains`. */
  readonly instances: Readonly<Record<string, aws.ec2.Instance>>;
  /** Region of the instances, for the SSM calls. */
  readonly region: string;
  /**
   * Poll interval, deadline and SSM timeouts of each node's step.
   * @default DEFAULT_APPLY_TIMING (poll 5 s, deadline 50 min, bootstrap limit 30 min)
   */
  readonly timing?: Partial<ApplyTiming>;
}

export function validateConfigRolloutArgs(args: ConfigRolloutArgs): void {
  // Chains, files and instances are joined here from three sources; the schema sees none of them.
  validateApplyTiming({ ...DEFAULT_APPLY_TIMING, ...args.timing });
  const seen = new Set<string>();
  for (const node of args.chains.flat()) {
    if (seen.has(node))
      throw new Error(`ConfigRollout: node ${JSON.stringify(node)} appears in more than one chain position`);
    seen.add(node);
    if (!args.files[node]?.length)
      throw new Error(`ConfigRollout: files has no entries for node ${JSON.stringify(node)}`);
    if (!args.instances[node])
      throw new Error(`ConfigRollout: instances has no instance for node ${JSON.stringify(node)}`);
  }
  for (const node of Object.keys(args.files)) {
    if (!seen.has(node))
      throw new Error(`ConfigRollout: node ${JSON.stringify(node)} has a bundle but is in no chain`);
  }
}

/**
 * Stores each node's bundle as S3 objects and re-applies a changed bundle in place, one node of
 * a pair at a time: node b's command depends on node a's, and each is re-run (replaced) only
 * when its own bundle digest changes. Nothing here is an input of an instance.
 */
export class ConfigRollout extends pulumi.ComponentResource {
  readonly objects: Readonly<Record<string, readonly aws.s3.BucketObjectv2[]>>;
  readonly commands: Readonly<Record<string, command.local.Command>>;
  /** Each node and the node whose apply it waits for. */
  readonly steps: readonly { readonly node: string; readonly after?: string }[];
  /** Last command of every chain: what "rolled out" means. */
  readonly done: readonly command.local.Command[];
  readonly digests: pulumi.Output<Readonly<Record<string, string>>>;

  constructor(name: string, args: ConfigRolloutArgs, opts: pulumi.ComponentResourceOptions = {}) {
    super("pypi:infra:ConfigRollout", name, {}, opts);
    validateConfigRolloutArgs(args);
    const objects: Record<string, aws.s3.BucketObjectv2[]> = {};
    for (const [node, files] of Object.entries(args.files)) {
      objects[node] = files.map(
        (file) =>
          new aws.s3.BucketObjectv2(
            `${name}-${node}-${file}`,
            {
              bucket: args.bucket.id,
              key: `bundles/${node}/${file}`,
              content: args.entries.apply((all) => {
                const content = all[node]?.[file];
                if (content === undefined)
                  throw new Error(
                    `bundle ${node}: ${file} is in the planned file list but not in the rendered bundle`,
                  );
                return content;
              }),
              contentType: "text/plain; charset=utf-8",
              serverSideEncryption: "AES256",
            },
            { parent: this, dependsOn: [...args.bucketReady] },
          ),
      );
    }
    this.objects = objects;
    this.digests = args.entries.apply((all) =>
      Object.fromEntries(Object.entries(all).map(([node, entries]) => [node, bundleDigest(entries)])),
    );
    const script = renderApplyScript({ ...DEFAULT_APPLY_TIMING, ...args.timing });
    const commands: Record<string, command.local.Command> = {};
    const steps: { node: string; after?: string }[] = [];
    const done: command.local.Command[] = [];
    for (const chain of args.chains) {
      let previous: { node: string; command: command.local.Command } | undefined;
      for (const node of chain) {
        const digest = this.digests.apply((d) => d[node] ?? "");
        const instance = args.instances[node] as aws.ec2.Instance;
        const cmd = new command.local.Command(
          `${name}-${node}`,
          {
            create: script,
            interpreter: ["/bin/sh", "-c"],
            environment: {
              PYPI_REGION: args.region,
              PYPI_NODE: node,
              PYPI_INSTANCE_ID: instance.id,
              PYPI_BUNDLE_SHA256: digest,
            },
            triggers: [digest],
          },
          {
            parent: this,
            dependsOn: [...(objects[node] ?? []), ...(previous ? [previous.command] : [])],
          },
        );
        commands[node] = cmd;
        steps.push(previous ? { node, after: previous.node } : { node });
        previous = { node, command: cmd };
      }
      if (previous) done.push(previous.command);
    }
    this.commands = commands;
    this.steps = steps;
    this.done = done;
    this.registerOutputs({ digests: this.digests });
  }
}
