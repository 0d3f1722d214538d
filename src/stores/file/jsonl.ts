/**
 * Reading append-only line files (`*.jsonl`) up to a limit: a line counts only once its `\n` is
 * there, before the limit readers trust (see `segments.ts`); the bytes after the last `\n` are a
 * write cut short (by a crash, or still under way) and are never returned. Reads are synchronous
 * system calls, a chunk at a time, with a turn of the event loop between chunks.
 */
import fs from 'node:fs';

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

export interface ReadLinesOptions {
  /** Byte offset to start at (a line start). @defaultValue 0 */
  readonly start?: number;
  /** Lines must end before this offset to count. @defaultValue the file's end */
  readonly limit?: number;
  /** Number of the first line read. @defaultValue 1 */
  readonly firstNo?: number;
  /** Keep only this many leading bytes of each line (index scans of files with huge lines). */
  readonly keepBytes?: number;
}

/** The complete lines of an open file within its limit, a chunk of lines at a time. */
export function* readLineChunks(fd: number, options: ReadLinesOptions = {}): Generator<RawLine[]> {
  let position = options.start ?? 0;
  const end = Math.min(options.limit ?? Number.MAX_SAFE_INTEGER, fs.fstatSync(fd).size);
  let no = options.firstNo ?? 1;
  const keep = options.keepBytes ?? Infinity;
  let pieces: Buffer[] = [];
  let kept = 0;
  let lineStart = position;
  const chunkBytes = Math.min(CHUNK_BYTES, Math.max(16 * 1024, end - position));
  while (position < end) {
    const buffer = Buffer.allocUnsafe(Math.min(chunkBytes, end - position));
    const bytesRead = fs.readSync(fd, buffer, 0, buffer.length, position);
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
      const lineEnd = chunkStart + at + 1;
      lines.push({ data, start: lineStart, end: lineEnd, no });
      no += 1;
      lineStart = lineEnd;
      kept = 0;
      from = at + 1;
    }
    if (from < bytesRead && kept < keep) {
      const piece = view.subarray(from, Math.min(bytesRead, from + (keep - kept)));
      pieces.push(Buffer.from(piece));
      kept += piece.length;
    }
    if (lines.length > 0) yield lines;
  }
}

/** A chunk of complete lines: `spans` holds each line's `[start, end)` in `buf` (without its `\n`), flat. */
export interface LineSpans {
  readonly buf: Buffer;
  readonly spans: number[];
}

/**
 * The complete lines of an open file within its limit, a chunk at a time, as spans of one buffer:
 * no object or buffer per line (a million-line ledger is read at about the speed of splitting it).
 * A line longer than a chunk is read whole with a bigger chunk.
 */
export function* readLineSpans(fd: number, limit = Number.MAX_SAFE_INTEGER): Generator<LineSpans> {
  const end = Math.min(limit, fs.fstatSync(fd).size);
  let position = 0;
  let size = Math.min(CHUNK_BYTES, Math.max(16 * 1024, end));
  while (position < end) {
    const buf = Buffer.allocUnsafe(Math.min(size, end - position));
    const bytesRead = fs.readSync(fd, buf, 0, buf.length, position);
    if (bytesRead === 0) return;
    const spans: number[] = [];
    let from = 0;
    for (;;) {
      const at = buf.indexOf(NEWLINE, from);
      if (at < 0 || at >= bytesRead) break;
      spans.push(from, at);
      from = at + 1;
    }
    if (spans.length === 0) {
      if (position + bytesRead >= end) return; // a torn last line
      size *= 2; // a line longer than the chunk: read it again, whole
      continue;
    }
    position += from;
    yield { buf, spans };
  }
}

/** Reads bytes `[start, end)` of an open file. */
export function readRange(fd: number, start: number, end: number): Buffer {
  const buffer = Buffer.allocUnsafe(end - start);
  let done = 0;
  while (done < buffer.length) {
    const bytesRead = fs.readSync(fd, buffer, done, buffer.length - done, start + done);
    if (bytesRead === 0) break;
    done += bytesRead;
  }
  return buffer.subarray(0, done);
}

/** The complete lines of an open file within its limit, last first, reading one chunk at a time backwards. */
export function* readLinesBackwards(fd: number, limit = Number.MAX_SAFE_INTEGER, chunkBytes = 64 * 1024): Generator<RawLine> {
  let position = Math.min(limit, fs.fstatSync(fd).size);
  let lineEnd = -1; // offset just after the `\n` of the line being gathered; -1 until the last `\n` is found
  let pieces: Buffer[] = []; // the gathered part of that line, last piece first
  while (position > 0) {
    const start = Math.max(0, position - chunkBytes);
    const chunk = readRange(fd, start, position);
    if (chunk.length < position - start) return; // the file shrank: not a log of ours any more
    let high = chunk.length;
    for (;;) {
      const at = high > 0 ? chunk.lastIndexOf(NEWLINE, high - 1) : -1;
      if (at < 0) break;
      if (lineEnd >= 0) {
        pieces.push(chunk.subarray(at + 1, high));
        yield { data: joinReversed(pieces), start: start + at + 1, end: lineEnd, no: 0 };
        pieces = [];
      }
      lineEnd = start + at + 1;
      high = at;
    }
    if (lineEnd >= 0 && high > 0) pieces.push(chunk.subarray(0, high));
    position = start;
  }
  if (lineEnd >= 0) yield { data: joinReversed(pieces), start: 0, end: lineEnd, no: 0 };
}

function joinReversed(pieces: Buffer[]): Buffer {
  if (pieces.length === 1) return pieces[0]!;
  return Buffer.concat(pieces.reverse());
}

/** Splits a list into slices of at most `size` (for bounded writes and export records). */
export function* sliceBy<T>(list: readonly T[], size: number): Generator<T[]> {
  for (let i = 0; i < list.length; i += size) yield list.slice(i, i + size);
}
