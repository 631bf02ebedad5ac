/**
 * Zip and tar.gz readers for uploaded distributions. Nothing in an archive is trusted: sizes
 * are re-checked while inflating, every inflation runs under a hard output cap, and member
 * names that could escape an extraction directory are refused. Every problem with the archive
 * itself is an `ArchiveError` whose message is shown to the uploader; anything else (ENOENT,
 * EIO) is a real I/O error.
 */
import { createReadStream } from "node:fs";
import { type FileHandle, open, stat } from "node:fs/promises";
import { pipeline } from "node:stream/promises";
import * as zlib from "node:zlib";
import { createGunzip, createInflateRaw } from "node:zlib";

/** CRC-32 (zip's polynomial) by table, for node < 20.15 (Debian 12 ships 18), which lacks zlib.crc32. */
const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

export function crc32Table(data: Uint8Array, previous = 0): number {
  let c = ~previous >>> 0;
  for (let i = 0; i < data.length; i++)
    c = (CRC_TABLE[(c ^ (data[i] as number)) & 0xff] as number) ^ (c >>> 8);
  return ~c >>> 0;
}

const nativeCrc32 = (zlib as { crc32?: (data: Uint8Array, value?: number) => number }).crc32;
const crc32: (data: Uint8Array, value?: number) => number = nativeCrc32 ?? crc32Table;

export interface ArchiveLimits {
  readonly maxMembers: number;
  /** Total size of all members once inflated. */
  readonly maxUncompressedBytes: number;
  /** Total inflated size over the archive's size, judged only past `RATIO_FLOOR`. */
  readonly maxRatio: number;
  /** The most a metadata file (METADATA, WHEEL, PKG-INFO) may be. */
  readonly maxMetadataBytes: number;
}

/**
 * Generous for real distributions (the largest wheels on PyPI inflate to a few hundred MB;
 * source and bytecode compress 3-10x) and far below what a bomb needs.
 */
export const DEFAULT_ARCHIVE_LIMITS: ArchiveLimits = {
  maxMembers: 20_000,
  maxUncompressedBytes: 1024 ** 3,
  maxRatio: 100,
  maxMetadataBytes: 1024 ** 2,
};

/** Archives inflating to no more than this pass the ratio check: tiny text files compress absurdly well. */
export const RATIO_FLOOR = 1024 ** 2;

export class ArchiveError extends Error {
  override readonly name = "ArchiveError";
}

export interface Member {
  /** Relative path with `/` separators; directories without their trailing `/`. */
  readonly name: string;
  readonly size: number;
  /** For tar members, where the gzip stream is shared, the same as `size`. */
  readonly compressedSize: number;
  readonly isDir: boolean;
}

export interface Archive {
  readonly members: readonly Member[];
  /** One file member's content; refused if it is larger than `maxBytes`. */
  read(name: string, maxBytes: number): Promise<Buffer>;
  /** Inflate every member, streaming and within the limits, checking sizes and CRCs. */
  verifyAll(): Promise<void>;
}

const MAX_NAME_BYTES = 4096;
/** pax and GNU long-name records hold a path or a few numbers: this is already lavish. */
const MAX_EXTENDED_HEADER = 1024 ** 2;
const MAX_CENTRAL_DIRECTORY = 64 * 1024 ** 2;
const READ_CHUNK = 64 * 1024;

const quote = (name: string): string => JSON.stringify(name);

/** What the members may inflate to in total: the absolute limit, and the ratio past the floor. */
function inflateBudget(limits: ArchiveLimits, archiveSize: number): number {
  return Math.min(limits.maxUncompressedBytes, Math.max(RATIO_FLOOR, archiveSize * limits.maxRatio));
}

/** `subject` is what grew ("members inflate to"); a ratio breach is a bomb, a total one just too large. */
function overBudget(
  bomb: string,
  subject: string,
  total: number,
  archiveSize: number,
  limits: ArchiveLimits,
): ArchiveError {
  if (total > limits.maxUncompressedBytes)
    return new ArchiveError(`too large: ${subject} ${total} bytes (limit ${limits.maxUncompressedBytes})`);
  const times = Math.ceil(total / Math.max(archiveSize, 1));
  return new ArchiveError(
    `${bomb}: ${subject} ${total} bytes, ${times} times the ${archiveSize}-byte archive (limit ${limits.maxRatio})`,
  );
}

