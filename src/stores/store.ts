/**
 * The one contract every store implements (memory, files, SQLite, Postgres). The engine and the CLI
 * use only this interface and branch on {@link StoreCapabilities}, never on a concrete class.
 *
 * Rules every implementation follows (the conformance suite in `test/conformance/` checks them):
 * - Every id (run id, stage name) is checked with `assertRunId`/`assertName` before it touches a
 *   path or a query: `INVALID_RUN_ID`.
 * - Every record is kept as a sealed line (`src/core/record.ts`): checksum + format version. A
 *   damaged record is reported (`CHECKPOINT_CORRUPT`) and never used; a record from a newer
 *   format is refused (`FORMAT_TOO_NEW`); nothing else is lost.
 * - A write that resolved is durable (fsync / commit) unless the caller asked otherwise.
 */
import type { SerializedError } from '../core/errors.js';

export const RUN_STATUSES = ['pending', 'running', 'waiting', 'interrupted', 'failed', 'completed', 'cancelled'] as const;
export type RunStatus = (typeof RUN_STATUSES)[number];

export type StoreKind = 'memory' | 'file' | 'sqlite' | 'postgres';

export interface StoreCapabilities {
  /** Data survives the process (false only for `memory:`). */
  readonly durable: boolean;
  /** Several processes may open the same location at once (and must coordinate through locks). */
  readonly multiProcess: boolean;
  /** Several machines may share the store (Postgres). */
  readonly multiMachine: boolean;
  /** Writes check the lease epoch atomically with the write (fencing); otherwise best effort. */
  readonly fencedWrites: boolean;
  /** Artifact files live on this machine's file system under {@link Store.artifactDir}. */
  readonly localArtifacts: boolean;
  /** Runs can be submitted for workers and claimed by them ({@link Store.queue} is present). */
  readonly queue: boolean;
}

/** The stored summary of a run. `version` increases by one on every update (compare-and-set). */
export interface RunRecord {
  readonly id: string;
  /** Name of the definition (pipeline / workflow) or of the low-level workflow. */
  readonly name: string;
  readonly status: RunStatus;
  readonly version: number;
  readonly createdAt: string;
  readonly updatedAt: string;
  /** Engine-owned summary (stages, attempts, error, result, input…): any serializable value. */
  readonly data: unknown;
  /**
   * Set when a process that does not hold the run asked it to stop ({@link Store.requestCancel}) and
   * the attempt it asked is still the current one: the holder looks for it every second, and stops.
   */
  readonly cancelRequested?: boolean;
  /**
   * Set when the stored run record is damaged and the store read it back from what is intact
   * instead: an earlier intact line of the file store's run log (the record as it was a few
   * updates ago), or the run row's columns on SQL stores (`dataLost`: the summary is gone, `data` is
   * undefined). Never stored: the next update writes the record whole again.
   */
  readonly rebuilt?: RunRebuild;
}

/** How a damaged run record was read back (see {@link RunRecord.rebuilt}). */
export interface RunRebuild {
  /** The damaged record: `<run-id>/seg-0/run.jsonl line 7` (under the store's root), `row cairn_runs id=…`. */
  readonly where: string;
  /** Why it cannot be read (`checksum mismatch`, …). */
  readonly reason: string;
  /** What the record was read back from: `line 6 of <run-id>/seg-0/run.jsonl`, `the row's columns`. */
  readonly from: string;
  /** Only the header (name, status, version, times) could be read back: `data` is undefined. */
  readonly dataLost: boolean;
}

export interface NewRun {
  readonly id: string;
  readonly name: string;
  readonly status?: RunStatus;
  readonly data?: unknown;
}

export interface RunPatch {
  readonly status?: RunStatus;
  readonly data?: unknown;
}

export interface RunFilter {
  readonly status?: RunStatus | readonly RunStatus[];
  readonly name?: string;
  /** Only runs last updated before this instant. */
  readonly updatedBefore?: Date;
  /**
   * Only runs last updated at least this many milliseconds ago, measured by the store's own clock
   * (the database server's for Postgres), so that machines with skewed clocks agree.
   */
  readonly olderThanMs?: number;
  /** At most this many, newest `updatedAt` first when set; all runs otherwise (oldest first). */
  readonly limit?: number;
}

