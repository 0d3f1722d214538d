/**
 * The parts of `ctx.items` around its loop: its options checked, item keys, the object each item's
 * function gets, the signal items see during a graceful stop, and small helpers.
 */
import { setMaxListeners } from 'node:events';
import { CairnError, isCairnError } from '../core/errors.js';
import type { Limiter } from './limits.js';
import { resolveRetry } from './retry.js';
import type { RunSession } from './run-session.js';
import type { Spend } from './spend.js';
import type { ItemInfo, ItemsOptions } from './types.js';
import type { ItemEntry } from '../stores/store.js';

/**
 * Waits for `work`; once `signal` aborts, waits at most `graceMs` more (in-flight work may finish
 * and be saved), then gives up on it. Rejections of `work` propagate.
 */
export function settleWithinGrace<T>(work: Promise<T>, signal: AbortSignal, graceMs: number): Promise<T | undefined> {
  return new Promise((resolve, reject) => {
    let timer: NodeJS.Timeout | undefined;
    const onAbort = (): void => {
      timer = setTimeout(() => resolve(undefined), graceMs);
    };
    if (signal.aborted) onAbort();
    else signal.addEventListener('abort', onAbort, { once: true });
    work.then(
      (value) => {
        clearTimeout(timer);
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      },
      (error: unknown) => {
        clearTimeout(timer);
        signal.removeEventListener('abort', onAbort);
        reject(error);
      },
    );
  });
}

/** Stops that leave in-flight items their grace period: Ctrl-C, SIGTERM, a cancel. Anything else (a lost lease, a timeout) aborts them at once. */
const GRACEFUL_STOPS: ReadonlySet<string> = new Set(['RUN_INTERRUPTED', 'RUN_CANCELLED']);

/**
 * The signal items get (`item.signal`): when the stage's signal aborts for a graceful stop, it
 * aborts only once the grace period is over, so that a paid call in flight may finish and be saved
 * instead of being cut off and paid again on resume; for any other reason it aborts at once.
 */
export function graceSignal(stage: AbortSignal, graceMs: number): { readonly signal: AbortSignal; dispose(): void } {
  const controller = new AbortController();
  // one signal for every item of the call: each item may listen on it (a fetch does), so a call of
  // 20,000 items is not a listener leak to warn about
  setMaxListeners(0, controller.signal);
  let timer: NodeJS.Timeout | undefined;
  const onAbort = (): void => {
    const reason: unknown = stage.reason;
    if (isCairnError(reason) && GRACEFUL_STOPS.has(reason.code)) timer = setTimeout(() => controller.abort(reason), graceMs);
    else controller.abort(reason);
  };
  if (stage.aborted) onAbort();
  else stage.addEventListener('abort', onAbort, { once: true });
  return {
    signal: controller.signal,
    dispose: () => {
      clearTimeout(timer);
      stage.removeEventListener('abort', onAbort);
      // items still running after their call returned (the grace period ran out): stop them now
      if (stage.aborted && !controller.signal.aborted) controller.abort(stage.reason);
    },
  };
}

/** What the function of `ctx.items` gets about its item (`spend` is on the prototype: no closure per item). */
export class Info implements ItemInfo {
  readonly #onSpend: (index: number, units: Spend) => void;

  constructor(
    readonly key: string,
    readonly index: number,
    readonly attempt: number,
    readonly idempotencyKey: string,
    readonly signal: AbortSignal,
    onSpend: (index: number, units: Spend) => void,
  ) {
    this.#onSpend = onSpend;
  }

  spend(units: Readonly<Record<string, number>>): void {
    this.#onSpend(this.index, units);
  }
}

/** A stored rate (items per second) that can be used: a positive finite number. */
export function validRate(value: unknown): number | undefined {
  return typeof value === 'number' && Number.isFinite(value) && value > 0 ? value : undefined;
}

export function isThenable<R>(value: R | PromiseLike<R>): value is PromiseLike<R> {
  return (
    (typeof value === 'object' || typeof value === 'function') && value !== null && typeof (value as { then?: unknown }).then === 'function'
  );
}

