/**
 * Whole-run operations of the file store: validation (every record of a run, and the order of its
 * checkpoints), export as sealed lines, import through a staging folder renamed into place, and
 * removal through the trash. Renames within the root are atomic: a run is there whole or not at all.
 */
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { CairnError } from '../../core/errors.js';
import { isValidRunId } from '../../core/ids.js';
import { corrupt, damageReason, decodeArtifact, decodeCheckpoint, encodeItem, manifestOf, rebuiltRunProblem } from '../codec.js';
import type { PayloadLimits } from '../../core/record.js';
import { checkArtifactFiles, isProcessAlive, leftoverProblem, readImport, type LeftoverCounts } from '../common.js';
import type { ExportRecord, RunRecord, StoreProblem } from '../store.js';
import { encodeTombstone, isTombstone, seqOfHead } from './checkpoint-log.js';
import { readLedgerChunks } from './item-ledger.js';
import { readLineChunks, sliceBy } from './jsonl.js';
import { LEASE_DIR, readCurrentLease } from './file-lease.js';
import { decodeRunOf, readRunRecord } from './run-record.js';
import { errnoOf, forgetCheckedDirs, listDir, makeDir, openForRead, readFileSafe, syncDir, writeNewFile } from './safe-fs.js';
import {
  ARTIFACTS_FILE,
  CHECKPOINTS_FILE,
  ITEMS_DIR,
  LEDGER_SUFFIX,
  LEGACY_RUN_FILE,
  ledgerPath,
  limitOf,
  RUN_LOG,
  writeFirstSegment,
  type Segment,
} from './segments.js';

/** Lines per `items` export record. */
const EXPORT_CHUNK = 10_000;
/** Staging folders of a process that is gone, or older than this, are leftovers of a crash. */
const STALE_STAGING_MS = 60 * 60 * 1000;

interface ChainLine {
  readonly text: string;
  /** 1-based line number across the chain. */
  readonly no: number;
}

function* chainLines(root: string, chain: readonly Segment[], rel: string): Generator<ChainLine> {
  let no = 0;
  for (const segment of chain) {
    const fd = openForRead(root, path.join(segment.dir, rel));
    if (fd === undefined) continue;
    try {
      for (const chunk of readLineChunks(fd, { limit: limitOf(segment, rel) })) {
        for (const line of chunk) yield { text: line.data.toString('utf8'), no: ++no };
      }
    } finally {
      fs.closeSync(fd);
    }
  }
}

function ledgerParts(root: string, chain: readonly Segment[], stage: string): { fd: number; limit: number }[] {
  const rel = ledgerPath(stage);
  const parts: { fd: number; limit: number }[] = [];
  for (const segment of chain) {
    const fd = openForRead(root, path.join(segment.dir, rel));
    if (fd !== undefined) parts.push({ fd, limit: limitOf(segment, rel) });
  }
  return parts;
}

/** Stage names with a ledger in any segment of the chain, sorted. */
export function chainLedgers(chain: readonly Segment[], trustedOnly = false): string[] {
  const names = new Set<string>();
  for (const segment of chain) {
    for (const entry of listDir(path.join(segment.dir, ITEMS_DIR))) {
      const stage = entry.name.slice(0, -LEDGER_SUFFIX.length);
      // a link is a ledger too: reading it is refused (UNSAFE_PATH), never skipped in silence
      if (entry.isDirectory() || !entry.name.endsWith(LEDGER_SUFFIX) || !isValidRunId(stage)) continue;
      if (!trustedOnly || limitOf(segment, ledgerPath(stage)) > 0) names.add(stage);
    }
  }
  return [...names].sort();
}

/** The complete lines of one log file across a chain, as text, each segment's up to what is trusted of it. */
export function chainTextLines(root: string, chain: readonly Segment[], rel: string): string[] {
  return [...chainLines(root, chain, rel)].map((line) => line.text);
}

