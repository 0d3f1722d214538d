/**
 * What a workflow leaves in the store: one delta per step (storage grows with the updates, not
 * steps × state), snapshots only when replay would cost more than the state, and a resume that
 * falls back to the last intact step when a checkpoint in the middle is damaged.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import { beforeEach, describe, expect, it } from 'vitest';
import { append, type Cairn, END, workflow, type CairnEvents } from '../../src/index.js';
import type { CheckpointEntry, CheckpointRef } from '../../src/stores/store.js';
import { useCairns } from './engine-helpers.js';
import { ENGINE_STORES } from './store-matrix.js';
import { flipByte, mutateCheckpoint } from './workflow-tamper.js';
import { fileLogs } from '../helpers.js';

/** `kib` KiB of hex that is a function of `seed` alone (incompressible enough that compression hides nothing). */
function blob(seed: string, kib: number): string {
  let out = '';
  for (let j = 0; j < kib * 16; j++) out += createHash('sha256').update(`${seed}:${j}`).digest('hex');
  return out;
}

const validRefs = (entries: readonly CheckpointEntry[]): CheckpointRef[] => entries.flatMap((e) => (e.valid ? [e.ref] : []));
const ofKind = (entries: readonly CheckpointEntry[], kind: string): CheckpointRef[] => validRefs(entries).filter((r) => r.kind === kind);

describe('workflow storage is linear in the updates (file store)', () => {
  const file = ENGINE_STORES.find((k) => k.name === 'file')!;
  const cairns = useCairns();
  let url: string;
  beforeEach(async () => {
    url = await file.freshUrl();
  });
  const newCairn = (): Cairn => cairns(url);

  it('1,000 steps appending 1 KiB each store about one final state, not the sum of all states', async () => {
    const STEPS = 1000;
    const chunks = Array.from({ length: STEPS + 1 }, (_, i) => blob(`chunk ${i}`, 1));
    const crash = { atStep: STEPS };
    const wf = workflow('grow', { initial: { step: 0, list: [] as string[] }, reducers: { list: append }, maxSteps: 2 * STEPS })
      .node('grow', (s) => {
        const step = s.step + 1;
        if (step === crash.atStep) {
          crash.atStep = -1;
          throw new Error('crash before the last step');
        }
        return { step, list: chunks[step]! };
      })
      .edge('grow', (s) => (s.step < STEPS ? 'grow' : END));

    const failed = await newCairn().run(wf, {});
    expect(failed.status).toBe('failed');
    expect(failed.steps).toBe(STEPS - 1);

    // a new instance resumes after step 999: the state is rebuilt from the stored deltas
    const cairn = newCairn();
    const done = await cairn.run(wf, {});
    expect(done.status).toBe('completed');
    const expected = { step: STEPS, list: chunks.slice(1) };
    expect(done.result).toEqual(expected);
    expect(done.steps).toBe(STEPS);

    const entries = await (await cairn.store()).listCheckpoints(done.id);
    expect(entries.every((e) => e.valid)).toBe(true);
    expect(ofKind(entries, 'step')).toHaveLength(STEPS); // one per step, none redone
    const snapshots = ofKind(entries, 'snapshot');
    expect(snapshots.length).toBeGreaterThanOrEqual(1);
    expect(snapshots.length).toBeLessThanOrEqual(3);

    const stateBytes = JSON.stringify(expected).length;
    let stored = 0;
    for (const file of fileLogs(url.slice('file:'.length), done.id, 'checkpoints.jsonl')) stored += (await fs.stat(file)).size;
    expect(stored).toBeLessThanOrEqual(2 * stateBytes + 64 * 1024);
    // storing the whole state at every step would cost the sum of the states' sizes
    let fullStateEachStep = 0;
    for (let i = 1; i <= STEPS; i++) fullStateEachStep += JSON.stringify({ step: i, list: [] }).length + i * 1026 + (i - 1);
    expect(fullStateEachStep / stored).toBeGreaterThanOrEqual(100);

    // reading the completed run back (a third attempt) gives the same state
    const again = await newCairn().run(wf, {});
    expect(again.result).toEqual(expected);
  });

  it('what a resume reads (the newest snapshot and the steps after it) stays within twice the state + 64 KiB', async () => {
    const STEPS = 3000;
    const shapes: Record<string, (s: { step: number }) => Record<string, unknown>> = {
      'tiny appends': (s) => ({ step: s.step + 1, list: `item ${s.step}` }),
      'a counter': (s) => ({ step: s.step + 1 }),
      'a replaced 1 KiB value': (s) => ({ step: s.step + 1, doc: `${s.step}`.padEnd(1024, 'x') }),
      'appends and replacements': (s) => ({ step: s.step + 1, list: 'x'.repeat(s.step % 50), doc: 'y'.repeat(s.step % 700) }),
    };
    for (const [name, update] of Object.entries(shapes)) {
      const wf = workflow(`reads-${name.replace(/\W+/g, '-')}`, {
        initial: { step: 0, list: [] as string[], doc: '' },
        reducers: { list: append },
        maxSteps: 2 * STEPS,
      })
        .node('go', (s) => update(s))
        .edge('go', (s) => (s.step < STEPS ? 'go' : END));
      const done = await newCairn().run(wf, {});
      expect(done.status, name).toBe('completed');
      let text = '';
      for (const file of fileLogs(url.slice('file:'.length), done.id, 'checkpoints.jsonl')) text += await fs.readFile(file, 'utf8');
      const lines = text.split('\n').slice(0, -1);
      const base = lines.findLastIndex((line) => line.includes('"kind":"snapshot"'));
      const read = Buffer.byteLength(lines.slice(base).join('\n')) + lines.length - base;
      const stateBytes = Buffer.byteLength(JSON.stringify(done.result));
      expect(read, `${name}: ${read} bytes read for a state of ${stateBytes}`).toBeLessThanOrEqual(2 * stateBytes + 64 * 1024);
      // and snapshots stay rare: the log is not mostly snapshots
      const snapshots = lines.filter((line) => line.includes('"kind":"snapshot"')).length;
      expect(snapshots, name).toBeLessThanOrEqual(STEPS / 20);
    }
  });
});