export function itemFailed(stage: string, name: string, key: string, message: string, cause: unknown): CairnError {
  return new CairnError(
    'ITEM_FAILED',
    `Item ${key} of ${name} in stage ${stage} failed: ${message}${/[.!?]$/.test(message) ? '' : '.'} Finished items are saved; resume retries the failed ones.`,
    { stage, items: name, key },
    { cause },
  );
}

export function itemKeys<T>(list: readonly T[], keyFn: ItemsOptions<T>['key'], name: string, stage: string): string[] {
  const keys = new Array<string>(list.length);
  if (!keyFn) {
    for (let i = 0; i < list.length; i++) keys[i] = String(i); // unique by construction
    return keys;
  }
  const seen = new Set<string>();
  for (let i = 0; i < list.length; i++) {
    const raw = keyFn(list[i] as T, i);
    const key = typeof raw === 'number' ? String(raw) : raw;
    if (typeof key !== 'string' || key.length === 0 || key.length > 1024) {
      throw new CairnError('INVALID_INPUT', `ctx.items(${name}): the key of item ${i} must be a string of 1 to 1024 characters.`, {
        stage,
      });
    }
    if (seen.has(key))
      throw new CairnError('INVALID_INPUT', `ctx.items(${name}): two items have the key ${JSON.stringify(key)}; keys must be unique.`, {
        stage,
      });
    seen.add(key);
    keys[i] = key;
  }
  return keys;
}

export function resolveItemsOptions<T>(options: ItemsOptions<T>, name: string) {
  const resolved = {
    concurrency: options.concurrency ?? 1,
    checkpointEvery: options.checkpointEvery ?? 1000,
    flushIntervalMs: options.flushIntervalMs ?? 0,
    durability: options.durability ?? 'batch',
    onItemError: options.onItemError ?? 'fail',
    retries: resolveRetry(options.retries ?? { max: 0 }, `ctx.items(${name})`),
    timeoutMs: options.timeoutMs,
    reuse: options.reuse,
    limit: options.limit,
  };
  if (!Number.isInteger(resolved.concurrency) || resolved.concurrency < 1) throw badOption(name, 'concurrency must be an integer ≥ 1');
  if (!Number.isInteger(resolved.checkpointEvery) || resolved.checkpointEvery < 1)
    throw badOption(name, 'checkpointEvery must be an integer ≥ 1');
  if (!(resolved.flushIntervalMs >= 0)) throw badOption(name, 'flushIntervalMs must be ≥ 0');
  if (resolved.durability !== 'batch' && resolved.durability !== 'item') throw badOption(name, "durability must be 'batch' or 'item'");
  if (resolved.onItemError !== 'fail' && resolved.onItemError !== 'collect')
    throw badOption(name, "onItemError must be 'fail' or 'collect'");
  if (resolved.timeoutMs !== undefined && !(resolved.timeoutMs > 0 && Number.isFinite(resolved.timeoutMs)))
    throw badOption(name, 'timeoutMs must be a number of ms > 0');
  if (resolved.reuse !== undefined && resolved.reuse !== 'content') throw badOption(name, "reuse must be 'content'");
  return resolved;
}

/** The limiter holding limit `limit`: `INVALID_DEFINITION` naming the declared limits when there is none by that name. */
export function limiterFor(session: RunSession, limit: string, name: string, stage: string): Limiter {
  const limiter = session.config.limiter;
  if (limiter?.names.includes(limit)) return limiter;
  const declared = limiter?.names ?? [];
  throw new CairnError(
    'INVALID_DEFINITION',
    `ctx.items(${name}): no limit named ${JSON.stringify(limit)} is declared; ${declared.length > 0 ? `the limits are ${declared.join(', ')}` : 'declare it with new Cairn({ limits: { … } })'}.`,
    { stage, items: name },
  );
}

function badOption(name: string, message: string): CairnError {
  return new CairnError('INVALID_INPUT', `ctx.items(${name}): ${message}.`);
}

/** Entries one by one as chunks of one, for stores without `readItemChunks`. */
export async function* oneByOne(entries: AsyncIterable<ItemEntry>): AsyncGenerator<readonly ItemEntry[]> {
  for await (const entry of entries) yield [entry];
}
