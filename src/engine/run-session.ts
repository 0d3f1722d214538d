/**
 * One process's attempt at a run: holds the run's lease (renewed in the background, outside user
 * code), records the attempt, serializes updates of the run summary, and turns Ctrl-C/SIGTERM,
 * `cairn.cancel` and a lost lease into an abort of the run's signal.
 */
import { CairnError, isCairnError, isStoreOutage, serializeError, type SerializedError } from '../core/errors.js';
import { HOST, nowIso } from '../stores/common.js';
import type { CheckpointInput, CheckpointRef, Lease, RunRecord, RunStatus, Store } from '../stores/store.js';
import type { TypedEmitter } from './events.js';
import type { Limiter } from './limits.js';
import { addHistory, MAX_MESSAGE, readRunData, toSummary, type RunData } from './run-data.js';
import { addInto, budgetReached, runSpend, type Spend } from './spend.js';
import type { CairnEvents, CommitPoint, EngineHooks, RunSummary } from './types.js';

export interface SessionConfig {
  readonly store: Store;
  readonly events: TypedEmitter;
  readonly hooks: EngineHooks;
  readonly owner: string;
  readonly lockTtlMs: number;
  readonly gracePeriodMs: number;
  readonly handleSignals: boolean;
  /** The named rate limits (`new Cairn({ limits })`), on the store's shared state. */
  readonly limiter?: Limiter;
}

export class RunSession {
  readonly controller = new AbortController();
  private heartbeat: NodeJS.Timeout | undefined;
  private saving: Promise<unknown> = Promise.resolve();
  private ended = false;
  /** Set once the store refused a write or a renewal because another process took the run over. */
  private lostLease: CairnError | undefined;
  /** Set once the store could not take a write for a reason outside the run (full, busy or unreachable past its retry bound). */
  private outage: CairnError | undefined;
  private readonly fencedStore: Store;

  private constructor(
    readonly config: SessionConfig,
    private lease: Lease,
    private record: RunRecord,
    readonly data: RunData,
  ) {
    this.fencedStore = fenceStore(
      config.store,
      (error, operation) => this.leaseLost(error, operation),
      (error, operation) => this.storeOutage(error, operation),
    );
  }

  get runId(): string {
    return this.record.id;
  }

  /** The store, through which a write refused with `LEASE_LOST` stops the run (nothing more is written). */
  get store(): Store {
    return this.fencedStore;
  }

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  get writeOptions(): { lease: Lease } {
    return { lease: this.lease };
  }

  /**
   * Takes the run's lease (`RUN_LOCKED` if a live process holds it) unless a worker's claim already
   * holds it (`claimed`), records a new attempt, and marks an earlier attempt that never ended as crashed.
   */
  static async start(
    config: SessionConfig,
    runId: string,
    reason: string,
    prepare?: (data: RunData) => void,
    claimed?: Lease,
  ): Promise<RunSession> {
    const lease = claimed ?? (await config.store.acquireLock(runId, { owner: config.owner, ttlMs: config.lockTtlMs }));
    try {
      const record = await config.store.getRun(runId);
      if (!record) throw new CairnError('NOT_FOUND', `Run ${runId} disappeared while it was being opened.`, { runId });
      const data = readRunData(record);
      if (!data)
        throw new CairnError('INVALID_INPUT', `Run ${runId} was not written by the engine; open it with CheckpointManager.`, { runId });
      const session = new RunSession(config, lease, record, data);
      const last = data.attempts.at(-1);
      if (last && last.endedAt === undefined) {
        data.attempts[data.attempts.length - 1] = {
          ...last,
          outcome: 'crashed',
          reason: 'the process stopped without saving (killed or lost power)',
        };
        addHistory(
          data,
          'attempt:crashed',
          `Attempt ${last.n} (pid ${last.pid} on ${last.host}) ended without saving; resuming from the last checkpoint.`,
        );
        session.emit('warning', {
          runId,
          code: 'ATTEMPT_CRASHED',
          message: `Attempt ${last.n} crashed; resuming from the last checkpoint.`,
        });
      }
      data.attempts.push({ n: (last?.n ?? 0) + 1, startedAt: nowIso(), host: HOST, pid: process.pid });
      addHistory(data, 'attempt:start', reason);
      delete data.error;
      delete data.waitingFor;
      delete data.waitRefused;
      delete data.cancelRequested;
      delete data.currentStage;
      prepare?.(data);
      await session.save('running');
      session.startHeartbeat();
      if (config.handleSignals) registerSession(session);
      return session;
    } catch (error) {
      await config.store.releaseLock(lease).catch(() => undefined);
      throw error;
    }
  }

  get attempt(): number {
    return this.data.attempts.at(-1)?.n ?? 1;
  }

