/**
 * `file:<dir>` — the zero-dependency default store: one folder per run, human-readable files, safe
 * under kill -9. Layout under the root:
 *
 *     <run-id>/run.json            the run record, one sealed line, replaced atomically
 *     <run-id>/checkpoints.jsonl   append-only checkpoint lines (deleted ones become tombstones)
 *     <run-id>/items/<stage>.jsonl append-only item ledgers, written in batches
 *     <run-id>/artifacts.jsonl     append-only artifact manifest (latest line per path wins)
 *     <run-id>/artifacts/          the run's artifact files
 *     <run-id>/lock.json           the run's lease
 *     <run-id>/.mutex              short critical sections across processes (kept across back-to-back
 *                                  checkpoint appends, see held-log.ts); `.mutex-want` while one waits
 *
 * Root entries starting with `.` are never runs (run ids cannot start with `.`): they hold trash
 * and import staging folders.
 */
import { randomUUID } from 'node:crypto';
import { accessSync, existsSync, statSync } from 'node:fs';
import type fs from 'node:fs/promises';
import { access, mkdir, readdir, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { CairnError } from '../../core/errors.js';
import { assertName, assertRunId, isValidRunId, resolveInside } from '../../core/ids.js';
import { checkArtifactEntry, decodeRun, encodeArtifact, encodeCheckpoint, encodeRun } from '../codec.js';
import {
  applyLimit,
  checkSeq,
  matchesFilter,
  notFound,
  newRunRecord,
  nowIso,
  readImport,
  resolveStoreOptions,
  type ResolvedStoreOptions,
  type StoreOptions,
} from '../common.js';
import type {
  ArtifactEntry,
  Checkpoint,
  CheckpointEntry,
  CheckpointInput,
  CheckpointRead,
  CheckpointRef,
  ExportRecord,
  ImportOptions,
  ItemEntry,
  Lease,
  LockOptions,
  NewRun,
  RunFilter,
  RunPatch,
  RunRecord,
  Store,
  StoreCapabilities,
  StoreProblem,
  WriteOptions,
} from '../store.js';
import { isMissing, replaceFileAtomically } from './atomic-write.js';
import {
  CHECKPOINTS_FILE,
  emptyIndex,
  findSlot,
  indexAppendedLine,
  listAndIndex,
  readCheckpointAt,
  refreshIndex,
  type CheckpointIndex,
} from './checkpoint-log.js';
import { rewriteWithTombstones } from './checkpoint-rewrite.js';
import { readSinceLatest } from './checkpoint-tail.js';
import {
  checkLeaseCurrent,
  checkLeaseCurrentSync,
  extendLease,
  extendLeaseSync,
  giveUpLease,
  giveUpLeaseSync,
  LOCK_FILE,
  readLiveLease,
  takeLease,
  takeLeaseSync,
} from './file-lease.js';
import { hasWaiterSync, KeyedQueue, releaseFileMutexSync, tryAcquireFileMutexSync, withFileMutex, yieldToWaiters } from './file-mutex.js';
import { HeldLogs } from './held-log.js';
import { createRunSync, mustExistSync, patchedRun, updateRunSync } from './run-record.js';
import { encodeBatch, ITEMS_DIR, LEDGER_SUFFIX, nextBatchId, readLedgerChunks } from './item-ledger.js';
import { appendDurably, openIfExists, tryAppendDurablySync } from './jsonl.js';
import { makeItemsDir, placeImportFolder, removeLeftovers, trashRunFolder } from './run-folders.js';
import {
  ARTIFACTS_FILE,
  decodeRunOf,
  exportRunFolder,
  listLedgerNames,
  readArtifactManifest,
  readRunLine,
  RUN_FILE,
  validateRunFolder,
  writeImportFolder,
  type RunFolder,
} from './run-transfer.js';

/** Checkpoint indexes kept in memory (each is a few numbers per checkpoint of a run). */
const MAX_CACHED_INDEXES = 1000;
export class FileStore implements Store {
  readonly kind = 'file';
  readonly url: string;
  readonly capabilities: StoreCapabilities = Object.freeze({
    durable: true,
    multiProcess: true,
    multiMachine: false,
    // lease checks run under the run's mutex, but a process that ignores the mutex is not fenced
    fencedWrites: false,
    localArtifacts: true,
    queue: false,
  });
  /** Operations on one run, one at a time within this instance (the file mutex orders processes). */
  private readonly perRun = new KeyedQueue();
  private readonly indexes = new Map<string, CheckpointIndex>();
  /** Checked run ids and their folders (every operation starts with one). */
  private readonly dirs = new Map<string, string>();
  /** Runs whose mutex this instance keeps across back-to-back checkpoint appends. */
  private readonly held = new HeldLogs();
  private closed = false;

  private constructor(
    /** The absolute root folder. */
    readonly root: string,
    private readonly options: ResolvedStoreOptions,
  ) {
    this.url = `file:${root}`;
  }

  /** Opens (creating if needed) the store folder `root`. */
  static async open(root: string, options: StoreOptions = {}): Promise<FileStore> {
    const resolved = resolveStoreOptions(options);
    const absolute = path.resolve(root);
    await mkdir(absolute, { recursive: true });
    await removeLeftovers(absolute);
    return new FileStore(absolute, resolved);
  }

  private ensureOpen(): void {
    if (this.closed) throw new CairnError('STORE_CLOSED', `Store ${this.url} is closed.`);
  }

  /** Checks the id, then returns the run's folder (never outside the root). */
  private runDir(runId: string): string {
    this.ensureOpen();
    let dir = this.dirs.get(runId);
    if (dir === undefined) {
      assertRunId(runId);
      dir = resolveInside(this.root, runId);
      if (this.dirs.size >= MAX_CACHED_INDEXES) this.dirs.clear();
      this.dirs.set(runId, dir);
    }
    return dir;
  }

  private folder(runId: string): RunFolder {
    const dir = this.runDir(runId);
    return { runId, dir, artifactDir: resolveInside(dir, 'artifacts') };
  }

  /** Runs `fn` queued in this instance and under the run's file mutex. */
  private serial<T>(runId: string, dir: string, fn: () => Promise<T>): Promise<T> {
    return this.perRun.run(runId, () => {
      this.held.release(runId);
      return withFileMutex(dir, runId, fn);
    });
  }

  private async loadRun(runId: string, dir: string): Promise<RunRecord | undefined> {
    const line = await readRunLine(dir);
    return line === undefined ? undefined : decodeRunOf(line, runId);
  }

  private async mustExist(runId: string, dir: string): Promise<void> {
    try {
      await access(path.join(dir, RUN_FILE));
    } catch (error) {
      if (isMissing(error)) throw notFound(runId);
      throw error;
    }
  }

  private async checkLease(dir: string, options: WriteOptions | undefined): Promise<void> {
    if (options?.lease) await checkLeaseCurrent(path.join(dir, LOCK_FILE), options.lease);
  }

  // Runs

  async createRun(run: NewRun): Promise<RunRecord> {
    const dir = this.runDir(run.id);
    const record = newRunRecord(run);
    const line = encodeRun(record, this.options); // INVALID_INPUT before anything is written
    const created = decodeRun(line, { runId: run.id });
    // a folder left without run.json by a crash during create counts as absent and is reused
    if (!createRunSync(this.root, dir, line)) {
      throw new CairnError('ALREADY_EXISTS', `Run ${run.id} already exists. Resume it, or choose another id.`, { runId: run.id });
    }
    return Promise.resolve(created);
  }

  async getRun(runId: string): Promise<RunRecord | undefined> {
    return this.loadRun(runId, this.runDir(runId));
  }

  async updateRun(runId: string, expectedVersion: number, patch: RunPatch, options?: WriteOptions): Promise<RunRecord> {
    const dir = this.runDir(runId);
    return this.perRun.run(runId, async () => {
      const fast = this.underMutexSync(runId, dir, () => updateRunSync(dir, runId, expectedVersion, patch, options, this.options));
      if (fast) return fast.value;
      this.held.release(runId);
      return withFileMutex(dir, runId, async () => {
        const current = await this.loadRun(runId, dir);
        if (!current) throw notFound(runId);
        await this.checkLease(dir, options);
        const { line, stored } = patchedRun(runId, current, expectedVersion, patch, this.options);
        await replaceFileAtomically(path.join(dir, RUN_FILE), `${line}\n`);
        return stored;
      });
    });
  }

  async listRuns(filter: RunFilter = {}): Promise<RunRecord[]> {
    this.ensureOpen();
    const names = (await readdir(this.root, { withFileTypes: true }))
      .filter((e) => e.isDirectory() && isValidRunId(e.name))
      .map((e) => e.name);
    const runs: RunRecord[] = [];
    for (let i = 0; i < names.length; i += 32) {
      const batch = await Promise.all(
        names.slice(i, i + 32).map(async (runId) => {
          try {
            return await this.loadRun(runId, resolveInside(this.root, runId));
          } catch {
            return undefined; // damaged run records are reported by validateRun, not listed
          }
        }),
      );
      for (const run of batch) if (run && matchesFilter(run, filter)) runs.push(run);
    }
    return applyLimit(runs, filter);
  }

  async listRunIds(): Promise<string[]> {
    this.ensureOpen();
    const names = (await readdir(this.root, { withFileTypes: true }))
      .filter((e) => e.isDirectory() && isValidRunId(e.name))
      .map((e) => e.name);
    // a folder without run.json (left by a crash during create) is no run
    const present = await Promise.all(
      names.map((name) =>
        access(path.join(this.root, name, RUN_FILE)).then(
          () => true,
          () => false,
        ),
      ),
    );
    return names.filter((_, i) => present[i]).sort();
  }

  async deleteRun(runId: string): Promise<boolean> {
    const dir = this.runDir(runId);
    return this.perRun.run(runId, async () => {
      this.held.release(runId);
      const existed = await trashRunFolder(this.root, runId, dir);
      this.indexes.delete(runId);
      return existed;
    });
  }

  // Checkpoints

  /**
   * Runs `fn` with the checkpoint log open (undefined if none) and its index up to date. An index of
   * only the log's tail (left by {@link checkpointsSinceLatest}) is rebuilt whole unless `isEnough`.
   */
  private async withCheckpointLog<T>(
    runId: string,
    dir: string,
    fn: (handle: fs.FileHandle | undefined, index: CheckpointIndex | undefined) => Promise<T>,
    isEnough: (index: CheckpointIndex) => boolean = () => false,
  ): Promise<T> {
    const handle = await openIfExists(path.join(dir, CHECKPOINTS_FILE));
    if (!handle) {
      this.indexes.delete(runId);
      return fn(undefined, undefined);
    }
    try {
      const cached = this.indexes.get(runId);
      this.indexes.delete(runId); // rebuilt from scratch next time if the refresh fails half-way
      let index = await refreshIndex(handle, cached);
      if (index.from > 0 && !isEnough(index)) index = await refreshIndex(handle, undefined);
      this.cacheIndex(runId, index);
      return await fn(handle, index);
    } finally {
      await handle.close();
    }
  }

  /** Keeps a run's index, least recently used first, at most {@link MAX_CACHED_INDEXES} of them. */
  private cacheIndex(runId: string, index: CheckpointIndex): void {
    this.indexes.delete(runId);
    this.indexes.set(runId, index);
    if (this.indexes.size > MAX_CACHED_INDEXES) this.indexes.delete(this.indexes.keys().next().value ?? runId);
  }

  async appendCheckpoint(runId: string, input: CheckpointInput, options?: WriteOptions): Promise<CheckpointRef> {
    const dir = this.runDir(runId);
    // one queue slot for both paths, so appends of this instance keep their call order
    return this.perRun.run(runId, async () => {
      // the usual case (this instance indexed the log, the mutex is free or held) is done in one synchronous step
      const cached = this.indexes.get(runId);
      if (cached) {
        let fast: CheckpointRef | undefined;
        try {
          fast = this.held.tryAppend(runId, dir, cached, options, (seq) => encodeCheckpoint(runId, seq, nowIso(), input, this.options));
        } catch (error) {
          this.indexes.delete(runId); // the log may end with a torn line: rescan before the next append
          throw error;
        }
        if (fast) return fast;
      } else {
        // a new run's first checkpoint, when the mutex is free: the log is created with synchronous calls
        const created = this.underMutexSync(runId, dir, () => this.tryCreateLogSync(runId, dir, input, options));
        if (created?.value) return created.value;
      }
      this.held.release(runId);
      await yieldToWaiters(dir);
      return withFileMutex(dir, runId, async () => {
        await this.mustExist(runId, dir);
        await this.checkLease(dir, options);
        let index: CheckpointIndex | undefined;
        const seq = await this.withCheckpointLog(
          runId,
          dir,
          (_handle, current) => {
            index = current;
            return Promise.resolve((current?.maxSeq ?? 0) + 1);
          },
          () => true, // the tail is enough: seqs grow along the log
        );
        const { line, ref } = encodeCheckpoint(runId, seq, nowIso(), input, this.options);
        const text = `${line}\n`;
        const file = path.join(dir, CHECKPOINTS_FILE);
        await appendDurably(file, text); // the mutex is held: repair directly
        // the new line starts where the index ends (a torn tail was cut back to it): keep the cached index current
        if (index) indexAppendedLine(index, seq, text);
        else if (seq === 1) {
          // the log was just created with this line: index it, so that the next append takes the fast path
          const info = await stat(file);
          const created: CheckpointIndex = { ...emptyIndex(), dev: info.dev, ino: info.ino };
          indexAppendedLine(created, seq, text);
          if (info.size === created.size) this.cacheIndex(runId, created);
        }
        return ref;
      });
    });
  }

  /**
   * Appends checkpoint 1 to a run that has no log yet, creating it (the caller holds the run's
   * mutex), and indexes it. Undefined, having written nothing, when the log exists.
   */
  private tryCreateLogSync(
    runId: string,
    dir: string,
    input: CheckpointInput,
    options: WriteOptions | undefined,
  ): CheckpointRef | undefined {
    const file = path.join(dir, CHECKPOINTS_FILE);
    if (existsSync(file)) return undefined;
    mustExistSync(runId, dir);
    if (options?.lease) checkLeaseCurrentSync(path.join(dir, LOCK_FILE), options.lease);
    const { line, ref } = encodeCheckpoint(runId, 1, nowIso(), input, this.options);
    const text = `${line}\n`;
    if (!tryAppendDurablySync(file, text)) return undefined;
    const info = statSync(file);
    const index: CheckpointIndex = { ...emptyIndex(), dev: info.dev, ino: info.ino };
    indexAppendedLine(index, 1, text);
    if (info.size === index.size) this.cacheIndex(runId, index);
    return ref;
  }

  async getCheckpoint(runId: string, seq: number): Promise<Checkpoint> {
    checkSeq(seq, runId);
    const dir = this.runDir(runId);
    return this.perRun.run(runId, () =>
      this.withCheckpointLog(
        runId,
        dir,
        async (handle, index) => {
          const slot = index && findSlot(index, seq);
          if (!handle || !slot) throw new CairnError('NOT_FOUND', `Checkpoint ${seq} of run ${runId} not found.`, { runId, seq });
          return readCheckpointAt(handle, slot, runId, seq);
        },
        (index) => findSlot(index, seq) !== undefined,
      ),
    );
  }

  async checkpointsSinceLatest(runId: string, filter: { readonly kind: string }): Promise<CheckpointRead[] | undefined> {
    const dir = this.runDir(runId);
    return this.perRun.run(runId, async () => {
      const handle = await openIfExists(path.join(dir, CHECKPOINTS_FILE));
      if (!handle) return undefined;
      try {
        // read backwards from the end: the records wanted and (about) nothing before them
        const { records, index } = await readSinceLatest(handle, runId, filter.kind);
        // an index of the tail lets appends go on without scanning the rest; a whole one is kept
        if (index && !(this.indexes.get(runId)?.from === 0)) this.cacheIndex(runId, index);
        return records;
      } finally {
        await handle.close();
      }
    });
  }

  async listCheckpoints(runId: string): Promise<CheckpointEntry[]> {
    const dir = this.runDir(runId);
    return this.perRun.run(runId, async () => {
      const handle = await openIfExists(path.join(dir, CHECKPOINTS_FILE));
      if (!handle) return [];
      try {
        // the pass that lists also indexes: reads that follow (a resume) need not scan the file again
        const { entries, index } = await listAndIndex(handle, runId);
        this.cacheIndex(runId, index);
        return entries;
      } finally {
        await handle.close();
      }
    });
  }

  async latestCheckpoint(runId: string, filter: { readonly kind?: string } = {}): Promise<Checkpoint | undefined> {
    const dir = this.runDir(runId);
    return this.perRun.run(runId, () =>
      this.withCheckpointLog(runId, dir, async (handle, index) => {
        if (!handle || !index) return undefined;
        for (let i = index.slots.length - 1; i >= 0; i--) {
          const slot = index.slots[i];
          if (!slot || slot.tombstone || slot.seq === undefined) continue;
          try {
            const cp = await readCheckpointAt(handle, slot, runId, slot.seq);
            if (filter.kind === undefined || cp.kind === filter.kind) return cp;
          } catch (error) {
            if ((error as CairnError).code !== 'CHECKPOINT_CORRUPT') throw error; // FORMAT_TOO_NEW: never silently older
          }
        }
        return undefined;
      }),
    );
  }

  async deleteCheckpoints(runId: string, seqs: readonly number[]): Promise<number> {
    const dir = this.runDir(runId);
    return this.perRun.run(runId, async () => {
      this.held.release(runId);
      if ((await readRunLine(dir)) === undefined) return 0;
      return withFileMutex(dir, runId, () =>
        this.withCheckpointLog(runId, dir, async (handle, index) => {
          if (!handle || !index) return 0;
          const count = await rewriteWithTombstones(path.join(dir, CHECKPOINTS_FILE), handle, index, runId, seqs);
          if (count > 0) this.indexes.delete(runId);
          return count;
        }),
      );
    });
  }

  // Item ledgers

  private ledgerFile(runId: string, stage: string): string {
    assertName(stage, 'stage name');
    return resolveInside(this.root, runId, ITEMS_DIR, `${stage}${LEDGER_SUFFIX}`);
  }

  /**
   * Appends one batch: one write, one fdatasync. Not under the run's mutex (this is the hot path,
   * and one run has one writer, its lease holder). Every append checks that the file ends with
   * `\n` (fstat + a 1-byte read); the mutex is taken only to cut a torn tail left by a crash.
   * With a lease, lock.json is read on every call (a small file replaced atomically) — a cheap check
   * that notices a takeover at once, best effort as `fencedWrites: false` says.
   */
  async appendItems(runId: string, stage: string, entries: readonly ItemEntry[], options?: WriteOptions): Promise<void> {
    const dir = this.runDir(runId);
    const file = this.ledgerFile(runId, stage);
    const text = entries.length === 0 ? '' : encodeBatch(entries, this.options, runId, stage, nextBatchId()); // all encoded before any is written
    // queued per ledger: batches of one stage land in call order, other stages do not wait
    return this.perRun.run(`${runId}/${ITEMS_DIR}/${stage}`, async () => {
      // the usual case, the ledger exists and ends cleanly, is checked and written in one synchronous
      // step: no thread-pool round trips while the stage's workers wait for room
      if (text.length > 0 && this.tryAppendItemsSync(runId, dir, file, text, options)) return;
      await this.mustExist(runId, dir);
      await this.checkLease(dir, options);
      if (text.length === 0) return;
      await makeItemsDir(runId, dir);
      try {
        await appendDurably(file, text, (repair) => {
          this.held.release(runId);
          return withFileMutex(dir, runId, repair);
        });
      } catch (error) {
        if (isMissing(error)) throw notFound(runId);
        throw error;
      }
    });
  }

  /** Checks the run and the lease, then appends with {@link tryAppendDurablySync}; false when the async path must do it. */
  private tryAppendItemsSync(runId: string, dir: string, file: string, text: string, options: WriteOptions | undefined): boolean {
    try {
      accessSync(path.join(dir, RUN_FILE));
    } catch (error) {
      if (isMissing(error)) throw notFound(runId);
      throw error;
    }
    if (options?.lease) checkLeaseCurrentSync(path.join(dir, LOCK_FILE), options.lease);
    try {
      return tryAppendDurablySync(file, text);
    } catch (error) {
      if (isMissing(error)) return false; // no items folder yet: the async path makes it
      throw error;
    }
  }

  async *readItems(runId: string, stage: string, options: { onProblem?: (problem: StoreProblem) => void } = {}): AsyncIterable<ItemEntry> {
    this.runDir(runId);
    const handle = await openIfExists(this.ledgerFile(runId, stage));
    if (!handle) return;
    try {
      for await (const chunk of readLedgerChunks(handle, runId, stage, options.onProblem)) {
        for (const { entry } of chunk) yield entry;
      }
    } finally {
      await handle.close();
    }
  }

  async listLedgers(runId: string): Promise<string[]> {
    return listLedgerNames(this.runDir(runId));
  }

  // Artifacts

  artifactDir(runId: string): string {
    return this.folder(runId).artifactDir;
  }

  async recordArtifacts(runId: string, entries: readonly ArtifactEntry[], options?: WriteOptions): Promise<void> {
    const dir = this.runDir(runId);
    for (const entry of entries) checkArtifactEntry(entry, runId);
    const text = entries.map((entry) => `${encodeArtifact(entry)}\n`).join('');
    return this.serial(runId, dir, async () => {
      await this.mustExist(runId, dir);
      await this.checkLease(dir, options);
      if (text.length > 0) await appendDurably(path.join(dir, ARTIFACTS_FILE), text);
    });
  }

  async listArtifacts(runId: string): Promise<ArtifactEntry[]> {
    return readArtifactManifest(this.folder(runId));
  }

  // Locks

  async acquireLock(runId: string, options: LockOptions): Promise<Lease> {
    const dir = this.runDir(runId);
    const file = path.join(dir, LOCK_FILE);
    const ttlMs = options.ttlMs ?? this.options.lockTtlMs;
    return this.leaseChange(
      runId,
      dir,
      () => {
        mustExistSync(runId, dir);
        return takeLeaseSync(file, runId, options.owner, ttlMs);
      },
      async () => {
        await this.mustExist(runId, dir);
        return takeLease(file, runId, options.owner, ttlMs);
      },
    );
  }

  async renewLock(lease: Lease, options: { readonly ttlMs?: number } = {}): Promise<Lease> {
    const dir = this.runDir(lease.runId);
    const file = path.join(dir, LOCK_FILE);
    const ttlMs = options.ttlMs ?? this.options.lockTtlMs;
    return this.leaseChange(
      lease.runId,
      dir,
      () => {
        mustExistSync(lease.runId, dir);
        return extendLeaseSync(file, lease, ttlMs);
      },
      async () => {
        await this.mustExist(lease.runId, dir);
        return extendLease(file, lease, ttlMs);
      },
    );
  }

  async releaseLock(lease: Lease): Promise<void> {
    const dir = this.runDir(lease.runId);
    const file = path.join(dir, LOCK_FILE);
    try {
      await this.leaseChange(
        lease.runId,
        dir,
        () => giveUpLeaseSync(file, lease),
        () => giveUpLease(file, lease),
      );
    } catch (error) {
      if ((error as CairnError).code !== 'NOT_FOUND') throw error; // the run is gone: nothing to release
    }
  }

  /** A change of lock.json under the run's mutex: with synchronous calls when it can be had at once. */
  private leaseChange<T>(runId: string, dir: string, sync: () => T, async: () => Promise<T>): Promise<T> {
    return this.perRun.run(runId, async () => {
      this.held.release(runId); // held appends verified the lease this changes
      const fast = this.underMutexSync(runId, dir, sync);
      return fast ? fast.value : withFileMutex(dir, runId, async);
    });
  }

  /**
   * Runs `fn` under the run's mutex with synchronous calls when the mutex can be had right now: held
   * by this instance (and kept), or free (taken and given back). Undefined, having run nothing, when
   * another process holds it or waits for it: the caller then takes the async path, which waits.
   */
  private underMutexSync<T>(runId: string, dir: string, fn: () => T): { value: T } | undefined {
    if (hasWaiterSync(dir)) {
      this.held.release(runId);
      return undefined;
    }
    if (this.held.isFresh(runId)) return { value: fn() };
    this.held.release(runId);
    const token = tryAcquireFileMutexSync(dir, runId);
    if (token === undefined) return undefined;
    try {
      return { value: fn() };
    } finally {
      releaseFileMutexSync(dir, token);
    }
  }

  async getLock(runId: string): Promise<Lease | undefined> {
    const dir = this.runDir(runId);
    return readLiveLease(path.join(dir, LOCK_FILE));
  }

  // Validation, export, import

  async validateRun(runId: string): Promise<StoreProblem[]> {
    return validateRunFolder(this.folder(runId));
  }

  async *exportRun(runId: string): AsyncIterable<ExportRecord> {
    const folder = this.folder(runId);
    const line = await readRunLine(folder.dir);
    if (line === undefined) throw notFound(runId);
    decodeRunOf(line, runId);
    yield { type: 'run', line };
    yield* exportRunFolder(folder);
  }

  async importRun(records: AsyncIterable<ExportRecord> | Iterable<ExportRecord>, options: ImportOptions = {}): Promise<RunRecord> {
    this.ensureOpen();
    const bundle = await readImport(records);
    const runId = bundle.run.id;
    const dir = this.runDir(runId);
    const staging = resolveInside(this.root, `.import-${randomUUID()}`);
    await mkdir(staging);
    try {
      await writeImportFolder(staging, bundle);
      await this.perRun.run(runId, async () => {
        this.held.release(runId);
        this.indexes.delete(runId);
        await placeImportFolder(this.root, runId, dir, staging, options.overwrite === true);
      });
    } catch (error) {
      await rm(staging, { recursive: true, force: true });
      throw error;
    }
    return bundle.run;
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.perRun.drain();
    this.held.releaseAll();
    this.indexes.clear();
  }
}
