/** Pieces every store shares: filters, lease liveness, import verification, options. */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CairnError } from '../core/errors.js';
import { assertName, assertRunId, resolveInside } from '../core/ids.js';
import { checkFolders, hashFd, openRegularFile, type OpenedFile } from '../core/no-follow.js';
import { DEFAULT_LIMITS, type PayloadLimits } from '../core/record.js';
import { decodeArtifact, decodeCheckpoint, decodeItem, decodeRun } from './codec.js';
import type {
  ArtifactEntry,
  Claim,
  ExportRecord,
  Lease,
  NewRun,
  RunFilter,
  RunPatch,
  RunRecord,
  RunStatus,
  StoreProblem,
} from './store.js';

/** Options every store accepts. */
export interface StoreOptions extends Partial<PayloadLimits> {
  /** Default lease length for {@link Store.acquireLock}. @defaultValue 30_000 */
  readonly lockTtlMs?: number;
  /**
   * How long an operation that failed for a passing reason is tried again, with backoff, before it
   * fails: on SQLite, another process holding the write lock (then `STORE_BUSY`); on Postgres, a
   * lost connection, a killed backend, a server restarting (then `STORE_UNAVAILABLE`). Waiting
   * never blocks the event loop for more than a moment. @defaultValue 30_000
   */
  readonly transientRetryMs?: number;
}

export interface ResolvedStoreOptions extends PayloadLimits {
  readonly lockTtlMs: number;
  readonly transientRetryMs: number;
}

export function resolveStoreOptions(options: StoreOptions = {}): ResolvedStoreOptions {
  const resolved = {
    maxPayloadBytes: options.maxPayloadBytes ?? DEFAULT_LIMITS.maxPayloadBytes,
    compressAboveBytes: options.compressAboveBytes ?? DEFAULT_LIMITS.compressAboveBytes,
    lockTtlMs: options.lockTtlMs ?? 30_000,
    transientRetryMs: options.transientRetryMs ?? 30_000,
  };
  if (!(resolved.maxPayloadBytes > 0)) throw new CairnError('INVALID_INPUT', 'maxPayloadBytes must be positive.');
  if (!(resolved.lockTtlMs > 0)) throw new CairnError('INVALID_INPUT', 'lockTtlMs must be positive.');
  if (!(resolved.transientRetryMs >= 0)) throw new CairnError('INVALID_INPUT', 'transientRetryMs must be at least 0.');
  return Object.freeze(resolved);
}

export const nowIso = (): string => new Date().toISOString();

export const HOST = os.hostname();

/** True when `run` passes `filter`; `olderThanMs` is measured against `now` (this process's clock). */
export function matchesFilter(run: RunRecord, filter: RunFilter, now = Date.now()): boolean {
  if (filter.status !== undefined) {
    const statuses: readonly string[] = typeof filter.status === 'string' ? [filter.status] : filter.status;
    if (!statuses.includes(run.status)) return false;
  }
  if (filter.name !== undefined && run.name !== filter.name) return false;
  if (filter.updatedBefore !== undefined && !(Date.parse(run.updatedAt) < filter.updatedBefore.getTime())) return false;
  if (filter.olderThanMs !== undefined && !(now - Date.parse(run.updatedAt) >= filter.olderThanMs)) return false;
  return true;
}

/** Orders and limits filtered runs as {@link RunFilter.limit} documents. */
export function applyLimit(runs: RunRecord[], filter: RunFilter): RunRecord[] {
  if (filter.limit === undefined) return runs.sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.id.localeCompare(b.id));
  return runs.sort((a, b) => b.updatedAt.localeCompare(a.updatedAt) || a.id.localeCompare(b.id)).slice(0, Math.max(0, filter.limit));
}

/** True if `pid` is a live process on this machine (EPERM means alive but not ours). */
export function isProcessAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Why a queued run whose lease is free or stale may be claimed by a worker, or undefined when no
 * worker continues a run in this status (`completed`, `failed`, `cancelled`, `waiting`).
 */
export function claimReason(status: RunStatus): Claim['reason'] | undefined {
  switch (status) {
    case 'pending':
      return 'queued';
    case 'interrupted':
      return 'handed-back';
    case 'running':
      return 'stranded';
    default:
      return undefined;
  }
}

/** A lease is stale when it expired, or its holder was a process on this host that is gone. */
export function isLeaseStale(lease: Lease, now = Date.now()): boolean {
  if (Date.parse(lease.expiresAt) <= now) return true;
  return lease.host === HOST && !isProcessAlive(lease.pid);
}

export function runLockedError(lease: Lease): CairnError {
  return new CairnError(
    'RUN_LOCKED',
    `Run ${lease.runId} is held by ${lease.owner} (pid ${lease.pid} on ${lease.host}) until ${lease.expiresAt}. ` +
      'Wait for it to finish, or stop that process; a lock left by a dead process is taken over automatically.',
    { runId: lease.runId, owner: lease.owner, pid: lease.pid, host: lease.host, expiresAt: lease.expiresAt, epoch: lease.epoch },
  );
}

