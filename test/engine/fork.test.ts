/**
 * `cairn.fork(runId, { fromSeq })` on every store: a pipeline forked after a stage reruns only the
 * stages after it and reproduces the result; a workflow forked at a step continues from there and,
 * given another `waitFor` value, takes another edge; the original run is never changed; bad seqs,
 * taken ids and unknown runs are refused without writing anything.
 */
import fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import { forkRunId } from '../../src/engine/fork.js';
import { pipeline } from '../../src/engine/pipeline.js';
import { END, append, workflow } from '../../src/engine/workflow.js';
import type { Store } from '../../src/stores/store.js';
import { codeOf, collect } from '../helpers.js';
import { Counter, useCairns } from './engine-helpers.js';
import { ENGINE_STORES } from './store-matrix.js';

/** prepare (an artifact) → process (20 items) → merge (reads the artifact and the results). */
function threeStage() {
  const calls = new Counter();
  const def = pipeline<{ n: number }>('forkable')
    .stage('prepare', (ctx) => {
      calls.hit('prepare');
      const file = ctx.artifactPath('numbers.json');
      fs.writeFileSync(file, JSON.stringify(Array.from({ length: 20 }, (_, i) => i * ctx.input.n)));
      return { file: ctx.artifact(file).name };
    })
    .stage('process', async (ctx) => {
      calls.hit('process');
      const numbers = JSON.parse(fs.readFileSync(ctx.artifactPath(ctx.output('prepare').file), 'utf8')) as number[];
      const squares = await ctx.items('squares', numbers, (x) => {
        calls.hit('item');
        return x * x;
      });
      return { squares };
    })
    .stage('merge', (ctx) => {
      calls.hit('merge');
      return { sum: ctx.output('process').squares.reduce((a, b) => a + b, 0) };
    });
  return { def, calls };
}

function review(seen: Counter) {
  return workflow('review', { initial: { visits: [] as string[] }, reducers: { visits: append } })
    .node('fetch', async (_s, ctx) => {
      seen.hit('fetch');
      const parts = await ctx.items('parts', ['a', 'b', 'c'], (p) => p.toUpperCase());
      return { visits: ['fetch'], data: parts.join('') };
    })
    .node('confirm', async (_s, ctx) => {
      seen.hit('confirm');
      return { visits: ['confirm'], approved: await ctx.waitFor<boolean>('approval') };
    })
    .node('report', (s) => ({ visits: ['report'], report: `approved ${String(s.data)}` }))
    .node('rejected', (s) => ({ visits: ['rejected'], report: `rejected ${String(s.data)}` }))
    .edge('fetch', 'confirm')
    .edge('confirm', (s) => (s.approved ? 'report' : 'rejected'))
    .edge('report', END)
    .edge('rejected', END)
    .entry('fetch');
}

/** Everything stored about a run, to prove a fork left it as it was. */
async function snapshotOf(store: Store, runId: string): Promise<unknown> {
  const ledgers = await store.listLedgers(runId);
  return {
    run: await store.getRun(runId),
    checkpoints: await store.listCheckpoints(runId),
    ledgers: await Promise.all(ledgers.map(async (name) => [name, await collect(store.readItems(runId, name))])),
    artifacts: await store.listArtifacts(runId),
  };
}

