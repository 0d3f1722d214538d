/**
 * `waitFor` values answer one wait (issue 14, items 1 and 8): a loop that comes back to the wait
 * and a stage that reruns after a change wait again; the same wait run again after a failure gets
 * the same value; `resume` refuses values for waits the run is not on; `validate` refuses a bad
 * value and the run keeps waiting; a stage or node that does not await `ctx.waitFor` / `ctx.items`
 * fails with a clear error instead of completing (or killing the process).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { END, pipeline, workflow } from '../../src/index.js';
import { useCairns } from './engine-helpers.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-wait-answers-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));
let stores = 0;
const freshStore = (): string => `file:${path.join(tmp, `store-${++stores}`)}`;

/** The README's tour: draft → confirm → (approved ? END : draft), with a count of drafts. */
function review(calls: { drafts: number }) {
  return workflow('review', { initial: { drafts: 0, approved: false } })
    .node('draft', async (s) => {
      calls.drafts++;
      return { drafts: s.drafts + 1 };
    })
    .node('confirm', async (_s, ctx) => ({ approved: await ctx.waitFor<boolean>('approval') }))
    .edge('draft', 'confirm')
    .edge('confirm', (s) => (s.approved ? END : 'draft'));
}

describe('waitFor values answer one wait', () => {
  const open = useCairns();

  it("the README's tour: a 'no' sends the draft back and the run waits again; a 'yes' ends it", async () => {
    const calls = { drafts: 0 };
    const def = review(calls);
    const cairn = open(freshStore());
    const first = await cairn.run(def, { doc: 'q3' });
    expect(first).toMatchObject({ status: 'waiting', waitingFor: 'approval' });

    const no = await cairn.resume(first.id, { inputs: { approval: false } });
    expect(no).toMatchObject({ status: 'waiting', waitingFor: 'approval' });
    expect(calls.drafts).toBe(2); // one redraft, not 5,000 until maxSteps

    const noAgain = await cairn.resume(first.id, { inputs: { approval: false } });
    expect(noAgain.status).toBe('waiting');
    expect(calls.drafts).toBe(3);

    const yes = await cairn.resume(first.id, { inputs: { approval: true } });
    expect(yes).toMatchObject({ status: 'completed', result: { drafts: 3, approved: true } });
    expect(calls.drafts).toBe(3);
  });

  it('a value given with run() answers the first wait only', async () => {
    const calls = { drafts: 0 };
    const cairn = open(freshStore());
    const run = await cairn.run(review(calls), { doc: 'pre' }, { inputs: { approval: false } });
    expect(run).toMatchObject({ status: 'waiting', waitingFor: 'approval' });
    expect(calls.drafts).toBe(2);
  });

  it('a stage that reruns because its upstream changed asks again; the old yes publishes nothing', async () => {
    const published: string[] = [];
    const make = (version: string) =>
      pipeline('publish-flow')
        .stage('draft', async () => ({ text: `draft v${version}` }), { version })
        .stage('approve', async (ctx) => ({ ok: await ctx.waitFor<boolean>('approval') }))
        .stage('publish', async (ctx) => {
          const { text } = ctx.output('draft');
          if (ctx.output('approve').ok) published.push(text);
          return { published: text };
        });
    const url = freshStore();
    const cairn = open(url);
    const waiting = await cairn.run(make('1'), { doc: 'a' });
    expect(waiting.status).toBe('waiting');
    expect((await cairn.resume(waiting.id, { inputs: { approval: true } })).status).toBe('completed');
    expect(published).toEqual(['draft v1']);

    // a new version of the draft: approve reruns and must ask for a new answer
    const again = await open(url).run(make('2'), { doc: 'a' });
    expect(again).toMatchObject({ status: 'waiting', waitingFor: 'approval' });
    expect(published).toEqual(['draft v1']);
  });

  it('the same wait run again after a failure gets the same value (it is not asked twice)', async () => {
    let failures = 1;
    let asked = 0;
    const def = workflow('flaky-confirm', { initial: { ok: false } }).node('confirm', async (_s, ctx) => {
      const ok = await ctx.waitFor<boolean>('ok');
      asked++;
      if (failures-- > 0) throw new Error('network down after the answer');
      return { ok };
    });
    const cairn = open(freshStore());
    const waiting = await cairn.run(def, {});
    const failed = await cairn.resume(waiting.id, { inputs: { ok: true } });
    expect(failed.status).toBe('failed');
    const done = await cairn.resume(waiting.id);
    expect(done).toMatchObject({ status: 'completed', result: { ok: true } });
    expect(asked).toBe(2);
  });

  it('several waits of one name in one stage or node are asked one by one, and each answer is kept for a rerun', async () => {
    let failOnce = true;
    const asked: string[] = [];
    const def = pipeline('each-doc').stage('approve-each', async (ctx) => {
      const answers: { doc: string; ok: boolean }[] = [];
      for (const doc of ['doc-A', 'doc-B', 'doc-C']) {
        asked.push(doc);
        answers.push({ doc, ok: await ctx.waitFor<boolean>('approval') });
      }
      if (failOnce) {
        failOnce = false;
        throw new Error('the publishing service is down'); // after all three answers: a rerun must not ask again
      }
      return answers;
    });
    const flow = workflow('twice', { initial: { a: false, b: false } }).node('ask', async (_s, ctx) => ({
      a: await ctx.waitFor<boolean>('approval'),
      b: await ctx.waitFor<boolean>('approval'),
    }));
    const cairn = open(freshStore());
    const run = await cairn.run(def, {});
    expect(run).toMatchObject({ status: 'waiting', waitingFor: 'approval' });
    expect((await cairn.resume(run.id, { inputs: { approval: true } })).status).toBe('waiting'); // doc-B now
    expect((await cairn.resume(run.id, { inputs: { approval: false } })).status).toBe('waiting'); // doc-C now
    expect((await cairn.resume(run.id, { inputs: { approval: true } })).status).toBe('failed');
    const done = await cairn.resume(run.id);
    expect(done).toMatchObject({
      status: 'completed',
      result: [
        { doc: 'doc-A', ok: true },
        { doc: 'doc-B', ok: false },
        { doc: 'doc-C', ok: true },
      ],
    });

    const twice = await cairn.run(flow, {});
    expect((await cairn.resume(twice.id, { inputs: { approval: true } })).status).toBe('waiting');
    expect(await cairn.resume(twice.id, { inputs: { approval: false } })).toMatchObject({
      status: 'completed',
      result: { a: true, b: false },
    });
  });

  it('a schema validator refusal is told on one line, by its issues', async () => {
    const schema = {
      parse(value: unknown): boolean {
        if (typeof value === 'boolean') return value;
        throw Object.assign(new Error('[\n  {\n    "message": "Invalid input"\n  }\n]'), {
          issues: [{ message: 'Invalid input: expected boolean, received string' }],
        });
      },
    };
    const def = pipeline('zod-like').stage('ask', async (ctx) => ({ ok: await ctx.waitFor('approval', { validate: schema }) }));
    const cairn = open(freshStore());
    const waiting = await cairn.run(def, {});
    await expect(cairn.resume(waiting.id, { inputs: { approval: 'yes' } })).rejects.toMatchObject({
      message: expect.stringContaining('refused by ask: Invalid input: expected boolean, received string. Run'),
    });
  });

  it('resume refuses values for a run that is not waiting, or for another name, and names what it waits for', async () => {
    const calls = { drafts: 0 };
    const cairn = open(freshStore());
    const waiting = await cairn.run(review(calls), { doc: 'names' });
    await expect(cairn.resume(waiting.id, { inputs: { approve: true } })).rejects.toMatchObject({
      code: 'INVALID_INPUT',
      message: expect.stringMatching(/waits for approval, not for approve/),
    });
    expect((await cairn.get(waiting.id))?.status).toBe('waiting');
    const done = await cairn.resume(waiting.id, { inputs: { approval: true } });
    expect(done.status).toBe('completed');
    await expect(cairn.resume(waiting.id, { inputs: { approval: false } })).rejects.toMatchObject({
      code: 'INVALID_INPUT',
      message: expect.stringMatching(/is completed, not waiting for input.*cairn fork/),
    });
    expect((await cairn.get(waiting.id))?.result).toEqual({ drafts: 1, approved: true });
    // the same command given again (a script, or after a crash) is no news: the cached result
    expect(await cairn.resume(waiting.id, { inputs: { approval: true } })).toMatchObject({ status: 'completed' });
    expect(calls.drafts).toBe(1);
  });

  it('the same command given again after the run broke down continues it, and its answer is not read by a later wait', async () => {
    let drafts = 0;
    let failDraft = 2; // the second draft fails once, after confirm@1 read approval=false
    const def = workflow('review-broken', { initial: { drafts: 0, approved: false } })
      .node('draft', async (s) => {
        drafts++;
        if (drafts === failDraft) {
          failDraft = 0;
          throw new Error('the drafting service is down');
        }
        return { drafts: s.drafts + 1 };
      })
      .node('confirm', async (_s, ctx) => ({ approved: await ctx.waitFor<boolean>('approval') }))
      .edge('draft', 'confirm')
      .edge('confirm', (s) => (s.approved ? END : 'draft'));
    const cairn = open(freshStore());
    const waiting = await cairn.run(def, { doc: 'broken' });
    const failed = await cairn.resume(waiting.id, { inputs: { approval: false } });
    expect(failed.status).toBe('failed');
    // the user runs the same command again: accepted, the run goes on, and confirm@3 asks anew
    const again = await cairn.resume(waiting.id, { inputs: { approval: false } });
    expect(again).toMatchObject({ status: 'waiting', waitingFor: 'approval', steps: 3 });
  });

  it('validate refuses a bad value: resume fails with INVALID_INPUT and the run keeps waiting for a good one', async () => {
    const def = pipeline('validated').stage('ask', async (ctx) => ({
      approved: await ctx.waitFor('approval', {
        validate: (value) => {
          if (typeof value !== 'boolean') throw new Error(`expected true or false, got ${JSON.stringify(value)}`);
          return value;
        },
      }),
    }));
    const cairn = open(freshStore());
    const waiting = await cairn.run(def, {});
    await expect(cairn.resume(waiting.id, { inputs: { approval: 'yes' } })).rejects.toMatchObject({
      code: 'INVALID_INPUT',
      message: expect.stringMatching(
        /value given for approval was refused by ask: expected true or false, got "yes".*still waits for approval/,
      ),
    });
    expect(await cairn.get(waiting.id)).toMatchObject({ status: 'waiting', waitingFor: 'approval' });
    const done = await cairn.resume(waiting.id, { inputs: { approval: true } });
    expect(done).toMatchObject({ status: 'completed', result: { approved: true } });
  });

  it('validate takes a schema with parse', async () => {
    const schema = {
      parse(value: unknown): number {
        if (typeof value !== 'number') throw new Error('a number is needed');
        return value * 2;
      },
    };
    const def = pipeline('schema-wait').stage('ask', async (ctx) => ({ n: await ctx.waitFor('n', { validate: schema }) }));
    const cairn = open(freshStore());
    const waiting = await cairn.run(def, {});
    await expect(cairn.resume(waiting.id, { inputs: { n: 'x' } })).rejects.toMatchObject({ code: 'INVALID_INPUT' });
    expect(await cairn.resume(waiting.id, { inputs: { n: 21 } })).toMatchObject({ status: 'completed', result: { n: 42 } });
  });
});

