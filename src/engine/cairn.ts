/**
 * `Cairn`: runs pipeline and workflow definitions durably on a store. Running the same definition
 * on the same input again resumes it; a completed run returns its stored result at once.
 */
import { isDeepStrictEqual } from 'node:util';
import { CairnError, isCairnError, serializeError } from '../core/errors.js';
import { canonicalHash } from '../core/hash.js';
import { assertRunId } from '../core/ids.js';
import { claimReason, HOST, isLeaseStale, runLockedError, type StoreOptions } from '../stores/common.js';
import { DEFAULT_STORE_URL, openStore } from '../stores/open-store.js';
import type { Claim, Lease, LimitRule, RunFilter, RunRecord, RunStatus, Store } from '../stores/store.js';
import { refusalText } from './context.js';
import { TypedEmitter } from './events.js';
import { forkRun, type ForkOptions } from './fork.js';
import { Limiter, resolveLimits, type LimitSpec } from './limits.js';
import { isPipeline, type Pipeline } from './pipeline.js';
import { executePipeline } from './pipeline-executor.js';
import { planPipeline, readCompletedStages } from './pipeline-plan.js';
import { addHistory, giveAnswers, isSameAnswer, newRunData, readRunData, toSummary, type RunData, type RunSource } from './run-data.js';
import { needsRepair, repairRun } from './run-repair.js';
import { RunSession, type SessionConfig } from './run-session.js';
import { BUDGET_WAIT, checkSpend, formatSpend, type Spend } from './spend.js';
import type { EngineHooks, RunSummary } from './types.js';
import { isDefinition, type Workflow } from './workflow.js';
import { isSameDefinition } from './workflow-change.js';
import { executeWorkflow } from './workflow-executor.js';
import { runWorker, type WorkOptions, type WorkReport } from './worker.js';

/* eslint-disable @typescript-eslint/no-explicit-any -- definitions are accepted whatever their type parameters */
export type Definition = Pipeline<any, any, any> | Workflow<any, any, any>;
/** The input a definition takes. */
export type InputOf<D> = D extends Pipeline<infer I, any, any> ? I : D extends Workflow<infer I, any, any> ? I : never;
/** What a completed run returns: the last stage's output, or the workflow's final state. */
export type ResultOf<D> = D extends Pipeline<any, any, infer R> ? R : D extends Workflow<any, infer S, any> ? S : never;
/* eslint-enable @typescript-eslint/no-explicit-any */

export interface CairnOptions extends StoreOptions {
  /** A store URL or an open store. @defaultValue 'file:./data/checkpoints' */
  readonly store?: string | Store;
  /** Definitions `resume` can find by name (every definition given to `run` is added). */
  readonly definitions?: readonly Definition[];
  /** Shown to other processes in `RUN_LOCKED`. @defaultValue '<host>:<pid>' */
  readonly owner?: string;
  /** How long a run's lease lasts without renewal (renewed every third of it). @defaultValue 30_000 */
  readonly lockTtlMs?: number;
  /** After Ctrl-C/SIGTERM/cancel, how long in-flight work may take to finish and be saved. @defaultValue 10_000 */
  readonly gracePeriodMs?: number;
  /** Interrupt runs gracefully on SIGINT/SIGTERM (and set `process.exitCode` to 130/143). @defaultValue true */
  readonly handleSignals?: boolean;
  readonly hooks?: EngineHooks;
  /**
   * Named rate limits, declared once, used by `ctx.limit(name)`: `{ llm: { requests: 60, per: '1m',
   * tokens: 90_000 } }`. Shared by every process using a SQLite or Postgres store, by the processes
   * of one machine on the file store, within the process on `memory:`. See docs/rate-limits.md.
   * @defaultValue none
   */
  readonly limits?: Readonly<Record<string, LimitSpec>>;
}

