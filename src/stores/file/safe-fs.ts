/**
 * File access inside a file store root that never goes through a link: every folder on the way
 * is checked with `lstat` (a real folder, not a link), the file itself is opened with
 * `O_NOFOLLOW` and checked with `fstat` (a regular file). Anything else is refused with
 * `UNSAFE_PATH`, naming the path, before a byte is read or written. Writers open their files once
 * and keep the descriptor, so a link planted later changes nothing they write.
 *
 * All calls are synchronous: they are short system calls on the hot path of appends (one event
 * loop turn, no thread-pool round trips), and one path per operation keeps what must be proved small.
 */
import fs from 'node:fs';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { errnoOf } from '../../core/durable-fs.js';
import { unsafePathError } from '../../core/no-follow.js';

const { O_RDONLY, O_RDWR, O_WRONLY, O_APPEND, O_CREAT, O_EXCL, O_NOFOLLOW, O_DIRECTORY } = fs.constants;

export { errnoOf };

/** True for "the file (or one of its folders) is not there". */
export function isMissing(error: unknown): boolean {
  const code = errnoOf(error);
  return code === 'ENOENT' || code === 'ENOTDIR';
}

/** `UNSAFE_PATH` naming `file` (the one error for links everywhere in cairn). */
export const unsafePath = unsafePathError;

/**
 * Checks that every folder from `root` (exclusive) down to `dir` (inclusive) is a real folder.
 * False when one is missing; `UNSAFE_PATH` when one is a link or not a folder.
 */
export function checkDirs(root: string, dir: string): boolean {
  const rel = path.relative(root, dir);
  if (rel === '') return true;
  let current = root;
  for (const part of rel.split(path.sep)) {
    current = path.join(current, part);
    if (checkedNow.has(current)) continue;
    const stat = fs.lstatSync(current, { throwIfNoEntry: false });
    if (stat === undefined) return false;
    if (stat.isSymbolicLink()) throw unsafePath(current, 'it is a link');
    if (!stat.isDirectory()) throw unsafePath(current, 'it is not a folder');
    rememberChecked(current);
  }
  return true;
}

/**
 * Folders found real in the current synchronous stretch of code: reading one run checks its
 * folders once, not once per file (listing a thousand runs made four `lstat`s of each run folder).
 * Forgotten at the next microtask, and at once by {@link forgetCheckedDirs} after this process
 * moves or removes a folder. Another process could swap a folder for a link between a check and
 * an open whether or not the check is remembered; the open of the file itself never follows one.
 */
const checkedNow = new Set<string>();

function rememberChecked(dir: string): void {
  if (checkedNow.size === 0) queueMicrotask(forgetCheckedDirs);
  checkedNow.add(dir);
}

/** Forgets the folders {@link checkDirs} found real: call after moving or removing a folder. */
export function forgetCheckedDirs(): void {
  checkedNow.clear();
}

function refuseOpenError(file: string, error: unknown): never {
  const code = errnoOf(error);
  if (code === 'ELOOP') throw unsafePath(file, 'it is a link');
  if (code === 'ENOTDIR') throw unsafePath(file, 'a folder on its path is not a folder');
  throw error;
}

/** Checks that an open descriptor is a regular file; closes it and throws `UNSAFE_PATH` otherwise. */
function checkRegular(fd: number, file: string): number {
  const stat = fs.fstatSync(fd);
  if (!stat.isFile()) {
    fs.closeSync(fd);
    throw unsafePath(file, 'it is not a regular file');
  }
  return fd;
}

/** Opens an existing regular file for reading, or undefined when it does not exist. */
export function openForRead(root: string, file: string): number | undefined {
  if (!checkDirs(root, path.dirname(file))) return undefined;
  let fd: number;
  try {
    fd = fs.openSync(file, O_RDONLY | O_NOFOLLOW);
  } catch (error) {
    if (errnoOf(error) === 'ENOENT') return undefined;
    refuseOpenError(file, error);
  }
  return checkRegular(fd, file);
}

/** Opens (creating it when absent) a regular file for appending. `created` tells whether it was new. */
export function openForAppend(root: string, file: string): { fd: number; created: boolean } {
  if (!checkDirs(root, path.dirname(file)))
    throw Object.assign(new Error(`ENOENT: no such folder ${path.dirname(file)}`), { code: 'ENOENT' });
  try {
    const fd = fs.openSync(file, O_RDWR | O_APPEND | O_CREAT | O_EXCL | O_NOFOLLOW, 0o644);
    return { fd, created: true };
  } catch (error) {
    if (errnoOf(error) !== 'EEXIST') refuseOpenError(file, error);
  }
  let fd: number;
  try {
    fd = fs.openSync(file, O_RDWR | O_APPEND | O_NOFOLLOW);
  } catch (error) {
    refuseOpenError(file, error);
  }
  return { fd: checkRegular(fd, file), created: false };
}

