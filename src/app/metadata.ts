/**
 * Core metadata (METADATA in wheels, PKG-INFO in sdists): RFC 822 style headers, then the
 * description as the body. Also the header parser the WHEEL file shares.
 */
import { isValidProjectName } from "./names.js";
import { parseVersion } from "./pep440.js";

export interface CoreMetadata {
  readonly metadataVersion: string;
  readonly name: string;
  readonly version: string;
  readonly summary: string | null;
  readonly requiresPython: string | null;
  /** Every header, by canonical field name, in file order. */
  readonly fields: Readonly<Record<string, readonly string[]>>;
  readonly description: string | null;
}

export type Parsed<T> = { ok: true; value: T } | { ok: false; reason: string };

export interface HeaderBlock {
  readonly fields: Readonly<Record<string, readonly string[]>>;
  /** Text after the first blank line, or null if there is none. */
  readonly body: string | null;
}

const SUPPORTED_METADATA_VERSIONS = ["1.0", "1.1", "1.2", "2.0", "2.1", "2.2", "2.3", "2.4"];

/** The spellings of the core metadata specification; unknown fields get Capitalized-Words. */
const CANONICAL = new Map(
  [
    "Metadata-Version",
    "Name",
    "Version",
    "Dynamic",
    "Platform",
    "Supported-Platform",
    "Summary",
    "Description",
    "Description-Content-Type",
    "Keywords",
    "Home-page",
    "Download-URL",
    "Author",
    "Author-email",
    "Maintainer",
    "Maintainer-email",
    "License",
    "License-Expression",
    "License-File",
    "Classifier",
    "Requires-Dist",
    "Requires-Python",
    "Requires-External",
    "Project-URL",
    "Provides-Extra",
    "Provides-Dist",
    "Obsoletes-Dist",
    "Requires",
    "Provides",
    "Obsoletes",
    "Import-Name",
    "Import-Namespace",
  ].map((f) => [f.toLowerCase(), f]),
);

const canonicalField = (name: string): string =>
  CANONICAL.get(name.toLowerCase()) ??
  name
    .toLowerCase()
    .split("-")
    .map((w) => w.charAt(0).toUpperCase() + w.slice(1))
    .join("-");

/** RFC 5322 field names: printable ASCII without the colon. */
const FIELD_NAME_RE = /^[!-9;-~]+$/;

/**
 * Unfold one header: continuation lines lose their indentation. Description keeps its lines,
 * minus the 8-space (or 7 spaces and `|`) prefix setuptools and flit put in front of them.
 */
function unfold(field: string, lines: readonly string[]): string {
  const [first = "", ...rest] = lines;
  const cont =
    field === "Description"
      ? rest.map((l) => l.replace(/^(?: {8}| {7}\||\t)/, "").trimEnd())
      : rest.map((l) => l.trim());
  return [first.trim(), ...cont].join("\n").trimEnd();
}

export function parseHeaderBlock(bytes: Buffer): Parsed<HeaderBlock> {
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    return { ok: false, reason: "not valid UTF-8" };
  }
  const lines = text.split(/\r\n|\r|\n/);
  const headers: { field: string; lines: string[] }[] = [];
  let body: string | null = null;
  for (const [i, line] of lines.entries()) {
    if (line === "") {
      body = lines.slice(i + 1).join("\n");
      break;
    }
    const last = headers[headers.length - 1];
    if (line.startsWith(" ") || line.startsWith("\t")) {
      if (!last) return { ok: false, reason: "line 1 is indented: a continuation of no header" };
      last.lines.push(line);
      continue;
    }
    const colon = line.indexOf(":");
    const name = colon < 0 ? "" : line.slice(0, colon);
    if (!FIELD_NAME_RE.test(name))
      return { ok: false, reason: `line ${i + 1} is not a "Field: value" header: ${JSON.stringify(line)}` };
    headers.push({ field: canonicalField(name), lines: [line.slice(colon + 1)] });
  }
  const fields: Record<string, string[]> = {};
  for (const h of headers) {
    fields[h.field] ??= [];
    fields[h.field]?.push(unfold(h.field, h.lines));
  }
  return { ok: true, value: { fields, body } };
}

/** Fields whose repetition would leave what the distribution is ambiguous. */
const SINGLE = ["Metadata-Version", "Name", "Version", "Requires-Python"] as const;

const OPERATOR_RE = /^(~=|===|==|!=|<=|>=|<|>)\s*(.*)$/s;
const WILDCARD_BASE_RE = /^v?(?:[0-9]+!)?[0-9]+(?:\.[0-9]+)*$/i;

/** One PEP 440 clause, as packaging's Specifier accepts it. */
function isValidSpecifier(clause: string): boolean {
  const m = OPERATOR_RE.exec(clause);
  if (!m) return false;
  const [, op, version = ""] = m;
  if (op === "===") return /^[^\s;)]*$/.test(version);
  if (version.endsWith(".*"))
    return (op === "==" || op === "!=") && WILDCARD_BASE_RE.test(version.slice(0, -2));
  if (/\s/.test(version)) return false;
  const v = parseVersion(version);
  if (!v) return false;
  if (op === "==" || op === "!=") return true;
  if (v.local !== null) return false;
  return op !== "~=" || v.release.length >= 2;
}

/** A comma-separated specifier set; empty clauses are skipped, as packaging does. */
export function isValidSpecifierSet(spec: string): boolean {
  return spec
    .split(",")
    .map((c) => c.trim())
    .filter((c) => c !== "")
    .every(isValidSpecifier);
}

export function parseCoreMetadata(bytes: Buffer): Parsed<CoreMetadata> {
  const parsed = parseHeaderBlock(bytes);
  if (!parsed.ok) return parsed;
  const { fields, body } = parsed.value;
  const fail = (reason: string): Parsed<CoreMetadata> => ({ ok: false, reason });
  for (const f of SINGLE) if ((fields[f]?.length ?? 0) > 1) return fail(`${f} appears more than once`);
  const one = (f: string): string | null => fields[f]?.[0] ?? null;

  const metadataVersion = one("Metadata-Version");
  if (metadataVersion === null) return fail("no Metadata-Version");
  if (!SUPPORTED_METADATA_VERSIONS.includes(metadataVersion))
    return fail(`Metadata-Version ${JSON.stringify(metadataVersion)} is not supported (1.0 to 2.4)`);
  const name = one("Name");
  if (name === null) return fail("no Name");
  if (!isValidProjectName(name)) return fail(`Name ${JSON.stringify(name)} is not a valid project name`);
  const version = one("Version");
  if (version === null) return fail("no Version");
  if (!parseVersion(version))
    return fail(`Version ${JSON.stringify(version)} is not a valid PEP 440 version`);
  const requiresPython = one("Requires-Python") || null;
  if (requiresPython !== null && !isValidSpecifierSet(requiresPython))
    return fail(`Requires-Python ${JSON.stringify(requiresPython)} is not a valid version specifier set`);

  const description = body?.trim() ? body : (fields.Description?.[0] ?? null);
  return {
    ok: true,
    value: {
      metadataVersion,
      name,
      version,
      summary: one("Summary"),
      requiresPython,
      fields,
      description,
    },
  };
}
