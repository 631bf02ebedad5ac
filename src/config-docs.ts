/**
 * The config reference, generated from the schema: docs/config.md and the `config:` block of
 * Pulumi.yaml. `npm run docs:config` writes both; a test keeps them equal to this output.
 */
import { AWS_FACT_RULES, MEMORY_MINIMUMS } from "./aws-facts.js";
import { CONFIG_KEYS, type ConfigKey, PROJECT, TOPOLOGY_RULES } from "./schema.js";

const cell = (text: string): string => text.replace(/\|/g, "\\|");
const defaultOf = (k: ConfigKey): string =>
  k.default !== undefined ? `\`${String(k.default)}\`` : (k.defaultText ?? (k.secret ? "—" : "required"));

/** docs/config.md */
export function configReference(): string {
  const keys = CONFIG_KEYS.map(
    (k) =>
      `| \`${PROJECT}:${k.key}\` | ${k.type}${k.secret ? " (secret)" : ""} | ${cell(defaultOf(k))} | ${cell(k.atom.allowed)} | ${cell(k.description)} |`,
  );
  const topologyRules = TOPOLOGY_RULES.map((r) => `| \`${r.id}\` | ${cell(r.holds)} |`);
  const awsRules = AWS_FACT_RULES.map((r) => `| \`${r.id}\` | ${cell(r.holds)} |`);
  const memory = (["balancer", "app", "db"] as const).map(
    (role) => `| ${role} | ${cell(MEMORY_MINIMUMS[role].why)} |`,
  );
  const fed = CONFIG_KEYS.filter((k) => k.fields).map(
    (k) => `| \`${PROJECT}:${k.key}\` | ${(k.fields ?? []).map((f) => `\`${f}\``).join(", ")} |`,
  );
  return [
    "# Stack configuration",
    "",
    "<!-- Generated from src/schema.ts and src/aws-facts.ts by `npm run docs:config`; a test keeps it current. -->",
    "",
    `Every key lives in the \`${PROJECT}\` namespace, plus \`aws:region\` (required: ${cell("an AWS region the provider knows")}). \`pulumi preview\` rejects a bad value before any resource is planned, naming the key, quoting the value (never a secret's) and saying what is allowed.`,
    "",
    "| key | type | default | allowed | what it sets |",
    "| --- | --- | --- | --- | --- |",
    ...keys,
    "",
    "## Cross-field rules",
    "",
    "Checked over the planned topology; a message names the config key that feeds the field.",
    "",
    "| rule | holds when |",
    "| --- | --- |",
    ...topologyRules,
    "",
    "## Checked against AWS at preview",
    "",
    "Asked through the provider's `ec2.getInstanceType`, `ec2.getInstanceTypeOfferings` and `getAvailabilityZones` data sources.",
    "",
    "| rule | holds when |",
    "| --- | --- |",
    ...awsRules,
    "",
    "Memory minimums per role:",
    "",
    "| role | why |",
    "| --- | --- |",
    ...memory,
    "",
    "## Which keys feed which topology fields",
    "",
    "| key | topology fields |",
    "| --- | --- |",
    ...fed,
    "",
  ].join("\n");
}

/** The scalar keys as Pulumi.yaml declares them: type, default and description. */
export function pulumiYamlKeys(): Record<string, { type: string; default?: unknown; description: string }> {
  return Object.fromEntries(
    CONFIG_KEYS.filter((k) => k.type !== "array" && !k.secret).map((k) => [
      k.key,
      {
        type: k.type,
        description: k.description,
        ...(k.default !== undefined ? { default: k.default } : {}),
      },
    ]),
  );
}

/** The `config:` block of Pulumi.yaml, in the key order of the schema. */
export function pulumiYamlConfigBlock(): string {
  const lines = ["config:"];
  for (const [name, k] of Object.entries(pulumiYamlKeys())) {
    lines.push(`  ${name}:`, `    type: ${k.type}`, `    description: ${JSON.stringify(k.description)}`);
    // Strings quoted: a schedule such as `*-*-* 05:00:00` would start a YAML alias.
    if (k.default !== undefined)
      lines.push(
        `    default: ${typeof k.default === "string" ? JSON.stringify(k.default) : String(k.default)}`,
      );
  }
  return `${lines.join("\n")}\n`;
}