  /** The run's spend now (what items and stages reported, saved or not), or undefined when nothing was. */
  get spent(): Spend | undefined {
    if (this.spentDirty) {
      this.spentTotal = runSpend(this.data.spend);
      this.spentDirty = false;
    }
    return this.spentTotal;
  }

  private spentTotal: Record<string, number> | undefined;
  private spentDirty = true;
  private spendSave: NodeJS.Timeout | undefined;

  /**
   * Adds what a try reported: to its ledger's spend (`ledger`, for items) or to the stage's settled
   * spend (`ctx.spend`). The summary is saved within {@link SPEND_SAVE_MS} (the ledger entry is
   * what keeps an item's spend; the summary lets other processes see it).
   */
  addSpend(stage: string, ledger: string | undefined, units: Spend): void {
    const stored = (this.data.spend ??= {});
    let into: Record<string, number>;
    if (ledger === undefined) {
      stored.settled ??= {};
      into = Object.hasOwn(stored.settled, stage) ? stored.settled[stage]! : (stored.settled[stage] = {});
    } else {
      stored.open ??= {};
      into = (Object.hasOwn(stored.open, ledger) ? stored.open[ledger]! : (stored.open[ledger] = { stage, spend: {} })).spend;
    }
    addInto(into, units);
    if (this.spentTotal && !this.spentDirty) addInto(this.spentTotal, units);
    else this.spentDirty = true;
    this.saveSoon();
  }

  /** What a ledger read says its items spent: it replaces what the summary held for that ledger. */
  setLedgerSpend(stage: string, ledger: string, spend: Spend | undefined): void {
    const open = this.data.spend?.open;
    if (!spend && !(open && Object.hasOwn(open, ledger))) return;
    const stored = (this.data.spend ??= {});
    stored.open ??= {};
    if (spend) stored.open[ledger] = { stage, spend: { ...spend } };
    else delete stored.open[ledger];
    this.spentDirty = true;
  }

  /** The unit whose spend reached the run's budget, or undefined (always, without a budget). */
  budgetReached(): { unit: string; spent: number; budget: number } | undefined {
    const budget = this.data.budget;
    return budget === undefined ? undefined : budgetReached(budget, this.spent);
  }

  private saveSoon(): void {
    if (this.spendSave !== undefined || this.ended) return;
    this.spendSave = setTimeout(() => {
      this.spendSave = undefined;
      if (!this.ended) this.save().catch(() => undefined); // a failed save is retried by the next one
    }, SPEND_SAVE_MS);
    this.spendSave.unref();
  }

  get isEnded(): boolean {
    return this.ended;
  }

  get status(): RunStatus {
    return this.record.status;
  }

  summary<R>(): RunSummary<R> {
    return toSummary<R>(this.record);
  }

  emit<K extends keyof CairnEvents>(event: K, payload: CairnEvents[K]): void {
    this.config.events.emit(event, payload);
  }

  commitPoint(point: CommitPoint, info: { stage?: string; count?: number } = {}): void {
    this.config.hooks.onCommitPoint?.(point, { runId: this.runId, ...info });
  }

  /** Stops the run: everything waiting on `signal` sees `reason`. The first reason wins. */
  abort(reason: CairnError): void {
    if (!this.controller.signal.aborted) this.controller.abort(reason);
  }

  /** Another process holds the run now (its epoch is newer): stop, and write nothing more. */
  private leaseLost(error: CairnError, operation: string): void {
    if (!this.lostLease) this.lostLease = error;
    // every refusal is reported: a write the store refused is a write that did not land
    this.emit('warning', { runId: this.runId, code: 'LEASE_LOST', message: `${operation} refused: ${error.message}`, operation });
    this.abort(error);
  }

  /**
   * The store could not take a write: its disk is full, or it stayed locked or unreachable past its
   * retry bound. The attempt stops (in-flight work finishes as after Ctrl-C) and ends `interrupted`
   * with this error: nothing about the run is wrong, and it resumes once the store takes writes.
   */
  private storeOutage(error: CairnError, operation: string): void {
    if (this.outage) return;
    this.outage = error;
    this.emit('warning', { runId: this.runId, code: error.code, message: `${operation} failed: ${error.message}`, operation });
    this.abort(error);
  }

  /** The store error that stopped this attempt, if one did (see {@link storeOutage}). */
  get storeOutageError(): CairnError | undefined {
    return this.outage;
  }

  /** Appends a checkpoint under the lease, emits `checkpoint`. */
  async appendCheckpoint(input: CheckpointInput): Promise<CheckpointRef> {
    const ref = await this.store.appendCheckpoint(this.runId, input, this.writeOptions);
    this.emit('checkpoint', { runId: this.runId, seq: ref.seq, kind: ref.kind, ...(ref.stage === undefined ? {} : { stage: ref.stage }) });
    return ref;
  }

