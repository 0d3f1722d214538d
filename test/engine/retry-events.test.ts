/**
 * The events the live view of `cairn run` reads retries and counts from: `items:retry` for each
 * item retry (which try failed, of how many, the error, the backoff), `stage:fail` with the try,
 * the tries allowed and the backoff, and an `items:progress` with the real counts once an item
 * that takes long starts right after quick ones (the throttle holds a count back for at most its
 * interval, instead of until the next item starts).
 */
import { describe, expect, it } from 'vitest';
import { pipeline } from '../../src/engine/pipeline.js';
import type { CairnEvents } from '../../src/engine/types.js';
import { sleep, useCairns } from './engine-helpers.js';

describe('retry and progress events', () => {
  const open = useCairns();

  it('items:retry names the item, the try that failed of how many, the error and the backoff', async () => {
    const cairn = open('memory:retry-events-items');
    const retries: CairnEvents['items:retry'][] = [];
    cairn.on('items:retry', (e) => retries.push(e));
    const def = pipeline('retry-items').stage('fetch', (ctx) =>
      ctx.items(
        'keys',
        ['a', 'b'],
        (key, item) => {
          if (key === 'b' && item.attempt < 3) throw Object.assign(new Error(`busy ${item.attempt}`), { code: 'E_BUSY' });
          return key;
        },
        { key: (key) => key, retries: { max: 3, backoffMs: 5, factor: 2, jitter: false } },
      ),
    );
    const run = await cairn.run(def, {});
    expect(run.status).toBe('completed');
    expect(
      retries.map(({ stage, name, key, try: tryNo, maxTries, attempt, delayMs }) => ({
        stage,
        name,
        key,
        tryNo,
        maxTries,
        attempt,
        delayMs,
      })),
    ).toEqual([
      { stage: 'fetch', name: 'keys', key: 'b', tryNo: 1, maxTries: 4, attempt: 1, delayMs: 5 },
      { stage: 'fetch', name: 'keys', key: 'b', tryNo: 2, maxTries: 4, attempt: 2, delayMs: 10 },
    ]);
    expect(retries.map((e) => [e.error.code, e.error.message])).toEqual([
      ['E_BUSY', 'busy 1'],
      ['E_BUSY', 'busy 2'],
    ]);
  });

  it('stage:fail says which try failed, how many are allowed and the backoff before the next', async () => {
    const cairn = open('memory:retry-events-stage');
    const fails: CairnEvents['stage:fail'][] = [];
    cairn.on('stage:fail', (e) => fails.push(e));
    const def = pipeline('retry-stage').stage(
      'check',
      (ctx) => {
        throw Object.assign(new Error(`bad ${ctx.attempt}`), { code: 'E_CHECK' });
      },
      { retries: { max: 1, backoffMs: 7, jitter: false } },
    );
    const run = await cairn.run(def, {});
    expect(run.status).toBe('failed');
    expect(fails.map(({ willRetry, try: tryNo, maxTries, retryInMs }) => ({ willRetry, tryNo, maxTries, retryInMs }))).toEqual([
      { willRetry: true, tryNo: 1, maxTries: 2, retryInMs: 7 },
      { willRetry: false, tryNo: 2, maxTries: 2, retryInMs: undefined },
    ]);
  });

  it('items:progress shows the quick items done before a slow one, without waiting for the slow one to end', async () => {
    const cairn = open('memory:retry-events-progress');
    const progress: CairnEvents['items:progress'][] = [];
    cairn.on('items:progress', (p) => progress.push(p));
    let release: () => void = () => undefined;
    const slow = new Promise<void>((resolve) => (release = resolve));
    const def = pipeline('held-back').stage('work', (ctx) =>
      ctx.items('keys', ['a', 'b', 'c'], async (key) => {
        if (key === 'c') await slow;
        return key;
      }),
    );
    const running = cairn.run(def, {});
    const deadline = Date.now() + 5000;
    while (progress.at(-1)?.done !== 2) {
      if (Date.now() > deadline)
        throw new Error(`no progress event with 2 done within 5 s: ${JSON.stringify(progress.map((p) => p.done))}`);
      await sleep(20);
    }
    release();
    expect((await running).status).toBe('completed');
    expect(progress.at(-1)).toMatchObject({ done: 3, total: 3 });
  });
});