export function leaseLostError(lease: Lease): CairnError {
  return new CairnError(
    'LEASE_LOST',
    `Lease on run ${lease.runId} (epoch ${lease.epoch}) was lost: another process took the run over. This process must stop working on it.`,
    {
      runId: lease.runId,
      epoch: lease.epoch,
    },
  );
}

export function notFound(runId: string, what = 'Run'): CairnError {
  return new CairnError('NOT_FOUND', `${what} ${runId} not found.`, { runId });
}

export function checkSeq(seq: number, runId: string): void {
  if (!Number.isSafeInteger(seq) || seq < 1)
    throw new CairnError('INVALID_INPUT', `Checkpoint seq must be a positive integer, got ${String(seq)}.`, { runId });
}

/** A verified import: every line checked, grouped for writing. */
export interface ImportBundle {
  run: RunRecord;
  runLine: string;
  checkpoints: { seq: number; line: string }[];
  ledgers: Map<string, string[]>;
  artifacts: string[];
}

function invalidImport(message: string, cause?: unknown): CairnError {
  return new CairnError(
    'IMPORT_INVALID',
    `Import refused: ${message}. Nothing was written.`,
    {},
    cause === undefined ? undefined : { cause },
  );
}

/** Reads and verifies every record of an import before anything is written. */
export async function readImport(records: AsyncIterable<ExportRecord> | Iterable<ExportRecord>): Promise<ImportBundle> {
  let bundle: ImportBundle | undefined;
  const seqs = new Set<number>();
  for await (const record of records as AsyncIterable<ExportRecord>) {
    if (typeof record !== 'object' || record === null) throw invalidImport('a record is not an object');
    try {
      if (record.type === 'run') {
        if (bundle) throw invalidImport('more than one run record');
        const run = decodeRun(record.line);
        bundle = { run, runLine: record.line, checkpoints: [], ledgers: new Map(), artifacts: [] };
        continue;
      }
      if (!bundle) throw invalidImport('the first record must be the run');
      const runId = bundle.run.id;
      if (record.type === 'checkpoint') {
        const ref = decodeCheckpoint(record.line, { runId }, true);
        if (ref.runId !== runId) throw invalidImport(`checkpoint ${ref.seq} belongs to run ${ref.runId}`);
        if (seqs.has(ref.seq)) throw invalidImport(`checkpoint ${ref.seq} appears twice`);
        seqs.add(ref.seq);
        bundle.checkpoints.push({ seq: ref.seq, line: record.line });
      } else if (record.type === 'items') {
        assertName(record.stage, 'stage name');
        const lines: unknown = record.lines;
        if (!Array.isArray(lines)) throw invalidImport('items record without lines');
        const list = bundle.ledgers.get(record.stage) ?? [];
        for (const line of lines as unknown[]) {
          if (typeof line !== 'string') throw invalidImport(`a line of ledger ${record.stage} is not text`);
          decodeItem(line, { runId, stage: record.stage });
          list.push(line);
        }
        bundle.ledgers.set(record.stage, list);
      } else if (record.type === 'artifact') {
        decodeArtifact(record.line, { runId });
        bundle.artifacts.push(record.line);
      } else {
        throw invalidImport(`unknown record type ${JSON.stringify((record as { type?: unknown }).type)}`);
      }
    } catch (error) {
      if ((error as CairnError).code === 'IMPORT_INVALID') throw error;
      throw invalidImport((error as Error).message, error);
    }
  }
  if (!bundle) throw invalidImport('no run record');
  assertRunId(bundle.run.id);
  bundle.checkpoints.sort((a, b) => a.seq - b.seq);
  return bundle;
}

/**
 * Checks each manifest entry's file under `dir`: present, a regular file, same size, same sha256.
 * Nothing is followed: a link or anything but a regular file where the artifact was counts as a
 * mismatch (naming the path), and a folder on the way that is a link or not a folder (`dir`
 * itself included) is refused with `UNSAFE_PATH`.
 */
export async function checkArtifactFiles(runId: string, dir: string, entries: readonly ArtifactEntry[]): Promise<StoreProblem[]> {
  const problems: StoreProblem[] = [];
  for (const entry of entries) {
    const file = resolveInside(dir, ...entry.path.split('/'));
    const where = `artifact:${entry.path}`;
    const mismatch = (message: string): void => {
      problems.push({ code: 'ARTIFACT_MISMATCH', runId, where, message: `Artifact ${entry.path} of run ${runId} ${message}` });
    };
    const opened: OpenedFile = checkFolders(dir, path.dirname(file)) ? openRegularFile(file) : { problem: 'missing' };
    if (opened.fd === undefined) {
      if (opened.problem === 'missing') mismatch(`is missing (${file}).`);
      else mismatch(`is ${opened.problem} at ${file}, not the regular file that was recorded (cairn never follows links in a store).`);
      continue;
    }
    if (opened.size !== entry.size) {
      fs.closeSync(opened.fd);
      mismatch(`has ${opened.size} bytes, ${entry.size} were recorded.`);
      continue;
    }
    if ((await hashFd(opened.fd)) !== entry.sha256) mismatch('changed since it was recorded (sha256 differs).');
  }
  return problems;
}

