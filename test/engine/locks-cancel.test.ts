/**
 * One run, one executor, on every store: a second Cairn on the same store gets `RUN_LOCKED` naming
 * the holder; `cairn.cancel` stops a running run (here or in another instance) and marks a waiting
 * one cancelled; a cancelled run is not resumed.
 */
import { describe, expect, it } from 'vitest';
import { CairnError } from '../../src/core/errors.js';
import { pipeline } from '../../src/engine/pipeline.js';
import { codeOf } from '../helpers.js';
import { Counter, deferred, useCairns } from './engine-helpers.js';
import { ENGINE_STORES } from './store-matrix.js';

/** first → hold (waits until released or aborted) → last. */
function held(calls: Counter, release: Promise<void>, entered: () => void) {
  return pipeline('held')
    .stage('first', () => {
      calls.hit('first');
      return 1;
    })
    .stage(
      'hold',
      (ctx) =>
        new Promise<string>((resolve, reject) => {
          calls.hit('hold');
          entered();
          ctx.signal.addEventListener('abort', () => reject(ctx.signal.reason as Error));
          void release.then(() => resolve('released'));
        }),
    )
    .stage('last', (ctx) => {
      calls.hit('last');
      return `${ctx.output('hold')}!`;
    });
}

describe.each(ENGINE_STORES)('locks and cancel on $name', (kind) => {
  const open = useCairns();

  it('refuses a second Cairn on the same store with RUN_LOCKED naming the holder', async () => {
    const url = await kind.freshUrl();
    const holder = open(url, { owner: 'worker-a' });
    const other = open(url, { owner: 'worker-b' });
    const calls = new Counter();
    const entered = deferred();
    const release = deferred();
    const def = held(calls, release.promise, () => entered.resolve());
    const running = holder.run(def, {});
    await entered.promise;

    const error = (await other.run(def, {}).catch((e: unknown) => e)) as CairnError;
    expect(error).toBeInstanceOf(CairnError);
    expect(error.code).toBe('RUN_LOCKED');
    expect(error.message).toContain('worker-a');
    expect(error.context).toMatchObject({ runId: holder.runIdFor(def, {}), owner: 'worker-a', pid: process.pid });
    expect(await codeOf(other.run(def, {}, { forceRestart: true }))).toBe('RUN_LOCKED');
    // the same instance refuses a second concurrent call too
    expect(await codeOf(holder.run(def, {}))).toBe('RUN_LOCKED');
    expect(calls.of('hold')).toBe(1);

    release.resolve();
    const done = await running;
    expect(done.status).toBe('completed');
    expect(done.result).toBe('released!');
    // once released, the other instance sees the completed run
    calls.reset();
    const seen = await other.run(def, {});
    expect(seen.status).toBe('completed');
    expect(seen.result).toBe('released!');
    expect(calls.of('first') + calls.of('hold') + calls.of('last')).toBe(0);
  });

  it('cancels a run executing in this process', async () => {
    const cairn = open(await kind.freshUrl());
    const calls = new Counter();
    const entered = deferred();
    const def = held(calls, new Promise<void>(() => undefined), () => entered.resolve());
    const running = cairn.run(def, {});
    await entered.promise;

    const cancelled = await cairn.cancel(cairn.runIdFor(def, {}));
    expect(cancelled.status).toBe('cancelled');
    const summary = await running;
    expect(summary.status).toBe('cancelled');
    expect(summary.stages.map((s) => s.status)).toEqual(['completed', 'interrupted', 'pending']);
    expect(summary.attempts.at(-1)?.outcome).toBe('cancelled');
    expect(calls.of('last')).toBe(0);

    // a cancelled run stays cancelled: run returns it as is, resume refuses it
    calls.reset();
    expect((await cairn.run(def, {})).status).toBe('cancelled');
    expect(calls.of('first') + calls.of('hold')).toBe(0);
    expect(await codeOf(cairn.resume(summary.id))).toBe('INVALID_INPUT');
    // forceRestart starts it over
    const release = deferred();
    const restarted = cairn.run(
      held(calls, release.promise, () => undefined),
      {},
      { forceRestart: true },
    );
    release.resolve();
    expect((await restarted).status).toBe('completed');
  });

  it('cancels a waiting run; resuming it is refused', async () => {
    const cairn = open(await kind.freshUrl());
    const def = pipeline('approval').stage('ask', async (ctx) => ({ approved: await ctx.waitFor<boolean>('approval') }));
    const waiting = await cairn.run(def, { doc: 1 });
    expect(waiting.status).toBe('waiting');
    expect(waiting.waitingFor).toBe('approval');

    const cancelled = await cairn.cancel(waiting.id);
    expect(cancelled.status).toBe('cancelled');
    expect((await cairn.get(waiting.id))?.status).toBe('cancelled');
    expect(await codeOf(cairn.resume(waiting.id, { inputs: { approval: true } }))).toBe('INVALID_INPUT');
    expect((await cairn.get(waiting.id))?.status).toBe('cancelled');
  });

  it('leaves a completed run completed when cancelled', async () => {
    const cairn = open(await kind.freshUrl());
    const done = await cairn.run(
      pipeline('quick').stage('s', () => 'ok'),
      {},
    );
    expect((await cairn.cancel(done.id)).status).toBe('completed');
    expect(await codeOf(cairn.cancel('missing-run'))).toBe('NOT_FOUND');
  });

  it('cancels a run held by another Cairn instance at its next lease renewal', async () => {
    const url = await kind.freshUrl();
    const holder = open(url, { lockTtlMs: 900 }); // renewed (and the cancel request seen) every 300 ms
    const other = open(url);
    const calls = new Counter();
    const entered = deferred();
    const def = held(calls, new Promise<void>(() => undefined), () => entered.resolve());
    const running = holder.run(def, {});
    await entered.promise;

    const requested = await other.cancel(holder.runIdFor(def, {}));
    expect(requested.history.some((h) => h.event === 'run:cancel-requested')).toBe(true);
    const summary = await running;
    expect(summary.status).toBe('cancelled');
    expect(calls.of('last')).toBe(0);
    expect(await codeOf(other.resume(summary.id))).toBe('INVALID_INPUT');
  });
});
