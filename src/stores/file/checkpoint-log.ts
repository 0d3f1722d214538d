/**
 * `checkpoints.jsonl`: one sealed checkpoint line per record, appended under the run's mutex.
 * Deleted checkpoints become small sealed tombstones (`{"fv":1,"t":"cp-del","run":…,"seq":N}`),
 * so the highest seq ever used stays in the file and numbers are never reused.
 *
 * An in-memory {@link CheckpointIndex} (seq → byte range) lets appends find the next seq and reads
 * find one checkpoint without rereading the file: it is refreshed from an open handle by scanning
 * only what was appended since, and rebuilt when the file was replaced (other inode) or changed
 * under it (the first bytes of the last indexed line differ).
 */
import fsSync from 'node:fs';
import type fs from 'node:fs/promises';
import type { CairnError } from '../../core/errors.js';
import { q, RECORD_FORMAT_VERSION, sealBody, unsealLine } from '../../core/record.js';
import { corrupt, decodeCheckpoint } from '../codec.js';
import type { Checkpoint, CheckpointEntry } from '../store.js';
import { readRawLineChunks, readRange } from './jsonl.js';

export const CHECKPOINTS_FILE = 'checkpoints.jsonl';

/** Where one line of the log sits; `seq` read from the line's header (unverified). */
export interface CheckpointSlot {
  readonly seq: number | undefined;
  readonly tombstone: boolean;
  readonly start: number;
  readonly end: number;
}

export interface CheckpointIndex {
  dev: number;
  ino: number;
  /** Offset after the last complete line indexed. */
  size: number;
  /** The first bytes of the last indexed line, to notice a file changed in place. */
  probe: Buffer | undefined;
  slots: CheckpointSlot[];
  /**
   * Where the first slot's line starts: 0 when the slots describe the whole log; a resume that read
   * only the log's tail indexes only that (seqs grow along the log, so `maxSeq` is still the
   * highest), and readers that need an older slot rebuild the index from the start.
   */
  from: number;
  maxSeq: number;
}

/** Enough of a line to read `"t"` and `"seq"`: prefix, crc, fv, type, a 128-char run id, seq. */
const HEAD_BYTES = 320;
const PROBE_BYTES = 24;
const SEQ_PATTERN = /"seq":(\d{1,16})[,}]/;
const TOMBSTONE_MARK = '"t":"cp-del"';

export function emptyIndex(): CheckpointIndex {
  return { dev: 0, ino: 0, size: 0, probe: undefined, slots: [], from: 0, maxSeq: 0 };
}

/** The tombstone line that replaces deleted checkpoint `seq`. */
export function encodeTombstone(runId: string, seq: number): string {
  return sealBody(`{"fv":${RECORD_FORMAT_VERSION},"t":"cp-del","run":${q(runId)},"seq":${seq}}`);
}

/** True for a verified tombstone line. */
export function isTombstone(line: string): boolean {
  if (!line.includes(TOMBSTONE_MARK)) return false;
  const opened = unsealLine(line);
  return opened.ok && opened.body.t === 'cp-del';
}

/** Reads the seq a line claims (even a damaged one, best effort) from its first bytes. */
export function seqOfHead(head: string): number | undefined {
  const match = SEQ_PATTERN.exec(head);
  if (!match?.[1]) return undefined;
  const seq = Number(match[1]);
  return Number.isSafeInteger(seq) && seq > 0 ? seq : undefined;
}

/**
 * Brings `cached` up to date with the file open in `handle`, or builds a new index. Reads only the
 * lines appended since `cached` was built when the file is the same one.
 */
export async function refreshIndex(handle: fs.FileHandle, cached: CheckpointIndex | undefined): Promise<CheckpointIndex> {
  const stat = await handle.stat();
  let index = cached;
  if (!index || index.ino !== stat.ino || index.dev !== stat.dev || stat.size < index.size || !(await probeMatches(handle, index))) {
    index = { ...emptyIndex(), dev: stat.dev, ino: stat.ino };
  }
  if (stat.size === index.size) return index;
  for await (const chunk of readRawLineChunks(handle, { start: index.size, keepBytes: HEAD_BYTES })) {
    for (const line of chunk) indexLine(index, line);
  }
  const tail = index.slots.at(-1);
  index.probe = tail ? await readProbe(handle, tail) : undefined;
  return index;
}

/** Adds one line read from the log (its head at least), the next one after those indexed, to the index. */
export function indexLine(index: CheckpointIndex, line: { readonly data: Buffer; readonly start: number; readonly end: number }): void {
  index.size = line.end;
  if (line.data.length === 0) return;
  const head = line.data.subarray(0, HEAD_BYTES).toString('latin1');
  const seq = seqOfHead(head);
  index.slots.push({ seq, tombstone: head.includes(TOMBSTONE_MARK), start: line.start, end: line.end });
  if (seq !== undefined && seq > index.maxSeq) index.maxSeq = seq;
}

/**
 * Lists the log's checkpoints (tombstones left out, damaged ones flagged) and builds its index in
 * the same pass, so that a resume that lists and then reads checkpoints reads the file once for
 * both instead of twice.
 */
