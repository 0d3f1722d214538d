/**
 * Public types of the engine: contexts handed to stages and nodes, options, run summaries, events.
 * Builders live in `pipeline.ts` and `workflow.ts`; execution in the `*-executor.ts` files.
 */
import type { SerializedError } from '../core/errors.js';
import type { RunStatus } from '../stores/store.js';
import type { LimitGrant, LimitOptions } from './limits.js';

/** Retry policy for a stage, a node or the items of `ctx.items`. */
export interface RetryPolicy {
  /** Retries after the first try (so `max: 3` means up to 4 tries). @defaultValue 0 */
  readonly max?: number;
  /** Wait before the first retry. @defaultValue 1000 */
  readonly backoffMs?: number;
  /** Each further wait is multiplied by this. @defaultValue 2 */
  readonly factor?: number;
  /** Randomize each wait by up to ±50% so that many workers do not retry in step. @defaultValue true */
  readonly jitter?: boolean;
  /** Upper bound of one wait. @defaultValue 60_000 */
  readonly maxBackoffMs?: number;
  /** Decide per error whether to retry. @defaultValue every error except cairn's own usage errors */
  readonly retryIf?: (error: unknown) => boolean;
}

/** What `ctx.artifact(path)` returns: a file the stage produced, with its size and sha256. */
export interface ArtifactRef {
  /** Absolute path of the file. */
  readonly path: string;
  /** Path relative to the run's artifact folder (`/` separators): the name in the manifest. */
  readonly name: string;
  readonly size: number;
  readonly sha256: string;
}

/** Facts about one item handed to the function of `ctx.items`. */
export interface ItemInfo {
  /** The item's key (from `opts.key`, or its index): stable across attempts and resumes. */
  readonly key: string;
  /** Position in the list given to `ctx.items`. */
  readonly index: number;
  /** 1 on the first try; counts tries across retries and resumes. */
  readonly attempt: number;
  /** `<runId>/<ledger>/<key>`: unique per run and item, for idempotency keys of paid calls. */
  readonly idempotencyKey: string;
  /**
   * Aborted when the item must stop. On Ctrl-C, SIGTERM or a cancel, only once the grace period
   * (`gracePeriodMs`) is over: a call given this signal may finish and be saved instead of being cut
   * off and paid again on resume. At once when the lease is lost or the stage's try times out.
   */
  readonly signal: AbortSignal;
  /**
   * Records what this try cost, by unit (`{ usd: 0.002, tokens: 812 }`; any names). It is saved
   * with the item's result or failure (a failed try's spend counts too), adds to the run's spend and
   * counts against its budget. Call it before the function returns; a call with `limit` also
   * charges the `tokens` given against that limit.
   */
  spend(units: Readonly<Record<string, number>>): void;
}

/** How many results may be lost in a crash. */
export type Durability = 'batch' | 'item';

export interface ItemsOptions<T> {
  /** Stable key per item. @defaultValue the item's index, as text (the list must not be reordered between runs) */
  readonly key?: (item: T, index: number) => string | number;
  /** Items processed at once. @defaultValue 1 */
  readonly concurrency?: number;
  /** At most this many results are unflushed; workers wait when it is reached. @defaultValue 1000 */
  readonly checkpointEvery?: number;
  /**
   * Minimum time between two flushes. 0 starts the next flush as soon as the previous one is
   * durable, so slow items are durable within about one fsync and fast ones batch by the thousand.
   * @defaultValue 0
   */
  readonly flushIntervalMs?: number;
  /** `'batch'` (group commit) or `'item'` (an item's result is durable before its worker moves on). @defaultValue 'batch' */
  readonly durability?: Durability;
  /** `'fail'`: the first item that fails after its retries fails the stage. `'collect'`: failures are returned. @defaultValue 'fail' */
  readonly onItemError?: 'fail' | 'collect';
  /** Retries of one item inside one attempt. Failed items are retried again on resume. @defaultValue no retries */
  readonly retries?: RetryPolicy;
  /**
   * Longest time one try of an item may take: then its `signal` aborts and the try fails with
   * `ITEM_TIMEOUT` (retried under `retries` like any failure), whether or not the call stops; a
   * result it returns later is dropped. A synchronous loop that never yields cannot be cut short.
   * @defaultValue no timeout
   */
  readonly timeoutMs?: number;
  /**
   * A rate limit declared with `new Cairn({ limits })`: each try of an item waits until the limit
   * lets one more request start (shared by every process using a SQLite or Postgres store), tokens
   * the item reports with `item.spend({ tokens })` are charged to it, and an error that asks to wait
   * (a 429 with `Retry-After`, `retryAfterMs`) slows the whole limit down. See docs/rate-limits.md.
   */
  readonly limit?: string;
  /**
   * `'content'`: when the stage runs again because its input files or an upstream output changed
   * (not its `version` or `config`), an item whose key and content are those of an item done in the
   * ledger the stage last ran this call with takes that result instead of running (nothing is paid;
   * the entry is marked `reusedFrom`). Each entry then carries the item's content hash. Give `key`
   * when items may be inserted or removed: with index keys every item after an insert has another
   * key and runs again. Wrong when a result depends on anything but the item and the stage's
   * version and config (the date, an undeclared file, other items): see the guide.
   * @defaultValue no reuse
   */
  readonly reuse?: 'content';
}

