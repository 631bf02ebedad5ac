/**
 * The page writer: `/simple/` and `/pypi/<project>/json` rendered once per change, not once per
 * request. Every representation is written next to its gzip form, with an Apache type map
 * that lets mod_negotiation pick one by Accept and Accept-Encoding; Apache then serves it as a
 * static file. Each file is replaced atomically (temporary file in the same directory, fsync,
 * rename), so a reader sees the old page or the new one, never a torn one.
 */
import { randomBytes } from "node:crypto";
import { mkdirSync, readFileSync, renameSync, statSync, unlinkSync } from "node:fs";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import { fsyncDir, writeNewFile } from "./fsutil.js";
import { compareVersions, parseVersion } from "./pep440.js";
import {
  fileUrl,
  type IndexFile,
  MEDIA,
  renderProjectHtml,
  renderProjectJson,
  renderRootHtml,
  renderRootJson,
} from "./simple.js";

/** A stored file as the JSON API describes it. */
export interface ReleaseFile extends IndexFile {
  readonly packagetype: "bdist_wheel" | "sdist";
  /**
   * Core metadata fields under their canonical names ("Summary", "Requires-Dist",
   * "Project-URL"...), every occurrence in order; null when the metadata was not extracted.
   */
  readonly metadata: Readonly<Record<string, readonly string[]>> | null;
}

export interface ProjectSnapshot {
  /** PEP 503 normalized name: the directory and URL key. */
  readonly project: string;
  readonly displayName: string;
  /** Every served file of the project, yanked ones included (PEP 592 keeps them listed). */
  readonly files: readonly ReleaseFile[];
}

/** File names inside a page directory; the Apache site routes to exactly these. */
export const PAGE_FILES = {
  typeMap: "index.var",
  simple: { text: "index.html", html: "index.v1html", json: "index.v1json" },
  api: "index.json",
} as const;

/** Suffix of each variant's gzip form. */
export const GZIP_SUFFIX = ".gz";

/** Extension-to-type mapping the site declares for the page directories (mod_mime AddType). */
export const PAGE_TYPES: ReadonlyArray<readonly [string, string]> = [
  [".html", "text/html; charset=utf-8"],
  [".v1html", MEDIA.html],
  [".v1json", MEDIA.json],
  [".json", "application/json"],
];

const NORMALIZED_RE = /^[a-z0-9]([a-z0-9-]*[a-z0-9])?$/;

/**
 * The type map for the simple pages. text/html gets the highest source quality so that ties
 * (no Accept, `*\/*`) go to it, as in `negotiate`; `latest` aliases name the v1 files.
 */
function simpleTypeMap(): string {
  const entries: [string, string][] = [
    [PAGE_FILES.simple.text, `${MEDIA.text}; charset=utf-8`],
    [PAGE_FILES.simple.html, `${MEDIA.html}; qs=0.999`],
    [PAGE_FILES.simple.json, `${MEDIA.json}; qs=0.998`],
    [PAGE_FILES.simple.html, "application/vnd.pypi.simple.latest+html; qs=0.997"],
    [PAGE_FILES.simple.json, "application/vnd.pypi.simple.latest+json; qs=0.996"],
  ];
  return typeMap(entries);
}

function apiTypeMap(): string {
  return typeMap([[PAGE_FILES.api, "application/json"]]);
}

/** Each variant twice: as is and gzip-encoded (mod_negotiation prefers identity without Accept-Encoding). */
function typeMap(entries: readonly (readonly [string, string])[]): string {
  const blocks: string[] = [];
  for (const [uri, type] of entries) {
    blocks.push(`URI: ${uri}\nContent-Type: ${type}\n`);
    blocks.push(`URI: ${uri}${GZIP_SUFFIX}\nContent-Type: ${type}\nContent-Encoding: gzip\n`);
  }
  return blocks.join("\n");
}

/** Where the pages live under the package root. */
export function pageDirs(root: string, project?: string): { simple: string; api: string | undefined } {
  if (project === undefined) return { simple: join(root, "simple"), api: undefined };
  if (!NORMALIZED_RE.test(project)) throw new Error(`pages: not a normalized project name: ${project}`);
  return { simple: join(root, "simple", project), api: join(root, "pypi", project) };
}

function sameContent(path: string, data: Buffer): boolean {
  try {
    if (statSync(path).size !== data.length) return false;
    return readFileSync(path).equals(data);
  } catch {
    return false;
  }
}

/**
 * Replace `dir/name` atomically. Unchanged content is left alone, so its ETag (mtime and size)
 * and clients' cached copies stay valid. Returns whether the file was written.
 */