  /**
   * Saves the run summary (and status). Writes are serialized; a concurrent change by another
   * process (`cairn.cancel`) is merged: a cancel request aborts this run.
   */
  save(status: RunStatus = this.record.status): Promise<void> {
    const next = this.saving.then(() => this.saveNow(status));
    this.saving = next.catch(() => undefined);
    return next;
  }

  private async saveNow(status: RunStatus): Promise<void> {
    for (let tries = 0; ; tries++) {
      try {
        this.record = await this.store.updateRun(this.runId, this.record.version, { status, data: this.data }, this.writeOptions);
        return;
      } catch (error) {
        if (!isCairnError(error, 'CONFLICT') || tries >= 3) throw error;
        const stored = await this.store.getRun(this.runId);
        if (!stored) throw new CairnError('NOT_FOUND', `Run ${this.runId} was deleted while running.`, { runId: this.runId });
        this.record = stored;
        this.checkCancelRequest(stored);
      }
    }
  }

  private checkCancelRequest(stored: RunRecord): void {
    const data = readRunData(stored);
    if (data?.cancelRequested || stored.cancelRequested || stored.status === 'cancelled') {
      this.abort(new CairnError('RUN_CANCELLED', `Run ${this.runId} was cancelled.`, { runId: this.runId }));
    }
  }

  /**
   * When this attempt's lease runs out by this process's own clock (ms since the epoch). Past it,
   * the process was stopped or starved (SIGSTOP, a laptop lid, swap) and another may hold the run
   * now: nothing new (a paid call) should start before {@link renewNow} says this one still holds it.
   */
  get leaseExpiresAtMs(): number {
    if (this.leaseExpiry?.iso !== this.lease.expiresAt)
      this.leaseExpiry = { iso: this.lease.expiresAt, ms: Date.parse(this.lease.expiresAt) };
    return this.leaseExpiry.ms;
  }

  /** True when the lease has run out by this process's clock (see {@link leaseExpiresAtMs}). */
  get isLeaseOverdue(): boolean {
    return Date.now() >= this.leaseExpiresAtMs;
  }

  /** The lease's expiry, parsed once per renewal (it is looked at before every item). */
  private leaseExpiry: { iso: string; ms: number } | undefined;

  /** Renews the lease now; when it was taken over, the run is aborted (`LEASE_LOST`) before this resolves. */
  async renewNow(): Promise<void> {
    await this.beat();
  }

  /**
   * The lease is renewed every third of its time to live; a cancel request (`cairn cancel` from
   * another process) is looked for every second, so that a run stops within about a second of
   * being asked, whatever its lease's length. A look is one read of the run record.
   */
  private startHeartbeat(): void {
    const renewEvery = Math.max(50, Math.floor(this.config.lockTtlMs / 3));
    const tick = Math.min(renewEvery, CANCEL_CHECK_MS);
    let lastRenewal = Date.now();
    this.heartbeat = setInterval(() => {
      const renew = Date.now() - lastRenewal >= renewEvery - tick / 2;
      if (renew) lastRenewal = Date.now();
      void this.beat(renew);
    }, tick);
    this.heartbeat.unref();
  }

  private async beat(renew = true): Promise<void> {
    if (this.ended) return;
    try {
      if (renew) this.lease = await this.store.renewLock(this.lease, { ttlMs: this.config.lockTtlMs });
      const stored = await this.store.getRun(this.runId);
      if (stored && (stored.version !== this.record.version || stored.cancelRequested)) this.checkCancelRequest(stored);
    } catch {
      // LEASE_LOST stopped the run (see fenceStore); other errors (a busy store) are retried at the
      // next beat: the lease has slack for that
    }
  }

  /** Whether the run was taken over by another process (this one must not write again). */
  get isLeaseLost(): boolean {
    return this.lostLease !== undefined;
  }

  /** The `LEASE_LOST` error the store answered with, once the run was taken over. */
  get leaseLostError(): CairnError | undefined {
    return this.lostLease;
  }

  /** Stops without writing anything: the lease was taken over by another process. */
  abandon(): Promise<void> {
    this.ended = true;
    clearInterval(this.heartbeat);
    clearTimeout(this.spendSave);
    unregisterSession(this);
    return Promise.resolve();
  }

  /** Ends the attempt: records its outcome, saves the status, releases the lease. */
  async end(status: RunStatus, reason: string): Promise<void> {
    if (this.ended) return;
    if (this.lostLease) return this.abandon();
    this.ended = true;
    clearInterval(this.heartbeat);
    clearTimeout(this.spendSave);
    unregisterSession(this);
    if (this.outage) {
      // whichever step met it, a store that could not take a write interrupts the run, never fails it
      if (status === 'failed') status = 'interrupted';
      this.data.error = serializeError(this.outage);
    }
    const last = this.data.attempts.at(-1);
    const cut = reason.length > MAX_MESSAGE ? `${reason.slice(0, MAX_MESSAGE)}…` : reason;
    if (last) this.data.attempts[this.data.attempts.length - 1] = { ...last, endedAt: nowIso(), outcome: status, reason: cut };
    try {
      try {
        await this.save(status);
      } catch (error) {
        if (!isCairnError(error, 'PAYLOAD_TOO_LARGE')) throw error;
        // the summary does not fit the store's limit: keep the status, drop what is bulky and kept elsewhere
        compactRunData(this.data);
        await this.save(status);
      }
      this.commitPoint('run');
    } finally {
      await this.store.releaseLock(this.lease).catch(() => undefined);
    }
  }
}