/** What the folder of a run whose run record is gone still holds, counted line by line in every segment. */
export function countLeftovers(root: string, dir: string): LeftoverCounts {
  const counts = { checkpoints: 0, ledgers: 0, items: 0, artifacts: 0, leases: listDir(path.join(dir, LEASE_DIR)).length };
  const segments: Segment[] = [{ id: 'legacy', dir, limits: undefined }];
  for (const entry of listDir(dir)) {
    if (entry.isDirectory() && /^seg-\d+$/.test(entry.name))
      segments.push({ id: Number(entry.name.slice(4)), dir: path.join(dir, entry.name), limits: undefined });
  }
  for (const segment of segments) {
    for (const { text } of chainLines(root, [segment], CHECKPOINTS_FILE)) if (!isTombstone(text)) counts.checkpoints++;
    for (const { text } of chainLines(root, [segment], ARTIFACTS_FILE)) if (text.length > 0) counts.artifacts++;
  }
  const stages = chainLedgers(segments);
  counts.ledgers = stages.length;
  for (const stage of stages)
    for (const segment of segments)
      for (const { text } of chainLines(root, [segment], ledgerPath(stage))) if (text.length > 0) counts.items++;
  return counts;
}

/** Verifies a checkpoint line completely (payload included); throws as `decodeCheckpoint` does. */
function verifyCheckpointLine(line: string, runId: string): number {
  const seq = seqOfHead(line.slice(0, 320));
  const cp = decodeCheckpoint(line, { runId, ...(seq === undefined ? {} : { seq }) }, true);
  if (cp.runId !== runId) throw corrupt(`Checkpoint ${cp.seq} in run ${runId} belongs to run ${cp.runId}.`, { runId, seq: cp.seq });
  return cp.seq;
}

function problemOf(error: unknown, runId: string, where: string, position: number | undefined): StoreProblem {
  const e = error as CairnError;
  if (e.code !== 'CHECKPOINT_CORRUPT' && e.code !== 'FORMAT_TOO_NEW') throw error;
  return { code: e.code, runId, where, ...(position === undefined ? {} : { position }), message: e.message };
}

/** The checkpoints' order: seqs grow by one along the log (a deleted one keeps its line and gets a tombstone). */
function orderProblems(
  runId: string,
  seqs: readonly { seq: number; no: number }[],
  deleted: ReadonlySet<number>,
  run: RunRecord | undefined,
): StoreProblem[] {
  const problems: StoreProblem[] = [];
  const seen = new Set<number>();
  let expected = 1;
  for (const { seq, no } of seqs) {
    if (seen.has(seq)) {
      problems.push({
        code: 'CHECKPOINT_CORRUPT',
        runId,
        where: 'checkpoints',
        position: seq,
        message: `Checkpoint ${seq} appears twice (line ${no}).`,
      });
      continue;
    }
    seen.add(seq);
    if (seq < expected) {
      problems.push({
        code: 'CHECKPOINT_CORRUPT',
        runId,
        where: 'checkpoints',
        position: seq,
        message: `Checkpoint ${seq} is out of order (line ${no}, after checkpoint ${expected - 1}).`,
      });
    } else if (seq > expected) {
      while (expected < seq && deleted.has(expected)) expected++; // deleted: its line was replaced by its tombstone (format 1)
    }
    if (seq > expected) {
      const missing = expected === seq - 1 ? `${expected}` : `${expected}-${seq - 1}`;
      problems.push({
        code: 'CHECKPOINT_CORRUPT',
        runId,
        where: 'checkpoints',
        position: expected,
        message: `Checkpoint${expected === seq - 1 ? '' : 's'} ${missing} missing: the log jumps to ${seq} (line ${no}).`,
      });
      expected = seq + 1;
    } else if (seq === expected) expected = seq + 1;
  }
  const data = run?.data as { stages?: Record<string, { status?: string }> } | undefined;
  const completed = Object.values(data?.stages ?? {}).some((s) => s?.status === 'completed');
  if (seqs.length === 0 && (run?.status === 'completed' || completed)) {
    problems.push({
      code: 'NOT_FOUND',
      runId,
      where: 'checkpoints',
      message: `Run ${runId} is ${run?.status} but has no checkpoint log: its checkpoints are missing.`,
    });
  }
  return problems;
}

