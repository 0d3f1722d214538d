/**
 * The parts of the Postgres store that work on whole runs or long lists: reading in pages,
 * validating, streaming out (export), and writing a verified import in one transaction.
 *
 * Long lists (a ledger of a million items, a run's checkpoints) are read in keyset pages:
 * `WHERE ledger_id = $1 AND id > $2 AND id <= $3 ORDER BY id LIMIT n`, each a short statement of
 * its own. Not a server-side cursor: a cursor lives in a transaction on one connection for as
 * long as the caller iterates — and a caller may pause between entries (a resume replays a
 * ledger while it works) — pinning a pooled connection and an open snapshot (which holds back
 * vacuum) per reader. Memory holds one page, plus the next one, requested as soon as the current
 * one arrives so that the database works while the caller does.
 *
 * Why each page is bounded by key range (`<= $3`) as well as by `LIMIT`: on a table whose
 * statistics lag behind (a ledger just written), the planner may pick a bitmap scan followed by a
 * sort, which reads every remaining row of the ledger to return the first n — each page would then
 * cost the whole rest of the ledger, and a full read would be quadratic (measured: 24 ms per page
 * of 2,000 instead of 0.5 ms, on 200,000 fresh rows). Within a bounded window a page costs at most
 * the window, whatever the plan. Windows follow the keys' density: as wide as a full page needed,
 * twice as wide after a sparse one.
 */
import { CairnError } from '../../core/errors.js';
import {
  checkpointEntry,
  decodeArtifact,
  decodeCheckpoint,
  decodeCheckpointRow,
  decodeRunRowOrRebuild,
  rebuiltRunProblem,
  summaryLostError,
  type RunRowColumns,
} from '../codec.js';
import {
  checkArtifactFiles,
  hasLeftovers,
  leftoverProblem,
  leftoverRecordsError,
  notFound,
  problemCollector,
  type ImportBundle,
  type LeftoverCounts,
} from '../common.js';
import type { Checkpoint, CheckpointRead, ExportRecord, RunRecord, Store, StoreProblem } from '../store.js';
import { UNIQUE_VIOLATION, sqlState, type PgQueryable } from './postgres-driver.js';
import { runRowWhere, type PostgresSql } from './postgres-sql.js';

/** Rows per item page at most; fewer when lines are long, so that a page stays near {@link PAGE_CHARS}. */
export const ITEM_PAGE_ROWS = 2000;
const CHECKPOINT_PAGE_ROWS = 256;
/** Newest checkpoints read per step when looking for the latest intact one (usually the first is). */
const LATEST_PAGE_ROWS = 8;
const MAX_SEQ = '9223372036854775807';
const PAGE_CHARS = 32 * 1024 * 1024;
/** The widest key window one page may scan. */
const MAX_WINDOW = 1n << 24n;
/** Rows per statement when an import writes a long list (each statement sends its rows as arrays). */
const IMPORT_CHUNK = 10_000;

/** What reading needs from the store: its statements, and queries that first check the store is open. */
export interface PostgresReader {
  readonly sql: PostgresSql;
  /** The store's schema (for messages naming a row). */
  readonly schema: string;
  /** Rows of one statement; `STORE_CLOSED` once the store is closed. */
  rows<R>(text: string, values: readonly unknown[]): Promise<R[]>;
}

/** A ledger with the first and last row ids of its items (null when it has none). */
export interface LedgerRow {
  readonly id: string;
  readonly first: string | null;
  readonly last: string | null;
}

interface IdLine {
  readonly id: string;
  readonly line: string;
}

interface SeqLine {
  readonly seq: string;
  readonly line: string;
}

/**
 * The rows whose keys lie in [`first`, `last`], in key order, one page per step:
 * `fetch(after, upTo, limit)` returns at most `limit` rows with keys in (`after`, `upTo`].
 */
