/**
 * A run whose run record was removed by hand (its checkpoints, ledger and lease left behind) is
 * never adopted by a new run of the same id: `run`, `submit` and `CheckpointManager.create`
 * reject with LEFTOVER_RECORDS and run no stage; `forceRestart` (which deletes the run) clears the
 * leftovers and starts afresh. On every store with a raw-storage hook: memory, file, SQLite, Postgres.
 */
import { describe, expect, it } from 'vitest';
import { CheckpointManager } from '../../src/engine/checkpoint-manager.js';
import { pipeline } from '../../src/engine/pipeline.js';
import { codeOf } from '../helpers.js';
import { removeRunRecord } from '../remove-run-record.js';
import { Counter, useCairns, withStore } from './engine-helpers.js';
import { ALL_STORES } from './store-matrix.js';

const STORES = ALL_STORES;

/** double each item (a ledger) → sum: the result tells which input it ran on. */
function summing(calls: Counter) {
  return pipeline<{ ns: number[] }>('summing')
    .stage('double', (ctx) =>
      ctx.items('ns', ctx.input.ns, (n) => {
        calls.hit('double');
        return n * 2;
      }),
    )
    .stage('sum', (ctx) => {
      calls.hit('sum');
      return ctx.output('double').reduce((a, b) => a + b, 0);
    });
}

describe.each(STORES)('leftover records on $name', (kind) => {
  const open = useCairns();

  it('refuses to run an id whose run record is gone (LEFTOVER_RECORDS) instead of adopting what is left', async () => {
    const url = await kind.freshUrl();
    const calls = new Counter();
    const def = summing(calls);
    const cairn = open(url);
    const first = await cairn.run(def, { ns: [1, 2, 3] }, { runId: 'job' });
    expect(first).toMatchObject({ status: 'completed', result: 12 });
    expect([calls.of('double'), calls.of('sum')]).toEqual([3, 1]);
    await removeRunRecord(url, 'job');

    calls.reset();
    const refused = (await cairn.run(def, { ns: [10, 20] }, { runId: 'job' }).then(
      (summary) => ({ code: `none: ${summary.status}`, message: '' }),
      (e: unknown) => e,
    )) as { code: string; message: string };
    expect(refused).toMatchObject({ code: 'LEFTOVER_RECORDS' });
    expect(refused.message).toContain('Run job has no run record');
    expect(refused.message).toContain('cairn delete job');
    expect([calls.of('double'), calls.of('sum')]).toEqual([0, 0]);
    // stores with a work queue refuse a submit the same way (the file store has none: NOT_SUPPORTED)
    expect(await codeOf(cairn.submit(def, { ns: [10, 20] }, { runId: 'job' }))).toBe(
      kind.name === 'file' ? 'NOT_SUPPORTED' : 'LEFTOVER_RECORDS',
    );
    const cm = new CheckpointManager({ store: url });
    try {
      expect(await codeOf(cm.create('job', { step: 1 }))).toBe('LEFTOVER_RECORDS');
    } finally {
      await cm.close();
    }
    await withStore(url, async (store) => {
      expect(await store.getRun('job')).toBeUndefined();
      expect(await store.listRunIds()).toEqual(['job']);
      expect((await store.validateRun('job')).map((p) => p.code)).toEqual(['LEFTOVER_RECORDS']);
    });
    expect(await cairn.get('job')).toBeUndefined();

    // forceRestart deletes the run, leftovers included, and starts over on the new input
    const fresh = await cairn.run(def, { ns: [10, 20] }, { runId: 'job', forceRestart: true });
    expect(fresh).toMatchObject({ status: 'completed', result: 60 });
    expect([calls.of('double'), calls.of('sum')]).toEqual([2, 1]);
    await withStore(url, async (store) => {
      expect(await store.validateRun('job')).toEqual([]);
      const items = [];
      for await (const entry of store.readItems('job', (await store.listLedgers('job'))[0]!)) items.push(entry);
      expect(items.map((e) => (e.status === 'done' ? e.result : e.error))).toEqual([20, 40]);
    });
  });
});
