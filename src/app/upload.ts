/**
 * The upload API twine, flit, poetry and uv speak: `POST /legacy/` with multipart form data,
 * `:action=file_upload`, protocol_version 1, HTTP Basic auth as `__token__` with an API token.
 * Refusals carry their reason in the status line too, because that is what twine prints.
 */
import { createHash } from "node:crypto";
import { closeSync, constants, createReadStream, existsSync, openSync, unlinkSync } from "node:fs";
import { UPLOAD_FORM_OVERHEAD_BYTES } from "../layout.js";
import type { AppConfig } from "./config.js";
import type { Db } from "./db.js";
import type { FcgiRequest, FcgiResponse } from "./fastcgi.js";
import { writeAll } from "./fsutil.js";
import { boundaryOf, MultipartError, MultipartParser, type PartSink } from "./multipart.js";
import { parseFilename } from "./names.js";
import { registerDistribution, stagingPath } from "./registration.js";
import { authenticate, TOKEN_USER } from "./tokens.js";

class Refusal extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

/** A response whose status line and body both carry the reason. */
export function refusal(status: number, reason: string, extra: Record<string, string> = {}): FcgiResponse {
  return {
    status,
    reason,
    headers: { "Content-Type": "text/plain; charset=utf-8", "Cache-Control": "no-store", ...extra },
    body: `${reason}\n`,
  };
}

function basicAuth(header: string | undefined): { user: string; password: string } | null {
  const m = /^Basic\s+([A-Za-z0-9+/=]+)\s*$/i.exec(header ?? "");
  if (!m) return null;
  const text = Buffer.from(m[1] as string, "base64").toString("utf8");
  const colon = text.indexOf(":");
  return colon < 0 ? null : { user: text.slice(0, colon), password: text.slice(colon + 1) };
}

interface ParsedForm {
  readonly fields: Map<string, string>;
  readonly file: { filename: string; path: string; size: number; sha256: string; md5: string } | null;
}

/** Parse the body (in memory or spooled to a file), writing the `content` part to staging. */
async function parseForm(cfg: AppConfig, req: FcgiRequest, boundary: string): Promise<ParsedForm> {
  const fields = new Map<string, string>();
  let fieldBytes = 0;
  let file: ParsedForm["file"] = null;
  let open: { fd: number; path: string } | null = null;
  const parser = new MultipartParser(boundary, (h): PartSink => {
    if (h.name === "content") {
      if (file || open) throw new Refusal(400, "More than one file in the upload");
      if (!h.filename) throw new Refusal(400, "The content part has no filename");
      const path = stagingPath(cfg.packageRoot);
      const fd = openSync(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o644);
      open = { fd, path };
      const sha = createHash("sha256");
      const md5 = createHash("md5");
      let size = 0;
      const filename = h.filename;
      return {
        data(chunk) {
          size += chunk.length;
          if (size > cfg.maxFileBytes)
            throw new Refusal(413, `File too large: over the limit of ${cfg.maxFileBytes} bytes`);
          sha.update(chunk);
          md5.update(chunk);
          writeAll(fd, chunk);
        },
        end() {
          closeSync(fd);
          file = { filename, path, size, sha256: sha.digest("hex"), md5: md5.digest("hex") };
          open = null;
        },
      };
    }
    const parts: Buffer[] = [];
    return {
      data(chunk) {
        fieldBytes += chunk.length;
        if (fieldBytes > UPLOAD_FORM_OVERHEAD_BYTES)
          throw new Refusal(413, `Form fields exceed ${UPLOAD_FORM_OVERHEAD_BYTES} bytes`);
        parts.push(chunk);
      },
      end() {
        // Repeated fields (classifiers, requires_dist) are not needed here; the first one is kept.
        if (!fields.has(h.name)) fields.set(h.name, Buffer.concat(parts).toString("utf8"));
      },
    };
  });
  try {
    if (req.bodyFile) {
      for await (const chunk of createReadStream(req.bodyFile, { highWaterMark: 256 * 1024 }))
        parser.write(chunk as Buffer);
    } else {
      parser.write(req.body);
    }
    parser.end();
  } catch (err) {
    const pending = open as { fd: number; path: string } | null;
    if (pending) {
      closeSync(pending.fd);
      unlinkSync(pending.path);
    }
    const done = file as ParsedForm["file"];
    if (done && existsSync(done.path)) unlinkSync(done.path);
    if (err instanceof MultipartError) throw new Refusal(400, `Malformed upload: ${err.message}`);
    throw err;
  }
  return { fields, file };
}

