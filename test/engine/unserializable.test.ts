/**
 * Issue 14, item 7: a value the store cannot encode (nested 100,000 levels deep, a Promise, a class
 * instance, a function) is `UNSERIALIZABLE` in cairn's words, wherever it is: an item result fails
 * alone and the other results of its batch are kept (a resume runs only that item again); a stage
 * output or a workflow update fails its stage or node, named. Never a bare `RangeError`.
 */
import { describe, expect, it } from 'vitest';
import { CheckpointManager } from '../../src/engine/checkpoint-manager.js';
import { pipeline } from '../../src/engine/pipeline.js';
import { workflow } from '../../src/engine/workflow.js';
import { Counter, ledgerEntries, useCairns, withStore } from './engine-helpers.js';
import { ENGINE_STORES } from './store-matrix.js';

/** `{ a: { a: … 1 } }`, `levels` deep: JSON.stringify and devalue overflow the stack on it. */
function nested(levels: number): unknown {
  let value: unknown = 1;
  for (let i = 0; i < levels; i++) value = { a: value };
  return value;
}

class Point {
  constructor(
    readonly x: number,
    readonly y: number,
  ) {}
}

const ROWS = Array.from({ length: 10 }, (_, n) => n);

describe.each(ENGINE_STORES)('values that cannot be stored on $name', (kind) => {
  const open = useCairns();

  it('an item result nested 100,000 levels deep fails alone; the batch is kept and a resume runs only that item', async () => {
    const url = await kind.freshUrl();
    const calls = new Counter();
    let deep = true;
    const def = pipeline('deep-items').stage('rows', async (ctx) => {
      const results = await ctx.items('rows', ROWS, (n) => {
        calls.hit(String(n));
        return n === 9 && deep ? nested(100_000) : n * 2; // the last: every other item has run when it stops the stage
      });
      return { results };
    });
    const failed = await open(url).run(def, {});
    expect(failed.status).toBe('failed');
    expect(failed.error?.code).toBe('ITEM_FAILED');
    expect(failed.error?.message).toMatch(/item 9 .*cannot be stored.*nested too deeply/);
    expect(failed.error?.message).not.toMatch(/Maximum call stack/);

    const ledger = (await withStore(url, (store) => store.listLedgers(failed.id)))[0]!;
    const entries = await ledgerEntries(url, failed.id, ledger);
    const bad = entries.find((e) => e.key === '9');
    expect(bad).toMatchObject({ status: 'failed', error: { code: 'UNSERIALIZABLE' } });
    expect(entries.filter((e) => e.status === 'done').map((e) => e.key)).toEqual(ROWS.filter((n) => n !== 9).map(String));

    // the same code again: only item 9 runs, and fails the same way (nothing else is redone)
    calls.reset();
    const again = await open(url).run(def, {});
    expect(again.status).toBe('failed');
    expect(ROWS.map((n) => calls.of(String(n)))).toEqual(ROWS.map((n) => (n === 9 ? 1 : 0)));

    // fixed: only item 9 runs, and the run completes with every result
    calls.reset();
    deep = false;
    const fixed = await open(url).run(def, {});
    expect(fixed.status).toBe('completed');
    expect(ROWS.map((n) => calls.of(String(n)))).toEqual(ROWS.map((n) => (n === 9 ? 1 : 0)));
    expect(fixed.result).toEqual({ results: ROWS.map((n) => n * 2) });
  });

  it("with onItemError: 'collect', each result that cannot be stored is a failure of its own, in cairn's words", async () => {
    const url = await kind.freshUrl();
    const values: Record<number, () => unknown> = {
      2: () => nested(100_000),
      4: () => ({ pending: Promise.resolve(1) }),
      6: () => ({ at: new Point(1, 2) }),
      8: () => ({ fn: () => 1 }),
    };
    const def = pipeline('collect-unstorable').stage('rows', (ctx) =>
      ctx.items('rows', ROWS, (n) => values[n]?.() ?? n, { onItemError: 'collect', concurrency: 3 }),
    );
    const run = await open(url).run(def, {});
    expect(run.status).toBe('completed');
    const { results, failures } = run.result as {
      results: unknown[];
      failures: { key: string; error: { code?: string; message: string } }[];
    };
    expect(failures.map((f) => [f.key, f.error.code])).toEqual([
      ['2', 'UNSERIALIZABLE'],
      ['4', 'UNSERIALIZABLE'],
      ['6', 'UNSERIALIZABLE'],
      ['8', 'UNSERIALIZABLE'],
    ]);
    const [deep, promise, instance, fn] = failures.map((f) => f.error.message);
    expect(deep).toMatch(/^The result of item 2 cannot be stored: it is nested too deeply/);
    expect(promise).toMatch(/^The result of item 4 cannot be stored \(at \.pending\): it holds a Promise: did you forget an `await`\?$/);
    expect(instance).toMatch(/^The result of item 6 cannot be stored \(at \.at\): it holds an instance of Point/);
    expect(fn).toMatch(/^The result of item 8 cannot be stored \(at \.fn\): it holds a function/);
    for (const message of [deep, promise, instance, fn]) expect(message).not.toMatch(/stringifyAsync|non-POJO|Maximum call stack/);
    expect(results.filter((r) => r !== undefined && r !== null)).toEqual([0, 1, 3, 5, 7, 9]);
  });

  it('a stage output nested too deeply fails that stage with UNSERIALIZABLE naming it; earlier stages are kept', async () => {
    const url = await kind.freshUrl();
    const calls = new Counter();
    const def = pipeline('deep-output')
      .stage('fine', () => {
        calls.hit('fine');
        return 'ok';
      })
      .stage('tree', () => nested(100_000));
    const run = await open(url).run(def, {});
    expect(run.status).toBe('failed');
    expect(run.error).toMatchObject({ code: 'UNSERIALIZABLE', name: 'CairnError', stage: 'tree' });
    expect(run.error?.message).toMatch(/^The output of stage tree cannot be stored: it is nested too deeply/);
    expect(run.stages.map((s) => s.status)).toEqual(['completed', 'failed']);
    const again = await open(url).run(def, {});
    expect(again.error?.code).toBe('UNSERIALIZABLE');
    expect(calls.of('fine')).toBe(1);
  });

  it('a stage output holding a Promise says to await it, with the path inside the output', async () => {
    const def = pipeline('promise-output').stage('fetch', () => ({ page: { body: Promise.resolve('x') } }));
    const run = await open(await kind.freshUrl()).run(def, {});
    expect(run.error).toMatchObject({ code: 'UNSERIALIZABLE', stage: 'fetch' });
    expect(run.error?.message).toBe(
      'The output of stage fetch cannot be stored (at .page.body): it holds a Promise: did you forget an `await`?',
    );
  });

  it('a workflow update nested too deeply fails its node with UNSERIALIZABLE naming it', async () => {
    const def = workflow('deep-update', { initial: { n: 0 } })
      .node('grow', () => ({ tree: nested(100_000) }))
      .node('after', () => ({ n: 1 }))
      .edge('grow', 'after');
    const run = await open(await kind.freshUrl()).run(def, {});
    expect(run.status).toBe('failed');
    expect(run.error).toMatchObject({ code: 'UNSERIALIZABLE', stage: 'grow' });
    expect(run.error?.message).toMatch(/^The update returned by node grow cannot be stored: it is nested too deeply/);
  });

  it('CheckpointManager.create refuses such a state or meta with UNSERIALIZABLE, storing nothing', async () => {
    const cm = new CheckpointManager({ store: await kind.freshUrl() });
    try {
      await expect(cm.create('wf', nested(100_000))).rejects.toMatchObject({ code: 'UNSERIALIZABLE' });
      await expect(cm.create('wf', { ok: 1 }, { big: 1n })).rejects.toMatchObject({
        code: 'UNSERIALIZABLE',
        message: expect.stringMatching(/^The checkpoint meta cannot be stored: it holds a BigInt/),
      });
      const cyclic: Record<string, unknown> = {};
      cyclic.self = cyclic;
      await expect(cm.create('wf', { ok: 1 }, cyclic)).rejects.toMatchObject({ code: 'UNSERIALIZABLE' });
      expect(await cm.list('wf')).toEqual([]);
      // cycles and BigInt in the state itself are stored, and come back as they went in
      const state = { n: 2n, self: undefined as unknown };
      state.self = state;
      const ref = await cm.create('wf', state);
      const back = (await cm.load(ref.id)).state as typeof state;
      expect(back.n).toBe(2n);
      expect(back.self).toBe(back);
    } finally {
      await cm.close();
    }
  });
});
