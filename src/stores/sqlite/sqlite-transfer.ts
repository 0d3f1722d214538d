/**
 * The parts of the SQLite store that work on whole runs: reading rows back as records (checked
 * against the row they sit in), validating, streaming out in pages, and writing a verified import.
 */
import { CairnError } from '../../core/errors.js';
import {
  decodeArtifact,
  decodeCheckpoint,
  decodeCheckpointRow,
  decodeRunRowOrRebuild,
  rebuiltRunProblem,
  summaryLostError,
} from '../codec.js';
import {
  checkArtifactFiles,
  hasLeftovers,
  leftoverProblem,
  leftoverRecordsError,
  notFound,
  problemCollector,
  type ImportBundle,
} from '../common.js';
import type { ExportRecord, Store, StoreProblem } from '../store.js';
import type { PageLimits, SeqLine, SqliteQueries } from './sqlite-queries.js';

/**
 * Pages read between awaits, so that no statement or read transaction stays open while a caller
 * works on what it got. An export's `items` record holds one page: at most 10,000 lines.
 */
export const ITEM_PAGE: PageLimits = { maxRows: 10_000, maxChars: 32 * 1024 * 1024 };
export const CHECKPOINT_PAGE: PageLimits = { maxRows: 256, maxChars: 32 * 1024 * 1024 };

/** What streaming needs from the store: its queries, and a call that checks the store is still open. */
export interface SqliteReader {
  readonly q: SqliteQueries;
  /** Checks the store is open (and `runId`, when given) and runs `fn`; a throw becomes a rejection. */
  call<T>(runId: string | undefined, fn: () => T): Promise<T>;
}

// shared with the Postgres store; kept importable from here
export { checkpointEntry, decodeCheckpointRow, decodeRunRow } from '../codec.js';

/** A run's checkpoint rows in seq order, one page per step. */
export async function* checkpointPages(reader: SqliteReader, runId: string): AsyncGenerator<SeqLine[]> {
  for (let after = 0; ;) {
    const page = await reader.call(undefined, () => reader.q.checkpointsAfter(runId, after, CHECKPOINT_PAGE));
    if (page.length === 0) return;
    after = page[page.length - 1]?.seq ?? after;
    yield page;
  }
}

/** A ledger's lines in append order, one page per step. */
export async function* ledgerPages(reader: SqliteReader, ledgerId: number): AsyncGenerator<string[]> {
  for (let after = 0; ;) {
    const page = await reader.call(undefined, () => reader.q.itemsAfter(ledgerId, after, ITEM_PAGE));
    if (page.length === 0) return;
    after = page[page.length - 1]?.id ?? after;
    yield page.map((row) => row.line);
  }
}

/** Where a run's record is, for messages: its row. */
export function runRowWhere(runId: string): string {
  return `row cairn_runs id=${runId}`;
}

/** Reads every record of the run (and its artifact files) and reports each problem found. */
export async function validateRunRecords(reader: SqliteReader, store: Store, runId: string): Promise<StoreProblem[]> {
  const { q } = reader;
  const { runRow, leftovers } = await reader.call(runId, () => {
    const row = q.runRow(runId);
    return { runRow: row, leftovers: row === undefined ? q.leftovers(runId) : undefined };
  });
  if (runRow === undefined) {
    if (leftovers && hasLeftovers(leftovers)) return [leftoverProblem(runId, leftovers)];
    return [{ code: 'NOT_FOUND', runId, where: 'run', message: `Run ${runId} not found.` }];
  }
  const problems: StoreProblem[] = [];
  const check = problemCollector(runId, problems);
  check('run', undefined, () => {
    const rebuilt = rebuiltRunProblem(decodeRunRowOrRebuild(runRow, runRowWhere(runId)));
    if (rebuilt) problems.push(rebuilt);
  });
  for await (const page of checkpointPages(reader, runId)) {
    for (const { seq, line } of page) check('checkpoints', seq, () => decodeCheckpointRow(line, runId, seq, true));
  }
  for (const { stage } of await reader.call(undefined, () => q.ledgersInOrder(runId))) {
    for await (const entry of store.readItems(runId, stage, { onProblem: (p) => problems.push(p) })) void entry;
  }
  const artifactLines = await reader.call(undefined, () => q.artifactLines(runId));
  artifactLines.forEach((line, i) => check('artifacts', i + 1, () => decodeArtifact(line, { runId })));
  problems.push(...(await checkArtifactFiles(runId, store.artifactDir(runId), await store.listArtifacts(runId))));
  return problems;
}

/**
 * Streams a run as stored: run, checkpoints, ledgers (in creation order), artifact lines. Pages are
 * separate reads, so a run written meanwhile may show some of the new records.
 */
export async function* exportRunRecords(reader: SqliteReader, runId: string): AsyncGenerator<ExportRecord> {
  const { q } = reader;
  const runLine = await reader.call(runId, () => {
    const row = q.runRow(runId);
    if (row === undefined) throw notFound(runId);
    const run = decodeRunRowOrRebuild(row, runRowWhere(runId));
    if (run.rebuilt) throw summaryLostError(runId, run.rebuilt, 'the run cannot be exported (an export copies records as they are)');
    return row.line;
  });
  yield { type: 'run', line: runLine };
  for await (const page of checkpointPages(reader, runId)) for (const { line } of page) yield { type: 'checkpoint', line };
  for (const { id, stage } of await reader.call(undefined, () => q.ledgersInOrder(runId))) {
    let empty = true;
    for await (const lines of ledgerPages(reader, id)) {
      empty = false;
      yield { type: 'items', stage, lines };
    }
    if (empty) yield { type: 'items', stage, lines: [] }; // an empty ledger still exists
  }
  for (const line of await reader.call(undefined, () => q.artifactLines(runId))) yield { type: 'artifact', line };
}

/** Writes a verified import (call inside one write transaction): the run appears whole or not at all. */
export function writeImport(q: SqliteQueries, bundle: ImportBundle, overwrite: boolean): void {
  const runId = bundle.run.id;
  const checkpoints = bundle.checkpoints.map(({ line }) => ({ line, ref: decodeCheckpoint(line, { runId }, false) }));
  const existing = q.runHead(runId);
  if (existing && !overwrite)
    throw new CairnError('ALREADY_EXISTS', `Run ${runId} already exists; pass overwrite to replace it.`, { runId });
  if (existing) q.deleteRun(runId);
  else {
    const leftovers = q.leftovers(runId);
    if (hasLeftovers(leftovers) && !overwrite) throw leftoverRecordsError(runId, leftovers);
    q.deleteLeftovers(runId); // rows an earlier run left without its run row: never part of the import
  }
  const lastSeq = checkpoints.at(-1)?.ref.seq ?? 0;
  // epochs keep growing across an overwrite, so a lease from before can never match a later one
  q.insertRun(bundle.run, bundle.runLine, lastSeq + 1, existing?.last_epoch ?? 0);
  for (const { line, ref } of checkpoints) q.insertCheckpoint(runId, ref.seq, ref.createdAt, ref.kind, line);
  for (const [stage, lines] of bundle.ledgers) q.insertItems(q.ensureLedger(runId, stage), lines);
  for (const line of bundle.artifacts) q.insertArtifact(runId, decodeArtifact(line, { runId }).path, line);
}