export async function listAndIndex(handle: fs.FileHandle, runId: string): Promise<{ entries: CheckpointEntry[]; index: CheckpointIndex }> {
  const stat = await handle.stat();
  const index: CheckpointIndex = { ...emptyIndex(), dev: stat.dev, ino: stat.ino };
  const entries: CheckpointEntry[] = [];
  for await (const chunk of readRawLineChunks(handle)) {
    for (const line of chunk) {
      indexLine(index, line);
      if (line.data.length === 0) continue;
      const text = line.data.toString('utf8');
      if (!isTombstone(text)) entries.push(toEntry(text, runId));
    }
  }
  const tail = index.slots.at(-1);
  index.probe = tail ? await readProbe(handle, tail) : undefined;
  return { entries, index };
}

/** The first bytes of a line, to notice later that the file changed in place. */
export function probeOf(line: Buffer): Buffer {
  return Buffer.from(line.subarray(0, Math.min(PROBE_BYTES, line.length)));
}

async function readProbe(handle: fs.FileHandle, slot: CheckpointSlot): Promise<Buffer> {
  const length = Math.min(PROBE_BYTES, slot.end - slot.start);
  const buffer = Buffer.alloc(length);
  await handle.read(buffer, 0, length, slot.start);
  return buffer;
}

async function probeMatches(handle: fs.FileHandle, index: CheckpointIndex): Promise<boolean> {
  const tail = index.slots.at(-1);
  if (!tail || !index.probe) return index.size === 0;
  return (await readProbe(handle, tail)).equals(index.probe);
}

/**
 * Checks synchronously that the file open as `fd` (readable) is still exactly what `index`
 * describes (same inode, same size, same last line): then an append may take seq
 * `index.maxSeq + 1` without a rescan. False when anything differs (the caller rescans on the async path).
 */
export function indexMatchesFdSync(fd: number, index: CheckpointIndex): boolean {
  const stat = fsSync.fstatSync(fd);
  if (stat.ino !== index.ino || stat.dev !== index.dev || stat.size !== index.size) return false;
  const tail = index.slots.at(-1);
  if (!tail || !index.probe) return index.size === 0;
  const probe = Buffer.alloc(index.probe.length);
  fsSync.readSync(fd, probe, 0, probe.length, tail.start);
  return probe.equals(index.probe);
}

/** Adds a line just appended at the end of the file (with its newline) to the index. */
export function indexAppendedLine(index: CheckpointIndex, seq: number, line: string | Buffer): void {
  const bytes = typeof line === 'string' ? Buffer.from(line, 'utf8') : line;
  index.slots.push({ seq, tombstone: false, start: index.size, end: index.size + bytes.length });
  index.size += bytes.length;
  if (seq > index.maxSeq) index.maxSeq = seq;
  index.probe = probeOf(bytes);
}

/** The slot of live (not deleted) checkpoint `seq`, if the log has one. */
export function findSlot(index: CheckpointIndex, seq: number): CheckpointSlot | undefined {
  for (let i = index.slots.length - 1; i >= 0; i--) {
    const slot = index.slots[i];
    if (slot?.seq === seq) return slot.tombstone ? undefined : slot;
  }
  return undefined;
}

/** Reads one slot's line. */
export function readSlot(handle: fs.FileHandle, slot: CheckpointSlot): Promise<string> {
  return readRange(handle, slot.start, slot.end - 1);
}

/** Decodes a checkpoint line for a listing; tombstones are filtered out by the caller. */
export function toEntry(line: string, runId: string): CheckpointEntry {
  const seq = seqOfHead(line.slice(0, HEAD_BYTES));
  try {
    const ref = decodeCheckpoint(line, { runId, ...(seq === undefined ? {} : { seq }) }, false);
    if (ref.runId !== runId)
      return { valid: false, seq: ref.seq, reason: `record belongs to run ${ref.runId}`, code: 'CHECKPOINT_CORRUPT' };
    return { valid: true, ref };
  } catch (error) {
    const e = error as CairnError;
    if (e.code !== 'CHECKPOINT_CORRUPT' && e.code !== 'FORMAT_TOO_NEW') throw error;
    return { valid: false, ...(seq === undefined ? {} : { seq }), reason: e.message, code: e.code };
  }
}

/** The distinct positive integers among `seqs` (others can match nothing, as in every store). */
export function toSeqSet(seqs: readonly number[]): Set<number> {
  return new Set(seqs.filter((seq) => Number.isSafeInteger(seq) && seq > 0));
}

/** Reads and fully decodes the checkpoint in `slot`; `CHECKPOINT_CORRUPT` unless it is checkpoint `seq` of the run. */
export async function readCheckpointAt(handle: fs.FileHandle, slot: CheckpointSlot, runId: string, seq: number): Promise<Checkpoint> {
  const cp = decodeCheckpoint(await readSlot(handle, slot), { runId, seq }, true);
  if (cp.seq !== seq || cp.runId !== runId) throw corrupt(`Checkpoint ${seq} of run ${runId} holds another record.`, { runId, seq });
  return cp;
}
