/**
 * `sqlite:<path>` — one database file (WAL) shared by every process on the machine. It keeps the
 * codec's sealed lines exactly as the other stores do (so checksums survive export/import), and
 * does each write in one `BEGIN IMMEDIATE` transaction: compare-and-set, checkpoint numbering,
 * whole item batches and lease fencing all hold across processes.
 *
 * Durability: `synchronous=FULL` (a commit is on disk when the call resolves). Appending
 * `?synchronous=NORMAL` to the path trades that for speed: a crashed process loses nothing, a power
 * cut may lose the last commits.
 * @example const store = await openStore('sqlite:./data/cairn.db');
 */
import { randomUUID } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { CairnError } from '../../core/errors.js';
import { assertName, assertRunId, resolveInside } from '../../core/ids.js';
import {
  checkArtifactEntry,
  decodeRun,
  encodeArtifact,
  encodeCheckpoint,
  encodeItem,
  encodeRun,
  decodeLedger,
  decodeRunRowOrRebuild,
  manifestOf,
  summaryRequiredError,
} from '../codec.js';
import {
  applyLimit,
  checkSeq,
  claimReason,
  hasLeftovers,
  HOST,
  isLeaseStale,
  leaseLostError,
  leftoverRecordsError,
  matchesFilter,
  notFound,
  newRunRecord,
  nextRunRecord,
  nowIso,
  readImport,
  resolveStoreOptions,
  runLockedError,
  type ResolvedStoreOptions,
  type StoreOptions,
} from '../common.js';
import {
  RUN_STATUSES,
  type ArtifactEntry,
  type Checkpoint,
  type CheckpointEntry,
  type CheckpointInput,
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
  type Claim,
  type ClaimOptions,
  type RunQueue,
} from '../store.js';
import { backoffDelay, fileSystemError, FREE_SPACE_RESERVE_BYTES, freeBytes, pause, storeFullError } from '../transient.js';
import { migrate } from './migrations.js';
import {
  isBusy,
  loadSqliteDriver,
  openSqliteDatabase,
  sqliteError,
  type SqliteDatabase,
  type SqliteDatabaseConstructor,
  type SqliteSynchronous,
  type SqliteTransaction,
} from './sqlite-driver.js';
import { SqliteLimits } from './sqlite-limits.js';
import { SqliteQueries, type RunHeadRow, type RunQuery } from './sqlite-queries.js';
import {
  checkpointEntry,
  decodeCheckpointRow,
  exportRunRecords,
  ledgerPages,
  runRowWhere,
  validateRunRecords,
  writeImport,
  type SqliteReader,
} from './sqlite-transfer.js';

/** Latest instant whose ISO form still sorts as text (year 9999). */
const MAX_ISO_TIME = 253_402_300_799_999;

const SYNCHRONOUS_SUFFIX = /\?synchronous=(full|normal)$/i;

export class SqliteStore implements Store {
  readonly kind = 'sqlite';
  readonly url: string;
  readonly capabilities: StoreCapabilities = Object.freeze({
    durable: true,
    multiProcess: true,
    multiMachine: false,
    fencedWrites: true,
    localArtifacts: true,
    queue: true,
  });
  /** Workers on this machine share runs through it (`cairn worker --store sqlite:…`). */
  readonly queue: RunQueue = {
    enqueue: (runId) => this.enqueue(runId),
    claim: (options) => this.claim(options),
    pending: (names) => this.pending(names),
  };
  /** Rate limits, shared by every process using the database file (see sqlite-limits.ts). */
  readonly limits: SqliteLimits;
  /** Absolute path of the database file, or `:memory:`. */
  readonly file: string;
  readonly synchronous: SqliteSynchronous;
  private readonly db: SqliteDatabase;
  private readonly q: SqliteQueries;
  /** What the streaming helpers see of this store. */
  private readonly reader: SqliteReader;
  private readonly options: ResolvedStoreOptions;
  private readonly artifactRoot: string;
  private readonly transaction: SqliteTransaction<[() => unknown], unknown>;
  private closed = false;

