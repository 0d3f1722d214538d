/**
 * Artifact files, reached without ever following a link: every folder from a run's artifact
 * folder down to the file is checked with `lstat` (a real folder), the file is opened with
 * `O_NOFOLLOW` and checked with `fstat` (a regular file). The engine and every store use these
 * (artifact folders are local folders on every store); the file store's logs have their own, in
 * `stores/file/safe-fs.ts`, with the same `UNSAFE_PATH` error.
 *
 * Limits: Node has no `openat`, so a folder swapped for a link between the check and the open is
 * not caught; what these refuse is every link present when cairn looks.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { errnoOf } from './durable-fs.js';
import { CairnError } from './errors.js';

const { O_RDONLY, O_WRONLY, O_CREAT, O_TRUNC, O_NOFOLLOW, O_NONBLOCK } = fs.constants;

/** `UNSAFE_PATH` naming `file`: what is wrong with it (`it is a link`, `it is not a folder`, …). */
export function unsafePathError(file: string, what: string): CairnError {
  return new CairnError(
    'UNSAFE_PATH',
    `Refusing ${file}: ${what}. cairn never follows links inside a store; move the link away (or restore the ` +
      'file it replaced) and try again.',
    { path: file },
  );
}

/** The folders from `base` (inclusive) down to `dir` (inclusive); `dir` must be `base` or below it. */
function foldersDown(base: string, dir: string): string[] {
  const rel = path.relative(base, dir);
  if (rel.startsWith('..') || path.isAbsolute(rel)) throw new Error(`${dir} is not inside ${base}`);
  const folders = [base];
  if (rel !== '') for (const part of rel.split(path.sep)) folders.push(path.join(folders.at(-1)!, part));
  return folders;
}

function checkFolder(folder: string, stat: fs.Stats): void {
  if (stat.isSymbolicLink()) throw unsafePathError(folder, 'it is a link');
  if (!stat.isDirectory()) throw unsafePathError(folder, 'it is not a folder');
}

/**
 * Checks `base` and every folder below it down to `dir` with `lstat`: true when all are real
 * folders, false when one is missing, `UNSAFE_PATH` naming the first that is a link or not a folder.
 */
export function checkFolders(base: string, dir: string): boolean {
  for (const folder of foldersDown(base, dir)) {
    let stat: fs.Stats;
    try {
      stat = fs.lstatSync(folder);
    } catch (error) {
      if (errnoOf(error) === 'ENOENT') return false;
      throw error;
    }
    checkFolder(folder, stat);
  }
  return true;
}

/**
 * Creates `base` (and its parents) and every folder below it down to `dir`, one at a time: each
 * one that exists must be a real folder (`UNSAFE_PATH` naming it otherwise), so nothing is ever
 * created through a link.
 */
export function makeFolders(base: string, dir: string): void {
  fs.mkdirSync(path.dirname(base), { recursive: true });
  for (const folder of foldersDown(base, dir)) {
    try {
      fs.mkdirSync(folder);
      continue;
    } catch (error) {
      if (errnoOf(error) !== 'EEXIST') throw error;
    }
    checkFolder(folder, fs.lstatSync(folder));
  }
}

/** An artifact file opened for reading (a regular file), or why it was not. */
export type OpenedFile =
  | { readonly fd: number; readonly size: number }
  | { readonly fd?: undefined; readonly problem: 'missing' | 'a link' | 'not a regular file' };

/**
 * Opens `file` for reading without following a link (`O_NOFOLLOW`; `O_NONBLOCK`, so a FIFO never
 * blocks the open) and checks with `fstat` that it is a regular file. The caller closes `fd`.
 */
export function openRegularFile(file: string): OpenedFile {
  let fd: number;
  try {
    fd = fs.openSync(file, O_RDONLY | O_NOFOLLOW | O_NONBLOCK);
  } catch (error) {
    const code = errnoOf(error);
    if (code === 'ENOENT' || code === 'ENOTDIR') return { problem: 'missing' };
    if (code === 'ELOOP') return { problem: 'a link' };
    if (code === 'ENXIO' || code === 'EISDIR') return { problem: 'not a regular file' }; // a socket, a folder
    throw error;
  }
  const stat = fs.fstatSync(fd);
  if (!stat.isFile()) {
    fs.closeSync(fd);
    return { problem: 'not a regular file' };
  }
  return { fd, size: stat.size };
}

/** Size and sha256 of an open file, read synchronously in 1 MiB chunks from its start. */
export function hashFdSync(fd: number): { size: number; sha256: string } {
  const hash = createHash('sha256');
  const buffer = Buffer.allocUnsafe(1024 * 1024);
  let size = 0;
  for (;;) {
    const n = fs.readSync(fd, buffer, 0, buffer.length, size);
    if (n === 0) break;
    hash.update(buffer.subarray(0, n));
    size += n;
  }
  return { size, sha256: hash.digest('hex') };
}

/** sha256 (hex) of an open file, streamed from its start; closes `fd`. */
export async function hashFd(fd: number): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of fs.createReadStream('', { fd, start: 0, autoClose: true }) as AsyncIterable<Buffer>) hash.update(chunk);
  return hash.digest('hex');
}

/**
 * Makes `file` (inside `base`, the run's artifact folder) ready to be written by a stage: its
 * folders are created as real folders, and whatever sits at `file` that a write would go through
 * is removed first: a link (unlinked itself, never its target), a FIFO, a socket or a device, and
 * a regular file with other names (a hard link: writing it would change the other names' content).
 * A regular file of its own, or a folder, is left as it is.
 */
export function prepareArtifactPath(base: string, file: string): void {
  makeFolders(base, path.dirname(file));
  let stat: fs.Stats;
  try {
    stat = fs.lstatSync(file);
  } catch (error) {
    if (errnoOf(error) === 'ENOENT') return;
    throw error;
  }
  if (stat.isDirectory() || (stat.isFile() && stat.nlink <= 1)) return;
  fs.unlinkSync(file);
}

/**
 * Copies artifact `from` (inside the artifact folder `fromBase`) to `to` (inside `toBase`) without
 * following a link on either side. False, having copied nothing, when `from` is missing, a link or
 * not a regular file.
 */
export async function copyArtifactFile(fromBase: string, from: string, toBase: string, to: string): Promise<boolean> {
  const opened = checkFolders(fromBase, path.dirname(from)) ? openRegularFile(from) : undefined;
  if (opened?.fd === undefined) return false;
  try {
    prepareArtifactPath(toBase, to);
    const out = await fs.promises.open(to, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW, 0o644);
    try {
      const buffer = Buffer.allocUnsafe(1024 * 1024);
      for (let position = 0; ;) {
        const n = fs.readSync(opened.fd, buffer, 0, buffer.length, position);
        if (n === 0) break;
        for (let written = 0; written < n;) written += (await out.write(buffer, written, n - written)).bytesWritten;
        position += n;
      }
    } finally {
      await out.close();
    }
  } finally {
    fs.closeSync(opened.fd);
  }
  return true;
}
