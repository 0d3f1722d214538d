/**
 * A run's checkpoints: the `checkpoints.jsonl` of each segment of its chain, read in order, each up
 * to what readers trust of it. Deleted checkpoints are marked by sealed tombstones appended later
 * (`{"fv":1,"t":"cp-del","run":…,"seq":N}`): the highest seq ever used stays in the log and numbers
 * are never reused.
 *
 * An in-memory {@link CheckpointIndex} (seq → where its line is) lets reads find one checkpoint
 * without rereading the logs: it is brought up to date by scanning only what was appended since,
 * and rebuilt when the chain changed or a file changed under it.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { CairnError } from '../../core/errors.js';
import { q, RECORD_FORMAT_VERSION, sealBody, unsealLine } from '../../core/record.js';
import { corrupt, decodeCheckpoint } from '../codec.js';
import type { Checkpoint, CheckpointEntry, CheckpointRead } from '../store.js';
import { readLineChunks, readLinesBackwards, readRange, type RawLine } from './jsonl.js';
import { openForRead } from './safe-fs.js';
import { CHECKPOINTS_FILE, limitOf, type Segment } from './segments.js';

/** Where one line sits; `seq` read from the line's first bytes (unverified). */
export interface CheckpointSlot {
  readonly seq: number | undefined;
  readonly tombstone: boolean;
  readonly part: number;
  readonly start: number;
  readonly end: number;
}

interface IndexedPart {
  readonly file: string;
  readonly limit: number;
  ino: number;
  /** Offset after the last complete line indexed. */
  size: number;
  /** The first bytes of the last indexed line, to notice a file changed in place. */
  probe: Buffer | undefined;
}

export interface CheckpointIndex {
  readonly key: string;
  readonly parts: IndexedPart[];
  readonly slots: CheckpointSlot[];
  maxSeq: number;
}

/** Enough of a line to read `"t"` and `"seq"`: prefix, crc, fv, type, a 128-char run id, seq. */
const HEAD_BYTES = 320;
const PROBE_BYTES = 24;
const SEQ_PATTERN = /"seq":(\d{1,16})[,}]/;
const TOMBSTONE_MARK = '"t":"cp-del"';

/** The tombstone line that marks checkpoint `seq` deleted. */
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

function chainKey(chain: readonly Segment[]): string {
  return chain.map((s) => `${s.id}:${limitOf(s, CHECKPOINTS_FILE)}`).join('|');
}

/** The checkpoint logs of a chain with what is trusted of each. */
function partsOf(chain: readonly Segment[]): { file: string; limit: number }[] {
  return chain.map((segment) => ({ file: path.join(segment.dir, CHECKPOINTS_FILE), limit: limitOf(segment, CHECKPOINTS_FILE) }));
}

/** Open descriptors of a chain's checkpoint logs (undefined where a segment has none), closed by `close()`. */
export class OpenLogs {
  private readonly fds = new Map<number, number | undefined>();
  constructor(
    private readonly root: string,
    readonly parts: readonly { file: string; limit: number }[],
  ) {}

  static of(root: string, chain: readonly Segment[]): OpenLogs {
    return new OpenLogs(root, partsOf(chain));
  }

  fd(part: number): number | undefined {
    if (!this.fds.has(part)) {
      const info = this.parts[part];
      this.fds.set(part, info ? openForRead(this.root, info.file) : undefined);
    }
    return this.fds.get(part);
  }

  close(): void {
    for (const fd of this.fds.values()) if (fd !== undefined) fs.closeSync(fd);
    this.fds.clear();
  }
}

function probeAt(fd: number, slot: CheckpointSlot): Buffer {
  return readRange(fd, slot.start, Math.min(slot.end, slot.start + PROBE_BYTES));
}

function addLine(index: CheckpointIndex, part: number, line: RawLine): void {
  const info = index.parts[part]!;
  info.size = line.end;
  if (line.data.length === 0) return;
  const head = line.data.subarray(0, HEAD_BYTES).toString('latin1');
  const seq = seqOfHead(head);
  index.slots.push({ seq, tombstone: head.includes(TOMBSTONE_MARK), part, start: line.start, end: line.end });
  if (seq !== undefined && seq > index.maxSeq) index.maxSeq = seq;
  info.probe = Buffer.from(line.data.subarray(0, PROBE_BYTES));
}

/** True when `cached` still describes the files open in `logs` (same files, nothing changed in place). */
function stillMatches(cached: CheckpointIndex, logs: OpenLogs): boolean {
  for (let i = 0; i < cached.parts.length; i++) {
    const info = cached.parts[i]!;
    const fd = logs.fd(i);
    if (fd === undefined) {
      if (info.size > 0) return false;
      continue;
    }
    const stat = fs.fstatSync(fd);
    if (info.size > 0 && (stat.ino !== info.ino || Math.min(stat.size, info.limit) < info.size)) return false;
    const last = cached.slots.findLast((slot) => slot.part === i);
    if (last && info.probe && !probeAt(fd, last).equals(info.probe)) return false;
  }
  return true;
}

/**
 * Brings `cached` up to date with the chain's logs, or builds a new index: only what was appended
 * since is read when the chain is the same and its files did not change under it.
 */