/** What a caller appends; the store assigns `seq` (1, 2, 3… per run) and `createdAt`. */
export interface CheckpointInput {
  /** Engine-defined kind, e.g. `stage`, `step`, `snapshot`, `error`. @defaultValue 'state' */
  readonly kind?: string;
  /** Stage or node the checkpoint belongs to, if any. */
  readonly stage?: string;
  /** Small JSON metadata shown in listings (e.g. `{ stage: 'merge' }`). */
  readonly meta?: Readonly<Record<string, unknown>>;
  /** The checkpoint's content: any serializable value. */
  readonly state: unknown;
}

export interface CheckpointRef {
  readonly runId: string;
  readonly seq: number;
  readonly createdAt: string;
  readonly kind: string;
  readonly stage?: string;
  readonly meta?: Readonly<Record<string, unknown>>;
  /** Serialized payload size in bytes (before compression). */
  readonly bytes: number;
}

export interface Checkpoint extends CheckpointRef {
  readonly state: unknown;
}

/** A checkpoint listing entry: valid ones carry their ref, damaged ones the reason. */
export type CheckpointEntry =
  | { readonly valid: true; readonly ref: CheckpointRef }
  | { readonly valid: false; readonly seq?: number; readonly reason: string; readonly code: 'CHECKPOINT_CORRUPT' | 'FORMAT_TOO_NEW' };

/** A record read whole (its state included), or a damaged one flagged as in a listing. */
export type CheckpointRead =
  { readonly valid: true; readonly checkpoint: Checkpoint } | Extract<CheckpointEntry, { readonly valid: false }>;

/** What an entry of a ledger holds besides its outcome (every field optional, written only when set). */
export interface ItemEntryExtras {
  /** What the tries this entry records cost (`item.spend`), by unit: `{ usd: 0.002, tokens: 812 }`. */
  readonly spend?: Readonly<Record<string, number>>;
  /** The item's content hash (`reuse: 'content'`): a later generation of the stage may take this result for an equal item. */
  readonly hash?: string;
  /** Set when the result was taken from this ledger of an earlier generation instead of running the item (nothing was paid). */
  readonly reusedFrom?: string;
}

/** One item's outcome in a stage's ledger. Later entries for the same key supersede earlier ones. */
export type ItemEntry =
  | ({
      readonly key: string;
      readonly index: number;
      readonly status: 'done';
      readonly attempt: number;
      readonly result: unknown;
    } & ItemEntryExtras)
  | ({
      readonly key: string;
      readonly index: number;
      readonly status: 'failed';
      readonly attempt: number;
      readonly error: SerializedError;
    } & ItemEntryExtras);

export interface ArtifactEntry {
  /** Path relative to the run's artifact folder, with `/` separators. */
  readonly path: string;
  readonly size: number;
  readonly sha256: string;
  readonly stage?: string;
  readonly createdAt: string;
}

/** A held run lock. `epoch` is a fencing token: it grows by one at every acquisition. */
export interface Lease {
  readonly runId: string;
  readonly owner: string;
  readonly epoch: number;
  readonly host: string;
  readonly pid: number;
  readonly acquiredAt: string;
  readonly expiresAt: string;
}

export interface LockOptions {
  /** Free-form identity of the holder, shown in `RUN_LOCKED` errors. */
  readonly owner: string;
  /** Lease length; renew before it ends. @defaultValue 30_000 */
  readonly ttlMs?: number;
}

/** Write options for writes done on behalf of a lease holder. */
export interface WriteOptions {
  /** When given, the write is refused with `LEASE_LOST` if this lease is no longer current. */
  readonly lease?: Lease;
}