/** Why a member name is unsafe to extract anywhere, or null. */
function unsafeName(name: string): string | null {
  if (name === "") return "empty name";
  if (Buffer.byteLength(name) > MAX_NAME_BYTES) return `longer than ${MAX_NAME_BYTES} bytes`;
  for (let i = 0; i < name.length; i++) {
    const c = name.charCodeAt(i);
    if (c < 0x20 || c === 0x7f) return "control character";
  }
  if (name.includes("\\")) return "backslash";
  if (name.startsWith("/")) return "absolute path";
  if (/^[A-Za-z]:/.test(name)) return "drive letter";
  for (const part of name.split("/")) {
    if (part === "..") return '".." component';
    if (part === "" || part === ".") return 'empty or "." component';
  }
  return null;
}

/** The member list: safe names, no duplicates, no file that is also a directory. */
class MemberSet {
  readonly list: Member[] = [];
  private readonly isDir = new Map<string, boolean>();
  private readonly parents = new Set<string>();

  constructor(private readonly max: number) {}

  add(m: Member): void {
    const why = unsafeName(m.name);
    if (why) throw new ArchiveError(`unsafe member name ${quote(m.name)}: ${why}`);
    if (this.list.length >= this.max) throw new ArchiveError(`too many members: more than ${this.max}`);
    if (this.isDir.has(m.name)) throw new ArchiveError(`duplicate member ${quote(m.name)}`);
    if (!m.isDir && this.parents.has(m.name))
      throw new ArchiveError(`member ${quote(m.name)} is both a file and a directory`);
    for (let i = m.name.indexOf("/"); i >= 0; i = m.name.indexOf("/", i + 1)) {
      const parent = m.name.slice(0, i);
      if (this.isDir.get(parent) === false)
        throw new ArchiveError(`member ${quote(m.name)} is inside ${quote(parent)}, which is a file`);
      this.parents.add(parent);
    }
    this.isDir.set(m.name, m.isDir);
    this.list.push(m);
  }
}

/** ignoreBOM keeps a leading U+FEFF in the name instead of silently dropping it. */
const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

function decodeName(raw: Uint8Array): string {
  try {
    return utf8.decode(raw);
  } catch {
    throw new ArchiveError(`member name 0x${Buffer.from(raw).toString("hex")} is not valid UTF-8`);
  }
}

/** Read up to `length` bytes at `position`; shorter only at end of file. */
async function readAt(fh: FileHandle, position: number, length: number): Promise<Buffer> {
  const buf = Buffer.alloc(length);
  let got = 0;
  while (got < length) {
    const { bytesRead } = await fh.read(buf, got, length - got, position + got);
    if (bytesRead === 0) break;
    got += bytesRead;
  }
  return buf.subarray(0, got);
}

/** A zlib complaint is about the archive; anything else is I/O and propagates. */
const isZlibError = (err: unknown): err is Error =>
  err instanceof Error && /^Z_/.test((err as NodeJS.ErrnoException).code ?? "");

// ---------------------------------------------------------------------------------------------
// zip

const LOCAL_SIG = 0x04034b50;
const CENTRAL_SIG = 0x02014b50;
const END_SIG = 0x06054b50;
const ZIP64_LOCATOR_SIG = 0x07064b50;
const END_SIZE = 22;
const S_IFMT = 0o170000;
const S_IFLNK = 0o120000;
const S_IFREG = 0o100000;
const S_IFDIR = 0o040000;

interface ZipEntry extends Member {
  readonly raw: Buffer;
  readonly method: number;
  readonly crc: number;
  readonly localOffset: number;
  dataStart: number;
}

const corrupt = (what: string) => new ArchiveError(`corrupt zip archive: ${what}`);

