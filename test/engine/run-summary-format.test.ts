/**
 * Issue 14, item 4: the run summary (`RunRecord.data`) carries a format version and says who owns
 * the run. A field written by a newer cairn survives an older cairn's update (a resume, a cancel);
 * a summary of a newer format is refused with FORMAT_TOO_NEW and left as it was; a summary that
 * fails its schema is damage (CHECKPOINT_CORRUPT naming the run and the field), never taken for a
 * CheckpointManager workflow, and running the definition again with the same input rebuilds it
 * without redoing intact work; summaries written before the version still read as before.
 * On memory, files, SQLite and Postgres: the newer cairn's writes are made through the store.
 */
import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import type { Cairn } from '../../src/engine/cairn.js';
import { CheckpointManager } from '../../src/engine/checkpoint-manager.js';
import { pipeline } from '../../src/engine/pipeline.js';
import { RUN_DATA_FORMAT } from '../../src/engine/run-data.js';
import { workflow } from '../../src/engine/workflow.js';
import type { Store } from '../../src/stores/store.js';
import { Counter, useCairns, withStore } from './engine-helpers.js';
import { ALL_STORES } from './store-matrix.js';

const STORES = ALL_STORES;

/** fetch (ctx.items over three parts) → confirm (waits for `approval`) → done. */
function review(calls: Counter) {
  return workflow('review', { initial: { parts: '' } })
    .node('fetch', async (_s, ctx) => ({
      parts: (
        await ctx.items('parts', ['a', 'b', 'c'], (p) => {
          calls.hit(`part ${p}`);
          return p.toUpperCase();
        })
      ).join(''),
    }))
    .node('confirm', async (_s, ctx) => ({ approved: await ctx.waitFor<boolean>('approval') }))
    .edge('fetch', 'confirm')
    .entry('fetch');
}

/** Rewrites the run's summary as another cairn would (an intact record: only its content differs). */
async function rewriteSummary(
  url: string,
  runId: string,
  edit: (data: Record<string, unknown>) => Record<string, unknown>,
): Promise<number> {
  return withStore(url, async (store: Store) => {
    const run = await store.getRun(runId);
    if (!run) throw new Error(`no run ${runId}`);
    const written = await store.updateRun(runId, run.version, { data: edit(structuredClone(run.data) as Record<string, unknown>) });
    return written.version;
  });
}

async function storedData(url: string, runId: string): Promise<Record<string, unknown>> {
  return withStore(url, async (store) => (await store.getRun(runId))?.data as Record<string, unknown>);
}

async function rejection(promise: Promise<unknown>): Promise<{ code?: string; message: string }> {
  try {
    await promise;
  } catch (error) {
    return error as { code?: string; message: string };
  }
  throw new Error('expected a rejection');
}