/**
 * The damaged lines of a run's log other than the one in force (call only when that one is intact):
 * every update appended a whole record, so the record read now is the last line of the newest
 * segment, and an earlier line, damaged or not, is never read again (it would only be read back
 * should the line in force be damaged). Each is reported `superseded`. A line of a newer format is
 * not damage and is not reported; a legacy `run.json` followed by segments is an earlier line too.
 */
function supersededRunLines(root: string, chain: readonly Segment[], runId: string): StoreProblem[] {
  const problems: StoreProblem[] = [];
  const check = (line: string, file: string, no: number | undefined): void => {
    try {
      decodeRunOf(line, runId);
    } catch (error) {
      if ((error as CairnError).code !== 'CHECKPOINT_CORRUPT') return;
      const at = no === undefined ? file : `${file} line ${no}`;
      problems.push({
        code: 'CHECKPOINT_CORRUPT',
        runId,
        where: 'run',
        ...(no === undefined ? {} : { position: no }),
        message: `An earlier run record of run ${runId} is damaged (${at}: ${damageReason(error)}); a later intact record is in force, so nothing reads it.`,
        superseded: true,
      });
    }
  };
  chain.forEach((segment, i) => {
    const head = i === chain.length - 1;
    if (segment.id === 'legacy') {
      const text = head ? undefined : readFileSafe(root, path.join(segment.dir, LEGACY_RUN_FILE));
      if (text !== undefined) check(text.replace(/\n$/, ''), path.relative(root, path.join(segment.dir, LEGACY_RUN_FILE)), undefined);
      return;
    }
    const fd = openForRead(root, path.join(segment.dir, RUN_LOG));
    if (fd === undefined) return;
    const file = path.relative(root, path.join(segment.dir, RUN_LOG));
    let last: { text: string; no: number } | undefined; // the newest segment's last line is the one in force: never checked here
    try {
      for (const chunk of readLineChunks(fd, { limit: limitOf(segment, RUN_LOG) })) {
        for (const line of chunk) {
          if (line.data.length === 0) continue;
          if (last) check(last.text, file, last.no);
          last = { text: line.data.toString('utf8'), no: line.no };
        }
      }
    } finally {
      fs.closeSync(fd);
    }
    if (last && !head) check(last.text, file, last.no);
  });
  return problems;
}

