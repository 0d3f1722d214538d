/**
 * `postgres://…` — runs shared by many machines. It keeps the codec's sealed lines exactly as the
 * other stores do (so checksums survive export/import); every write is one statement or one
 * transaction, and a write made under a lease checks the lease in that same statement (fencing,
 * see `postgres-sql.ts`). Lease times and `olderThanMs` use the database server's clock, never
 * this machine's. Artifact files stay on a local folder: machines that share runs need that
 * folder shared too (a network file system), or a run's artifacts are only where it ran.
 * @example const store = await openStore('postgres://app@db:5432/jobs?schema=cairn');
 */
import { randomUUID } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { CairnError } from '../../core/errors.js';
import { assertName, assertRunId, resolveInside } from '../../core/ids.js';
import {
  checkArtifactEntry,
  decodeCheckpointRow,
  decodeRun,
  decodeRunRowOrRebuild,
  encodeArtifact,
  encodeCheckpoint,
  encodeItem,
  encodeRun,
  latestArtifacts,
  decodeLedger,
  manifestOf,
  summaryRequiredError,
  type RunRowColumns,
} from '../codec.js';
import {
  applyLimit,
  checkSeq,
  hasLeftovers,
  leaseLostError,
  leftoverRecordsError,
  matchesFilter,
  notFound,
  newRunRecord,
  nextRunRecord,
  nowIso,
  readImport,
  resolveStoreOptions,
  type ResolvedStoreOptions,
  type StoreOptions,
} from '../common.js';
import {
  RUN_STATUSES,
  type ArtifactEntry,
  type Checkpoint,
  type CheckpointEntry,
  type CheckpointInput,
  type CheckpointRead,
  type CheckpointRef,
  type ExportRecord,
  type ImportOptions,
  type ItemEntry,
  type Lease,
  type LockOptions,
  type NewRun,
  type RunFilter,
  type RunPatch,
  type RunRecord,
  type Store,
  type StoreCapabilities,
  type StoreProblem,
  type WriteOptions,
} from '../store.js';
import { migrate } from './migrations.js';
import {
  DEFAULT_POOL_SIZE,
  FOREIGN_KEY_VIOLATION,
  UNIQUE_VIOLATION,
  checkText,
  connectError,
  inTransaction,
  loadPgDriver,
  parsePostgresUrl,
  sqlState,
  storeBusy,
  type PgDriver,
  type PgPool,
} from './postgres-driver.js';
import { backoffDelay, pause } from '../transient.js';
import { PostgresLimits } from './postgres-limits.js';
import { PostgresQueue } from './postgres-queue.js';
import { postgresError, retryIdempotent, retryWrite, troubleOf, type RetryContext } from './postgres-retry.js';
import { acquireLease, liveLease, releaseLease, renewLease, type LeaseHost } from './postgres-leases.js';
import { buildSql, runRowWhere, type PostgresSql } from './postgres-sql.js';
import {
  alreadyExists,
  checkpointsSinceLatestOfKind,
  exportRunRecords,
  latestIntactCheckpoint,
  ledgerPages,
  listCheckpointEntries,
  readLeftovers,
  validateRunRecords,
  writeImport,
  type LedgerRow,
  type PostgresReader,
} from './postgres-transfer.js';

/** Options of the Postgres store, on top of every store's. The URL's `?pool=` and `?artifacts=` win over these. */
export interface PostgresStoreOptions extends StoreOptions {
  /** Connections in the pool. @defaultValue 10 */
  readonly poolSize?: number;
  /**
   * Folder for artifact files, one subfolder per run. Machines sharing runs need it shared too.
   * @defaultValue `./data/artifacts/<schema>` (resolved when the store opens)
   */
  readonly artifactRoot?: string;
}

/** Retries of a write that lost a race it can win by trying again (a checkpoint seq taken, a ledger created meanwhile). */
const MAX_RETRIES = 50;

interface RunStateRow extends RunRowColumns {
  readonly created: string;
  readonly lease_epoch: string | null;
  readonly lease_owner: string | null;
  readonly lease_released: boolean | null;
}

