/**
 * The parts of the Postgres store that work on whole runs or long lists: reading in pages,
 * validating, streaming out (export), and writing a verified import in one transaction.
 *
 * Why keyset pages rather than a server-side cursor: a cursor lives in a transaction on one
 * connection for as long as the caller iterates — and a caller may pause for minutes between
 * entries (a resume replays a ledger while it works). That would pin a pooled connection and
 * an open transaction (holding back vacuum) per reader. A keyset page
 * (`WHERE ledger_id = $1 AND id > $2 ORDER BY id LIMIT n`) is a short, independent statement served
 * by the `(ledger_id, id)` index, whatever the ledger's size; memory holds one page (plus the next,
 * fetched while the caller works on this one).
 */
import { CairnError } from '../../core/errors.js';
import { checkpointEntry, decodeArtifact, decodeCheckpoint, decodeCheckpointRow, decodeRunRow } from '../codec.js';
import { checkArtifactFiles, notFound, problemCollector, type ImportBundle } from '../common.js';
import type { ExportRecord, RunRecord, Store, StoreProblem } from '../store.js';
import { UNIQUE_VIOLATION, sqlState, type PgQueryable } from './postgres-driver.js';
import type { PostgresSql } from './postgres-sql.js';

/** Rows per item page at most; fewer when lines are long, so that a page stays near {@link PAGE_CHARS}. */
export const ITEM_PAGE_ROWS = 2000;
const CHECKPOINT_PAGE_ROWS = 256;
const PAGE_CHARS = 32 * 1024 * 1024;
/** Rows per statement when an import writes a long list (each statement sends its rows as arrays). */
const IMPORT_CHUNK = 10_000;

/** What reading needs from the store: its statements, and queries that first check the store is open. */
export interface PostgresReader {
  readonly sql: PostgresSql;
  /** Rows of one statement; `STORE_CLOSED` once the store is closed. */
  rows<R>(text: string, values: readonly unknown[]): Promise<R[]>;
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
 * Keyset pages of `fetch(after, limit)` rows, in key order. The next page is requested as soon as
 * one arrives, so the database works while the caller does; a page shorter than asked for is the last.
 */
async function* keysetPages<R extends { readonly line: string }>(
  fetch: (after: string, limit: number) => Promise<R[]>,
  keyOf: (row: R) => string,
  maxRows: number,
): AsyncGenerator<R[]> {
  let limit = maxRows;
  let next = fetch('0', limit);
  for (;;) {
    const page = await next;
    if (page.length === 0) return;
    const asked = limit;
    let chars = 0;
    for (const row of page) chars += row.line.length;
    limit = Math.max(1, Math.min(maxRows, Math.floor(PAGE_CHARS / Math.max(1, chars / page.length))));
    if (page.length < asked) {
      yield page;
      return;
    }
    next = fetch(keyOf(page[page.length - 1]!), limit);
    next.catch(() => undefined); // surfaces when awaited; a caller that stops early never awaits it
    yield page;
  }
}

/** A ledger's lines in append order, one page per step. */
export async function* ledgerPages(reader: PostgresReader, ledgerId: string): AsyncGenerator<string[]> {
  const pages = keysetPages(
    (after, limit) => reader.rows<IdLine>(reader.sql.itemsAfter, [ledgerId, after, limit]),
    (row) => row.id,
    ITEM_PAGE_ROWS,
  );
  for await (const page of pages) yield page.map((row) => row.line);
}

/** A run's checkpoint rows in seq order, one page per step. */
export function checkpointPages(reader: PostgresReader, runId: string): AsyncGenerator<SeqLine[]> {
  return keysetPages(
    (after, limit) => reader.rows<SeqLine>(reader.sql.checkpointsAfter, [runId, after, limit]),
    (row) => row.seq,
    CHECKPOINT_PAGE_ROWS,
  );
}

export async function ledgersInOrder(reader: PostgresReader, runId: string): Promise<{ id: string; stage: string }[]> {
  return reader.rows<{ id: string; stage: string }>(reader.sql.ledgersInOrder, [runId]);
}

async function artifactLines(reader: PostgresReader, runId: string): Promise<string[]> {
  return (await reader.rows<{ line: string }>(reader.sql.artifactLines, [runId])).map((row) => row.line);
}

/** Reads every record of the run (and its artifact files) and reports each problem found. */
export async function validateRunRecords(reader: PostgresReader, store: Store, runId: string): Promise<StoreProblem[]> {
  const runLine = (await reader.rows<{ line: string }>(reader.sql.runLine, [runId]))[0]?.line;
  if (runLine === undefined) return [{ code: 'NOT_FOUND', runId, where: 'run', message: `Run ${runId} not found.` }];
  const problems: StoreProblem[] = [];
  const check = problemCollector(runId, problems);
  check('run', undefined, () => decodeRunRow(runLine, runId));
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

/** Every checkpoint of the run as listing entries, damaged ones flagged. */
export async function listCheckpointEntries(reader: PostgresReader, runId: string): Promise<ReturnType<typeof checkpointEntry>[]> {
  const entries: ReturnType<typeof checkpointEntry>[] = [];
  for await (const page of checkpointPages(reader, runId))
    for (const { seq, line } of page) entries.push(checkpointEntry(line, runId, Number(seq)));
  return entries;
}

/**
 * Streams a run as stored: run, checkpoints, ledgers (in creation order, one `items` record per
 * page), artifact lines. Pages are separate reads, so a run written meanwhile may show some of the new records.
 */
export async function* exportRunRecords(reader: PostgresReader, runId: string): AsyncGenerator<ExportRecord> {
  const runLine = (await reader.rows<{ line: string }>(reader.sql.runLine, [runId]))[0]?.line;
  if (runLine === undefined) throw notFound(runId);
  decodeRunRow(runLine, runId);
  yield { type: 'run', line: runLine };
  for await (const page of checkpointPages(reader, runId)) for (const { line } of page) yield { type: 'checkpoint', line };
  for (const { id, stage } of await ledgersInOrder(reader, runId)) {
    let empty = true;
    for await (const lines of ledgerPages(reader, id)) {
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
  if (existing) await client.query(sql.deleteRun, [runId]);
  const lastSeq = refs.at(-1)?.ref.seq ?? 0;
  try {
    await client.query(sql.importRun, [runId, run.name, run.status, run.version, lastSeq + 1, bundle.runLine]);
  } catch (error) {
    if (sqlState(error) === UNIQUE_VIOLATION) throw alreadyExists(runId); // imported by another process this very moment
    throw error;
  }
  if (existing?.epoch != null) await client.query(sql.insertReleasedLease, [runId, existing.epoch]);
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
