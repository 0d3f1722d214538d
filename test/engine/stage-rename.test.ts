/**
 * Issue 16, renamed stages (`renamedFrom`), on every store: a completed stage renamed is skipped
 * and so are the stages after it; a stage renamed in the middle of its items goes on from its
 * ledger (no item done under the old name runs again), reuses from it later, and its run still
 * validates; what a definition may not say.
 */
import { describe, expect, it } from 'vitest';
import { checkRun } from '../../src/cli/run-validation.js';
import { pipeline } from '../../src/engine/pipeline.js';
import { Counter, ledgerEntries, useCairns, withStore } from './engine-helpers.js';
import { ALL_STORES } from './store-matrix.js';

const ROWS = Array.from({ length: 50 }, (_, n) => n);

/**
 * `load` → `<middle>` (one item per row; throws on the rows in `failOn`, once each) → `report`.
 * `middle` names the middle stage, `renamedFrom` its former name; a new `load` version gives other rows.
 */
function threeStages(
  calls: Counter,
  middle: { name: string; renamedFrom?: string },
  failOn = new Set<number>(),
  load: { rows: readonly number[]; version: string } = { rows: ROWS, version: '1' },
) {
  return pipeline('rename')
    .stage(
      'load',
      () => {
        calls.hit('load');
        return { rows: [...load.rows] };
      },
      { version: load.version },
    )
    .stage(
      middle.name,
      async (ctx) => {
        calls.hit('middle');
        const out = await ctx.items(
          'rows',
          ctx.output('load').rows,
          (n) => {
            calls.hit(`item:${n}`);
            if (failOn.delete(n)) throw new Error(`row ${n} failed`);
            return n * 10;
          },
          { reuse: 'content' },
        );
        return { sum: out.reduce((a, b) => a + b, 0) };
      },
      middle.renamedFrom === undefined ? {} : { renamedFrom: middle.renamedFrom },
    )
    .stage('report', (ctx) => {
      calls.hit('report');
      return `sum ${(ctx.maybeOutput(middle.name) as { sum: number }).sum}`;
    });
}

const itemCalls = (calls: Counter, rows: readonly number[] = ROWS): number => rows.reduce((sum, n) => sum + calls.of(`item:${n}`), 0);