async function findEnd(fh: FileHandle, size: number): Promise<{ pos: number; rec: Buffer }> {
  const startsLikeZip = size >= 4 && (await readAt(fh, 0, 4)).readUInt32LE(0) === LOCAL_SIG;
  const missing = startsLikeZip
    ? "truncated or corrupt zip archive: no end-of-central-directory record"
    : "not a zip archive";
  if (size < END_SIZE) throw new ArchiveError(missing);
  const tailLen = Math.min(size, END_SIZE + 0xffff);
  const tail = await readAt(fh, size - tailLen, tailLen);
  // The record is followed only by its comment, so its comment length must reach the end exactly.
  for (let i = tail.length - END_SIZE; i >= 0; i--) {
    if (tail.readUInt32LE(i) === END_SIG && i + END_SIZE + tail.readUInt16LE(i + 20) === tail.length)
      return { pos: size - tailLen + i, rec: tail.subarray(i, i + END_SIZE) };
  }
  throw new ArchiveError(missing);
}

async function readCentralDirectory(
  fh: FileHandle,
  size: number,
  limits: ArchiveLimits,
): Promise<ZipEntry[]> {
  const { pos, rec } = await findEnd(fh, size);
  const disk = rec.readUInt16LE(4);
  const cdDisk = rec.readUInt16LE(6);
  const onDisk = rec.readUInt16LE(8);
  const count = rec.readUInt16LE(10);
  const cdSize = rec.readUInt32LE(12);
  const cdOffset = rec.readUInt32LE(16);
  const locator = pos >= 20 ? await readAt(fh, pos - 20, 4) : Buffer.alloc(0);
  if (
    (locator.length === 4 && locator.readUInt32LE(0) === ZIP64_LOCATOR_SIG) ||
    count === 0xffff ||
    cdSize === 0xffffffff ||
    cdOffset === 0xffffffff
  )
    throw new ArchiveError("ZIP64 archives are not supported");
  if (disk !== 0 || cdDisk !== 0 || onDisk !== count)
    throw new ArchiveError("multi-disk zip archives are not supported");
  if (count > limits.maxMembers)
    throw new ArchiveError(`too many members: ${count} (limit ${limits.maxMembers})`);
  // Nothing may sit between the central directory and its end record: no prepended or hidden data.
  if (cdOffset + cdSize !== pos)
    throw corrupt(
      `the central directory (offset ${cdOffset}, ${cdSize} bytes) does not end where the end record starts (offset ${pos})`,
    );
  if (cdSize > MAX_CENTRAL_DIRECTORY)
    throw corrupt(`central directory of ${cdSize} bytes (limit ${MAX_CENTRAL_DIRECTORY})`);
  const cd = await readAt(fh, cdOffset, cdSize);
  const entries: ZipEntry[] = [];
  let p = 0;
  for (let i = 0; i < count; i++) {
    if (p + 46 > cd.length || cd.readUInt32LE(p) !== CENTRAL_SIG)
      throw corrupt(`bad central directory entry ${i + 1} of ${count}`);
    const madeBy = cd.readUInt16LE(p + 4);
    const flags = cd.readUInt16LE(p + 8);
    const method = cd.readUInt16LE(p + 10);
    const crc = cd.readUInt32LE(p + 16);
    const compressedSize = cd.readUInt32LE(p + 20);
    const size = cd.readUInt32LE(p + 24);
    const nameLen = cd.readUInt16LE(p + 28);
    const end = p + 46 + nameLen + cd.readUInt16LE(p + 30) + cd.readUInt16LE(p + 32);
    const startDisk = cd.readUInt16LE(p + 34);
    const mode = cd.readUInt32LE(p + 38) >>> 16;
    const localOffset = cd.readUInt32LE(p + 42);
    if (end > cd.length) throw corrupt(`central directory entry ${i + 1} runs past the directory`);
    const raw = cd.subarray(p + 46, p + 46 + nameLen);
    const fullName = decodeName(raw);
    p = end;
    const shown = quote(fullName);
    if (compressedSize === 0xffffffff || size === 0xffffffff || localOffset === 0xffffffff)
      throw new ArchiveError("ZIP64 archives are not supported");
    if (startDisk !== 0) throw new ArchiveError("multi-disk zip archives are not supported");
    if (flags & 0x41) throw new ArchiveError(`member ${shown} is encrypted`);
    if (method !== 0 && method !== 8)
      throw new ArchiveError(
        `member ${shown} uses compression method ${method}; only stored (0) and deflate (8) are supported`,
      );
    if (method === 0 && compressedSize !== size)
      throw corrupt(`stored member ${shown} has different compressed and uncompressed sizes`);
    // Unix modes are only meaningful when the entry says it was made on Unix (host 3).
    const type = madeBy >> 8 === 3 ? mode & S_IFMT : 0;
    if (type === S_IFLNK)
      throw new ArchiveError(`member ${shown} is a symbolic link; only files and directories are allowed`);
    if (type !== 0 && type !== S_IFREG && type !== S_IFDIR)
      throw new ArchiveError(`member ${shown} is not a regular file or directory`);
    const isDir = fullName.endsWith("/");
    if (isDir && size !== 0) throw corrupt(`directory member ${shown} has data`);
    const name = isDir ? fullName.slice(0, -1) : fullName;
    entries.push({ name, size, compressedSize, isDir, raw, method, crc, localOffset, dataStart: 0 });
  }
  if (p !== cd.length) throw corrupt("central directory size does not match its entries");
  await checkLocalHeaders(fh, entries, cdOffset);
  return entries;
}

