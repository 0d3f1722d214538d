/**
 * Every SQL statement of the SQLite store, prepared once per connection and typed by row shape.
 * Every value is a bound parameter; no SQL text is ever built from data.
 */
import type { RunRowColumns } from '../codec.js';
import type { LeftoverCounts } from '../common.js';
import type { Lease } from '../store.js';
import type { SqliteDatabase, SqliteParam, SqliteStatement } from './sqlite-driver.js';

/** A run row as {@link RunRowColumns}: the header columns and the line. */
const RUN_ROW = 'id, name, status, version, created_at AS createdAt, updated_at AS updatedAt, line';

/** Rows per multi-row item insert (200 parameters: under every SQLite build's limit). */
const ITEM_ROWS_PER_INSERT = 100;

/** A run's counters, without its (possibly large) record line. */
export interface RunHeadRow {
  readonly version: number;
  readonly next_seq: number;
  readonly last_epoch: number;
}

export interface LeaseRow {
  readonly run_id: string;
  readonly owner: string;
  readonly epoch: number;
  readonly host: string;
  readonly pid: number;
  readonly acquired_at: string;
  readonly expires_at: string;
}

/** A run row's header columns (the line aside). */
export type RunColumns = Omit<RunRowColumns, 'line'>;

export interface SeqLine {
  readonly seq: number;
  readonly line: string;
}

/** Filters pushed down to SQL before run lines are decoded (and checked again after). */
export type RunQuery = {
  readonly name: string | null;
  /** JSON array of statuses. */
  readonly statuses: string | null;
  readonly updatedBefore: string | null;
};

/** A page of rows read with keyset pagination: bounded in rows and (roughly) in characters. */
export interface PageLimits {
  readonly maxRows: number;
  readonly maxChars: number;
}

export class SqliteQueries {
  private readonly s: Record<
    | 'runHead'
    | 'runLine'
    | 'runRow'
    | 'insertRun'
    | 'updateRun'
    | 'deleteRun'
    | 'setNextSeq'
    | 'setLastEpoch'
    | 'listRuns'
    | 'runIds'
    | 'leftovers'
    | 'deleteLeftoverCheckpoints'
    | 'deleteLeftoverLedgers'
    | 'deleteLeftoverArtifacts'
    | 'deleteLeftoverLease'
    | 'deleteLedgerItems'
    | 'insertCheckpoint'
    | 'maxSeq'
    | 'checkpointLine'
    | 'checkpointsAfter'
    | 'checkpointsAscending'
    | 'checkpointsDescending'
    | 'deleteCheckpoint'
    | 'ledgerId'
    | 'insertLedger'
    | 'ledgerNames'
    | 'ledgersInOrder'
    | 'insertItem'
    | 'insertItemRows'
    | 'itemsAfter'
    | 'insertArtifact'
    | 'deleteArtifactPath'
    | 'artifactLines'
    | 'lease'
    | 'upsertLease'
    | 'renewLease'
    | 'deleteLease'
    | 'enqueue'
    | 'queued',
    SqliteStatement
  >;

