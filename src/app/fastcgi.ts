/**
 * A FastCGI responder (FastCGI 1.0): enough of the protocol for mod_fcgid, which hands the
 * process a listening Unix socket as fd 0 and sends one request per connection.
 */
import { randomBytes } from "node:crypto";
import { closeSync, constants, mkdirSync, openSync, readdirSync, rmSync, statSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { writeAll } from "./fsutil.js";

const VERSION = 1;
const T = {
  BEGIN_REQUEST: 1,
  ABORT_REQUEST: 2,
  END_REQUEST: 3,
  PARAMS: 4,
  STDIN: 5,
  STDOUT: 6,
  STDERR: 7,
  GET_VALUES: 9,
  GET_VALUES_RESULT: 10,
  UNKNOWN_TYPE: 11,
} as const;
const ROLE_RESPONDER = 1;
const FLAG_KEEP_CONN = 1;
const STATUS = { REQUEST_COMPLETE: 0, CANT_MPX_CONN: 1, UNKNOWN_ROLE: 3 } as const;
const MAX_CONTENT = 65535;
/** Bodies up to this stay in memory; larger ones (uploads) are spooled to a file. */
const MEMORY_BODY_BYTES = 256 * 1024;

export interface BodyLimits {
  /** Largest request body accepted; a larger CONTENT_LENGTH is answered 413 before reading it. */
  readonly maxBodyBytes: number;
  /** Directory for spooled bodies (created 0700). */
  readonly spoolDir: string;
}

export interface FcgiRequest {
  readonly params: Readonly<Record<string, string>>;
  /** The body when it was small enough to keep in memory (else empty). */
  readonly body: Buffer;
  /** The spooled body, for large ones; removed after the response. */
  readonly bodyFile?: string;
}

export interface FcgiResponse {
  readonly status: number;
  /** Reason phrase for the status line (one line of printable ASCII); twine prints it. */
  readonly reason?: string;
  readonly headers: Readonly<Record<string, string>>;
  readonly body: string | Buffer;
}

export type Handler = (req: FcgiRequest) => Promise<FcgiResponse>;

const REASONS: Record<number, string> = {
  200: "OK",
  301: "Moved Permanently",
  304: "Not Modified",
  400: "Bad Request",
  401: "Unauthorized",
  403: "Forbidden",
  404: "Not Found",
  405: "Method Not Allowed",
  406: "Not Acceptable",
  409: "Conflict",
  413: "Content Too Large",
  500: "Internal Server Error",
  503: "Service Unavailable",
};

function record(type: number, requestId: number, content: Buffer = Buffer.alloc(0)): Buffer {
  const padding = (8 - (content.length % 8)) % 8;
  const header = Buffer.alloc(8);
  header.writeUInt8(VERSION, 0);
  header.writeUInt8(type, 1);
  header.writeUInt16BE(requestId, 2);
  header.writeUInt16BE(content.length, 4);
  header.writeUInt8(padding, 6);
  return Buffer.concat([header, content, Buffer.alloc(padding)]);
}

/** Split a stream payload into records of at most 65535 bytes. */
function streamRecords(type: number, requestId: number, data: Buffer): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < data.length; i += MAX_CONTENT)
    out.push(record(type, requestId, data.subarray(i, i + MAX_CONTENT)));
  return out;
}

function endRequest(requestId: number, appStatus: number, protocolStatus: number): Buffer {
  const body = Buffer.alloc(8);
  body.writeUInt32BE(appStatus, 0);
  body.writeUInt8(protocolStatus, 4);
  return record(T.END_REQUEST, requestId, body);
}

/** Name-value pairs: lengths are 1 byte below 128, else 4 bytes with the top bit set. */
export function decodeParams(buf: Buffer): Record<string, string> {
  const out: Record<string, string> = {};
  let i = 0;
  const len = (): number => {
    const b = buf.readUInt8(i);
    if (b < 128) {
      i += 1;
      return b;
    }
    const n = buf.readUInt32BE(i) & 0x7fffffff;
    i += 4;
    return n;
  };
  while (i < buf.length) {
    const nl = len();
    const vl = len();
    if (i + nl + vl > buf.length) throw new Error("fastcgi: truncated name-value pair");
    const name = buf.toString("latin1", i, i + nl);
    out[name] = buf.toString("utf8", i + nl, i + nl + vl);
    i += nl + vl;
  }
  return out;
}

export function encodeParams(params: Readonly<Record<string, string>>): Buffer {
  const parts: Buffer[] = [];
  const len = (n: number): Buffer => {
    if (n < 128) return Buffer.from([n]);
    const b = Buffer.alloc(4);
    b.writeUInt32BE((n | 0x80000000) >>> 0);
    return b;
  };
  for (const [k, v] of Object.entries(params)) {
    const kb = Buffer.from(k, "latin1");
    const vb = Buffer.from(v, "utf8");
    parts.push(len(kb.length), len(vb.length), kb, vb);
  }
  return Buffer.concat(parts);
}