/**
 * What is left of a run whose run record is gone (removed by hand, or by a tool that bypassed the
 * store): rows or entries that a new run with that id must never adopt.
 */
export interface LeftoverCounts {
  readonly checkpoints: number;
  readonly ledgers: number;
  /** Entries in those ledgers. */
  readonly items: number;
  /** Artifact manifest entries. */
  readonly artifacts: number;
  /** Lease records (held or released). */
  readonly leases: number;
}

export function hasLeftovers(counts: LeftoverCounts): boolean {
  return counts.checkpoints + counts.ledgers + counts.items + counts.artifacts + counts.leases > 0;
}

const plural = (n: number, one: string, many = `${one}s`): string => `${n} ${n === 1 ? one : many}`;

/** `42 checkpoints, 3 item ledgers (1200 items), 1 artifact entry, 1 lease`: only the kinds left. */
export function describeLeftovers(counts: LeftoverCounts): string {
  const parts: string[] = [];
  if (counts.checkpoints > 0) parts.push(plural(counts.checkpoints, 'checkpoint'));
  if (counts.ledgers > 0) parts.push(`${plural(counts.ledgers, 'item ledger')} (${plural(counts.items, 'item')})`);
  else if (counts.items > 0) parts.push(plural(counts.items, 'item'));
  if (counts.artifacts > 0) parts.push(plural(counts.artifacts, 'artifact entry', 'artifact entries'));
  if (counts.leases > 0) parts.push(plural(counts.leases, 'lease'));
  return parts.join(', ');
}

function leftoverMessage(runId: string, counts: LeftoverCounts): string {
  return `Run ${runId} has no run record, but records of an earlier run with that id are left: ${describeLeftovers(counts)}.`;
}

/** `LEFTOVER_RECORDS`: createRun (or import) of an id whose earlier run left records behind. */
export function leftoverRecordsError(runId: string, counts: LeftoverCounts): CairnError {
  return new CairnError(
    'LEFTOVER_RECORDS',
    `${leftoverMessage(runId, counts)} A new run never adopts them, so nothing was written. ` +
      `Remove them with \`cairn delete ${runId}\` (or \`cairn cleanup --invalid\` for every such id), then start the run again.`,
    { runId, leftovers: { ...counts } },
  );
}

/** The one problem validateRun reports for an id that has leftover records and no run record. */
export function leftoverProblem(runId: string, counts: LeftoverCounts): StoreProblem {
  return {
    code: 'LEFTOVER_RECORDS',
    runId,
    where: 'run',
    message: `${leftoverMessage(runId, counts)} \`cairn delete ${runId}\` or \`cairn cleanup --invalid\` removes them.`,
  };
}

/** The record of a run about to be created: version 1, `pending` unless given, stamped now. */
export function newRunRecord(run: NewRun): RunRecord {
  const at = nowIso();
  return { id: run.id, name: run.name, status: run.status ?? 'pending', version: 1, createdAt: at, updatedAt: at, data: run.data ?? null };
}

/**
 * For validateRun: returns `check(where, position, fn)`, which runs `fn` and turns a decode error
 * into a {@link StoreProblem} pushed onto `problems`. The stores that use it keep a checkpoint in a
 * row (or entry) keyed by its seq: a `checkpoints` problem's position is that seq, given as `seq` too.
 */
export function problemCollector(
  runId: string,
  problems: StoreProblem[],
): (where: string, position: number | undefined, fn: () => unknown) => void {
  return (where, position, fn) => {
    try {
      fn();
    } catch (error) {
      const e = error as CairnError;
      problems.push({
        code: e.code === 'FORMAT_TOO_NEW' ? 'FORMAT_TOO_NEW' : 'CHECKPOINT_CORRUPT',
        runId,
        where,
        ...(position === undefined ? {} : { position }),
        message: e.message,
        ...(where === 'checkpoints' && position !== undefined ? { seq: position } : {}),
      });
    }
  };
}

/** The record after applying `patch`: version + 1, stamped now. */
export function nextRunRecord(current: RunRecord, patch: RunPatch): RunRecord {
  return {
    ...current,
    status: patch.status ?? current.status,
    data: patch.data === undefined ? current.data : patch.data,
    version: current.version + 1,
    updatedAt: nowIso(),
  };
}
