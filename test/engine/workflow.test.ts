/**
 * Graph workflows on every store: partial-state merges and reducers, static and conditional edges,
 * loops bounded by maxSteps, waitFor and resume from a new Cairn instance, resume after a failure,
 * state versions with migrate, events, cancel, and per-visit item ledgers.
 */
import { beforeEach, describe, expect, it, vi } from 'vitest';
import { append, type Cairn, END, workflow, type CairnEventName, type CairnEvents, type CairnOptions } from '../../src/index.js';
import { codeOf } from '../helpers.js';
import { deferred, useCairns } from './engine-helpers.js';
import { ENGINE_STORES } from './store-matrix.js';

/** A promise and its resolve function, for nodes that wait on the test. */
const gate = deferred;

describe.each(ENGINE_STORES)('workflow on the $name store', (kind) => {
  const cairns = useCairns();
  let url: string;
  beforeEach(async () => {
    url = await kind.freshUrl();
  });

  /** A Cairn on this test's store; closed after the test unless closed before with `closeCairn`. */
  const newCairn = (options: Omit<CairnOptions, 'store' | 'handleSignals'> = {}): Cairn => cairns(url, options);
  const closeCairn = (cairn: Cairn): Promise<void> => cairns.close(cairn);

  describe('state, reducers and edges (DESIGN §2)', () => {
    it('merges partial updates, appends through the reducer, follows edges from the entry, and loops exactly N times', async () => {
      const N = 5;
      const calls = { fetch: 0, loop: 0, report: 0, quiet: 0 };
      const wf = workflow('review', {
        initial: (input: { userId: string }) => ({ step: 0, notes: [] as string[], user: input.userId }),
        reducers: { notes: append },
        maxSteps: 10_000,
      })
        // declared first, so that only .entry() makes fetch the first node
        .node('report', (s) => {
          calls.report++;
          return { report: `${s.notes.length} notes after ${s.step} loops` };
        })
        .node('loop', (s) => {
          calls.loop++;
          return { step: s.step + 1, notes: [`loop ${s.step + 1}`, '+'] }; // an array: appended element by element
        })
        .node('fetch', (s, ctx) => {
          calls.fetch++;
          return { data: `data of ${ctx.input.userId}`, notes: 'fetched' }; // one element
        })
        .node('quiet', () => {
          calls.quiet++; // returns nothing: the state stays as it is
        })
        .edge('fetch', 'loop')
        .edge('loop', (s) => (s.step < N ? 'loop' : 'quiet'))
        .edge('quiet', 'report')
        .edge('report', END)
        .entry('fetch');

      const cairn = newCairn();
      const run = await cairn.run(wf, { userId: 'u1' });
      expect(run.error).toBeUndefined();
      expect(run.status).toBe('completed');
      const notes = ['fetched'];
      for (let i = 1; i <= N; i++) notes.push(`loop ${i}`, '+');
      expect(run.result).toEqual({
        step: N,
        notes,
        user: 'u1',
        data: 'data of u1',
        report: `${notes.length} notes after ${N} loops`,
      });
      expect(calls).toEqual({ fetch: 1, loop: N, report: 1, quiet: 1 });
      expect(run.steps).toBe(1 + N + 1 + 1);
      expect(run.kind).toBe('workflow');

      // the same input again: the completed run's result, nothing executed
      const again = await cairn.run(wf, { userId: 'u1' });
      expect(again.status).toBe('completed');
      expect(again.result).toEqual(run.result);
      expect(again.id).toBe(run.id);
      expect(calls).toEqual({ fetch: 1, loop: N, report: 1, quiet: 1 });
    });

    it('starts at the first node declared when there is no .entry(), and ends where a node has no edge', async () => {
      const wf = workflow('implicit', { initial: { seen: [] as string[] }, reducers: { seen: append } })
        .node('first', () => ({ seen: 'first' }))
        .node('second', () => ({ seen: 'second' }))
        .edge('first', 'second');
      const run = await newCairn().run(wf, null);
      expect(run.status).toBe('completed');
      expect(run.result).toEqual({ seen: ['first', 'second'] });
      expect(run.steps).toBe(2);
    });

    it('a loop that never exits fails with MAX_STEPS_EXCEEDED after maxSteps steps', async () => {
      let calls = 0;
      const wf = workflow('spin', { initial: { n: 0 }, maxSteps: 20 })
        .node('spin', (s) => {
          calls++;
          return { n: s.n + 1 };
        })
        .edge('spin', () => 'spin');
      const run = await newCairn().run(wf, {});
      expect(run.status).toBe('failed');
      expect(run.error?.code).toBe('MAX_STEPS_EXCEEDED');
      expect(run.error?.message).toMatch(/fix/i);
      expect(run.error?.message).toMatch(/maxSteps/);
      expect(calls).toBe(20);
      expect(run.steps).toBe(20);
    });

    it('after MAX_STEPS_EXCEEDED, a definition with a higher maxSteps resumes where the run stopped', async () => {
      let calls = 0;
      const spin = (maxSteps: number) =>
        workflow('spin-more', { initial: { n: 0 }, maxSteps })
          .node('spin', (s) => {
            calls++;
            return { n: s.n + 1 };
          })
          .edge('spin', (s) => (s.n < 23 ? 'spin' : END));
      const cairn = newCairn();
      const run = await cairn.run(spin(20), {});
      expect(run.error?.code).toBe('MAX_STEPS_EXCEEDED');
      const again = await cairn.run(spin(20), {});
      expect(again.error?.code).toBe('MAX_STEPS_EXCEEDED');
      expect(calls).toBe(20); // the same limit stops it before any node runs
      const done = await cairn.resume(run.id, { definition: spin(30) });
      expect(done.status).toBe('completed');
      expect(done.result).toEqual({ n: 23 });
      expect(calls).toBe(23);
    });

    it('a conditional edge choosing a name that is not a node fails the run with INVALID_DEFINITION naming the nodes', async () => {
      const wf = workflow('lost', { initial: { n: 0 } })
        .node('start', () => ({ n: 1 }))
        .node('finish', () => ({ n: 2 }))
        .edge('start', () => 'nowhere');
      const run = await newCairn().run(wf, {});
      expect(run.status).toBe('failed');
      expect(run.error?.code).toBe('INVALID_DEFINITION');
      expect(run.error?.stage).toBe('start');
      expect(run.error?.message).toContain('nowhere');
      expect(run.error?.message).toContain('start');
      expect(run.error?.message).toContain('finish');
    });

    it('rejects a bad graph at definition time with INVALID_DEFINITION', async () => {
      const base = workflow('shape', { initial: {} })
        .node('a', () => ({}))
        .node('b', () => ({}));
      expect(await codeOf(() => base.node('a', () => ({})))).toBe('INVALID_DEFINITION');
      expect(await codeOf(() => base.edge('ghost' as 'a', 'b'))).toBe('INVALID_DEFINITION');
      expect(await codeOf(() => base.edge('a', 'ghost' as 'b'))).toBe('INVALID_DEFINITION');
      expect(await codeOf(() => base.edge('a', 'b').edge('a', 'a'))).toBe('INVALID_DEFINITION');
      expect(await codeOf(() => base.entry('ghost' as 'a'))).toBe('INVALID_DEFINITION');
      expect(await codeOf(() => base.node(END, () => ({})))).toBe('INVALID_DEFINITION');
      expect(await codeOf(() => workflow('no-initial', {} as never))).toBe('INVALID_DEFINITION');
      expect(await codeOf(() => workflow('steps', { initial: {}, maxSteps: 0 }))).toBe('INVALID_DEFINITION');
      // the builder is immutable: the failed calls changed nothing
      expect(base.nodes.map((n) => n.name)).toEqual(['a', 'b']);
      expect(base.edges.size).toBe(0);
    });

    it('a node returning something other than an object fails the run with a clear error', async () => {
      const wf = workflow('bad-return', { initial: {} }).node('oops', () => 42 as never);
      const run = await newCairn().run(wf, {});
      expect(run.status).toBe('failed');
      expect(run.error?.code).toBe('INVALID_INPUT');
      expect(run.error?.message).toContain('oops');
    });
  });

  describe('waitFor and resume', () => {
    const approvalFlow = (calls: Record<string, number>) =>
      workflow('approval-flow', { initial: { log: [] as string[] }, reducers: { log: append } })
        .node('fetch', () => {
          calls.fetch = (calls.fetch ?? 0) + 1;
          return { data: 'fetched', log: 'fetch' };
        })
        .node('confirm', async (_s, ctx) => {
          calls.confirm = (calls.confirm ?? 0) + 1;
          return { approved: await ctx.waitFor<boolean>('approval'), log: 'confirm' };
        })
        .node('report', (s) => ({ report: `report on ${String(s.data)}`, log: 'report' }))
        .node('reject', () => ({ log: 'reject' }))
        .edge('fetch', 'confirm')
        .edge('confirm', (s) => (s.approved ? 'report' : 'reject'))
        .entry('fetch');

    it('waits for approval, then a new Cairn instance resumes it and takes the approval edge', async () => {
      const calls: Record<string, number> = {};
      const wf = approvalFlow(calls);
      const first = newCairn();
      const run = await first.run(wf, { userId: 'u1' });
      expect(run.status).toBe('waiting');
      expect(run.waitingFor).toBe('approval');
      expect(run.result).toBeUndefined();
      expect(run.steps).toBe(1);
      expect(calls).toEqual({ fetch: 1, confirm: 1 });
      await closeCairn(first);

      // "later, anywhere": another instance that only knows the definition by registration
      const second = newCairn({ definitions: [wf] });
      const stillWaiting = await second.resume(run.id);
      expect(stillWaiting.status).toBe('waiting');
      expect(stillWaiting.waitingFor).toBe('approval');
      expect(calls.fetch).toBe(1);

      const done = await second.resume(run.id, { inputs: { approval: true } });
      expect(done.status).toBe('completed');
      expect(done.waitingFor).toBeUndefined();
      expect(done.result).toEqual({ log: ['fetch', 'confirm', 'report'], data: 'fetched', approved: true, report: 'report on fetched' });
      expect(done.steps).toBe(3);
      expect(calls.fetch).toBe(1); // the node before the wait ran once in all
      expect(done.attempts.length).toBe(3);
    });

    it('with approval false it takes the other edge; resume({ definition }) finds the definition', async () => {
      const calls: Record<string, number> = {};
      const wf = approvalFlow(calls);
      const first = newCairn();
      const run = await first.run(wf, { userId: 'u2' });
      expect(run.status).toBe('waiting');
      await closeCairn(first);

      const second = newCairn();
      expect(await codeOf(second.resume(run.id))).toBe('NOT_FOUND'); // the definition is unknown here
      const done = await second.resume(run.id, { inputs: { approval: false }, definition: wf });
      expect(done.status).toBe('completed');
      expect(done.result).toEqual({ log: ['fetch', 'confirm', 'reject'], data: 'fetched', approved: false });
      expect(calls.fetch).toBe(1);
    });

    it('running the same input again without the input stays waiting', async () => {
      const calls: Record<string, number> = {};
      const wf = approvalFlow(calls);
      const cairn = newCairn();
      const run = await cairn.run(wf, { userId: 'u3' });
      const again = await cairn.run(wf, { userId: 'u3' });
      expect(again.id).toBe(run.id);
      expect(again.status).toBe('waiting');
      expect(again.waitingFor).toBe('approval');
      expect(calls.fetch).toBe(1);
      const done = await cairn.run(wf, { userId: 'u3' }, { inputs: { approval: true } });
      expect(done.status).toBe('completed');
      expect(calls.fetch).toBe(1);
    });
  });

  describe('resume after a failure', () => {
    const fragile = (calls: Record<string, number>, failC: { once: boolean }) =>
      workflow('fragile', { initial: { log: [] as string[], total: 1 }, reducers: { log: append } })
        .node('a', (s) => {
          calls.a = (calls.a ?? 0) + 1;
          return { log: 'a', total: s.total + 1 };
        })
        .node('b', (s) => {
          calls.b = (calls.b ?? 0) + 1;
          return { log: 'b', total: s.total * 10 };
        })
        .node('c', (s) => {
          calls.c = (calls.c ?? 0) + 1;
          if (failC.once) {
            failC.once = false;
            throw new Error('flaky service');
          }
          return { log: 'c', total: s.total + 3 };
        })
        .node('d', (s) => {
          calls.d = (calls.d ?? 0) + 1;
          return { log: 'd', total: s.total * 2 };
        })
        .edge('a', 'b')
        .edge('b', 'c')
        .edge('c', 'd');

    it('keeps the earlier steps, does not run them again, and ends with the same state as an uninterrupted run', async () => {
      const calls: Record<string, number> = {};
      const wf = fragile(calls, { once: true });
      const cairn = newCairn();
      const failed = await cairn.run(wf, { job: 1 });
      expect(failed.status).toBe('failed');
      expect(failed.error?.message).toContain('flaky service');
      expect(failed.error?.stage).toBe('c');
      expect(failed.steps).toBe(2);
      expect(failed.stages.find((s) => s.name === 'c')?.status).toBe('failed');
      // the steps of a and b are durable
      const store = await cairn.store();
      const steps = (await store.listCheckpoints(failed.id)).flatMap((e) => (e.valid && e.ref.kind === 'step' ? [e.ref.stage] : []));
      expect(steps).toEqual(['a', 'b']);
      await closeCairn(cairn);

      const second = newCairn();
      const done = await second.run(wf, { job: 1 });
      expect(done.status).toBe('completed');
      expect(calls).toEqual({ a: 1, b: 1, c: 2, d: 1 });

      const reference = await second.run(fragile({}, { once: false }), { job: 1 }, { runId: 'fragile-reference' });
      expect(reference.status).toBe('completed');
      expect(done.result).toEqual(reference.result);
      expect(done.result).toEqual({ log: ['a', 'b', 'c', 'd'], total: 46 });
      expect(done.steps).toBe(reference.steps);
    });
  });

  describe('stateVersion and migrate', () => {
    const v1 = (seen: unknown[]) =>
      workflow('versioned', { initial: { count: 0 } })
        .node('inc', (s) => ({ count: s.count + 1 }))
        .node('gate', async (s, ctx) => {
          seen.push(s);
          return { go: await ctx.waitFor<boolean>('go') };
        })
        .edge('inc', 'gate');

    const v2 = (seen: unknown[], options: { migrate: boolean; waitAgain?: boolean }) =>
      workflow('versioned', {
        initial: { total: 0 },
        stateVersion: 2,
        ...(options.migrate
          ? {
              migrate: (old: unknown, from: number) => {
                if (from !== 1) throw new Error(`unexpected version ${from}`);
                const { count, ...rest } = old as { count: number };
                return { ...rest, total: count };
              },
            }
          : {}),
      })
        .node('inc', (s) => ({ total: s.total + 1 }))
        .node('gate', async (s, ctx) => {
          seen.push(s);
          return { go: await ctx.waitFor<boolean>('go') };
        })
        .node('again', async (_s, ctx) => ({ again: options.waitAgain ? await ctx.waitFor<boolean>('again') : true }))
        .edge('inc', 'gate')
        .edge('gate', 'again');

    it('a v2 definition with migrate resumes a v1 run; the node sees the migrated state', async () => {
      const seen: unknown[] = [];
      const cairn = newCairn();
      const run = await cairn.run(v1(seen), { id: 1 });
      expect(run.status).toBe('waiting');
      expect(seen).toEqual([{ count: 1 }]);

      const done = await cairn.resume(run.id, { inputs: { go: true }, definition: v2(seen, { migrate: true }) });
      expect(done.status).toBe('completed');
      expect(seen[1]).toEqual({ total: 1 });
      expect(done.result).toEqual({ total: 1, go: true, again: true });
      expect(done.history.some((h) => h.event === 'state:migrated')).toBe(true);
    });

    it('state newer than the code rejects with STATE_TOO_NEW, and the newer code can still resume it', async () => {
      const seen: unknown[] = [];
      const cairn = newCairn();
      const run = await cairn.run(v1(seen), { id: 2 });
      const waiting = await cairn.resume(run.id, { inputs: { go: true }, definition: v2(seen, { migrate: true, waitAgain: true }) });
      expect(waiting.status).toBe('waiting');
      expect(waiting.waitingFor).toBe('again');

      expect(await codeOf(cairn.resume(run.id, { inputs: { again: true }, definition: v1(seen) }))).toBe('STATE_TOO_NEW');
      // the refusal leaves the run as it was: still waiting for the same input
      const after = await cairn.get(run.id);
      expect(after?.status).toBe('waiting');
      expect(after?.waitingFor).toBe('again');
      expect(after?.history.some((h) => h.event === 'run:refused')).toBe(true);
      const done = await cairn.resume(run.id, { inputs: { again: true }, definition: v2(seen, { migrate: true, waitAgain: true }) });
      expect(done.status).toBe('completed');
      expect(done.result).toEqual({ total: 1, go: true, again: true });
    });

    it('a v2 definition without migrate cannot resume a v1 run: INVALID_DEFINITION', async () => {
      const seen: unknown[] = [];
      const cairn = newCairn();
      const run = await cairn.run(v1(seen), { id: 3 });
      expect(await codeOf(cairn.resume(run.id, { inputs: { go: true }, definition: v2(seen, { migrate: false }) }))).toBe(
        'INVALID_DEFINITION',
      );
      expect(seen).toHaveLength(1); // no node ran on the unmigrated state
      expect((await cairn.get(run.id))?.status).toBe('waiting');
    });
  });

  describe('events', () => {
    const threeSteps = () =>
      workflow('evented', { initial: { n: 0 } })
        .node('one', (s) => ({ n: s.n + 1 }))
        .node('two', (s) => ({ n: s.n + 1 }))
        .node('three', (s) => ({ n: s.n + 1 }))
        .edge('one', 'two')
        .edge('two', 'three');

    it('emits run:start, stage:start/complete per node, one step checkpoint per step, and run:end with the summary', async () => {
      const cairn = newCairn();
      const seen: { name: CairnEventName; payload: unknown }[] = [];
      const names: CairnEventName[] = ['run:start', 'stage:start', 'stage:complete', 'checkpoint', 'run:end', 'stage:fail'];
      for (const name of names) cairn.on(name, (payload) => seen.push({ name, payload }));

      const run = await cairn.run(threeSteps(), {});
      expect(run.status).toBe('completed');
      expect(seen[0]).toMatchObject({ name: 'run:start', payload: { runId: run.id, name: 'evented', attempt: 1, resumed: false } });
      const last = seen.at(-1);
      expect(last?.name).toBe('run:end');
      const end = last?.payload as CairnEvents['run:end'];
      expect(end.status).toBe('completed');
      expect(end.summary).toEqual(run);

      const stageEvents = seen.filter((e) => e.name === 'stage:start' || e.name === 'stage:complete');
      expect(stageEvents.map((e) => `${e.name} ${(e.payload as { stage: string }).stage}`)).toEqual([
        'stage:start one',
        'stage:complete one',
        'stage:start two',
        'stage:complete two',
        'stage:start three',
        'stage:complete three',
      ]);
      const steps = seen.filter((e) => e.name === 'checkpoint' && (e.payload as CairnEvents['checkpoint']).kind === 'step');
      expect(steps.map((e) => (e.payload as CairnEvents['checkpoint']).stage)).toEqual(['one', 'two', 'three']);
      // every checkpoint event names a checkpoint that is in the store
      const store = await cairn.store();
      const stored = (await store.listCheckpoints(run.id)).flatMap((e) => (e.valid ? [e.ref.seq] : []));
      const announced = seen.filter((e) => e.name === 'checkpoint').map((e) => (e.payload as CairnEvents['checkpoint']).seq);
      expect(announced).toEqual(stored);
      expect(seen.some((e) => e.name === 'stage:fail')).toBe(false);
    });

    it('a throwing listener breaks neither the run nor the other listeners', async () => {
      const warn = vi.spyOn(process, 'emitWarning').mockImplementation(() => undefined);
      try {
        const cairn = newCairn();
        cairn.on('stage:complete', () => {
          throw new Error('listener bug');
        });
        cairn.on('checkpoint', () => {
          throw new Error('listener bug');
        });
        const completed: string[] = [];
        cairn.on('stage:complete', (e) => completed.push(e.stage));
        const run = await cairn.run(threeSteps(), { x: 1 });
        expect(run.status).toBe('completed');
        expect(run.result).toEqual({ n: 3 });
        expect(completed).toEqual(['one', 'two', 'three']);
        expect(warn).toHaveBeenCalled();
      } finally {
        warn.mockRestore();
      }
    });
  });

  describe('cancel', () => {
    it('cancels a waiting workflow: status cancelled, and it is not run again', async () => {
      const calls = { before: 0 };
      const wf = workflow('cancel-waiting', { initial: {} })
        .node('before', () => {
          calls.before++;
          return { ready: true };
        })
        .node('ask', async (_s, ctx) => ({ answer: await ctx.waitFor<string>('answer') }))
        .edge('before', 'ask');
      const first = newCairn();
      const run = await first.run(wf, {});
      expect(run.status).toBe('waiting');
      await closeCairn(first);

      const cairn = newCairn({ definitions: [wf] });
      const cancelled = await cairn.cancel(run.id);
      expect(cancelled.status).toBe('cancelled');
      expect((await cairn.get(run.id))?.status).toBe('cancelled');
      const again = await cairn.run(wf, {}, { inputs: { answer: 'yes' } });
      expect(again.status).toBe('cancelled');
      expect(await codeOf(cairn.resume(run.id, { inputs: { answer: 'yes' } }))).toBe('INVALID_INPUT');
      expect(calls.before).toBe(1);
    });

    it('cancels a running workflow in the same process: the node in flight finishes, no further node runs', async () => {
      const entered = gate();
      const release = gate<number>();
      const calls = { after: 0 };
      const wf = workflow('cancel-running', { initial: { n: 0 } })
        .node('slow', async () => {
          entered.resolve();
          return { n: await release.promise };
        })
        .node('after', () => {
          calls.after++;
          return { n: -1 };
        })
        .edge('slow', 'after');
      const cairn = newCairn();
      const runId = 'cancel-running-1';
      const running = cairn.run(wf, {}, { runId });
      await entered.promise;
      const cancelling = cairn.cancel(runId);
      release.resolve(7);
      const [run, cancelled] = await Promise.all([running, cancelling]);
      expect(run.status).toBe('cancelled');
      expect(cancelled.status).toBe('cancelled');
      expect(calls.after).toBe(0);
      expect((await cairn.get(runId))?.status).toBe('cancelled');
    });
  });

  describe('ctx.items in a loop', () => {
    it('gives each visit of a node its own ledger, and a resumed visit skips only its own done items', async () => {
      const seen: string[] = [];
      const keys = new Set<string>();
      const flaky = { once: true };
      const wf = workflow('visits', { initial: { visit: 0, sums: [] as number[] }, reducers: { sums: append } })
        .node('batch', async (s, ctx) => {
          const visit = s.visit + 1;
          const list = [1, 2, 3].map((x) => x + visit * 10);
          // default keys (the index) are the same on every visit: only separate ledgers keep results apart
          const doubled = await ctx.items('double', list, (x, item) => {
            seen.push(`${visit}:${item.key}`);
            keys.add(item.idempotencyKey);
            if (visit === 2 && item.key === '2' && flaky.once) {
              flaky.once = false;
              throw new Error('item failed once');
            }
            return x * 2;
          });
          return { visit, sums: doubled.reduce((a, b) => a + b, 0) };
        })
        .edge('batch', (s) => (s.visit < 3 ? 'batch' : END));

      const cairn = newCairn();
      const failed = await cairn.run(wf, {});
      expect(failed.status).toBe('failed');
      expect(failed.error?.code).toBe('ITEM_FAILED');
      expect(seen).toEqual(['1:0', '1:1', '1:2', '2:0', '2:1', '2:2']);

      const done = await cairn.run(wf, {});
      expect(done.status).toBe('completed');
      expect(done.result).toEqual({ visit: 3, sums: [72, 132, 192] });
      // visit 1 not rerun; visit 2 redid only its failed item; visit 3 ran fresh
      expect(seen).toEqual(['1:0', '1:1', '1:2', '2:0', '2:1', '2:2', '2:2', '3:0', '3:1', '3:2']);
      expect(keys.size).toBe(9); // idempotency keys differ between visits
      const ledgers = await (await cairn.store()).listLedgers(done.id);
      expect(ledgers).toHaveLength(3);
    });
  });
});