/** The reason phrase: printable ASCII only (RFC 9112 allows no more), capped. */
function statusReason(res: FcgiResponse): string {
  const fallback = REASONS[res.status] ?? "Status";
  if (res.reason === undefined) return fallback;
  const clean = res.reason
    .replace(/[^\x20-\x7e]+/g, " ")
    .trim()
    .slice(0, 400);
  return clean === "" ? fallback : clean;
}

/** CGI response head: `Status:` plus headers; header values must not carry line breaks. */
export function cgiHead(res: FcgiResponse, bodyLength: number): Buffer {
  const lines = [`Status: ${res.status} ${statusReason(res)}`];
  for (const [k, v] of Object.entries(res.headers)) {
    if (/[\r\n]/.test(k) || /[\r\n]/.test(v)) throw new Error(`fastcgi: header ${k} has a line break`);
    lines.push(`${k}: ${v}`);
  }
  lines.push(`Content-Length: ${bodyLength}`);
  return Buffer.from(`${lines.join("\r\n")}\r\n\r\n`, "latin1");
}

interface Pending {
  keepConn: boolean;
  params: Buffer[];
  stdin: Buffer[];
  stdinBytes: number;
  paramsDone: boolean;
  started: boolean;
  spool?: { fd: number; path: string };
  refused?: boolean;
}

function contentLength(params: Buffer[]): number {
  try {
    const raw = decodeParams(Buffer.concat(params)).CONTENT_LENGTH ?? "";
    return /^[0-9]+$/.test(raw) ? Number(raw) : 0;
  } catch {
    return 0;
  }
}