/** A problem found while reading or validating stored data. */
export interface StoreProblem {
  /** `LEFTOVER_RECORDS`: the run record is gone but records of the run are left (where: `run`). */
  readonly code: 'CHECKPOINT_CORRUPT' | 'FORMAT_TOO_NEW' | 'ARTIFACT_MISMATCH' | 'NOT_FOUND' | 'LEFTOVER_RECORDS' | 'UNSAFE_PATH';
  readonly runId: string;
  /** Which part: `run`, `checkpoints`, `items/<stage>`, `artifacts`, `artifact:<path>`. */
  readonly where: string;
  /** Record position (line number or seq) when known. */
  readonly position?: number;
  readonly message: string;
  /**
   * A damaged checkpoint whose seq is known (`where: 'checkpoints'`): set only on a record that does
   * not read back, never on a problem of the log's order (a seq missing, repeated or out of place).
   */
  readonly seq?: number;
  /**
   * Set on a damaged run record that nothing reads: a later intact record of the run replaced it
   * and is the one in force (the file store's run log keeps every update's line). `cairn validate`
   * counts such damage as recovered.
   */
  readonly superseded?: true;
}

/** One record of a run export, in order: `run`, then `checkpoint`s, `items`, `artifact`s. */
export type ExportRecord =
  | { readonly type: 'run'; readonly line: string }
  | { readonly type: 'checkpoint'; readonly line: string }
  | { readonly type: 'items'; readonly stage: string; readonly lines: readonly string[] }
  | { readonly type: 'artifact'; readonly line: string };

/** What a worker asks the queue for. */
export interface ClaimOptions {
  /** Only runs of these definition names (the definitions the worker can run). */
  readonly names: readonly string[];
  /** Free-form identity of the worker, stored in the lease. */
  readonly owner: string;
  /** Lease length; the worker renews it. @defaultValue 30_000 */
  readonly ttlMs?: number;
  /** Runs not to claim: ones this worker could not start (a damaged summary, a newer format). */
  readonly exclude?: readonly string[];
}

/** A run a worker claimed, with the lease it now holds (a new epoch). */
export interface Claim {
  readonly run: RunRecord;
  readonly lease: Lease;
  /** Why it was claimable: newly queued, handed back (`interrupted`), or stranded (its holder's lease expired). */
  readonly reason: 'queued' | 'handed-back' | 'stranded';
}

/**
 * The work queue of a shared store. A queued run stays queued until it reaches a status no worker
 * continues (`completed`, `failed`, `cancelled`, `waiting`); it is claimable while it is `pending`
 * or `interrupted` with no live lease, or `running` with an expired lease (its worker died or
 * stalled). Time is the store's clock (the database server's), never the worker's.
 */
export interface RunQueue {
  /** Marks an existing run as queued for workers (idempotent); `NOT_FOUND` if the run is unknown. */
  enqueue(runId: string): Promise<void>;
  /**
   * Atomically picks the longest-queued claimable run among `names` and takes its lease (epoch + 1),
   * skipping runs another worker is claiming at the same moment (`FOR UPDATE SKIP LOCKED`).
   * Undefined when nothing is claimable.
   */
  claim(options: ClaimOptions): Promise<Claim | undefined>;
  /** How many queued runs are claimable now, of these definition names if given. */
  pending(names?: readonly string[]): Promise<number>;
}

/**
 * A named rate limit as a store applies it: a request is granted at time t only while the grants
 * of the window (t − `perMs`, t] number fewer than `requests` and their tokens plus the tokens asked
 * for stay within `tokens` (each bound only when set).
 */
export interface LimitRule {
  readonly perMs: number;
  readonly requests?: number;
  readonly tokens?: number;
}

/** One try at a grant: granted at `at` (ms since 1970 by the store's clock), or how long to wait before trying again. */
export type LimitTry =
  | { readonly granted: true; readonly at: number }
  | {
      readonly granted: false;
      /** Until the grant that blocks the request leaves the window (or the limit's slow-down ends): more than 0. */
      readonly waitMs: number;
      /** What blocks it: the request count, the tokens, or a slow-down asked by a 429. */
      readonly why: 'requests' | 'tokens' | 'slowed';
    };

/**
 * The shared state of named rate limits (a sliding log of grants per limit), on stores that keep it
 * where every process using the store sees it: SQLite and Postgres (in the database), files (under
 * the root, for the processes of one machine), memory (in the process). See docs/rate-limits.md.
 */