  /**
   * Opens (creating if needed) the database at `location` — an absolute path, optionally ending in
   * `?synchronous=NORMAL`, or `:memory:` — and migrates its schema. `driver` exists for tests.
   */
  static async open(location: string, options: StoreOptions = {}, driver?: SqliteDatabaseConstructor): Promise<SqliteStore> {
    const resolved = resolveStoreOptions(options);
    const match = SYNCHRONOUS_SUFFIX.exec(location);
    const file = match ? location.slice(0, match.index) : location;
    const synchronous: SqliteSynchronous = match?.[1]?.toUpperCase() === 'NORMAL' ? 'NORMAL' : 'FULL';
    const Database = driver ?? (await loadSqliteDriver());
    const started = Date.now();
    for (let attempt = 0; ; attempt++) {
      let db: SqliteDatabase | undefined;
      try {
        db = openSqliteDatabase(Database, file, synchronous);
        migrate(db, file);
        return new SqliteStore(db, file, synchronous, resolved);
      } catch (error) {
        db?.close();
        if (!isBusy(error)) throw fileSystemError(sqliteError(error, file), file);
        // a new file switching to WAL, or a migration, while another process holds the lock
        const delay = backoffDelay(attempt, 5, 250);
        if (Date.now() - started + delay > resolved.transientRetryMs) {
          throw new CairnError(
            'STORE_BUSY',
            `${file} stayed locked by another process for ${seconds(Date.now() - started)} while it was opened (its schema checked or brought up to date); nothing was changed. ` +
              'Find the process holding a long write (a stopped process, a sqlite3 shell inside BEGIN), end it, and try again.',
            { file },
            { cause: error },
          );
        }
        await pause(delay);
      }
    }
  }

  private constructor(db: SqliteDatabase, file: string, synchronous: SqliteSynchronous, options: ResolvedStoreOptions) {
    this.db = db;
    this.file = file;
    this.synchronous = synchronous;
    this.options = options;
    this.q = new SqliteQueries(db);
    this.transaction = db.transaction((fn: () => unknown) => fn());
    this.reader = { q: this.q, call: (runId, fn) => this.call(runId, fn) };
    this.limits = new SqliteLimits({ db, synchronous, call: (fn) => this.call(undefined, fn), write: (fn) => this.write(fn) });
    const memory = file === ':memory:';
    this.url = `sqlite:${file}${synchronous === 'NORMAL' ? '?synchronous=NORMAL' : ''}`;
    this.artifactRoot = memory ? path.join(os.tmpdir(), `cairn-sqlite-${process.pid}-${randomUUID()}`) : `${file}-artifacts`;
  }

  /** Runs `fn` in one `BEGIN IMMEDIATE` transaction: all of it commits, or none of it (a busy answer included). */
  private write<T>(fn: () => T): T {
    this.ensureOpen();
    return this.transaction.immediate(fn) as T;
  }

  private ensureOpen(): void {
    if (this.closed) throw new CairnError('STORE_CLOSED', `Store ${this.url} is closed.`);
  }

  /**
   * Checks the store is open and `runId` valid, then runs `fn`; a throw becomes a rejection, with
   * SQLite's codes turned into cairn's. The first try runs at once; while another process holds
   * the database's lock, `fn` is tried again (see {@link callAgain}).
   */
  private call<T>(runId: string | undefined, fn: () => T): Promise<T> {
    try {
      this.ensureOpen();
      if (runId !== undefined) assertRunId(runId);
      return Promise.resolve(fn());
    } catch (error) {
      return isBusy(error) ? this.callAgain(fn, error) : Promise.reject(sqliteError(error, this.file));
    }
  }

  /**
   * Tries `fn` again, with backoff and without blocking, while another process holds the lock;
   * `STORE_BUSY` once `transientRetryMs` has passed. Trying again is safe: every `fn` writes in at
   * most one transaction, and a try that met the lock wrote nothing (SQLite answers busy before
   * the transaction starts, or rolls it back).
   */
  private async callAgain<T>(fn: () => T, first: unknown): Promise<T> {
    const started = Date.now();
    let last = first;
    for (let attempt = 0; ; attempt++) {
      const delay = backoffDelay(attempt, 5, 250);
      if (Date.now() - started + delay > this.options.transientRetryMs) {
        throw new CairnError(
          'STORE_BUSY',
          `The SQLite database ${this.file} stayed locked by another process for ${seconds(Date.now() - started)} (the store's transientRetryMs); ` +
            'nothing was written. Find the process holding a long write (a stopped process, a sqlite3 shell inside BEGIN), end it, ' +
            'then resume the run (cairn resume <run-id>).',
          { file: this.file, waitedMs: Date.now() - started },
          { cause: last },
        );
      }
      await pause(delay);
      this.ensureOpen();
      try {
        return fn();
      } catch (error) {
        if (!isBusy(error)) throw sqliteError(error, this.file);
        last = error;
      }
    }
  }