/** Reads a whole regular file as text; undefined when it does not exist. */
export function readFileSafe(root: string, file: string): string | undefined {
  const fd = openForRead(root, file);
  if (fd === undefined) return undefined;
  try {
    return fs.readFileSync(fd, 'utf8');
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Writes all of `data` at the descriptor's position (appends for `O_APPEND`). A failure carries
 * how many bytes went out before it ({@link bytesWrittenOf}): 0 means the file did not change.
 */
export function writeAllSync(fd: number, data: Buffer): void {
  let offset = 0;
  try {
    while (offset < data.length) offset += fs.writeSync(fd, data, offset, data.length - offset);
  } catch (error) {
    if (typeof error === 'object' && error !== null) Object.assign(error, { bytesWritten: offset });
    throw error;
  }
}

/** How many bytes a failed {@link writeAllSync} wrote before it failed (unknown counts as some). */
export function bytesWrittenOf(error: unknown): number {
  const written = (error as { bytesWritten?: unknown } | null)?.bytesWritten;
  return typeof written === 'number' ? written : 1;
}

/** Makes a folder's entries (created, renamed, removed files) durable. */
export function syncDir(dir: string): void {
  const fd = fs.openSync(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** Creates a folder (its parent must exist and be checked); false when it already exists. */
export function makeDir(dir: string): boolean {
  try {
    fs.mkdirSync(dir);
    return true;
  } catch (error) {
    if (errnoOf(error) === 'EEXIST') {
      const stat = fs.lstatSync(dir);
      if (stat.isSymbolicLink() || !stat.isDirectory())
        throw unsafePath(dir, stat.isSymbolicLink() ? 'it is a link' : 'it is not a folder');
      return false;
    }
    throw error;
  }
}

/**
 * Creates `dir` and the folders above it that are missing, one at a time (Node's own recursive
 * mkdir never returns for a path under /proc). Throws what mkdir throws for the first one it
 * cannot make, or ENOTDIR when one on the way is not a folder.
 */
export function makeDirs(dir: string): void {
  const parent = path.dirname(dir);
  try {
    fs.mkdirSync(dir);
    return;
  } catch (error) {
    const code = errnoOf(error);
    if (code === 'EEXIST') {
      if (!fs.statSync(dir).isDirectory()) throw Object.assign(new Error(`ENOTDIR: not a folder, ${dir}`), { code: 'ENOTDIR' });
      return;
    }
    if (code !== 'ENOENT' || parent === dir) throw error;
    if (fs.existsSync(parent)) throw error; // the parent is there and still no folder can be made in it (/proc)
  }
  makeDirs(parent);
  fs.mkdirSync(dir);
}

/** A temp file name in `dir`, dot-prefixed so that it is never taken for a run, a segment or a ledger. */
export function tempName(dir: string, base: string): string {
  return path.join(dir, `.${base}.${randomUUID()}.tmp`);
}

/** Writes a new file (which must not exist) with `data` and fsyncs it. */
export function writeNewFile(file: string, data: string | Buffer): void {
  const fd = fs.openSync(file, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o644);
  try {
    writeAllSync(fd, typeof data === 'string' ? Buffer.from(data, 'utf8') : data);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** Writes `data` into a new temp file next to `file` (fsynced with `durable`) and returns its name. */
function writeTemp(file: string, data: string | Buffer, durable: boolean): string {
  const temp = tempName(path.dirname(file), path.basename(file));
  try {
    const fd = fs.openSync(temp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o644);
    try {
      writeAllSync(fd, typeof data === 'string' ? Buffer.from(data, 'utf8') : data);
      if (durable) fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
  } catch (error) {
    fs.rmSync(temp, { force: true });
    throw error;
  }
  return temp;
}

/**
 * Creates `file` with `data`, complete before its name appears (temp file, fsync, link): false,
 * having changed nothing, when `file` already exists. The folder is not synced.
 */
export function createFileExclusive(file: string, data: string | Buffer, durable = true): boolean {
  const temp = writeTemp(file, data, durable);
  try {
    fs.linkSync(temp, file);
    return true;
  } catch (error) {
    if (errnoOf(error) === 'EEXIST') return false;
    throw error;
  } finally {
    fs.rmSync(temp, { force: true });
  }
}

/**
 * Replaces `file` with `data` atomically: temp file, rename over the target (a link there is
 * replaced, never followed). With `durable`, the temp file and the folder are fsynced.
 */
export function replaceFile(file: string, data: string | Buffer, durable: boolean): void {
  const temp = writeTemp(file, data, durable);
  try {
    fs.renameSync(temp, file);
  } catch (error) {
    fs.rmSync(temp, { force: true });
    throw error;
  }
  if (durable) syncDir(path.dirname(file));
}

/**
 * The names in a folder with their kinds (a link is never a folder here); `[]` when it does not
 * exist. `UNSAFE_PATH` when `dir` itself is a link or not a folder: its listing is never read.
 */
export function listDir(dir: string): fs.Dirent[] {
  try {
    if (!checkedNow.has(dir)) {
      const stat = fs.lstatSync(dir);
      if (stat.isSymbolicLink()) throw unsafePath(dir, 'it is a link');
      if (!stat.isDirectory()) throw unsafePath(dir, 'it is not a folder');
      rememberChecked(dir);
    }
    return fs.readdirSync(dir, { withFileTypes: true });
  } catch (error) {
    if (isMissing(error)) return [];
    throw error;
  }
}
