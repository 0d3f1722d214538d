/**
 * `memory:` and `memory:<name>` — an in-process store for tests. It keeps the same sealed lines as
 * the durable stores (so checksums, formats and limits behave identically); `memory:<name>` shares
 * one space between every store opened with that name in this process.
 */
import { randomUUID } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { CairnError } from '../../core/errors.js';
import { assertName, assertRunId, resolveInside } from '../../core/ids.js';
import {
  checkArtifactEntry,
  corrupt,
  damageReason,
  decodeArtifact,
  decodeCheckpoint,
  decodeRun,
  encodeArtifact,
  encodeCheckpoint,
  encodeItem,
  encodeRun,
  decodeLedger,
  manifestOf,
  unreadableRunError,
} from '../codec.js';
import {
  applyLimit,
  checkArtifactFiles,
  checkSeq,
  HOST,
  claimReason,
  hasLeftovers,
  isLeaseStale,
  leaseLostError,
  leftoverProblem,
  leftoverRecordsError,
  matchesFilter,
  newRunRecord,
  nextRunRecord,
  notFound,
  nowIso,
  problemCollector,
  readImport,
  resolveStoreOptions,
  runLockedError,
  type LeftoverCounts,
  type ResolvedStoreOptions,
  type StoreOptions,
} from '../common.js';
import type {
  ArtifactEntry,
  Checkpoint,
  CheckpointEntry,
  CheckpointInput,
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
  Claim,
  ClaimOptions,
  RunQueue,
} from '../store.js';
import { MemoryLimits } from './memory-limits.js';

/** What one run holds: sealed lines only, exactly like the durable stores. */
export interface MemoryRunData {
  /** Undefined only after damage (the run record removed by hand): the rest is then leftovers. */
  runLine?: string;
  /** seq → line; deleted seqs are removed, `nextSeq` never goes back. */
  checkpoints: Map<number, string>;
  nextSeq: number;
  ledgers: Map<string, string[]>;
  artifacts: string[];
  lease?: Lease;
  lastEpoch: number;
  /** Position in the work queue (submission order), when the run was submitted for workers. */
  queuedAt?: number;
}

export type MemorySpace = Map<string, MemoryRunData>;

/** A run's data with its run record present. */
type LiveRunData = MemoryRunData & { runLine: string };

const namedSpaces = new Map<string, MemorySpace>();

export class MemoryStore implements Store {
  readonly kind = 'memory';
  readonly url: string;
  readonly capabilities: StoreCapabilities = Object.freeze({
    durable: false,
    multiProcess: false,
    multiMachine: false,
    fencedWrites: true,
    localArtifacts: true,
    queue: true,
  });
  /** Workers in this process share runs through it (tests and single-process worker pools). */
  readonly queue: RunQueue = {
    enqueue: (runId) => this.enqueue(runId),
    claim: (options) => this.claim(options),
    pending: (names) => this.pending(names),
  };
  /** Rate limits, shared by the stores opened on the same `memory:<name>` (a private store's are its own). */
  readonly limits: MemoryLimits;
  private queueClock = 0;
  /** The raw data, for tests that damage records on purpose. */
  readonly space: MemorySpace;
  private readonly options: ResolvedStoreOptions;
  private readonly artifactRoot: string;
  private closed = false;

  constructor(name?: string, options: StoreOptions = {}) {
    this.options = resolveStoreOptions(options);
    if (name) {
      assertName(name, 'memory store name');
      let space = namedSpaces.get(name);
      if (!space) namedSpaces.set(name, (space = new Map<string, MemoryRunData>()));
      this.space = space;
      this.url = `memory:${name}`;
      this.artifactRoot = path.join(os.tmpdir(), `cairn-memory-${process.pid}-${name}`);
      this.limits = MemoryLimits.named(name);
    } else {
      this.space = new Map();
      this.limits = new MemoryLimits();
      this.url = 'memory:';
      this.artifactRoot = path.join(os.tmpdir(), `cairn-memory-${process.pid}-${randomUUID()}`);
    }
  }