/** Reads every record of a run and returns each problem found; `[]` when all is intact. */
export async function validateChain(
  root: string,
  runId: string,
  dir: string,
  chain: readonly Segment[] | undefined,
  artifactDir: string,
): Promise<StoreProblem[]> {
  const head = chain?.at(-1);
  if (!chain || !head) {
    if (listDir(dir).length > 0) return [leftoverProblem(runId, countLeftovers(root, dir))];
    return [{ code: 'NOT_FOUND', runId, where: 'run', message: `Run ${runId} not found.` }];
  }
  const problems: StoreProblem[] = [];
  let run: RunRecord | undefined;
  try {
    const read = readRunRecord(root, chain, runId);
    if (!read) throw corrupt(`Run ${runId} has no run record in ${head.dir}.`, { runId });
    run = read.record;
    const rebuilt = rebuiltRunProblem(run);
    if (rebuilt) problems.push(rebuilt);
    else problems.push(...supersededRunLines(root, chain, runId));
  } catch (error) {
    problems.push(problemOf(error, runId, 'run', undefined));
  }
  const seqs: { seq: number; no: number }[] = [];
  const deleted = new Set<number>();
  for (const { text, no } of chainLines(root, chain, CHECKPOINTS_FILE)) {
    if (text.length === 0) continue;
    if (isTombstone(text)) {
      const seq = seqOfHead(text);
      if (seq !== undefined) deleted.add(seq);
      continue;
    }
    try {
      seqs.push({ seq: verifyCheckpointLine(text, runId), no });
    } catch (error) {
      const seq = seqOfHead(text.slice(0, 320));
      if (seq !== undefined) seqs.push({ seq, no }); // damaged, but it held its place in the order
      // a seq misread from a damaged head breaks the order, which orderProblems reports
      problems.push({ ...problemOf(error, runId, 'checkpoints', seq ?? no), ...(seq === undefined ? {} : { seq }) });
    }
  }
  problems.push(...orderProblems(runId, seqs, deleted, run));
  for (const stage of chainLedgers(chain)) {
    const parts = ledgerParts(root, chain, stage);
    try {
      for (const chunk of readLedgerChunks(parts, runId, stage, (p) => problems.push(p))) void chunk;
    } finally {
      for (const { fd } of parts) fs.closeSync(fd);
    }
  }
  const artifactLines: string[] = [];
  for (const { text, no } of chainLines(root, chain, ARTIFACTS_FILE)) {
    if (text.length === 0) continue;
    try {
      decodeArtifact(text, { runId });
      artifactLines.push(text);
    } catch (error) {
      problems.push(problemOf(error, runId, 'artifacts', no));
    }
  }
  problems.push(...(await checkArtifactFiles(runId, artifactDir, manifestOf(artifactLines, runId))));
  return problems;
}

/**
 * Streams a run's records after its run line: checkpoints in log order (only lines that verify,
 * none deleted), each ledger's lines of complete batches in records of at most 10,000 lines, then
 * the artifact lines that verify.
 */
export async function* exportChain(
  root: string,
  runId: string,
  chain: readonly Segment[],
  limits: PayloadLimits,
): AsyncGenerator<ExportRecord> {
  const deleted = new Set<number>();
  for (const { text } of chainLines(root, chain, CHECKPOINTS_FILE)) {
    if (isTombstone(text)) {
      const seq = seqOfHead(text);
      if (seq !== undefined) deleted.add(seq);
    }
  }
  for (const { text } of chainLines(root, chain, CHECKPOINTS_FILE)) {
    if (text.length === 0 || isTombstone(text)) continue;
    try {
      if (deleted.has(verifyCheckpointLine(text, runId))) continue;
    } catch {
      continue; // damaged: reported by validateRun, never exported
    }
    yield { type: 'checkpoint', line: text };
  }
  for (const stage of chainLedgers(chain)) {
    const parts = ledgerParts(root, chain, stage);
    try {
      let lines: string[] = [];
      let sent = false;
      for (const chunk of readLedgerChunks(parts, runId, stage, undefined)) {
        for (const { line, entry } of chunk) {
          // format 2 entries (checked by their batch's checksum) leave as sealed lines of their own
          lines.push(line ?? encodeItem(entry, limits, { runId, stage }));
          if (lines.length === EXPORT_CHUNK) {
            yield { type: 'items', stage, lines };
            lines = [];
            sent = true;
          }
        }
      }
      if (lines.length > 0 || !sent) yield { type: 'items', stage, lines };
    } finally {
      for (const { fd } of parts) fs.closeSync(fd);
    }
  }
  for (const { text } of chainLines(root, chain, ARTIFACTS_FILE)) {
    if (text.length === 0) continue;
    try {
      decodeArtifact(text, { runId });
    } catch {
      continue;
    }
    yield { type: 'artifact', line: text };
  }
}

/** A staging folder name of this process: `.<kind>-<pid>-<uuid>`, so that a later process can tell whether its owner is gone. */
export function stagingName(root: string, kind: string): string {
  return path.join(root, `.${kind}-${process.pid}-${randomUUID()}`);
}

/**
 * Imports a run: verifies every record, writes the run whole into a staging folder inside the
 * root, then renames it into place (through `place`, queued by the store on the run). An existing
 * run is refused unless `overwrite`, then moved to the trash first; the lease epoch goes on from it.
 */