export function refreshIndex(logs: OpenLogs, chain: readonly Segment[], cached: CheckpointIndex | undefined): CheckpointIndex {
  const key = chainKey(chain);
  let index = cached && cached.key === key && stillMatches(cached, logs) ? cached : undefined;
  index ??= { key, parts: logs.parts.map((p) => ({ ...p, ino: 0, size: 0, probe: undefined })), slots: [], maxSeq: 0 };
  for (let part = 0; part < index.parts.length; part++) {
    const fd = logs.fd(part);
    if (fd === undefined) continue;
    const info = index.parts[part]!;
    info.ino = fs.fstatSync(fd).ino;
    for (const chunk of readLineChunks(fd, { start: info.size, limit: info.limit, keepBytes: HEAD_BYTES })) {
      for (const line of chunk) addLine(index, part, line);
    }
  }
  return index;
}

/** The slot of live (not deleted) checkpoint `seq`, if the log has one. */
export function findSlot(index: CheckpointIndex, seq: number): CheckpointSlot | undefined {
  for (let i = index.slots.length - 1; i >= 0; i--) {
    const slot = index.slots[i];
    if (slot?.seq === seq) return slot.tombstone ? undefined : slot;
  }
  return undefined;
}

/** The seqs of deleted checkpoints. */
export function deletedSeqs(index: CheckpointIndex): Set<number> {
  const deleted = new Set<number>();
  for (const slot of index.slots) if (slot.tombstone && slot.seq !== undefined) deleted.add(slot.seq);
  return deleted;
}

function readSlotText(logs: OpenLogs, slot: CheckpointSlot): string {
  const fd = logs.fd(slot.part);
  if (fd === undefined) return '';
  return readRange(fd, slot.start, slot.end - 1).toString('utf8');
}

/** Reads and fully decodes the checkpoint in `slot`; `CHECKPOINT_CORRUPT` unless it is checkpoint `seq` of the run. */
export function readCheckpointAt(logs: OpenLogs, slot: CheckpointSlot, runId: string, seq: number): Checkpoint {
  const cp = decodeCheckpoint(readSlotText(logs, slot), { runId, seq }, true);
  if (cp.seq !== seq || cp.runId !== runId) throw corrupt(`Checkpoint ${seq} of run ${runId} holds another record.`, { runId, seq });
  return cp;
}

/** Every live checkpoint in log order, damaged ones flagged (tombstones and what they delete left out). */
export function listEntries(logs: OpenLogs, index: CheckpointIndex, runId: string): CheckpointEntry[] {
  const deleted = deletedSeqs(index);
  const entries: CheckpointEntry[] = [];
  for (const slot of index.slots) {
    if (slot.tombstone || (slot.seq !== undefined && deleted.has(slot.seq))) continue;
    const text = readSlotText(logs, slot);
    if (isTombstone(text)) continue;
    entries.push(toEntry(text, runId));
  }
  return entries;
}

function toEntry(line: string, runId: string): CheckpointEntry {
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

/** Decodes a checkpoint line with its state; damaged ones are flagged as in a listing. */
export function toRead(line: string, runId: string): CheckpointRead {
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

/**
 * The records from the newest intact checkpoint of `kind` to the end, oldest first, read backwards
 * from the end of the chain: those records and about nothing before them (a resume of a long
 * workflow reads its last snapshot and the steps since, not its whole history). Undefined when
 * no checkpoint of that kind is intact.
 */
export function readSinceLatest(logs: OpenLogs, runId: string, kind: string): CheckpointRead[] | undefined {
  const records: CheckpointRead[] = []; // newest first
  const deleted = new Set<number>();
  for (let part = logs.parts.length - 1; part >= 0; part--) {
    const fd = logs.fd(part);
    if (fd === undefined) continue;
    for (const line of readLinesBackwards(fd, logs.parts[part]!.limit)) {
      if (line.data.length === 0) continue;
      const text = line.data.toString('utf8');
      if (isTombstone(text)) {
        const seq = seqOfHead(text);
        if (seq !== undefined) deleted.add(seq);
        continue;
      }
      const record = toRead(text, runId);
      const seq = record.valid ? record.checkpoint.seq : record.seq;
      if (seq !== undefined && deleted.has(seq)) continue;
      records.push(record);
      if (record.valid && record.checkpoint.kind === kind) return records.reverse();
    }
  }
  return undefined;
}

/** The highest seq used in the chain (deleted ones included), read from the end: where a writer's numbering goes on. */
export function lastSeq(logs: OpenLogs): number {
  for (let part = logs.parts.length - 1; part >= 0; part--) {
    const fd = logs.fd(part);
    if (fd === undefined) continue;
    let best = 0;
    let seen = 0;
    for (const line of readLinesBackwards(fd, logs.parts[part]!.limit)) {
      const seq = seqOfHead(line.data.subarray(0, HEAD_BYTES).toString('latin1'));
      if (seq !== undefined) best = Math.max(best, seq);
      // a tombstone names an older seq: look a little further for the highest one
      if (seq !== undefined && !line.data.includes(TOMBSTONE_MARK)) return best;
      if (++seen > 10_000 && best > 0) return best;
    }
    if (best > 0) return best;
  }
  return 0;
}
