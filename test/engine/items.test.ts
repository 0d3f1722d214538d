/**
 * `ctx.items` on every store: input order under concurrency, item-level resume (done items never
 * run again), collected failures, stable keys, durability and batch sizes, progress events, and a
 * result too large for the store.
 */
import { describe, expect, it } from 'vitest';
import { pipeline } from '../../src/engine/pipeline.js';
import type { ItemInfo } from '../../src/engine/types.js';
import { Counter, ledgerEntries, record, sleep, useCairns, withStore } from './engine-helpers.js';
import { ENGINE_STORES } from './store-matrix.js';

interface Row {
  readonly id: string;
  readonly n: number;
}

const rows = (count: number): Row[] => Array.from({ length: count }, (_, n) => ({ id: `row-${n}`, n }));

/** The one ledger of a run (the engine names it after the stage and the items call). */
async function onlyLedger(url: string, runId: string): Promise<string> {
  const ledgers = await withStore(url, (store) => store.listLedgers(runId));
  expect(ledgers).toHaveLength(1);
  return ledgers[0]!;
}

describe.each(ENGINE_STORES)('ctx.items on $name', (kind) => {
  const open = useCairns();

  it('returns results in input order with concurrency 4 and random delays', async () => {
    const cairn = open(await kind.freshUrl());
    const started: number[] = [];
    const def = pipeline('order').stage('square', (ctx) =>
      ctx.items(
        'rows',
        rows(60),
        async (row) => {
          started.push(row.n);
          await sleep(Math.floor(Math.random() * 4));
          return row.n * row.n;
        },
        { key: (r) => r.id, concurrency: 4 },
      ),
    );
    const run = await cairn.run(def, {});
    expect(run.status).toBe('completed');
    expect(run.result).toEqual(rows(60).map((r) => r.n * r.n));
    expect([...started].sort((a, b) => a - b)).toEqual(rows(60).map((r) => r.n));
    expect(run.stages[0]?.items).toEqual({ rows: { done: 60, failed: 0, total: 60 } });
  });

  it('on resume skips done items and retries only the failed one', async () => {
    const url = await kind.freshUrl();
    const cairn = open(url);
    const calls = new Counter();
    const doneFirst = new Set<string>();
    let broken = true;
    const def = pipeline('resume-items')
      .stage('prepare', () => rows(200))
      .stage('work', (ctx) =>
        ctx.items(
          'rows',
          ctx.output('prepare'),
          async (row) => {
            calls.hit(row.id);
            await sleep(row.n % 3);
            if (broken && row.n === 120) throw new Error('row 120 broke');
            if (broken) doneFirst.add(row.id);
            return row.n + 1;
          },
          { key: (r) => r.id, concurrency: 4, checkpointEvery: 25 },
        ),
      );
    const failed = await cairn.run(def, {});
    expect(failed.status).toBe('failed');
    expect(failed.error).toMatchObject({ code: 'ITEM_FAILED', stage: 'work' });
    expect(failed.error?.message).toContain('row-120');
    expect(doneFirst.size).toBeGreaterThanOrEqual(120);
    expect(doneFirst.size).toBeLessThan(200);

    // every item that finished is in the ledger, and the failure too
    const ledger = await onlyLedger(url, failed.id);
    const entries = await ledgerEntries(url, failed.id, ledger);
    expect(new Set(entries.filter((e) => e.status === 'done').map((e) => e.key))).toEqual(doneFirst);
    expect(entries.filter((e) => e.status === 'failed').map((e) => e.key)).toEqual(['row-120']);
    expect(failed.stages[1]?.items).toEqual({ rows: { done: doneFirst.size, failed: 1, total: 200 } });

    broken = false;
    const before = rows(200).map((r) => calls.of(r.id));
    const resumed = await cairn.run(def, {});
    expect(resumed.status).toBe('completed');
    expect(resumed.result).toEqual(rows(200).map((r) => r.n + 1));
    for (const row of rows(200)) {
      const again = calls.of(row.id) - before[row.n]!;
      expect([row.id, again]).toEqual([row.id, doneFirst.has(row.id) ? 0 : 1]);
    }
    expect(calls.of('row-120')).toBe(2);
  });

  it("collects failures with onItemError: 'collect' and completes the stage", async () => {
    const cairn = open(await kind.freshUrl());
    const def = pipeline('collect').stage('work', (ctx) =>
      ctx.items(
        'rows',
        rows(20),
        (row) => {
          if (row.n % 5 === 0) throw Object.assign(new Error(`bad ${row.n}`), { code: 'E_BAD' });
          return row.n;
        },
        { key: (r) => r.id, concurrency: 3, onItemError: 'collect' },
      ),
    );
    const run = await cairn.run(def, {});
    expect(run.status).toBe('completed');
    expect(run.stages[0]?.status).toBe('completed');
    const out = run.result!;
    expect(out.done).toBe(16);
    expect(out.failed).toBe(4);
    expect(out.results).toEqual(rows(20).map((r) => (r.n % 5 === 0 ? undefined : r.n)));
    expect(out.failures.map((f) => [f.key, f.index, f.attempt, f.error.code, f.error.message])).toEqual([
      ['row-0', 0, 1, 'E_BAD', 'bad 0'],
      ['row-5', 5, 1, 'E_BAD', 'bad 5'],
      ['row-10', 10, 1, 'E_BAD', 'bad 10'],
      ['row-15', 15, 1, 'E_BAD', 'bad 15'],
    ]);
  });

  it('keeps item.key and item.idempotencyKey across retries and resumes; attempt grows', async () => {
    const url = await kind.freshUrl();
    const cairn = open(url);
    const seen = new Map<string, ItemInfo[]>();
    let resumed = false;
    const def = pipeline('keys').stage('work', (ctx) =>
      ctx.items(
        'rows',
        rows(5),
        (row, item) => {
          seen.set(row.id, [...(seen.get(row.id) ?? []), item]);
          if (row.n === 2 && !resumed) throw new Error('not yet');
          return row.n;
        },
        { key: (r) => r.id, retries: { max: 1, backoffMs: 1, jitter: false } },
      ),
    );
    const failed = await cairn.run(def, {});
    expect(failed.status).toBe('failed');
    resumed = true;
    const done = await cairn.run(def, {});
    expect(done.status).toBe('completed');

    const tries = seen.get('row-2')!;
    expect(tries.map((t) => t.attempt)).toEqual([1, 2, 3]);
    expect(new Set(tries.map((t) => t.key))).toEqual(new Set(['row-2']));
    expect(new Set(tries.map((t) => t.idempotencyKey)).size).toBe(1);
    expect(tries[0]!.idempotencyKey).toContain(failed.id);
    expect(tries[0]!.idempotencyKey).toMatch(/\/row-2$/);
    expect(tries.every((t) => t.index === 2)).toBe(true);
    // other items have their own keys
    const allKeys = [...seen.values()].map((infos) => infos[0]!.idempotencyKey);
    expect(new Set(allKeys).size).toBe(5);
    expect(seen.get('row-0')).toHaveLength(1);
  });

  it('uses the index as the default key', async () => {
    const cairn = open(await kind.freshUrl());
    const keys: string[] = [];
    const def = pipeline('index-keys').stage('work', (ctx) =>
      ctx.items('letters', ['a', 'b', 'c'], (letter, item) => {
        keys.push(item.key);
        return letter.toUpperCase();
      }),
    );
    const run = await cairn.run(def, {});
    expect(run.result).toEqual(['A', 'B', 'C']);
    expect(keys).toEqual(['0', '1', '2']);
  });

  it('refuses duplicate keys with INVALID_INPUT before calling any item', async () => {
    const cairn = open(await kind.freshUrl());
    const calls = new Counter();
    const def = pipeline('dups').stage('work', (ctx) =>
      ctx.items(
        'rows',
        [...rows(3), { id: 'row-1', n: 9 }],
        (row) => {
          calls.hit(row.id);
          return row.n;
        },
        { key: (r) => r.id },
      ),
    );
    const run = await cairn.run(def, {});
    expect(run.status).toBe('failed');
    expect(run.error).toMatchObject({ code: 'INVALID_INPUT', stage: 'work' });
    expect(run.error?.message).toContain('row-1');
    expect(calls.of('row-0')).toBe(0);
  });

  it("with durability: 'item' makes each result durable before the next item starts", async () => {
    const url = await kind.freshUrl();
    const flushes: number[] = [];
    const cairn = open(url, { hooks: { onCommitPoint: (point, info) => void (point === 'items' && flushes.push(info.count ?? -1)) } });
    const durableAtStart: number[] = [];
    const def = pipeline('per-item').stage('work', (ctx) =>
      ctx.items(
        'rows',
        rows(40),
        async (row) => {
          durableAtStart.push(flushes.reduce((a, b) => a + b, 0));
          await Promise.resolve();
          return row.n;
        },
        { key: (r) => r.id, durability: 'item' },
      ),
    );
    const run = await cairn.run(def, {});
    expect(run.status).toBe('completed');
    expect(durableAtStart).toEqual(rows(40).map((r) => r.n));
    expect(flushes).toEqual(rows(40).map(() => 1));
    const entries = await ledgerEntries(url, run.id, await onlyLedger(url, run.id));
    expect(entries.map((e) => e.key)).toEqual(rows(40).map((r) => r.id));
  });

  it('with checkpointEvery: 10 commits batches of at most about 10 (plus concurrency)', async () => {
    const url = await kind.freshUrl();
    const flushes: number[] = [];
    const cairn = open(url, { hooks: { onCommitPoint: (point, info) => void (point === 'items' && flushes.push(info.count ?? -1)) } });
    const behind: number[] = [];
    let finished = 0;
    const def = pipeline('batches').stage('work', (ctx) =>
      ctx.items(
        'rows',
        rows(300),
        async (row) => {
          if (row.n % 25 === 24) {
            // how far the ledger lags behind the results handed back so far
            const handedBack = finished;
            const ledgers = await withStore(url, (store) => store.listLedgers(ctx.runId));
            const stored = ledgers[0] === undefined ? 0 : (await ledgerEntries(url, ctx.runId, ledgers[0])).length;
            behind.push(handedBack - stored);
          }
          finished++;
          return row.n;
        },
        { key: (r) => r.id, concurrency: 4, checkpointEvery: 10 },
      ),
    );
    const run = await cairn.run(def, {});
    expect(run.status).toBe('completed');
    expect(flushes.reduce((a, b) => a + b, 0)).toBe(300);
    expect(Math.max(...flushes)).toBeLessThanOrEqual(10 + 4);
    expect(flushes.length).toBeGreaterThanOrEqual(300 / 14);
    expect(behind.length).toBeGreaterThan(0);
    // the unflushed window (checkpointEvery + concurrency) plus results handed back but not yet queued (one per worker)
    for (const lag of behind) expect(lag).toBeLessThanOrEqual(10 + 4 + 4);
    expect(await ledgerEntries(url, run.id, await onlyLedger(url, run.id))).toHaveLength(300);
  });

  it('emits items:progress with done, failed, total, rate and eta; done starts from the ledger on resume', async () => {
    const cairn = open(await kind.freshUrl());
    let broken = true;
    const def = pipeline('progress').stage('work', (ctx) =>
      ctx.items(
        'rows',
        rows(50),
        (row) => {
          if (broken && row.n === 30) throw new Error('stop here');
          return row.n;
        },
        { key: (r) => r.id },
      ),
    );
    const first = record(cairn, 'items:progress');
    const failed = await cairn.run(def, {});
    expect(failed.status).toBe('failed');
    expect(first[0]).toMatchObject({ runId: failed.id, stage: 'work', name: 'rows', done: 0, failed: 0, total: 50 });
    expect(first.at(-1)).toMatchObject({ done: 30, failed: 1, total: 50 });
    for (const p of first) {
      expect(p.rate).toBeGreaterThanOrEqual(0);
      if (p.eta !== undefined) expect(p.eta).toBeGreaterThanOrEqual(0);
    }

    broken = false;
    first.length = 0;
    const done = await cairn.run(def, {});
    expect(done.status).toBe('completed');
    // the item that failed last time is about to be retried: it counts as left, not as failed
    expect(first[0]).toMatchObject({ done: 30, failed: 0, total: 50 });
    expect(first.at(-1)).toMatchObject({ done: 50, failed: 0, total: 50, eta: 0 });
    const dones = first.map((p) => p.done);
    expect([...dones].sort((a, b) => a - b)).toEqual(dones);
  });

  it('skips the items done by an earlier try when the stage is retried', async () => {
    const cairn = open(await kind.freshUrl());
    const calls = new Counter();
    let tries = 0;
    const def = pipeline('stage-retry').stage(
      'work',
      (ctx) => {
        tries++;
        return ctx.items(
          'rows',
          rows(10),
          (row) => {
            calls.hit(row.id);
            if (tries === 1 && row.n === 6) throw new Error('flaky');
            return row.n;
          },
          { key: (r) => r.id },
        );
      },
      { retries: { max: 1, backoffMs: 1, jitter: false } },
    );
    const run = await cairn.run(def, {});
    expect(run.status).toBe('completed');
    expect(tries).toBe(2);
    expect(run.result).toEqual(rows(10).map((r) => r.n));
    expect(rows(10).map((r) => calls.of(r.id))).toEqual([1, 1, 1, 1, 1, 1, 2, 1, 1, 1]);
  });

  it('runs every item again when the stage reruns because its version changed', async () => {
    const cairn = open(await kind.freshUrl());
    const calls = new Counter();
    const def = (version: string) =>
      pipeline('fresh-ledger').stage(
        'work',
        (ctx) =>
          ctx.items('rows', rows(5), (row) => {
            calls.hit(row.id);
            return `${version}:${row.n}`;
          }),
        { version },
      );
    expect((await cairn.run(def('1'), {})).result).toEqual(['1:0', '1:1', '1:2', '1:3', '1:4']);
    const rerun = await cairn.run(def('2'), {});
    expect(rerun.result).toEqual(['2:0', '2:1', '2:2', '2:3', '2:4']);
    expect(rows(5).map((r) => calls.of(r.id))).toEqual([2, 2, 2, 2, 2]);
  });

  it('does not reuse the ledger of a failed stage whose version changed before the resume', async () => {
    const cairn = open(await kind.freshUrl());
    const calls = new Counter();
    const def = (version: string) =>
      pipeline('changed-midway').stage(
        'work',
        (ctx) =>
          ctx.items(
            'rows',
            rows(6),
            (row) => {
              calls.hit(row.id);
              if (version === '1' && row.n === 4) throw new Error('v1 breaks on row 4');
              return `${version}:${row.n}`;
            },
            { key: (r) => r.id },
          ),
        { version },
      );
    expect((await cairn.run(def('1'), {})).status).toBe('failed');
    calls.reset();
    const fixed = await cairn.run(def('2'), {});
    expect(fixed.status).toBe('completed');
    expect(fixed.result).toEqual(rows(6).map((r) => `2:${r.n}`));
    expect(rows(6).map((r) => calls.of(r.id))).toEqual([1, 1, 1, 1, 1, 1]);
  });

  it('stops the items of a try that timed out (their signal aborts) before the retry', async () => {
    const cairn = open(await kind.freshUrl());
    const signals: { tryNo: number; signal: AbortSignal }[] = [];
    let tries = 0;
    const def = pipeline('items-timeout').stage(
      'work',
      (ctx) => {
        const tryNo = ++tries;
        return ctx.items('rows', rows(tryNo === 1 ? 1000 : 3), async (row, item) => {
          signals.push({ tryNo, signal: item.signal });
          if (tryNo === 1) await new Promise((resolve) => item.signal.addEventListener('abort', resolve));
          return row.n;
        });
      },
      // generous: the retry's ledger writes must fit in it on a loaded machine
      { timeoutMs: 250, retries: { max: 2, backoffMs: 1, jitter: false } },
    );
    const run = await cairn.run(def, {});
    expect(run.status).toBe('completed');
    expect(run.result).toEqual([0, 1, 2]);
    const firstTry = signals.filter((s) => s.tryNo === 1);
    expect(firstTry).toHaveLength(1); // the first item never ends until its signal aborts
    expect(firstTry[0]!.signal.aborted).toBe(true);
  });

  it('refuses a second ctx.items call with the same name in one stage with INVALID_DEFINITION', async () => {
    const cairn = open(await kind.freshUrl());
    const def = pipeline('twice').stage('work', async (ctx) => {
      await ctx.items('rows', [1], (n) => n);
      return ctx.items('rows', [2], (n) => n);
    });
    const run = await cairn.run(def, {});
    expect(run.status).toBe('failed');
    expect(run.error).toMatchObject({ code: 'INVALID_DEFINITION', stage: 'work' });
  });

  it('records a result too large for the store as a PAYLOAD_TOO_LARGE failure and keeps the others', async () => {
    const url = await kind.freshUrl();
    const cairn = open(url, { maxPayloadBytes: 1000 });
    const def = pipeline('big').stage('work', async (ctx) => {
      const out = await ctx.items('rows', rows(12), (row) => (row.n === 7 ? 'x'.repeat(5000) : `r${row.n}`), {
        key: (r) => r.id,
        concurrency: 3,
        onItemError: 'collect',
      });
      return { done: out.done, failed: out.failures.map((f) => [f.key, f.error.code]) };
    });
    const run = await cairn.run(def, {});
    expect(run.status).toBe('completed');
    expect(run.result).toEqual({ done: 11, failed: [['row-7', 'PAYLOAD_TOO_LARGE']] });
    const entries = await ledgerEntries(url, run.id, await onlyLedger(url, run.id));
    const latest = new Map(entries.map((e) => [e.key, e]));
    expect(latest.size).toBe(12);
    for (const row of rows(12)) {
      const entry = latest.get(row.id)!;
      if (row.n === 7) expect(entry).toMatchObject({ status: 'failed', error: { code: 'PAYLOAD_TOO_LARGE' } });
      else expect(entry).toMatchObject({ status: 'done', result: `r${row.n}` });
    }
  });

  it("fails the stage on a too-large result with onItemError: 'fail', keeping the other results", async () => {
    const url = await kind.freshUrl();
    // the failed run's summary (error, cause, stacks) must itself fit: a limit of 1000 bytes is too small for it
    const cairn = open(url, { maxPayloadBytes: 20_000 });
    const def = pipeline('big-fail').stage('work', (ctx) =>
      ctx.items('rows', rows(6), (row) => (row.n === 3 ? 'x'.repeat(50_000) : row.n), { key: (r) => r.id }),
    );
    const run = await cairn.run(def, {});
    expect(run.status).toBe('failed');
    expect(run.error).toMatchObject({ code: 'ITEM_FAILED', stage: 'work', cause: { code: 'PAYLOAD_TOO_LARGE' } });
    const entries = await ledgerEntries(url, run.id, await onlyLedger(url, run.id));
    // the store refuses the result only when its batch is written, so items after it may have run and are kept
    const doneKeys = entries.filter((e) => e.status === 'done').map((e) => e.key);
    expect(doneKeys).toEqual(expect.arrayContaining(['row-0', 'row-1', 'row-2']));
    expect(doneKeys).not.toContain('row-3');
    expect(entries.filter((e) => e.status === 'failed').map((e) => e.key)).toEqual(['row-3']);
  });

  it('still records the failure when the failed run summary itself exceeds the payload limit', async () => {
    const url = await kind.freshUrl();
    const cairn = open(url, { maxPayloadBytes: 8000 });
    const def = pipeline('huge-error').stage('work', (ctx) =>
      ctx.items(
        'rows',
        rows(4),
        (row) => {
          if (row.n === 2) throw new Error(`provider said: ${'x'.repeat(20_000)}`);
          return row.n;
        },
        { key: (r) => r.id },
      ),
    );
    const run = await cairn.run(def, {});
    // stacks and causes are dropped and messages cut so that the summary fits; the status is never left at running
    expect(run.status).toBe('failed');
    expect(run.error).toMatchObject({ code: 'ITEM_FAILED', stage: 'work' });
    expect(run.error?.stack).toBeUndefined();
    expect(run.history.some((h) => h.event === 'run:compacted')).toBe(true);
  });

  it('lets timers run during CPU-bound items (lease renewal, progress and Ctrl-C are never starved)', async () => {
    const url = await kind.freshUrl();
    const cairn = open(url);
    let ticks = 0;
    let ticksDuringItems = 0;
    const timer = setInterval(() => ticks++, 5);
    try {
      const def = pipeline('busy').stage('work', (ctx) =>
        ctx.items(
          'spin',
          Array.from({ length: 60 }, (_, i) => i),
          (n) => {
            const until = Date.now() + 5; // 5 ms of CPU per item, ~300 ms in all, synchronously
            while (Date.now() < until) {
              // spin
            }
            if (n === 59) ticksDuringItems = ticks;
            return n;
          },
        ),
      );
      const run = await cairn.run(def, {});
      expect(run.status).toBe('completed');
    } finally {
      clearInterval(timer);
    }
    // without yielding, a synchronous loop of 60 items would let the 5 ms timer fire 0 times
    expect(ticksDuringItems).toBeGreaterThanOrEqual(2);
  });
});