  /**
   * A full disk: a write of items or of a checkpoint that would leave less than
   * {@link FREE_SPACE_RESERVE_BYTES} free is refused before anything is written (`STORE_FULL`), so
   * that the records that end the attempt (the run record saying `interrupted`, the lease given
   * back) still fit, as on the file store. SQLite writes a change to its log and later to the
   * database: `bytes` is counted twice.
   */
  private checkRoom(bytes: number, runId: string): void {
    if (this.file === ':memory:') return;
    const free = this.freeSpace(bytes);
    if (free === undefined || free >= 2 * bytes + FREE_SPACE_RESERVE_BYTES) return;
    throw storeFullError(
      this.file,
      undefined,
      { runId },
      `${Math.floor(free / 1024)} KiB free; this write needs about ${Math.ceil((2 * bytes) / 1024)} KiB, and the SQLite store keeps 1 MiB free to record the end of the run`,
    );
  }

  /** Free bytes on the database's disk: measured again at least once a second, and at every write once under 64 MiB. */
  private freeSpace(bytes: number): number | undefined {
    const now = Date.now();
    const known = this.freeMeasured;
    if (known && now - known.at < 1000 && known.bytes - this.writtenSinceStatfs > 64 * FREE_SPACE_RESERVE_BYTES) {
      this.writtenSinceStatfs += 2 * bytes;
      return known.bytes - this.writtenSinceStatfs;
    }
    const free = freeBytes(path.dirname(this.file));
    this.freeMeasured = free === undefined ? undefined : { bytes: free, at: now };
    this.writtenSinceStatfs = 0;
    return free;
  }

  private freeMeasured: { bytes: number; at: number } | undefined;
  private writtenSinceStatfs = 0;

  /** The run's counters; `NOT_FOUND`, or `LEASE_LOST` when `lease` is no longer the run's lease. */
  private guard(runId: string, lease?: Lease): RunHeadRow {
    const head = this.q.runHead(runId);
    if (!head) throw notFound(runId);
    if (lease) {
      const current = this.q.lease(runId);
      if (lease.runId !== runId || current?.epoch !== lease.epoch || current.owner !== lease.owner) throw leaseLostError(lease);
    }
    return head;
  }

  // Runs

  createRun(run: NewRun): Promise<RunRecord> {
    return this.call(run.id, () => {
      // refused here rather than stored as a record that would not read back
      if (typeof run.name !== 'string' || run.name.length > 1024) {
        throw new CairnError('INVALID_INPUT', 'Run name must be a string of at most 1024 characters.', { runId: run.id });
      }
      checkStatus(run.status, run.id);
      const record = newRunRecord(run);
      const line = encodeRun(record, this.options);
      const stored = decodeRun(line, { runId: run.id });
      return this.write(() => {
        if (this.q.runHead(run.id)) throw alreadyExists(run.id);
        const leftovers = this.q.leftovers(run.id);
        if (hasLeftovers(leftovers)) throw leftoverRecordsError(run.id, leftovers);
        if (!this.q.insertRun(record, line)) throw alreadyExists(run.id);
        return stored;
      });
    });
  }

  getRun(runId: string): Promise<RunRecord | undefined> {
    return this.call(runId, () => {
      const row = this.q.runRow(runId);
      return row === undefined ? undefined : decodeRunRowOrRebuild(row, runRowWhere(row.id));
    });
  }

  updateRun(runId: string, expectedVersion: number, patch: RunPatch, options?: WriteOptions): Promise<RunRecord> {
    return this.call(runId, () =>
      this.write(() => {
        const head = this.guard(runId, options?.lease);
        const row = this.q.runRow(runId);
        if (!row) throw notFound(runId);
        const current = decodeRunRowOrRebuild(row, runRowWhere(runId)); // a damaged line: the header from the columns
        if (current.version !== expectedVersion) throw conflict(runId, current.version, expectedVersion);
        if (current.rebuilt?.dataLost && patch.data === undefined) throw summaryRequiredError(current);
        checkStatus(patch.status, runId);
        const next = nextRunRecord(current, patch);
        const line = encodeRun(next, this.options);
        const stored = decodeRun(line, { runId });
        // inside BEGIN IMMEDIATE nobody else can write; the version check is the compare-and-set all the same
        if (!this.q.updateRun(next, head.version, line)) throw conflict(runId, head.version, expectedVersion);
        return stored;
      }),
    );
  }