export class PostgresStore implements Store {
  readonly kind = 'postgres';
  readonly url: string;
  readonly capabilities: StoreCapabilities = Object.freeze({
    durable: true,
    multiProcess: true,
    multiMachine: true,
    fencedWrites: true,
    localArtifacts: true,
    queue: true,
  });
  readonly schema: string;
  readonly queue: PostgresQueue;
  /** Rate limits, shared by every process using the schema, on the server's clock (see postgres-limits.ts). */
  readonly limits: PostgresLimits;
  private readonly pool: PgPool;
  private readonly sql: PostgresSql;
  private readonly reader: PostgresReader;
  private readonly leaseHost: LeaseHost;
  private readonly options: ResolvedStoreOptions;
  private readonly artifactRoot: string;
  /** The seq this process expects each run's next checkpoint to get; a wrong guess costs one retry. */
  private readonly nextSeqs = new Map<string, number>();
  /** How passing failures are tried again (postgres-retry.ts). */
  private readonly retry: RetryContext;
  private closed = false;

  /**
   * Connects to `url` (`postgres://` or `postgresql://`), creates or migrates its schema, and
   * returns the store. `driver` exists for tests (a pool whose clients record their queries).
   */
  static async open(url: string, options: PostgresStoreOptions = {}, driver?: PgDriver): Promise<PostgresStore> {
    const resolved = resolveStoreOptions(options);
    const location = parsePostgresUrl(url);
    const poolSize = location.poolSize ?? options.poolSize ?? DEFAULT_POOL_SIZE;
    if (!Number.isInteger(poolSize) || poolSize < 1) throw new CairnError('INVALID_INPUT', 'poolSize must be a positive integer.');
    const { Pool } = driver ?? (await loadPgDriver());
    const pool = new Pool({ connectionString: location.connectionString, max: poolSize, application_name: 'cairn' });
    pool.on('error', () => undefined); // an idle connection dropped by the server: the pool replaces it
    // Every client hears its own errors, all its life. The pool listens only while a client is idle
    // or running one of its queries: a backend killed right after a query ended (its error arriving
    // in the same packet as the query's end, while the pool hands the client to the next caller)
    // was an unheard 'error' that ended the process. Heard, the client's next query fails, and the
    // store tries that again on a fresh connection (a worker died of it under CPU load).
    pool.on('connect', (client) => void client.on?.('error', () => undefined));
    // a backend killed or reset while the schema is checked (a server restarting, an operator's
    // pg_terminate_backend) is tried again, for up to transientRetryMs: the migration runs under a
    // lock in one transaction, so a try cut short changed nothing. A server that refuses the
    // connection at all fails at once (STORE_UNAVAILABLE): nothing answers yet.
    const started = Date.now();
    for (let attempt = 0; ; attempt++) {
      try {
        await migrate(pool, location.schema);
        break;
      } catch (error) {
        const refused = ['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN'].includes(String((error as { code?: unknown }).code));
        const delay = backoffDelay(attempt, 20, 1000);
        if (troubleOf(error) !== undefined && !refused && Date.now() - started + delay <= resolved.transientRetryMs) {
          await pause(delay);
          continue;
        }
        await pool.end().catch(() => undefined);
        throw connectError(error, location.displayUrl);
      }
    }
    const artifactRoot = location.artifactRoot ?? path.resolve(options.artifactRoot ?? path.join('data', 'artifacts', location.schema));
    return new PostgresStore(pool, location.displayUrl, location.schema, artifactRoot, resolved);
  }

  private constructor(pool: PgPool, url: string, schema: string, artifactRoot: string, options: ResolvedStoreOptions) {
    this.pool = pool;
    this.url = url;
    this.schema = schema;
    this.artifactRoot = artifactRoot;
    this.options = options;
    this.sql = buildSql(schema);
    this.reader = { sql: this.sql, schema, rows: (text, values) => this.rows(text, values) };
    this.retry = { url, retryMs: options.transientRetryMs, ensureOpen: () => this.ensureOpen() };
    this.leaseHost = {
      sql: this.sql,
      url,
      lockTtlMs: options.lockTtlMs,
      rows: (text, values) => this.rows(text, values),
      rowsOnce: (text, values) => this.rowsOnce(text, values),
      writeOnce: (send, landed) => retryWrite(this.retry, send, landed),
    };
    this.queue = new PostgresQueue({
      sql: this.sql,
      lockTtlMs: options.lockTtlMs,
      rows: (text, values) => this.rows(text, values),
      rowsOnce: (text, values) => this.rowsOnce(text, values),
      transaction: (fn) => {
        this.ensureOpen();
        return inTransaction(this.pool, fn);
      },
      writeOnce: (send, landed) => retryWrite(this.retry, send, landed),
    });
    this.limits = new PostgresLimits({
      schema,
      rows: (text, values) => this.rows(text, values),
      rowsOnce: (text, values) => this.rowsOnce(text, values),
      writeOnce: (send, landed) => retryWrite(this.retry, send, landed),
      call: (fn) => this.call(undefined, fn),
    });
  }