  private open(): void {
    if (this.closed) throw new CairnError('STORE_CLOSED', `Store ${this.url} is closed.`);
  }

  /** What is stored under `runId`; reads see leftovers (no run record) as the database stores do. */
  private data(runId: string): MemoryRunData | undefined {
    this.open();
    assertRunId(runId);
    return this.space.get(runId);
  }

  /** The run, with its run record; writes need one (`NOT_FOUND`). */
  private mustData(runId: string): LiveRunData {
    const data = this.data(runId);
    if (data?.runLine === undefined) throw notFound(runId);
    return data as LiveRunData;
  }

  private checkLease(data: MemoryRunData, options?: WriteOptions): void {
    const lease = options?.lease;
    if (lease && (data.lastEpoch !== lease.epoch || data.lease?.owner !== lease.owner)) throw leaseLostError(lease);
  }

  createRun(run: NewRun): Promise<RunRecord> {
    return Promise.resolve().then(() => {
      const existing = this.data(run.id);
      if (existing?.runLine !== undefined) throw new CairnError('ALREADY_EXISTS', `Run ${run.id} already exists.`, { runId: run.id });
      if (existing && hasLeftovers(leftoversOf(existing))) throw leftoverRecordsError(run.id, leftoversOf(existing));
      const record = newRunRecord(run);
      const runLine = encodeRun(record, this.options);
      // an entry left with nothing in it still keeps its epoch: epochs only grow
      const lastEpoch = existing?.lastEpoch ?? 0;
      this.space.set(run.id, { runLine, checkpoints: new Map(), nextSeq: 1, ledgers: new Map(), artifacts: [], lastEpoch });
      return decodeRun(runLine);
    });
  }

  /** Decodes a run's record; one record per run, so a damaged one has nothing earlier to be read back from. */
  private decodeRunLine(runLine: string, runId: string): RunRecord {
    try {
      return decodeRun(runLine, { runId });
    } catch (error) {
      if ((error as CairnError).code !== 'CHECKPOINT_CORRUPT') throw error;
      throw unreadableRunError(runId, `the run record in ${this.url}`, damageReason(error), error);
    }
  }

  getRun(runId: string): Promise<RunRecord | undefined> {
    return Promise.resolve().then(() => {
      const runLine = this.data(runId)?.runLine;
      return runLine === undefined ? undefined : this.decodeRunLine(runLine, runId);
    });
  }

  updateRun(runId: string, expectedVersion: number, patch: RunPatch, options?: WriteOptions): Promise<RunRecord> {
    return Promise.resolve().then(() => {
      const data = this.mustData(runId);
      this.checkLease(data, options);
      const current = this.decodeRunLine(data.runLine, runId);
      if (current.version !== expectedVersion) {
        throw new CairnError(
          'CONFLICT',
          `Run ${runId} changed meanwhile (version ${current.version}, expected ${expectedVersion}). Reload it and try again.`,
          {
            runId,
            version: current.version,
            expectedVersion,
          },
        );
      }
      const next = nextRunRecord(current, patch);
      data.runLine = encodeRun(next, this.options);
      return decodeRun(data.runLine);
    });
  }

  listRuns(filter: RunFilter = {}): Promise<RunRecord[]> {
    return Promise.resolve().then(() => {
      this.open();
      const runs: RunRecord[] = [];
      for (const [runId, data] of this.space) {
        if (data.runLine === undefined) continue; // leftovers are for validate and cleanup
        try {
          const run = decodeRun(data.runLine, { runId });
          if (matchesFilter(run, filter)) runs.push(run);
        } catch {
          // damaged run records are reported by validateRun, not listed
        }
      }
      return applyLimit(runs, filter);
    });
  }

  listRunIds(options: { readonly except?: ReadonlySet<string> } = {}): Promise<string[]> {
    return Promise.resolve().then(() => {
      this.open();
      const ids: string[] = [];
      for (const [runId, data] of this.space)
        if (!options.except?.has(runId) && (data.runLine !== undefined || hasLeftovers(leftoversOf(data)))) ids.push(runId);
      return ids.sort();
    });
  }