  listRuns(filter: RunFilter = {}): Promise<RunRecord[]> {
    return this.call(undefined, () => {
      // SQLite's clock is this machine's: olderThanMs becomes one more "updated before" bound
      const now = Date.now();
      const bounds = [filter.updatedBefore?.getTime(), filter.olderThanMs === undefined ? undefined : now - filter.olderThanMs + 1];
      const finite = bounds.filter((t): t is number => t !== undefined && Number.isFinite(t));
      const before = finite.length === 0 ? undefined : Math.max(0, Math.min(...finite)); // no run is older than 1970
      const query: RunQuery = {
        name: filter.name ?? null,
        statuses: filter.status === undefined ? null : JSON.stringify(typeof filter.status === 'string' ? [filter.status] : filter.status),
        updatedBefore: before !== undefined && Number.isFinite(before) && before <= MAX_ISO_TIME ? new Date(before).toISOString() : null,
      };
      const runs: RunRecord[] = [];
      for (const row of this.q.listRuns(query)) {
        let run: RunRecord;
        try {
          run = decodeRunRowOrRebuild(row, runRowWhere(row.id)); // a damaged line: the header from the columns
        } catch {
          continue; // nothing to read back (or a newer format): reported by validateRun
        }
        if (!matchesFilter(run, filter, now)) continue;
        runs.push(run);
        if (filter.limit !== undefined && runs.length >= filter.limit) break; // rows come newest first
      }
      return applyLimit(runs, filter);
    });
  }

  listRunIds(options: { readonly except?: ReadonlySet<string> } = {}): Promise<string[]> {
    return this.call(undefined, () => this.q.runIds().filter((id) => !options.except?.has(id)));
  }

  async deleteRun(runId: string): Promise<boolean> {
    const deleted = await this.call(runId, () =>
      this.write(() => {
        const run = this.q.deleteRun(runId); // its rows go with it (cascade)
        return this.q.deleteLeftovers(runId) > 0 || run; // rows left without a run row
      }),
    );
    if (deleted) await fs.rm(this.artifactDir(runId), { recursive: true, force: true });
    return deleted;
  }

  // Checkpoints

  appendCheckpoint(runId: string, input: CheckpointInput, options?: WriteOptions): Promise<CheckpointRef> {
    return this.call(runId, () => {
      const lease = options?.lease;
      const nextSeq = (): number => Math.max(this.guard(runId, lease).next_seq, this.q.maxSeq(runId) + 1);
      // Encode (serialize, maybe compress) before taking the write lock, with the seq it will most
      // likely get; re-encode inside only if another writer took that seq meanwhile.
      const at = nowIso();
      let encoded = encodeCheckpoint(runId, nextSeq(), at, input, this.options);
      this.checkRoom(encoded.line.length, runId);
      return this.write(() => {
        const seq = nextSeq();
        if (seq !== encoded.ref.seq) encoded = encodeCheckpoint(runId, seq, at, input, this.options);
        this.q.insertCheckpoint(runId, seq, at, encoded.ref.kind, encoded.line);
        this.q.setNextSeq(runId, seq + 1);
        return encoded.ref;
      });
    });
  }

  getCheckpoint(runId: string, seq: number): Promise<Checkpoint> {
    return this.call(runId, () => {
      checkSeq(seq, runId);
      const line = this.q.checkpointLine(runId, seq);
      if (line === undefined) throw new CairnError('NOT_FOUND', `Checkpoint ${seq} of run ${runId} not found.`, { runId, seq });
      return decodeCheckpointRow(line, runId, seq, true);
    });
  }

  listCheckpoints(runId: string): Promise<CheckpointEntry[]> {
    return this.call(runId, () => {
      const entries: CheckpointEntry[] = [];
      for (const { seq, line } of this.q.checkpointsAscending(runId)) entries.push(checkpointEntry(line, runId, seq));
      return entries;
    });
  }