  private ensureOpen(): void {
    if (this.closed) throw new CairnError('STORE_CLOSED', `Store ${this.url} is closed.`);
  }

  /**
   * One statement's rows, after checking the store is open; sent again after a lost connection or
   * a server restart (see postgres-retry.ts). Only for reads and for writes whose repeat changes
   * nothing more than their first try.
   */
  private rows<R>(text: string, values: readonly unknown[]): Promise<R[]> {
    return retryIdempotent(this.retry, () => this.rowsOnce<R>(text, values));
  }

  /** One statement's rows, one try. */
  private async rowsOnce<R>(text: string, values: readonly unknown[]): Promise<R[]> {
    this.ensureOpen();
    return (await this.pool.query(text, values)).rows as R[];
  }

  /** One statement's row count, one try (callers decide what may be sent again: {@link retryWrite}). */
  private async count(text: string, values: readonly unknown[]): Promise<number> {
    this.ensureOpen();
    return (await this.pool.query(text, values)).rowCount ?? 0;
  }

  /** Whether the line stored by `text` (a query for one `line`) is `line`: a write whose reply was lost, found landed. */
  private async isLine(text: string, values: readonly unknown[], line: string, once = false): Promise<boolean> {
    const rows = await (once ? this.rowsOnce<{ line: string }>(text, values) : this.rows<{ line: string }>(text, values));
    return rows[0]?.line === line;
  }

  /** Checks the store is open and `runId` valid, then runs `fn`; driver errors become cairn's (postgres-retry.ts). */
  private async call<T>(runId: string | undefined, fn: () => Promise<T>): Promise<T> {
    this.ensureOpen();
    if (runId !== undefined) assertRunId(runId);
    try {
      return await fn();
    } catch (error) {
      // the run was deleted between a statement's checks and its insert
      if (sqlState(error) === FOREIGN_KEY_VIOLATION && runId !== undefined) throw notFound(runId);
      throw postgresError(error, this.url);
    }
  }

  /** The fence parameters of a write: `[epoch, owner]` of the lease, or nulls without one. */
  private fence(runId: string, lease: Lease | undefined): [number | null, string | null] {
    if (!lease) return [null, null];
    if (lease.runId !== runId) throw leaseLostError(lease);
    return [lease.epoch, lease.owner];
  }

  /** After a write wrote nothing: `NOT_FOUND` if the run is gone, `LEASE_LOST` if `lease` is no longer current; else returns. */
  private async explainRefusal(runId: string, lease: Lease | undefined): Promise<RunStateRow> {
    const row = (await this.rows<RunStateRow>(this.sql.runForUpdate, [runId]))[0];
    if (!row) throw notFound(runId);
    if (lease && !isCurrentLease(row, lease)) throw leaseLostError(lease);
    return row;
  }

  // Runs