export interface RunOptions {
  /** Use this run id instead of `<name>-<hash of input>`. */
  readonly runId?: string;
  /** Delete the run's history (checkpoints, ledgers, artifacts) and start over. @defaultValue false */
  readonly forceRestart?: boolean;
  /** Values for `ctx.waitFor(name)`. */
  readonly inputs?: Readonly<Record<string, unknown>>;
  /** Where the definition lives (the `cairn` command records it so that `cairn resume <id>` can load it). */
  readonly source?: RunSource;
  /**
   * Spend limits by unit (`{ usd: 5 }`), kept with the run: no item starts once a unit's spend
   * reaches its limit, and the run waits (`waitingFor: 'budget'`) until a resume raises it. Replaces
   * the run's budget; `{}` removes it. @defaultValue the run's budget, or none
   */
  readonly budget?: Readonly<Record<string, number>>;
}

export interface SubmitOptions {
  /** Use this run id instead of `<name>-<hash of input>`. */
  readonly runId?: string;
  /** Values for `ctx.waitFor(name)`; a waiting run given the input it waits for is queued again. */
  readonly inputs?: Readonly<Record<string, unknown>>;
  /** Where the definition lives (recorded for `cairn resume` and operators). */
  readonly source?: RunSource;
  /** As for {@link RunOptions.budget}; a run waiting for its budget is queued again. */
  readonly budget?: Readonly<Record<string, number>>;
}

export interface ResumeOptions {
  readonly inputs?: Readonly<Record<string, unknown>>;
  /** A new budget (see {@link RunOptions.budget}): a run waiting for its budget continues once it is below it. */
  readonly budget?: Readonly<Record<string, number>>;
  /** The definition, when it was not given to this `Cairn` before. */
  readonly definition?: Definition;
}

/**
 * @example
 * const cairn = new Cairn({ store: 'file:./data/checkpoints' });
 * const run = await cairn.run(speech, { file: 'talk.wav' }); // the same call again resumes it
 * if (run.status === 'completed') console.log(run.result);
 */
export class Cairn extends TypedEmitter {
  private readonly storePromise: Promise<Store>;
  private readonly ownsStore: boolean;
  private readonly definitions = new Map<string, Definition>();
  private readonly active = new Map<string, { session?: RunSession; done: Promise<unknown> }>();
  private readonly settings: { owner: string; lockTtlMs: number; gracePeriodMs: number; handleSignals: boolean; hooks: EngineHooks };
  private readonly limiterPromise: Promise<Limiter>;
  private readonly limitRules: ReadonlyMap<string, LimitRule>;
  /** Limiters of definitions that declare limits of their own (merged with this instance's), made once each. */
  private readonly definitionLimiters = new WeakMap<Definition, Promise<Limiter>>();

  constructor(options: CairnOptions = {}) {
    super();
    const store = options.store ?? DEFAULT_STORE_URL;
    this.ownsStore = typeof store === 'string';
    this.storePromise = typeof store === 'string' ? openStore(store, options) : Promise.resolve(store);
    this.storePromise.catch(() => undefined); // surfaced by the first call
    this.settings = Object.freeze({
      owner: options.owner ?? `${HOST}:${process.pid}`,
      lockTtlMs: options.lockTtlMs ?? 30_000,
      gracePeriodMs: options.gracePeriodMs ?? 10_000,
      handleSignals: options.handleSignals ?? true,
      hooks: options.hooks ?? {},
    });
    if (!(this.settings.lockTtlMs > 0) || !(this.settings.gracePeriodMs >= 0)) {
      throw new CairnError('INVALID_INPUT', 'lockTtlMs must be positive and gracePeriodMs at least 0.');
    }
    const limits = resolveLimits(options.limits); // INVALID_INPUT naming the limit and field
    this.limitRules = limits;
    this.limiterPromise = this.storePromise.then((opened) => Limiter.forStore(limits, opened));
    this.limiterPromise.catch(() => undefined); // surfaced by the first call
    for (const def of options.definitions ?? []) this.register(def);
  }