  latestCheckpoint(runId: string, filter: { readonly kind?: string } = {}): Promise<Checkpoint | undefined> {
    return this.call(runId, () => {
      for (const { seq, line } of this.q.checkpointsDescending(runId)) {
        try {
          // with a kind filter, read the header first: the payload is decoded only for a match
          if (filter.kind !== undefined && decodeCheckpointRow(line, runId, seq, false).kind !== filter.kind) continue;
          return decodeCheckpointRow(line, runId, seq, true);
        } catch (error) {
          if ((error as CairnError).code !== 'CHECKPOINT_CORRUPT') throw error; // FORMAT_TOO_NEW: never silently older
        }
      }
      return undefined;
    });
  }

  deleteCheckpoints(runId: string, seqs: readonly number[]): Promise<number> {
    return this.call(runId, () =>
      this.write(() => {
        let count = 0;
        for (const seq of new Set(seqs)) if (Number.isSafeInteger(seq) && this.q.deleteCheckpoint(runId, seq)) count++;
        return count;
      }),
    );
  }

  // Item ledgers

  appendItems(runId: string, stage: string, entries: readonly ItemEntry[], options?: WriteOptions): Promise<void> {
    return this.call(runId, () => {
      assertName(stage, 'stage name');
      const lease = options?.lease;
      this.guard(runId, lease);
      const context = { runId, stage };
      const lines = entries.map((entry) => encodeItem(entry, this.options, context)); // all encoded before any is kept
      this.checkRoom(
        lines.reduce((sum, line) => sum + line.length, 0),
        runId,
      );
      this.write(() => {
        this.guard(runId, lease);
        this.q.insertItems(this.q.ensureLedger(runId, stage), lines);
      });
    });
  }

  async *readItems(runId: string, stage: string, options: { onProblem?: (problem: StoreProblem) => void } = {}): AsyncIterable<ItemEntry> {
    const ledger = await this.call(runId, () => {
      assertName(stage, 'stage name');
      return this.q.ledgerId(runId, stage);
    });
    if (ledger === undefined) return;
    yield* decodeLedger(ledgerPages(this.reader, ledger), runId, stage, options.onProblem);
  }

  listLedgers(runId: string): Promise<string[]> {
    return this.call(runId, () => this.q.ledgerNames(runId));
  }

  // Artifacts

  artifactDir(runId: string): string {
    assertRunId(runId);
    return resolveInside(this.artifactRoot, runId);
  }

  recordArtifacts(runId: string, entries: readonly ArtifactEntry[], options?: WriteOptions): Promise<void> {
    return this.call(runId, () => {
      const lease = options?.lease;
      this.guard(runId, lease);
      for (const entry of entries) checkArtifactEntry(entry, runId);
      const lines = entries.map((entry) => ({ path: entry.path, line: encodeArtifact(entry) }));
      this.write(() => {
        this.guard(runId, lease);
        for (const { path: artifactPath, line } of lines) this.q.replaceArtifact(runId, artifactPath, line);
      });
    });
  }

  listArtifacts(runId: string): Promise<ArtifactEntry[]> {
    return this.call(runId, () => manifestOf(this.q.artifactLines(runId), runId));
  }

  // Locks

  acquireLock(runId: string, options: LockOptions): Promise<Lease> {
    return this.call(runId, () => {
      if (typeof options.owner !== 'string') throw new CairnError('INVALID_INPUT', 'Lock owner must be a string.', { runId });
      const ttl = options.ttlMs ?? this.options.lockTtlMs;
      return this.write(() => {
        const head = this.guard(runId);
        const held = this.q.lease(runId);
        if (held && !isLeaseStale(held)) throw runLockedError(held);
        return this.takeLease(runId, head, options.owner, ttl);
      });
    });
  }

  /** Writes a new lease with the next epoch (inside a write transaction). */
  private takeLease(runId: string, head: RunHeadRow, owner: string, ttl: number): Lease {
    const now = Date.now();
    const lease: Lease = {
      runId,
      owner,
      epoch: head.last_epoch + 1,
      host: HOST,
      pid: process.pid,
      acquiredAt: new Date(now).toISOString(),
      expiresAt: new Date(now + ttl).toISOString(),
    };
    this.q.upsertLease(lease);
    this.q.setLastEpoch(runId, lease.epoch);
    return lease;
  }

  // Queue: claims happen inside one BEGIN IMMEDIATE transaction, so two processes never both take a run.

  private enqueue(runId: string): Promise<void> {
    return this.call(runId, () => {
      this.write(() => {
        if (!this.q.enqueue(runId, new Date().toISOString())) throw notFound(runId);
      });
    });
  }