/** One failed item, as `onItemError: 'collect'` returns it. */
export interface ItemFailure {
  readonly key: string;
  readonly index: number;
  readonly attempt: number;
  readonly error: SerializedError;
}

/** What `ctx.items(..., { onItemError: 'collect' })` returns. */
export interface CollectedItems<R> {
  /** Results in input order; `undefined` where the item failed. */
  readonly results: (R | undefined)[];
  readonly failures: ItemFailure[];
  readonly done: number;
  readonly failed: number;
}

/** Progress of one `ctx.items` call (counts come from the ledger, so they survive resumes). */
export interface ItemsProgress {
  readonly runId: string;
  readonly stage: string;
  readonly name: string;
  readonly done: number;
  readonly failed: number;
  readonly total: number;
  /** Items per second in this attempt. */
  readonly rate: number;
  /** Seconds left at the current rate, or undefined before there is a rate. */
  readonly eta: number | undefined;
  /** What this call's items have spent (its ledger, every attempt), when any reported spend. */
  readonly spend?: Readonly<Record<string, number>>;
  /** What this call will have spent once every item is done, at the spend per item so far. */
  readonly projectedSpend?: Readonly<Record<string, number>>;
  /** The whole run's spend so far. */
  readonly runSpend?: Readonly<Record<string, number>>;
  /** Of `done`, the items taken from an earlier generation's ledger (`reuse: 'content'`) instead of running; set on calls with `reuse`. */
  readonly reused?: number;
}

/** Runs a function over a list as durable items. */
export interface ItemsFn {
  <T, R>(
    name: string,
    list: readonly T[],
    fn: (item: T, info: ItemInfo) => R | Promise<R>,
    options?: ItemsOptions<T> & { readonly onItemError?: 'fail' },
  ): Promise<Awaited<R>[]>;
  <T, R>(
    name: string,
    list: readonly T[],
    fn: (item: T, info: ItemInfo) => R | Promise<R>,
    options: ItemsOptions<T> & { readonly onItemError: 'collect' },
  ): Promise<CollectedItems<Awaited<R>>>;
}

/** What stages and workflow nodes share. */
export interface BaseContext<I> {
  readonly runId: string;
  readonly input: I;
  /** 1 on the first try of this stage in this attempt; grows with retries. */
  readonly attempt: number;
  /** Aborted when the run must stop: Ctrl-C/SIGTERM, `cairn.cancel`, a timeout, a lost lease. */
  readonly signal: AbortSignal;
  /** Durable, resumable processing of a list: done items are skipped on resume. */
  readonly items: ItemsFn;
  /** A path under the run's artifact folder (`name` may contain `/`); the folder is created. */
  artifactPath(name: string): string;
  /** Records a file the stage produced (size + sha256); before the stage is skipped later, the file is verified. */
  artifact(path: string): ArtifactRef;
  /**
   * The value given for `name` by `cairn.resume(runId, { inputs: { [name]: value } })`. Until it is
   * given, the run is saved as `waiting` and `cairn.run` returns; the stage or node runs again on resume.
   *
   * A value answers one wait: this call, and the same call when this stage (same generation) or
   * node (same step) runs again after a crash. A loop that comes back to the wait, or a stage that
   * reruns because something upstream changed, waits for a new value. With `validate`, a value it
   * rejects is refused (`resume` fails with `INVALID_INPUT` and the run keeps waiting).
   */
  waitFor<V = unknown>(name: string, options?: WaitForOptions<V>): Promise<V>;
  /**
   * Waits until the rate limit `name` (declared in `new Cairn({ limits })`) lets one more request
   * start, with `tokens` counted from its start, and returns the grant; `ctx.signal` stops the wait.
   * Given `call`, runs it under the grant and returns what it returns; when it throws an error that
   * asks to wait (`retryAfterMs`, or a `Retry-After` header of a 429), every process sharing the
   * limit starts nothing under it for that long. See docs/rate-limits.md.
   * @example
   * const reply = await ctx.limit('llm', { tokens: 500 }, async (grant) => {
   *   const r = await llm.complete(prompt);
   *   await grant.charge(r.usage.total_tokens - 500); // what it really used
   *   return r;
   * });
   */
  limit(name: string, options?: LimitOptions): Promise<LimitGrant>;
  limit<R>(name: string, options: LimitOptions | undefined, call: (grant: LimitGrant) => R | PromiseLike<R>): Promise<Awaited<R>>;
  /**
   * Records what the stage (or node) paid outside `ctx.items`, by unit. It adds to the run's spend
   * and counts against its budget; it is saved with the run summary (at once, in the background).
   */
  spend(units: Readonly<Record<string, number>>): void;
}

