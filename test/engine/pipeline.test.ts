/**
 * Pipeline rules on every store: stage order and outputs, resume by run id, failures that keep
 * earlier results, retries and timeouts, alternative paths (`when`), attempts, input validation.
 */
import os from 'node:os';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { pipeline } from '../../src/engine/pipeline.js';
import { codeOf } from '../helpers.js';
import { Counter, record, useCairns, withStore } from './engine-helpers.js';
import { ENGINE_STORES } from './store-matrix.js';

/** A three-stage pipeline that counts its calls; stage `b` throws while `failB.value` is true. */
function counted(name = 'abc') {
  const calls = new Counter();
  const failB = { value: false };
  const def = pipeline<{ n: number }>(name)
    .stage('a', (ctx) => {
      calls.hit('a');
      return ctx.input.n + 1;
    })
    .stage('b', (ctx) => {
      calls.hit('b');
      if (failB.value) throw Object.assign(new Error('b broke'), { code: 'E_B_BROKE' });
      return ctx.output('a') * 10;
    })
    .stage('c', (ctx) => {
      calls.hit('c');
      return { a: ctx.output('a'), b: ctx.output('b') };
    });
  return { def, calls, failB };
}

describe.each(ENGINE_STORES)('pipeline on $name', (kind) => {
  const open = useCairns();

  describe('stages and outputs', () => {
    it('runs stages in order; each return value is the output ctx.output reads; the result is the last output', async () => {
      const cairn = open(await kind.freshUrl());
      const order: string[] = [];
      const def = pipeline<{ n: number }>('order')
        .stage('first', (ctx) => {
          order.push('first');
          return { value: ctx.input.n * 2 };
        })
        .stage('second', async (ctx) => {
          order.push('second');
          await Promise.resolve();
          return ctx.output('first').value + 1;
        })
        .stage('third', (ctx) => {
          order.push('third');
          return `${ctx.output('first').value}/${ctx.output('second')}`;
        });
      const run = await cairn.run(def, { n: 5 });
      expect(order).toEqual(['first', 'second', 'third']);
      expect(run.status).toBe('completed');
      expect(run.kind).toBe('pipeline');
      expect(run.result).toBe('10/11');
      expect(run.stages.map((s) => [s.name, s.status, s.runs])).toEqual([
        ['first', 'completed', 1],
        ['second', 'completed', 1],
        ['third', 'completed', 1],
      ]);
      const stored = await cairn.get(run.id);
      expect(stored?.status).toBe('completed');
      expect(stored?.result).toBe('10/11');
    });

    it('emits run, stage and checkpoint events in order', async () => {
      const cairn = open(await kind.freshUrl());
      const seen: string[] = [];
      cairn.on('run:start', (e) => seen.push(`run:start ${e.attempt}`));
      cairn.on('stage:start', (e) => seen.push(`stage:start ${e.stage}`));
      cairn.on('stage:complete', (e) => seen.push(`stage:complete ${e.stage}`));
      cairn.on('checkpoint', (e) => seen.push(`checkpoint ${e.kind} ${e.stage ?? ''}`));
      cairn.on('run:end', (e) => seen.push(`run:end ${e.status}`));
      const { def } = counted();
      await cairn.run(def, { n: 1 });
      expect(seen).toEqual([
        'run:start 1',
        'stage:start a',
        'checkpoint stage a',
        'stage:complete a',
        'stage:start b',
        'checkpoint stage b',
        'stage:complete b',
        'stage:start c',
        'checkpoint stage c',
        'stage:complete c',
        'run:end completed',
      ]);
    });
  });

  describe('run ids and the cache', () => {
    it('gives the same definition and input the same run id and returns a completed run from cache', async () => {
      const cairn = open(await kind.freshUrl());
      const { def, calls } = counted();
      const first = await cairn.run(def, { n: 1 });
      expect(first.id).toBe(cairn.runIdFor(def, { n: 1 }));
      expect(cairn.runIdFor(def, { n: 2 })).not.toBe(first.id);
      calls.reset();
      const again = await cairn.run(def, { n: 1 });
      expect(again.id).toBe(first.id);
      expect(again.status).toBe('completed');
      expect(again.result).toEqual({ a: 2, b: 20 });
      expect([calls.of('a'), calls.of('b'), calls.of('c')]).toEqual([0, 0, 0]);
      expect(again.attempts).toHaveLength(1);
    });

    it('reruns everything with forceRestart', async () => {
      const cairn = open(await kind.freshUrl());
      const { def, calls } = counted();
      const first = await cairn.run(def, { n: 1 });
      calls.reset();
      const again = await cairn.run(def, { n: 1 }, { forceRestart: true });
      expect(again.id).toBe(first.id);
      expect(again.status).toBe('completed');
      expect([calls.of('a'), calls.of('b'), calls.of('c')]).toEqual([1, 1, 1]);
      expect(again.attempts).toHaveLength(1); // the old history is gone
    });

    it('uses an explicit runId, and refuses it for a different input', async () => {
      const cairn = open(await kind.freshUrl());
      const { def, calls } = counted();
      const run = await cairn.run(def, { n: 1 }, { runId: 'my-run' });
      expect(run.id).toBe('my-run');
      expect(await cairn.get(cairn.runIdFor(def, { n: 1 }))).toBeUndefined();
      calls.reset();
      expect(await codeOf(cairn.run(def, { n: 2 }, { runId: 'my-run' }))).toBe('INVALID_INPUT');
      expect(calls.of('a')).toBe(0);
      const stored = await cairn.get('my-run');
      expect(stored?.status).toBe('completed');
      expect(stored?.result).toEqual({ a: 2, b: 20 });
    });

    it('refuses a run id of another definition', async () => {
      const cairn = open(await kind.freshUrl());
      await cairn.run(counted('one').def, { n: 1 }, { runId: 'shared' });
      expect(await codeOf(cairn.run(counted('two').def, { n: 1 }, { runId: 'shared' }))).toBe('INVALID_INPUT');
    });
  });

  describe('failures and resume', () => {
    it('resolves a failing stage as failed, keeps earlier outputs, and resumes after the completed stages', async () => {
      const url = await kind.freshUrl();
      const cairn = open(url);
      const { def, calls, failB } = counted();
      failB.value = true;
      const failed = await cairn.run(def, { n: 1 });
      expect(failed.status).toBe('failed');
      expect(failed.result).toBeUndefined();
      expect(failed.error).toMatchObject({ code: 'E_B_BROKE', message: 'b broke', stage: 'b' });
      expect(failed.error?.stack).toContain('b broke');
      expect(failed.stages.map((s) => s.status)).toEqual(['completed', 'failed', 'pending']);
      expect(failed.stages[1]?.error?.message).toBe('b broke');
      expect([calls.of('a'), calls.of('b'), calls.of('c')]).toEqual([1, 1, 0]);

      const checkpoints = await withStore(url, (store) => store.listCheckpoints(failed.id));
      const refs = checkpoints.map((e) => (e.valid ? [e.ref.kind, e.ref.stage] : ['damaged']));
      expect(refs).toEqual([
        ['stage', 'a'],
        ['error', 'b'],
      ]);

      failB.value = false;
      calls.reset();
      const resumed = await cairn.run(def, { n: 1 });
      expect(resumed.id).toBe(failed.id);
      expect(resumed.status).toBe('completed');
      expect(resumed.error).toBeUndefined();
      expect(resumed.result).toEqual({ a: 2, b: 20 });
      expect([calls.of('a'), calls.of('b'), calls.of('c')]).toEqual([0, 1, 1]);
      expect(resumed.stages.map((s) => s.status)).toEqual(['completed', 'completed', 'completed']);
    });

    it('records each attempt with host, pid, times and outcome', async () => {
      const cairn = open(await kind.freshUrl());
      const { def, failB } = counted();
      failB.value = true;
      await cairn.run(def, { n: 3 });
      failB.value = false;
      const run = await cairn.run(def, { n: 3 });
      expect(run.attempts).toHaveLength(2);
      expect(run.attempts.map((a) => [a.n, a.outcome, a.host, a.pid])).toEqual([
        [1, 'failed', os.hostname(), process.pid],
        [2, 'completed', os.hostname(), process.pid],
      ]);
      for (const attempt of run.attempts) {
        expect(Date.parse(attempt.startedAt)).not.toBeNaN();
        expect(Date.parse(attempt.endedAt ?? '')).toBeGreaterThanOrEqual(Date.parse(attempt.startedAt));
      }
      expect(Date.parse(run.attempts[1]!.startedAt)).toBeGreaterThanOrEqual(Date.parse(run.attempts[0]!.endedAt!));
    });

    it('resumes through cairn.resume by id', async () => {
      const cairn = open(await kind.freshUrl());
      const { def, calls, failB } = counted();
      failB.value = true;
      const failed = await cairn.run(def, { n: 1 });
      failB.value = false;
      calls.reset();
      const resumed = await cairn.resume(failed.id);
      expect(resumed.status).toBe('completed');
      expect([calls.of('a'), calls.of('b'), calls.of('c')]).toEqual([0, 1, 1]);
      expect(await codeOf(cairn.resume('no-such-run'))).toBe('NOT_FOUND');
    });
  });

  describe('outputs the store cannot keep', () => {
    it('fails a stage whose output cannot be serialized, keeping the earlier stages', async () => {
      const cairn = open(await kind.freshUrl());
      const def = pipeline('unserializable')
        .stage('fine', () => 'ok')
        .stage('bad', () => ({ callback: () => 1 }));
      const run = await cairn.run(def, {});
      expect(run.status).toBe('failed');
      expect(run.error).toMatchObject({ code: 'UNSERIALIZABLE', stage: 'bad' });
      expect(run.stages.map((s) => s.status)).toEqual(['completed', 'failed']);
    });

    it('fails a stage whose output is larger than maxPayloadBytes', async () => {
      const cairn = open(await kind.freshUrl(), { maxPayloadBytes: 20_000 });
      const def = pipeline('too-big')
        .stage('fine', () => 'ok')
        .stage('big', () => 'x'.repeat(50_000));
      const run = await cairn.run(def, {});
      expect(run.status).toBe('failed');
      expect(run.error).toMatchObject({ code: 'PAYLOAD_TOO_LARGE', stage: 'big' });
      expect(run.stages.map((s) => s.status)).toEqual(['completed', 'failed']);
    });
  });

  describe('retries and timeouts', () => {
    const flaky = (failures: number, calls: Counter) =>
      pipeline('flaky')
        .stage('start', () => 'ok')
        .stage(
          'call',
          () => {
            calls.hit('call');
            if (calls.of('call') <= failures) throw new Error(`try ${calls.of('call')} failed`);
            return calls.of('call');
          },
          { retries: { max: 2, backoffMs: 1, jitter: false } },
        );

    it('completes a stage that fails twice and then succeeds', async () => {
      const cairn = open(await kind.freshUrl());
      const calls = new Counter();
      const fails = record(cairn, 'stage:fail');
      const run = await cairn.run(flaky(2, calls), {});
      expect(run.status).toBe('completed');
      expect(run.result).toBe(3);
      expect(calls.of('call')).toBe(3);
      expect(fails.map((f) => [f.stage, f.willRetry, f.error.message])).toEqual([
        ['call', true, 'try 1 failed'],
        ['call', true, 'try 2 failed'],
      ]);
    });

    it('fails a stage that fails three times with max: 2', async () => {
      const cairn = open(await kind.freshUrl());
      const calls = new Counter();
      const fails = record(cairn, 'stage:fail');
      const run = await cairn.run(flaky(3, calls), {});
      expect(run.status).toBe('failed');
      expect(run.error).toMatchObject({ message: 'try 3 failed', stage: 'call' });
      expect(calls.of('call')).toBe(3);
      expect(fails.map((f) => f.willRetry)).toEqual([true, true, false]);
    });

    it('does not retry usage errors', async () => {
      const cairn = open(await kind.freshUrl());
      const calls = new Counter();
      const def = pipeline('usage').stage(
        'bad',
        async (ctx) => {
          calls.hit('bad');
          return ctx.items('dup', [1, 1], (n) => n, { key: (n) => n });
        },
        { retries: { max: 3, backoffMs: 1, jitter: false } },
      );
      const run = await cairn.run(def, {});
      expect(run.status).toBe('failed');
      expect(run.error?.code).toBe('INVALID_INPUT');
      expect(calls.of('bad')).toBe(1);
    });

    it('fails a try that runs past timeoutMs with STAGE_TIMEOUT', async () => {
      const cairn = open(await kind.freshUrl());
      let sawAbort = false;
      const def = pipeline('slow').stage(
        'wait',
        (ctx) =>
          new Promise((_, reject) => {
            ctx.signal.addEventListener('abort', () => {
              sawAbort = true;
              reject(ctx.signal.reason as Error);
            });
          }),
        { timeoutMs: 30 },
      );
      const run = await cairn.run(def, {});
      expect(run.status).toBe('failed');
      expect(run.error).toMatchObject({ code: 'STAGE_TIMEOUT', stage: 'wait' });
      expect(sawAbort).toBe(true);
    });

    it('retries a timed-out try', async () => {
      const cairn = open(await kind.freshUrl());
      const calls = new Counter();
      const def = pipeline('slow-once').stage(
        'wait',
        async (ctx) => {
          calls.hit('wait');
          if (calls.of('wait') === 1) await new Promise((resolve) => ctx.signal.addEventListener('abort', resolve));
          return 'done';
        },
        { timeoutMs: 30, retries: { max: 1, backoffMs: 1, jitter: false } },
      );
      const run = await cairn.run(def, {});
      expect(run.status).toBe('completed');
      expect(calls.of('wait')).toBe(2);
    });
  });

  describe('alternative paths (when)', () => {
    type Media = { kind: 'audio' | 'video'; name: string };
    const media = (calls: Counter, strictExport = false) =>
      pipeline<Media>('media')
        .stage(
          'convert',
          (ctx) => {
            calls.hit('convert');
            return `${ctx.input.name}.wav`;
          },
          { when: ({ input }) => input.kind === 'audio' || 'the input is not audio' },
        )
        .stage(
          'transcribe',
          (ctx) => {
            calls.hit('transcribe');
            return `text of ${ctx.output('convert')}`;
          },
          { when: ({ input }) => input.kind === 'audio' },
        )
        .stage(
          'replicate',
          (ctx) => {
            calls.hit('replicate');
            return `copy of ${ctx.input.name}`;
          },
          { dependsOn: [], when: ({ input }) => input.kind === 'video' || 'the input is not video' },
        )
        .stage(
          'export',
          (ctx) => {
            calls.hit('export');
            if (strictExport) return { text: ctx.output('transcribe') };
            return { text: ctx.maybeOutput('transcribe'), copy: ctx.maybeOutput('replicate') };
          },
          { dependsOn: ['transcribe', 'replicate'] },
        );

    it('runs the audio path and skips the video one with its reason', async () => {
      const cairn = open(await kind.freshUrl());
      const calls = new Counter();
      const skips = record(cairn, 'stage:skip');
      const run = await cairn.run(media(calls), { kind: 'audio', name: 'talk' });
      expect(run.status).toBe('completed');
      expect(run.result).toEqual({ text: 'text of talk.wav', copy: undefined });
      expect(run.stages.map((s) => [s.name, s.status])).toEqual([
        ['convert', 'completed'],
        ['transcribe', 'completed'],
        ['replicate', 'skipped'],
        ['export', 'completed'],
      ]);
      expect(run.stages[2]?.reason).toBe('the input is not video');
      expect(skips).toEqual([{ runId: run.id, stage: 'replicate', reason: 'the input is not video' }]);
      expect(calls.of('replicate')).toBe(0);
    });

    it('runs the video path; maybeOutput of a skipped stage is undefined', async () => {
      const cairn = open(await kind.freshUrl());
      const calls = new Counter();
      const run = await cairn.run(media(calls), { kind: 'video', name: 'clip' });
      expect(run.status).toBe('completed');
      expect(run.result).toEqual({ text: undefined, copy: 'copy of clip' });
      expect(run.stages.map((s) => s.status)).toEqual(['skipped', 'skipped', 'completed', 'completed']);
      expect(run.stages[0]?.reason).toBe('the input is not audio');
      expect(run.stages[1]?.reason).toMatch(/when/);
      expect([calls.of('convert'), calls.of('transcribe')]).toEqual([0, 0]);

      calls.reset();
      const again = await cairn.run(media(calls), { kind: 'video', name: 'clip' });
      expect(again.status).toBe('completed');
      expect(again.result).toEqual(run.result);
      expect(calls.of('replicate') + calls.of('export')).toBe(0);
    });

    it('fails ctx.output of a skipped stage with INVALID_DEFINITION', async () => {
      const cairn = open(await kind.freshUrl());
      const run = await cairn.run(media(new Counter(), true), { kind: 'video', name: 'clip' });
      expect(run.status).toBe('failed');
      expect(run.error).toMatchObject({ code: 'INVALID_DEFINITION', stage: 'export' });
      expect(run.error?.message).toContain('transcribe');
    });
  });

  describe('input and ids', () => {
    it('validates the input with the pipeline schema', async () => {
      const cairn = open(await kind.freshUrl());
      const calls = new Counter();
      const def = pipeline('typed', { input: z.object({ n: z.number() }) }).stage('double', (ctx) => {
        calls.hit('double');
        return ctx.input.n * 2;
      });
      // @ts-expect-error: a string is not a number
      expect(await codeOf(cairn.run(def, { n: 'three' }))).toBe('INVALID_INPUT');
      // @ts-expect-error: n is missing
      expect(await codeOf(cairn.run(def, {}))).toBe('INVALID_INPUT');
      expect(calls.of('double')).toBe(0);
      expect(await cairn.list()).toEqual([]);
      const run = await cairn.run(def, { n: 3 });
      expect(run.result).toBe(6);
    });

    it('refuses hostile run ids with INVALID_RUN_ID', async () => {
      const cairn = open(await kind.freshUrl());
      const { def, calls } = counted();
      for (const runId of ['../../etc', '/etc/passwd', 'a/b', '..', '']) {
        expect(await codeOf(cairn.run(def, { n: 1 }, { runId }))).toBe('INVALID_RUN_ID');
      }
      expect(await codeOf(cairn.resume('../../etc'))).toBe('INVALID_RUN_ID');
      expect(await codeOf(cairn.get('../../etc'))).toBe('INVALID_RUN_ID');
      expect(await codeOf(cairn.cancel('../../etc'))).toBe('INVALID_RUN_ID');
      expect(calls.of('a')).toBe(0);
      expect(await cairn.list()).toEqual([]);
    });
  });
});
