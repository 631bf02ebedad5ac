import { paths } from "../layout.js";
import type { NodeSpec, Topology } from "../topology.js";

export const bootstrapScriptPath = "/usr/local/sbin/pypi-bootstrap";
/** `pypi-node apply`'s exit status for a bundle it refuses (APPLY_REFUSED in pypi-node.sh). */
export const APPLY_REFUSED_STATUS = 3;
export const bootstrapEnvPath = "/etc/pypi-node/bootstrap.env";
/** The unit that runs the bootstrap at every boot after the first (cloud-init runs the first). */
export const bootstrapUnitName = "pypi-bootstrap.service";
export const bootstrapUnitPath = `/etc/systemd/system/${bootstrapUnitName}`;
const bootstrapLock = "/run/pypi-bootstrap.lock";
/** Where the bootstrap puts the node's bundle before the agent applies it. */
export const bootstrapIncomingDir = `${paths.agentState}/incoming`;

/** Fetch attempts before the bootstrap gives up (backoff 5s doubling, capped at 60s: about 7 minutes). */
const maxAttempts = 10;

/**
 * Quote one scalar for YAML. Strings become double-quoted scalars via JSON (a JSON string is a
 * valid YAML double-quoted scalar); characters YAML treats as line breaks or non-printable are
 * escaped as well, since JSON leaves them raw.
 */
export function yamlQuote(value: string | number | boolean): string {
  if (typeof value === "number" && !Number.isFinite(value))
    throw new Error(`yaml: not a finite number: ${value}`);
  if (typeof value !== "string") return String(value);
  return JSON.stringify(value).replace(
    /[\u007f-\u009f\u2028\u2029]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`,
  );
}

/** Quote one value for the bootstrap env file, which POSIX sh sources: a single-quoted word. */
export function envQuote(value: string): string {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: rejecting control characters is the point
  if (/[\u0000-\u001f\u007f]/.test(value))
    throw new Error(`env: value has control characters: ${JSON.stringify(value)}`);
  return `'${value.replace(/'/g, "'\\''")}'`;
}

/**
 * The bootstrap: fetch this node's bundle and run the agent shipped inside it. It reads
 * everything node-specific from the env file, so the text never changes.
 */
export const bootstrapScript = `${[
  "#!/bin/sh",
  "# Fetch this node's config bundle, apply it with the agent that ships inside it, and let the",
  "# node take its place (volumes, pairs, schema). First boot, every reboot and every rollout run",
  "# exactly this.",
  "set -eu",
  "# One at a time (a rollout may meet a boot); -o keeps started daemons off the lock.",
  // biome-ignore lint/suspicious/noTemplateCurlyInString: a shell parameter expansion
  'if [ -z "${PYPI_BOOTSTRAP_LOCKED:-}" ]; then',
  "  export PYPI_BOOTSTRAP_LOCKED=1",
  `  exec flock -o ${bootstrapLock} "$0" "$@"`,
  "fi",
  "# Later boots run this through its unit.",
  `systemctl enable --quiet ${bootstrapUnitName}`,
  "# shellcheck source=/dev/null",
  `. ${bootstrapEnvPath}`,
  `incoming=${bootstrapIncomingDir}`,
  'export AWS_DEFAULT_REGION="$PYPI_REGION"',
  "# Instance-role credentials through IMDSv2 only.",
  "export AWS_EC2_METADATA_V1_DISABLED=true",
  "",
  "fetch() {",
  '  mkdir -p "$incoming"',
  '  case "$PYPI_BUNDLE_LOCATION" in',
  '    s3://*) aws s3 sync --delete --only-show-errors "$PYPI_BUNDLE_LOCATION" "$incoming/" ;;',
  '    *) rm -rf "$incoming" && mkdir -p "$incoming" && cp -R "$PYPI_BUNDLE_LOCATION/." "$incoming/" ;;',
  "  esac",
  "}",
  "",
  "attempt=1",
  "delay=5",
  "while :; do",
  "  status=0",
  `  if fetch; then sh "$incoming/files${paths.agent}" apply "$incoming" || status=$?; else status=1; fi`,
  `  if [ "$status" = 0 ] && ${paths.agent} converge; then`,
  '    echo "pypi-bootstrap: $PYPI_NODE applied and converged"',
  "    exit 0",
  "  fi",
  "  # The agent refused the bundle itself: the same bundle would be refused again.",
  `  if [ "$status" = ${APPLY_REFUSED_STATUS} ]; then`,
  '    echo "pypi-bootstrap: the agent refused this bundle; the node keeps its previous configuration" >&2',
  `    exit ${APPLY_REFUSED_STATUS}`,
  "  fi",
  `  if [ "$attempt" -ge ${maxAttempts} ]; then`,
  '    echo "pypi-bootstrap: giving up after $attempt attempts" >&2',
  "    exit 1",
  "  fi",
  '  echo "pypi-bootstrap: attempt $attempt failed, retrying in $delay seconds" >&2',
  '  sleep "$delay"',
  "  attempt=$((attempt + 1))",
  "  delay=$((delay * 2))",
  '  if [ "$delay" -gt 60 ]; then delay=60; fi',
  "done",
].join("\n")}\n`;