  /**
   * The named rate limits of the `limits` option, on the store's shared state: for calls made
   * outside a run under the same limits as the runs' (`ctx.limit` uses it inside one).
   * @example const grant = await (await cairn.limiter()).acquire('llm', { tokens: 500 });
   */
  limiter(): Promise<Limiter> {
    return this.limiterPromise;
  }

  /** The limiter a run of `def` uses: this instance's limits, and the definition's own (`limits` option) for names this one does not declare. */
  private limiterOf(def: Definition): Promise<Limiter> {
    const own = (def.options as { limits?: Readonly<Record<string, LimitSpec>> }).limits;
    if (own === undefined) return this.limiterPromise;
    let limiter = this.definitionLimiters.get(def);
    if (!limiter) {
      const rules = new Map([...resolveLimits(own), ...this.limitRules]);
      limiter = this.storePromise.then((opened) => Limiter.forStore(rules, opened));
      this.definitionLimiters.set(def, limiter);
    }
    return limiter;
  }

  /** The store (opened on first use). */
  store(): Promise<Store> {
    return this.storePromise;
  }

  /** Makes definitions known to `resume` by name. */
  register(...defs: Definition[]): this {
    for (const def of defs) {
      if (!isDefinition(def)) {
        throw new CairnError('INVALID_DEFINITION', 'Expected a definition made with pipeline() or workflow().');
      }
      this.definitions.set(def.name, def);
    }
    return this;
  }

  /** The id a run of `def` on `input` gets by default: `<name>-<16 hex of the input's canonical hash>`. */
  runIdFor<D extends Definition>(def: D, input: InputOf<D>): string {
    return `${def.name.slice(0, 100)}-${hashInput(input).slice(0, 16)}`;
  }

  /**
   * Runs `def` on `input`, or resumes the run if it was started before. Resolves once the run
   * completes, fails, waits for input or is interrupted; rejects on usage errors (`INVALID_INPUT`,
   * `RUN_LOCKED`, …) and with `LEASE_LOST` when another process took the run over meanwhile (this
   * one wrote nothing after that).
   */
  async run<D extends Definition>(def: D, input: InputOf<D>, options: RunOptions = {}): Promise<RunSummary<ResultOf<D>>> {
    return (await this.runWith(def, input, options)) as RunSummary<ResultOf<D>>;
  }

  private async runWith(def: Definition, input: unknown, options: RunOptions, claimed?: Lease): Promise<RunSummary> {
    this.register(def);
    const store = await this.storePromise;
    const parsed = parseInput(def, input);
    const inputHash = hashInput(parsed);
    const runId = options.runId ?? `${def.name.slice(0, 100)}-${inputHash.slice(0, 16)}`;
    assertRunId(runId);
    // A worker may claim a run it is still running itself: it stalled past its lease (a long pause,
    // a stopped process) and nobody else took the run. The claim's newer epoch fences the stalled
    // attempt out; it stops at its next write or renewal, and the run continues under the claim.
    while (claimed && this.active.has(runId)) await this.active.get(runId)!.done;
    if (this.active.has(runId)) throw new CairnError('RUN_LOCKED', `Run ${runId} is already running in this process.`, { runId });
    const entry: { session?: RunSession; done: Promise<unknown> } = { done: Promise.resolve() };
    let finish!: () => void;
    entry.done = new Promise<void>((resolve) => (finish = resolve));
    this.active.set(runId, entry);
    try {
      return await this.runLocked(store, def, parsed, inputHash, runId, options, entry, claimed);
    } finally {
      this.active.delete(runId);
      finish();
    }
  }

