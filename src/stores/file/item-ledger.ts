/**
 * `items/<stage>.jsonl`: a stage's item ledger, appended in batches.
 *
 * Format 2 (written since the file store's segments): a batch is its item lines, short JSON
 * without a checksum each, then one end line that seals them all:
 *
 *     {"i":0,"v":"result of item 0"}                       key "0", attempt 1: both left out
 *     {"k":"seg-17","i":1,"a":2,"v":{"text":"…"}}
 *     {"k":"seg-18","i":2,"a":1,"err":{"name":"Error","message":"…"}}
 *     {"fv":2,"t":"batch","b":1733212345678901,"n":3,"crc":"1a2b3c4d"}
 *
 * `crc` is the CRC-32 of the batch's item lines exactly as stored (each with its `\n`). A reader
 * releases a batch's entries only when its end line arrives and verifies: a batch cut short by a
 * crash is dropped silently (a torn write), a damaged one is reported once and dropped whole (its
 * items are redone). One checksum per batch instead of one per line: the bytes on disk are about
 * what the results themselves take, which is what a batch's fdatasync pays for.
 *
 * Format 1 (cairn ≤ 0.1, and every ledger imported): every line a sealed record
 * (`{"crc":…,"rec":{"fv":1,"t":"item",…,"b":id}}`), the last line of a batch with `"n"`; a line
 * without a batch mark is complete by itself. Both are read, in any mix; format 1 is never written.
 */
import { CairnError } from '../../core/errors.js';
import { crc32Hex, crc32Update, crcHex } from '../../core/checksum.js';
import type { PayloadLimits } from '../../core/record.js';
import { corrupt, decodeItem, decodeItemsV2, encodeItemV2 } from '../codec.js';
import type { ItemEntry, StoreProblem } from '../store.js';
import { readLineSpans } from './jsonl.js';

/**
 * Batch ids: microseconds since the epoch, strictly increasing within a process. A batch takes at
 * least one fdatasync, so ids never run ahead of the clock and a later process (after a crash)
 * starts above every id already written.
 */
let lastBatchId = 0;

export function nextBatchId(): number {
  lastBatchId = Math.max(lastBatchId + 1, Date.now() * 1000);
  return lastBatchId;
}

const BATCH_END = '{"fv":2,"t":"batch",';

/**
 * Encodes a batch in format 2 (item lines, then the end line) as the bytes to append; throws before
 * anything is written. The item lines are made bytes once: the checksum and the write share them.
 */
export function encodeBatch(entries: readonly ItemEntry[], limits: PayloadLimits, runId: string, stage: string, batchId: number): Buffer {
  const context = { runId, stage };
  let lines = '';
  for (const entry of entries) lines += `${encodeItemV2(entry, limits, context)}\n`;
  const bytes = Buffer.from(lines, 'utf8');
  const end = `${BATCH_END}"b":${batchId},"n":${entries.length},"crc":"${crc32Hex(bytes)}"}\n`;
  return Buffer.concat([bytes, Buffer.from(end, 'latin1')]);
}

export interface LedgerLine {
  readonly entry: ItemEntry;
  /** The stored sealed line, for format 1 entries (export re-seals format 2 entries). */
  readonly line?: string;
}

/** Format 1 lines of a batch not ended yet. */
interface OpenBatchV1 {
  id: number;
  lines: LedgerLine[];
}

/**
 * Reads the ledger files of a stage (one per segment, each up to what readers trust of it), a chunk
 * of released entries at a time, in append order. Damaged lines (format 1) or batches (format 2)
 * go to `onProblem` with their line number and are skipped; a batch whose end line never came (a
 * crash mid-write, or a write a newer segment's seal cut off) is dropped silently, like a torn line.
 */