/**
 * Each local header must be where the central directory says, under the same name and method,
 * and each member's data must end before the next member starts: overlapping members are how
 * non-recursive zip bombs reuse one compressed stream many times.
 */
async function checkLocalHeaders(fh: FileHandle, entries: ZipEntry[], cdOffset: number): Promise<void> {
  const byOffset = [...entries].sort((a, b) => a.localOffset - b.localOffset);
  for (const [i, e] of byOffset.entries()) {
    const shown = quote(e.name);
    const h = await readAt(fh, e.localOffset, 30 + e.raw.length);
    if (h.length < 30 || h.readUInt32LE(0) !== LOCAL_SIG)
      throw corrupt(`no local header for member ${shown} at offset ${e.localOffset}`);
    if (h.readUInt16LE(6) & 0x41) throw new ArchiveError(`member ${shown} is encrypted`);
    if (h.readUInt16LE(8) !== e.method)
      throw corrupt(`member ${shown}: local header and central directory disagree on the compression method`);
    const nameLen = h.readUInt16LE(26);
    if (nameLen !== e.raw.length || !h.subarray(30, 30 + nameLen).equals(e.raw))
      throw corrupt(
        `member ${shown}: local header names ${quote(h.subarray(30, 30 + nameLen).toString("utf8"))}`,
      );
    e.dataStart = e.localOffset + 30 + nameLen + h.readUInt16LE(28);
    const limit = byOffset[i + 1]?.localOffset ?? cdOffset;
    if (e.dataStart + e.compressedSize > limit)
      throw corrupt(`member ${shown} overlaps the data that follows it`);
  }
}

async function* fileRange(fh: FileHandle, start: number, length: number): AsyncGenerator<Buffer> {
  for (let pos = start; pos < start + length; ) {
    const chunk = await readAt(fh, pos, Math.min(READ_CHUNK, start + length - pos));
    if (chunk.length === 0) throw new ArchiveError("truncated archive");
    pos += chunk.length;
    yield chunk;
  }
}

/**
 * Inflate one member, never past its declared size (checked per output chunk, so a lying
 * header costs at most one chunk), then check its length and CRC-32.
 */
async function inflateEntry(fh: FileHandle, e: ZipEntry, onChunk: (chunk: Buffer) => void): Promise<void> {
  const shown = quote(e.name);
  let out = 0;
  let crc = 0;
  const sink = (chunk: Buffer): void => {
    out += chunk.length;
    if (out > e.size)
      throw new ArchiveError(`member ${shown} inflates past its declared size of ${e.size} bytes`);
    crc = crc32(chunk, crc);
    onChunk(chunk);
  };
  const source = fileRange(fh, e.dataStart, e.compressedSize);
  try {
    if (e.method === 0) for await (const chunk of source) sink(chunk);
    else
      await pipeline(source, createInflateRaw(), async (inflated: AsyncIterable<Buffer>) => {
        for await (const chunk of inflated) sink(chunk);
      });
  } catch (err) {
    if (isZlibError(err)) throw new ArchiveError(`member ${shown}: corrupt deflate data (${err.message})`);
    throw err;
  }
  if (out !== e.size)
    throw new ArchiveError(`member ${shown} inflates to ${out} bytes, not its declared ${e.size}`);
  if (crc !== e.crc) throw new ArchiveError(`member ${shown} fails its CRC-32 check`);
}

