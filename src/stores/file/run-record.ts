/**
 * Reading a run's record from its run log. The record in force is the last complete line of the
 * newest segment's `run.jsonl`. Every update appends a whole record, so the lines before it are
 * the record as it was a few updates ago: when the last line is damaged, the newest intact line
 * (in that segment, or in the segments before it, up to what their successors sealed) is read
 * back instead and flagged ({@link RunRecord.rebuilt}), so that the run stays usable and the next
 * update writes the record whole again. A record of a newer format is never passed over for an
 * older one: `FORMAT_TOO_NEW`.
 */
import fs from 'node:fs';
import path from 'node:path';
import { CairnError } from '../../core/errors.js';
import { damageReason, decodeRun, unreadableRunError } from '../codec.js';
import type { RunRecord } from '../store.js';
import { readLinesBackwards, readRange } from './jsonl.js';
import { openForRead, readFileSafe } from './safe-fs.js';
import { LEGACY_RUN_FILE, limitOf, RUN_LOG, type Segment } from './segments.js';

/** The run line in force in a segment: the last complete line of its run log (the run.json of a legacy one). */
export function readRunLine(root: string, segment: Segment): string | undefined {
  if (segment.id === 'legacy') {
    const text = readFileSafe(root, path.join(segment.dir, LEGACY_RUN_FILE));
    return text === undefined ? undefined : text.replace(/\n$/, '');
  }
  const fd = openForRead(root, path.join(segment.dir, RUN_LOG));
  if (fd === undefined) return undefined;
  try {
    for (const line of readLinesBackwards(fd, limitOf(segment, RUN_LOG), 16 * 1024)) {
      if (line.data.length > 0) return line.data.toString('utf8');
    }
    return undefined;
  } finally {
    fs.closeSync(fd);
  }
}

/** Decodes a run line and checks it is the run of this folder. */
export function decodeRunOf(line: string, runId: string): RunRecord {
  const run = decodeRun(line, { runId });
  if (run.id !== runId)
    throw new CairnError('CHECKPOINT_CORRUPT', `The run record in the folder of run ${runId} belongs to run ${run.id}.`, { runId });
  return run;
}

/** The record in force and its line as stored (an export copies it as it is). */
export interface RunRecordRead {
  readonly record: RunRecord;
  readonly line: string;
}

/**
 * The run's record: the last line of the newest segment's run log, or, when that line is damaged,
 * the newest intact line before it (flagged `rebuilt`). Undefined when no segment holds a run
 * line; `CHECKPOINT_CORRUPT` naming the run and the file when every line is damaged.
 */
export function readRunRecord(root: string, chain: readonly Segment[], runId: string): RunRecordRead | undefined {
  const head = chain.at(-1);
  if (!head) return undefined;
  const last = readRunLine(root, head);
  if (last === undefined) return undefined;
  let damage: { where: string; reason: string; cause: unknown } | undefined;
  try {
    return { record: decodeRunOf(last, runId), line: last };
  } catch (error) {
    if ((error as CairnError).code !== 'CHECKPOINT_CORRUPT') throw error;
    damage = { where: '', reason: damageReason(error), cause: error };
  }
  // the slow path, taken only after damage: every line, newest first, with its place for the report
  for (const segment of [...chain].reverse()) {
    for (const { line, where, from } of linesNewestFirst(root, segment)) {
      if (damage.where === '') {
        damage.where = where; // the damaged line in force, located
        continue;
      }
      try {
        const record = decodeRunOf(line, runId);
        return { record: { ...record, rebuilt: { where: damage.where, reason: damage.reason, from, dataLost: false } }, line };
      } catch (error) {
        if ((error as CairnError).code !== 'CHECKPOINT_CORRUPT') throw error; // never an older record than a newer-format one
      }
    }
  }
  throw unreadableRunError(runId, damage.where || runLogName(root, head), damage.reason, damage.cause);
}

/** The run lines of a segment, newest first, each with where it is (`<run>/seg-0/run.jsonl line 7`). */
function* linesNewestFirst(root: string, segment: Segment): Generator<{ line: string; where: string; from: string }> {
  const file = runLogName(root, segment);
  if (segment.id === 'legacy') {
    const line = readRunLine(root, segment);
    if (line !== undefined) yield { line, where: file, from: file };
    return;
  }
  const fd = openForRead(root, path.join(segment.dir, RUN_LOG));
  if (fd === undefined) return;
  try {
    for (const raw of readLinesBackwards(fd, limitOf(segment, RUN_LOG), 16 * 1024)) {
      if (raw.data.length === 0) continue;
      const no = lineNumberAt(fd, raw.start);
      yield { line: raw.data.toString('utf8'), where: `${file} line ${no}`, from: `line ${no} of ${file}` };
    }
  } finally {
    fs.closeSync(fd);
  }
}

/** The run log of a segment, relative to the store's root. */
function runLogName(root: string, segment: Segment): string {
  return path.relative(root, path.join(segment.dir, segment.id === 'legacy' ? LEGACY_RUN_FILE : RUN_LOG));
}

/** The 1-based number of the line starting at `offset` (reads the file up to there: only after damage). */
function lineNumberAt(fd: number, offset: number): number {
  let count = 1;
  for (let at = 0; at < offset; at += 1024 * 1024) {
    const chunk = readRange(fd, at, Math.min(offset, at + 1024 * 1024));
    for (let i = chunk.indexOf(0x0a); i >= 0; i = chunk.indexOf(0x0a, i + 1)) count++;
  }
  return count;
}