function writeAtomic(dir: string, name: string, data: Buffer): boolean {
  const path = join(dir, name);
  if (sameContent(path, data)) return false;
  const tmp = join(dir, `.${name}.${randomBytes(6).toString("hex")}.tmp`);
  writeNewFile(tmp, data);
  try {
    renameSync(tmp, path);
  } catch (err) {
    unlinkSync(tmp);
    throw err;
  }
  return true;
}

/** Write variants (each with its gzip form) and then the type map naming them; fsync the directory. */
function writePageSet(dir: string, variants: ReadonlyArray<readonly [string, string]>, map: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  let changed = false;
  for (const [name, body] of variants) {
    const raw = Buffer.from(body, "utf8");
    changed = writeAtomic(dir, name, raw) || changed;
    changed = writeAtomic(dir, `${name}${GZIP_SUFFIX}`, gzipSync(raw, { level: 9 })) || changed;
  }
  // Last: the map makes the page visible to Apache, so it must not name files not yet there.
  changed = writeAtomic(dir, PAGE_FILES.typeMap, Buffer.from(map, "utf8")) || changed;
  if (changed) fsyncDir(dir);
}

/** Remove a page set, map first, so the app fallback answers for it again. */
function removePageSet(dir: string, names: readonly string[]): void {
  const all = [PAGE_FILES.typeMap, ...names.flatMap((n) => [n, `${n}${GZIP_SUFFIX}`])];
  let removed = false;
  for (const name of all) {
    try {
      unlinkSync(join(dir, name));
      removed = true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
    }
  }
  if (removed) fsyncDir(dir);
}

const byFilename = (a: IndexFile, b: IndexFile): number =>
  a.filename < b.filename ? -1 : a.filename > b.filename ? 1 : 0;

/**
 * Write `/simple/<project>/` (text/html, PEP 691 HTML and JSON) and `/pypi/<project>/json`,
 * each with its gzip form. Call after every change to the project's files (registration,
 * yank, unyank). A snapshot without files removes the pages, leaving the project to the app.
 */
export function writeProjectPages(root: string, snap: ProjectSnapshot, packagesUrl: string): void {
  const dirs = pageDirs(root, snap.project);
  const api = dirs.api as string;
  const simpleNames = Object.values(PAGE_FILES.simple);
  if (snap.files.length === 0) {
    removePageSet(dirs.simple, simpleNames);
    removePageSet(api, [PAGE_FILES.api]);
    return;
  }
  const files = [...snap.files].sort(byFilename);
  const html = renderProjectHtml(snap.project, files, packagesUrl);
  writePageSet(
    dirs.simple,
    [
      [PAGE_FILES.simple.text, html],
      [PAGE_FILES.simple.html, html],
      [PAGE_FILES.simple.json, renderProjectJson(snap.project, files, packagesUrl)],
    ],
    simpleTypeMap(),
  );
  writePageSet(api, [[PAGE_FILES.api, renderJsonApi({ ...snap, files }, packagesUrl)]], apiTypeMap());
}

/** Write `/simple/`: every project with at least one served file. Call when a project appears. */
export function writeRootPages(root: string, projects: readonly { readonly name: string }[]): void {
  const names = [...new Set(projects.map((p) => p.name))].sort();
  for (const n of names) if (!NORMALIZED_RE.test(n)) throw new Error(`pages: not a normalized name: ${n}`);
  const html = renderRootHtml(names);
  writePageSet(
    pageDirs(root).simple,
    [
      [PAGE_FILES.simple.text, html],
      [PAGE_FILES.simple.html, html],
      [PAGE_FILES.simple.json, renderRootJson(names)],
    ],
    simpleTypeMap(),
  );
}

const isPrerelease = (v: string): boolean => {
  const p = parseVersion(v);
  return p !== null && (p.pre !== null || p.dev !== null);
};

/**
 * The version `info` describes: the highest final release with a file not yanked, else the
 * highest version with one, else (everything yanked) the highest version. Null with no files.
 */
export function latestVersion(files: readonly IndexFile[]): string | null {
  const all = [...new Set(files.map((f) => f.version))];
  const live = [...new Set(files.filter((f) => f.yanked === null).map((f) => f.version))];
  const finals = live.filter((v) => !isPrerelease(v));
  const pool = finals.length > 0 ? finals : live.length > 0 ? live : all;
  return pool.reduce<string | null>(
    (best, v) => (best === null || compareVersions(v, best) > 0 ? v : best),
    null,
  );
}

type Metadata = Readonly<Record<string, readonly string[]>>;

/** Field lookup by canonical name, tolerant of case (metadata field names are case-insensitive). */
function field(meta: Metadata | null, name: string): readonly string[] {
  if (!meta) return [];
  const direct = meta[name];
  if (direct) return direct;
  const lower = name.toLowerCase();
  for (const [k, v] of Object.entries(meta)) if (k.toLowerCase() === lower) return v;
  return [];
}

