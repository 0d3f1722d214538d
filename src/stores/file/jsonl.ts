/**
 * Append-only line files (`*.jsonl`): streamed reading with byte offsets, durable appends, and the
 * repair of a torn last line. A line counts only once its `\n` is on disk; the bytes after the
 * last `\n` are a write cut short by a crash and are ignored by readers and cut off by writers.
 */
import fsSync from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { isMissing, syncDir, writeAll } from './atomic-write.js';

const CHUNK_BYTES = 1024 * 1024;
const NEWLINE = 0x0a;

/** One complete line: its bytes (without `\n`), where it sits in the file and its 1-based number. */
export interface RawLine {
  /** The line's bytes, or only its first `keepBytes` bytes when that option is given. */
  readonly data: Buffer;
  readonly start: number;
  /** Offset just after the line's `\n`. */
  readonly end: number;
  readonly no: number;
}

export interface TextLine {
  readonly text: string;
  readonly start: number;
  readonly end: number;
  readonly no: number;
}

export interface ReadLinesOptions {
  /** Byte offset to start at (must be a line start). @defaultValue 0 */
  readonly start?: number;
  /** Number of the first line read. @defaultValue 1 */
  readonly firstNo?: number;
  /** Keep only this many leading bytes of each line (index scans of files with huge lines). */
  readonly keepBytes?: number;
}

/**
 * Reads the complete lines of an open file, a chunk of lines at a time (so that per-line work
 * stays synchronous), never holding more than one chunk plus one line in memory. The torn tail
 * (bytes after the last `\n`) is not returned.
 */
export async function* readRawLineChunks(handle: fs.FileHandle, options: ReadLinesOptions = {}): AsyncGenerator<RawLine[]> {
  let position = options.start ?? 0;
  let no = options.firstNo ?? 1;
  const keep = options.keepBytes ?? Infinity;
  let pieces: Buffer[] = [];
  let kept = 0;
  let lineStart = position;
  // small files get a small buffer; the file may still grow while it is read
  const chunkBytes = Math.min(CHUNK_BYTES, Math.max(16 * 1024, (await handle.stat()).size - position + 1));
  for (;;) {
    const buffer = Buffer.allocUnsafe(chunkBytes);
    const { bytesRead } = await handle.read(buffer, 0, chunkBytes, position);
    if (bytesRead === 0) return;
    const view = buffer.subarray(0, bytesRead);
    const chunkStart = position;
    position += bytesRead;
    const lines: RawLine[] = [];
    let from = 0;
    for (;;) {
      const at = view.indexOf(NEWLINE, from);
      if (at < 0) break;
      let data = view.subarray(from, Math.min(at, from + Math.max(0, keep - kept)));
      if (pieces.length > 0) {
        pieces.push(data);
        data = Buffer.concat(pieces);
        pieces = [];
      }
      const end = chunkStart + at + 1;
      lines.push({ data, start: lineStart, end, no });
      no += 1;
      lineStart = end;
      kept = 0;
      from = at + 1;
    }
    if (from < bytesRead && kept < keep) {
      const piece = view.subarray(from, Math.min(bytesRead, from + (keep - kept)));
      pieces.push(piece);
      kept += piece.length;
    }
    if (lines.length > 0) yield lines;
  }
}

/** Like {@link readRawLineChunks}, with each line decoded as UTF-8 text. */
export async function* readTextLineChunks(handle: fs.FileHandle, options: ReadLinesOptions = {}): AsyncGenerator<TextLine[]> {
  for await (const chunk of readRawLineChunks(handle, options)) {
    yield chunk.map((line) => ({ text: line.data.toString('utf8'), start: line.start, end: line.end, no: line.no }));
  }
}

/** Opens a file for reading, or returns undefined when it (or its folder) does not exist. */
export async function openIfExists(file: string): Promise<fs.FileHandle | undefined> {
  try {
    return await fs.open(file, 'r');
  } catch (error) {
    if (isMissing(error)) return undefined;
    throw error;
  }
}

/** Streams the complete lines of `file` as text; nothing when the file does not exist. */
export async function* readTextLines(file: string): AsyncGenerator<TextLine[]> {
  const handle = await openIfExists(file);
  if (!handle) return;
  try {
    yield* readTextLineChunks(handle);
  } finally {
    await handle.close();
  }
}

/** Reads bytes `[start, end)` of an open file as text. */
export async function readRange(handle: fs.FileHandle, start: number, end: number): Promise<string> {
  const buffer = Buffer.allocUnsafe(end - start);
  let done = 0;
  while (done < buffer.length) {
    const { bytesRead } = await handle.read(buffer, done, buffer.length - done, start + done);
    if (bytesRead === 0) break;
    done += bytesRead;
  }
  return buffer.toString('utf8', 0, done);
}