  /** Queued runs a worker for `names` could take now, oldest first, with why (inside a transaction). */
  private *claimable(names: readonly string[] | undefined): Generator<{ run: RunRecord; reason: Claim['reason'] }> {
    for (const row of this.q.queued(names ? JSON.stringify(names) : null)) {
      const held = this.q.lease(row.id);
      if (held && !isLeaseStale(held)) continue;
      let run: RunRecord;
      try {
        run = decodeRun(row.line, { runId: row.id });
      } catch {
        continue; // a damaged run record is for validate, not for a worker
      }
      const reason = claimReason(run.status);
      if (reason) yield { run, reason };
    }
  }

  private claim(options: ClaimOptions): Promise<Claim | undefined> {
    return this.call(undefined, () => {
      if (typeof options.owner !== 'string') throw new CairnError('INVALID_INPUT', 'Lock owner must be a string.');
      const ttl = options.ttlMs ?? this.options.lockTtlMs;
      return this.write(() => {
        // the first one not excluded; the statement is finished (iterator closed) before the lease is written
        const exclude = new Set(options.exclude ?? []);
        const candidates = this.claimable(options.names);
        let first = candidates.next();
        while (!first.done && exclude.has(first.value.run.id)) first = candidates.next();
        candidates.return(undefined);
        if (first.done) return undefined;
        const { run, reason } = first.value;
        const lease = this.takeLease(run.id, this.guard(run.id), options.owner, ttl);
        return { run, lease, reason };
      });
    });
  }

  private pending(names?: readonly string[]): Promise<number> {
    return this.call(undefined, () => {
      let count = 0;
      for (const claimable of this.claimable(names)) if (claimable) count++;
      return count;
    });
  }

  renewLock(lease: Lease, options: { readonly ttlMs?: number } = {}): Promise<Lease> {
    return this.call(lease.runId, () => {
      const expiresAt = new Date(Date.now() + (options.ttlMs ?? this.options.lockTtlMs)).toISOString();
      return this.write(() => {
        this.guard(lease.runId);
        if (!this.q.renewLease(lease, expiresAt)) throw leaseLostError(lease);
        return this.q.lease(lease.runId) ?? { ...lease, expiresAt };
      });
    });
  }

  releaseLock(lease: Lease): Promise<void> {
    return this.call(lease.runId, () => this.q.deleteLease(lease));
  }

  getLock(runId: string): Promise<Lease | undefined> {
    return this.call(runId, () => {
      if (!this.q.runHead(runId)) return undefined; // a lease row left without its run guards nothing
      const lease = this.q.lease(runId);
      return lease && !isLeaseStale(lease) ? lease : undefined;
    });
  }

  // Validation, export, import

  validateRun(runId: string): Promise<StoreProblem[]> {
    return validateRunRecords(this.reader, this, runId);
  }

  exportRun(runId: string): AsyncIterable<ExportRecord> {
    return exportRunRecords(this.reader, runId);
  }

  async importRun(records: AsyncIterable<ExportRecord> | Iterable<ExportRecord>, options: ImportOptions = {}): Promise<RunRecord> {
    this.ensureOpen();
    const bundle = await readImport(records);
    await this.call(undefined, () => this.write(() => writeImport(this.q, bundle, options.overwrite === true)));
    return bundle.run;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.db.close();
    if (this.file === ':memory:') await fs.rm(this.artifactRoot, { recursive: true, force: true });
  }
}

function alreadyExists(runId: string): CairnError {
  return new CairnError('ALREADY_EXISTS', `Run ${runId} already exists.`, { runId });
}

function conflict(runId: string, version: number, expectedVersion: number): CairnError {
  return new CairnError(
    'CONFLICT',
    `Run ${runId} changed meanwhile (version ${version}, expected ${expectedVersion}). Reload it and try again.`,
    {
      runId,
      version,
      expectedVersion,
    },
  );
}

function checkStatus(status: unknown, runId: string): void {
  if (status !== undefined && !(RUN_STATUSES as readonly unknown[]).includes(status)) {
    throw new CairnError('INVALID_INPUT', `Unknown run status ${JSON.stringify(status)}.`, { runId });
  }
}

function seconds(ms: number): string {
  return `${(ms / 1000).toFixed(1)} s`;
}