  constructor(db: SqliteDatabase) {
    const p = (sql: string): SqliteStatement => db.prepare(sql);
    this.s = {
      runHead: p('SELECT version, next_seq, last_epoch FROM cairn_runs WHERE id = ?'),
      runLine: p('SELECT line FROM cairn_runs WHERE id = ?').pluck(),
      runRow: p(`SELECT ${RUN_ROW} FROM cairn_runs WHERE id = ?`),
      insertRun: p(
        'INSERT INTO cairn_runs (id, name, status, version, created_at, updated_at, next_seq, last_epoch, line) ' +
          'VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING',
      ),
      updateRun: p('UPDATE cairn_runs SET status = ?, version = ?, updated_at = ?, line = ? WHERE id = ? AND version = ?'),
      deleteRun: p('DELETE FROM cairn_runs WHERE id = ?'),
      setNextSeq: p('UPDATE cairn_runs SET next_seq = ? WHERE id = ?'),
      setLastEpoch: p('UPDATE cairn_runs SET last_epoch = ? WHERE id = ?'),
      listRuns: p(
        `SELECT ${RUN_ROW} FROM cairn_runs ` +
          'WHERE (@name IS NULL OR name = @name) ' +
          'AND (@statuses IS NULL OR status IN (SELECT value FROM json_each(@statuses))) ' +
          'AND (@updatedBefore IS NULL OR updated_at < @updatedBefore) ' +
          'ORDER BY updated_at DESC, id',
      ),
      // every id with a run record or with rows left without one; checkpoint ids are found by a
      // loose index scan (one probe per distinct run id), not by reading every checkpoint row
      runIds: p(
        'WITH RECURSIVE cp (id) AS (SELECT min(run_id) FROM cairn_checkpoints ' +
          'UNION ALL SELECT (SELECT min(c.run_id) FROM cairn_checkpoints c WHERE c.run_id > cp.id) FROM cp WHERE cp.id IS NOT NULL) ' +
          'SELECT id FROM cairn_runs UNION SELECT id FROM cp WHERE id IS NOT NULL ' +
          'UNION SELECT run_id FROM cairn_ledgers UNION SELECT run_id FROM cairn_artifacts UNION SELECT run_id FROM cairn_leases ORDER BY 1',
      ).pluck(),
      leftovers: p(
        'SELECT (SELECT count(*) FROM cairn_checkpoints WHERE run_id = @id) AS checkpoints, ' +
          '(SELECT count(*) FROM cairn_ledgers WHERE run_id = @id) AS ledgers, ' +
          '(SELECT count(*) FROM cairn_items WHERE ledger_id IN (SELECT id FROM cairn_ledgers WHERE run_id = @id)) AS items, ' +
          '(SELECT count(*) FROM cairn_artifacts WHERE run_id = @id) AS artifacts, ' +
          '(SELECT count(*) FROM cairn_leases WHERE run_id = @id) AS leases',
      ),
      deleteLeftoverCheckpoints: p('DELETE FROM cairn_checkpoints WHERE run_id = ?'),
      deleteLeftoverLedgers: p('DELETE FROM cairn_ledgers WHERE run_id = ?'), // their items go with them (cascade)
      deleteLeftoverArtifacts: p('DELETE FROM cairn_artifacts WHERE run_id = ?'),
      deleteLeftoverLease: p('DELETE FROM cairn_leases WHERE run_id = ?'),
      deleteLedgerItems: p('DELETE FROM cairn_items WHERE ledger_id = ?'),
      insertCheckpoint: p('INSERT INTO cairn_checkpoints (run_id, seq, created_at, kind, line) VALUES (?, ?, ?, ?, ?)'),
      maxSeq: p('SELECT max(seq) FROM cairn_checkpoints WHERE run_id = ?').pluck(),
      checkpointLine: p('SELECT line FROM cairn_checkpoints WHERE run_id = ? AND seq = ?').pluck(),
      checkpointsAfter: p('SELECT seq, line FROM cairn_checkpoints WHERE run_id = ? AND seq > ? ORDER BY seq LIMIT ?'),
      checkpointsAscending: p('SELECT seq, line FROM cairn_checkpoints WHERE run_id = ? ORDER BY seq'),
      checkpointsDescending: p('SELECT seq, line FROM cairn_checkpoints WHERE run_id = ? ORDER BY seq DESC'),
      deleteCheckpoint: p('DELETE FROM cairn_checkpoints WHERE run_id = ? AND seq = ?'),
      ledgerId: p('SELECT id FROM cairn_ledgers WHERE run_id = ? AND stage = ?').pluck(),
      insertLedger: p('INSERT INTO cairn_ledgers (run_id, stage) VALUES (?, ?)'),
      ledgerNames: p('SELECT stage FROM cairn_ledgers WHERE run_id = ? ORDER BY stage').pluck(),
      ledgersInOrder: p('SELECT id, stage FROM cairn_ledgers WHERE run_id = ? ORDER BY id'),
      insertItem: p('INSERT INTO cairn_items (ledger_id, line) VALUES (?, ?)'),
      insertItemRows: p(
        `INSERT INTO cairn_items (ledger_id, line) VALUES ${Array<string>(ITEM_ROWS_PER_INSERT).fill('(?, ?)').join(', ')}`,
      ),
      itemsAfter: p('SELECT id, line FROM cairn_items WHERE ledger_id = ? AND id > ? ORDER BY id LIMIT ?'),
      insertArtifact: p('INSERT INTO cairn_artifacts (run_id, path, line) VALUES (?, ?, ?)'),
      deleteArtifactPath: p('DELETE FROM cairn_artifacts WHERE run_id = ? AND path = ?'),
      artifactLines: p('SELECT line FROM cairn_artifacts WHERE run_id = ? ORDER BY id').pluck(),
      lease: p('SELECT run_id, owner, epoch, host, pid, acquired_at, expires_at FROM cairn_leases WHERE run_id = ?'),
      upsertLease: p(
        'INSERT INTO cairn_leases (run_id, owner, epoch, host, pid, acquired_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?) ' +
          'ON CONFLICT (run_id) DO UPDATE SET owner = excluded.owner, epoch = excluded.epoch, host = excluded.host, ' +
          'pid = excluded.pid, acquired_at = excluded.acquired_at, expires_at = excluded.expires_at',
      ),
      renewLease: p('UPDATE cairn_leases SET expires_at = ? WHERE run_id = ? AND epoch = ? AND owner = ?'),
      deleteLease: p('DELETE FROM cairn_leases WHERE run_id = ? AND epoch = ? AND owner = ?'),
      enqueue: p('UPDATE cairn_runs SET queued_at = coalesce(queued_at, ?) WHERE id = ?'),
      queued: p(
        'SELECT id, line FROM cairn_runs WHERE queued_at IS NOT NULL ' +
          "AND status IN ('pending', 'interrupted', 'running') " +
          'AND (@names IS NULL OR name IN (SELECT value FROM json_each(@names))) ORDER BY queued_at, id',
      ),
    };
  }

