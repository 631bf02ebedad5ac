/** Durable file writes shared by registration, the page writer and the request spool. */
import { closeSync, constants, fsyncSync, openSync, unlinkSync, writeSync } from "node:fs";

/** writeSync may write less than asked; loop until all of `b` is written. */
export function writeAll(fd: number, b: Uint8Array): void {
  let off = 0;
  while (off < b.length) off += writeSync(fd, b, off, b.length - off);
}

/** Make a directory's entries (a rename, a link) durable. */
export function fsyncDir(dir: string): void {
  const fd = openSync(dir, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** Create `path` (it must not exist) with `data`, fsynced; on failure nothing is left behind. */
export function writeNewFile(path: string, data: Uint8Array, mode = 0o644): void {
  const fd = openSync(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, mode);
  try {
    writeAll(fd, data);
    fsyncSync(fd);
  } catch (err) {
    closeSync(fd);
    unlinkSync(path);
    throw err;
  }
  closeSync(fd);
}
