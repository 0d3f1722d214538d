/**
 * Issue 14, item 11: a resumed items call shows a rate and an ETA from its first progress event,
 * using the rate the earlier attempt measured (kept with the stage's item counts in the stored
 * summary) until this attempt has measured its own; the latest measured rate is kept.
 */
import { describe, expect, it } from 'vitest';
import { pipeline } from '../../src/engine/pipeline.js';
import { END, workflow } from '../../src/engine/workflow.js';
import { record, sleep, useCairns, withStore } from './engine-helpers.js';
import { ENGINE_STORES } from './store-matrix.js';

/** The rate kept with the item counts of `stage`/`name` in the run's stored summary (not shown in run summaries). */
async function storedRate(url: string, runId: string, stage: string, name: string): Promise<number | undefined> {
  const run = await withStore(url, (store) => store.getRun(runId));
  return (run?.data as { stages: Record<string, { items?: Record<string, { rate?: number }> }> }).stages[stage]?.items?.[name]?.rate;
}

const ROWS = Array.from({ length: 20 }, (_, n) => n);

/** 20 items of `ms` each; item 10 fails while `state.failing`. */
function slowItems(state: { failing: boolean }, ms = 5) {
  return pipeline('eta').stage('work', async (ctx) => {
    const out = await ctx.items('rows', ROWS, async (n) => {
      await sleep(ms);
      if (n === 10 && state.failing) throw new Error('flaky');
      return n;
    });
    return out.length;
  });
}

describe.each(ENGINE_STORES)('items progress across attempts on $name', (kind) => {
  const open = useCairns();

  it('the first progress event of a resume has the earlier rate and an ETA, not "ETA ?"', async () => {
    const url = await kind.freshUrl();
    const state = { failing: true };
    const failed = await open(url).run(slowItems(state), {});
    expect(failed.status).toBe('failed');
    expect(failed.stages[0]?.items?.rows).toEqual({ done: 10, failed: 1, total: 20 }); // the summary shows counts only
    const earlier = await storedRate(url, failed.id, 'work', 'rows');
    expect(earlier).toBeGreaterThan(0);

    state.failing = false;
    const cairn = open(url);
    const progress = record(cairn, 'items:progress');
    const done = await cairn.run(slowItems(state), {});
    expect(done.status).toBe('completed');
    const first = progress[0]!;
    expect(first).toMatchObject({ done: 10, total: 20 });
    expect(first.rate).toBe(earlier);
    expect(first.eta).toBeCloseTo(10 / earlier!, 6);
    // once this attempt has measured a rate, it is its own; the summary keeps it
    expect(progress.at(-1)?.eta).toBe(0);
    const rate = await storedRate(url, done.id, 'work', 'rows');
    expect(rate).toBeGreaterThan(0);
    expect(rate).not.toBe(earlier);
  });

  it('an attempt that finished no item keeps the earlier rate for the next one', async () => {
    const url = await kind.freshUrl();
    const first = await open(url).run(
      pipeline('eta-keep').stage('work', (ctx) =>
        ctx.items('rows', ROWS, async (n) => {
          await sleep(2);
          if (n === 5) throw new Error('stop here');
          return n;
        }),
      ),
      {},
    );
    const rate = await storedRate(url, first.id, 'work', 'rows');
    expect(rate).toBeGreaterThan(0);
    const second = await open(url).run(
      pipeline('eta-keep').stage('work', (ctx) =>
        ctx.items('rows', ROWS, (n) => {
          if (n === 5) throw new Error('still broken');
          return n;
        }),
      ),
      {},
    );
    expect(second.status).toBe('failed');
    expect(second.stages[0]?.items?.rows).toMatchObject({ done: 5 });
    expect(await storedRate(url, second.id, 'work', 'rows')).toBe(rate);
  });

  it("a workflow node that runs its items again in a loop starts from the last visit's rate", async () => {
    const def = workflow('eta-loop', { initial: { rounds: 0 } })
      .node('work', async (s, ctx) => {
        await ctx.items('rows', [1, 2, 3, 4], async (n) => {
          await sleep(3);
          return n;
        });
        return { rounds: s.rounds + 1 };
      })
      .edge('work', (s) => (s.rounds >= 2 ? END : 'work'));
    const cairn = open(await kind.freshUrl());
    const progress = record(cairn, 'items:progress');
    expect((await cairn.run(def, {})).status).toBe('completed');
    const firstStart = progress[0];
    const secondStart = progress.slice(progress.findIndex((p) => p.done === 4)).find((p) => p.done === 0);
    expect(firstStart).toMatchObject({ done: 0, total: 4 });
    expect(firstStart?.eta).toBeUndefined(); // nothing measured yet: no guess
    expect(secondStart?.rate).toBeGreaterThan(0);
    expect(secondStart?.eta).toBeGreaterThan(0);
  });
});