/** How often a running attempt looks for a cancel request (at most; a shorter lease renewal looks as often). */
const CANCEL_CHECK_MS = 1000;

/** Spend reported while a stage runs reaches the stored summary within this time (other processes read it there). */
const SPEND_SAVE_MS = 2000;

const FENCED_WRITES: ReadonlySet<PropertyKey> = new Set(['updateRun', 'appendCheckpoint', 'appendItems', 'recordArtifacts', 'renewLock']);

/**
 * The store as a session sees it: a write (or renewal) refused with `LEASE_LOST` calls `onLost`
 * before the error reaches the caller, so that whichever write learns it first stops the run; a
 * write the store could not take (`STORE_FULL`, `STORE_BUSY`, `STORE_UNAVAILABLE`) calls
 * `onOutage` the same way. A renewal that failed so is not one: the next beat tries again.
 */
function fenceStore(
  store: Store,
  onLost: (error: CairnError, operation: string) => void,
  onOutage: (error: CairnError, operation: string) => void,
): Store {
  return new Proxy(store, {
    get(target, property) {
      const value: unknown = Reflect.get(target, property, target);
      if (typeof value !== 'function') return value;
      const bound = (value as (...args: unknown[]) => unknown).bind(target);
      if (!FENCED_WRITES.has(property)) return bound;
      return (...args: unknown[]) =>
        (bound(...args) as Promise<unknown>).catch((error: unknown) => {
          if (isCairnError(error, 'LEASE_LOST')) onLost(error, String(property));
          else if (isStoreOutage(error) && property !== 'renewLock') onOutage(error, String(property));
          throw error;
        });
    },
  });
}

/**
 * Shrinks a run summary that exceeds the payload limit: stacks and causes go (the error checkpoint
 * keeps them), and so does a huge result (the last stage's checkpoint keeps it).
 */
function compactRunData(data: RunData): void {
  const trim = (e: SerializedError | undefined): SerializedError | undefined =>
    e && {
      name: e.name,
      message: e.message.length > 500 ? `${e.message.slice(0, 500)}…` : e.message,
      ...(e.code === undefined ? {} : { code: e.code }),
    };
  if (data.error) data.error = { ...trim(data.error)!, ...(data.error.stage === undefined ? {} : { stage: data.error.stage }) };
  for (const stage of Object.values(data.stages)) if (stage.error) stage.error = trim(stage.error);
  for (const entry of data.history) if (entry.message.length > 500) Object.assign(entry, { message: `${entry.message.slice(0, 500)}…` });
  if (data.hasResult) {
    delete data.result;
    data.hasResult = false;
    addHistory(data, 'run:result-too-large', 'The result is too large for the run summary; read it from the last checkpoint.');
  }
  data.history.splice(0, Math.max(0, data.history.length - 50));
  addHistory(
    data,
    'run:compacted',
    'The run summary exceeded the payload limit: stacks, causes and long messages were cut (checkpoints keep them).',
  );
  delete data.fileHashes;
}

// Signals: while runs are active, SIGINT/SIGTERM interrupt them gracefully; a second signal exits at once.

const active = new Set<RunSession>();
let interrupting = false;

function onSignal(signal: NodeJS.Signals): void {
  const code = signal === 'SIGINT' ? 130 : 143;
  if (interrupting) {
    // stderr is written synchronously to a terminal, a file or a pipe: the line is out before the exit
    process.stderr.write(
      `\n${signal} again: exiting now without waiting for in-flight work. Every result saved so far is kept; ` +
        `the items and steps that were running run again on resume.\n`,
    );
    process.exit(code);
  }
  interrupting = true;
  process.exitCode = code;
  for (const session of active) {
    session.abort(
      new CairnError('RUN_INTERRUPTED', `Run ${session.runId} was interrupted by ${signal}.`, {
        runId: session.runId,
        signal,
      }),
    );
  }
}

function registerSession(session: RunSession): void {
  if (active.size === 0) {
    interrupting = false;
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
  }
  active.add(session);
}

function unregisterSession(session: RunSession): void {
  if (!active.delete(session) || active.size > 0) return;
  process.off('SIGINT', onSignal);
  process.off('SIGTERM', onSignal);
}