export interface WaitForOptions<V> {
  /**
   * Checks the value given: a schema with `parse` (zod, valibot's wrappers, …) or a function that
   * returns the value to use and throws when it is not acceptable.
   */
  readonly validate?: { parse(value: unknown): V } | ((value: unknown) => V);
}

export interface StageContext<I, O> extends BaseContext<I> {
  readonly stage: string;
  /** The stage's `config` option. */
  readonly config: unknown;
  /** Output of an earlier stage. Throws `INVALID_DEFINITION` if that stage was skipped. */
  output<K extends keyof O & string>(stage: K): O[K];
  /** Output of an earlier stage, or undefined if it was skipped (alternative paths). */
  maybeOutput<K extends keyof O & string>(stage: K): O[K] | undefined;
}

export interface NodeContext<I> extends BaseContext<I> {
  readonly node: string;
  /** Steps taken so far in this run (0 for the entry node's first run). */
  readonly step: number;
}

export type StageStatus = 'pending' | 'running' | 'waiting' | 'completed' | 'failed' | 'skipped' | 'interrupted';

export interface ItemCounts {
  readonly done: number;
  readonly failed: number;
  readonly total: number;
  /** Of `done`, the items whose result was taken from an earlier generation's ledger instead of running; set for calls with `reuse: 'content'`. */
  readonly reused?: number;
}

/** One stage (or workflow node) in a run summary. */
export interface StageSummary {
  readonly name: string;
  readonly status: StageStatus;
  /** Why a stage was skipped or rerun. */
  readonly reason?: string;
  readonly fingerprint?: string;
  readonly startedAt?: string;
  readonly endedAt?: string;
  readonly durationMs?: number;
  /** Times the stage was started, across attempts and retries. */
  readonly runs: number;
  /** Item counts per `ctx.items` name, as of the stage's last save. */
  readonly items?: Readonly<Record<string, ItemCounts>>;
  /** What the stage (all its items calls and `ctx.spend`) has spent, by unit, as of its last save. */
  readonly spend?: Readonly<Record<string, number>>;
  readonly error?: SerializedError;
}

export interface AttemptSummary {
  readonly n: number;
  readonly startedAt: string;
  readonly endedAt?: string;
  readonly host: string;
  readonly pid: number;
  /** How the attempt ended: a run status, or `crashed` when the process died without saying. */
  readonly outcome?: RunStatus | 'crashed';
  readonly reason?: string;
}

export interface HistoryEntry {
  readonly at: string;
  readonly event: string;
  readonly stage?: string;
  readonly message: string;
}

/**
 * Why a run's record or summary cannot be used as stored: damaged (`CHECKPOINT_CORRUPT`) or written
 * by a newer cairn (`FORMAT_TOO_NEW`). `cairn list` and `cairn show` mark such runs.
 */
export interface RunProblem {
  readonly code: 'CHECKPOINT_CORRUPT' | 'FORMAT_TOO_NEW' | 'LEFTOVER_RECORDS';
  /** The file or row holding it (`<run-id>/seg-0/run.jsonl line 7`, `row cairn_runs id=…`), or `summary`. */
  readonly where: string;
  /** What is wrong and what to do about it. */
  readonly message: string;
  /** The record was read back from what is intact (an earlier line of the run log): the run works, its summary may be behind. */
  readonly rebuilt: boolean;
}

