/** The FastCGI request handler: /simple/ (PEP 503 / PEP 691) and /_health. */
import type { AppConfig } from "./config.js";
import { type Db, DbUnavailable } from "./db.js";
import type { FcgiRequest, FcgiResponse } from "./fastcgi.js";
import { checkHealth } from "./health.js";
import { normalizeName } from "./names.js";
import {
  type IndexFile,
  MEDIA,
  negotiate,
  renderProjectHtml,
  renderProjectJson,
  renderRootHtml,
  renderRootJson,
} from "./simple.js";

/** Index pages change on every upload; a short lifetime keeps caches close to the database. */
const CACHE_CONTROL = "max-age=60, public";

const text = (status: number, body: string, extra: Record<string, string> = {}): FcgiResponse => ({
  status,
  headers: { "Content-Type": "text/plain; charset=utf-8", "Cache-Control": "no-store", ...extra },
  body,
});

const redirect = (location: string): FcgiResponse => ({
  status: 301,
  headers: {
    Location: location,
    "Content-Type": "text/plain; charset=utf-8",
    "Cache-Control": CACHE_CONTROL,
  },
  body: `moved to ${location}\n`,
});

interface FileRow {
  filename: string;
  version: string;
  sha256: string;
  size: string;
  uploaded_at: Date;
  requires_python: string | null;
}

/**
 * A short per-worker cache of rendered 200 pages. Pages are already cacheable for
 * CACHE_CONTROL's max-age downstream, so a few seconds here changes no visible freshness
 * guarantee, and it spares Postgres the same 1,000-row query on every hit.
 */
class PageCache {
  private readonly pages = new Map<string, { res: FcgiResponse; expires: number; bytes: number }>();
  private bytes = 0;

  constructor(
    private readonly ttlMs: number,
    private readonly maxBytes: number,
  ) {}

  get(key: string): FcgiResponse | undefined {
    const hit = this.pages.get(key);
    if (!hit) return undefined;
    if (hit.expires < Date.now()) {
      this.delete(key);
      return undefined;
    }
    return hit.res;
  }

  set(key: string, res: FcgiResponse): void {
    if (this.ttlMs <= 0 || res.status !== 200) return;
    const bytes = typeof res.body === "string" ? res.body.length * 2 : res.body.length;
    if (bytes > this.maxBytes) return;
    this.delete(key);
    // Map order is insertion order: evict the oldest until the new page fits.
    for (const k of this.pages.keys()) {
      if (this.bytes + bytes <= this.maxBytes) break;
      this.delete(k);
    }
    this.pages.set(key, { res, expires: Date.now() + this.ttlMs, bytes });
    this.bytes += bytes;
  }

  private delete(key: string): void {
    const hit = this.pages.get(key);
    if (hit) {
      this.bytes -= hit.bytes;
      this.pages.delete(key);
    }
  }
}

export function makeHandler(cfg: AppConfig, db: Db): (req: FcgiRequest) => Promise<FcgiResponse> {
  const cache = new PageCache(cfg.pageCacheSeconds * 1000, 16 * 1024 * 1024);
  return async (req) => {
    const p = req.params;
    const method = p.REQUEST_METHOD ?? "GET";
    const path = `${p.SCRIPT_NAME ?? ""}${p.PATH_INFO ?? ""}`;
    if (method !== "GET" && method !== "HEAD")
      return text(405, "method not allowed\n", { Allow: "GET, HEAD" });
    try {
      if (path === "/_health") {
        const report = await checkHealth(cfg, db);
        return {
          status: report.ok ? 200 : 503,
          headers: { "Content-Type": "application/json", "Cache-Control": "no-store" },
          body: `${JSON.stringify(report)}\n`,
        };
      }
      if (path === "/simple") return redirect("/simple/");
      if (!path.startsWith("/simple/")) return text(404, "not found\n");
      const rest = path.slice("/simple/".length);
      const format = negotiate(p.HTTP_ACCEPT);
      if (rest === "") {
        if (!format) return notAcceptable();
        return await cached(cache, `${format} /`, () => rootPage(db, format));
      }
      const name = rest.endsWith("/") ? rest.slice(0, -1) : rest;
      if (name === "" || name.includes("/")) return text(404, "not found\n");
      const project = normalizeName(name);
      if (project !== name || !rest.endsWith("/")) return redirect(`/simple/${encodeURIComponent(project)}/`);
      if (!format) return notAcceptable();
      return await cached(cache, `${format} ${project}`, () => projectPage(cfg, db, project, format));
    } catch (err) {
      if (err instanceof DbUnavailable)
        return text(503, "index database unavailable\n", { "Retry-After": "5" });
      throw err;
    }
  };
}

async function cached(
  cache: PageCache,
  key: string,
  render: () => Promise<FcgiResponse>,
): Promise<FcgiResponse> {
  const hit = cache.get(key);
  if (hit) return hit;
  const res = await render();
  cache.set(key, res);
  return res;
}

const notAcceptable = (): FcgiResponse =>
  text(406, `acceptable: ${MEDIA.json}, ${MEDIA.html}, ${MEDIA.text}\n`);

function page(format: "json" | "html" | "text", body: string): FcgiResponse {
  const type = format === "text" ? "text/html; charset=utf-8" : MEDIA[format];
  return {
    status: 200,
    headers: { "Content-Type": type, Vary: "Accept", "Cache-Control": CACHE_CONTROL },
    body,
  };
}

async function rootPage(db: Db, format: "json" | "html" | "text"): Promise<FcgiResponse> {
  const { rows } = await db.query<{ name: string }>(
    "SELECT p.name FROM projects p WHERE EXISTS (SELECT 1 FROM files f WHERE f.project = p.name AND f.state = 'ok') ORDER BY p.name",
  );
  const names = rows.map((r) => r.name);
  return page(format, format === "json" ? renderRootJson(names) : renderRootHtml(names));
}

async function projectPage(
  cfg: AppConfig,
  db: Db,
  project: string,
  format: "json" | "html" | "text",
): Promise<FcgiResponse> {
  const { rows } = await db.query<FileRow>(
    "SELECT filename, version, sha256, size, uploaded_at, requires_python FROM files WHERE project = $1 AND state = 'ok' ORDER BY filename",
    [project],
  );
  if (rows.length === 0) return text(404, `no project ${project}\n`);
  const files: IndexFile[] = rows.map((r) => ({
    filename: r.filename,
    version: r.version,
    sha256: r.sha256,
    size: Number(r.size),
    uploadTime: r.uploaded_at,
    requiresPython: r.requires_python,
  }));
  return page(
    format,
    format === "json"
      ? renderProjectJson(project, files, cfg.packagesUrl)
      : renderProjectHtml(project, files, cfg.packagesUrl),
  );
}
