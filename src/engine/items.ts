/**
 * `ctx.items(name, list, fn, options)`: runs `fn` over a list with item-level resume. Done items
 * (read from the stage's ledger) are skipped, results are group-committed through a
 * {@link LedgerWriter}, failures are recorded and retried per policy, and results come back in
 * input order whatever the concurrency.
 */
import { setMaxListeners } from 'node:events';
import { CairnError, reviveError, serializeError } from '../core/errors.js';
import { assertName } from '../core/ids.js';
import { findReusable, itemHash, reuseSetup, type DoneEntry } from './item-reuse.js';
import {
  graceSignal,
  Info,
  isThenable,
  itemFailed,
  itemKeys,
  limiterFor,
  oneByOne,
  resolveItemsOptions,
  settleWithinGrace,
  validRate,
} from './items-parts.js';
import { LedgerWriter } from './ledger-writer.js';
import type { Limiter, LimitGrant } from './limits.js';
import { backoffDelay, isWaitSignal, retryAfterOf, shouldRetry, sleep, WaitSignal, withTimeout } from './retry.js';
import { addHistory, type StoredItemCounts } from './run-data.js';
import type { RunSession } from './run-session.js';
import { addInto, BUDGET_WAIT, checkSpend, type Spend } from './spend.js';
import type { CollectedItems, ItemFailure, ItemInfo, ItemsOptions } from './types.js';
import type { ItemEntryExtras } from '../stores/store.js';

export interface ItemsScope {
  readonly session: RunSession;
  /** Stage or node the items belong to. */
  readonly stage: string;
  /** The signal of the stage's try: it aborts when the run stops and when the try times out. */
  readonly signal: AbortSignal;
  /** The ledger name for an items call named `name` (stage, generation and step are part of it). */
  ledgerName(name: string): string;
  /** Called with the final counts of each call (shown in run summaries; stored with the ledger they hold for). */
  onCounts(name: string, counts: StoredItemCounts): void;
}

const PROGRESS_EVERY_MS = 200;
/** Longest stretch the item loop runs without letting timers and I/O callbacks in. */
const YIELD_EVERY_MS = 50;