describe.each(ENGINE_STORES)('fork on $name', (kind) => {
  const open = useCairns();

  it('a pipeline forked after stage 1 reruns stages 2 and 3 on resume and reproduces the result; the original is untouched', async () => {
    const url = await kind.freshUrl();
    const cairn = open(url);
    const { def, calls } = threeStage();
    const run = await cairn.run(def, { n: 3 });
    expect(run.status).toBe('completed');
    const store = await cairn.store();
    const prepareSeq = (await store.listCheckpoints(run.id)).flatMap((e) =>
      e.valid && e.ref.kind === 'stage' && e.ref.stage === 'prepare' ? [e.ref.seq] : [],
    )[0]!;
    const before = await snapshotOf(store, run.id);

    const fork = await cairn.fork(run.id, { fromSeq: prepareSeq });
    expect(fork.id).toBe(`${run.id}-fork-${prepareSeq}`);
    expect(fork.status).toBe('interrupted');
    expect(fork.attempts).toEqual([]);
    expect(fork.result).toBeUndefined();
    expect(fork.stages.map((s) => [s.name, s.status])).toEqual([
      ['prepare', 'completed'],
      ['process', 'pending'],
      ['merge', 'pending'],
    ]);
    expect(fork.history.map((h) => h.message)).toEqual([
      `Forked from run ${run.id} at checkpoint ${prepareSeq}: kept stage(s) prepare; process, merge run again on resume.`,
    ]);
    expect((await store.listCheckpoints(fork.id)).map((e) => (e.valid ? e.ref.seq : -1))).toEqual([prepareSeq]);
    expect(await store.listLedgers(fork.id)).toEqual([]);
    expect((await store.listArtifacts(fork.id)).map((a) => a.path)).toEqual(['numbers.json']);
    expect(fs.readFileSync(`${store.artifactDir(fork.id)}/numbers.json`, 'utf8')).toBe(
      fs.readFileSync(`${store.artifactDir(run.id)}/numbers.json`, 'utf8'),
    );
    expect(await store.validateRun(fork.id)).toEqual([]);

    calls.reset();
    const resumed = await cairn.resume(fork.id);
    expect(resumed.status).toBe('completed');
    expect(resumed.result).toEqual(run.result);
    expect([calls.of('prepare'), calls.of('process'), calls.of('item'), calls.of('merge')]).toEqual([0, 1, 20, 1]);
    expect(await snapshotOf(store, run.id)).toEqual(before);
  });

  it('a pipeline forked after its item stage keeps that stage’s ledger and reruns only the last stage', async () => {
    const cairn = open(await kind.freshUrl());
    const { def, calls } = threeStage();
    const run = await cairn.run(def, { n: 2 });
    const store = await cairn.store();
    const processSeq = (await store.listCheckpoints(run.id)).flatMap((e) =>
      e.valid && e.ref.kind === 'stage' && e.ref.stage === 'process' ? [e.ref.seq] : [],
    )[0]!;
    const fork = await cairn.fork(run.id, { fromSeq: processSeq, runId: 'my-fork' });
    expect(fork.id).toBe('my-fork');
    expect(fork.stages.find((s) => s.name === 'process')?.items).toEqual({ squares: { done: 20, failed: 0, total: 20 } });
    expect(await store.listLedgers('my-fork')).toEqual(['process.squares']);
    expect(await collect(store.readItems('my-fork', 'process.squares'))).toHaveLength(20);
    calls.reset();
    const resumed = await cairn.resume('my-fork');
    expect(resumed.result).toEqual(run.result);
    expect([calls.of('prepare'), calls.of('process'), calls.of('merge')]).toEqual([0, 0, 1]);
  });

  it('a workflow forked at a step continues from that step and, with another waitFor value, takes another edge', async () => {
    const cairn = open(await kind.freshUrl());
    const seen = new Counter();
    const wf = review(seen);
    const waiting = await cairn.run(wf, { ticket: 7 });
    expect(waiting.status).toBe('waiting');
    const done = await cairn.resume(waiting.id, { inputs: { approval: true } });
    expect(done.result).toMatchObject({ report: 'approved ABC', visits: ['fetch', 'confirm', 'report'] });
    const store = await cairn.store();
    const before = await snapshotOf(store, done.id);
    const fetchStep = (await store.listCheckpoints(done.id)).flatMap((e) =>
      e.valid && e.ref.kind === 'step' && e.ref.stage === 'fetch' ? [e.ref.seq] : [],
    )[0]!;

    const fork = await cairn.fork(done.id, { fromSeq: fetchStep });
    expect(fork.status).toBe('interrupted');
    expect(fork.steps).toBe(1);
    expect(fork.stages.map((s) => [s.name, s.status])).toEqual([
      ['fetch', 'completed'],
      ['confirm', 'pending'],
      ['report', 'pending'],
      ['rejected', 'pending'],
    ]);
    expect(fork.history[0]?.message).toContain('kept 1 step(s); resume continues with confirm');
    expect(await store.listLedgers(fork.id)).toEqual(['fetch.s0.parts']);

    seen.reset();
    const asks = await cairn.resume(fork.id); // the approval given to the original is not carried over
    expect(asks.status).toBe('waiting');
    expect(asks.waitingFor).toBe('approval');
    const rejected = await cairn.resume(fork.id, { inputs: { approval: false } });
    expect(rejected.status).toBe('completed');
    expect(rejected.result).toMatchObject({ report: 'rejected ABC', visits: ['fetch', 'confirm', 'rejected'], approved: false });
    expect(seen.of('fetch')).toBe(0);
    expect(await snapshotOf(store, done.id)).toEqual(before);
    expect((await cairn.get(done.id))?.result).toMatchObject({ report: 'approved ABC' });
  });

  it('refuses a seq that is not a checkpoint, a taken id, an unknown run and hostile ids, writing nothing', async () => {
    const cairn = open(await kind.freshUrl());
    const { def } = threeStage();
    const run = await cairn.run(def, { n: 1 });
    const store = await cairn.store();
    const last = (await store.listCheckpoints(run.id)).length;
    expect(await codeOf(cairn.fork(run.id, { fromSeq: last + 1 }))).toBe('INVALID_INPUT');
    expect(await codeOf(cairn.fork(run.id, { fromSeq: 0 }))).toBe('INVALID_INPUT');
    expect(await codeOf(cairn.fork(run.id, { fromSeq: 1.5 }))).toBe('INVALID_INPUT');
    expect(await codeOf(cairn.fork(run.id, { fromSeq: 1, runId: run.id }))).toBe('ALREADY_EXISTS');
    expect(await codeOf(cairn.fork('no-such-run', { fromSeq: 1 }))).toBe('NOT_FOUND');
    expect(await codeOf(cairn.fork('../../etc', { fromSeq: 1 }))).toBe('INVALID_RUN_ID');
    expect(await codeOf(cairn.fork(run.id, { fromSeq: 1, runId: '../x' }))).toBe('INVALID_RUN_ID');
    expect((await store.listRuns()).map((r) => r.id)).toEqual([run.id]);
    await cairn.fork(run.id, { fromSeq: 1 });
    expect(await codeOf(cairn.fork(run.id, { fromSeq: 1 }))).toBe('ALREADY_EXISTS');
    expect((await store.listRuns()).map((r) => r.id).sort()).toEqual([run.id, `${run.id}-fork-1`].sort());
  });
});

describe('forkRunId', () => {
  it('is <id>-fork-<seq>, shortened to stay a valid id', () => {
    expect(forkRunId('speech-3f2a', 4)).toBe('speech-3f2a-fork-4');
    const long = 'x'.repeat(128);
    const id = forkRunId(long, 12345);
    expect(id).toHaveLength(128);
    expect(id.endsWith('-fork-12345')).toBe(true);
  });
});