  createRun(run: NewRun): Promise<RunRecord> {
    return this.call(run.id, async () => {
      // refused here rather than stored as a record that would not read back
      if (typeof run.name !== 'string' || run.name.length > 1024) {
        throw new CairnError('INVALID_INPUT', 'Run name must be a string of at most 1024 characters.', { runId: run.id });
      }
      checkText(run.name, 'Run name', run.id);
      checkStatus(run.status, run.id);
      const record = newRunRecord(run);
      const line = encodeRun(record, this.options);
      const stored = decodeRun(line, { runId: run.id });
      // the line (its time to the millisecond included) identifies this insert: after a lost reply it is looked for
      const inserted = await retryWrite(
        this.retry,
        async () => (await this.count(this.sql.insertRun, [record.id, record.name, record.status, record.version, line])) === 1,
        async () => ((await this.isLine(this.sql.runLine, [run.id], line, true)) ? { value: true } : undefined),
      );
      if (!inserted && !(await this.isLine(this.sql.runLine, [run.id], line))) {
        if ((await this.rows(this.sql.runLine, [run.id])).length === 0) {
          const leftovers = await readLeftovers(this.reader, run.id);
          if (hasLeftovers(leftovers)) throw leftoverRecordsError(run.id, leftovers);
        }
        throw alreadyExists(run.id);
      }
      this.nextSeqs.set(run.id, 1);
      return stored;
    });
  }

  getRun(runId: string): Promise<RunRecord | undefined> {
    return this.call(runId, async () => {
      const row = (await this.rows<RunRowColumns>(this.sql.runRow, [runId]))[0];
      return row === undefined ? undefined : decodeRunRowOrRebuild(row, this.runWhere(runId));
    });
  }

  updateRun(runId: string, expectedVersion: number, patch: RunPatch, options?: WriteOptions): Promise<RunRecord> {
    return this.call(runId, async () => {
      const lease = options?.lease;
      const [epoch, owner] = this.fence(runId, lease);
      const row = (await this.rows<RunStateRow>(this.sql.runForUpdate, [runId]))[0];
      if (!row) throw notFound(runId);
      if (lease && !isCurrentLease(row, lease)) throw leaseLostError(lease);
      const current = decodeRunRowOrRebuild(row, this.runWhere(runId)); // a damaged line: the header from the columns
      if (current.version !== expectedVersion) throw conflict(runId, current.version, expectedVersion);
      if (current.rebuilt?.dataLost && patch.data === undefined) throw summaryRequiredError(current);
      checkStatus(patch.status, runId);
      const next = nextRunRecord(current, patch);
      const line = encodeRun(next, this.options);
      const stored = decodeRun(line, { runId });
      const values = [runId, expectedVersion, next.status, next.version, line, row.created, epoch, owner];
      // A compare-and-set on the version: applied at most once, whatever is sent again. After a lost
      // reply, the new line (it holds the new version) in the row says the update landed.
      const landed = async (): Promise<{ value: boolean } | undefined> =>
        (await this.isLine(this.sql.runLine, [runId], line, true)) ? { value: true } : undefined;
      if (await retryWrite(this.retry, async () => (await this.count(this.sql.updateRun, values)) === 1, landed)) return stored;
      // a first try whose connection was cut (by the network) may have landed after it was looked for
      if (await this.isLine(this.sql.runLine, [runId], line)) return stored;
      // another writer got there first, the run went, or the lease was taken over meanwhile
      const now = await this.explainRefusal(runId, lease);
      let version = expectedVersion + 1;
      try {
        version = decodeRunRowOrRebuild(now, this.runWhere(runId)).version;
      } catch {
        // damaged meanwhile: still a conflict
      }
      throw conflict(runId, version, expectedVersion);
    });
  }

  listRuns(filter: RunFilter = {}): Promise<RunRecord[]> {
    return this.call(undefined, async () => {
      let olderThanMs = filter.olderThanMs;
      if (olderThanMs !== undefined && (Number.isNaN(olderThanMs) || olderThanMs === Infinity)) return [];
      if (olderThanMs === -Infinity) olderThanMs = undefined;
      if (filter.limit !== undefined && !(filter.limit > 0)) return [];
      // names cannot hold NUL (createRun refuses it), and Postgres text cannot carry one
      if (filter.name !== undefined && (typeof filter.name !== 'string' || filter.name.includes('\0'))) return [];
      const statuses = filter.status === undefined ? null : typeof filter.status === 'string' ? [filter.status] : [...filter.status];
      // olderThanMs was applied by the database clock; the rest is checked again on the decoded records
      const rest: RunFilter = { ...filter, olderThanMs: undefined };
      const pageSize = filter.limit === undefined ? null : Math.max(100, 2 * filter.limit);
      const runs: RunRecord[] = [];
      for (let offset = 0; ; offset += pageSize ?? 0) {
        const page = await this.rows<RunRowColumns>(this.sql.listRuns, [
          filter.name ?? null,
          statuses,
          olderThanMs ?? null,
          pageSize,
          offset,
        ]);
        for (const row of page) {
          let run: RunRecord;
          try {
            run = decodeRunRowOrRebuild(row, this.runWhere(row.id)); // a damaged line: the header from the columns
          } catch {
            continue; // nothing to read back (or a newer format): reported by validateRun
          }
          if (matchesFilter(run, rest)) runs.push(run);
        }
        if (pageSize === null || page.length < pageSize || (filter.limit !== undefined && runs.length >= filter.limit)) break;
      }
      return applyLimit(runs, filter);
    });
  }