export async function runItems<T, R>(
  scope: ItemsScope,
  name: string,
  list: readonly T[],
  fn: (item: T, info: ItemInfo) => R | Promise<R>,
  options: ItemsOptions<T> = {},
): Promise<R[] | CollectedItems<R>> {
  assertName(name, 'items name');
  if (!Array.isArray(list)) throw new CairnError('INVALID_INPUT', `ctx.items(${name}): the list must be an array.`, { stage: scope.stage });
  if (typeof fn !== 'function') throw new CairnError('INVALID_INPUT', `ctx.items(${name}): a function is needed.`, { stage: scope.stage });
  const opts = resolveItemsOptions(options, name);
  const { session } = scope;
  const runId = session.runId;
  const ledger = scope.ledgerName(name);
  const total = list.length;
  // without a key option an item's key is its position, made when needed: nothing kept per item
  const keys = options.key ? itemKeys(list, options.key, name, scope.stage) : undefined;
  const keyOf = keys ? (i: number): string => keys[i]! : (i: number): string => String(i);
  // the position of the item a ledger entry is about, or undefined (an old entry beyond the list, a key no longer listed)
  let positionOf: Map<string, number> | undefined; // for `key` options, built once a ledger has entries
  const indexOf = (key: string): number | undefined => {
    if (keys) return (positionOf ??= new Map(keys.map((k, position) => [k, position]))).get(key);
    const i = Number(key);
    return i >= 0 && i < total && String(i) === key ? i : undefined;
  };

  // What earlier attempts finished, the latest entry per item, applied as the ledger streams by:
  // a done item's result goes straight into `results` and its bit into `isDone`; only failures
  // (to retry) are kept aside. Memory per item: the result itself and one bit.
  const results = new Array<R | undefined>(total);
  const isDone = new Uint8Array(Math.ceil(total / 8));
  const failures = new Map<number, ItemFailure>();
  const priorTries = new Map<number, number>(); // attempts already made, for items that failed before
  let done = 0;
  let damaged = 0;
  // what this call's ledger says its items spent (every entry: a superseded failure was paid for too)
  let callSpend: Record<string, number> | undefined;
  let reusedDone = 0;
  if (total > 0) {
    const onProblem = (): void => void damaged++;
    const store = session.store;
    const chunks = store.readItemChunks
      ? store.readItemChunks(runId, ledger, { onProblem })
      : oneByOne(store.readItems(runId, ledger, { onProblem }));
    for await (const chunk of chunks)
      for (const entry of chunk) {
        const i = indexOf(entry.key);
        if (entry.spend !== undefined) addInto((callSpend ??= {}), entry.spend);
        if (i === undefined) continue;
        const wasDone = (isDone[i >> 3]! & (1 << (i & 7))) !== 0;
        if (entry.status === 'done') {
          if (entry.reusedFrom !== undefined) reusedDone++;
          results[i] = entry.result as R;
          if (!wasDone) done++;
          isDone[i >> 3]! |= 1 << (i & 7);
          failures.delete(i);
          priorTries.delete(i);
        } else {
          results[i] = undefined;
          if (wasDone) done--;
          isDone[i >> 3]! &= ~(1 << (i & 7));
          failures.set(i, { key: entry.key, index: i, attempt: entry.attempt, error: entry.error });
          priorTries.set(i, entry.attempt);
        }
      }
  }
  if (damaged > 0) {
    session.emit('warning', {
      runId,
      stage: scope.stage,
      code: 'CHECKPOINT_CORRUPT',
      message: `${damaged} damaged record(s) in the ledger of ${ledger} were skipped; those items run again.`,
    });
  }

  // reuse: 'content': the hash of each item not done yet, and the results an earlier generation's
  // ledger has for those unchanged (applied now; written to this ledger before any item runs)
  const reuse = opts.reuse === 'content' ? reuseSetup(session, scope.stage, name, ledger) : undefined;
  const hashes = reuse && new Array<string | undefined>(total);
  let reusable: Map<number, DoneEntry> | undefined;
  if (reuse && hashes) {
    for (let i = 0; i < total; i++)
      if ((isDone[i >> 3]! & (1 << (i & 7))) === 0) hashes[i] = itemHash(list[i], reuse.salt, { name, key: keyOf(i), stage: scope.stage });
    if (reuse.source !== undefined && done < total) {
      reusable = await findReusable(session.store, runId, reuse.source, indexOf, (i) => hashes[i]);
      for (const [i, entry] of reusable) {
        results[i] = entry.result as R;
        isDone[i >> 3]! |= 1 << (i & 7);
        done++;
        reusedDone++;
        failures.delete(i);
        priorTries.delete(i);
      }
      if (reusable.size > 0) {
        addHistory(
          session.data,
          'items:reused',
          `Stage ${scope.stage} reused ${reusable.size} of ${total} items of ${name} from ${reuse.source} (their content was unchanged).`,
          scope.stage,
        );
      }
    }
  }
  const awaitingRetry = new Set<number>(failures.keys());
  const todoCount = total - done;
  session.setLedgerSpend(scope.stage, ledger, callSpend);
  // spend reported by tries whose entry is not written yet, by item: it goes into that entry
  const itemSpend = new Map<number, Record<string, number>>();
  const hasBudget = session.data.budget !== undefined;
  const limiter = opts.limit === undefined ? undefined : limiterFor(session, opts.limit, name, scope.stage);
  const grants = new Map<number, LimitGrant>(); // the grant of each item in flight under `limit`
  let budgetStop = false; // an item was not started because the run reached its budget
  const onSpend = (i: number, units: Spend): void => {
    checkSpend(units, `item.spend (item ${keyOf(i)} of ${name})`, { stage: scope.stage, items: name });
    if (Object.keys(units).length === 0) return;
    let spend = itemSpend.get(i);
    if (spend === undefined) itemSpend.set(i, (spend = {}));
    addInto(spend, units);
    addInto((callSpend ??= {}), units);
    session.addSpend(scope.stage, ledger, units);
    const tokens = units.tokens;
    if (grants.size > 0 && tokens !== undefined && tokens > 0)
      void grants
        .get(i)
        ?.charge(tokens)
        .catch(() => undefined); // a lost charge only undercounts the window
  };
  const extrasOf = (i: number): ItemEntryExtras | undefined => {
    const hash = hashes?.[i];
    const spend = itemSpend.size === 0 ? undefined : itemSpend.get(i);
    if (spend !== undefined) itemSpend.delete(i);
    if (hash === undefined) return spend === undefined ? undefined : { spend };
    return spend === undefined ? { hash } : { spend, hash };
  };
  // projected spend of the whole call: the spend per item that ran (reused items cost nothing)
  const projected = (): Spend | undefined => {
    const ran = done - reusedDone;
    if (callSpend === undefined || ran <= 0) return undefined;
    const out: Record<string, number> = {};
    for (const unit of Object.keys(callSpend))
      out[unit] = Number((callSpend[unit]! + (callSpend[unit]! / ran) * (total - done)).toPrecision(6));
    return out;
  };

  const started = Date.now();
  const doneAtStart = done;
  // the rate an earlier attempt measured stands in for this one's until it has its own: at least
  // one item done per worker (the first to finish alone would say a fraction of the real rate)
  const earlierRate = validRate(session.data.stages[scope.stage]?.items?.[name]?.rate);
  const ownAfter = earlierRate === undefined ? 1 : Math.max(1, Math.min(opts.concurrency, total - done));
  const rateAt = (now: number): number | undefined => {
    const seconds = (now - started) / 1000;
    return done - doneAtStart >= ownAfter && seconds > 0 ? (done - doneAtStart) / seconds : earlierRate;
  };
  let lastProgress = 0;
  // counts the throttle held back are shown once the interval is over: the next item may take long
  const isWatched = session.config.events.hasListeners('items:progress');
  let heldBack: NodeJS.Timeout | undefined;
  const showHeldBack = (): void => {
    heldBack = undefined;
    if (!closed) progress(true);
  };
  const progress = (force: boolean, now = Date.now()): void => {
    if (!force && now - lastProgress < PROGRESS_EVERY_MS) {
      if (isWatched) heldBack ??= setTimeout(showHeldBack, PROGRESS_EVERY_MS).unref();
      return;
    }
    clearTimeout(heldBack);
    heldBack = undefined;
    lastProgress = now;
    if (!session.config.events.hasListeners('items:progress')) return;
    const rate = rateAt(now) ?? 0;
    // items that failed before and are still to be retried count as left, not as failed
    const failed = failures.size - awaitingRetry.size;
    const left = total - done - failed;
    const projectedSpend = callSpend && projected();
    const runSpend = callSpend && session.spent;
    session.emit('items:progress', {
      runId,
      stage: scope.stage,
      name,
      done,
      failed,
      total,
      rate,
      eta: rate > 0 ? left / rate : left === 0 ? 0 : undefined,
      ...(callSpend ? { spend: { ...callSpend } } : {}),
      ...(projectedSpend ? { projectedSpend } : {}),
      ...(runSpend ? { runSpend: { ...runSpend } } : {}),
      ...(reuse || reusedDone > 0 ? { reused: reusedDone } : {}),
    });
  };

  let stopError: CairnError | undefined; // set when the stage must stop: an item failed ('fail') or the writer failed
  const writer = new LedgerWriter({
    store: session.store,
    runId,
    ledger,
    checkpointEvery: opts.checkpointEvery,
    flushIntervalMs: opts.flushIntervalMs,
    keyOf,
    writeOptions: () => session.writeOptions,
    onFlushed: (count) => session.commitPoint('items', { stage: scope.stage, count }),
    onRejected: (entry, failed) => {
      const i = entry.index;
      results[i] = undefined;
      done--;
      failures.set(i, { key: failed.key, index: i, attempt: failed.attempt, error: failed.error });
      if (opts.onItemError === 'fail')
        stopError ??= itemFailed(scope.stage, name, failed.key, failed.error.message, reviveError(failed.error));
    },
  });

  const signal = scope.signal;
  // every item waiting out a retry's backoff listens on the stage's signal: with a high concurrency
  // that is many listeners, and no leak to warn about
  setMaxListeners(0, signal);
  const itemSignal = graceSignal(signal, session.config.gracePeriodMs);
  let next = 0;
  let closed = false; // after the grace period, late results are dropped

  const idempotencyPrefix = `${runId}/${ledger}/`;

  // One try of item `i`. A synchronous `fn` is recorded without a promise per item; a promise
  // returned by `fn`, a thrown error and `durability: 'item'` take the async paths below.
  const tryItem = (i: number, tryNo: number): Promise<void> | undefined => {
    const key = keyOf(i);
    const attempt = (priorTries.get(i) ?? 0) + tryNo;
    let value: R | PromiseLike<R>;
    try {
      value = callItem(i, key, attempt);
    } catch (error) {
      return handleFailure(i, tryNo, error);
    }
    if (isThenable(value)) return settleTry(i, tryNo, value);
    return recordDone(i, attempt, value);
  };

  // One call of `fn`; with `timeoutMs`, under a signal of its own that the deadline aborts (the try
  // then fails with ITEM_TIMEOUT, whether or not `fn` stops, and a late result is dropped)
  const callItem = (i: number, key: string, attempt: number): R | PromiseLike<R> =>
    limiter === undefined ? runFn(i, key, attempt) : limitedCall(limiter, i, key, attempt);

  // With `limit`: each try waits for a grant of the named limit first (the wait is not part of the
  // try's `timeoutMs`); tokens the item reports with `item.spend` are charged to the grant; an
  // error that asks to wait (a 429's Retry-After) slows the whole limit down, in every process sharing it
  const limitedCall = async (limits: Limiter, i: number, key: string, attempt: number): Promise<R> => {
    const grant = await limits.acquire(opts.limit!, { signal });
    grants.set(i, grant);
    try {
      return await runFn(i, key, attempt);
    } catch (error) {
      const ms = retryAfterOf(error);
      if (ms !== undefined && ms > 0) await limits.slowDown(opts.limit!, ms).catch(() => undefined);
      throw error;
    } finally {
      grants.delete(i);
    }
  };

  const runFn = (i: number, key: string, attempt: number): R | PromiseLike<R> => {
    const idempotencyKey = idempotencyPrefix + key;
    if (opts.timeoutMs === undefined) return fn(list[i] as T, new Info(key, i, attempt, idempotencyKey, itemSignal.signal, onSpend));
    const where = { runId, stage: scope.stage, items: name, key };
    const call = (signal: AbortSignal): R | PromiseLike<R> => fn(list[i] as T, new Info(key, i, attempt, idempotencyKey, signal, onSpend));
    return withTimeout(call, itemSignal.signal, opts.timeoutMs, `Item ${key} of ${name}`, where, 'ITEM_TIMEOUT');
  };

  const settleTry = async (i: number, tryNo: number, pending: PromiseLike<R>): Promise<void> => {
    let value: R;
    try {
      value = await pending;
    } catch (error) {
      return handleFailure(i, tryNo, error);
    }
    return recordDone(i, (priorTries.get(i) ?? 0) + tryNo, value);
  };

  const recordDone = (i: number, attempt: number, value: R): Promise<void> | undefined => {
    if (closed) return;
    results[i] = value;
    failures.delete(i); // it may have failed in an earlier attempt
    done++;
    const seq = writer.addDone(i, attempt, value, extrasOf(i));
    if (opts.durability === 'item') return writer.waitDurable(seq).then(() => progress(false));
  };

  const handleFailure = async (i: number, tryNo: number, error: unknown): Promise<void> => {
    if (closed) return;
    if (isWaitSignal(error)) throw error;
    if (signal.aborted) return; // stopping: most likely the abort itself; the item simply runs again
    const outOfBudget = hasBudget && session.budgetReached() !== undefined; // a retry is a new paid try: not past the budget
    if (outOfBudget) budgetStop = true;
    if (!outOfBudget && shouldRetry(opts.retries, error, tryNo, signal)) {
      const delayMs = backoffDelay(opts.retries, tryNo, error); // a Retry-After the error carries, else the backoff
      if (session.config.events.hasListeners('items:retry')) {
        const [key, attempt, maxTries, failure] = [keyOf(i), (priorTries.get(i) ?? 0) + tryNo, opts.retries.max + 1, serializeError(error)];
        session.emit('items:retry', { runId, stage: scope.stage, name, key, try: tryNo, maxTries, attempt, error: failure, delayMs });
      }
      try {
        await sleep(delayMs, signal);
      } catch {
        return; // stopping during the backoff: the item runs again on resume
      }
      return tryItem(i, tryNo + 1);
    }
    const key = keyOf(i);
    const attempt = (priorTries.get(i) ?? 0) + tryNo;
    const serialized = serializeError(error);
    failures.set(i, { key, index: i, attempt, error: serialized });
    const seq = writer.addFailed(i, attempt, serialized, extrasOf(i));
    // an item the budget kept from its retries is not a failure of the stage: resume retries it
    if (opts.onItemError === 'fail' && !outOfBudget) stopError ??= itemFailed(scope.stage, name, key, serialized.message, error);
    if (opts.durability === 'item') await writer.waitDurable(seq);
    progress(false);
  };

  // The clock is read once per item, for three things: letting timers in, a lease that ran out,
  // and progress. The first try of an item runs inline (no promise of cairn's own per item); a
  // failure and its retries take tryItem's path.
  let lastYield = Date.now();
  const worker = async (): Promise<void> => {
    while (!signal.aborted && stopError === undefined && writer.error === undefined) {
      if (!writer.hasRoom) {
        await writer.waitForRoom();
        lastYield = Date.now();
        continue;
      }
      let now = Date.now();
      if (now - lastYield >= YIELD_EVERY_MS) {
        // CPU-bound or instantly resolving items never leave the microtask queue: let timers (lease
        // renewal, progress, Ctrl-C) run now and then. The clock is read again after: the process
        // may have been stopped while it waited (SIGSTOP lands on an idle process), and the lease
        // check below must see the time it woke at
        await new Promise<void>((resolve) => setImmediate(resolve));
        lastYield = now = Date.now();
      }
      if (now >= session.leaseExpiresAtMs) {
        // woken after the lease ran out (stopped past it): start no new item, a paid call perhaps,
        // before a renewal says the run is still this process's (a lost lease aborts the signal)
        await session.renewNow();
        lastYield = Date.now();
        if (signal.aborted) return; // taken over: LEASE_LOST stopped the run
      }
      progress(false, now);
      // the next item not done yet, in list order
      while (next < total && (isDone[next >> 3]! & (1 << (next & 7))) !== 0) next++;
      if (next >= total) return;
      if (hasBudget && session.budgetReached() !== undefined) {
        budgetStop = true; // no new item past the budget; those in flight finish and are saved
        return;
      }
      const i = next++;
      if (awaitingRetry.size > 0) awaitingRetry.delete(i);
      const key = keyOf(i);
      const attempt = priorTries.size === 0 ? 1 : (priorTries.get(i) ?? 0) + 1;
      let value: R;
      try {
        const returned = callItem(i, key, attempt);
        value = isThenable(returned) ? await returned : returned;
      } catch (error) {
        await handleFailure(i, 1, error);
        continue;
      }
      const durable = recordDone(i, attempt, value);
      if (durable !== undefined) await durable;
    }
  };

  // the reused results go into this ledger first, a batch at a time (a crash in between looks them up again)
  const writeReused = async (): Promise<void> => {
    if (!reusable || !reuse?.source) return;
    for (const [i, entry] of [...reusable].sort((a, b) => a[0] - b[0])) {
      if (writer.error !== undefined) return;
      if (!writer.hasRoom) await writer.waitForRoom();
      writer.addDone(i, entry.attempt, results[i], { hash: hashes![i]!, reusedFrom: reuse.source });
    }
  };

  progress(true);
  const workers = writeReused().then(() => Promise.all(Array.from({ length: Math.min(opts.concurrency, todoCount) }, () => worker())));
  try {
    await settleWithinGrace(workers, signal, session.config.gracePeriodMs);
  } finally {
    closed = true;
    itemSignal.dispose();
    try {
      await writer.drain();
    } finally {
      // what the store holds: results a failed write did not save are not counted
      const rate = rateAt(Date.now());
      const counts: StoredItemCounts = {
        done: writer.error === undefined ? done : done - writer.unflushed,
        failed: failures.size,
        total,
        ...(rate === undefined ? {} : { rate }), // kept in the stored summary for the next attempt's progress
        // for cairn validate: the ledger these counts hold for, and the damage this call read past
        ledger,
        ...(damaged > 0 ? { damaged } : {}),
        ...(reuse || reusedDone > 0 ? { reused: Math.min(reusedDone, done) } : {}),
      };
      scope.onCounts(name, counts);
      progress(true);
    }
  }
  if (signal.aborted) throw signal.reason as Error;
  if (stopError !== undefined) throw stopError as Error;
  if (writer.error !== undefined) throw writer.error;
  if (budgetStop) throw new WaitSignal(BUDGET_WAIT);

  if (opts.onItemError === 'collect') {
    const failed = [...failures.values()].sort((a, b) => a.index - b.index);
    return { results, failures: failed, done, failed: failed.length };
  }
  return results as R[];
}
