/** The simple repository API: PEP 503 HTML and PEP 691 JSON (api-version 1.1, PEP 700), and negotiation. */

export const MEDIA = {
  json: "application/vnd.pypi.simple.v1+json",
  html: "application/vnd.pypi.simple.v1+html",
  text: "text/html",
} as const;

export type Format = keyof typeof MEDIA;

/** Served API version: 1.1 adds `versions`, `size` and `upload-time` (PEP 700). */
export const API_VERSION = "1.1";

export interface IndexFile {
  readonly filename: string;
  readonly version: string;
  readonly sha256: string;
  readonly size: number;
  readonly uploadTime: Date;
  readonly requiresPython: string | null;
  /** PEP 592: null when not yanked; otherwise the reason, "" when none was given. */
  readonly yanked: string | null;
  /** PEP 658: sha256 of the file's core metadata, served at `<file url>.metadata`; null if none. */
  readonly coreMetadataSha256: string | null;
}

/** Escape text and attribute values for HTML. The one escaping helper for HTML output. */
export function htmlEscape(s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** URL of a stored file: `<packagesUrl><project>/<filename>`, each segment percent-encoded. */
export function fileUrl(packagesUrl: string, project: string, filename: string): string {
  return `${packagesUrl}${encodeURIComponent(project)}/${encodeURIComponent(filename)}`;
}

interface MediaRange {
  readonly type: string;
  readonly q: number;
}

function parseAccept(header: string): MediaRange[] {
  const ranges: MediaRange[] = [];
  for (const part of header.split(",")) {
    const [type, ...params] = part.split(";").map((s) => s.trim());
    if (!type) continue;
    let q = 1;
    for (const p of params) {
      const m = /^q=([0-9.]+)$/i.exec(p);
      if (m) q = Math.min(1, Math.max(0, Number(m[1])));
    }
    if (!Number.isNaN(q)) ranges.push({ type: type.toLowerCase(), q });
  }
  return ranges;
}

/** Quality and specificity of the most specific range matching a media type (RFC 9110). */
function qualityOf(ranges: readonly MediaRange[], media: string): { q: number; spec: number } {
  const [major] = media.split("/");
  let best = { q: 0, spec: -1 };
  for (const r of ranges) {
    const spec = r.type === media ? 2 : r.type === `${major}/*` ? 1 : r.type === "*/*" ? 0 : -1;
    if (spec > best.spec) best = { q: r.q, spec };
  }
  return best;
}

/**
 * Pick the response format for an Accept header (PEP 691). `latest` aliases count as v1.
 * Highest quality wins, then the more specific match; remaining ties go to text/html, which
 * every client understands. Null means 406.
 */
export function negotiate(accept: string | undefined): Format | null {
  if (!accept || accept.trim() === "") return "text";
  const ranges = parseAccept(accept).map((r) => ({
    ...r,
    type: r.type.replace("application/vnd.pypi.simple.latest+", "application/vnd.pypi.simple.v1+"),
  }));
  const order: Format[] = ["text", "html", "json"];
  let chosen: Format | null = null;
  let best = { q: 0, spec: -1 };
  for (const f of order) {
    const m = qualityOf(ranges, MEDIA[f]);
    if (m.q > best.q || (m.q === best.q && m.q > 0 && m.spec > best.spec)) {
      best = m;
      chosen = f;
    }
  }
  return chosen;
}

/**
 * PEP 691's optional `?format=<media type>`, which overrides Accept. Undefined when the query has
 * no `format`; null when it names a type this index does not serve (406). `+` is taken
 * literally: clients that do not percent-encode it mean the media type, not a space.
 */
export function formatFromQuery(query: string | undefined): Format | null | undefined {
  if (!query) return undefined;
  for (const pair of query.split("&")) {
    if (!pair.startsWith("format=")) continue;
    let value: string;
    try {
      value = decodeURIComponent(pair.slice("format=".length)).trim().toLowerCase();
    } catch {
      return null;
    }
    value = value.replace("application/vnd.pypi.simple.latest+", "application/vnd.pypi.simple.v1+");
    const found = (Object.keys(MEDIA) as Format[]).find((f) => MEDIA[f] === value);
    return found ?? null;
  }
  return undefined;
}

const htmlHead = (title: string): string[] => [
  "<!DOCTYPE html>",
  "<html>",
  "  <head>",
  `    <meta name="pypi:repository-version" content="${htmlEscape(API_VERSION)}">`,
  `    <title>${htmlEscape(title)}</title>`,
  "  </head>",
  "  <body>",
];

/** `/simple/`: one anchor per project, linking to its normalized URL. */
export function renderRootHtml(projects: readonly string[]): string {
  const lines = [...htmlHead("Simple index")];
  for (const p of projects)
    lines.push(`    <a href="${htmlEscape(`${encodeURIComponent(p)}/`)}">${htmlEscape(p)}</a>`);
  lines.push("  </body>", "</html>");
  return `${lines.join("\n")}\n`;
}

export function renderRootJson(projects: readonly string[]): string {
  return JSON.stringify({
    meta: { "api-version": API_VERSION },
    projects: projects.map((name) => ({ name })),
  });
}

/**
 * `/simple/<project>/`: one anchor per file, with the sha256 fragment, data-requires-python,
 * data-yanked (PEP 592) and the core metadata hash under both its PEP 714 and PEP 658 names.
 */
export function renderProjectHtml(project: string, files: readonly IndexFile[], packagesUrl: string): string {
  const lines = [...htmlHead(`Links for ${project}`), `    <h1>Links for ${htmlEscape(project)}</h1>`];
  for (const f of files) {
    const href = `${fileUrl(packagesUrl, project, f.filename)}#sha256=${f.sha256}`;
    let attrs = "";
    if (f.requiresPython) attrs += ` data-requires-python="${htmlEscape(f.requiresPython)}"`;
    if (f.yanked !== null) attrs += ` data-yanked="${htmlEscape(f.yanked)}"`;
    if (f.coreMetadataSha256) {
      const meta = htmlEscape(`sha256=${f.coreMetadataSha256}`);
      attrs += ` data-core-metadata="${meta}" data-dist-info-metadata="${meta}"`;
    }
    lines.push(`    <a href="${htmlEscape(href)}"${attrs}>${htmlEscape(f.filename)}</a><br/>`);
  }
  lines.push("  </body>", "</html>");
  return `${lines.join("\n")}\n`;
}

/** Versions in first-upload order, without duplicates. */
function versionsOf(files: readonly IndexFile[]): string[] {
  return [...new Set(files.map((f) => f.version))];
}

export function renderProjectJson(project: string, files: readonly IndexFile[], packagesUrl: string): string {
  return JSON.stringify({
    meta: { "api-version": API_VERSION },
    name: project,
    versions: versionsOf([...files].sort((a, b) => a.uploadTime.getTime() - b.uploadTime.getTime())),
    files: files.map((f) => ({
      filename: f.filename,
      url: fileUrl(packagesUrl, project, f.filename),
      hashes: { sha256: f.sha256 },
      ...(f.requiresPython ? { "requires-python": f.requiresPython } : {}),
      size: f.size,
      "upload-time": f.uploadTime.toISOString(),
      yanked: f.yanked === null ? false : f.yanked === "" ? true : f.yanked,
      // PEP 714: only the new key in JSON. pip 22.3-23.0 (Debian 12's pip) crash on the old
      // `dist-info-metadata` key holding a dict; the HTML attribute is a string and safe.
      ...(f.coreMetadataSha256 ? { "core-metadata": { sha256: f.coreMetadataSha256 } } : {}),
    })),
  });
}