/** What `cairn.run`, `cairn.resume` and `cairn.get` return. */
export interface RunSummary<R = unknown> {
  readonly id: string;
  readonly name: string;
  /**
   * `checkpoints` for a workflow saved through the low-level `CheckpointManager`; `unknown` when
   * the summary cannot be read (see {@link RunSummary.problem}).
   */
  readonly kind: 'pipeline' | 'workflow' | 'checkpoints' | 'unknown';
  readonly status: RunStatus;
  /** The last stage's output (pipeline) or the final state (workflow), once completed. */
  readonly result?: R;
  readonly error?: SerializedError & { readonly stage?: string };
  readonly stages: readonly StageSummary[];
  /**
   * What a waiting run needs: the input name (`cairn.resume(id, { inputs: { [name]: value } })`), or
   * `budget` when it reached its budget (`cairn.resume(id, { budget: { usd: 10 } })`).
   */
  readonly waitingFor?: string;
  /** What the run has spent so far, by unit (`item.spend`, `ctx.spend`), as of its last save. */
  readonly spend?: Readonly<Record<string, number>>;
  /** The run's budget, by unit: no item starts once one unit's spend reaches it. */
  readonly budget?: Readonly<Record<string, number>>;
  readonly attempts: readonly AttemptSummary[];
  readonly history: readonly HistoryEntry[];
  readonly createdAt: string;
  readonly updatedAt: string;
  /** Workflow only: steps taken. */
  readonly steps?: number;
  /** The module (and export) the run's definition was loaded from, when started by the `cairn` command. */
  readonly source?: { readonly module: string; readonly exportName?: string };
  /** The stage or node running now (or when the run stopped). */
  readonly currentStage?: string;
  /** Set when the run's record or summary is damaged or too new: what, where, and what to do. */
  readonly problem?: RunProblem;
}

/** Events emitted by {@link Cairn}. */
export interface CairnEvents {
  'run:start': { readonly runId: string; readonly name: string; readonly attempt: number; readonly resumed: boolean };
  'stage:start': { readonly runId: string; readonly stage: string; readonly try: number; readonly reason?: string };
  'stage:complete': { readonly runId: string; readonly stage: string; readonly durationMs: number };
  'stage:skip': { readonly runId: string; readonly stage: string; readonly reason: string };
  'stage:fail': {
    readonly runId: string;
    readonly stage: string;
    readonly error: SerializedError;
    readonly willRetry: boolean;
    /** The try that failed (1-based) and how many the retry policy allows. */
    readonly try?: number;
    readonly maxTries?: number;
    /** With `willRetry`: the backoff before the next try. */
    readonly retryInMs?: number;
  };
  'items:progress': ItemsProgress;
  /** An item failed and is tried again after `delayMs` (its retry policy allows `maxTries` tries in an attempt). */
  'items:retry': {
    readonly runId: string;
    readonly stage: string;
    readonly name: string;
    readonly key: string;
    /** The try that failed, within this attempt (1-based), and the item's attempt as its ledger counts it. */
    readonly try: number;
    readonly maxTries: number;
    readonly attempt: number;
    readonly error: SerializedError;
    readonly delayMs: number;
  };
  checkpoint: { readonly runId: string; readonly seq: number; readonly kind: string; readonly stage?: string };
  /** Something was found and handled: a damaged record skipped, a stale artifact, a crashed attempt. */
  warning: {
    readonly runId: string;
    readonly code: string;
    readonly message: string;
    readonly stage?: string;
    /** The store call concerned (`LEASE_LOST`: the write or renewal that was refused). */
    readonly operation?: string;
  };
  'run:end': { readonly runId: string; readonly status: RunStatus; readonly summary: RunSummary };
  /** A worker claimed a run: newly queued, handed back by a stopping worker, or stranded by a dead one. */
  'run:claimed': {
    readonly runId: string;
    readonly name: string;
    readonly reason: 'queued' | 'handed-back' | 'stranded';
    readonly epoch: number;
    readonly owner: string;
  };
}

export type CairnEventName = keyof CairnEvents;

/** Named points where a durable write just finished: tests kill the process there. */
export type CommitPoint = 'stage' | 'items' | 'step' | 'run';

export interface EngineHooks {
  /** Called synchronously right after each durable write. */
  readonly onCommitPoint?: (point: CommitPoint, info: { readonly runId: string; readonly stage?: string; readonly count?: number }) => void;
}