describe.each(ALL_STORES)('renamed stages on $name', (kind) => {
  const open = useCairns();

  it('a completed stage renamed is skipped, and so are the stages after it', async () => {
    const url = await kind.freshUrl();
    const calls = new Counter();
    // report fails the first time: the run is left failed after the middle stage completed
    let reportFails = true;
    const failingReport = pipeline('rename')
      .stage('load', () => ({ rows: [...ROWS] }))
      .stage('count', async (ctx) => ({
        sum: (await ctx.items('rows', ctx.output('load').rows, (n) => n * 10)).reduce((a, b) => a + b, 0),
      }))
      .stage('report', (ctx) => {
        if (reportFails) throw new Error('printer jammed');
        return `sum ${ctx.output('count').sum}`;
      });
    const failed = await open(url).run(failingReport, {});
    expect(failed.status).toBe('failed');
    reportFails = false;

    const renamed = await open(url).run(threeStages(calls, { name: 'tally', renamedFrom: 'count' }), {});
    expect(renamed.status).toBe('completed');
    expect(renamed.result).toBe(`sum ${ROWS.reduce((a, n) => a + n * 10, 0)}`);
    expect(calls.of('load')).toBe(0);
    expect(calls.of('middle')).toBe(0);
    expect(calls.of('report')).toBe(1);
    expect(renamed.stages.map((s) => [s.name, s.status])).toEqual([
      ['load', 'completed'],
      ['tally', 'completed'],
      ['report', 'completed'],
    ]);
    expect(renamed.stages[1]?.items).toEqual({ rows: { done: 50, failed: 0, total: 50 } });
    expect(renamed.history.some((h) => h.event === 'stage:renamed' && h.stage === 'tally')).toBe(true);

    // run again: completed, nothing runs; the rename stays done
    calls.reset();
    const again = await open(url).run(threeStages(calls, { name: 'tally', renamedFrom: 'count' }), {});
    expect(again.status).toBe('completed');
    expect(again.result).toBe(renamed.result);
    expect(calls.of('load') + calls.of('middle') + calls.of('report')).toBe(0);
    expect(again.history.filter((h) => h.event === 'stage:renamed')).toHaveLength(1);
    await withStore(url, async (store) => expect((await checkRun(store, again.id))?.valid).toBe(true));
  });

  it('a completed run with a renamed stage runs nothing again', async () => {
    const url = await kind.freshUrl();
    const calls = new Counter();
    const first = await open(url).run(threeStages(calls, { name: 'count' }), {});
    expect(first.status).toBe('completed');
    calls.reset();
    const renamed = await open(url).run(threeStages(calls, { name: 'tally', renamedFrom: 'count' }), {});
    expect(renamed.status).toBe('completed');
    expect(renamed.result).toBe(first.result);
    expect(calls.of('load') + calls.of('middle') + calls.of('report') + itemCalls(calls)).toBe(0);
  });

  it('a stage renamed in the middle of its items goes on from its ledger', async () => {
    const url = await kind.freshUrl();
    const calls = new Counter();
    const failed = await open(url).run(threeStages(calls, { name: 'count' }, new Set([30])), {});
    expect(failed.status).toBe('failed');
    expect(itemCalls(calls)).toBe(31); // 0–29 done, 30 failed

    calls.reset();
    const renamed = await open(url).run(threeStages(calls, { name: 'tally', renamedFrom: 'count' }), {});
    expect(renamed.status).toBe('completed');
    expect(renamed.result).toBe(`sum ${ROWS.reduce((a, n) => a + n * 10, 0)}`);
    expect(calls.of('load')).toBe(0);
    expect(itemCalls(calls, ROWS.slice(0, 30))).toBe(0); // done under the old name: not run again
    expect(itemCalls(calls, ROWS.slice(30))).toBe(20);
    expect(renamed.stages.map((s) => s.name)).toEqual(['load', 'tally', 'report']);
    // the ledger keeps the old name; the summary says so, and the run validates
    await withStore(url, async (store) => {
      expect(await store.listLedgers(renamed.id)).toEqual(['count.rows']);
      const data = (await store.getRun(renamed.id))?.data as { stages: Record<string, { ledgerStage?: string }> };
      expect(data.stages.tally?.ledgerStage).toBe('count');
      expect(data.stages.count).toBeUndefined();
      expect((await checkRun(store, renamed.id))?.valid).toBe(true);
    });

    // later, the upstream output changes: a new generation, still under the old name, reuses the unchanged rows
    calls.reset();
    const more = [...ROWS, 50];
    const grown = await open(url).run(
      threeStages(calls, { name: 'tally', renamedFrom: 'count' }, new Set(), { rows: more, version: '2' }),
      {},
    );
    expect(grown.status).toBe('completed');
    expect(itemCalls(calls, more)).toBe(1);
    expect(calls.of('item:50')).toBe(1);
    const entries = await ledgerEntries(url, renamed.id, 'count.rows.g1');
    expect(entries.filter((e) => e.reusedFrom === 'count.rows')).toHaveLength(50);
  });

  it('refuses what a definition may not say', async () => {
    const load = pipeline('rename-bad').stage('load', () => 1);
    expect(() => load.stage('x', () => 2, { renamedFrom: 'load' })).toThrow(/renamedFrom load is the name of another stage/);
    expect(() => load.stage('x', () => 2, { renamedFrom: 'x' })).toThrow(/its own name/);
    const renamed = load.stage('tally', () => 2, { renamedFrom: 'count' });
    expect(() => renamed.stage('count', () => 3)).toThrow(/stage tally was renamed from count, so no stage may be named count/);
    expect(() => renamed.stage('other', () => 3, { renamedFrom: 'count' })).toThrow(/former name of stage tally too/);

    // a new stage under the name whose ledgers a renamed stage still uses is refused, and the run is left as it was
    const url = await kind.freshUrl();
    const calls = new Counter();
    const first = await open(url).run(threeStages(calls, { name: 'count' }, new Set([30])), {});
    expect(first.status).toBe('failed');
    expect((await open(url).run(threeStages(calls, { name: 'tally', renamedFrom: 'count' }), {})).status).toBe('completed');
    const clash = pipeline('rename')
      .stage('load', () => ({ rows: [1] }))
      .stage('count', () => 0)
      .stage('tally', () => 0, { dependsOn: ['load'] });
    await expect(open(url).run(clash, {}, { runId: first.id })).rejects.toMatchObject({ code: 'INVALID_DEFINITION' });
    const after = await open(url).run(threeStages(calls, { name: 'tally', renamedFrom: 'count' }), {});
    expect(after.status).toBe('completed');
  });
});