async function* windowPages<R extends { readonly line: string }>(
  first: string | null,
  last: string | null,
  fetch: (after: string, upTo: string, limit: number) => Promise<R[]>,
  keyOf: (row: R) => string,
  maxRows: number,
): AsyncGenerator<R[]> {
  if (first === null || last === null) return;
  const end = BigInt(last);
  let after = BigInt(first) - 1n;
  let window = BigInt(maxRows);
  let limit = maxRows;
  let upTo = after; // the upper bound of the request in flight
  const request = (): Promise<R[]> => {
    upTo = after + window < end ? after + window : end;
    const pending = fetch(String(after), String(upTo), limit);
    pending.catch(() => undefined); // surfaces when awaited; a caller that stops early never awaits it
    return pending;
  };
  let next = request();
  for (;;) {
    const page = await next;
    const asked = limit;
    if (page.length === asked) {
      const lastKey = BigInt(keyOf(page[page.length - 1]!));
      window = lastKey - after; // the width a full page took
      after = lastKey;
    } else {
      after = upTo;
      if (page.length < asked / 2 && window < MAX_WINDOW) window *= 2n;
    }
    if (page.length > 0) {
      let chars = 0;
      for (const row of page) chars += row.line.length;
      limit = Math.max(1, Math.min(maxRows, Math.floor(PAGE_CHARS / Math.max(1, chars / page.length))));
    }
    if (after >= end) {
      if (page.length > 0) yield page;
      return;
    }
    next = request();
    if (page.length > 0) yield page;
  }
}

/** A ledger's lines in append order (those written before the read began), one page per step. */
export async function* ledgerPages(reader: PostgresReader, ledger: LedgerRow): AsyncGenerator<string[]> {
  const pages = windowPages(
    ledger.first,
    ledger.last,
    (after, upTo, limit) => reader.rows<IdLine>(reader.sql.itemsBetween, [ledger.id, after, upTo, limit]),
    (row) => row.id,
    ITEM_PAGE_ROWS,
  );
  for await (const page of pages) yield page.map((row) => row.line);
}

/** A run's checkpoint rows in seq order, one page per step. */
export async function* checkpointPages(reader: PostgresReader, runId: string): AsyncGenerator<SeqLine[]> {
  const [bounds] = await reader.rows<{ first: string | null; last: string | null }>(reader.sql.checkpointBounds, [runId]);
  yield* windowPages(
    bounds?.first ?? null,
    bounds?.last ?? null,
    (after, upTo, limit) => reader.rows<SeqLine>(reader.sql.checkpointsBetween, [runId, after, upTo, limit]),
    (row) => row.seq,
    CHECKPOINT_PAGE_ROWS,
  );
}

export async function ledgersInOrder(reader: PostgresReader, runId: string): Promise<(LedgerRow & { stage: string })[]> {
  return reader.rows<LedgerRow & { stage: string }>(reader.sql.ledgersInOrder, [runId]);
}

async function artifactLines(reader: PostgresReader, runId: string): Promise<string[]> {
  return (await reader.rows<{ line: string }>(reader.sql.artifactLines, [runId])).map((row) => row.line);
}

/** Reads every record of the run (and its artifact files) and reports each problem found. */
export async function validateRunRecords(reader: PostgresReader, store: Store, runId: string): Promise<StoreProblem[]> {
  const runRow = (await reader.rows<RunRowColumns>(reader.sql.runRow, [runId]))[0];
  if (runRow === undefined) {
    const leftovers = await readLeftovers(reader, runId);
    if (hasLeftovers(leftovers)) return [leftoverProblem(runId, leftovers)];
    return [{ code: 'NOT_FOUND', runId, where: 'run', message: `Run ${runId} not found.` }];
  }
  const problems: StoreProblem[] = [];
  const check = problemCollector(runId, problems);
  check('run', undefined, () => {
    const rebuilt = rebuiltRunProblem(decodeRunRowOrRebuild(runRow, runRowWhere(reader.schema, runId)));
    if (rebuilt) problems.push(rebuilt);
  });
  for await (const page of checkpointPages(reader, runId)) {
    for (const { seq, line } of page) check('checkpoints', Number(seq), () => decodeCheckpointRow(line, runId, Number(seq), true));
  }
  for (const { stage } of await ledgersInOrder(reader, runId)) {
    for await (const entry of store.readItems(runId, stage, { onProblem: (p) => problems.push(p) })) void entry;
  }
  (await artifactLines(reader, runId)).forEach((line, i) => check('artifacts', i + 1, () => decodeArtifact(line, { runId })));
  problems.push(...(await checkArtifactFiles(runId, store.artifactDir(runId), await store.listArtifacts(runId))));
  return problems;
}