  async deleteRun(runId: string): Promise<boolean> {
    const data = this.data(runId);
    if (!data) return false;
    this.space.delete(runId);
    if (data.runLine === undefined && !hasLeftovers(leftoversOf(data))) return false;
    await fs.rm(this.artifactDir(runId), { recursive: true, force: true });
    return true;
  }

  appendCheckpoint(runId: string, input: CheckpointInput, options?: WriteOptions): Promise<CheckpointRef> {
    return Promise.resolve().then(() => {
      const data = this.mustData(runId);
      this.checkLease(data, options);
      const { line, ref } = encodeCheckpoint(runId, data.nextSeq, nowIso(), input, this.options);
      data.checkpoints.set(data.nextSeq, line);
      data.nextSeq += 1;
      return ref;
    });
  }

  getCheckpoint(runId: string, seq: number): Promise<Checkpoint> {
    return Promise.resolve().then(() => {
      checkSeq(seq, runId);
      const line = this.data(runId)?.checkpoints.get(seq);
      if (line === undefined) throw new CairnError('NOT_FOUND', `Checkpoint ${seq} of run ${runId} not found.`, { runId, seq });
      const cp = decodeCheckpoint(line, { runId, seq }, true);
      if (cp.seq !== seq || cp.runId !== runId) throw corrupt(`Checkpoint ${seq} of run ${runId} holds another record.`, { runId, seq });
      return cp;
    });
  }

  listCheckpoints(runId: string): Promise<CheckpointEntry[]> {
    return Promise.resolve().then(() => {
      const data = this.data(runId);
      if (!data) return [];
      return [...data.checkpoints.entries()].sort((a, b) => a[0] - b[0]).map(([seq, line]) => entryOf(line, runId, seq));
    });
  }

  async latestCheckpoint(runId: string, filter: { readonly kind?: string } = {}): Promise<Checkpoint | undefined> {
    const data = this.data(runId);
    if (!data) return undefined;
    const seqs = [...data.checkpoints.keys()].sort((a, b) => b - a);
    for (const seq of seqs) {
      try {
        const cp = await this.getCheckpoint(runId, seq);
        if (filter.kind === undefined || cp.kind === filter.kind) return cp;
      } catch (error) {
        if ((error as CairnError).code !== 'CHECKPOINT_CORRUPT') throw error;
      }
    }
    return undefined;
  }

  deleteCheckpoints(runId: string, seqs: readonly number[]): Promise<number> {
    return Promise.resolve().then(() => {
      const data = this.data(runId);
      if (!data) return 0;
      let count = 0;
      for (const seq of seqs) if (data.checkpoints.delete(seq)) count++;
      return count;
    });
  }

  appendItems(runId: string, stage: string, entries: readonly ItemEntry[], options?: WriteOptions): Promise<void> {
    return Promise.resolve().then(() => {
      assertName(stage, 'stage name');
      const data = this.mustData(runId);
      this.checkLease(data, options);
      const lines = entries.map((entry) => encodeItem(entry, this.options, { runId, stage })); // all encoded before any is kept
      const ledger = data.ledgers.get(stage);
      if (ledger) ledger.push(...lines);
      else data.ledgers.set(stage, lines);
    });
  }

  async *readItems(runId: string, stage: string, options: { onProblem?: (problem: StoreProblem) => void } = {}): AsyncIterable<ItemEntry> {
    assertName(stage, 'stage name');
    yield* decodeLedger([this.data(runId)?.ledgers.get(stage) ?? []], runId, stage, options.onProblem);
  }

  listLedgers(runId: string): Promise<string[]> {
    return Promise.resolve([...(this.data(runId)?.ledgers.keys() ?? [])].sort());
  }

  artifactDir(runId: string): string {
    assertRunId(runId);
    return resolveInside(this.artifactRoot, runId);
  }

  recordArtifacts(runId: string, entries: readonly ArtifactEntry[], options?: WriteOptions): Promise<void> {
    return Promise.resolve().then(() => {
      const data = this.mustData(runId);
      this.checkLease(data, options);
      for (const entry of entries) checkArtifactEntry(entry, runId);
      data.artifacts.push(...entries.map(encodeArtifact));
    });
  }

