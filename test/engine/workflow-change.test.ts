/**
 * Issue 14, item 11: a workflow run records its definition's fingerprint (nodes, versions, edges,
 * entry, initial state, reducers), and a changed graph never resumes silently. A change that
 * touches where the run's steps went starts it over (`onChange: 'rerun'`, the default) or fails it
 * with FINGERPRINT_CHANGED (`'refuse'`); a change elsewhere lets it continue. Either way the run's
 * history says what changed.
 */
import { describe, expect, it } from 'vitest';
import { append, END, workflow } from '../../src/engine/workflow.js';
import { Counter, record, useCairns, withStore } from './engine-helpers.js';
import { ENGINE_STORES } from './store-matrix.js';

interface Options {
  readonly onChange?: 'rerun' | 'refuse';
  readonly version?: string;
  /** Put a `check` node between draft and confirm. */
  readonly withCheck?: boolean;
  /** After an approval, go to a `publish` node instead of END. */
  readonly withPublish?: boolean;
}

/** draft → (check →) confirm (waits for `approval`) → approved ? END (or publish) : draft. */
function review(calls: Counter, options: Options = {}) {
  let def = workflow('review', {
    initial: { drafts: 0, approved: false, log: [] as string[] },
    reducers: { log: append },
    ...(options.onChange ? { onChange: options.onChange } : {}),
    ...(options.version ? { version: options.version } : {}),
  })
    .node('draft', (s) => {
      calls.hit('draft');
      return { drafts: s.drafts + 1, log: 'draft' };
    })
    .node('check', () => {
      calls.hit('check');
      return { log: 'check' };
    })
    .node('confirm', async (_s, ctx) => {
      calls.hit('confirm');
      return { approved: await ctx.waitFor<boolean>('approval'), log: 'confirm' };
    })
    .node('publish', () => {
      calls.hit('publish');
      return { log: 'publish' };
    });
  def = options.withCheck ? def.edge('draft', 'check').edge('check', 'confirm') : def.edge('draft', 'confirm');
  return options.withPublish
    ? def.edge('confirm', (s) => (s.approved ? 'publish' : 'draft'))
    : def.edge('confirm', (s) => (s.approved ? END : 'draft'));
}

