/**
 * A streaming multipart/form-data parser (RFC 7578): the upload API's file part is written to
 * disk as it arrives, so a body is never held in memory whole.
 */

export class MultipartError extends Error {}

export interface PartHeaders {
  readonly name: string;
  readonly filename: string | null;
  readonly contentType: string | null;
}

export interface PartSink {
  data(chunk: Buffer): void;
  end(): void;
}

export interface MultipartLimits {
  /** Header block of one part. */
  readonly maxHeaderBytes: number;
  readonly maxParts: number;
}

export const DEFAULT_MULTIPART_LIMITS: MultipartLimits = { maxHeaderBytes: 16 * 1024, maxParts: 200 };

/** The boundary parameter of a multipart/form-data Content-Type. */
export function boundaryOf(contentType: string | undefined): string {
  const [type, ...params] = splitParams(contentType ?? "");
  if (type?.toLowerCase() !== "multipart/form-data")
    throw new MultipartError(`expected Content-Type multipart/form-data, got ${JSON.stringify(type ?? "")}`);
  const boundary = params.find(([k]) => k === "boundary")?.[1];
  // RFC 2046: 1 to 70 characters.
  if (!boundary || boundary.length > 70)
    throw new MultipartError("multipart/form-data without a valid boundary");
  return boundary;
}

/** `type; k=v; k="quoted \" v"` → [type, [k, v]...]; parameter names lowercased. */
function splitParams(header: string): [string | undefined, ...[string, string][]] {
  const out: [string, string][] = [];
  let i = header.indexOf(";");
  const head = (i < 0 ? header : header.slice(0, i)).trim();
  while (i >= 0 && i < header.length) {
    i++;
    const eq = header.indexOf("=", i);
    if (eq < 0) break;
    const key = header.slice(i, eq).trim().toLowerCase();
    let j = eq + 1;
    while (header[j] === " ") j++;
    let value = "";
    if (header[j] === '"') {
      j++;
      while (j < header.length && header[j] !== '"') {
        if (header[j] === "\\" && j + 1 < header.length) j++;
        value += header[j];
        j++;
      }
      j = header.indexOf(";", j);
    } else {
      const end = header.indexOf(";", j);
      value = (end < 0 ? header.slice(j) : header.slice(j, end)).trim();
      j = end;
    }
    out.push([key, value]);
    i = j;
  }
  return [head === "" ? undefined : head, ...out];
}

function parsePartHeaders(block: string): PartHeaders {
  let disposition: string | undefined;
  let contentType: string | null = null;
  for (const line of block.split("\r\n")) {
    const colon = line.indexOf(":");
    if (colon <= 0)
      throw new MultipartError(`malformed part header line: ${JSON.stringify(line.slice(0, 80))}`);
    const key = line.slice(0, colon).trim().toLowerCase();
    const value = line.slice(colon + 1).trim();
    if (key === "content-disposition") disposition = value;
    else if (key === "content-type") contentType = value;
  }
  const [type, ...params] = splitParams(disposition ?? "");
  if (type?.toLowerCase() !== "form-data")
    throw new MultipartError("part without Content-Disposition: form-data");
  const name = params.find(([k]) => k === "name")?.[1];
  if (name === undefined) throw new MultipartError("form-data part without a name");
  const filename = params.find(([k]) => k === "filename")?.[1] ?? null;
  return { name, filename, contentType };
}

/** Transport padding allowed after a boundary (RFC 2046 allows some; nobody sends more than a few bytes). */
const MAX_PADDING = 1024;

type State = "preamble" | "headers" | "body" | "after-delimiter" | "done";

/**
 * Feed bytes with `write`, then call `end`. Each part's headers go to `onPart`, whose sink
 * receives the part's bytes; a sink may throw to abort (the error propagates from `write`).
 */
export class MultipartParser {
  private readonly delimiter: Buffer;
  private buf: Buffer = Buffer.alloc(0);
  private state: State = "preamble";
  private sink: PartSink | undefined;
  private parts = 0;

  constructor(
    boundary: string,
    private readonly onPart: (headers: PartHeaders) => PartSink,
    private readonly limits: MultipartLimits = DEFAULT_MULTIPART_LIMITS,
  ) {
    this.delimiter = Buffer.from(`\r\n--${boundary}`, "latin1");
    // The first delimiter may start the body without a preceding CRLF.
    this.buf = Buffer.from("\r\n", "latin1");
  }

  write(chunk: Buffer): void {
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    for (;;) {
      if (!this.step()) return;
    }
  }

  end(): void {
    if (this.state !== "done") throw new MultipartError("multipart body ended before its closing boundary");
  }

  /** One transition; false when more input is needed. */
  private step(): boolean {
    switch (this.state) {
      case "preamble": {
        const at = this.buf.indexOf(this.delimiter);
        if (at < 0) {
          this.buf = this.buf.subarray(Math.max(0, this.buf.length - this.delimiter.length));
          return false;
        }
        this.buf = this.buf.subarray(at + this.delimiter.length);
        this.state = "after-delimiter";
        return true;
      }
      case "after-delimiter": {
        if (this.buf.length < 2) return false;
        if (this.buf[0] === 0x2d && this.buf[1] === 0x2d) {
          this.state = "done";
          this.buf = Buffer.alloc(0);
          return false;
        }
        // Transport padding (spaces, tabs) may precede the CRLF.
        let i = 0;
        while (i < this.buf.length && (this.buf[i] === 0x20 || this.buf[i] === 0x09)) i++;
        // Unbounded padding would be held and rescanned on every chunk.
        if (i > MAX_PADDING) throw new MultipartError("malformed boundary line");
        if (this.buf.length < i + 2) return false;
        if (this.buf[i] !== 0x0d || this.buf[i + 1] !== 0x0a)
          throw new MultipartError("malformed boundary line");
        this.buf = this.buf.subarray(i + 2);
        this.state = "headers";
        return true;
      }
      case "headers": {
        const end = this.buf.indexOf("\r\n\r\n", 0, "latin1");
        if (end < 0) {
          if (this.buf.length > this.limits.maxHeaderBytes)
            throw new MultipartError("part headers too large");
          return false;
        }
        if (end > this.limits.maxHeaderBytes) throw new MultipartError("part headers too large");
        if (++this.parts > this.limits.maxParts)
          throw new MultipartError(`more than ${this.limits.maxParts} form parts`);
        const headers = parsePartHeaders(this.buf.toString("utf8", 0, end));
        this.buf = this.buf.subarray(end + 4);
        this.sink = this.onPart(headers);
        this.state = "body";
        return true;
      }
      case "body": {
        const sink = this.sink as PartSink;
        const at = this.buf.indexOf(this.delimiter);
        if (at < 0) {
          // Keep a tail that could be the start of a delimiter split across chunks.
          const keep = this.delimiter.length - 1;
          if (this.buf.length > keep) {
            sink.data(this.buf.subarray(0, this.buf.length - keep));
            this.buf = this.buf.subarray(this.buf.length - keep);
          }
          return false;
        }
        if (at > 0) sink.data(this.buf.subarray(0, at));
        sink.end();
        this.sink = undefined;
        this.buf = this.buf.subarray(at + this.delimiter.length);
        this.state = "after-delimiter";
        return true;
      }
      case "done":
        return false;
    }
  }
}