export interface LimitBackend {
  /** Who shares the limits: this process only, the processes of this machine, or every process using the store. */
  readonly sharedBy: 'process' | 'machine' | 'store';
  /**
   * In one step that no other process interleaves with: drops the grants older than the limit's
   * window, then grants `tokens` under `rule` now (recording a grant with id `grantId`), or says how
   * long to wait. A try whose reply was lost is recognized by its `grantId`, never granted twice.
   */
  tryAcquire(name: string, rule: LimitRule, grantId: string, tokens: number): Promise<LimitTry>;
  /** Sets the tokens counted for grant `grantId` to `totalTokens` (never lowers them); nothing if it left the window. */
  charge(name: string, grantId: string, totalTokens: number): Promise<void>;
  /** Lets nothing start under the limit for `ms` from now (by the store's clock); never shortens a longer slow-down. */
  slowDown(name: string, rule: LimitRule, ms: number): Promise<void>;
}

export interface ImportOptions {
  /** Replace an existing run with the same id. @defaultValue false (`ALREADY_EXISTS`) */
  readonly overwrite?: boolean;
}

export interface Store {
  readonly kind: StoreKind;
  /** The store's URL with any password removed. */
  readonly url: string;
  readonly capabilities: StoreCapabilities;

  // Runs
  /**
   * Creates a run; `ALREADY_EXISTS` if the id is taken. `LEFTOVER_RECORDS`, writing nothing, when
   * the id has no run record but records of an earlier run are left (its run record removed by
   * hand or lost): a new run never adopts them. `deleteRun` removes them.
   */
  createRun(run: NewRun): Promise<RunRecord>;
  /**
   * The run, or undefined. A damaged run record is read back from what is intact where the store
   * can ({@link RunRecord.rebuilt}); otherwise it throws `CHECKPOINT_CORRUPT` naming the run and
   * the file or row.
   */
  getRun(runId: string): Promise<RunRecord | undefined>;
  /**
   * Compare-and-set: applies `patch` only if the stored version is `expectedVersion` (else `CONFLICT`).
   * On a record read back without its summary (`rebuilt.dataLost`) the patch must give `data`
   * (else `CHECKPOINT_CORRUPT`): nothing writes a record whose summary silently went missing.
   */
  updateRun(runId: string, expectedVersion: number, patch: RunPatch, options?: WriteOptions): Promise<RunRecord>;
  /**
   * Runs matching `filter`, rebuilt ones included (as {@link Store.getRun} returns them); run
   * records that cannot be read back at all are skipped ({@link Store.listRunIds} lists them).
   */
  listRuns(filter?: RunFilter): Promise<RunRecord[]>;
  /**
   * Every run id in the store, sorted, for validate and cleanup: runs whose run record is damaged
   * included, and ids that have only leftover records (no run record; see {@link Store.createRun}).
   * Ids in `except` are left out without being looked at (`cairn list` asks only about the ids
   * {@link Store.listRuns} did not return).
   */
  listRunIds(options?: { readonly except?: ReadonlySet<string> }): Promise<string[]>;
  /**
   * Deletes the run and everything under it (checkpoints, ledgers, artifacts, lock), or the
   * leftover records of an id without a run record. False if there was nothing to delete.
   */
  deleteRun(runId: string): Promise<boolean>;

  // Checkpoints
  /** Appends a checkpoint durably; the run must exist (`NOT_FOUND`). */
  appendCheckpoint(runId: string, input: CheckpointInput, options?: WriteOptions): Promise<CheckpointRef>;
  /** One checkpoint with its state. `NOT_FOUND`, `CHECKPOINT_CORRUPT` or `FORMAT_TOO_NEW`. */
  getCheckpoint(runId: string, seq: number): Promise<Checkpoint>;
  /** Every checkpoint of the run in seq order, damaged ones flagged. Empty if the run is unknown. */
  listCheckpoints(runId: string): Promise<CheckpointEntry[]>;
  /**
   * The newest checkpoint that reads back intact (optionally of one `kind`), or undefined.
   * Damaged ones are skipped; a newer-format one throws `FORMAT_TOO_NEW` (never silently older).
   */
  latestCheckpoint(runId: string, filter?: { readonly kind?: string }): Promise<Checkpoint | undefined>;
  /**
   * The newest intact checkpoint of `filter.kind` and every record after it, oldest first, states
   * included, damaged ones flagged (a resume replays them: the last snapshot and the steps since).
   * Undefined when no checkpoint of that kind is intact. Reads those records and about nothing
   * before them. Optional: without it, the engine lists the checkpoints and gets them one by one.
   */
  checkpointsSinceLatest?(runId: string, filter: { readonly kind: string }): Promise<CheckpointRead[] | undefined>;
  /** Deletes the checkpoints with these seqs (their numbers are never reused). Returns how many. */
  deleteCheckpoints(runId: string, seqs: readonly number[]): Promise<number>;

