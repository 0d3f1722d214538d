/**
 * Spend and budgets: `item.spend` is saved with the item's entry (a failed try's spend too) and
 * counted once whatever is read again; `ctx.spend` adds to the stage; a budget stops new items, lets
 * those in flight finish and be saved, and leaves the run waiting for `budget` until a resume raises it.
 */
import { describe, expect, it } from 'vitest';
import { readRunDetails } from '../../src/cli/run-details.js';
import { pipeline } from '../../src/engine/pipeline.js';
import { toSummary } from '../../src/engine/run-data.js';
import type { CairnEvents, ItemInfo } from '../../src/engine/types.js';
import { END, workflow } from '../../src/engine/workflow.js';
import { ALL_STORES } from './store-matrix.js';
import { useCairns, withStore } from './engine-helpers.js';

/** A stand-in paid API: every call is logged; each costs 0.01 usd and 100 tokens. */
function paidApi() {
  const calls: string[] = [];
  const call = (text: string, item: ItemInfo): string => {
    calls.push(text);
    item.spend({ usd: 0.01, tokens: 100 });
    return text.toUpperCase();
  };
  return { calls, call };
}

describe.each(ALL_STORES)('spend and budgets on $name', (kind) => {
  const open = useCairns();

  it('item spend is saved with results and summed per stage and run', async () => {
    const url = await kind.freshUrl();
    const cairn = open(url);
    const api = paidApi();
    const words = Array.from({ length: 20 }, (_, i) => `w${i}`);
    const def = pipeline('spend-sum')
      .stage('mine', (ctx) => ctx.items('calls', words, api.call, { concurrency: 4 }))
      .stage('report', (ctx) => {
        ctx.spend({ usd: 0.5 });
        return ctx.output('mine').length;
      });
    const run = await cairn.run(def, {});
    expect(run.status).toBe('completed');
    expect(api.calls).toHaveLength(20);
    expect(run.spend?.usd).toBeCloseTo(0.7, 10);
    expect(run.spend?.tokens).toBe(2000);
    expect(run.stages.find((s) => s.name === 'mine')?.spend).toEqual({ usd: expect.closeTo(0.2, 10) as number, tokens: 2000 });
    expect(run.stages.find((s) => s.name === 'report')?.spend).toEqual({ usd: 0.5 });
    // the stored entries carry the spend
    const entries = await withStore(url, async (store) => {
      const read = [];
      for await (const entry of store.readItems(run.id, 'mine.calls')) read.push(entry);
      return read;
    });
    expect(entries).toHaveLength(20);
    expect(entries.every((e) => e.spend?.tokens === 100)).toBe(true);
  });

  it('a failed try is paid for too: its spend goes with the entry that follows it', async () => {
    const cairn = open(await kind.freshUrl());
    let tries = 0;
    const def = pipeline('spend-retry').stage('call', (ctx) =>
      ctx.items(
        'calls',
        ['a'],
        (word, item) => {
          item.spend({ usd: 1 });
          if (++tries < 3) throw new Error('rate limited');
          return word;
        },
        { retries: { max: 3, backoffMs: 0 } },
      ),
    );
    const run = await cairn.run(def, {});
    expect(run.status).toBe('completed');
    expect(run.spend).toEqual({ usd: 3 });
  });

  it('the budget stops new items; the run waits for budget and a raised budget finishes it, paying for no item twice', async () => {
    const cairn = open(await kind.freshUrl());
    const api = paidApi();
    const words = Array.from({ length: 30 }, (_, i) => `w${i}`);
    const def = pipeline('spend-budget')
      .stage('mine', (ctx) => ctx.items('calls', words, api.call, { concurrency: 3 }))
      .stage('count', (ctx) => ctx.output('mine').length);
    const waiting = await cairn.run(def, {}, { budget: { usd: 0.1 } });
    expect(waiting.status).toBe('waiting');
    expect(waiting.waitingFor).toBe('budget');
    expect(waiting.budget).toEqual({ usd: 0.1 });
    // no item starts once 0.10 is spent; the ones in flight (at most 3) finish
    expect(api.calls.length).toBeGreaterThanOrEqual(10);
    expect(api.calls.length).toBeLessThanOrEqual(10 + 2);
    expect(waiting.spend?.usd).toBeCloseTo(api.calls.length * 0.01, 10);
    expect(waiting.stages.find((s) => s.name === 'mine')).toMatchObject({ status: 'waiting' });
    expect(waiting.stages.find((s) => s.name === 'mine')?.reason).toMatch(/^waiting for a higher budget: spent usd 0\.1\d* of 0\.1$/);

    // resuming without a higher budget waits again at once, running nothing
    const before = api.calls.length;
    const again = await cairn.resume(waiting.id);
    expect(again.status).toBe('waiting');
    expect(api.calls.length).toBe(before);

    const done = await cairn.resume(waiting.id, { budget: { usd: 1 } });
    expect(done.status).toBe('completed');
    expect(done.result).toBe(30);
    expect(new Set(api.calls).size).toBe(30);
    expect(api.calls).toHaveLength(30); // no item paid twice
    expect(done.spend?.usd).toBeCloseTo(0.3, 10);
    expect(done.history.map((h) => h.event)).toContain('run:budget');
  });

  it('progress events carry the call spend, the projected spend and the run spend', async () => {
    const cairn = open(await kind.freshUrl());
    const api = paidApi();
    const events: CairnEvents['items:progress'][] = [];
    cairn.on('items:progress', (e) => events.push(e));
    const words = Array.from({ length: 10 }, (_, i) => `w${i}`);
    const def = pipeline('spend-progress').stage('mine', (ctx) => ctx.items('calls', words, api.call));
    await cairn.run(def, {});
    const last = events.at(-1)!;
    expect(last.spend).toEqual({ usd: expect.closeTo(0.1, 10) as number, tokens: 1000 });
    expect(last.projectedSpend?.tokens).toBe(1000);
    expect(last.runSpend?.tokens).toBe(1000);
  });
});

