/**
 * Which uploads still have a writer: `uploadClosed` for the registrar, and `watchUploadWriters`,
 * the watcher every app server runs to answer it.
 *
 * Not the SFTP server's log: a chrooted internal-sftp (OpenSSH 9.2) sends its open/close lines
 * only to a syslog socket inside the chroot, which is the uploader's directory on the shared
 * volume, so neither the journal nor `sshd -E` sees them. Not a lease or lock: the server takes
 * none, and NFS clients do not see each other's opens. So each app server's kernel is asked:
 * about once a second the watcher lists every descriptor open for writing on the package volume
 * and publishes the list, stamped by the volume's own clock just before it looked. An upload is
 * closed once every app server has published a list that began after the file last changed and
 * holds none of its descriptors. A paused client keeps its descriptor, so its file stays open.
 */
import {
  type BigIntStats,
  closeSync,
  constants,
  fstatSync,
  fsyncSync,
  openSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  renameSync,
  type Stats,
  statSync,
  writeSync,
} from "node:fs";
import { hostname } from "node:os";

/** Where the watchers publish, outside every chroot: www-data owned, so no uploader can write it. */
export const sftpStateDir = (root: string): string => `${root}/.sftp-state`;
const scanFile = (root: string, host: string): string => `${sftpStateDir(root)}/${host}.json`;
const tickFile = (root: string, host: string): string => `${sftpStateDir(root)}/${host}.tick`;

const HOST_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;
/** A host that published nothing for this long (by the volume's clock) is down: it has no writers. */
export const DEFAULT_STALE_MS = 60_000;
export const DEFAULT_SCAN_INTERVAL_MS = 1_000;

export interface Writer {
  /** Inode number (decimal): NFS file ids are the same on every client, paths and devices not. */
  readonly ino: string;
  readonly pid: number;
  /** For operators only; the process's view, which a rename may have made stale. */
  readonly path: string;
}

export interface WriterScan {
  readonly version: 1;
  readonly host: string;
  readonly seq: number;
  /** Volume clock (ns since the epoch, decimal) before this scan looked at any process. */
  readonly startedNs: string;
  readonly writers: readonly Writer[];
}

export interface ClosedVerdict {
  readonly closed: boolean;
  readonly why: string;
}

export interface ClosedOptions {
  /** App servers that must have published (all of them, when known): one never seen blocks. */
  readonly hosts?: readonly string[];
  /** @default DEFAULT_STALE_MS */
  readonly staleMs?: number;
}

/** Whether an fdinfo text's `flags:` (octal) open a descriptor for writing; null without flags. */
export function fdinfoWrites(fdinfo: string): boolean | null {
  const m = /^flags:\s*([0-7]+)\s*$/m.exec(fdinfo);
  if (!m) return null;
  // O_ACCMODE is 3 and O_RDONLY 0 on Linux; node:fs does not export O_ACCMODE.
  return (Number.parseInt(m[1] as string, 8) & 3) !== 0;
}

/** A published scan, or null when the text is not one. */
export function parseScan(text: string): WriterScan | null {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return null;
  }
  if (typeof v !== "object" || v === null) return null;
  const s = v as Record<string, unknown>;
  if (s.version !== 1 || typeof s.host !== "string" || !HOST_RE.test(s.host)) return null;
  if (!Number.isSafeInteger(s.seq) || typeof s.startedNs !== "string" || !/^[0-9]+$/.test(s.startedNs))
    return null;
  if (!Array.isArray(s.writers)) return null;
  const writers: Writer[] = [];
  for (const w of s.writers as unknown[]) {
    if (typeof w !== "object" || w === null) return null;
    const { ino, pid, path } = w as Record<string, unknown>;
    if (typeof ino !== "string" || !/^[0-9]+$/.test(ino) || !Number.isSafeInteger(pid)) return null;
    writers.push({ ino, pid: pid as number, path: typeof path === "string" ? path : "" });
  }
  return { version: 1, host: s.host, seq: s.seq as number, startedNs: s.startedNs, writers };
}

/**
 * The rule. Closed: every live host's latest scan began after the file's last change (`ctimeNs`,
 * same volume clock) and lists no writer of its inode. A host whose latest scan is `staleMs`
 * older than the newest one is taken as down and skipped.
 */