/** The boot unit: a oneshot after the network, so a rebooted node converges by itself. */
export const bootstrapUnit = `${[
  "[Unit]",
  "Description=pypi-node: fetch this node's bundle, apply it and take its place",
  "Wants=network-online.target",
  "After=network-online.target",
  "",
  "[Service]",
  "Type=oneshot",
  `ExecStart=${bootstrapScriptPath}`,
  "RemainAfterExit=yes",
  // Converge waits for peers (a standby for its primary) within its own bounds.
  "TimeoutStartSec=2h",
  "",
  "[Install]",
  "WantedBy=multi-user.target",
].join("\n")}\n`;

/** Node identity and where its bundle lives; nothing here changes when a rendered config does. */
export function renderBootstrapEnv(t: Topology, node: NodeSpec): string {
  const vars: ReadonlyArray<readonly [string, string]> = [
    ["PYPI_ENVIRONMENT", t.environment],
    ["PYPI_BACKEND", t.backend],
    ["PYPI_NODE", node.name],
    ["PYPI_REGION", t.region],
    ["PYPI_BUNDLE_LOCATION", `${t.bundleLocation.replace(/\/+$/, "")}/${node.name}/`],
  ];
  return `${vars.map(([k, v]) => `${k}=${envQuote(v)}`).join("\n")}\n`;
}

/** Installs AWS's SSM agent package from the region's own bucket, retrying while the network settles. */
export function ssmAgentInstall(region: string): string {
  const url = `https://s3.${region}.amazonaws.com/amazon-ssm-${region}/latest/debian_amd64/amazon-ssm-agent.deb`;
  return [
    "dpkg -s amazon-ssm-agent >/dev/null 2>&1 && exit 0",
    "for i in 1 2 3 4 5; do",
    `  curl -fsSL --retry 3 -o /tmp/amazon-ssm-agent.deb ${url} && break`,
    "  sleep $((i * 5))",
    "done",
    "dpkg -i /tmp/amazon-ssm-agent.deb && systemctl enable --now amazon-ssm-agent",
  ].join("\n");
}

/**
 * User data of a node: a stable `#cloud-config` that sets the hostname (Heartbeat and DRBD match
 * `uname -n`), installs packages and runs the bootstrap. Config changes reach the node through
 * its bundle, never through this text, so they never touch the instance.
 */
export function renderCloudInit(t: Topology, node: NodeSpec, packages: readonly string[]): string {
  // The package list comes from the program, not the topology, so the schema never sees it.
  const bad = packages.find((p) => !/^[a-z0-9][a-z0-9+.-]+$/.test(p));
  if (bad !== undefined) throw new Error(`cloud-init: invalid Debian package name "${bad}"`);
  // Sorted and deduplicated so the bundle's package order cannot change the user data.
  const allPackages = [...new Set(["awscli", "curl", ...packages])].sort();
  const file = (path: string, permissions: string, content: string): string[] => [
    `  - path: ${yamlQuote(path)}`,
    `    owner: ${yamlQuote("root:root")}`,
    `    permissions: ${yamlQuote(permissions)}`,
    `    content: ${yamlQuote(content)}`,
  ];
  const lines = [
    "#cloud-config",
    `hostname: ${yamlQuote(node.name)}`,
    `fqdn: ${yamlQuote(node.name)}`,
    `preserve_hostname: ${yamlQuote(false)}`,
    `prefer_fqdn_over_hostname: ${yamlQuote(false)}`,
    `manage_etc_hosts: ${yamlQuote(true)}`,
    `package_update: ${yamlQuote(true)}`,
    "packages:",
    ...allPackages.map((p) => `  - ${yamlQuote(p)}`),
    "write_files:",
    ...file(bootstrapEnvPath, "0644", renderBootstrapEnv(t, node)),
    ...file(bootstrapScriptPath, "0755", bootstrapScript),
    ...file(bootstrapUnitPath, "0644", bootstrapUnit),
    "runcmd:",
    // Debian's AMIs ship no SSM agent, and admin access and rollouts go through SSM.
    ...(t.backend === "aws" ? [`  - [sh, -c, ${yamlQuote(ssmAgentInstall(t.region))}]`] : []),
    `  - [${yamlQuote(bootstrapScriptPath)}]`,
  ];
  return `${lines.join("\n")}\n`;
}
