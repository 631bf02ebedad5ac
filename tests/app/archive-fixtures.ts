/**
 * Hand-built archives for the hostile cases Python's zipfile and tarfile refuse to write:
 * lying sizes and CRCs, unsafe names, links, truncation.
 */
import { crc32, createDeflateRaw, deflateRawSync } from "node:zlib";

export interface ZipSpec {
  name: string;
  data?: Buffer | string;
  method?: 0 | 8;
  /** Already deflated data, with the CRC and size of what it inflates to. */
  deflated?: { data: Buffer; crc: number; size: number };
  /** Lies for the central directory. */
  size?: number;
  crc?: number;
  flags?: number;
  localName?: string;
  /** Unix mode bits (type and permissions), recorded as made on Unix. */
  mode?: number;
}

/** A zip archive: local headers and data, central directory, end record. */
export function zip(entries: readonly ZipSpec[], opts: { comment?: string } = {}): Buffer {
  const locals: Buffer[] = [];
  const centrals: Buffer[] = [];
  let offset = 0;
  for (const e of entries) {
    const raw = Buffer.from(e.data ?? "");
    const method = e.deflated ? 8 : (e.method ?? 8);
    const data = e.deflated ? e.deflated.data : method === 8 ? deflateRawSync(raw) : raw;
    const crc = e.crc ?? (e.deflated ? e.deflated.crc : crc32(raw));
    const size = e.size ?? (e.deflated ? e.deflated.size : raw.length);
    const name = Buffer.from(e.name);
    const localName = Buffer.from(e.localName ?? e.name);
    const flags = e.flags ?? 0x800;
    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0);
    local.writeUInt16LE(20, 4);
    local.writeUInt16LE(flags, 6);
    local.writeUInt16LE(method, 8);
    local.writeUInt32LE(crc, 14);
    local.writeUInt32LE(data.length, 18);
    local.writeUInt32LE(size, 22);
    local.writeUInt16LE(localName.length, 26);
    locals.push(local, localName, data);
    const central = Buffer.alloc(46);
    central.writeUInt32LE(0x02014b50, 0);
    central.writeUInt16LE(e.mode === undefined ? 20 : (3 << 8) | 20, 4);
    central.writeUInt16LE(20, 6);
    central.writeUInt16LE(flags, 8);
    central.writeUInt16LE(method, 10);
    central.writeUInt32LE(crc, 16);
    central.writeUInt32LE(data.length, 20);
    central.writeUInt32LE(size, 24);
    central.writeUInt16LE(name.length, 28);
    central.writeUInt32LE(((e.mode ?? 0) << 16) >>> 0, 38);
    central.writeUInt32LE(offset, 42);
    centrals.push(central, name);
    offset += 30 + localName.length + data.length;
  }
  const cd = Buffer.concat(centrals);
  const comment = Buffer.from(opts.comment ?? "");
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(entries.length, 8);
  end.writeUInt16LE(entries.length, 10);
  end.writeUInt32LE(cd.length, 12);
  end.writeUInt32LE(offset, 16);
  end.writeUInt16LE(comment.length, 20);
  return Buffer.concat([...locals, cd, end, comment]);
}

/** `size` zero bytes deflated as a stream: the bomb is built without ever holding its payload. */
export async function deflatedZeros(size: number): Promise<{ data: Buffer; crc: number; size: number }> {
  const block = Buffer.alloc(1024 * 1024);
  const deflate = createDeflateRaw({ level: 9 });
  const out: Buffer[] = [];
  deflate.on("data", (c: Buffer) => out.push(c));
  const done = new Promise<void>((resolve, reject) => deflate.on("end", resolve).on("error", reject));
  let crc = 0;
  for (let left = size; left > 0; left -= block.length) {
    const chunk = block.subarray(0, Math.min(left, block.length));
    crc = crc32(chunk, crc);
    if (!deflate.write(chunk)) await new Promise((r) => deflate.once("drain", r));
  }
  deflate.end();
  await done;
  return { data: Buffer.concat(out), crc, size };
}

/** The dist-info files of a wheel, each of which a test may drop or replace. */
export function distInfo(
  info: string,
  files: { METADATA?: string | null; WHEEL?: string | null; RECORD?: string | null } = {},
): ZipSpec[] {
  const [name, version] = info.replace(/\.dist-info$/, "").split("-") as [string, string];
  const defaults = {
    METADATA: `Metadata-Version: 2.1\nName: ${name}\nVersion: ${version}\n`,
    WHEEL: "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    RECORD: "",
  };
  return (["METADATA", "WHEEL", "RECORD"] as const).flatMap((f) => {
    const data = files[f] === undefined ? defaults[f] : files[f];
    return data === null ? [] : [{ name: `${info}/${f}`, data }];
  });
}

export interface TarSpec {
  name: string;
  /** Tar type flag: "0" file (default), "5" directory, "2" symlink, "x" pax header, "L" GNU long name... */
  type?: string;
  data?: Buffer | string;
  linkname?: string;
  /** Break the header checksum. */
  badChecksum?: boolean;
}

function octal(n: number, width: number): string {
  return `${n.toString(8).padStart(width - 1, "0")}\0`;
}

function tarHeader(e: TarSpec, size: number): Buffer {
  const h = Buffer.alloc(512);
  h.write(e.name, 0, 100, "utf8");
  h.write(octal(e.type === "5" ? 0o755 : 0o644, 8), 100, "latin1");
  h.write(octal(0, 8), 108, "latin1");
  h.write(octal(0, 8), 116, "latin1");
  h.write(octal(size, 12), 124, "latin1");
  h.write(octal(0, 12), 136, "latin1");
  h.write(e.type ?? "0", 156, "latin1");
  h.write(e.linkname ?? "", 157, 100, "utf8");
  h.write("ustar\x0000", 257, "latin1");
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (const c of h) sum += c;
  h.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148, "latin1");
  if (e.badChecksum) h[0] = (h[0] as number) ^ 1;
  return h;
}

/** A ustar archive; `end: false` leaves out the two zero blocks. */
export function tar(entries: readonly TarSpec[], opts: { end?: boolean } = {}): Buffer {
  const parts: Buffer[] = [];
  for (const e of entries) {
    const data = Buffer.from(e.data ?? "");
    parts.push(tarHeader(e, data.length), data, Buffer.alloc((512 - (data.length % 512)) % 512));
  }
  if (opts.end ?? true) parts.push(Buffer.alloc(1024));
  return Buffer.concat(parts);
}

/** A pax extended header record set, for the member that follows it. */
export function pax(records: Record<string, string>): TarSpec {
  const body = Object.entries(records)
    .map(([k, v]) => {
      const rest = ` ${k}=${v}\n`;
      let len = Buffer.byteLength(rest) + 1;
      while (String(len).length + Buffer.byteLength(rest) !== len) len++;
      return `${len}${rest}`;
    })
    .join("");
  return { name: "PaxHeader", type: "x", data: body };
}