  // Item ledgers
  /** Appends a batch of entries to a stage's ledger atomically (all or none) and durably. */
  appendItems(runId: string, stage: string, entries: readonly ItemEntry[], options?: WriteOptions): Promise<void>;
  /** Streams a stage's ledger in append order; damaged entries are reported to `onProblem` and skipped. */
  readItems(runId: string, stage: string, options?: { onProblem?: (problem: StoreProblem) => void }): AsyncIterable<ItemEntry>;
  /**
   * {@link readItems} a chunk of entries at a time (a resume over a million items then takes a
   * thousand turns, not a million). Optional: the engine reads entry by entry without it.
   */
  readItemChunks?(
    runId: string,
    stage: string,
    options?: { onProblem?: (problem: StoreProblem) => void },
  ): AsyncIterable<readonly ItemEntry[]>;
  /** Stage names that have a ledger. */
  listLedgers(runId: string): Promise<string[]>;

  // Artifacts
  /** The local folder where this run's artifact files go (created on demand by the caller). */
  artifactDir(runId: string): string;
  /** Records (or replaces, by path) artifact manifest entries. */
  recordArtifacts(runId: string, entries: readonly ArtifactEntry[], options?: WriteOptions): Promise<void>;
  /** The current manifest: the latest entry per path. */
  listArtifacts(runId: string): Promise<ArtifactEntry[]>;

  // Locks
  /** Takes the run's exclusive lease, or throws `RUN_LOCKED` naming the holder. Stale leases are taken over. */
  acquireLock(runId: string, options: LockOptions): Promise<Lease>;
  /** Extends a held lease; `LEASE_LOST` if it was taken over. */
  renewLock(lease: Lease, options?: { readonly ttlMs?: number }): Promise<Lease>;
  /**
   * Asks the current holder of the run to stop, without writing its run record (stores where only
   * the lease holder writes a run: the file store). The request is for the attempt holding the
   * lease now and shows as {@link RunRecord.cancelRequested}. Optional: other stores record a
   * cancel request with a compare-and-set of the run record.
   */
  requestCancel?(runId: string): Promise<void>;
  /** Releases a held lease (no-op if it was already taken over). */
  releaseLock(lease: Lease): Promise<void>;
  /** The current lease, if any is held and not expired (none for an id without a run record). */
  getLock(runId: string): Promise<Lease | undefined>;

  // Validation, export, import
  /**
   * Reads every record of the run and reports each problem found; `[]` when all is intact. An id
   * with leftover records but no run record gets one `LEFTOVER_RECORDS` problem; an unknown id one
   * `NOT_FOUND` problem.
   */
  validateRun(runId: string): Promise<StoreProblem[]>;
  /** Streams the run as sealed records (`NOT_FOUND` if unknown). */
  exportRun(runId: string): AsyncIterable<ExportRecord>;
  /**
   * Imports a run from records. Every record is verified before anything is written; the run
   * appears whole or not at all. `IMPORT_INVALID` on bad records, `ALREADY_EXISTS` unless `overwrite`,
   * `LEFTOVER_RECORDS` when the id has leftover records, unless `overwrite` (which removes them).
   */
  importRun(records: AsyncIterable<ExportRecord> | Iterable<ExportRecord>, options?: ImportOptions): Promise<RunRecord>;

  /** The work queue, on stores where `capabilities.queue` is true. */
  readonly queue?: RunQueue;

  /** Shared state of named rate limits; without it the engine limits within the process. */
  readonly limits?: LimitBackend;

  close(): Promise<void>;
}