  /** Where a run's record is, for messages: its row. */
  private runWhere(runId: string): string {
    return runRowWhere(this.schema, runId);
  }

  listRunIds(options: { readonly except?: ReadonlySet<string> } = {}): Promise<string[]> {
    return this.call(undefined, async () =>
      (await this.rows<{ id: string }>(this.sql.runIds, [])).map((row) => row.id).filter((id) => !options.except?.has(id)),
    );
  }

  async deleteRun(runId: string): Promise<boolean> {
    const deleted = await this.call(runId, async () => {
      // after a lost reply, a run row that is gone was deleted (by this call, or by another at the same moment)
      const gone = async (): Promise<{ value: boolean } | undefined> =>
        (await this.rowsOnce(this.sql.runLine, [runId])).length === 0 ? { value: true } : undefined;
      if (await retryWrite(this.retry, async () => (await this.count(this.sql.deleteRun, [runId])) === 1, gone)) return true; // the cascade is one statement
      // no run row: rows an earlier run left without one
      return ((await this.rows<{ removed: number }>(this.sql.deleteLeftovers, [runId]))[0]?.removed ?? 0) > 0;
    });
    this.nextSeqs.delete(runId);
    if (deleted) await fs.rm(this.artifactDir(runId), { recursive: true, force: true });
    return deleted;
  }

  // Checkpoints

  appendCheckpoint(runId: string, input: CheckpointInput, options?: WriteOptions): Promise<CheckpointRef> {
    return this.call(runId, async () => {
      const lease = options?.lease;
      const [epoch, owner] = this.fence(runId, lease);
      if (input.kind !== undefined) checkText(input.kind, 'Checkpoint kind', runId);
      if (input.stage !== undefined) checkText(input.stage, 'Stage name', runId);
      const at = nowIso();
      let seq = this.nextSeqs.get(runId) ?? (await this.readNextSeq(runId, lease));
      // encoded (serialized, maybe compressed) once; again only if the seq it carries was taken meanwhile
      let encoded = encodeCheckpoint(runId, seq, at, input, this.options);
      for (let attempt = 0; attempt <= MAX_RETRIES; attempt++) {
        if (encoded.ref.seq !== seq) encoded = encodeCheckpoint(runId, seq, at, input, this.options);
        let written = false;
        // A compare-and-set on the run's next seq: one checkpoint per seq, whatever is sent again.
        // After a lost reply, this checkpoint's line (seq and time in it) at its seq says it landed.
        const { line } = encoded;
        const landed = async (): Promise<{ value: boolean } | undefined> =>
          (await this.isLine(this.sql.checkpointLine, [runId, seq], line, true)) ? { value: true } : undefined;
        try {
          const values = [runId, seq, epoch, owner, encoded.ref.kind, input.stage ?? null, line];
          written = await retryWrite(this.retry, async () => (await this.count(this.sql.appendCheckpoint, values)) === 1, landed);
        } catch (error) {
          if (sqlState(error) !== UNIQUE_VIOLATION) throw error; // a row at this seq the counter did not know of: repaired below
        }
        // the seq was taken: by a first try whose connection was cut (the network) and that landed after all, or by another writer
        if (!written) written = await this.isLine(this.sql.checkpointLine, [runId, seq], line);
        if (written) {
          this.nextSeqs.set(runId, seq + 1);
          return encoded.ref;
        }
        seq = await this.readNextSeq(runId, lease);
      }
      throw storeBusy(this.url, `checkpoint numbers of run ${runId} kept being taken by other writers`);
    });
  }

