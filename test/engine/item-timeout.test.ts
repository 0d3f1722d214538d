/**
 * Per-item timeouts and waits an error asks for: `ctx.items(…, { timeoutMs })` aborts the item's
 * signal and fails the try with ITEM_TIMEOUT (then retries apply, and a late result of the timed-out
 * try is dropped); a `retryAfterMs` on a thrown error, or an HTTP `Retry-After` header it carries,
 * replaces the backoff of items and stages.
 */
import { describe, expect, it } from 'vitest';
import { pipeline } from '../../src/engine/pipeline.js';
import type { CairnEvents, CollectedItems } from '../../src/engine/types.js';
import { useCairns } from './engine-helpers.js';

describe('item timeouts', () => {
  const open = useCairns();

  it('a try that outlives timeoutMs fails with ITEM_TIMEOUT, its signal aborted; the retry runs and its result is kept', async () => {
    const cairn = open('memory:item-timeout-retry');
    const reasons: unknown[] = [];
    let lateResolved = false;
    const def = pipeline('timeouts').stage('call', (ctx) =>
      ctx.items(
        'calls',
        ['slow', 'quick'],
        (word, item) => {
          if (word === 'slow' && item.attempt === 1) {
            item.signal.addEventListener('abort', () => reasons.push(item.signal.reason));
            // ignores its signal, as a careless call does: resolves long after the deadline
            return new Promise<string>((resolve) =>
              setTimeout(() => {
                lateResolved = true;
                resolve('late');
              }, 400),
            );
          }
          return `${word} ${item.attempt}`;
        },
        { timeoutMs: 50, retries: { max: 1, backoffMs: 0 } },
      ),
    );
    const retries: CairnEvents['items:retry'][] = [];
    cairn.on('items:retry', (e) => retries.push(e));
    const run = await cairn.run(def, {});
    expect(run.status).toBe('completed');
    expect(run.result).toEqual(['slow 2', 'quick 1']);
    expect(retries.map((r) => [r.key, r.error.code])).toEqual([['0', 'ITEM_TIMEOUT']]);
    expect(reasons).toHaveLength(1);
    expect(reasons[0]).toMatchObject({ code: 'ITEM_TIMEOUT' });
    expect((reasons[0] as Error).message).toBe('Item 0 of calls ran longer than its timeout of 50 ms.');
    await new Promise((resolve) => setTimeout(resolve, 450)); // the timed-out call resolves now: nothing changes
    expect(lateResolved).toBe(true);
    expect((await cairn.get(run.id))?.result).toEqual(['slow 2', 'quick 1']);
  });

  it('without retries a timed-out item is a failure like any other (collected with its code)', async () => {
    const cairn = open('memory:item-timeout-collect');
    const def = pipeline('timeouts-collect').stage('call', (ctx) =>
      ctx.items('calls', [1, 2, 3], (n) => (n === 2 ? new Promise<number>(() => undefined) : n), {
        timeoutMs: 30,
        onItemError: 'collect',
        concurrency: 3,
      }),
    );
    const run = await cairn.run(def, {});
    expect(run.status).toBe('completed');
    const collected = run.result as CollectedItems<number>;
    expect(collected.results).toEqual([1, undefined, 3]);
    expect(collected.failures.map((f) => [f.key, f.error.code])).toEqual([['1', 'ITEM_TIMEOUT']]);
  });

  it('refuses a timeoutMs that is not a positive number', async () => {
    const cairn = open('memory:item-timeout-bad');
    const def = pipeline('timeouts-bad').stage('call', (ctx) => ctx.items('calls', [1], (n) => n, { timeoutMs: 0 }));
    const run = await cairn.run(def, {});
    expect(run.status).toBe('failed');
    expect(run.error).toMatchObject({ code: 'INVALID_INPUT' });
    expect(run.error?.message).toContain('timeoutMs must be a number of ms > 0');
  });
});

describe('waits an error asks for', () => {
  const open = useCairns();

  it('an item retry waits retryAfterMs, or the Retry-After header of a 429, instead of the backoff', async () => {
    const cairn = open('memory:retry-after-items');
    const delays: [string, number][] = [];
    cairn.on('items:retry', (e) => delays.push([e.key, e.delayMs]));
    const def = pipeline('retry-after').stage('call', (ctx) =>
      ctx.items(
        'calls',
        ['own', 'header', 'fetch-headers', 'none'],
        (kind, item) => {
          if (item.attempt > 1) return kind;
          if (kind === 'own') throw Object.assign(new Error('slow down'), { retryAfterMs: 120 });
          if (kind === 'header') throw Object.assign(new Error('429'), { status: 429, headers: { 'Retry-After': '0.25' } });
          if (kind === 'fetch-headers')
            throw Object.assign(new Error('429'), { response: { status: 429, headers: new Headers({ 'retry-after': '0' }) } });
          throw new Error('plain');
        },
        { key: (kind) => kind, retries: { max: 1, backoffMs: 7, jitter: false } },
      ),
    );
    const run = await cairn.run(def, {});
    expect(run.status).toBe('completed');
    expect(Object.fromEntries(delays)).toEqual({ own: 120, header: 250, 'fetch-headers': 0, none: 7 });
  });

  it('many items waiting out a retry at once are no listener leak: no MaxListenersExceededWarning', async () => {
    const cairn = open('memory:retry-many-waiting');
    const warnings: Error[] = [];
    const onWarning = (warning: Error): void => void warnings.push(warning);
    process.on('warning', onWarning);
    try {
      const def = pipeline('retry-many').stage('call', (ctx) =>
        ctx.items(
          'calls',
          Array.from({ length: 40 }, (_, i) => i),
          async (n, item) => {
            if (item.attempt < 3) throw Object.assign(new Error('busy'), { retryAfterMs: 20 });
            return n;
          },
          { concurrency: 20, retries: { max: 3 } },
        ),
      );
      const run = await cairn.run(def, {});
      expect(run.status).toBe('completed');
      await new Promise((resolve) => setImmediate(resolve)); // warnings are emitted on the next tick
    } finally {
      process.off('warning', onWarning);
    }
    expect(warnings.filter((w) => w.name === 'MaxListenersExceededWarning')).toEqual([]);
  });

  it('a stage retry waits what the error asks for too', async () => {
    const cairn = open('memory:retry-after-stage');
    const fails: CairnEvents['stage:fail'][] = [];
    cairn.on('stage:fail', (e) => fails.push(e));
    let tries = 0;
    const def = pipeline('retry-after-stage').stage(
      'call',
      () => {
        tries += 1;
        if (tries === 1) throw Object.assign(new Error('busy'), { retryAfterMs: 40 });
        return tries;
      },
      { retries: { max: 1, backoffMs: 5000 } },
    );
    const run = await cairn.run(def, {});
    expect(run.status).toBe('completed');
    expect(fails.map((f) => f.retryInMs)).toEqual([40]);
  });
});
