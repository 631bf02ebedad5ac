/**
 * The FastCGI request handler: /simple/ (PEP 503 / PEP 691), /pypi/<project>/json and /_health.
 * Apache serves the index pages as static files (src/app/pages.ts); requests reach this handler
 * only when no page exists: names that are not normalized (redirects), unknown projects (404),
 * and projects whose pages are not written yet, which are rendered here the same way.
 */

import { createHash } from "node:crypto";
import { ORIGIN_CACHE_CONTROL } from "../edge.js";
import type { AppConfig } from "./config.js";
import { type Db, DbUnavailable } from "./db.js";
import type { FcgiRequest, FcgiResponse } from "./fastcgi.js";
import { checkHealth } from "./health.js";
import { normalizeName } from "./names.js";
import { renderJsonApi } from "./pages.js";
import { loadSnapshot, rootProjects } from "./publish.js";
import {
  type Format,
  formatFromQuery,
  MEDIA,
  negotiate,
  renderProjectHtml,
  renderProjectJson,
  renderRootHtml,
  renderRootJson,
} from "./simple.js";
import { handleUpload } from "./upload.js";

/** Index pages change on every upload; a short lifetime keeps caches close to the database. */
const CACHE_CONTROL = ORIGIN_CACHE_CONTROL.index;

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

/** The health report with its detail (addresses, standby names, lag): Apache lets only the balancers and the node itself reach it. */
export const HEALTH_DETAIL_PATH = "/_health/detail";

export function makeHandler(
  cfg: AppConfig,
  db: Db,
  log: (msg: string) => void = () => {},
): (req: FcgiRequest) => Promise<FcgiResponse> {
  return async (req) => {
    const p = req.params;
    const method = p.REQUEST_METHOD ?? "GET";
    const path = `${p.SCRIPT_NAME ?? ""}${p.PATH_INFO ?? ""}`;
    try {
      if (path === "/legacy/" || path === "/legacy") return await handleUpload(cfg, db, log, req);
      if (method !== "GET" && method !== "HEAD")
        return text(405, "method not allowed\n", { Allow: "GET, HEAD" });
      if (path === "/_health" || path === HEALTH_DETAIL_PATH) {
        const report = await checkHealth(cfg, db);
        const status = report.ok ? 200 : 503;
        // The public answer is the status alone; the layout stays private.
        if (path === "/_health") return text(status, report.ok ? "ok\n" : "unavailable\n");
        return {
          status,
          headers: { "Content-Type": "application/json", "Cache-Control": "no-store" },
          body: `${JSON.stringify(report)}\n`,
        };
      }
      if (path.startsWith("/pypi/")) return await jsonApi(cfg, db, req, path);
      if (path === "/simple") return redirect("/simple/");
      if (!path.startsWith("/simple/")) return text(404, "not found\n");
      const rest = path.slice("/simple/".length);
      // PEP 691: ?format= overrides Accept.
      const query = formatFromQuery(p.QUERY_STRING);
      const format = query === undefined ? negotiate(p.HTTP_ACCEPT) : query;
      if (rest === "") {
        if (!format) return notAcceptable();
        const names = await db.with((c) => rootProjects(c));
        return page(req, format, format === "json" ? renderRootJson(names) : renderRootHtml(names));
      }
      const name = rest.endsWith("/") ? rest.slice(0, -1) : rest;
      if (name === "" || name.includes("/")) return text(404, "not found\n");
      const project = normalizeName(name);
      if (project !== name || !rest.endsWith("/")) return redirect(`/simple/${encodeURIComponent(project)}/`);
      if (!format) return notAcceptable();
      const snap = await db.with((c) => loadSnapshot(c, project));
      if (!snap || snap.files.length === 0) return text(404, `no project ${project}\n`);
      return page(
        req,
        format,
        format === "json"
          ? renderProjectJson(project, snap.files, cfg.packagesUrl)
          : renderProjectHtml(project, snap.files, cfg.packagesUrl),
      );
    } catch (err) {
      if (err instanceof DbUnavailable)
        return text(503, "index database unavailable\n", { "Retry-After": "5" });
      throw err;
    }
  };
}

/** `/pypi/<project>/json`: redirect to the normalized name, else render as the page writer does. */
async function jsonApi(cfg: AppConfig, db: Db, req: FcgiRequest, path: string): Promise<FcgiResponse> {
  const m = /^\/pypi\/([^/]+)\/json\/?$/.exec(path);
  if (!m) return text(404, "not found\n");
  const name = m[1] as string;
  const project = normalizeName(name);
  if (project !== name || path.endsWith("/")) return redirect(`/pypi/${encodeURIComponent(project)}/json`);
  const snap = await db.with((c) => loadSnapshot(c, project));
  if (!snap || snap.files.length === 0) return text(404, `no project ${project}\n`);
  return withEtag(req, {
    status: 200,
    headers: { "Content-Type": "application/json", "Cache-Control": CACHE_CONTROL },
    body: renderJsonApi(snap, cfg.packagesUrl),
  });
}

const notAcceptable = (): FcgiResponse =>
  text(406, `acceptable: ${MEDIA.json}, ${MEDIA.html}, ${MEDIA.text}\n`);

function page(req: FcgiRequest, format: Format, body: string): FcgiResponse {
  const type = format === "text" ? "text/html; charset=utf-8" : MEDIA[format];
  return withEtag(req, {
    status: 200,
    headers: { "Content-Type": type, Vary: "Accept", "Cache-Control": CACHE_CONTROL },
    body,
  });
}

/** A strong ETag from the body; a matching If-None-Match gets 304 without it. */
function withEtag(req: FcgiRequest, res: FcgiResponse): FcgiResponse {
  const etag = `"${createHash("sha256").update(res.body).digest("hex").slice(0, 32)}"`;
  const headers = { ...res.headers, ETag: etag };
  const inm = req.params.HTTP_IF_NONE_MATCH;
  if (inm !== undefined) {
    const tags = inm.split(",").map((t) => t.trim().replace(/^W\//, ""));
    if (tags.includes(etag) || tags.includes("*")) return { status: 304, headers, body: "" };
  }
  return { ...res, headers };
}
