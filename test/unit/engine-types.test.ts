/**
 * Types flow the way TypeScript users expect: `ctx.input` from the definition, `ctx.output(name)`
 * from that stage's return type, a workflow's state from `initial` and the nodes' updates, and a
 * misspelled stage or node name is a compile error. `npm test` type-checks this file (tsc), so a
 * `@ts-expect-error` that stops erroring fails the suite.
 */
import { describe, expect, expectTypeOf, it } from 'vitest';
import { z } from 'zod';
import { append, Cairn, END, pipeline, workflow, type RunSummary } from '../../src/index.js';

describe('pipeline types', () => {
  it('types ctx.input, ctx.output and the result', () => {
    const p = pipeline<{ file: string }>('speech')
      .stage('convert', (ctx) => {
        expectTypeOf(ctx.input).toEqualTypeOf<{ file: string }>();
        return { wav: `${ctx.input.file}.wav`, seconds: 3 };
      })
      .stage('transcribe', async (ctx) => {
        expectTypeOf(ctx.output('convert')).toEqualTypeOf<{ wav: string; seconds: number }>();
        // @ts-expect-error: a misspelled stage name is a compile error
        ctx.output('convrt');
        const texts = await ctx.items('segments', [1, 2, 3], (n, item) => {
          expectTypeOf(item.key).toBeString();
          return `t${n}`;
        });
        expectTypeOf(texts).toEqualTypeOf<string[]>();
        return { texts };
      })
      .stage('export', (ctx) => ctx.output('transcribe').texts.join('\n'), { dependsOn: ['transcribe'] });
    // @ts-expect-error: dependsOn names are checked too (at run time as well: INVALID_DEFINITION)
    expectTypeOf(() => p.stage('bad', () => 1, { dependsOn: ['nope'] })).toBeFunction();
    const cairn = new Cairn({ store: 'memory:' });
    expectTypeOf(cairn.run(p, { file: 'a' })).resolves.toEqualTypeOf<RunSummary<string>>();
    // @ts-expect-error: the input type is checked
    void cairn.run(p, { path: 'a' }).catch(() => undefined);
  });

  it('infers the input from a schema', () => {
    const p = pipeline('typed', { input: z.object({ n: z.number() }) }).stage('double', (ctx) => ctx.input.n * 2);
    expectTypeOf(p.stages).not.toBeAny();
    const cairn = new Cairn({ store: 'memory:' });
    expectTypeOf(cairn.run(p, { n: 1 })).resolves.toEqualTypeOf<RunSummary<number>>();
  });

  it("types collect mode's outcome", () => {
    pipeline('c').stage('s', async (ctx) => {
      const out = await ctx.items('xs', ['a'], (s) => s.length, { onItemError: 'collect' });
      expectTypeOf(out.results).toEqualTypeOf<(number | undefined)[]>();
      return out.done;
    });
  });
});

describe('workflow types', () => {
  it('types the state from initial and from what nodes return', async () => {
    const review = workflow('review', { initial: { step: 0, notes: [] as string[] }, reducers: { notes: append } })
      .node('fetch', () => ({ data: 42, notes: 'one note' }))
      .node('confirm', async (state, ctx) => {
        expectTypeOf(state.step).toBeNumber();
        expectTypeOf(state.data).toEqualTypeOf<number | undefined>();
        return { approved: await ctx.waitFor<boolean>('approval') };
      })
      .edge('fetch', 'confirm')
      .edge('confirm', (s) => {
        expectTypeOf(s.approved).toEqualTypeOf<boolean | undefined>();
        return s.approved ? 'report' : END;
      })
      .node('report', (s) => ({ report: `${s.data}` }))
      .entry('fetch');
    // @ts-expect-error: an edge from a node that does not exist
    expectTypeOf(() => review.edge('fecth', END)).toBeFunction();
    // @ts-expect-error: a node may not return a wrong type for a state key
    workflow('w', { initial: { n: 0 } }).node('bad', () => ({ n: 'text' }));
    const cairn = new Cairn({ store: 'memory:' });
    const run = await cairn.run(review, {});
    expect(run.status).toBe('waiting');
    expectTypeOf(run.result?.notes).toEqualTypeOf<string[] | undefined>();
    expectTypeOf(run.result?.report).toEqualTypeOf<string | undefined>();
  });
});
