/**
 * The content check for a staged upload: the archive is sound and within limits, its layout is
 * that of a wheel (PEP 427/491) or an sdist (PEP 625 and legacy .zip), and the metadata inside
 * names the same project and version as the filename.
 */
import {
  type Archive,
  ArchiveError,
  type ArchiveLimits,
  DEFAULT_ARCHIVE_LIMITS,
  type Member,
  openTarGz,
  openZip,
} from "./archive.js";
import { type CoreMetadata, parseCoreMetadata, parseHeaderBlock } from "./metadata.js";
import { normalizeName, type ParsedFilename } from "./names.js";
import { versionKey } from "./pep440.js";

export interface Inspected {
  readonly metadata: CoreMetadata;
  /** Raw METADATA (wheel) or PKG-INFO (sdist) bytes, served as `<file>.metadata` (PEP 658). */
  readonly coreMetadata: Buffer;
  readonly requiresPython: string | null;
}

export type InspectResult = { ok: true; value: Inspected } | { ok: false; reason: string };

/** A layout or metadata problem: becomes the reason, like an ArchiveError. */
class Invalid extends Error {}

const quote = (s: string): string => JSON.stringify(s);

/** `<name>-<version>` (split at the last dash) naming the filename's project and version. */
function matchesFilename(stem: string, f: ParsedFilename): boolean {
  const dash = stem.lastIndexOf("-");
  if (dash <= 0) return false;
  const key = versionKey(stem.slice(dash + 1));
  return normalizeName(stem.slice(0, dash)) === f.project && key !== null && key === versionKey(f.version);
}

/** Names in the top-level directory, files and directories alike. */
function topLevel(members: readonly Member[]): Set<string> {
  return new Set(members.map((m) => m.name.split("/", 1)[0] as string));
}

function isFile(members: readonly Member[], name: string): boolean {
  return members.some((m) => m.name === name && !m.isDir);
}

type Found = { metadata: CoreMetadata; raw: Buffer };

async function readMetadata(
  archive: Archive,
  path: string,
  label: string,
  f: ParsedFilename,
  limits: ArchiveLimits,
): Promise<Found> {
  const raw = await archive.read(path, limits.maxMetadataBytes);
  const parsed = parseCoreMetadata(raw);
  if (!parsed.ok) throw new Invalid(`invalid ${label}: ${parsed.reason}`);
  const m = parsed.value;
  if (normalizeName(m.name) !== f.project || versionKey(m.version) !== versionKey(f.version))
    throw new Invalid(
      `${label} says "${m.name} ${m.version}" but the filename says "${f.name} ${f.version}"`,
    );
  return { metadata: m, raw };
}

async function inspectWheel(archive: Archive, f: ParsedFilename, limits: ArchiveLimits): Promise<Found> {
  const { members } = archive;
  const infos = [...topLevel(members)].filter((n) => n.endsWith(".dist-info")).sort();
  if (infos.length === 0) throw new Invalid("wheel has no .dist-info directory");
  if (infos.length > 1)
    throw new Invalid(`wheel has ${infos.length} .dist-info directories: ${infos.join(", ")}`);
  const info = infos[0] as string;
  if (isFile(members, info)) throw new Invalid(`${info} is a file, not a directory`);
  for (const required of ["METADATA", "WHEEL", "RECORD"])
    if (!isFile(members, `${info}/${required}`)) throw new Invalid(`wheel has no ${info}/${required}`);

  const found = await readMetadata(archive, `${info}/METADATA`, "METADATA", f, limits);
  // Checked after METADATA: a renamed wheel is best explained by what its metadata says.
  if (!matchesFilename(info.slice(0, -".dist-info".length), f))
    throw new Invalid(`wheel's ${info} directory does not match the filename "${f.name} ${f.version}"`);
  const wheel = parseHeaderBlock(await archive.read(`${info}/WHEEL`, limits.maxMetadataBytes));
  if (!wheel.ok) throw new Invalid(`invalid WHEEL: ${wheel.reason}`);
  const wheelVersion = wheel.value.fields["Wheel-Version"];
  if (wheelVersion?.length !== 1) throw new Invalid("WHEEL must have exactly one Wheel-Version");
  if (!/^1\.[0-9]+$/.test(wheelVersion[0] as string))
    throw new Invalid(`WHEEL says Wheel-Version ${quote(wheelVersion[0] as string)}; only 1.x is supported`);
  return found;
}

async function inspectSdist(archive: Archive, f: ParsedFilename, limits: ArchiveLimits): Promise<Found> {
  const { members } = archive;
  const tops = [...topLevel(members)].sort();
  if (tops.length !== 1)
    throw new Invalid(
      tops.length === 0
        ? "sdist is empty"
        : `sdist must have a single top-level directory, not ${tops.length} entries: ${tops.slice(0, 5).join(", ")}`,
    );
  const top = tops[0] as string;
  if (isFile(members, top)) throw new Invalid(`sdist's only top-level entry ${quote(top)} is a file`);
  if (!isFile(members, `${top}/PKG-INFO`)) throw new Invalid(`sdist has no ${top}/PKG-INFO`);
  const found = await readMetadata(archive, `${top}/PKG-INFO`, "PKG-INFO", f, limits);
  if (!matchesFilename(top, f))
    throw new Invalid(
      `sdist's top-level directory ${quote(top)} does not match the filename "${f.name} ${f.version}"`,
    );
  return found;
}

/**
 * Check a staged distribution. Problems with its content come back as a reason; only I/O
 * errors (the file vanished, EIO) throw.
 */
export async function inspectDistribution(
  path: string,
  f: ParsedFilename,
  limits: ArchiveLimits = DEFAULT_ARCHIVE_LIMITS,
): Promise<InspectResult> {
  try {
    const archive = f.archive === "zip" ? await openZip(path, limits) : await openTarGz(path, limits);
    const { metadata, raw } =
      f.packagetype === "bdist_wheel"
        ? await inspectWheel(archive, f, limits)
        : await inspectSdist(archive, f, limits);
    // Last: every member inflates within the limits and matches its size and CRC.
    await archive.verifyAll();
    return { ok: true, value: { metadata, coreMetadata: raw, requiresPython: metadata.requiresPython } };
  } catch (err) {
    if (err instanceof ArchiveError || err instanceof Invalid) return { ok: false, reason: err.message };
    throw err;
  }
}
