/**
 * `items/<stage>.jsonl`: a stage's item ledger, appended in batches. Every line of a batch carries
 * the batch id (`"b"`), the last one also the batch size (`"n"`): a reader releases a batch's
 * entries only when that end line arrives, so a batch cut short by a crash is never half-used.
 * A line without a batch mark (imported ledgers) is a complete entry by itself.
 */
import type { CairnError } from '../../core/errors.js';
import type { PayloadLimits } from '../../core/record.js';
import { decodeItem, encodeItemWith } from '../codec.js';
import type { ItemEntry, StoreProblem } from '../store.js';
import { readLineChunks } from './jsonl.js';

/**
 * Batch ids: microseconds since the epoch, strictly increasing within a process. A batch takes at
 * least one fdatasync, so ids never run ahead of the clock and a later process (after a crash)
 * starts above every id already written: a torn batch is never continued by a new one.
 */
let lastBatchId = 0;

export function nextBatchId(): number {
  lastBatchId = Math.max(lastBatchId + 1, Date.now() * 1000);
  return lastBatchId;
}

/** Encodes a batch as complete lines (each ending with `\n`); throws before anything is written. */
export function encodeBatch(entries: readonly ItemEntry[], limits: PayloadLimits, runId: string, stage: string, batchId: number): string {
  const context = { runId, stage };
  const last = entries.length - 1;
  const mark = `,"b":${batchId}`;
  let text = '';
  for (let i = 0; i < last; i++) text += `${encodeItemWith(entries[i]!, limits, context, mark)}\n`;
  if (last >= 0) text += `${encodeItemWith(entries[last]!, limits, context, `${mark},"n":${entries.length}`)}\n`;
  return text;
}

export interface LedgerLine {
  readonly line: string;
  readonly entry: ItemEntry;
}

/**
 * Reads the ledger files of a stage (one per segment, each up to what readers trust of it), a chunk
 * of released entries at a time, in append order. Damaged lines go to `onProblem` (with their line
 * number) and are skipped; a batch whose end line never came (a crash mid-write, or a write a
 * newer segment's seal cut off) is dropped silently, like a torn last line.
 */
export function* readLedgerChunks(
  parts: readonly { readonly fd: number; readonly limit: number }[],
  runId: string,
  stage: string,
  onProblem: ((problem: StoreProblem) => void) | undefined,
): Generator<LedgerLine[]> {
  const context = { runId, stage };
  const where = `items/${stage}`;
  let no = 0;
  for (const part of parts) {
    let openId: number | undefined;
    let open: LedgerLine[] = [];
    for (const chunk of readLineChunks(part.fd, { limit: part.limit })) {
      const released: LedgerLine[] = [];
      for (const raw of chunk) {
        no += 1;
        const text = raw.data.toString('utf8');
        if (text.length === 0) continue;
        let decoded;
        try {
          decoded = decodeItem(text, context);
        } catch (error) {
          const e = error as CairnError;
          if (e.code !== 'CHECKPOINT_CORRUPT' && e.code !== 'FORMAT_TOO_NEW') throw error;
          onProblem?.({ code: e.code, runId, where, position: no, message: e.message });
          continue;
        }
        const { batch } = decoded;
        if (!batch) {
          open = [];
          openId = undefined;
          released.push({ line: text, entry: decoded.entry });
          continue;
        }
        if (batch.id !== openId) {
          open = []; // an earlier batch without its end line: torn, dropped
          openId = batch.id;
        }
        open.push({ line: text, entry: decoded.entry });
        if (batch.size !== undefined) {
          // damaged lines of the batch were reported above; the rest verified and is released
          for (const item of open) released.push(item);
          open = [];
          openId = undefined;
        }
      }
      if (released.length > 0) yield released;
    }
  }
}