export async function openZip(path: string, limits: ArchiveLimits): Promise<Archive> {
  const fh = await open(path, "r");
  let archiveSize: number;
  let entries: ZipEntry[];
  try {
    archiveSize = (await fh.stat()).size;
    entries = await readCentralDirectory(fh, archiveSize, limits);
  } finally {
    await fh.close();
  }
  const set = new MemberSet(limits.maxMembers);
  for (const e of entries) set.add(e);
  const declared = entries.reduce((sum, e) => sum + e.size, 0);
  if (declared > inflateBudget(limits, archiveSize))
    throw overBudget("zip bomb", "members inflate to", declared, archiveSize, limits);
  const byName = new Map(entries.map((e) => [e.name, e]));

  /** Every use reopens the file: an Archive holds no descriptor, so callers have nothing to close. */
  async function withFile<T>(use: (fh: FileHandle) => Promise<T>): Promise<T> {
    const fh = await open(path, "r");
    try {
      if ((await fh.stat()).size !== archiveSize) throw new ArchiveError("archive changed while being read");
      return await use(fh);
    } finally {
      await fh.close();
    }
  }

  return {
    members: entries.map(({ name, size, compressedSize, isDir }) => ({ name, size, compressedSize, isDir })),
    read: async (name, maxBytes) => {
      const e = fileMember(byName.get(name), name, maxBytes);
      return withFile(async (fh) => {
        const chunks: Buffer[] = [];
        await inflateEntry(fh, e, (c) => chunks.push(c));
        return Buffer.concat(chunks);
      });
    },
    verifyAll: () =>
      withFile(async (fh) => {
        for (const e of entries) if (!e.isDir) await inflateEntry(fh, e, () => {});
      }),
  };
}

function fileMember<T extends Member>(m: T | undefined, name: string, maxBytes: number): T {
  if (!m || m.isDir) throw new ArchiveError(`no file ${quote(name)} in the archive`);
  if (m.size > maxBytes) throw new ArchiveError(`${name} is ${m.size} bytes (limit ${maxBytes})`);
  return m;
}

// ---------------------------------------------------------------------------------------------
// tar.gz

const BLOCK = 512;
const padded = (n: number): number => Math.ceil(n / BLOCK) * BLOCK;
const REJECTED_TYPES: Readonly<Record<string, string>> = {
  "1": "a hard link",
  "2": "a symbolic link",
  "3": "a character device",
  "4": "a block device",
  "6": "a FIFO",
};

/** NUL-terminated field. */
function field(b: Buffer, off: number, len: number): Buffer {
  const f = b.subarray(off, off + len);
  const nul = f.indexOf(0);
  return nul < 0 ? f : f.subarray(0, nul);
}

/** Octal (space/NUL padded), or GNU base-256 for large values; null if malformed. */
function numeric(b: Buffer, off: number, len: number): number | null {
  if (b[off] === 0x80) {
    let n = 0;
    for (let i = off + 1; i < off + len; i++) n = n * 256 + (b[i] as number);
    return Number.isSafeInteger(n) ? n : null;
  }
  const s = field(b, off, len).toString("latin1").trim();
  if (s === "") return 0;
  return /^[0-7]+$/.test(s) ? Number.parseInt(s, 8) : null;
}

/** The header checksum, which real tars compute with unsigned and some old ones with signed bytes. */
function checksumOk(b: Buffer): boolean {
  const want = numeric(b, 148, 8);
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < BLOCK; i++) {
    const c = i >= 148 && i < 156 ? 0x20 : (b[i] as number);
    unsigned += c;
    signed += c > 127 ? c - 256 : c;
  }
  return want === unsigned || want === signed;
}

