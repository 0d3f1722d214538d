/**
 * Issue 14, item 6: a stage's finished items are kept when an upstream stage reruns to the same
 * output (its ledger's basis is the upstream output's content, not its checkpoint seq), and run
 * again when the upstream output differs. A basis stored by an earlier cairn (upstream seqs) keeps
 * its ledger while those seqs hold, and never after an upstream rerun. On every store.
 */
import { describe, expect, it } from 'vitest';
import { canonicalHash } from '../../src/core/hash.js';
import { pipeline } from '../../src/engine/pipeline.js';
import { Counter, damageCheckpoint, useCairns, withStore } from './engine-helpers.js';
import { ENGINE_STORES } from './store-matrix.js';

/**
 * `a` returns `source.rows` (its fingerprint never changes); `b` runs one item per row and throws
 * on the rows listed in `failOn` (once each).
 */
function abPipeline(calls: Counter, source: { rows: number[] }, failOn = new Set<number>(), versions = { a: '1', b: '1' }) {
  return pipeline('basis')
    .stage(
      'a',
      () => {
        calls.hit('a');
        return { rows: [...source.rows] };
      },
      { version: versions.a },
    )
    .stage(
      'b',
      async (ctx) => {
        calls.hit('b');
        const results = await ctx.items('rows', ctx.output('a').rows, (n) => {
          calls.hit(`item:${n}`);
          if (failOn.delete(n)) throw new Error(`row ${n} failed`);
          return n * 10;
        });
        return { results };
      },
      { version: versions.b },
    );
}

const itemCalls = (calls: Counter, rows: readonly number[]): number[] => rows.map((n) => calls.of(`item:${n}`));

/** The seq of stage `stage`'s (newest intact) completion checkpoint. */
async function completionSeq(url: string, runId: string, stage: string): Promise<number> {
  const entries = await withStore(url, (store) => store.listCheckpoints(runId));
  const seqs = entries.flatMap((e) => (e.valid && e.ref.kind === 'stage' && e.ref.stage === stage ? [e.ref.seq] : []));
  expect(seqs.length).toBeGreaterThan(0);
  return seqs.at(-1)!;
}