  /**
   * Queues a run for workers (`cairn worker`, {@link Cairn.work}) on a store with a work queue
   * (Postgres, SQLite; `memory:` within one process) and returns at once. The run gets the same id as
   * `run` would give it; submitting it again is a no-op while it is queued or running, re-queues
   * it if it failed or was interrupted, and, given `inputs`, lets a waiting run continue.
   */
  async submit<D extends Definition>(def: D, input: InputOf<D>, options: SubmitOptions = {}): Promise<RunSummary<ResultOf<D>>> {
    this.register(def);
    const store = await this.storePromise;
    if (!store.queue) {
      throw new CairnError(
        'NOT_SUPPORTED',
        `The ${store.kind} store has no work queue: submit runs to a Postgres (postgres://…) or SQLite (sqlite:<path>) store, or run them in this process with cairn run (cairn.run() from code).`,
      );
    }
    const parsed = parseInput(def, input);
    const inputHash = hashInput(parsed);
    const runId = options.runId ?? `${def.name.slice(0, 100)}-${inputHash.slice(0, 16)}`;
    assertRunId(runId);
    const budget = options.budget && checkSpend(options.budget, 'The budget');
    const kind = isPipeline(def) ? 'pipeline' : 'workflow';
    for (let tries = 0; ; tries++) {
      let record = await store.getRun(runId);
      if (!record) {
        const data = newRunData(kind, parsed, inputHash, stepNames(def));
        if (options.inputs) giveAnswers(data, options.inputs, undefined);
        if (options.source) data.source = { ...options.source };
        if (budget) setBudget(data, budget);
        addHistory(data, 'run:submitted', 'Submitted for workers.');
        try {
          record = await store.createRun({ id: runId, name: def.name, status: 'pending', data });
        } catch (error) {
          if (!isCairnError(error, 'ALREADY_EXISTS') || tries >= 5) throw error;
          continue;
        }
      } else {
        if (needsRepair(record)) record = await this.repair(store, record, def, parsed, inputHash);
        const data = checkExisting(record, def, inputHash);
        checkAnswersFor(runId, record.status, data, options.inputs, false);
        const requeue = resubmitStatus(record.status, data, options.inputs, budget);
        if (requeue) {
          if (options.inputs) giveAnswers(data, options.inputs, record.status === 'waiting' ? data.waitingFor : undefined);
          if (options.source) data.source = { ...options.source };
          if (budget) setBudget(data, budget);
          addHistory(data, 'run:submitted', `Submitted again for workers (was ${record.status}).`);
          try {
            record = await store.updateRun(runId, record.version, { status: requeue, data });
          } catch (error) {
            if (!isCairnError(error, 'CONFLICT') || tries >= 5) throw error;
            continue;
          }
        }
      }
      if (claimReason(record.status)) await store.queue.enqueue(runId);
      return toSummary(record);
    }
  }

  /**
   * Works as a worker: claims queued runs of the registered definitions (and runs whose worker
   * died or stalled past its lease), runs up to `concurrency` of them at once, and returns when
   * `signal` aborts (after handing back or finishing what it holds) or, with `exitWhenIdle`, when
   * nothing is left to claim.
   */
  work(options: WorkOptions = {}): Promise<WorkReport> {
    return runWorker(
      {
        store: () => this.storePromise,
        names: () => [...this.definitions.keys()],
        owner: this.settings.owner,
        lockTtlMs: this.settings.lockTtlMs,
        runClaim: (claim) => this.runClaim(claim),
        interruptAll: (reason) => {
          for (const { session } of this.active.values()) session?.abort(reason);
        },
        emit: (event, payload) => this.emit(event, payload),
      },
      options,
    );
  }

  /** Runs a claimed run under the claim's lease. */
  private async runClaim(claim: Claim): Promise<RunSummary> {
    const store = await this.storePromise;
    const def = this.definitions.get(claim.run.name);
    let data: RunData | undefined;
    try {
      data = readRunData(claim.run); // CHECKPOINT_CORRUPT, FORMAT_TOO_NEW
    } catch (error) {
      await store.releaseLock(claim.lease);
      throw error;
    }
    if (!def || !data) {
      await store.releaseLock(claim.lease);
      throw new CairnError('NOT_FOUND', `Run ${claim.run.id} belongs to ${claim.run.name}, which this worker does not know.`, {
        runId: claim.run.id,
      });
    }
    return this.runWith(def, data.input, { runId: claim.run.id }, claim.lease);
  }

