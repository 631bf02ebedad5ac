/**
 * Project names and distribution filenames: PEP 503 normalization, the wheel filename
 * convention (PEP 427/491) and sdists (`<name>-<version>.tar.gz` / `.zip`, PEP 625).
 */

/** PEP 503: runs of `-`, `_` and `.` become one `-`, lowercased. */
export function normalizeName(name: string): string {
  return name.replace(/[-_.]+/g, "-").toLowerCase();
}

/** PEP 508 project name: letters/digits, with `.`, `_`, `-` only inside. */
const NAME_RE = /^([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])$/i;

export function isValidProjectName(name: string): boolean {
  return NAME_RE.test(name);
}

/** PEP 440 version (the `packaging` regex), anchored, case-insensitive. */
const VERSION_RE = new RegExp(
  [
    "^v?",
    "(?:[0-9]+!)?",
    "[0-9]+(?:\\.[0-9]+)*",
    "(?:[-_.]?(?:a|b|c|rc|alpha|beta|pre|preview)[-_.]?[0-9]*)?",
    "(?:-[0-9]+|[-_.]?(?:post|rev|r)[-_.]?[0-9]*)?",
    "(?:[-_.]?dev[-_.]?[0-9]*)?",
    "(?:\\+[a-z0-9]+(?:[-_.][a-z0-9]+)*)?$",
  ].join(""),
  "i",
);

export function isValidVersion(version: string): boolean {
  return VERSION_RE.test(version);
}

export type PackageType = "bdist_wheel" | "sdist";

export interface ParsedFilename {
  readonly filename: string;
  /** The name as spelled in the filename. */
  readonly name: string;
  /** PEP 503 normalized project name: the index key and the directory under packages/. */
  readonly project: string;
  readonly version: string;
  readonly packagetype: PackageType;
  /** Archive format, so content checks know what to look for. */
  readonly archive: "zip" | "tar.gz";
}

export type ParseResult = { ok: true; value: ParsedFilename } | { ok: false; reason: string };

const fail = (reason: string): ParseResult => ({ ok: false, reason });

/** Characters allowed in any stored filename: no separators, no control or shell-special bytes. */
const SAFE_FILENAME_RE = /^[A-Za-z0-9][A-Za-z0-9._+!-]*$/;
/** Wheel components are escaped: no `-` inside a component. */
const WHEEL_TAG_RE = /^[A-Za-z0-9_.]+$/;
const MAX_FILENAME_LENGTH = 255;

/** Parse and validate a distribution filename; reasons are meant for the uploader. */
export function parseFilename(filename: string): ParseResult {
  if (filename.length === 0 || filename.length > MAX_FILENAME_LENGTH)
    return fail(`filename length ${filename.length} is not within 1..${MAX_FILENAME_LENGTH}`);
  if (!SAFE_FILENAME_RE.test(filename))
    return fail("filename has characters outside [A-Za-z0-9._+!-] or does not start with a letter or digit");
  if (filename.includes("..")) return fail('filename contains ".."');
  if (filename.endsWith(".whl")) return parseWheel(filename);
  for (const ext of [".tar.gz", ".zip"] as const) {
    if (filename.endsWith(ext)) return parseSdist(filename, ext);
  }
  return fail("not a wheel (.whl) or an sdist (.tar.gz, .zip)");
}

function parseWheel(filename: string): ParseResult {
  const parts = filename.slice(0, -".whl".length).split("-");
  if (parts.length !== 5 && parts.length !== 6)
    return fail("wheel filename must be name-version[-build]-python-abi-platform.whl");
  const [name, version] = parts as [string, string];
  const tags = parts.slice(-3);
  if (!isValidProjectName(name) || !/^[A-Za-z0-9_.]+$/.test(name))
    return fail(`invalid project name in wheel filename: ${JSON.stringify(name)}`);
  if (!isValidVersion(version))
    return fail(`invalid PEP 440 version in wheel filename: ${JSON.stringify(version)}`);
  if (parts.length === 6 && !/^[0-9][A-Za-z0-9_.]*$/.test(parts[2] as string))
    return fail("wheel build tag must start with a digit");
  if (!tags.every((t) => WHEEL_TAG_RE.test(t))) return fail("invalid wheel compatibility tag");
  return {
    ok: true,
    value: {
      filename,
      name,
      project: normalizeName(name),
      version,
      packagetype: "bdist_wheel",
      archive: "zip",
    },
  };
}

function parseSdist(filename: string, ext: ".tar.gz" | ".zip"): ParseResult {
  const stem = filename.slice(0, -ext.length);
  // Versions carry no "-" once normalized; legacy sdists may have "-" in the name, so split at the last one.
  const dash = stem.lastIndexOf("-");
  if (dash <= 0) return fail("sdist filename must be name-version.tar.gz or name-version.zip");
  const name = stem.slice(0, dash);
  const version = stem.slice(dash + 1);
  if (!isValidProjectName(name))
    return fail(`invalid project name in sdist filename: ${JSON.stringify(name)}`);
  if (!isValidVersion(version))
    return fail(`invalid PEP 440 version in sdist filename: ${JSON.stringify(version)}`);
  return {
    ok: true,
    value: {
      filename,
      name,
      project: normalizeName(name),
      version,
      packagetype: "sdist",
      archive: ext === ".zip" ? "zip" : "tar.gz",
    },
  };
}