export function decideClosed(
  scans: readonly WriterScan[],
  file: { readonly ino: bigint; readonly ctimeNs: bigint },
  opts: ClosedOptions = {},
): ClosedVerdict {
  const byHost = new Map(scans.map((s) => [s.host, s]));
  for (const h of opts.hosts ?? [])
    if (!byHost.has(h)) return { closed: false, why: `no writer scan from ${h} yet` };
  if (byHost.size === 0) return { closed: false, why: "no app server has published a writer scan" };
  const ino = file.ino.toString();
  const newest = [...byHost.values()].reduce(
    (m, s) => (BigInt(s.startedNs) > m ? BigInt(s.startedNs) : m),
    0n,
  );
  const staleNs = BigInt(opts.staleMs ?? DEFAULT_STALE_MS) * 1_000_000n;
  const down: string[] = [];
  let live = 0;
  for (const s of [...byHost.values()].sort((a, b) => a.host.localeCompare(b.host))) {
    const started = BigInt(s.startedNs);
    if (newest - started > staleNs) {
      down.push(s.host);
      continue;
    }
    live++;
    const w = s.writers.find((x) => x.ino === ino);
    if (w) return { closed: false, why: `open for writing by pid ${w.pid} on ${s.host}` };
    if (started <= file.ctimeNs) return { closed: false, why: `changed since ${s.host} last looked` };
  }
  const skipped = down.length > 0 ? `; skipped ${down.join(", ")} (silent, taken as down)` : "";
  return { closed: true, why: `no writer on ${live} app server(s) since its last change${skipped}` };
}

/** Every scan published under `root` (unreadable or foreign files are left out). */
export function readScans(root: string): WriterScan[] {
  let names: string[];
  try {
    names = readdirSync(sftpStateDir(root));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw err;
  }
  const scans: WriterScan[] = [];
  for (const name of names.filter((n) => n.endsWith(".json")).sort()) {
    let text: string;
    try {
      text = readFileSync(`${sftpStateDir(root)}/${name}`, "utf8");
    } catch {
      continue;
    }
    const scan = parseScan(text);
    if (scan && `${scan.host}.json` === name) scans.push(scan);
  }
  return scans;
}

/**
 * For the registrar: whether upload `rawName` of `user` (lstat'ed as `st`) has no writer left.
 * It opens the file first: on NFS that revalidates the cached attributes (close-to-open), so the
 * change time compared is the server's.
 */
export function uploadClosed(
  root: string,
  user: string,
  rawName: Buffer,
  st: Stats,
  opts: ClosedOptions = {},
): ClosedVerdict {
  const path = Buffer.concat([Buffer.from(`${root}/incoming/${user}/upload/`), rawName]);
  let fresh: BigIntStats;
  try {
    const fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
    try {
      fresh = fstatSync(fd, { bigint: true });
    } finally {
      closeSync(fd);
    }
  } catch (err) {
    return { closed: false, why: `cannot open it: ${(err as NodeJS.ErrnoException).code ?? String(err)}` };
  }
  if (!fresh.isFile() || Number(fresh.ino) !== st.ino)
    return { closed: false, why: "replaced while being checked" };
  return decideClosed(readScans(root), { ino: fresh.ino, ctimeNs: fresh.ctimeNs }, opts);
}

const gone = (err: unknown): boolean => {
  const code = (err as NodeJS.ErrnoException).code;
  return code === "ENOENT" || code === "ESRCH";
};

/**
 * Descriptors open for writing on regular files of device `volumeDev`, in every process under
 * `procRoot` but `self`. A process it may not look into is an error, never "no writers".
 */
export function scanWriters(volumeDev: bigint, procRoot = "/proc", self = process.pid): Writer[] {
  const writers: Writer[] = [];
  for (const entry of readdirSync(procRoot)) {
    if (!/^[0-9]+$/.test(entry) || Number(entry) === self) continue;
    const fdDir = `${procRoot}/${entry}/fd`;
    let fds: string[];
    try {
      fds = readdirSync(fdDir);
    } catch (err) {
      if (gone(err)) continue;
      throw err;
    }
    for (const fd of fds) {
      try {
        if (!fdinfoWrites(readFileSync(`${procRoot}/${entry}/fdinfo/${fd}`, "utf8"))) continue;
        const st = statSync(`${fdDir}/${fd}`, { bigint: true });
        if (!st.isFile() || st.dev !== volumeDev) continue;
        writers.push({ ino: st.ino.toString(), pid: Number(entry), path: readlinkSync(`${fdDir}/${fd}`) });
      } catch (err) {
        if (!gone(err)) throw err;
      }
    }
  }
  return writers;
}