/** Checks of the form against the file, in the order twine users can act on. */
function checkForm(form: ParsedForm): string | null {
  const f = form.fields;
  if (f.get(":action") !== "file_upload")
    return `Unsupported :action ${JSON.stringify(f.get(":action") ?? "")}; only file_upload is supported`;
  if (f.get("protocol_version") !== "1")
    return "Unknown protocol version; only protocol_version 1 is supported";
  const file = form.file;
  if (!file) return "Upload has no file (the content part is missing)";
  const sha = f.get("sha256_digest")?.toLowerCase();
  const md5 = f.get("md5_digest")?.toLowerCase();
  if (!sha && !md5) return "Upload has no digest: send sha256_digest";
  if (sha && sha !== file.sha256) return "The sha256_digest does not match the file's contents";
  if (md5 && md5 !== file.md5) return "The md5_digest does not match the file's contents";
  const parsed = parseFilename(file.filename);
  if (!parsed.ok) return `Invalid distribution filename ${JSON.stringify(file.filename)}: ${parsed.reason}`;
  // The form's name and version are not compared here: the archive's own metadata is checked
  // against the filename by the registration, which names the real mismatch.
  const filetype = f.get("filetype");
  if (filetype !== undefined && filetype !== parsed.value.packagetype)
    return `The form's filetype ${JSON.stringify(filetype)} does not match the filename ${file.filename}`;
  return null;
}

export async function handleUpload(
  cfg: AppConfig,
  db: Db,
  log: (msg: string) => void,
  req: FcgiRequest,
): Promise<FcgiResponse> {
  const p = req.params;
  if (p.REQUEST_METHOD !== "POST") return refusal(405, "Uploads are POST requests", { Allow: "POST" });
  const credentials = basicAuth(p.HTTP_AUTHORIZATION);
  if (!credentials)
    return refusal(401, "Authentication required: user __token__ with an API token", {
      "WWW-Authenticate": 'Basic realm="pypi upload"',
    });
  if (credentials.user !== TOKEN_USER)
    return refusal(
      403,
      "Only API tokens are accepted: use the user name __token__ and the token as the password",
    );
  let boundary: string;
  try {
    boundary = boundaryOf(p.CONTENT_TYPE);
  } catch (err) {
    return refusal(400, (err as Error).message);
  }
  const principal = await db.with((c) => authenticate(c, credentials.password));
  if (!principal) return refusal(403, "Invalid or revoked API token");

  let form: ParsedForm;
  try {
    form = await parseForm(cfg, req, boundary);
  } catch (err) {
    if (err instanceof Refusal) {
      log(`upload: refused for ${principal.account}: ${err.message}`);
      return refusal(err.status, err.message);
    }
    throw err;
  }
  const file = form.file;
  try {
    const problem = checkForm(form);
    if (problem || !file) {
      log(`upload: refused ${file?.filename ?? "(no file)"} from ${principal.account}: ${problem}`);
      return refusal(400, problem ?? "Upload has no file");
    }
    const outcome = await db.with((client) =>
      registerDistribution(
        { cfg, client, log },
        {
          account: principal.account,
          via: "http",
          filename: file.filename,
          staged: { path: file.path, sha256: file.sha256, size: file.size },
          allowedProjects: principal.projects,
        },
      ),
    );
    if (!outcome.ok) {
      log(`upload: refused ${file.filename} from ${principal.account}: ${outcome.reason}`);
      return refusal(outcome.status, outcome.reason);
    }
    return {
      status: 200,
      headers: { "Content-Type": "text/plain; charset=utf-8", "Cache-Control": "no-store" },
      body: "OK\n",
    };
  } finally {
    if (file && existsSync(file.path)) unlinkSync(file.path);
  }
}