describe.each(ENGINE_STORES)('workflow definition changes on $name', (kind) => {
  const open = useCairns();

  it('a graph changed where the run went starts it over, and says so (history and a warning)', async () => {
    const url = await kind.freshUrl();
    const calls = new Counter();
    const waiting = await open(url).run(review(calls), { doc: 'a' });
    expect(waiting).toMatchObject({ status: 'waiting', waitingFor: 'approval', steps: 1 });

    calls.reset();
    const cairn = open(url);
    const warnings = record(cairn, 'warning');
    const again = await cairn.run(review(calls, { withCheck: true }), { doc: 'a' });
    expect(again).toMatchObject({ status: 'waiting', waitingFor: 'approval' });
    expect([calls.of('draft'), calls.of('check'), calls.of('confirm')]).toEqual([1, 1, 1]); // started over
    const changed = again.history.find((h) => h.event === 'definition:changed');
    expect(changed?.message).toMatch(/Workflow review changed .*edge out of draft: confirm → check.*steps went through draft.*starts over/);
    expect(warnings.map((w) => w.code)).toContain('FINGERPRINT_CHANGED');

    // the approval answers the new run's wait; the state is the new run's alone
    const done = await cairn.resume(again.id, { inputs: { approval: true } });
    expect(done).toMatchObject({ status: 'completed', result: { drafts: 1, approved: true, log: ['draft', 'check', 'confirm'] } });
  });

  it("onChange: 'refuse' fails the run with FINGERPRINT_CHANGED, runs nothing, and the old definition continues it", async () => {
    const url = await kind.freshUrl();
    const calls = new Counter();
    const waiting = await open(url).run(review(calls, { onChange: 'refuse' }), { doc: 'b' });
    expect(waiting.status).toBe('waiting');

    calls.reset();
    const refused = await open(url).run(review(calls, { onChange: 'refuse', withCheck: true }), { doc: 'b' });
    expect(refused.status).toBe('failed');
    expect(refused.error).toMatchObject({ code: 'FINGERPRINT_CHANGED', stage: 'draft' });
    expect(refused.error?.message).toMatch(/edge out of draft: confirm → check.*onChange: 'refuse'.*forceRestart/);
    expect([calls.of('draft'), calls.of('check'), calls.of('confirm')]).toEqual([0, 0, 0]);

    const restored = await open(url).resume(waiting.id, { definition: review(calls, { onChange: 'refuse' }) });
    expect(restored).toMatchObject({ status: 'waiting', waitingFor: 'approval', steps: 1 });
    expect([calls.of('draft'), calls.of('confirm')]).toEqual([0, 1]);
  });

  it('a change the run has not reached (a node added after the wait) lets it continue, with a history note', async () => {
    const url = await kind.freshUrl();
    const calls = new Counter();
    const waiting = await open(url).run(review(calls), { doc: 'c' });
    expect(waiting.status).toBe('waiting');

    calls.reset();
    const cairn = open(url);
    const done = await cairn.run(review(calls, { withPublish: true }), { doc: 'c' }, { inputs: { approval: true } });
    expect(done).toMatchObject({ status: 'completed', result: { drafts: 1, log: ['draft', 'confirm', 'publish'] } });
    expect([calls.of('draft'), calls.of('confirm'), calls.of('publish')]).toEqual([0, 1, 1]);
    expect(done.history.find((h) => h.event === 'definition:changed')?.message).toMatch(
      /edge out of confirm: its function changed.*no step the run took went through the change, so it continues/,
    );
  });

  it('a completed run is returned from cache while its definition is the same, and runs again under a changed one', async () => {
    const url = await kind.freshUrl();
    const calls = new Counter();
    const cairn = open(url);
    const first = await cairn.run(review(calls), { doc: 'd' }, { inputs: { approval: true } });
    expect(first).toMatchObject({ status: 'completed', steps: 2 });

    calls.reset();
    expect((await cairn.run(review(calls), { doc: 'd' })).attempts).toHaveLength(first.attempts.length);
    expect(calls.of('draft')).toBe(0);

    // a new version: every step depends on it; the run starts over and asks again (the old answer was read)
    const again = await cairn.run(review(calls, { version: '2' }), { doc: 'd' });
    expect(again).toMatchObject({ status: 'waiting', waitingFor: 'approval' });
    expect(calls.of('draft')).toBe(1);
    expect(again.history.find((h) => h.event === 'definition:changed')?.message).toMatch(/version 1 → 2.*every step depends on it/);
    const done = await cairn.resume(again.id, { inputs: { approval: true } });
    expect(done).toMatchObject({ status: 'completed', result: { drafts: 1, approved: true, log: ['draft', 'confirm'] } });
  });

  it('a run of an earlier cairn (no fingerprint stored) records one and continues', async () => {
    const url = await kind.freshUrl();
    const calls = new Counter();
    const waiting = await open(url).run(review(calls), { doc: 'e' });
    await withStore(url, async (store) => {
      const run = await store.getRun(waiting.id);
      const data = run!.data as { definition?: unknown };
      expect(data.definition).toMatchObject({ fingerprint: expect.any(String) });
      delete data.definition;
      await store.updateRun(waiting.id, run!.version, { data });
    });

    calls.reset();
    const resumed = await open(url).run(review(calls, { withCheck: true }), { doc: 'e' });
    expect(resumed).toMatchObject({ status: 'waiting', waitingFor: 'approval', steps: 1 });
    expect(calls.of('draft')).toBe(0);
    expect(resumed.history.some((h) => h.event === 'definition:recorded')).toBe(true);
    // from now on, changes are detected
    const changed = await open(url).run(review(calls), { doc: 'e' });
    expect(changed.history.some((h) => h.event === 'definition:changed')).toBe(true);
  });
});