describe.each(ENGINE_STORES)('item ledgers and upstream reruns on $name', (kind) => {
  const open = useCairns();
  const rows = [1, 2, 3, 4, 5, 6];

  it('a damaged upstream checkpoint: the upstream reruns to the same output and the finished items are not run again', async () => {
    const url = await kind.freshUrl();
    const calls = new Counter();
    const source = { rows };
    const first = await open(url).run(abPipeline(calls, source), {});
    expect(first.status).toBe('completed');
    expect(itemCalls(calls, rows)).toEqual([1, 1, 1, 1, 1, 1]);
    await damageCheckpoint(kind.name, url, first.id, await completionSeq(url, first.id, 'a'));

    calls.reset();
    const again = await open(url).run(abPipeline(calls, source), {});
    expect(again.status).toBe('completed');
    expect(again.result).toEqual(first.result);
    expect(calls.of('a')).toBe(1); // its checkpoint was damaged: it ran again
    expect(itemCalls(calls, rows)).toEqual([0, 0, 0, 0, 0, 0]);
    expect(again.history.some((h) => h.event === 'checkpoint:damaged')).toBe(true);
    expect(again.history.some((h) => h.event === 'stage:items-kept' && h.stage === 'b')).toBe(true);
  });

  it('a run that failed midway: after the upstream reruns to the same output, only the items left run', async () => {
    const url = await kind.freshUrl();
    const calls = new Counter();
    const source = { rows };
    const failed = await open(url).run(abPipeline(calls, source, new Set([4])), {});
    expect(failed.status).toBe('failed');
    expect(itemCalls(calls, rows)).toEqual([1, 1, 1, 1, 0, 0]);
    await damageCheckpoint(kind.name, url, failed.id, await completionSeq(url, failed.id, 'a'));

    calls.reset();
    const resumed = await open(url).run(abPipeline(calls, source), {});
    expect(resumed.status).toBe('completed');
    expect(calls.of('a')).toBe(1);
    expect(itemCalls(calls, rows)).toEqual([0, 0, 0, 1, 1, 1]);
    expect(resumed.result).toEqual({ results: rows.map((n) => n * 10) });
  });

  it("an upstream stage's new version that gives the same output: the finished items are kept; the stage's own new version reruns them", async () => {
    const url = await kind.freshUrl();
    const calls = new Counter();
    const source = { rows };
    expect((await open(url).run(abPipeline(calls, source), {})).status).toBe('completed');

    calls.reset();
    const upstream = await open(url).run(abPipeline(calls, source, new Set(), { a: '2', b: '1' }), {});
    expect(upstream.status).toBe('completed');
    expect(calls.of('a')).toBe(1); // a reran under its new version, to the same output
    expect(itemCalls(calls, rows)).toEqual([0, 0, 0, 0, 0, 0]);
    expect(upstream.result).toEqual({ results: rows.map((n) => n * 10) });

    calls.reset();
    const own = await open(url).run(abPipeline(calls, source, new Set(), { a: '2', b: '2' }), {});
    expect(own.status).toBe('completed');
    expect(itemCalls(calls, rows)).toEqual([1, 1, 1, 1, 1, 1]);
  });

  it('control: the upstream reruns to a different output and every item runs again', async () => {
    const url = await kind.freshUrl();
    const calls = new Counter();
    const source = { rows };
    const first = await open(url).run(abPipeline(calls, source), {});
    expect(first.status).toBe('completed');
    await damageCheckpoint(kind.name, url, first.id, await completionSeq(url, first.id, 'a'));

    calls.reset();
    const changed = { rows: [...rows].reverse() }; // the same items, another output: nothing of b's may be trusted
    const again = await open(url).run(abPipeline(calls, changed), {});
    expect(again.status).toBe('completed');
    expect(itemCalls(calls, rows)).toEqual([1, 1, 1, 1, 1, 1]);
    expect(again.result).toEqual({ results: changed.rows.map((n) => n * 10) });
  });

  it('a completed stage that keeps its items on the same basis still asks its waits again', async () => {
    const url = await kind.freshUrl();
    const calls = new Counter();
    const def = pipeline('basis-wait')
      .stage('a', () => {
        calls.hit('a');
        return [1, 2, 3];
      })
      .stage('b', async (ctx) => {
        const doubled = await ctx.items('rows', ctx.output('a'), (n) => {
          calls.hit(`item:${n}`);
          return n * 2;
        });
        return { doubled, ok: await ctx.waitFor<boolean>('ok') };
      });
    const cairn = open(url);
    const waiting = await cairn.run(def, {});
    expect(waiting).toMatchObject({ status: 'waiting', waitingFor: 'ok' });
    expect((await cairn.resume(waiting.id, { inputs: { ok: true } })).status).toBe('completed');
    await damageCheckpoint(kind.name, url, waiting.id, await completionSeq(url, waiting.id, 'a'));

    calls.reset();
    const again = await open(url).run(def, {});
    expect(again).toMatchObject({ status: 'waiting', waitingFor: 'ok' });
    expect(itemCalls(calls, [1, 2, 3])).toEqual([0, 0, 0]);
  });

  describe('a basis stored by an earlier cairn (upstream seqs)', () => {
    /** Rewrites stage b's stored basis the way cairn did before content bases: fingerprint + upstream seqs. */
    async function storeSeqBasis(url: string, runId: string, seqA: number): Promise<void> {
      await withStore(url, async (store) => {
        const run = await store.getRun(runId);
        const data = run!.data as { stages: Record<string, { fingerprint: string; basis?: string }> };
        const b = data.stages.b!;
        b.basis = canonicalHash({ fingerprint: b.fingerprint, depSeqs: { a: seqA } }).slice(0, 16);
        await store.updateRun(runId, run!.version, { data });
      });
    }

    it('keeps the ledger while the upstream seqs hold', async () => {
      const url = await kind.freshUrl();
      const calls = new Counter();
      const source = { rows };
      const failed = await open(url).run(abPipeline(calls, source, new Set([3])), {});
      expect(failed.status).toBe('failed');
      await storeSeqBasis(url, failed.id, await completionSeq(url, failed.id, 'a'));

      calls.reset();
      const resumed = await open(url).run(abPipeline(calls, source), {});
      expect(resumed.status).toBe('completed');
      expect(calls.of('a')).toBe(0);
      expect(itemCalls(calls, rows)).toEqual([0, 0, 1, 1, 1, 1]);
    });

    it('never trusts it after the upstream reran (it cannot tell the output was the same)', async () => {
      const url = await kind.freshUrl();
      const calls = new Counter();
      const source = { rows };
      const failed = await open(url).run(abPipeline(calls, source, new Set([3])), {});
      expect(failed.status).toBe('failed');
      const seqA = await completionSeq(url, failed.id, 'a');
      await storeSeqBasis(url, failed.id, seqA);
      await damageCheckpoint(kind.name, url, failed.id, seqA);

      calls.reset();
      const changed = { rows: [...rows].reverse() };
      const resumed = await open(url).run(abPipeline(calls, changed), {});
      expect(resumed.status).toBe('completed');
      expect(calls.of('a')).toBe(1);
      expect(itemCalls(calls, rows)).toEqual([1, 1, 1, 1, 1, 1]);
      expect(resumed.result).toEqual({ results: changed.rows.map((n) => n * 10) });
    });
  });
});