describe.each(STORES)('the run summary on $name', (kind) => {
  const open = useCairns();

  async function waitingRun(): Promise<{ url: string; cairn: Cairn; id: string; calls: Counter; input: { doc: string } }> {
    const url = await kind.freshUrl();
    const calls = new Counter();
    const cairn = open(url);
    const input = { doc: randomUUID() };
    const run = await cairn.run(review(calls), input);
    expect(run.status).toBe('waiting');
    return { url, cairn, id: run.id, calls, input };
  }

  it('says its format version and its owner; a CheckpointManager workflow says so too', async () => {
    const { url, cairn, id } = await waitingRun();
    expect(await storedData(url, id)).toMatchObject({ fv: RUN_DATA_FORMAT, owner: 'engine', kind: 'workflow' });

    const cm = new CheckpointManager({ store: url });
    try {
      await cm.create('loop-1', { step: 1 });
    } finally {
      await cm.close();
    }
    expect(await storedData(url, 'loop-1')).toEqual({ fv: RUN_DATA_FORMAT, owner: 'checkpoint-manager' });
    expect((await cairn.get('loop-1'))?.kind).toBe('checkpoints');
    expect((await rejection(cairn.resume('loop-1'))).code).toBe('INVALID_INPUT');
  });

  it('keeps the fields a newer cairn wrote when it updates the summary (resume, cancel)', async () => {
    const { url, cairn, id } = await waitingRun();
    const future = { since: '0.9', nested: [1, { deep: true }] };
    await rewriteSummary(url, id, (data) => {
      const attempts = data.attempts as Record<string, unknown>[];
      attempts[0] = { ...attempts[0], cpuMs: 12 };
      return { ...data, future };
    });
    const done = await cairn.resume(id, { inputs: { approval: true } });
    expect(done.status).toBe('completed');
    const after = await storedData(url, id);
    expect(after.future).toEqual(future);
    expect((after.attempts as Record<string, unknown>[])[0]?.cpuMs).toBe(12);

    const other = await waitingRun();
    await rewriteSummary(other.url, other.id, (data) => ({ ...data, future }));
    expect((await other.cairn.cancel(other.id)).status).toBe('cancelled');
    expect((await storedData(other.url, other.id)).future).toEqual(future);
  });

  it('refuses a summary of a newer format with FORMAT_TOO_NEW, and leaves it as it was', async () => {
    const { url, cairn, id } = await waitingRun();
    const version = await rewriteSummary(url, id, (data) => ({ ...data, fv: RUN_DATA_FORMAT + 1, kind: 'workflow-v2' }));
    const attempts: (() => Promise<unknown>)[] = [
      () => cairn.resume(id, { inputs: { approval: true } }),
      () => cairn.run(review(new Counter()), { doc: 'x' }, { runId: id }),
      () => cairn.cancel(id),
    ];
    for (const attempt of attempts) {
      const error = await rejection(attempt());
      expect(error.code).toBe('FORMAT_TOO_NEW');
      expect(error.message).toContain(id);
    }
    const summary = await cairn.get(id);
    expect(summary?.problem).toMatchObject({ code: 'FORMAT_TOO_NEW' });
    expect(summary?.kind).not.toBe('checkpoints');
    await withStore(url, async (store) => expect((await store.getRun(id))?.version).toBe(version));
    expect((await storedData(url, id)).fv).toBe(RUN_DATA_FORMAT + 1);
  });

  it('reports a summary that fails its schema as damaged, naming the run and the field; running it again rebuilds it', async () => {
    const { url, cairn, id, calls, input } = await waitingRun();
    await rewriteSummary(url, id, (data) => ({ ...data, attempts: 'three' }));

    const summary = await cairn.get(id);
    expect(summary?.kind).toBe('workflow'); // never re-classified as a CheckpointManager workflow
    expect(summary?.problem).toMatchObject({ code: 'CHECKPOINT_CORRUPT', rebuilt: false });
    expect(summary?.problem?.message).toContain(id);
    expect(summary?.problem?.message).toContain('attempts');
    expect((await cairn.list()).find((s) => s.id === id)?.problem?.code).toBe('CHECKPOINT_CORRUPT');
    const refused = await rejection(cairn.resume(id, { inputs: { approval: true } }));
    expect(refused.code).toBe('CHECKPOINT_CORRUPT');
    expect(refused.message).toContain(id);
    expect(refused.message).toContain('attempts');
    expect(refused.message).toContain(`--run-id ${id}`);

    // the same definition and input again: a new summary from the intact checkpoints and ledgers
    const before = calls.of('part a');
    const again = await cairn.run(review(calls), input, { inputs: { approval: true } });
    expect(again.status).toBe('completed');
    expect(again.problem).toBeUndefined();
    expect(again.history.some((h) => h.event === 'run:rebuilt')).toBe(true);
    expect(calls.of('part a')).toBe(before); // the fetch step is not run again
    expect(await storedData(url, id)).toMatchObject({ fv: RUN_DATA_FORMAT, owner: 'engine' });
  });

  it('reads a summary written before the format version as before, and writes it back with one', async () => {
    const { url, cairn, id } = await waitingRun();
    await rewriteSummary(url, id, ({ fv: _fv, owner: _owner, ...old }) => old);
    expect((await cairn.get(id))?.kind).toBe('workflow');
    expect((await cairn.resume(id, { inputs: { approval: true } })).status).toBe('completed');
    expect(await storedData(url, id)).toMatchObject({ fv: RUN_DATA_FORMAT, owner: 'engine' });

    // a run record without a summary (a CheckpointManager workflow before the version) is one still
    await withStore(url, (store) => store.createRun({ id: 'old-loop', name: 'old-loop', status: 'running' }));
    expect((await cairn.get('old-loop'))?.kind).toBe('checkpoints');
  });

  it('a pipeline whose summary is damaged rebuilds it from its checkpoints and ledger, redoing no done item', async () => {
    const url = await kind.freshUrl();
    const calls = new Counter();
    let fail = true;
    const def = pipeline<{ n: number }>('numbers')
      .stage('list', (ctx) => Array.from({ length: ctx.input.n }, (_, i) => i))
      .stage('square', (ctx) =>
        ctx.items('nums', ctx.output('list'), (x) => {
          calls.hit(`item ${x}`);
          if (x === 6 && fail) throw new Error('item 6 fails');
          return x * x;
        }),
      );
    const cairn = open(url);
    const failed = await cairn.run(def, { n: 10 });
    expect(failed.status).toBe('failed');
    await rewriteSummary(url, failed.id, (data) => ({ ...data, stages: [] }));
    expect((await rejection(cairn.resume(failed.id))).code).toBe('CHECKPOINT_CORRUPT');
    fail = false;
    const done = await cairn.run(def, { n: 10 });
    expect(done.status).toBe('completed');
    expect(done.result).toEqual(Array.from({ length: 10 }, (_, i) => i * i));
    for (let x = 0; x < 10; x++) expect(calls.of(`item ${x}`), `item ${x}`).toBe(x === 6 ? 2 : 1);
    expect(done.history.some((h) => h.event === 'run:rebuilt')).toBe(true);
  });
});