/** pax records: `<len> <key>=<value>\n`, UTF-8. */
function parsePax(data: Buffer): Map<string, string> {
  const out = new Map<string, string>();
  let p = 0;
  while (p < data.length) {
    const sp = data.indexOf(0x20, p);
    const lenText = sp < 0 ? "" : data.toString("latin1", p, sp);
    const len = /^[0-9]{1,9}$/.test(lenText) ? Number(lenText) : 0;
    const rec = data.subarray(p, p + len);
    const eq = rec.indexOf(0x3d);
    if (len === 0 || p + len > data.length || rec[len - 1] !== 0x0a || eq < sp - p)
      throw new ArchiveError("corrupt tar archive: malformed pax header");
    let key: string;
    let value: string;
    try {
      key = utf8.decode(rec.subarray(sp - p + 1, eq));
      value = utf8.decode(rec.subarray(eq + 1, len - 1));
    } catch {
      throw new ArchiveError("corrupt tar archive: pax header is not valid UTF-8");
    }
    out.set(key, value);
    p += len;
  }
  return out;
}

/**
 * Incremental ustar/GNU/pax parser fed with inflated bytes. Collects members; when `want` is
 * set, captures that member's data and reports `found`.
 */
class TarParser {
  readonly set: MemberSet;
  found: Buffer | null = null;
  private offset = 0;
  private headers = 0;
  private state: "header" | "extended" | "data" | "end" = "header";
  private need = BLOCK;
  private acc: Buffer[] = [];
  private accLen = 0;
  private skip = 0;
  private capture: { chunks: Buffer[]; left: number } | null = null;
  private extended: { type: string; size: number } = { type: "", size: 0 };
  private longName: Buffer | null = null;
  private pax: Map<string, string> | null = null;
  private readonly globalPax = new Map<string, string>();

  constructor(
    limits: ArchiveLimits,
    private readonly want: string | null,
  ) {
    this.set = new MemberSet(limits.maxMembers);
  }

  get ended(): boolean {
    return this.state === "end";
  }

  feed(chunk: Buffer): void {
    let off = 0;
    while (off < chunk.length && this.state !== "end" && this.found === null) {
      if (this.state === "data") {
        const n = Math.min(this.skip, chunk.length - off);
        if (this.capture && this.capture.left > 0) {
          const part = chunk.subarray(off, off + Math.min(n, this.capture.left));
          this.capture.chunks.push(part);
          this.capture.left -= part.length;
        }
        this.skip -= n;
        off += n;
        this.offset += n;
        if (this.skip === 0) this.endData();
        continue;
      }
      const n = Math.min(this.need - this.accLen, chunk.length - off);
      this.acc.push(chunk.subarray(off, off + n));
      this.accLen += n;
      off += n;
      if (this.accLen < this.need) continue;
      const block = Buffer.concat(this.acc);
      this.acc = [];
      this.accLen = 0;
      this.offset += block.length;
      if (this.state === "header") this.header(block);
      else this.extendedData(block.subarray(0, this.extended.size));
    }
  }

  /** At the end of the inflated stream: anything but a finished archive is a truncated one. */
  finish(): void {
    if (this.state === "end") return;
    if (this.headers === 0) throw new ArchiveError("not a tar archive");
    throw new ArchiveError("truncated archive");
  }

  private endData(): void {
    this.state = "header";
    this.need = BLOCK;
    if (this.capture) this.found = Buffer.concat(this.capture.chunks);
  }