export async function importRunFolder(
  root: string,
  records: AsyncIterable<ExportRecord> | Iterable<ExportRecord>,
  overwrite: boolean,
  queue: (runId: string, place: (dir: string, rename: (staging: string) => void) => Promise<void>) => Promise<void>,
): Promise<RunRecord> {
  const bundle = await readImport(records);
  const runId = bundle.run.id;
  const staging = stagingName(root, 'import');
  fs.mkdirSync(staging);
  try {
    const files = new Map<string, string>();
    if (bundle.checkpoints.length > 0) {
      // a seq the export left out (deleted, or damaged at the source) is marked deleted, so it is never reused or taken for a lost line
      const lines: string[] = [];
      let next = 1;
      for (const { seq, line } of bundle.checkpoints) {
        for (; next < seq; next++) lines.push(encodeTombstone(runId, next));
        lines.push(line);
        next = seq + 1;
      }
      files.set(CHECKPOINTS_FILE, joinLines(lines));
    }
    for (const [stage, lines] of bundle.ledgers) files.set(ledgerPath(stage), joinLines(lines));
    if (bundle.artifacts.length > 0) files.set(ARTIFACTS_FILE, joinLines(bundle.artifacts));
    writeFirstSegment(staging, runId, bundle.runLine, files);
    await queue(runId, async (dir, rename) => {
      const previous = readCurrentLease(root, dir, runId);
      if (previous) {
        // epochs go on from the replaced run's, so that a stale holder of it finds a higher one
        makeDir(path.join(staging, LEASE_DIR));
        writeNewFile(
          path.join(staging, LEASE_DIR, `${previous.epoch}.json`),
          `${JSON.stringify({ ...previous, runId: undefined, released: true, clean: false })}\n`,
        );
      }
      syncDir(staging);
      if (overwrite && listDir(dir).length > 0) await trashRunFolder(root, dir);
      rename(staging);
    });
  } finally {
    fs.rmSync(staging, { recursive: true, force: true });
  }
  return bundle.run;
}

function joinLines(lines: readonly string[]): string {
  let text = '';
  for (const slice of sliceBy(lines, EXPORT_CHUNK)) text += `${slice.join('\n')}\n`;
  return text;
}

/** Deletes a run folder: renamed to `<root>/.trash-<pid>-<uuid>` (atomic), then removed. Returns whether it held anything. */
export async function trashRunFolder(root: string, dir: string): Promise<boolean> {
  const trash = stagingName(root, 'trash');
  try {
    fs.renameSync(dir, trash);
  } catch (error) {
    if (errnoOf(error) === 'ENOENT') return false;
    throw error;
  } finally {
    forgetCheckedDirs();
  }
  syncDir(root);
  const held = !fs.lstatSync(trash).isDirectory() || listDir(trash).length > 0; // a link (the run folder's name) is removed, never listed
  await fs.promises.rm(trash, { recursive: true, force: true }); // never follows links: removes them
  return held;
}

/**
 * Removes what crashed processes left in the root: trash, and run folders being created or
 * imported by a process that is gone (or that are older than an hour).
 */
export async function removeLeftovers(root: string): Promise<void> {
  for (const entry of listDir(root)) {
    const match = /^\.(trash|new|import)-(\d+)?-?/.exec(entry.name);
    if (!match) continue;
    const target = path.join(root, entry.name);
    let stale = match[1] === 'trash';
    if (!stale) {
      const pid = match[2] === undefined ? undefined : Number(match[2]);
      const stat = await fs.promises.lstat(target).catch(() => undefined);
      stale = (pid !== undefined && !isProcessAlive(pid)) || (stat !== undefined && Date.now() - stat.mtimeMs > STALE_STAGING_MS);
    }
    if (stale) await fs.promises.rm(target, { recursive: true, force: true }).catch(() => undefined);
  }
}
