/**
 * `file:<dir>` — the zero-dependency default store: one folder per run, human-readable JSON Lines,
 * safe under kill -9 and fenced by construction. Layout under the root:
 *
 *     <run-id>/lease/<epoch>.json     the run's lease (see file-lease.ts)
 *     <run-id>/seg-<epoch>/…          log segments, each written by one lease holder (see segments.ts)
 *     <run-id>/artifacts/             the run's artifact files
 *     <run-id>/cancel-request.json    a cancel asked of the attempt with that epoch (the only file
 *                                     a process that does not hold the run writes)
 *     .limits/<name>/                 rate limits shared by the processes of this machine (see file-limits.ts)
 *
 * Every write is done by the run's lease holder through its {@link RunWriter}: with a lease given
 * by the caller, or, for a write without one (the low-level API, the CLI), with a short lease this
 * instance takes for the call and gives back after it. Root entries starting with `.` are never
 * runs (run ids cannot start with `.`): they hold run folders being created, trash and imports.
 */
import fs from 'node:fs';
import path from 'node:path';
import { CairnError, isCairnError } from '../../core/errors.js';
import { assertName, assertRunId, isValidRunId } from '../../core/ids.js';
import { checkArtifactEntry, decodeRun, encodeArtifact, encodeCheckpoint, encodeRun, manifestOf } from '../codec.js';
import {
  applyLimit,
  checkSeq,
  leftoverRecordsError,
  matchesFilter,
  newRunRecord,
  notFound,
  nowIso,
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
import {
  deletedSeqs,
  encodeTombstone,
  findSlot,
  lastSeq,
  listEntries,
  OpenLogs,
  readCheckpointAt,
  readSinceLatest,
  refreshIndex,
  type CheckpointIndex,
} from './checkpoint-log.js';
import { isCancelRequested, isLive, readCurrentLease, toLease, writeCancelRequest } from './file-lease.js';
import { FileLimits } from './file-limits.js';
import { encodeBatch, nextBatchId, readLedgerChunks } from './item-ledger.js';
import {
  chainLedgers,
  chainTextLines,
  countLeftovers,
  exportChain,
  importRunFolder,
  removeLeftovers,
  stagingName,
  trashRunFolder,
  validateChain,
} from './run-transfer.js';
import { readRunRecord } from './run-record.js';
import { RunWriter } from './run-writer.js';
import { RunWriters } from './run-writers.js';
import { fileSystemError } from '../transient.js';
import { checkDirs, errnoOf, forgetCheckedDirs, listDir, makeDirs, openForRead, syncDir } from './safe-fs.js';
import {
  ARTIFACTS_FILE,
  CHECKPOINTS_FILE,
  hasAnything,
  ledgerPath,
  limitOf,
  resolveChain,
  writeFirstSegment,
  type Segment,
} from './segments.js';

/** Checkpoint indexes kept in memory (each is a few numbers per checkpoint of a run). */
const MAX_CACHED_INDEXES = 1000;

export class FileStore implements Store {
  readonly kind = 'file';
  readonly url: string;
  readonly capabilities: StoreCapabilities = Object.freeze({
    durable: true,
    multiProcess: true,
    multiMachine: false,
    fencedWrites: true,
    localArtifacts: true,
    queue: false,
  });
  /** Rate limits, shared by the processes of this machine using the root (`<root>/.limits/`, see file-limits.ts). */
  readonly limits: FileLimits;
  /** The writers of the runs whose lease this instance holds, and the queue of operations per run. */
  private readonly writers: RunWriters;
  private readonly indexes = new Map<string, CheckpointIndex>();
  private closed = false;

  private constructor(
    /** The absolute root folder (links in its own path resolved once, at open). */
    readonly root: string,
    private readonly options: ResolvedStoreOptions,
  ) {
    this.url = `file:${root}`;
    this.writers = new RunWriters(root, options, () => this.ensureOpen());
    this.limits = new FileLimits(root, () => this.ensureOpen());
  }

  /** Opens (creating if needed) the store folder `root`. */
  static async open(root: string, options: StoreOptions = {}): Promise<FileStore> {
    const resolved = resolveStoreOptions(options);
    const absolute = path.resolve(root);
    try {
      makeDirs(absolute);
    } catch (error) {
      throw badRoot(absolute, error);
    }
    let real: string;
    try {
      real = await fs.promises.realpath(absolute);
      if (!(await fs.promises.stat(real)).isDirectory()) throw Object.assign(new Error('not a folder'), { code: 'ENOTDIR' });
    } catch (error) {
      throw badRoot(absolute, error);
    }
    await removeLeftovers(real);
    return new FileStore(real, resolved);
  }

  private ensureOpen(): void {
    if (this.closed) throw new CairnError('STORE_CLOSED', `Store ${this.url} is closed.`);
  }

  /** Checks the id, then returns the run's folder (never outside the root). */
  private runDir(runId: string): string {
    this.ensureOpen();
    assertRunId(runId);
    return path.join(this.root, runId);
  }

  private chainOf(runId: string): Segment[] | undefined {
    return resolveChain(this.root, this.runDir(runId), runId);
  }

  // Runs

  async createRun(run: NewRun): Promise<RunRecord> {
    const dir = this.runDir(run.id);
    const line = encodeRun(newRunRecord(run), this.options); // INVALID_INPUT before anything is written
    const created = decodeRun(line, { runId: run.id });
    const staging = stagingName(this.root, 'new');
    try {
      fs.mkdirSync(staging);
      try {
        writeFirstSegment(staging, run.id, line);
        syncDir(staging);
        this.placeRunFolder(run.id, dir, staging);
      } finally {
        fs.rmSync(staging, { recursive: true, force: true });
      }
    } catch (error) {
      throw fileSystemError(error, this.root, { runId: run.id }); // a full disk: STORE_FULL, the staging folder gone
    }
    return Promise.resolve(created);
  }

  /** Renames a complete run folder into place: `ALREADY_EXISTS` over a run, `LEFTOVER_RECORDS` over leftovers. */
  private placeRunFolder(runId: string, dir: string, staging: string): void {
    try {
      fs.renameSync(staging, dir); // atomic; over an empty folder too, never over one that holds anything
    } catch (error) {
      forgetCheckedDirs();
      const code = errnoOf(error);
      if (code !== 'ENOTEMPTY' && code !== 'EEXIST' && code !== 'ENOTDIR') throw error;
      if (code === 'ENOTDIR' || fs.lstatSync(dir).isSymbolicLink()) checkDirs(this.root, dir);
      if (this.chainOf(runId))
        throw new CairnError('ALREADY_EXISTS', `Run ${runId} already exists. Resume it, or choose another id.`, { runId });
      throw leftoverRecordsError(runId, countLeftovers(this.root, dir));
    }
    syncDir(this.root);
  }

  async getRun(runId: string): Promise<RunRecord | undefined> {
    const read = readRunRecord(this.root, this.chainOf(runId) ?? [], runId);
    if (!read) return Promise.resolve(undefined);
    const run = read.record;
    return Promise.resolve(isCancelRequested(this.root, this.runDir(runId), runId) ? { ...run, cancelRequested: true } : run);
  }

  async requestCancel(runId: string): Promise<void> {
    if (!this.chainOf(runId)) throw notFound(runId);
    try {
      writeCancelRequest(this.root, this.runDir(runId), runId);
    } catch (error) {
      throw fileSystemError(error, this.runDir(runId), { runId });
    }
    return Promise.resolve();
  }

  async updateRun(runId: string, expectedVersion: number, patch: RunPatch, options?: WriteOptions): Promise<RunRecord> {
    return this.writers.write(runId, this.runDir(runId), options, (writer) => writer.updateRun(expectedVersion, patch));
  }

  private runFolderNames(): string[] {
    this.ensureOpen();
    return listDir(this.root)
      .filter((e) => e.isDirectory() && isValidRunId(e.name))
      .map((e) => e.name);
  }

  async listRuns(filter: RunFilter = {}): Promise<RunRecord[]> {
    const runs: RunRecord[] = [];
    for (const runId of this.runFolderNames()) {
      let run: RunRecord | undefined;
      try {
        run = await this.getRun(runId);
      } catch {
        continue; // a run record nothing intact is left of: reported by validateRun (and listed by listRunIds)
      }
      if (run && matchesFilter(run, filter)) runs.push(run);
    }
    return applyLimit(runs, filter);
  }

  async listRunIds(options: { readonly except?: ReadonlySet<string> } = {}): Promise<string[]> {
    // a folder that holds anything is listed: a run, or leftovers that validate reports and cleanup removes
    return Promise.resolve(
      this.runFolderNames()
        .filter((name) => !options.except?.has(name) && hasAnything(path.join(this.root, name)))
        .sort(),
    );
  }

  async deleteRun(runId: string): Promise<boolean> {
    const dir = this.runDir(runId);
    return this.writers.queue(runId, async () => {
      this.writers.drop(runId);
      this.indexes.delete(runId);
      return trashRunFolder(this.root, dir);
    });
  }

  // Checkpoints

  /** Runs `read` with the run's checkpoint logs open and their index up to date. */
  private withIndex<T>(runId: string, read: (logs: OpenLogs, index: CheckpointIndex | undefined, chain: Segment[] | undefined) => T): T {
    const chain = this.chainOf(runId);
    if (!chain) {
      this.indexes.delete(runId);
      return read(new OpenLogs(this.root, []), undefined, undefined);
    }
    const logs = OpenLogs.of(this.root, chain);
    try {
      const cached = this.indexes.get(runId);
      this.indexes.delete(runId); // rebuilt from scratch next time if the refresh fails half-way
      const index = refreshIndex(logs, chain, cached);
      this.indexes.set(runId, index);
      if (this.indexes.size > MAX_CACHED_INDEXES) this.indexes.delete(this.indexes.keys().next().value ?? runId);
      return read(logs, index, chain);
    } finally {
      logs.close();
    }
  }

  async appendCheckpoint(runId: string, input: CheckpointInput, options?: WriteOptions): Promise<CheckpointRef> {
    return this.writers.write(runId, this.runDir(runId), options, (writer) => {
      if (writer.nextSeq === undefined) {
        const logs = OpenLogs.of(this.root, this.chainOf(runId) ?? []);
        try {
          writer.nextSeq = lastSeq(logs) + 1;
        } finally {
          logs.close();
        }
      }
      const seq = writer.nextSeq;
      const { line, ref } = encodeCheckpoint(runId, seq, nowIso(), input, this.options);
      writer.append(CHECKPOINTS_FILE, `${line}\n`);
      writer.nextSeq = seq + 1;
      return ref;
    });
  }

  async getCheckpoint(runId: string, seq: number): Promise<Checkpoint> {
    checkSeq(seq, runId);
    return this.withIndex(runId, (logs, index) => {
      const slot = index && findSlot(index, seq);
      if (!slot) throw new CairnError('NOT_FOUND', `Checkpoint ${seq} of run ${runId} not found.`, { runId, seq });
      return readCheckpointAt(logs, slot, runId, seq);
    });
  }

  async checkpointsSinceLatest(runId: string, filter: { readonly kind: string }): Promise<CheckpointRead[] | undefined> {
    const chain = this.chainOf(runId);
    if (!chain) return undefined;
    const logs = OpenLogs.of(this.root, chain);
    try {
      return readSinceLatest(logs, runId, filter.kind);
    } finally {
      logs.close();
    }
  }

  async listCheckpoints(runId: string): Promise<CheckpointEntry[]> {
    return this.withIndex(runId, (logs, index) => (index ? listEntries(logs, index, runId) : []));
  }

  async latestCheckpoint(runId: string, filter: { readonly kind?: string } = {}): Promise<Checkpoint | undefined> {
    return this.withIndex(runId, (logs, index) => {
      if (!index) return undefined;
      const deleted = deletedSeqs(index);
      for (let i = index.slots.length - 1; i >= 0; i--) {
        const slot = index.slots[i];
        if (!slot || slot.tombstone || slot.seq === undefined || deleted.has(slot.seq)) continue;
        try {
          const cp = readCheckpointAt(logs, slot, runId, slot.seq);
          if (filter.kind === undefined || cp.kind === filter.kind) return cp;
        } catch (error) {
          if ((error as CairnError).code !== 'CHECKPOINT_CORRUPT') throw error; // FORMAT_TOO_NEW: never silently older
        }
      }
      return undefined;
    });
  }

  async deleteCheckpoints(runId: string, seqs: readonly number[]): Promise<number> {
    if (!this.chainOf(runId)) return 0;
    const wanted = new Set(seqs.filter((seq) => Number.isSafeInteger(seq) && seq > 0));
    if (wanted.size === 0) return 0;
    return this.writers.write(runId, this.runDir(runId), undefined, (writer) => {
      const live = this.withIndex(runId, (_logs, index) => [...wanted].filter((seq) => index && findSlot(index, seq)));
      if (live.length === 0) return 0;
      writer.append(CHECKPOINTS_FILE, live.map((seq) => `${encodeTombstone(runId, seq)}\n`).join(''));
      return live.length;
    });
  }

  // Item ledgers

  /** Appends one batch: one write, one fdatasync, by the run's writer. */
  async appendItems(runId: string, stage: string, entries: readonly ItemEntry[], options?: WriteOptions): Promise<void> {
    assertName(stage, 'stage name');
    const bytes = entries.length === 0 ? undefined : encodeBatch(entries, this.options, runId, stage, nextBatchId()); // all encoded before any is written
    return this.writers.write(runId, this.runDir(runId), options, (writer) => {
      if (bytes) writer.append(ledgerPath(stage), bytes);
      else writer.checkCurrent();
    });
  }

  async *readItems(runId: string, stage: string, options: { onProblem?: (problem: StoreProblem) => void } = {}): AsyncIterable<ItemEntry> {
    for await (const chunk of this.readItemChunks(runId, stage, options)) yield* chunk;
  }

  async *readItemChunks(
    runId: string,
    stage: string,
    options: { onProblem?: (problem: StoreProblem) => void } = {},
  ): AsyncIterable<readonly ItemEntry[]> {
    assertName(stage, 'stage name');
    const chain = this.chainOf(runId) ?? [];
    const rel = ledgerPath(stage);
    const parts: { fd: number; limit: number }[] = [];
    try {
      for (const segment of chain) {
        const fd = openForRead(this.root, path.join(segment.dir, rel));
        if (fd !== undefined) parts.push({ fd, limit: limitOf(segment, rel) });
      }
      for (const chunk of readLedgerChunks(parts, runId, stage, options.onProblem)) {
        yield chunk.map((line) => line.entry); // a turn for others between chunks of a big ledger
      }
    } finally {
      for (const { fd } of parts) fs.closeSync(fd);
    }
  }

  async listLedgers(runId: string): Promise<string[]> {
    return Promise.resolve(chainLedgers(this.chainOf(runId) ?? [], true));
  }

  // Artifacts

  artifactDir(runId: string): string {
    const dir = this.runDir(runId);
    checkDirs(this.root, dir); // UNSAFE_PATH when the run folder is a link: no artifact is made or read through it
    return path.join(dir, 'artifacts');
  }

  async recordArtifacts(runId: string, entries: readonly ArtifactEntry[], options?: WriteOptions): Promise<void> {
    for (const entry of entries) checkArtifactEntry(entry, runId);
    const text = entries.map((entry) => `${encodeArtifact(entry)}\n`).join('');
    return this.writers.write(runId, this.runDir(runId), options, (writer) => {
      if (text.length > 0) writer.append(ARTIFACTS_FILE, text);
    });
  }

  async listArtifacts(runId: string): Promise<ArtifactEntry[]> {
    return Promise.resolve(manifestOf(chainTextLines(this.root, this.chainOf(runId) ?? [], ARTIFACTS_FILE), runId));
  }

  // Locks

  async acquireLock(runId: string, options: LockOptions): Promise<Lease> {
    const dir = this.runDir(runId);
    const ttlMs = options.ttlMs ?? this.options.lockTtlMs;
    return this.writers.queue(runId, () => {
      this.ensureOpen();
      return Promise.resolve(this.writers.acquire(runId, dir, options.owner, ttlMs));
    });
  }

  async renewLock(lease: Lease, options: { readonly ttlMs?: number } = {}): Promise<Lease> {
    const ttlMs = options.ttlMs ?? this.options.lockTtlMs;
    return this.writers.write(lease.runId, this.runDir(lease.runId), { lease }, (writer) => writer.renew(ttlMs));
  }

  async releaseLock(lease: Lease): Promise<void> {
    const dir = this.runDir(lease.runId);
    return this.writers.queue(lease.runId, () => {
      if (this.writers.release(lease)) return Promise.resolve();
      // a lease taken by another instance of this process: give it back as not clean (its writes are not known here)
      try {
        RunWriter.attach(this.root, dir, lease, this.options).release();
      } catch (error) {
        if (!isCairnError(error, 'LEASE_LOST') && !isCairnError(error, 'NOT_FOUND')) throw error;
      }
      return Promise.resolve();
    });
  }

  async getLock(runId: string): Promise<Lease | undefined> {
    if (!this.chainOf(runId)) return undefined; // leftovers of a run are guarded by no lease
    const stored = readCurrentLease(this.root, this.runDir(runId), runId);
    return Promise.resolve(stored && isLive(stored) ? toLease(stored) : undefined);
  }

  // Validation, export, import

  async validateRun(runId: string): Promise<StoreProblem[]> {
    const dir = this.runDir(runId);
    try {
      return await validateChain(this.root, runId, dir, this.chainOf(runId), this.artifactDir(runId));
    } catch (error) {
      // a link where a file or folder of the run should be: reported like damage, so that
      // validate --all goes on to the other runs and cleanup --invalid can remove it
      if (!isCairnError(error, 'UNSAFE_PATH')) throw error;
      return [{ code: 'UNSAFE_PATH', runId, where: 'run', message: error.message }];
    }
  }

  async *exportRun(runId: string): AsyncIterable<ExportRecord> {
    const chain = this.chainOf(runId);
    // a damaged record in force is exported as it was read back: its newest intact line (validateRun names the damage)
    const read = chain && readRunRecord(this.root, chain, runId);
    if (!chain || !read) throw notFound(runId);
    yield { type: 'run', line: read.line };
    yield* exportChain(this.root, runId, chain, this.options);
  }

  async importRun(records: AsyncIterable<ExportRecord> | Iterable<ExportRecord>, options: ImportOptions = {}): Promise<RunRecord> {
    this.ensureOpen();
    return importRunFolder(this.root, records, options.overwrite === true, (runId, place) =>
      this.writers.queue(runId, () => {
        this.writers.drop(runId);
        this.indexes.delete(runId);
        return place(this.runDir(runId), (staging) => this.placeRunFolder(runId, this.runDir(runId), staging));
      }),
    );
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.writers.close();
    this.indexes.clear();
  }
}

function badRoot(root: string, error: unknown): CairnError {
  const code = errnoOf(error);
  const why =
    code === 'EEXIST' || code === 'ENOTDIR'
      ? 'it (or a folder on its path) is not a folder'
      : code === 'ENAMETOOLONG'
        ? 'the path is too long'
        : code === 'ENOENT'
          ? 'no folder can be created there'
          : code === 'EACCES' || code === 'EPERM'
            ? 'permission denied'
            : ((error as Error).message ?? String(error));
  return new CairnError('INVALID_STORE_URL', `Cannot use ${root} as a file store: ${why}.`, { path: root }, { cause: error });
}