interface Ids {
  readonly uid: number;
  readonly gid: number;
}

/** uid and gid of a local user, from /etc/passwd. */
export function lookupUser(name: string, passwd = "/etc/passwd"): Ids {
  for (const line of readFileSync(passwd, "utf8").split("\n")) {
    const [user, , uid, gid] = line.split(":");
    if (user === name && uid && gid) return { uid: Number(uid), gid: Number(gid) };
  }
  throw new Error(`no user ${name} in ${passwd}`);
}

/** Run `fn` with effective ids `ids` (root keeps its saved ids, so it gets them back). */
function withEffectiveIds<T>(ids: Ids | undefined, fn: () => T): T {
  if (!ids || !process.seteuid || !process.setegid) return fn();
  process.setegid(ids.gid);
  process.seteuid(ids.uid);
  try {
    return fn();
  } finally {
    process.seteuid(0);
    process.setegid(0);
  }
}

/** The volume clock now: the change time the server gives a file just written and synced. */
function tick(root: string, host: string, seq: number): bigint {
  const fd = openSync(
    tickFile(root, host),
    constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC,
    0o644,
  );
  try {
    writeSync(fd, `${seq}\n`);
    fsyncSync(fd);
    return fstatSync(fd, { bigint: true }).mtimeNs;
  } finally {
    closeSync(fd);
  }
}

export interface ScanOptions {
  readonly root: string;
  /** @default os.hostname() */
  readonly host?: string;
  /** Ids the volume is written with: NFS squashes root. Needs root to switch. */
  readonly writeAs?: Ids;
  /** @default "/proc" */
  readonly procRoot?: string;
}

/** One round: stamp, scan, publish (atomically, by rename). */
export function publishScan(opts: ScanOptions, seq: number): WriterScan {
  const host = opts.host ?? hostname();
  if (!HOST_RE.test(host)) throw new Error(`upload watcher: unusable host name ${JSON.stringify(host)}`);
  const startedNs = withEffectiveIds(opts.writeAs, () => tick(opts.root, host, seq));
  const volumeDev = statSync(opts.root, { bigint: true }).dev;
  const scan: WriterScan = {
    version: 1,
    host,
    seq,
    startedNs: startedNs.toString(),
    writers: scanWriters(volumeDev, opts.procRoot),
  };
  withEffectiveIds(opts.writeAs, () => {
    const tmp = `${scanFile(opts.root, host)}.tmp`;
    const fd = openSync(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC, 0o644);
    try {
      writeSync(fd, `${JSON.stringify(scan)}\n`);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, scanFile(opts.root, host));
  });
  return scan;
}

export interface WatchOptions extends Omit<ScanOptions, "writeAs"> {
  /** User whose ids write the volume (e.g. www-data); resolved from /etc/passwd. */
  readonly writeAs?: string;
  /** @default DEFAULT_SCAN_INTERVAL_MS */
  readonly intervalMs?: number;
  readonly log?: (msg: string) => void;
  readonly signal?: AbortSignal;
}

/** The watcher (`pypi-index watch-uploads`): publishes a scan every interval until aborted. */
export async function watchUploadWriters(opts: WatchOptions): Promise<void> {
  const log = opts.log ?? (() => {});
  const interval = opts.intervalMs ?? DEFAULT_SCAN_INTERVAL_MS;
  const scanOpts: ScanOptions = {
    root: opts.root,
    host: opts.host ?? hostname(),
    writeAs: opts.writeAs ? lookupUser(opts.writeAs) : undefined,
    procRoot: opts.procRoot,
  };
  log(`upload watcher: publishing writer scans of ${opts.root} as ${scanOpts.host} every ${interval} ms`);
  let failing = false;
  for (let seq = 1; !opts.signal?.aborted; seq++) {
    const began = Date.now();
    try {
      publishScan(scanOpts, seq);
      if (failing) log("upload watcher: publishing again");
      failing = false;
    } catch (err) {
      // Registration waits meanwhile: a host without fresh scans holds every upload back.
      if (!failing)
        log(`upload watcher: scan not published: ${err instanceof Error ? err.message : String(err)}`);
      failing = true;
    }
    await new Promise<void>((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        opts.signal?.removeEventListener("abort", done);
        resolve();
      };
      const timer = setTimeout(done, Math.max(0, interval - (Date.now() - began)));
      opts.signal?.addEventListener("abort", done);
    });
  }
}