  /** The run's next checkpoint seq, after `NOT_FOUND`/`LEASE_LOST` checks; repairs a counter behind its rows. */
  private async readNextSeq(runId: string, lease: Lease | undefined): Promise<number> {
    await this.explainRefusal(runId, lease);
    const row = (await this.rows<{ next_seq: string; max_seq: string | null }>(this.sql.nextSeq, [runId]))[0];
    if (!row) throw notFound(runId);
    const next = Number(row.next_seq);
    const max = row.max_seq === null ? 0 : Number(row.max_seq);
    if (max < next) return next;
    await this.rows(this.sql.repairNextSeq, [runId, max + 1]); // greatest(): repeating it changes nothing
    return max + 1;
  }

  getCheckpoint(runId: string, seq: number): Promise<Checkpoint> {
    return this.call(runId, async () => {
      checkSeq(seq, runId);
      const line = (await this.rows<{ line: string }>(this.sql.checkpointLine, [runId, seq]))[0]?.line;
      if (line === undefined) throw new CairnError('NOT_FOUND', `Checkpoint ${seq} of run ${runId} not found.`, { runId, seq });
      return decodeCheckpointRow(line, runId, seq, true);
    });
  }

  listCheckpoints(runId: string): Promise<CheckpointEntry[]> {
    return this.call(runId, () => listCheckpointEntries(this.reader, runId));
  }

  latestCheckpoint(runId: string, filter: { readonly kind?: string } = {}): Promise<Checkpoint | undefined> {
    return this.call(runId, async () => {
      if (filter.kind !== undefined && (typeof filter.kind !== 'string' || filter.kind.includes('\0'))) return undefined;
      return latestIntactCheckpoint(this.reader, runId, filter.kind);
    });
  }

  checkpointsSinceLatest(runId: string, filter: { readonly kind: string }): Promise<CheckpointRead[] | undefined> {
    return this.call(runId, async () => {
      if (typeof filter.kind !== 'string' || filter.kind.includes('\0')) return undefined;
      return checkpointsSinceLatestOfKind(this.reader, runId, filter.kind);
    });
  }

  deleteCheckpoints(runId: string, seqs: readonly number[]): Promise<number> {
    return this.call(runId, async () => {
      const valid = [...new Set(seqs)].filter((seq) => Number.isSafeInteger(seq) && seq > 0);
      // repeatable; after a lost reply, the count is of what the repeat found left
      return valid.length === 0 ? 0 : retryIdempotent(this.retry, () => this.count(this.sql.deleteCheckpoints, [runId, valid]));
    });
  }

  // Item ledgers

  appendItems(runId: string, stage: string, entries: readonly ItemEntry[], options?: WriteOptions): Promise<void> {
    return this.call(runId, async () => {
      assertName(stage, 'stage name');
      const lease = options?.lease;
      const [epoch, owner] = this.fence(runId, lease);
      const context = { runId, stage };
      const lines = entries.map((entry) => encodeItem(entry, this.options, context)); // all encoded before any is kept
      // The batch's token: the statement writes nothing when the ledger's last batch already is
      // this one, so sending it again after a lost reply (or while a first try still runs) never
      // adds the batch twice.
      const token = randomUUID();
      for (let attempt = 0; attempt <= MAX_RETRIES; attempt++) {
        const [row] = await this.rows<{ ok: boolean }>(this.sql.appendItems, [runId, stage, epoch, owner, lines, token]);
        if (row?.ok) return;
        await this.explainRefusal(runId, lease);
        // run and lease are fine: the ledger was being created by another writer at that moment
      }
      throw storeBusy(this.url, `ledger ${stage} of run ${runId} could not be created`);
    });
  }

  async *readItems(runId: string, stage: string, options: { onProblem?: (problem: StoreProblem) => void } = {}): AsyncIterable<ItemEntry> {
    const ledger = await this.call(runId, async () => {
      assertName(stage, 'stage name');
      return (await this.rows<LedgerRow>(this.sql.ledger, [runId, stage]))[0];
    });
    if (ledger === undefined) return;
    yield* decodeLedger(ledgerPages(this.reader, ledger), runId, stage, options.onProblem);
  }