  private async runLocked(
    store: Store,
    def: Definition,
    input: unknown,
    inputHash: string,
    runId: string,
    options: RunOptions,
    entry: { session?: RunSession },
    claimed?: Lease,
  ): Promise<RunSummary> {
    const early = async (record: RunRecord): Promise<RunSummary> => {
      if (claimed) await store.releaseLock(claimed);
      return toSummary(record);
    };
    if (options.forceRestart) {
      const lock = await store.getLock(runId);
      if (lock && !isLeaseStale(lock)) throw runLockedError(lock);
      await store.deleteRun(runId);
    }
    const kind = isPipeline(def) ? 'pipeline' : 'workflow';
    const budget = options.budget && checkSpend(options.budget, 'The budget', { runId });
    let record = await store.getRun(runId);
    let reason = 'first attempt';
    let previous: { status: RunStatus; waitingFor: string | undefined } | undefined;
    if (!record) {
      const order = stepNames(def);
      try {
        record = await store.createRun({ id: runId, name: def.name, status: 'pending', data: newRunData(kind, input, inputHash, order) });
      } catch (error) {
        if (!isCairnError(error, 'ALREADY_EXISTS')) throw error;
        record = await store.getRun(runId);
        if (!record) throw error;
      }
    } else {
      if (needsRepair(record)) record = await this.repair(store, record, def, input, inputHash);
      const data = checkExisting(record, def, inputHash);
      checkAnswersFor(runId, record.status, data, options.inputs, false);
      previous = { status: record.status === 'running' ? 'interrupted' : record.status, waitingFor: data.waitingFor };
      if (record.status === 'cancelled') return early(record);
      if (record.status === 'completed' && (await isStillComplete(store, def, record, data))) return early(record);
      reason =
        record.status === 'completed' ? 'completed run revisited: something it depends on changed' : `resumed (was ${record.status})`;
    }
    const config: SessionConfig = { store, events: this, ...this.settings, limiter: await this.limiterOf(def) };
    const session = await RunSession.start(
      config,
      runId,
      reason,
      (data) => {
        if (options.inputs) giveAnswers(data, options.inputs, previous?.status === 'waiting' ? previous.waitingFor : undefined);
        if (options.source) data.source = { ...options.source };
        if (budget) setBudget(data, budget);
        if (data.order.length === 0) data.order.push(...stepNames(def));
      },
      claimed,
    );
    entry.session = session;
    this.emit('run:start', { runId, name: def.name, attempt: session.attempt, resumed: session.attempt > 1 });
    try {
      if (isPipeline(def)) await executePipeline(session, def);
      else await executeWorkflow(session, def as Workflow<unknown, Record<string, unknown>, string>);
    } catch (error) {
      if (!session.isEnded) {
        const message = error instanceof Error ? error.message : String(error);
        if (isCairnError(error) && REFUSALS.has(error.code) && previous) {
          // the code cannot run this run (state too new, no migrate): refuse and leave the run as it was
          addHistory(session.data, 'run:refused', message);
          if (previous.waitingFor !== undefined) session.data.waitingFor = previous.waitingFor;
          await session.end(previous.status, `refused: ${message}`).catch(() => undefined);
        } else {
          // an error outside any stage (a damaged snapshot, a full disk): record it if possible
          addHistory(session.data, 'run:error', message);
          session.data.error = serializeError(error);
          await session.end('failed', 'the engine could not continue the run').catch(() => undefined);
        }
      }
      const lost = session.leaseLostError;
      if (lost) throw lost;
      const stored = await store.getRun(runId).catch(() => undefined);
      if (stored) this.emit('run:end', { runId, status: stored.status, summary: toSummary(stored) });
      // the store could not take a write but took the record of the interruption: a resumable run, as after Ctrl-C
      if (stored?.status === 'interrupted' && session.storeOutageError) return toSummary(stored);
      throw error;
    }
    // another process took the run over: it reports the run's end, not this one
    const lost = session.leaseLostError;
    if (lost) throw lost;
    const stored = await store.getRun(runId);
    const summary = stored ? toSummary(stored) : session.summary();
    this.emit('run:end', { runId, status: summary.status, summary });
    const refused = stored && options.inputs && summary.status === 'waiting' ? readRunData(stored)?.waitRefused : undefined;
    if (refused !== undefined)
      throw new CairnError('INVALID_INPUT', `${refused}. Run ${runId} still waits for ${summary.waitingFor}.`, { runId });
    return summary;
  }

