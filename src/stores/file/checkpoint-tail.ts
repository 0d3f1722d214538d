/**
 * Reading `checkpoints.jsonl` backwards from its end, for a resume: the records from the newest
 * intact checkpoint of a kind (a workflow's last snapshot) to the end, each byte read once, and
 * nothing much before them (at most one chunk). A forward listing would read the whole log, which
 * grows with every step while the state may not.
 */
import type fs from 'node:fs/promises';
import type { CairnError } from '../../core/errors.js';
import { corrupt, decodeCheckpoint } from '../codec.js';
import type { CheckpointRead } from '../store.js';
import { emptyIndex, indexLine, isTombstone, probeOf, seqOfHead, type CheckpointIndex } from './checkpoint-log.js';

const CHUNK_BYTES = 64 * 1024;
const NEWLINE = 0x0a;
/** Enough of a line to read its seq (as in the index). */
const HEAD_BYTES = 320;

interface TailLine {
  readonly data: Buffer;
  readonly start: number;
  readonly end: number;
}

/**
 * The records from the newest intact checkpoint of `kind` to the end of the log open in `handle`,
 * oldest first (undefined when there is none), and an index of the lines read (`from` > 0 unless
 * the whole log was read; undefined when no line read shows its seq, so the highest seq is unknown).
 * The torn tail (bytes after the last `\n`) is ignored, as readers do.
 */
export async function readSinceLatest(
  handle: fs.FileHandle,
  runId: string,
  kind: string,
): Promise<{ records: CheckpointRead[] | undefined; index: CheckpointIndex | undefined }> {
  const lines: TailLine[] = []; // newest first
  const records: CheckpointRead[] = []; // newest first
  let found = false;
  for await (const line of readLinesBackwards(handle)) {
    lines.push(line);
    if (line.data.length === 0) continue;
    const text = line.data.toString('utf8');
    if (isTombstone(text)) continue;
    const record = toRead(text, runId);
    records.push(record);
    if (record.valid && record.checkpoint.kind === kind) {
      found = true;
      break;
    }
  }
  lines.reverse();
  const stat = await handle.stat();
  let index: CheckpointIndex | undefined = { ...emptyIndex(), dev: stat.dev, ino: stat.ino, from: lines[0]?.start ?? 0 };
  for (const line of lines) indexLine(index, line);
  const tail = lines.at(-1);
  index.probe = tail ? probeOf(tail.data) : undefined;
  if (index.from > 0 && !index.slots.some((slot) => slot.seq !== undefined)) index = undefined;
  return { records: found ? records.reverse() : undefined, index };
}

/** The complete lines of the log, last first (the torn tail skipped), reading one chunk at a time. */
async function* readLinesBackwards(handle: fs.FileHandle): AsyncGenerator<TailLine> {
  let position = (await handle.stat()).size;
  let lineEnd = -1; // offset just after the `\n` of the line being gathered; -1 until the last `\n` is found
  let pieces: Buffer[] = []; // the gathered part of that line, last piece first
  while (position > 0) {
    const start = Math.max(0, position - CHUNK_BYTES);
    const chunk = Buffer.allocUnsafe(position - start);
    let filled = 0;
    while (filled < chunk.length) {
      const { bytesRead } = await handle.read(chunk, filled, chunk.length - filled, start + filled);
      if (bytesRead === 0) throw new Error(`checkpoints.jsonl shrank while it was read at ${start + filled}`);
      filled += bytesRead;
    }
    let high = chunk.length;
    for (;;) {
      const at = high > 0 ? chunk.lastIndexOf(NEWLINE, high - 1) : -1;
      if (at < 0) break;
      if (lineEnd >= 0) {
        pieces.push(chunk.subarray(at + 1, high));
        yield { data: joinReversed(pieces), start: start + at + 1, end: lineEnd };
        pieces = [];
      }
      lineEnd = start + at + 1;
      high = at;
    }
    if (lineEnd >= 0 && high > 0) pieces.push(chunk.subarray(0, high));
    position = start;
  }
  if (lineEnd >= 0) yield { data: joinReversed(pieces), start: 0, end: lineEnd };
}

function joinReversed(pieces: Buffer[]): Buffer {
  if (pieces.length === 1) return pieces[0]!;
  return Buffer.concat(pieces.reverse());
}

/** Decodes a checkpoint line with its state; damaged ones are flagged as in a listing. */
function toRead(line: string, runId: string): CheckpointRead {
  const seq = seqOfHead(line.slice(0, HEAD_BYTES));
  try {
    const checkpoint = decodeCheckpoint(line, { runId, ...(seq === undefined ? {} : { seq }) }, true);
    if (checkpoint.runId !== runId) throw corrupt(`record belongs to run ${checkpoint.runId}`, { runId, seq: checkpoint.seq });
    return { valid: true, checkpoint };
  } catch (error) {
    const e = error as CairnError;
    if (e.code !== 'CHECKPOINT_CORRUPT' && e.code !== 'FORMAT_TOO_NEW') throw error;
    return { valid: false, ...(seq === undefined ? {} : { seq }), reason: e.message, code: e.code };
  }
}