export function* readLedgerChunks(
  parts: readonly { readonly fd: number; readonly limit: number }[],
  runId: string,
  stage: string,
  onProblem: ((problem: StoreProblem) => void) | undefined,
): Generator<LedgerLine[]> {
  const context = { runId, stage };
  const where = `items/${stage}`;
  const report = (error: unknown, position: number): void => {
    const e = error as CairnError;
    if (e.code !== 'CHECKPOINT_CORRUPT' && e.code !== 'FORMAT_TOO_NEW') throw error;
    onProblem?.({ code: e.code, runId, where, position, message: e.message });
  };
  let no = 0;
  for (const part of parts) {
    let v1: OpenBatchV1 | undefined;
    // the format 2 batch being read: its entries, decoded as they come, released by its end line
    let v2: LedgerLine[] = [];
    let v2Crc = 0;
    let v2Lines = 0;
    let v2Error: Error | undefined;
    for (const { buf, spans } of readLineSpans(part.fd, part.limit)) {
      const released: LedgerLine[] = [];
      // item lines of the open batch in this chunk not taken in yet: bytes [regionStart, regionEnd)
      let regionStart = -1;
      let regionEnd = -1;
      const takeRegion = (): void => {
        if (regionStart < 0) return;
        v2Crc = crc32Update(buf.subarray(regionStart, regionEnd), v2Crc);
        if (v2Error === undefined) {
          try {
            for (const entry of decodeItemsV2(buf.toString('utf8', regionStart, regionEnd - 1), context)) v2.push({ entry });
          } catch (error) {
            v2Error = error as Error; // reported with the batch, unless its checksum fails first
          }
        }
        regionStart = -1;
      };
      for (let k = 0; k < spans.length; k += 2) {
        const start = spans[k]!;
        const end = spans[k + 1]!;
        no += 1;
        if (end === start) {
          takeRegion();
          continue;
        }
        // `{"fv":…` ends a format 2 batch, `{"crc":…` is a format 1 line, anything else a format 2 item
        const kind = end - start > 2 && buf[start] === BRACE && buf[start + 1] === QUOTE ? buf[start + 2] : 0;
        if (kind !== LETTER_F && kind !== LETTER_C) {
          if (regionStart < 0) regionStart = start;
          regionEnd = end + 1;
          v2Lines += 1;
          continue;
        }
        takeRegion();
        if (kind === LETTER_F) {
          try {
            checkBatchEnd(buf.toString('utf8', start, end), v2Lines, crcHex(v2Crc), context);
            if (v2Error !== undefined) throw v2Error;
            for (const line of v2) released.push(line);
          } catch (error) {
            report(error, no);
          }
          v2 = [];
          v2Crc = 0;
          v2Lines = 0;
          v2Error = undefined;
          continue;
        }
        v2 = []; // format 2 lines without their end line: torn, dropped
        v2Crc = 0;
        v2Lines = 0;
        v2Error = undefined;
        const text = buf.toString('utf8', start, end);
        let decoded;
        try {
          decoded = decodeItem(text, context);
        } catch (error) {
          report(error, no);
          continue;
        }
        const { batch } = decoded;
        if (!batch) {
          v1 = undefined;
          released.push({ line: text, entry: decoded.entry });
          continue;
        }
        if (batch.id !== v1?.id) v1 = { id: batch.id, lines: [] }; // an earlier batch without its end line: torn, dropped
        v1.lines.push({ line: text, entry: decoded.entry });
        if (batch.size !== undefined) {
          // damaged lines of the batch were reported above; the rest verified and is released
          for (const item of v1.lines) released.push(item);
          v1 = undefined;
        }
      }
      takeRegion();
      if (released.length > 0) yield released;
    }
  }
}

const BRACE = 0x7b;
const QUOTE = 0x22;
const LETTER_F = 0x66;
const LETTER_C = 0x63;

/** Checks a format 2 batch end line against the item lines read before it (their count and CRC-32). */
function checkBatchEnd(endLine: string, count: number, crc: string, context: { runId: string; stage: string }): void {
  let end: { fv?: unknown; n?: unknown; crc?: unknown };
  try {
    end = JSON.parse(endLine) as typeof end;
  } catch {
    throw corrupt(`Damaged batch end in the ledger of stage ${context.stage}: not JSON.`, context);
  }
  if (typeof end.fv === 'number' && end.fv > 2) {
    throw new CairnError(
      'FORMAT_TOO_NEW',
      `An item batch of stage ${context.stage} was written by a newer cairn (ledger format ${end.fv}). Upgrade cairnjs to read it; nothing was changed.`,
      { ...context, formatVersion: end.fv },
    );
  }
  if (end.n !== count || typeof end.crc !== 'string') {
    throw corrupt(
      `Damaged item batch in the ledger of stage ${context.stage}: its end line names ${String(end.n)} items, ${count} precede it. Its items are redone.`,
      context,
    );
  }
  if (crc !== end.crc) {
    throw corrupt(
      `Damaged item batch of ${count} items in the ledger of stage ${context.stage}: checksum mismatch. Its items are redone.`,
      context,
    );
  }
}