  /** Rebuilds the summary of a run whose record was damaged (see run-repair.ts) and writes it. */
  private repair(store: Store, record: RunRecord, def: Definition, input: unknown, inputHash: string): Promise<RunRecord> {
    const target = {
      kind: isPipeline(def) ? ('pipeline' as const) : ('workflow' as const),
      name: def.name,
      order: stepNames(def),
      input,
      inputHash,
    };
    return repairRun(store, record, target, (warning) => this.emit('warning', warning));
  }

  /** Continues a run by id, with values for `waitFor` if it is waiting. */
  async resume(runId: string, options: ResumeOptions = {}): Promise<RunSummary> {
    assertRunId(runId);
    const store = await this.storePromise;
    const record = await store.getRun(runId);
    if (!record) throw new CairnError('NOT_FOUND', `Run ${runId} not found in ${store.url}.`, { runId });
    const data = readRunData(record);
    if (!data)
      throw new CairnError('INVALID_INPUT', `Run ${runId} is a CheckpointManager workflow, not a pipeline or workflow run.`, { runId });
    if (record.status === 'cancelled') {
      throw new CairnError(
        'INVALID_INPUT',
        `Run ${runId} was cancelled; start it over with run(…, { forceRestart: true }) (cairn run <module> --force-restart).`,
        { runId },
      );
    }
    checkAnswersFor(runId, record.status, data, options.inputs, true);
    if (options.definition) this.register(options.definition);
    const def = this.definitions.get(record.name);
    if (!def) {
      throw new CairnError(
        'NOT_FOUND',
        `Run ${runId} belongs to ${record.name}, which this process does not know: pass { definition } or new Cairn({ definitions: [...] }).`,
        { runId },
      );
    }
    return this.run(def, data.input, {
      runId,
      ...(options.inputs ? { inputs: options.inputs } : {}),
      ...(options.budget ? { budget: options.budget } : {}),
    });
  }

  /**
   * Forks a run at checkpoint `fromSeq`: a new run (default id `<run id>-fork-<seq>`) holding the
   * history up to that checkpoint, left `interrupted` so that `resume` replays what came after.
   * A pipeline fork keeps the stages completed by then (outputs, item ledgers, artifact files) and
   * reruns the rest; a workflow fork continues from that step and asks again for `waitFor` values.
   * The original run is not changed.
   *
   * @example
   * const fork = await cairn.fork('review-3f2a9c1d', { fromSeq: 2 }); // → review-3f2a9c1d-fork-2
   * await cairn.resume(fork.id, { inputs: { approval: false } });   // takes the other edge
   */
  async fork(runId: string, options: ForkOptions): Promise<RunSummary> {
    const store = await this.storePromise;
    return toSummary(await forkRun(store, runId, options));
  }

  /** The run's summary, or undefined. */
  async get(runId: string): Promise<RunSummary | undefined> {
    assertRunId(runId);
    const record = await (await this.storePromise).getRun(runId);
    return record ? toSummary(record) : undefined;
  }