  listArtifacts(runId: string): Promise<ArtifactEntry[]> {
    return Promise.resolve().then(() => manifestOf(this.data(runId)?.artifacts ?? [], runId));
  }

  acquireLock(runId: string, options: LockOptions): Promise<Lease> {
    return Promise.resolve().then(() => {
      const data = this.mustData(runId);
      if (data.lease && !isLeaseStale(data.lease)) throw runLockedError(data.lease);
      return this.takeLease(runId, data, options);
    });
  }

  private takeLease(runId: string, data: LiveRunData, options: LockOptions): Lease {
    const now = Date.now();
    const ttl = options.ttlMs ?? this.options.lockTtlMs;
    data.lastEpoch += 1;
    data.lease = {
      runId,
      owner: options.owner,
      epoch: data.lastEpoch,
      host: HOST,
      pid: process.pid,
      acquiredAt: new Date(now).toISOString(),
      expiresAt: new Date(now + ttl).toISOString(),
    };
    return data.lease;
  }

  private enqueue(runId: string): Promise<void> {
    return Promise.resolve().then(() => {
      const data = this.mustData(runId);
      data.queuedAt ??= ++this.queueClock;
    });
  }

  /** Queued runs a worker for `names` could take now, oldest first, with why. */
  private claimable(names?: readonly string[]): { runId: string; data: LiveRunData; run: RunRecord; reason: Claim['reason'] }[] {
    this.open();
    const found = [];
    for (const [runId, data] of this.space) {
      if (data.runLine === undefined || data.queuedAt === undefined || (data.lease && !isLeaseStale(data.lease))) continue;
      let run: RunRecord;
      try {
        run = decodeRun(data.runLine, { runId });
      } catch {
        continue; // a damaged run record is for validate, not for a worker
      }
      const reason = claimReason(run.status);
      if (reason && (!names || names.includes(run.name))) found.push({ runId, data: data as LiveRunData, run, reason });
    }
    return found.sort((a, b) => a.data.queuedAt! - b.data.queuedAt!);
  }

  private claim(options: ClaimOptions): Promise<Claim | undefined> {
    return Promise.resolve().then(() => {
      const exclude = new Set(options.exclude ?? []);
      const first = this.claimable(options.names).find((c) => !exclude.has(c.runId));
      if (!first) return undefined;
      const lease = this.takeLease(first.runId, first.data, options);
      return { run: first.run, lease, reason: first.reason };
    });
  }

  private pending(names?: readonly string[]): Promise<number> {
    return Promise.resolve().then(() => this.claimable(names).length);
  }

  renewLock(lease: Lease, options: { readonly ttlMs?: number } = {}): Promise<Lease> {
    return Promise.resolve().then(() => {
      const data = this.mustData(lease.runId);
      if (!data.lease || data.lease.epoch !== lease.epoch || data.lease.owner !== lease.owner) throw leaseLostError(lease);
      data.lease = { ...data.lease, expiresAt: new Date(Date.now() + (options.ttlMs ?? this.options.lockTtlMs)).toISOString() };
      return data.lease;
    });
  }

  releaseLock(lease: Lease): Promise<void> {
    return Promise.resolve().then(() => {
      const data = this.data(lease.runId);
      if (data?.lease && data.lease.epoch === lease.epoch && data.lease.owner === lease.owner) delete data.lease;
    });
  }

  getLock(runId: string): Promise<Lease | undefined> {
    return Promise.resolve().then(() => {
      const data = this.data(runId);
      const lease = data?.runLine === undefined ? undefined : data.lease; // no run, no lock: a leftover lease guards nothing
      return lease && !isLeaseStale(lease) ? lease : undefined;
    });
  }

