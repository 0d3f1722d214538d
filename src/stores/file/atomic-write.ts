/**
 * Durable whole-file writes for the file store: write a temp file in the same folder, fsync it,
 * then rename (replace) or link (create exclusively) it into place and fsync the folder, so that
 * after a crash the target holds either the old bytes or the new ones, never a mix.
 */
import { randomUUID } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';

/** Makes a folder's entries (created, renamed, removed files) durable. */
export async function syncDir(dir: string): Promise<void> {
  const handle = await fs.open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Writes every byte of `data` through `handle` (a single write for all but huge buffers). */
export async function writeAll(handle: fs.FileHandle, data: Buffer): Promise<void> {
  let offset = 0;
  while (offset < data.length) {
    const { bytesWritten } = await handle.write(data, offset, data.length - offset, null);
    offset += bytesWritten;
  }
}

/** Creates `file` (which must not exist), writes `data` and fsyncs it. The folder is not synced. */
export async function writeNewFileDurably(file: string, data: string | Buffer): Promise<void> {
  const handle = await fs.open(file, 'wx');
  try {
    await writeAll(handle, typeof data === 'string' ? Buffer.from(data, 'utf8') : data);
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** A temp file name next to `file`; dot-prefixed so that it is never taken for a run or a ledger. */
export function tempPathFor(file: string): string {
  return path.join(path.dirname(file), `.${path.basename(file)}.${randomUUID()}.tmp`);
}

/** Replaces `file` atomically with `data`: temp file, fsync, rename over the target, fsync the folder. */
export async function replaceFileAtomically(file: string, data: string | Buffer): Promise<void> {
  const temp = tempPathFor(file);
  try {
    await writeNewFileDurably(temp, data);
    await fs.rename(temp, file);
  } catch (error) {
    await fs.rm(temp, { force: true });
    throw error;
  }
  await syncDir(path.dirname(file));
}

/**
 * Creates `file` with `data` only if it does not exist yet, atomically: the content is complete
 * before the name appears (temp file + hard link). Returns false if the file already existed.
 */
export async function createFileExclusively(file: string, data: string | Buffer): Promise<boolean> {
  const temp = tempPathFor(file);
  try {
    await writeNewFileDurably(temp, data);
    await fs.link(temp, file);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw error;
  } finally {
    await fs.rm(temp, { force: true });
  }
  await syncDir(path.dirname(file));
  return true;
}

/** The errno code of a file system error, if any. */
export function errnoOf(error: unknown): string | undefined {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

/** True for "the file (or one of its folders) is not there". */
export function isMissing(error: unknown): boolean {
  const code = errnoOf(error);
  return code === 'ENOENT' || code === 'ENOTDIR';
}