  /** Summaries of the runs matching `filter`. */
  async list(filter: RunFilter = {}): Promise<RunSummary[]> {
    return (await (await this.storePromise).listRuns(filter)).map((r) => toSummary(r));
  }

  /**
   * Cancels a run. A run of this process stops (in-flight work finishes within the grace period);
   * a run held by another process is asked to stop (it looks for a request every second); any other run is
   * marked `cancelled` at once. A completed run stays completed.
   */
  async cancel(runId: string): Promise<RunSummary> {
    assertRunId(runId);
    const store = await this.storePromise;
    const local = this.active.get(runId);
    if (local?.session) {
      local.session.abort(new CairnError('RUN_CANCELLED', `Run ${runId} was cancelled.`, { runId }));
      await local.done;
    }
    for (let tries = 0; ; tries++) {
      const record = await store.getRun(runId);
      if (!record) throw new CairnError('NOT_FOUND', `Run ${runId} not found in ${store.url}.`, { runId });
      const data = readRunData(record);
      if (!data || record.status === 'completed' || record.status === 'cancelled') return toSummary(record);
      const held = await store.getLock(runId);
      try {
        if (held) {
          data.cancelRequested = true;
          addHistory(data, 'run:cancel-requested', `Cancel requested; ${held.owner} stops within about a second.`);
          if (store.requestCancel) {
            // only the holder writes the run record on this store: ask it, and show the request in the summary
            await store.requestCancel(runId);
            return toSummary({ ...record, data });
          }
          return toSummary(await store.updateRun(runId, record.version, { data }));
        }
        addHistory(data, 'run:cancelled', 'Run cancelled.');
        return toSummary(await store.updateRun(runId, record.version, { status: 'cancelled', data }));
      } catch (error) {
        if (!isCairnError(error, 'CONFLICT') || tries >= 5) throw error;
      }
    }
  }

  /** Closes the store if this instance opened it. */
  async close(): Promise<void> {
    if (this.ownsStore) await (await this.storePromise).close();
  }
}

/** Stage (pipeline) or node (workflow) names, in definition order. */
function stepNames(def: Definition): string[] {
  return isPipeline(def) ? def.stages.map((s) => s.name) : (def as Workflow).nodes.map((n) => n.name);
}

/** Errors that mean "this code cannot run this run": the run is left as it was. */
const REFUSALS: ReadonlySet<string> = new Set(['STATE_TOO_NEW', 'FORMAT_TOO_NEW', 'INVALID_DEFINITION']);

/**
 * Refuses values for waits the run is not waiting on: with `strict` (resume), any value given to a
 * run that is not waiting; always, a name other than the one a waiting run waits for. Values given
 * to `run`/`submit` for a run that is not waiting answer the waits still to come.
 */
function checkAnswersFor(
  runId: string,
  status: RunStatus,
  data: RunData,
  inputs: Readonly<Record<string, unknown>> | undefined,
  strict: boolean,
): void {
  // a run waiting for its budget takes values for the waits still to come, as a run that does not wait
  const waiting = status === 'waiting' && data.waitingFor !== BUDGET_WAIT ? data.waitingFor : undefined;
  // the value already given for a name, given again (the same command after a crash), is no news
  const names = Object.entries(inputs ?? {})
    .filter(([name, value]) => name === waiting || !isSameAnswer(data, name, value))
    .map(([name]) => name);
  if (names.length === 0) return;
  if (waiting === undefined) {
    if (!strict || status === 'waiting') return;
    const next =
      status === 'completed'
        ? ` To run its steps again with other answers, fork it (cairn fork ${runId} --from <seq>) and answer the fork.`
        : ' Resume it without input values; give them when it waits.';
    throw new CairnError(
      'INVALID_INPUT',
      `Run ${runId} is ${status}, not waiting for input: it takes no value for ${names.join(', ')}.${next}`,
      {
        runId,
        status,
      },
    );
  }
  const others = names.filter((name) => name !== waiting);
  if (others.length > 0) {
    throw new CairnError(
      'INVALID_INPUT',
      `Run ${runId} waits for ${waiting}, not for ${others.join(', ')}. Answer with --input ${waiting}=<value> (inputs: { ${waiting}: … }).`,
      { runId, waitingFor: waiting },
    );
  }
}