/** The rows of `runId` under its run row: leftovers, when it has none. */
export async function readLeftovers(reader: PostgresReader, runId: string): Promise<LeftoverCounts> {
  const [row] = await reader.rows<LeftoverCounts>(reader.sql.leftovers, [runId]);
  return row ?? { checkpoints: 0, ledgers: 0, items: 0, artifacts: 0, leases: 0 };
}

/** Every checkpoint of the run as listing entries, damaged ones flagged. */
export async function listCheckpointEntries(reader: PostgresReader, runId: string): Promise<ReturnType<typeof checkpointEntry>[]> {
  const entries: ReturnType<typeof checkpointEntry>[] = [];
  for await (const page of checkpointPages(reader, runId))
    for (const { seq, line } of page) entries.push(checkpointEntry(line, runId, Number(seq)));
  return entries;
}

/** A checkpoint row read whole; one that does not read back is flagged as damaged. */
function readCheckpointRow(line: string, runId: string, seq: number): CheckpointRead {
  try {
    return { valid: true, checkpoint: decodeCheckpointRow(line, runId, seq, true) };
  } catch (error) {
    const e = error as CairnError;
    if (e.code !== 'CHECKPOINT_CORRUPT' && e.code !== 'FORMAT_TOO_NEW') throw error;
    return { valid: false, seq, reason: e.message, code: e.code };
  }
}

/**
 * The newest checkpoint that reads back intact (of `kind`, when given), newest first through the
 * `kind` column, a few rows per statement. A newer-format one throws `FORMAT_TOO_NEW`.
 */
export async function latestIntactCheckpoint(reader: PostgresReader, runId: string, kind?: string): Promise<Checkpoint | undefined> {
  for (let before = MAX_SEQ; ;) {
    const page = await reader.rows<SeqLine>(reader.sql.checkpointsBefore, [runId, before, kind ?? null, LATEST_PAGE_ROWS]);
    for (const { seq, line } of page) {
      try {
        // with a kind, read the header first: the payload is decoded only for a match
        if (kind !== undefined && decodeCheckpointRow(line, runId, Number(seq), false).kind !== kind) continue;
        return decodeCheckpointRow(line, runId, Number(seq), true);
      } catch (error) {
        if ((error as CairnError).code !== 'CHECKPOINT_CORRUPT') throw error; // FORMAT_TOO_NEW: never silently older
      }
    }
    if (page.length < LATEST_PAGE_ROWS) return undefined;
    before = page[page.length - 1]!.seq;
  }
}

/**
 * The newest intact checkpoint of `kind` and every record after it, oldest first (see
 * {@link Store.checkpointsSinceLatest}): candidates of that kind are found newest first through the
 * `kind` column (a few rows per statement), then the records from there on are read in pages.
 */
export async function checkpointsSinceLatestOfKind(
  reader: PostgresReader,
  runId: string,
  kind: string,
): Promise<CheckpointRead[] | undefined> {
  let from: number | undefined;
  search: for (let before = '9223372036854775807'; ;) {
    const page = await reader.rows<SeqLine>(reader.sql.checkpointsBefore, [runId, before, kind, LATEST_PAGE_ROWS]);
    for (const { seq, line } of page) {
      const read = readCheckpointRow(line, runId, Number(seq));
      if (read.valid && read.checkpoint.kind === kind) {
        from = Number(seq);
        break search;
      }
    }
    if (page.length < LATEST_PAGE_ROWS) return undefined;
    before = page[page.length - 1]!.seq;
  }
  const [bounds] = await reader.rows<{ last: string | null }>(reader.sql.checkpointBounds, [runId]);
  const records: CheckpointRead[] = [];
  const pages = windowPages(
    String(from),
    bounds?.last ?? String(from),
    (after, upTo, limit) => reader.rows<SeqLine>(reader.sql.checkpointsBetween, [runId, after, upTo, limit]),
    (row) => row.seq,
    CHECKPOINT_PAGE_ROWS,
  );
  for await (const page of pages) for (const { seq, line } of page) records.push(readCheckpointRow(line, runId, Number(seq)));
  return records;
}

/**
 * Streams a run as stored: run, checkpoints, ledgers (in creation order, one `items` record per
 * page), artifact lines. Pages are separate reads, so a run written meanwhile may show some of the new records.
 */