/** True when the file is empty or ends with `\n` (no torn last line). */
async function hasCleanTail(handle: fs.FileHandle): Promise<boolean> {
  const { size } = await handle.stat();
  if (size === 0) return true;
  const byte = Buffer.alloc(1);
  await handle.read(byte, 0, 1, size - 1);
  return byte[0] === NEWLINE;
}

/** Offset just after the last `\n` before `size`, or 0. Reads backwards, one chunk at a time. */
async function findEndOfLastLine(handle: fs.FileHandle, size: number): Promise<number> {
  const step = 64 * 1024;
  const buffer = Buffer.allocUnsafe(step);
  let end = size;
  while (end > 0) {
    const start = Math.max(0, end - step);
    const { bytesRead } = await handle.read(buffer, 0, end - start, start);
    const at = buffer.subarray(0, bytesRead).lastIndexOf(NEWLINE);
    if (at >= 0) return start + at + 1;
    end = start;
  }
  return 0;
}

/**
 * Cuts a torn last line (bytes after the last `\n`) off an open file and makes the cut durable.
 * Returns how many bytes were removed.
 */
export async function truncateTornTail(handle: fs.FileHandle): Promise<number> {
  if (await hasCleanTail(handle)) return 0;
  const { size } = await handle.stat();
  const end = await findEndOfLastLine(handle, size);
  await handle.truncate(end);
  await handle.datasync();
  return size - end;
}

/** Runs `repair` in whatever exclusion the caller needs (the run's mutex, or nothing when already held). */
export type RepairGuard = <T>(repair: () => Promise<T>) => Promise<T>;

export const runDirectly: RepairGuard = (repair) => repair();

/**
 * Appends `text` (complete lines, each ending with `\n`) durably: one write, one fdatasync; a new
 * file also gets its folder fsynced. A torn last line left by an earlier crash is cut off first
 * (inside `guard`, so that two processes never repair and append at once), so the new lines
 * never fuse with a partial one.
 */
export async function appendDurably(file: string, text: string, guard: RepairGuard = runDirectly): Promise<void> {
  let handle: fs.FileHandle;
  let created = false;
  try {
    handle = await fs.open(file, 'ax+');
    created = true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    handle = await fs.open(file, 'a+');
  }
  try {
    if (!created && !(await hasCleanTail(handle))) await guard(() => truncateTornTail(handle));
    await writeAll(handle, Buffer.from(text, 'utf8'));
    await handle.datasync();
  } finally {
    await handle.close();
  }
  if (created) await syncDir(path.dirname(file));
}

/**
 * {@link appendDurably} with synchronous calls, for the item-ledger hot path: one turn of the event
 * loop and no thread-pool round trips (measured here: an async write + datasync costs about two
 * fsyncs, the sync calls about one). Returns false, having written nothing, when the file's tail
 * must be repaired first (the caller then takes the async path, which repairs under the run's
 * mutex). Throws ENOENT when the folder is missing.
 */
export function tryAppendDurablySync(file: string, text: string): boolean {
  let fd: number;
  let created = false;
  try {
    fd = fsSync.openSync(file, 'ax+');
    created = true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    fd = fsSync.openSync(file, 'a+');
  }
  try {
    if (!created) {
      const { size } = fsSync.fstatSync(fd);
      if (size > 0) {
        const byte = Buffer.alloc(1);
        fsSync.readSync(fd, byte, 0, 1, size - 1);
        if (byte[0] !== NEWLINE) return false;
      }
    }
    const data = Buffer.from(text, 'utf8');
    let offset = 0;
    while (offset < data.length) offset += fsSync.writeSync(fd, data, offset, data.length - offset);
    fsSync.fdatasyncSync(fd);
  } finally {
    fsSync.closeSync(fd);
  }
  if (created) {
    const dir = fsSync.openSync(path.dirname(file), 'r');
    try {
      fsSync.fsyncSync(dir);
    } finally {
      fsSync.closeSync(dir);
    }
  }
  return true;
}

/** Writes a new file from line chunks (each line without `\n`) and fsyncs it; the folder is not synced. */
export async function writeLinesFile(file: string, chunks: Iterable<readonly string[]>): Promise<void> {
  const handle = await fs.open(file, 'wx');
  try {
    for (const lines of chunks) {
      if (lines.length > 0) await writeAll(handle, Buffer.from(`${lines.join('\n')}\n`, 'utf8'));
    }
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Splits a list into slices of at most `size` (for bounded writes and export records). */
export function* sliceBy<T>(list: readonly T[], size: number): Generator<T[]> {
  for (let i = 0; i < list.length; i += size) yield list.slice(i, i + size);
}