describe('spend and budgets: checks', () => {
  const open = useCairns();

  it('bad spend and budgets are refused with INVALID_INPUT naming the problem', async () => {
    const cairn = open('memory:spend-checks');
    const def = pipeline('spend-bad').stage('s', (ctx) =>
      ctx.items('calls', [1], (n, item) => {
        item.spend({ usd: -1 });
        return n;
      }),
    );
    const run = await cairn.run(def, {});
    expect(run.status).toBe('failed');
    expect(run.error?.message).toMatch(/spend of usd must be a finite number ≥ 0/);
    await expect(cairn.run(def, {}, { runId: 'other', budget: { usd: Number.NaN } })).rejects.toMatchObject({ code: 'INVALID_INPUT' });
    await expect(cairn.run(def, {}, { runId: 'other2', budget: { __proto__x: 1 } })).rejects.toMatchObject({ code: 'INVALID_INPUT' });
  });

  it('waitFor("budget") is refused: the name is the budget wait', async () => {
    const cairn = open('memory:spend-wait-name');
    const def = pipeline('wait-budget').stage('s', async (ctx) => ctx.waitFor('budget'));
    const run = await cairn.run(def, {});
    expect(run.status).toBe('failed');
    expect(run.error?.code).toBe('INVALID_DEFINITION');
  });

  it('a workflow step settles its spend: a loop of paid steps keeps one total per node', async () => {
    const cairn = open('memory:spend-workflow');
    const def = workflow('spend-loop', { initial: { n: 0 } })
      .node('call', async (state, ctx) => {
        await ctx.items('one', [state.n], (n, item) => {
          item.spend({ usd: 0.25 });
          return n;
        });
        return { n: state.n + 1 };
      })
      .edge('call', (state) => (state.n < 8 ? 'call' : END));
    const run = await cairn.run(def, {});
    expect(run.status).toBe('completed');
    expect(run.spend).toEqual({ usd: 2 });
    expect(run.stages.find((s) => s.name === 'call')?.spend).toEqual({ usd: 2 });
  });
});

describe('spend as show reads it', () => {
  const open = useCairns();

  it('show restates spend from the ledgers (a killed process saved no summary); a rerunning run shows no old result', async () => {
    const url = 'memory:spend-show-live';
    const cairn = open(url);
    const api = paidApi();
    const def = pipeline('spend-live').stage('mine', (ctx) => ctx.items('calls', ['a', 'b'], api.call));
    const run = await cairn.run(def, {});
    expect(run.spend).toEqual({ usd: 0.02, tokens: 200 });
    // entries a process wrote before it was killed, its summary never saved: show counts them
    await withStore(url, (store) =>
      store.appendItems(run.id, 'mine.calls', [
        { key: '9', index: 9, status: 'failed', attempt: 1, error: { name: 'Error', message: '429' }, spend: { usd: 0.5 } },
      ]),
    );
    const details = await withStore(url, (store) => readRunDetails(store, run.id));
    expect('status' in details && details.spend).toEqual({ usd: 0.52, tokens: 200 });
    expect('status' in details && details.stages[0]?.spend).toEqual({ usd: 0.52, tokens: 200 });
    // the stored result is the completed run's only
    const record = await withStore(url, (store) => store.getRun(run.id));
    expect(toSummary({ ...record!, status: 'running' }).result).toBeUndefined();
    expect(toSummary(record!).result).toEqual(['A', 'B']);
  });
});