export async function* exportRunRecords(reader: PostgresReader, runId: string): AsyncGenerator<ExportRecord> {
  const runRow = (await reader.rows<RunRowColumns>(reader.sql.runRow, [runId]))[0];
  if (runRow === undefined) throw notFound(runId);
  const run = decodeRunRowOrRebuild(runRow, runRowWhere(reader.schema, runId));
  if (run.rebuilt) throw summaryLostError(runId, run.rebuilt, 'the run cannot be exported (an export copies records as they are)');
  yield { type: 'run', line: runRow.line };
  for await (const page of checkpointPages(reader, runId)) for (const { line } of page) yield { type: 'checkpoint', line };
  for (const ledger of await ledgersInOrder(reader, runId)) {
    const { stage } = ledger;
    let empty = true;
    for await (const lines of ledgerPages(reader, ledger)) {
      empty = false;
      yield { type: 'items', stage, lines };
    }
    if (empty) yield { type: 'items', stage, lines: [] }; // an empty ledger still exists
  }
  for (const line of await artifactLines(reader, runId)) yield { type: 'artifact', line };
}

/**
 * Writes a verified import inside one transaction (`client` is in it): the run appears whole or
 * not at all. With `overwrite`, the old run goes first, but its lease epoch is kept (as a released
 * lease), so a writer holding a lease from before the import can never write into the new run.
 */
export async function writeImport(client: PgQueryable, sql: PostgresSql, bundle: ImportBundle, overwrite: boolean): Promise<RunRecord> {
  const run = bundle.run;
  const runId = run.id;
  const refs = bundle.checkpoints.map(({ line }) => ({ line, ref: decodeCheckpoint(line, { runId }, false) }));
  const existing = (await client.query(sql.importHead, [runId])).rows[0] as { epoch: string | null } | undefined;
  if (existing && !overwrite)
    throw new CairnError('ALREADY_EXISTS', `Run ${runId} already exists; pass overwrite to replace it.`, { runId });
  let epoch = existing?.epoch ?? null;
  if (existing) await client.query(sql.deleteRun, [runId]);
  else {
    const leftovers = (await client.query(sql.leftovers, [runId])).rows[0] as LeftoverCounts;
    if (hasLeftovers(leftovers)) {
      if (!overwrite) throw leftoverRecordsError(runId, leftovers);
      // rows an earlier run left without its run row are never part of the import; its lease epoch is kept
      epoch = ((await client.query(sql.deleteLeftovers, [runId])).rows[0] as { epoch: string | null }).epoch;
    }
  }
  const lastSeq = refs.at(-1)?.ref.seq ?? 0;
  try {
    await client.query(sql.importRun, [runId, run.name, run.status, run.version, lastSeq + 1, bundle.runLine]);
  } catch (error) {
    if (sqlState(error) === UNIQUE_VIOLATION) throw alreadyExists(runId); // imported by another process this very moment
    throw error;
  }
  if (epoch !== null) await client.query(sql.insertReleasedLease, [runId, epoch]);
  for (let i = 0; i < refs.length; i += IMPORT_CHUNK) {
    const chunk = refs.slice(i, i + IMPORT_CHUNK);
    await client.query(sql.importCheckpoints, [
      runId,
      chunk.map((c) => c.ref.seq),
      chunk.map((c) => c.ref.kind),
      chunk.map((c) => c.ref.stage ?? null),
      chunk.map((c) => c.line),
    ]);
  }
  for (const [stage, lines] of bundle.ledgers) {
    const ledger = (await client.query(sql.insertLedger, [runId, stage])).rows[0] as { id: string };
    for (let i = 0; i < lines.length; i += IMPORT_CHUNK) await client.query(sql.insertItems, [ledger.id, lines.slice(i, i + IMPORT_CHUNK)]);
  }
  if (bundle.artifacts.length > 0) {
    const paths = bundle.artifacts.map((line) => decodeArtifact(line, { runId }).path);
    await client.query(sql.insertArtifacts, [runId, paths, bundle.artifacts]);
  }
  return run;
}

export function alreadyExists(runId: string): CairnError {
  return new CairnError('ALREADY_EXISTS', `Run ${runId} already exists.`, { runId });
}