function serveConnection(
  socket: Socket,
  handler: Handler,
  log: (msg: string) => void,
  limits: BodyLimits | undefined,
): void {
  const maxBody = limits?.maxBodyBytes ?? MEMORY_BODY_BYTES;
  let buffered: Buffer = Buffer.alloc(0);
  const requests = new Map<number, Pending>();
  let busy = false;

  const write = (chunks: Buffer[]): void => {
    if (!socket.destroyed) socket.write(Buffer.concat(chunks));
  };

  const dispatch = (id: number, req: Pending): void => {
    req.started = true;
    busy = true;
    let params: Record<string, string>;
    try {
      params = decodeParams(Buffer.concat(req.params));
    } catch (err) {
      log(String(err));
      socket.destroy();
      return;
    }
    const body = Buffer.concat(req.stdin);
    const spool = req.spool;
    if (spool) closeSync(spool.fd);
    handler(spool ? { params, body: Buffer.alloc(0), bodyFile: spool.path } : { params, body })
      .catch((err: unknown): FcgiResponse => {
        log(`request failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
        return {
          status: 500,
          headers: { "Content-Type": "text/plain; charset=utf-8" },
          body: "internal error\n",
        };
      })
      .then((res) => {
        const data = typeof res.body === "string" ? Buffer.from(res.body, "utf8") : res.body;
        const head = params.REQUEST_METHOD === "HEAD" ? Buffer.alloc(0) : data;
        write([
          ...streamRecords(T.STDOUT, id, Buffer.concat([cgiHead(res, data.length), head])),
          record(T.STDOUT, id),
          endRequest(id, 0, STATUS.REQUEST_COMPLETE),
        ]);
        requests.delete(id);
        busy = false;
        if (!req.keepConn) socket.end();
      })
      .finally(() => {
        if (spool) rmSync(spool.path, { force: true });
      })
      .catch((err: unknown) => {
        log(`response failed: ${String(err)}`);
        socket.destroy();
      });
  };

  /** 413 without reading the rest; the connection is closed after the answer. */
  const refuseBody = (id: number, req: Pending): void => {
    req.refused = true;
    dropSpool(req);
    const reason = `Request body over the limit of ${maxBody} bytes`;
    const res: FcgiResponse = {
      status: 413,
      reason,
      headers: { "Content-Type": "text/plain; charset=utf-8" },
      body: `${reason}\n`,
    };
    const data = Buffer.from(res.body as string, "utf8");
    write([
      ...streamRecords(T.STDOUT, id, Buffer.concat([cgiHead(res, data.length), data])),
      record(T.STDOUT, id),
      endRequest(id, 0, STATUS.REQUEST_COMPLETE),
    ]);
    requests.delete(id);
    socket.end();
  };

  const onRecord = (type: number, id: number, content: Buffer): void => {
    switch (type) {
      case T.BEGIN_REQUEST: {
        const role = content.readUInt16BE(0);
        const flags = content.readUInt8(2);
        if (role !== ROLE_RESPONDER) {
          write([endRequest(id, 0, STATUS.UNKNOWN_ROLE)]);
          return;
        }
        if (busy || requests.size > 0) {
          write([endRequest(id, 0, STATUS.CANT_MPX_CONN)]);
          return;
        }
        requests.set(id, {
          keepConn: (flags & FLAG_KEEP_CONN) !== 0,
          params: [],
          stdin: [],
          stdinBytes: 0,
          paramsDone: false,
          started: false,
        });
        return;
      }
      case T.PARAMS: {
        const req = requests.get(id);
        if (!req) return;
        if (content.length === 0) req.paramsDone = true;
        else req.params.push(content);
        return;
      }
      case T.STDIN: {
        const req = requests.get(id);
        if (!req || req.started || req.refused) return;
        if (req.stdinBytes === 0 && contentLength(req.params) > maxBody) {
          refuseBody(id, req);
          return;
        }
        if (content.length === 0) {
          dispatch(id, req);
          return;
        }
        req.stdinBytes += content.length;
        if (req.stdinBytes > maxBody) {
          refuseBody(id, req);
          return;
        }
        if (limits && !req.spool && req.stdinBytes > MEMORY_BODY_BYTES) {
          mkdirSync(limits.spoolDir, { recursive: true, mode: 0o700 });
          const path = `${limits.spoolDir}/body-${process.pid}-${randomBytes(8).toString("hex")}`;
          req.spool = {
            fd: openSync(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600),
            path,
          };
          for (const b of req.stdin) writeAll(req.spool.fd, b);
          req.stdin = [];
        }
        if (req.spool) writeAll(req.spool.fd, content);
        else req.stdin.push(content);
        return;
      }
      case T.ABORT_REQUEST: {
        const req = requests.get(id);
        if (req && !req.started) {
          dropSpool(req);
          requests.delete(id);
          write([endRequest(id, 0, STATUS.REQUEST_COMPLETE)]);
        }
        return;
      }
      case T.GET_VALUES: {
        const values = { FCGI_MAX_CONNS: "1", FCGI_MAX_REQS: "1", FCGI_MPXS_CONNS: "0" };
        write([record(T.GET_VALUES_RESULT, 0, encodeParams(values))]);
        return;
      }
      default: {
        const body = Buffer.alloc(8);
        body.writeUInt8(type, 0);
        write([record(T.UNKNOWN_TYPE, 0, body)]);
      }
    }
  };

  socket.on("data", (chunk: Buffer) => {
    buffered = buffered.length === 0 ? chunk : Buffer.concat([buffered, chunk]);
    while (buffered.length >= 8) {
      const version = buffered.readUInt8(0);
      const type = buffered.readUInt8(1);
      const id = buffered.readUInt16BE(2);
      const contentLength = buffered.readUInt16BE(4);
      const padding = buffered.readUInt8(6);
      if (version !== VERSION) {
        log(`fastcgi: unsupported protocol version ${version}`);
        socket.destroy();
        return;
      }
      const total = 8 + contentLength + padding;
      if (buffered.length < total) break;
      const content = buffered.subarray(8, 8 + contentLength);
      buffered = buffered.subarray(total);
      onRecord(type, id, content);
    }
  });
  socket.on("error", (err) => log(`connection error: ${err.message}`));
  // A body cut off mid-way (client gone, Apache timeout) must not leave its spool behind.
  socket.on("close", () => {
    for (const req of requests.values()) if (!req.started) dropSpool(req);
  });
}

function dropSpool(req: Pending): void {
  if (!req.spool) return;
  closeSync(req.spool.fd);
  rmSync(req.spool.path, { force: true });
  req.spool = undefined;
}

/** Spools of processes that were killed mid-request; a live request's spool is never this old. */
export function sweepSpool(dir: string, olderThanMs = 3600_000): void {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return;
  }
  for (const n of names) {
    const path = `${dir}/${n}`;
    try {
      if (Date.now() - statSync(path).mtimeMs > olderThanMs) rmSync(path, { force: true });
    } catch {
      // Gone already: another worker swept it.
    }
  }
}

/** Serve FastCGI on an already-listening socket (fd 0 under mod_fcgid) or on a path/port for tests. */
export function serveFastCgi(
  handler: Handler,
  listen: { fd: number } | { path: string } | { port: number; host: string },
  log: (msg: string) => void,
  limits?: BodyLimits,
): Server {
  if (limits) sweepSpool(limits.spoolDir);
  const server = createServer((socket) => serveConnection(socket, handler, log, limits));
  server.on("error", (err) => log(`server error: ${err.message}`));
  server.listen(listen);
  return server;
}