  listLedgers(runId: string): Promise<string[]> {
    return this.call(runId, async () => (await this.rows<{ stage: string }>(this.sql.ledgerNames, [runId])).map((row) => row.stage));
  }

  // Artifacts

  artifactDir(runId: string): string {
    assertRunId(runId);
    return resolveInside(this.artifactRoot, runId);
  }

  recordArtifacts(runId: string, entries: readonly ArtifactEntry[], options?: WriteOptions): Promise<void> {
    return this.call(runId, async () => {
      const lease = options?.lease;
      const [epoch, owner] = this.fence(runId, lease);
      for (const entry of entries) {
        checkArtifactEntry(entry, runId);
        if (entry.stage !== undefined) checkText(entry.stage, 'Stage name', runId);
      }
      const latest = latestArtifacts(entries); // the last entry per path, as recording them one by one would leave
      const lines = latest.map((entry) => encodeArtifact(entry));
      const [row] = await this.rows<{ ok: boolean }>(this.sql.recordArtifacts, [runId, epoch, owner, latest.map((e) => e.path), lines]);
      if (row?.ok) return;
      await this.explainRefusal(runId, lease);
      throw storeBusy(this.url, `artifacts of run ${runId} were not recorded`);
    });
  }

  listArtifacts(runId: string): Promise<ArtifactEntry[]> {
    return this.call(runId, async () =>
      manifestOf(
        (await this.rows<{ line: string }>(this.sql.artifactLines, [runId])).map((row) => row.line),
        runId,
      ),
    );
  }

  // Locks (the database clock decides what expired; see postgres-leases.ts)

  acquireLock(runId: string, options: LockOptions): Promise<Lease> {
    return this.call(runId, () => acquireLease(this.leaseHost, runId, options));
  }

  renewLock(lease: Lease, options: { readonly ttlMs?: number } = {}): Promise<Lease> {
    return this.call(lease.runId, () => renewLease(this.leaseHost, lease, options.ttlMs));
  }

  releaseLock(lease: Lease): Promise<void> {
    return this.call(lease.runId, () => releaseLease(this.leaseHost, lease));
  }

  getLock(runId: string): Promise<Lease | undefined> {
    return this.call(runId, () => liveLease(this.leaseHost, runId));
  }

  // Validation, export, import

  validateRun(runId: string): Promise<StoreProblem[]> {
    return this.call(runId, () => validateRunRecords(this.reader, this, runId));
  }

  async *exportRun(runId: string): AsyncIterable<ExportRecord> {
    this.ensureOpen();
    assertRunId(runId);
    yield* exportRunRecords(this.reader, runId);
  }

  async importRun(records: AsyncIterable<ExportRecord> | Iterable<ExportRecord>, options: ImportOptions = {}): Promise<RunRecord> {
    this.ensureOpen();
    const bundle = await readImport(records);
    this.ensureOpen();
    // the imported run's line says, after a lost reply, that the import landed
    const run = await this.call(bundle.run.id, () =>
      retryWrite(
        this.retry,
        () => inTransaction(this.pool, (client) => writeImport(client, this.sql, bundle, options.overwrite === true)),
        async () => ((await this.isLine(this.sql.runLine, [bundle.run.id], bundle.runLine, true)) ? { value: bundle.run } : undefined),
      ),
    );
    this.nextSeqs.delete(run.id);
    return run;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.pool.end();
  }
}

function isCurrentLease(row: RunStateRow, lease: Lease): boolean {
  return row.lease_epoch === String(lease.epoch) && row.lease_owner === lease.owner && row.lease_released === false;
}

function conflict(runId: string, version: number, expectedVersion: number): CairnError {
  return new CairnError(
    'CONFLICT',
    `Run ${runId} changed meanwhile (version ${version}, expected ${expectedVersion}). Reload it and try again.`,
    { runId, version, expectedVersion },
  );
}

function checkStatus(status: unknown, runId: string): void {
  if (status !== undefined && !(RUN_STATUSES as readonly unknown[]).includes(status)) {
    throw new CairnError('INVALID_INPUT', `Unknown run status ${JSON.stringify(status)}.`, { runId });
  }
}