  async validateRun(runId: string): Promise<StoreProblem[]> {
    const data = this.data(runId);
    if (data?.runLine === undefined) {
      if (data && hasLeftovers(leftoversOf(data))) return [leftoverProblem(runId, leftoversOf(data))];
      return [{ code: 'NOT_FOUND', runId, where: 'run', message: `Run ${runId} not found.` }];
    }
    const { runLine } = data;
    const problems: StoreProblem[] = [];
    const check = problemCollector(runId, problems);
    check('run', undefined, () => this.decodeRunLine(runLine, runId));
    for (const [seq, line] of data.checkpoints) check('checkpoints', seq, () => decodeCheckpoint(line, { runId, seq }, true));
    for (const stage of data.ledgers.keys()) {
      for await (const entry of this.readItems(runId, stage, { onProblem: (p) => problems.push(p) })) void entry;
    }
    data.artifacts.forEach((line, i) => check('artifacts', i + 1, () => decodeArtifact(line, { runId })));
    problems.push(...(await checkArtifactFiles(runId, this.artifactDir(runId), await this.listArtifacts(runId))));
    return problems;
  }

  async *exportRun(runId: string): AsyncIterable<ExportRecord> {
    const data = this.data(runId);
    if (data?.runLine === undefined) throw notFound(runId);
    this.decodeRunLine(data.runLine, runId);
    yield { type: 'run', line: data.runLine };
    for (const [, line] of [...data.checkpoints.entries()].sort((a, b) => a[0] - b[0])) yield { type: 'checkpoint', line };
    for (const [stage, lines] of data.ledgers) yield { type: 'items', stage, lines: [...lines] };
    for (const line of data.artifacts) yield { type: 'artifact', line };
  }

  async importRun(records: AsyncIterable<ExportRecord> | Iterable<ExportRecord>, options: ImportOptions = {}): Promise<RunRecord> {
    this.open();
    const bundle = await readImport(records);
    const runId = bundle.run.id;
    const existing = this.space.get(runId);
    if (existing?.runLine !== undefined && !options.overwrite) {
      throw new CairnError('ALREADY_EXISTS', `Run ${runId} already exists; pass overwrite to replace it.`, { runId });
    }
    if (existing && hasLeftovers(leftoversOf(existing)) && !options.overwrite) throw leftoverRecordsError(runId, leftoversOf(existing));
    const last = bundle.checkpoints.at(-1)?.seq ?? 0;
    const previousEpoch = this.space.get(runId)?.lastEpoch ?? 0; // epochs keep growing across an overwrite
    this.space.set(runId, {
      runLine: bundle.runLine,
      checkpoints: new Map(bundle.checkpoints.map((c) => [c.seq, c.line])),
      nextSeq: last + 1,
      ledgers: bundle.ledgers,
      artifacts: bundle.artifacts,
      lastEpoch: previousEpoch,
    });
    return bundle.run;
  }

  async close(): Promise<void> {
    this.closed = true;
    // a private store's runs end with it, and so do their artifact files; a named space outlives
    // this instance (other instances in the process may still use it)
    if (this.url === 'memory:') await fs.rm(this.artifactRoot, { recursive: true, force: true });
  }
}

/** What a run's data holds besides its run record (a released lease leaves nothing). */
function leftoversOf(data: MemoryRunData): LeftoverCounts {
  let items = 0;
  for (const lines of data.ledgers.values()) items += lines.length;
  return {
    checkpoints: data.checkpoints.size,
    ledgers: data.ledgers.size,
    items,
    artifacts: data.artifacts.length,
    leases: data.lease ? 1 : 0,
  };
}

/** Decodes a stored checkpoint line into a listing entry. */
export function entryOf(line: string, runId: string, seq: number): CheckpointEntry {
  try {
    const ref = decodeCheckpoint(line, { runId, seq }, false);
    if (ref.seq !== seq) return { valid: false, seq, reason: `record claims seq ${ref.seq}`, code: 'CHECKPOINT_CORRUPT' };
    return { valid: true, ref };
  } catch (error) {
    const e = error as CairnError;
    return { valid: false, seq, reason: e.message, code: e.code === 'FORMAT_TOO_NEW' ? 'FORMAT_TOO_NEW' : 'CHECKPOINT_CORRUPT' };
  }
}