describe.each(ENGINE_STORES)('workflow checkpoints on the $name store', (kind) => {
  const cairns = useCairns();
  let url: string;
  beforeEach(async () => {
    url = await kind.freshUrl();
  });
  const newCairn = (): Cairn => cairns(url);

  it('a key overwritten with 10 KiB every step gets a snapshot now and then, so resume replays only the tail', async () => {
    const STEPS = 500;
    const crash = { atStep: STEPS };
    const wf = workflow('overwrite', { initial: { step: 0, doc: '' }, maxSteps: 2 * STEPS })
      .node('rewrite', (s) => {
        const step = s.step + 1;
        if (step === crash.atStep) {
          crash.atStep = -1;
          throw new Error('crash before the last step');
        }
        return { step, doc: blob(`doc ${step}`, 10) };
      })
      .edge('rewrite', (s) => (s.step < STEPS ? 'rewrite' : END));

    const cairn = newCairn();
    const failed = await cairn.run(wf, {});
    expect(failed.status).toBe('failed');
    const store = await cairn.store();
    const entries = await store.listCheckpoints(failed.id);
    const snapshots = ofKind(entries, 'snapshot');
    expect(snapshots.length).toBeGreaterThan(1);
    // what a resume replays: the steps after the newest snapshot — a handful, not 499
    const newest = snapshots.at(-1)!;
    const tail = ofKind(entries, 'step').filter((r) => r.seq > newest.seq);
    expect(tail.length).toBeLessThanOrEqual(10);
    expect(newest.meta?.step).toBe(STEPS - 1 - tail.length);

    const done = await cairn.run(wf, {});
    expect(done.status).toBe('completed');
    expect(done.result).toEqual({ step: STEPS, doc: blob(`doc ${STEPS}`, 10) });
    expect(ofKind(await store.listCheckpoints(done.id), 'step')).toHaveLength(STEPS);
  });

  it('a damaged step checkpoint: resume continues from the last intact step before it, warns, and ends with the right state', async () => {
    const STEPS = 10;
    const crash = { atStep: -1 }; // the reference run goes through
    const ran: number[] = [];
    // every node is a deterministic function of the state, so redoing steps gives the same state
    const make = () =>
      workflow('damaged', { initial: { n: 1, trail: [] as number[] }, reducers: { trail: append } })
        .node('mix', (s, ctx) => {
          ran.push(ctx.step + 1);
          if (ctx.step + 1 === crash.atStep) {
            crash.atStep = -1;
            throw new Error('interrupted at step 6');
          }
          return { n: (s.n * 31 + 7) % 1009, trail: s.n };
        })
        .edge('mix', (s) => (s.trail.length < STEPS ? 'mix' : END));

    const reference = await newCairn().run(make(), {}, { runId: 'damaged-reference' });
    expect(reference.status).toBe('completed');
    ran.length = 0;
    crash.atStep = 6;

    const first = newCairn();
    const failed = await first.run(make(), {});
    expect(failed.status).toBe('failed');
    expect(failed.steps).toBe(5);
    const store = await first.store();
    const step3 = ofKind(await store.listCheckpoints(failed.id), 'step').find((r) => r.meta?.step === 3);
    expect(step3).toBeDefined();
    await mutateCheckpoint(url, failed.id, step3!.seq, flipByte);
    expect((await store.listCheckpoints(failed.id)).find((e) => !e.valid)).toMatchObject({ code: 'CHECKPOINT_CORRUPT' });

    const cairn = newCairn();
    const warnings: CairnEvents['warning'][] = [];
    cairn.on('warning', (w) => warnings.push(w));
    ran.length = 0;
    const done = await cairn.run(make(), {});
    expect(done.status).toBe('completed');
    expect(warnings.map((w) => w.code)).toContain('CHECKPOINT_CORRUPT');
    expect(warnings.find((w) => w.code === 'CHECKPOINT_CORRUPT')?.message).toContain('step 2');
    expect(ran).toEqual([3, 4, 5, 6, 7, 8, 9, 10]); // from step 2, the last intact one
    expect(done.result).toEqual(reference.result);
    expect(done.steps).toBe(STEPS);
    expect(done.history.some((h) => h.event === 'checkpoint:damaged')).toBe(true);

    // the damaged record is never used again: a further look at the run gives the same state
    const again = await newCairn().run(make(), {});
    expect(again.result).toEqual(reference.result);
  });

  it('a damaged first snapshot: the run starts over from the initial state and still ends right', async () => {
    const make = () =>
      workflow('damaged-start', { initial: { n: 2 } })
        .node('double', (s) => ({ n: s.n * 2 }))
        .node('wait', async (_s, ctx) => ({ ok: await ctx.waitFor<boolean>('ok') }))
        .edge('double', 'wait');
    const cairn = newCairn();
    const run = await cairn.run(make(), {});
    expect(run.status).toBe('waiting');
    const store = await cairn.store();
    const snapshot = ofKind(await store.listCheckpoints(run.id), 'snapshot')[0]!;
    await mutateCheckpoint(url, run.id, snapshot.seq, flipByte);
    const warnings: string[] = [];
    cairn.on('warning', (w) => warnings.push(w.code));
    const done = await cairn.run(make(), {}, { inputs: { ok: true } });
    expect(done.status).toBe('completed');
    expect(done.result).toEqual({ n: 4, ok: true });
    expect(warnings).toContain('CHECKPOINT_CORRUPT');
  });
});