describe('a stage or node that does not await its calls', () => {
  const open = useCairns();

  it('`if (ctx.waitFor(…))` fails the node with an error that says await, and publishes nothing', async () => {
    let published = false;
    const def = workflow('no-await-wait', { initial: { done: false } })
      .node('confirm', async (_s, ctx) => {
        // @ts-expect-error -- the mistake under test: a promise is always truthy
        // eslint-disable-next-line @typescript-eslint/no-misused-promises
        if (ctx.waitFor('approval')) published = true;
        return { done: true };
      })
      .edge('confirm', END);
    const cairn = open(freshStore());
    const run = await cairn.run(def, {});
    expect(run.status).toBe('failed');
    expect(run.error).toMatchObject({
      code: 'INVALID_DEFINITION',
      message: expect.stringMatching(/ctx\.waitFor\('approval'\) was never awaited.*await/),
    });
    expect(published).toBe(true); // the user's own code ran; cairn did not record it as done
    expect(run.result).toBeUndefined();
  });

  it('`void ctx.items(…)` fails the stage instead of completing while items still run', async () => {
    const def = pipeline('no-await-items').stage('work', async (ctx) => {
      void ctx.items('rows', [1, 2, 3], async (x) => x * 2);
      return { ok: true };
    });
    const run = await open(freshStore()).run(def, {});
    expect(run.status).toBe('failed');
    expect(run.error).toMatchObject({
      code: 'INVALID_DEFINITION',
      message: expect.stringMatching(/ctx\.items\('rows', …\) was never awaited/),
    });
  });

  it('`return { r: ctx.items(…) }` says await, not a serializer hint', async () => {
    const def = pipeline('returns-promise').stage('work', async (ctx) => ({ r: ctx.items('rows', [1, 2], async (x) => x) }));
    const run = await open(freshStore()).run(def, {});
    expect(run.status).toBe('failed');
    expect(run.error?.code).toBe('INVALID_DEFINITION');
    expect(run.error?.message).toMatch(/await ctx\.items\('rows', …\)/);
    expect(run.error?.message).not.toMatch(/stringifyAsync/);
  });

  it('a `.then` left running is reported as still running', async () => {
    const gate = { release: (): void => undefined };
    const def = pipeline('then-running').stage('work', async (ctx) => {
      void ctx
        .items('rows', [1], async (x) => {
          await new Promise<void>((resolve) => (gate.release = resolve));
          return x;
        })
        .then(
          () => undefined,
          () => undefined, // it ends with LEASE_LOST: the run was over before it finished
        );
      return { ok: true };
    });
    const run = await open(freshStore(), { gracePeriodMs: 0 }).run(def, {});
    gate.release();
    expect(run.error).toMatchObject({ code: 'INVALID_DEFINITION', message: expect.stringMatching(/was still running when it returned/) });
  });

  it('awaited calls, Promise.all and returning the call itself are fine', async () => {
    const def = pipeline('awaited').stage('work', async (ctx) => {
      const [a, b] = await Promise.all([ctx.items('a', [1, 2], async (x) => x), ctx.items('b', [3], async (x) => x)]);
      const c = await ctx.items('c', [4], async (x) => x).catch(() => []);
      return { sum: [...a, ...b, ...c].reduce((x, y) => x + y, 0) };
    });
    const direct = pipeline('direct').stage('work', (ctx) => ctx.items('rows', [5, 6], async (x) => x + 1));
    const cairn = open(freshStore());
    expect(await cairn.run(def, {})).toMatchObject({ status: 'completed', result: { sum: 10 } });
    expect(await cairn.run(direct, {})).toMatchObject({ status: 'completed', result: [6, 7] });
  });
});