  // Runs

  runHead(runId: string): RunHeadRow | undefined {
    return this.s.runHead.get(runId) as RunHeadRow | undefined;
  }

  runLine(runId: string): string | undefined {
    return this.s.runLine.get(runId) as string | undefined;
  }

  /** The run row: its line and the header columns (what a damaged line is read back from). */
  runRow(runId: string): RunRowColumns | undefined {
    return this.s.runRow.get(runId) as RunRowColumns | undefined;
  }

  /** False when the id is taken. */
  insertRun(run: RunColumns, line: string, nextSeq = 1, lastEpoch = 0): boolean {
    return (
      this.s.insertRun.run(run.id, run.name, run.status, run.version, run.createdAt, run.updatedAt, nextSeq, lastEpoch, line).changes === 1
    );
  }

  /** Compare-and-set on the version column; false when another writer got there first. */
  updateRun(run: RunColumns, expectedVersion: number, line: string): boolean {
    return this.s.updateRun.run(run.status, run.version, run.updatedAt, line, run.id, expectedVersion).changes === 1;
  }

  /** Deletes the run; its checkpoints, ledgers, items, artifacts and lease go with it (cascade). */
  deleteRun(runId: string): boolean {
    return this.s.deleteRun.run(runId).changes === 1;
  }

  setNextSeq(runId: string, nextSeq: number): void {
    this.s.setNextSeq.run(nextSeq, runId);
  }

  setLastEpoch(runId: string, epoch: number): void {
    this.s.setLastEpoch.run(epoch, runId);
  }

  /** Candidate runs, newest `updated_at` first; consume synchronously (the statement stays open). */
  listRuns(query: RunQuery): IterableIterator<RunRowColumns> {
    return this.s.listRuns.iterate(query) as IterableIterator<RunRowColumns>;
  }

  /** Every run id, sorted, ids with only leftover rows (no run row) included. */
  runIds(): string[] {
    return this.s.runIds.all() as string[];
  }

  /** The rows of `runId` in the tables under the run row (leftovers when there is no run row). */
  leftovers(runId: string): LeftoverCounts {
    return this.s.leftovers.get({ id: runId }) as LeftoverCounts;
  }

  /**
   * Deletes every row of `runId` under the run row — left there when the run row was deleted with
   * foreign keys off (the `sqlite3` shell's default) — and returns how many rows went.
   */
  deleteLeftovers(runId: string): number {
    return (
      this.s.deleteLeftoverCheckpoints.run(runId).changes +
      this.s.deleteLeftoverLedgers.run(runId).changes +
      this.s.deleteLeftoverArtifacts.run(runId).changes +
      this.s.deleteLeftoverLease.run(runId).changes
    );
  }

  // Checkpoints

  insertCheckpoint(runId: string, seq: number, createdAt: string, kind: string, line: string): void {
    this.s.insertCheckpoint.run(runId, seq, createdAt, kind, line);
  }

  /** The highest seq stored for the run, 0 if none. */
  maxSeq(runId: string): number {
    return Number(this.s.maxSeq.get(runId) ?? 0);
  }

  checkpointLine(runId: string, seq: number): string | undefined {
    return this.s.checkpointLine.get(runId, seq) as string | undefined;
  }

  /** The next page of checkpoints after `afterSeq`, in seq order. */
  checkpointsAfter(runId: string, afterSeq: number, limits: PageLimits): SeqLine[] {
    return takePage(this.s.checkpointsAfter.iterate(runId, afterSeq, limits.maxRows) as IterableIterator<SeqLine>, limits.maxChars);
  }

  /** Oldest first; consume synchronously (the statement stays open until the loop ends). */
  checkpointsAscending(runId: string): IterableIterator<SeqLine> {
    return this.s.checkpointsAscending.iterate(runId) as IterableIterator<SeqLine>;
  }

  /** Newest first; consume synchronously (the statement stays open until the loop ends). */
  checkpointsDescending(runId: string): IterableIterator<SeqLine> {
    return this.s.checkpointsDescending.iterate(runId) as IterableIterator<SeqLine>;
  }

  deleteCheckpoint(runId: string, seq: number): boolean {
    return this.s.deleteCheckpoint.run(runId, seq).changes === 1;
  }