  private header(b: Buffer): void {
    const at = this.offset - BLOCK;
    if (b.every((c) => c === 0)) {
      if (this.longName || this.pax)
        throw new ArchiveError("corrupt tar archive: extended header without a member");
      this.state = "end";
      return;
    }
    if (!checksumOk(b))
      throw new ArchiveError(
        this.headers === 0 ? "not a tar archive" : `corrupt tar archive: bad header checksum at offset ${at}`,
      );
    this.headers++;
    const type = b[156] === 0 ? "\0" : String.fromCharCode(b[156] as number);
    let size = numeric(b, 124, 12);
    if (size === null) throw new ArchiveError(`corrupt tar archive: bad size field at offset ${at}`);
    if (type === "x" || type === "g" || type === "L" || type === "K") {
      if (size > MAX_EXTENDED_HEADER)
        throw new ArchiveError(`corrupt tar archive: ${size}-byte extended header at offset ${at}`);
      this.extended = { type, size };
      this.state = "extended";
      this.need = padded(size);
      if (this.need === 0) this.extendedData(Buffer.alloc(0));
      return;
    }
    // The ustar prefix field; GNU's old format keeps other data there.
    const prefix = b.toString("latin1", 257, 263) === "ustar\0" ? field(b, 345, 155) : Buffer.alloc(0);
    const rawName =
      this.longName ??
      (prefix.length > 0 ? Buffer.concat([prefix, Buffer.from("/"), field(b, 0, 100)]) : field(b, 0, 100));
    const pax = new Map([...this.globalPax, ...(this.pax ?? [])]);
    this.longName = null;
    this.pax = null;
    let name = pax.get("path") ?? decodeName(rawName);
    const paxSize = pax.get("size");
    if (paxSize !== undefined) {
      if (!/^[0-9]{1,15}$/.test(paxSize)) throw new ArchiveError("corrupt tar archive: bad pax size");
      size = Number(paxSize);
    }
    const rejected = REJECTED_TYPES[type];
    if (rejected)
      throw new ArchiveError(`member ${quote(name)} is ${rejected}; only files and directories are allowed`);
    // V7 tars mark directories only by a trailing slash.
    const isDir = type === "5" || (type === "\0" && name.endsWith("/"));
    if (!isDir && type !== "0" && type !== "\0" && type !== "7")
      throw new ArchiveError(`member ${quote(name)} has unsupported tar type ${quote(type)}`);
    if (isDir) {
      if (name.endsWith("/")) name = name.slice(0, -1);
      if (size !== 0) throw new ArchiveError(`corrupt tar archive: directory member ${quote(name)} has data`);
    }
    this.set.add({ name, size, compressedSize: size, isDir });
    const capturing = !isDir && name === this.want;
    this.capture = capturing ? { chunks: [], left: size } : null;
    this.skip = padded(size);
    if (this.skip > 0) this.state = "data";
    else if (capturing) this.endData();
  }

  private extendedData(data: Buffer): void {
    const { type } = this.extended;
    if (type === "L") this.longName = field(data, 0, data.length);
    else if (type === "x") this.pax = new Map([...(this.pax ?? []), ...parsePax(data)]);
    else if (type === "g") for (const [k, v] of parsePax(data)) this.globalPax.set(k, v);
    this.state = "header";
    this.need = BLOCK;
  }
}

function gzipReason(err: Error): string {
  if (/unexpected end of file/i.test(err.message)) return "truncated archive";
  if (/incorrect header check|unknown compression method/i.test(err.message)) return "not a gzip file";
  return `corrupt gzip data (${err.message})`;
}

/**
 * Gunzip as a stream under the inflate budget and parse as it arrives. Without `want` it reads
 * to the end (the gzip CRC and length are checked there); with it, it stops once that member's
 * data is in.
 */
async function walkTarGz(
  path: string,
  limits: ArchiveLimits,
  want: string | null,
): Promise<{ members: Member[]; found: Buffer | null }> {
  const archiveSize = (await stat(path)).size;
  const budget = inflateBudget(limits, archiveSize);
  const parser = new TarParser(limits, want);
  const source = createReadStream(path, { highWaterMark: READ_CHUNK });
  const gunzip = createGunzip();
  source.on("error", (err) => gunzip.destroy(err));
  source.pipe(gunzip);
  let total = 0;
  try {
    for await (const chunk of gunzip as AsyncIterable<Buffer>) {
      total += chunk.length;
      if (total > budget) throw overBudget("gzip bomb", "the tar inflates past", total, archiveSize, limits);
      parser.feed(chunk);
      if (parser.found) break;
    }
  } catch (err) {
    if (isZlibError(err)) throw new ArchiveError(gzipReason(err));
    throw err;
  } finally {
    source.destroy();
    gunzip.destroy();
  }
  if (!parser.found) parser.finish();
  return { members: parser.set.list, found: parser.found };
}

export async function openTarGz(path: string, limits: ArchiveLimits): Promise<Archive> {
  const { members } = await walkTarGz(path, limits, null);
  const byName = new Map(members.map((m) => [m.name, m]));
  return {
    members,
    read: async (name, maxBytes) => {
      fileMember(byName.get(name), name, maxBytes);
      const { found } = await walkTarGz(path, limits, name);
      if (!found) throw new ArchiveError("archive changed while being read");
      return found;
    },
    // Opening already inflated everything under the limits and checked the gzip CRC.
    verifyAll: async () => {},
  };
}