describe('workflow definition fingerprints', () => {
  const open = useCairns();

  it('an edge function reformatted is no change; one that routes elsewhere is', async () => {
    const url = `memory:workflow-change-${process.pid}`;
    const calls = new Counter();
    const make = (edge: (s: { n: number }) => string) =>
      workflow('loop', { initial: { n: 0 } })
        .node('step', (s) => {
          calls.hit('step');
          return { n: s.n + 1 };
        })
        .edge('step', edge);
    // prettier-ignore
    const first = await open(url).run(make((s) => (s.n >= 2 ? END : 'step')), {});
    expect(first).toMatchObject({ status: 'completed', result: { n: 2 } });
    calls.reset();
    // prettier-ignore
    const same = await open(url).run(make((s) =>   (s.n >= 2
      ? END : 'step')), {});
    expect(same.attempts).toHaveLength(1);
    const longer = await open(url).run(
      make((s) => (s.n >= 3 ? END : 'step')),
      {},
    );
    expect(longer).toMatchObject({ status: 'completed', result: { n: 3 } });
    expect(calls.of('step')).toBe(3); // started over
  });

  it('a new state key with its reducer: carried over by stateVersion + migrate the run continues; without, it starts over', async () => {
    const url = `memory:workflow-change-reducer-${process.pid}`;
    const calls = new Counter();
    const first = (s: { n: number }) => {
      calls.hit('first');
      return { n: s.n + 1 };
    };
    const confirm = async (_s: unknown, ctx: { waitFor<V>(name: string): Promise<V> }) => ({ ok: await ctx.waitFor<boolean>('ok') });
    const base = workflow('tagged', { initial: { n: 0 } })
      .node('first', first)
      .node('confirm', confirm)
      .edge('first', 'confirm');
    const grown = (migrate: boolean) =>
      workflow('tagged', {
        initial: { n: 0, tags: [] as string[] },
        reducers: { tags: append },
        ...(migrate ? { stateVersion: 2, migrate: (old: unknown) => ({ ...(old as { n: number }), tags: [] }) } : {}),
      })
        .node('first', first)
        .node('confirm', confirm)
        .node('tag', () => ({ tags: 'done' }))
        .edge('first', 'confirm')
        .edge('confirm', 'tag');

    const carried = await open(url).run(base, { doc: 1 });
    expect(carried.status).toBe('waiting');
    const continued = await open(url).resume(carried.id, { inputs: { ok: true }, definition: grown(true) });
    expect(continued).toMatchObject({ status: 'completed', result: { n: 1, ok: true, tags: ['done'] } });
    expect(calls.of('first')).toBe(1);
    expect(continued.history.find((h) => h.event === 'definition:changed')?.message).toMatch(
      /stateVersion 1 → 2, initial state changed, reducer of tags added, edge out of confirm: END → tag, node tag added\).*so it continues/,
    );

    calls.reset();
    const plain = await open(url).run(base, { doc: 2 });
    const restarted = await open(url).resume(plain.id, { inputs: { ok: true }, definition: grown(false) });
    expect(restarted).toMatchObject({ status: 'waiting', waitingFor: 'ok' }); // started over: the value given was for the old run
    expect(calls.of('first')).toBe(2);
    expect(restarted.history.map((h) => h.event)).toEqual(expect.arrayContaining(['definition:changed', 'wait:dropped']));
  });

  it('maxSteps counts the steps since the run started over, not the ones before', async () => {
    const url = `memory:workflow-change-max-${process.pid}`;
    const make = (version: string) =>
      workflow('counted', { initial: { n: 0 }, maxSteps: 3, version })
        .node('step', (s) => ({ n: s.n + 1 }))
        .edge('step', (s) => (s.n >= 3 ? END : 'step'));
    expect(await open(url).run(make('1'), {})).toMatchObject({ status: 'completed', steps: 3 });
    const again = await open(url).run(make('2'), {});
    expect(again).toMatchObject({ status: 'completed', result: { n: 3 }, steps: 6 });
  });
});