  // Item ledgers

  ledgerId(runId: string, stage: string): number | undefined {
    return this.s.ledgerId.get(runId, stage) as number | undefined;
  }

  /**
   * The ledger's id, creating the ledger if needed (call inside a write transaction). A new ledger
   * may get the rowid of one deleted by hand with foreign keys off; items such a ledger left are
   * removed, so a new ledger never adopts them.
   */
  ensureLedger(runId: string, stage: string): number {
    const found = this.ledgerId(runId, stage);
    if (found !== undefined) return found;
    const id = Number(this.s.insertLedger.run(runId, stage).lastInsertRowid);
    this.s.deleteLedgerItems.run(id);
    return id;
  }

  ledgerNames(runId: string): string[] {
    return this.s.ledgerNames.all(runId) as string[];
  }

  /** Ledgers in creation order. */
  ledgersInOrder(runId: string): { readonly id: number; readonly stage: string }[] {
    return this.s.ledgersInOrder.all(runId) as { id: number; stage: string }[];
  }

  /** Inserts in statements of {@link ITEM_ROWS_PER_INSERT} rows (a quarter less time than a row per statement), the rest one by one. */
  insertItems(ledgerId: number, lines: readonly string[]): void {
    let i = 0;
    if (lines.length >= ITEM_ROWS_PER_INSERT) {
      const params = new Array<SqliteParam>(2 * ITEM_ROWS_PER_INSERT);
      for (; i + ITEM_ROWS_PER_INSERT <= lines.length; i += ITEM_ROWS_PER_INSERT) {
        for (let j = 0; j < ITEM_ROWS_PER_INSERT; j++) {
          params[2 * j] = ledgerId;
          params[2 * j + 1] = lines[i + j]!;
        }
        this.s.insertItemRows.run(...params);
      }
    }
    for (; i < lines.length; i++) this.s.insertItem.run(ledgerId, lines[i]!);
  }

  /** The next page of a ledger's lines after row `afterId`, in append order. */
  itemsAfter(ledgerId: number, afterId: number, limits: PageLimits): { readonly id: number; readonly line: string }[] {
    return takePage(
      this.s.itemsAfter.iterate(ledgerId, afterId, limits.maxRows) as IterableIterator<{ id: number; line: string }>,
      limits.maxChars,
    );
  }

  // Artifacts

  /** Appends a manifest line, dropping older lines for the same path (the manifest keeps the latest). */
  replaceArtifact(runId: string, path: string, line: string): void {
    this.s.deleteArtifactPath.run(runId, path);
    this.s.insertArtifact.run(runId, path, line);
  }

  insertArtifact(runId: string, path: string, line: string): void {
    this.s.insertArtifact.run(runId, path, line);
  }

  artifactLines(runId: string): string[] {
    return this.s.artifactLines.all(runId) as string[];
  }

  // Leases

  /** Marks the run as queued (keeping its first queue time); false if it does not exist. */
  enqueue(runId: string, now: string): boolean {
    return this.s.enqueue.run(now, runId).changes === 1;
  }

  /** Queued runs in a status a worker continues, longest queued first (`names`: JSON array, or null for all). */
  queued(names: string | null): IterableIterator<{ readonly id: string; readonly line: string }> {
    return this.s.queued.iterate({ names }) as IterableIterator<{ readonly id: string; readonly line: string }>;
  }

  lease(runId: string): Lease | undefined {
    const row = this.s.lease.get(runId) as LeaseRow | undefined;
    return row && leaseOf(row);
  }

  upsertLease(lease: Lease): void {
    this.s.upsertLease.run(lease.runId, lease.owner, lease.epoch, lease.host, lease.pid, lease.acquiredAt, lease.expiresAt);
  }

  /** False when the lease is no longer this epoch and owner. */
  renewLease(lease: Lease, expiresAt: string): boolean {
    return this.s.renewLease.run(expiresAt, lease.runId, lease.epoch, lease.owner).changes === 1;
  }

  deleteLease(lease: Lease): void {
    this.s.deleteLease.run(lease.runId, lease.epoch, lease.owner);
  }
}

function leaseOf(row: LeaseRow): Lease {
  return {
    runId: row.run_id,
    owner: row.owner,
    epoch: row.epoch,
    host: row.host,
    pid: row.pid,
    acquiredAt: row.acquired_at,
    expiresAt: row.expires_at,
  };
}

/** Drains at most one page from a LIMITed iterator, stopping early past `maxChars` of lines. */
function takePage<R extends { readonly line: string }>(rows: IterableIterator<R>, maxChars: number): R[] {
  const page: R[] = [];
  let chars = 0;
  for (const row of rows) {
    page.push(row);
    chars += row.line.length;
    if (chars >= maxChars) break; // `break` resets the statement
  }
  return page;
}