/**
 * The status a resubmitted run is queued again with, or undefined when submitting changes nothing:
 * queued and running runs stay as they are, completed and cancelled ones are final, a waiting one
 * continues only once it is given the input it waits for.
 */
function resubmitStatus(
  status: RunStatus,
  data: RunData,
  inputs: Readonly<Record<string, unknown>> | undefined,
  budget: Spend | undefined,
): RunStatus | undefined {
  if (status === 'failed') return 'pending';
  if (status === 'waiting' && data.waitingFor === BUDGET_WAIT) return budget ? 'pending' : undefined;
  if (status === 'waiting' && data.waitingFor !== undefined && inputs && data.waitingFor in inputs) return 'pending';
  return undefined;
}

/** Sets (or, given `{}`, removes) a run's budget, with a history entry when it changes. */
function setBudget(data: RunData, budget: Spend): void {
  const next = Object.keys(budget).length === 0 ? undefined : { ...budget };
  if (isDeepStrictEqual(next, data.budget)) return;
  if (next) data.budget = next;
  else delete data.budget;
  addHistory(data, 'run:budget', next ? `Budget set to ${formatSpend(next)}.` : 'Budget removed.');
}

function parseInput(def: Definition, input: unknown): unknown {
  const schema = def.options.input;
  if (!schema) return input;
  try {
    return schema.parse(input);
  } catch (error) {
    throw new CairnError('INVALID_INPUT', `Input of ${def.name} is invalid: ${refusalText(error)}`, {}, { cause: error });
  }
}

function hashInput(input: unknown): string {
  try {
    return canonicalHash(input ?? null);
  } catch (error) {
    throw new CairnError(
      'INVALID_INPUT',
      'The run input must be plain data (objects, arrays, strings, numbers, booleans, dates, maps, sets), so that it can be stored and hashed.',
      {},
      { cause: error },
    );
  }
}

function checkExisting(record: RunRecord, def: Definition, inputHash: string): RunData {
  const data = readRunData(record);
  if (!data || record.name !== def.name) {
    throw new CairnError(
      'INVALID_INPUT',
      `Run ${record.id} belongs to ${data ? record.name : 'a CheckpointManager workflow'}, not to ${def.name}. Choose another runId.`,
      { runId: record.id },
    );
  }
  if (data.inputHash !== inputHash) {
    throw new CairnError(
      'INVALID_INPUT',
      `Run ${record.id} was started with a different input. Use another run id ({ runId }, --run-id), or start it over with this input ({ forceRestart: true }, --force-restart).`,
      { runId: record.id },
    );
  }
  return data;
}

/**
 * A completed pipeline is returned from cache only if every stage would be skipped (fingerprints,
 * artifacts). The plan reads intact records only, so a damaged record that held a stage's only
 * completion makes that stage run; one already superseded by a later completion does not. A
 * completed workflow is, while its definition's fingerprint is the one it ran under.
 */
async function isStillComplete(store: Store, def: Definition, record: RunRecord, data: RunData): Promise<boolean> {
  if (!isPipeline(def)) return isSameDefinition(def as Workflow<unknown, Record<string, unknown>, string>, data);
  // a stage renamed since (renamedFrom): the run goes through the plan once, which moves its summary to the new name (every stage is skipped)
  if (def.stages.some((s) => s.options.renamedFrom !== undefined && !(s.name in data.stages) && s.options.renamedFrom in data.stages))
    return false;
  const { completed } = await readCompletedStages(store, record.id);
  const plans = await planPipeline(store, record.id, def, structuredClone(data), completed);
  return plans.every((p) => p.action !== 'run');
}
