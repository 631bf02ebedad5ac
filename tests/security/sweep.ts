import { isSecret, plain, type Recorded } from "../stack/harness.js";

/** Inputs that reach a machine or a log as text even when Pulumi marks them secret. */
const EXPOSED: Readonly<Record<string, readonly string[]>> = {
  "aws:ec2/instance:Instance": ["userData", "userDataBase64", "tags"],
  "aws:s3/bucketObjectv2:BucketObjectv2": ["content", "key", "tags"],
  "command:local:Command": ["create", "update", "delete", "environment", "triggers"],
};

export interface Leak {
  readonly where: string;
  /** The first characters of the leaked secret, enough to find it, not to use it. */
  readonly secret: string;
}

/** Every string below `value`, with the JSON path to it; secret wrappers skipped unless `unwrapAll`. */
function* strings(value: unknown, path: string, unwrapAll: boolean): Generator<[string, string]> {
  if (isSecret(value)) {
    if (unwrapAll) yield* strings(plain(value), path, unwrapAll);
    return;
  }
  if (typeof value === "string") yield [path, value];
  else if (Array.isArray(value))
    for (const [i, v] of value.entries()) yield* strings(v, `${path}[${i}]`, unwrapAll);
  else if (typeof value === "object" && value !== null)
    for (const [k, v] of Object.entries(value)) yield* strings(v, `${path}.${k}`, unwrapAll);
}

/** A secret, and the encodings it could hide in. */
const forms = (secret: string): string[] => [
  secret,
  Buffer.from(secret).toString("base64"),
  JSON.stringify(secret).slice(1, -1),
];

/**
 * One sweep over ALL recorded resource inputs and every output. Allowed: a Pulumi secret (it is
 * encrypted in state), and the SSM SecureString values that exist to hold the secrets. Not
 * allowed even as a Pulumi secret: user data, bundle objects and local commands, which put their
 * text on a machine.
 */
export function sweep(
  resources: readonly Recorded[],
  outputs: Readonly<Record<string, unknown>>,
  secrets: readonly string[],
): Leak[] {
  const needles = secrets.filter((s) => s.length >= 8).flatMap(forms);
  const leaks: Leak[] = [];
  const check = (where: string, text: string) => {
    for (const n of needles) if (text.includes(n)) leaks.push({ where, secret: `${n.slice(0, 6)}...` });
  };
  for (const r of resources) {
    const exposed = EXPOSED[r.type] ?? [];
    for (const [key, value] of Object.entries(r.inputs)) {
      if (r.type === "aws:ssm/parameter:Parameter" && key === "value") {
        // Must be a secret and a SecureString, or it is a leak of its own.
        if (!isSecret(value) || r.inputs.type !== "SecureString")
          check(`${r.name}.value (not secret)`, String(plain(value)));
        continue;
      }
      for (const [path, text] of strings(value, `${r.type}::${r.name}.${key}`, exposed.includes(key)))
        check(path, text);
    }
  }
  for (const [path, text] of strings(outputs, "outputs", true)) check(path, text);
  return leaks;
}