const first = (meta: Metadata | null, name: string): string | null => field(meta, name)[0] ?? null;
const list = (meta: Metadata | null, name: string): string[] | null => {
  const v = field(meta, name);
  return v.length > 0 ? [...v] : null;
};

/** `Project-URL: Label, https://...` entries as an object, in order. */
function projectUrls(meta: Metadata | null): Record<string, string> | null {
  const out: Record<string, string> = {};
  for (const entry of field(meta, "Project-URL")) {
    const comma = entry.indexOf(",");
    if (comma < 0) continue;
    const label = entry.slice(0, comma).trim();
    const url = entry.slice(comma + 1).trim();
    if (label && url) out[label] = url;
  }
  return Object.keys(out).length > 0 ? out : null;
}

/** The wheel's python tag (`py3`, `cp312.cp313`), or "source" for an sdist, as PyPI reports it. */
function pythonVersion(f: ReleaseFile): string {
  if (f.packagetype === "sdist") return "source";
  const parts = f.filename.slice(0, -".whl".length).split("-");
  return parts[parts.length - 3] ?? "";
}

/** PyPI's `upload_time`: UTC, seconds, no zone. */
const uploadTime = (d: Date): string => d.toISOString().slice(0, 19);

function apiFile(project: string, f: ReleaseFile, packagesUrl: string): Record<string, unknown> {
  return {
    filename: f.filename,
    url: fileUrl(packagesUrl, project, f.filename),
    digests: { sha256: f.sha256 },
    size: f.size,
    packagetype: f.packagetype,
    python_version: pythonVersion(f),
    requires_python: f.requiresPython,
    upload_time: uploadTime(f.uploadTime),
    upload_time_iso_8601: f.uploadTime.toISOString(),
    yanked: f.yanked !== null,
    yanked_reason: f.yanked ? f.yanked : null,
  };
}

/**
 * The PyPI JSON API document for a project: `info` (from the core metadata of the latest
 * version's files), `releases` ({version: [file...]} in PEP 440 order) and `urls` (the files of
 * info.version). Only what this index knows is filled: no download counts, serials or
 * per-release pages.
 */
export function renderJsonApi(snap: ProjectSnapshot, packagesUrl: string): string {
  const files = [...snap.files].sort(byFilename);
  const version = latestVersion(files);
  const current = files.filter((f) => f.version === version);
  // A wheel's METADATA is authoritative; an sdist's PKG-INFO may be partial (Dynamic).
  const source =
    current.find((f) => f.packagetype === "bdist_wheel" && f.metadata) ?? current.find((f) => f.metadata);
  const meta = source?.metadata ?? null;
  const yanked = current.length > 0 && current.every((f) => f.yanked !== null);
  const reason = yanked ? (current.find((f) => f.yanked)?.yanked ?? null) : null;
  const versions = [...new Set(files.map((f) => f.version))].sort(compareVersions);
  const releases: Record<string, Record<string, unknown>[]> = {};
  for (const v of versions)
    releases[v] = files.filter((f) => f.version === v).map((f) => apiFile(snap.project, f, packagesUrl));
  const simpleUrl = `/simple/${encodeURIComponent(snap.project)}/`;
  return JSON.stringify({
    info: {
      name: snap.displayName,
      version,
      summary: first(meta, "Summary"),
      description: first(meta, "Description"),
      description_content_type: first(meta, "Description-Content-Type"),
      keywords: first(meta, "Keywords"),
      author: first(meta, "Author"),
      author_email: first(meta, "Author-email"),
      maintainer: first(meta, "Maintainer"),
      maintainer_email: first(meta, "Maintainer-email"),
      license: first(meta, "License"),
      license_expression: first(meta, "License-Expression"),
      home_page: first(meta, "Home-page"),
      download_url: first(meta, "Download-URL"),
      project_urls: projectUrls(meta),
      platform: first(meta, "Platform"),
      classifiers: [...field(meta, "Classifier")],
      requires_dist: list(meta, "Requires-Dist"),
      provides_extra: list(meta, "Provides-Extra"),
      requires_python:
        first(meta, "Requires-Python") ?? current.find((f) => f.requiresPython)?.requiresPython ?? null,
      dynamic: list(meta, "Dynamic"),
      yanked,
      yanked_reason: reason,
      // This index has no HTML project or release pages; its project page is the simple one.
      package_url: simpleUrl,
      project_url: simpleUrl,
      release_url: null,
    },
    releases,
    urls: current.map((f) => apiFile(snap.project, f, packagesUrl)),
  });
}
