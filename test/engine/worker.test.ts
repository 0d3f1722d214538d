/**
 * Workers on a store with a work queue: `submit` queues a run once, `work` claims and runs queued
 * runs, several workers never run the same run twice, a stranded run is taken over with a newer
 * epoch, and a worker whose lease was taken over stops and writes nothing more (`LEASE_LOST`).
 */
import { randomUUID } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, describe, expect, it } from 'vitest';
import { pipeline } from '../../src/engine/pipeline.js';
import { RUN_DATA_FORMAT, readRunData } from '../../src/engine/run-data.js';
import { type MemoryStore } from '../../src/stores/memory/memory-store.js';
import { openStore } from '../../src/stores/open-store.js';
import type { Store } from '../../src/stores/store.js';
import { codeOf } from '../helpers.js';
import { POSTGRES, dropSchema, freshSchema, postgresUrl, schemaOf, withClient } from '../postgres.js';
import { Counter, deferred, record, useCairns } from './engine-helpers.js';
import { ENGINE_STORES } from './store-matrix.js';

interface QueueStore {
  readonly name: string;
  freshUrl(): Promise<string>;
  /** Makes the run's lease run out now, as if its holder had stopped renewing it. */
  expireLease(url: string, store: Store, runId: string): Promise<void>;
}

const schemas: string[] = [];
afterAll(async () => {
  for (const schema of schemas) await dropSchema(schema);
});

const QUEUE_STORES: QueueStore[] = [
  {
    name: 'memory',
    freshUrl: () => Promise.resolve(`memory:worker-${randomUUID()}`),
    expireLease: (_url, store, runId) => {
      const held = (store as MemoryStore).space.get(runId)!;
      held.lease = { ...held.lease!, expiresAt: new Date(Date.now() - 1).toISOString() };
      return Promise.resolve();
    },
  },
  {
    name: 'sqlite',
    freshUrl: async () => `sqlite:${path.join(await fs.mkdtemp(path.join(os.tmpdir(), 'cairn-worker-')), 'cairn.db')}`,
    expireLease: (url, _store, runId) => {
      const db = new Database(url.slice('sqlite:'.length));
      try {
        db.prepare("UPDATE cairn_leases SET expires_at = '2000-01-01T00:00:00.000Z' WHERE run_id = ?").run(runId);
      } finally {
        db.close();
      }
      return Promise.resolve();
    },
  },
  ...(POSTGRES.reachable
    ? [
        {
          name: 'postgres',
          freshUrl: () => {
            const schema = freshSchema('cairn_worker');
            schemas.push(schema);
            return Promise.resolve(postgresUrl(schema));
          },
          expireLease: async (url: string, _store: Store, runId: string) => {
            await withClient((pg) =>
              pg.query(`UPDATE "${schemaOf(url)}".leases SET expires_at = now() - interval '1 millisecond' WHERE run_id = $1`, [runId]),
            );
          },
        },
      ]
    : []),
];

/** double → add: the result tells which input it ran on. */
function arithmetic(calls: Counter) {
  return pipeline<{ n: number }>('arith')
    .stage('double', (ctx) => {
      calls.hit(`double:${ctx.input.n}`);
      return ctx.input.n * 2;
    })
    .stage('add', async (ctx) => {
      await new Promise((r) => setTimeout(r, 1));
      calls.hit(`add:${ctx.input.n}`);
      return ctx.output('double') + 1;
    });
}

describe.each(QUEUE_STORES)('workers on $name', (kind) => {
  const open = useCairns();

  it('queues a submitted run once and a worker runs it to completion', async () => {
    const url = await kind.freshUrl();
    const calls = new Counter();
    const def = arithmetic(calls);
    const client = open(url);
    const queued = await client.submit(def, { n: 4 });
    expect(queued).toMatchObject({ id: client.runIdFor(def, { n: 4 }), status: 'pending' });
    expect((await client.submit(def, { n: 4 })).id).toBe(queued.id); // a second submit is a no-op
    const store = await client.store();
    expect(await store.queue!.pending()).toBe(1);
    expect(calls.of('double:4')).toBe(0); // submit runs nothing

    const worker = open(url);
    worker.register(def);
    const claims = record(worker, 'run:claimed');
    const report = await worker.work({ exitWhenIdle: true, pollMs: 5 });
    expect(report).toMatchObject({ claimed: 1, completed: 1, failed: 0, lost: 0, errors: 0 });
    expect(claims).toEqual([expect.objectContaining({ runId: queued.id, reason: 'queued', epoch: 1 })]);
    expect(await client.get(queued.id)).toMatchObject({ status: 'completed', result: 9 });
    expect(await store.queue!.pending()).toBe(0);
    // submitting a completed run changes nothing and runs nothing
    expect((await client.submit(def, { n: 4 })).status).toBe('completed');
    expect(await worker.work({ exitWhenIdle: true, pollMs: 5 })).toMatchObject({ claimed: 0 });
    expect(calls.of('double:4')).toBe(1);
  });

  it('a run it cannot start (a summary from a newer cairn) is claimed once, not again and again, and the runs after it are run', async () => {
    const url = await kind.freshUrl();
    const calls = new Counter();
    const def = arithmetic(calls);
    const client = open(url);
    const store = await client.store();
    // queued first, so the oldest: a run of the same definition whose summary a newer cairn wrote
    await store.createRun({ id: 'from-the-future', name: def.name, status: 'pending', data: { fv: RUN_DATA_FORMAT + 1, owner: 'engine' } });
    await store.queue!.enqueue('from-the-future');
    const good = await client.submit(def, { n: 2 });

    const worker = open(url);
    worker.register(def);
    const claims = record(worker, 'run:claimed');
    const warnings = record(worker, 'warning');
    const report = await worker.work({ exitWhenIdle: true, pollMs: 5 });
    expect(claims.map((c) => c.runId)).toEqual(['from-the-future', good.id]);
    expect(report).toMatchObject({ claimed: 2, completed: 1, errors: 1 });
    expect(warnings).toEqual([expect.objectContaining({ runId: 'from-the-future', code: 'FORMAT_TOO_NEW' })]);
    expect(await client.get(good.id)).toMatchObject({ status: 'completed' });
    expect((await store.getRun('from-the-future'))?.status).toBe('pending'); // left as it was, for a newer worker
  });

  it('shares 30 runs between three workers of two definitions, each run once', async () => {
    const url = await kind.freshUrl();
    const calls = new Counter();
    const def = arithmetic(calls);
    const other = pipeline('other').stage('only', () => 'other');
    const client = open(url);
    for (let n = 0; n < 30; n++) await client.submit(def, { n });
    await client.submit(other, {});
    const workers = [0, 1, 2].map((i) => open(url, { owner: `w${i}` }).register(def));
    const reports = await Promise.all(workers.map((w) => w.work({ concurrency: 3, exitWhenIdle: true, pollMs: 5 })));
    expect(reports.reduce((sum, r) => sum + r.completed, 0)).toBe(30);
    for (let n = 0; n < 30; n++) {
      expect(calls.of(`double:${n}`)).toBe(1);
      expect(calls.of(`add:${n}`)).toBe(1);
      expect(await client.get(client.runIdFor(def, { n }))).toMatchObject({ status: 'completed', result: 2 * n + 1 });
    }
    // a run of a definition no worker knows stays queued for a worker that does
    const store = await client.store();
    expect(await store.queue!.pending()).toBe(1);
    expect(await store.queue!.pending(['other'])).toBe(1);
    expect((await client.get(client.runIdFor(other, {})))?.status).toBe('pending');
  });

  it('re-queues a failed run on submit, and lets a waiting run continue once given its input', async () => {
    const url = await kind.freshUrl();
    let fail = true;
    const flaky = pipeline('flaky').stage('once', () => {
      if (fail) throw new Error('boom');
      return 'ok';
    });
    const approval = pipeline('approve')
      .stage('ask', async (ctx) => ctx.waitFor<boolean>('approval'))
      .stage('act', (ctx) => (ctx.output('ask') ? 'published' : 'archived'));
    const client = open(url);
    const worker = open(url).register(flaky, approval);
    await client.submit(flaky, {});
    await client.submit(approval, {});
    expect(await worker.work({ exitWhenIdle: true, pollMs: 5 })).toMatchObject({ claimed: 2, failed: 1, waiting: 1 });
    // nothing claimable: failed and waiting runs are not retried by themselves
    expect(await worker.work({ exitWhenIdle: true, pollMs: 5 })).toMatchObject({ claimed: 0 });
    fail = false;
    expect((await client.submit(flaky, {})).status).toBe('pending');
    expect((await client.submit(approval, {})).status).toBe('waiting'); // no input: stays waiting
    expect((await client.submit(approval, {}, { inputs: { approval: true } })).status).toBe('pending');
    expect(await worker.work({ exitWhenIdle: true, pollMs: 5 })).toMatchObject({ claimed: 2, completed: 2 });
    expect((await client.get(client.runIdFor(approval, {})))?.result).toBe('published');
    expect((await client.get(client.runIdFor(flaky, {})))?.result).toBe('ok');
  });

  it('takes over a stranded run with a newer epoch; the old holder is refused and stops', async () => {
    const url = await kind.freshUrl();
    const calls = new Counter();
    const entered = deferred();
    const release = deferred();
    const def = pipeline('strand')
      .stage('first', () => {
        calls.hit('first');
        return 1;
      })
      .stage('slow', async () => {
        calls.hit('slow');
        if (calls.of('slow') === 1) {
          entered.resolve();
          await release.promise; // the first worker stalls here, as if paused or partitioned
        }
        return 2;
      })
      .stage('last', (ctx) => {
        calls.hit('last');
        return ctx.output('slow') + 1;
      });
    const client = open(url);
    const { id } = await client.submit(def, {});
    const stalled = open(url, { owner: 'stalled', lockTtlMs: 60_000 }).register(def);
    const warnings = record(stalled, 'warning');
    const first = stalled.work({ exitWhenIdle: true, pollMs: 5 });
    await entered.promise;

    // its lease runs out while it stalls (a stopped process renews nothing)
    const store = await client.store();
    await kind.expireLease(url, store, id);
    const rescuer = open(url, { owner: 'rescuer' }).register(def);
    const claims = record(rescuer, 'run:claimed');
    const second = rescuer.work({ exitWhenIdle: true, pollMs: 5 });
    expect(await second).toMatchObject({ claimed: 1, completed: 1 });
    expect(claims).toEqual([expect.objectContaining({ reason: 'stranded', epoch: 2 })]);

    const before = await store.getRun(id);
    release.resolve(); // the stalled worker wakes up and tries to save its stage
    expect(await first).toMatchObject({ claimed: 1, lost: 1, completed: 0 });
    expect(warnings).toContainEqual(expect.objectContaining({ code: 'LEASE_LOST', operation: 'appendCheckpoint' }));
    const after = await store.getRun(id);
    expect(after).toEqual(before); // nothing it tried landed
    expect(after).toMatchObject({ status: 'completed' });
    expect(readRunData(after!)!.attempts.map((a) => a.outcome)).toEqual(['crashed', 'completed']);
    expect(calls.of('first')).toBe(1);
    expect(calls.of('last')).toBe(1);
  });

  it('claims again a run it stalled on itself, and finishes it under the new lease', async () => {
    const url = await kind.freshUrl();
    const entered = deferred();
    const release = deferred();
    let tries = 0;
    const def = pipeline('self-strand').stage('slow', async () => {
      tries++;
      if (tries === 1) {
        entered.resolve();
        await release.promise; // stalls past its lease
      }
      return tries;
    });
    const client = open(url);
    const { id } = await client.submit(def, {});
    const worker = open(url, { owner: 'only', lockTtlMs: 60_000 }).register(def);
    const claims = record(worker, 'run:claimed');
    const working = worker.work({ concurrency: 2, exitWhenIdle: true, pollMs: 5 });
    await entered.promise;
    await kind.expireLease(url, await client.store(), id);
    while (claims.length < 2) await new Promise((r) => setTimeout(r, 5)); // it claims its own stranded run
    release.resolve();
    expect(await working).toMatchObject({ claimed: 2, completed: 1, lost: 1, errors: 0 });
    expect(claims.map((c) => [c.reason, c.epoch])).toEqual([
      ['queued', 1],
      ['stranded', 2],
    ]);
    expect(await client.get(id)).toMatchObject({ status: 'completed', result: 2 });
  });

  it('hands its runs back when stopped, and another worker finishes them', async () => {
    const url = await kind.freshUrl();
    const entered = deferred();
    let holds = 0;
    const def = pipeline('handback').stage('wait', (ctx) => {
      holds++;
      if (holds > 1) return 'done';
      entered.resolve();
      return new Promise<string>((_, reject) => ctx.signal.addEventListener('abort', () => reject(ctx.signal.reason as Error)));
    });
    const client = open(url);
    const { id } = await client.submit(def, {});
    const stop = new AbortController();
    const leaving = open(url, { owner: 'leaving' }).register(def);
    const working = leaving.work({ signal: stop.signal, pollMs: 5 });
    await entered.promise;
    stop.abort();
    expect(await working).toMatchObject({ claimed: 1, interrupted: 1 });
    expect((await client.get(id))?.status).toBe('interrupted');
    const next = open(url, { owner: 'next' }).register(def);
    const claims = record(next, 'run:claimed');
    expect(await next.work({ exitWhenIdle: true, pollMs: 5 })).toMatchObject({ claimed: 1, completed: 1 });
    expect(claims[0]).toMatchObject({ reason: 'handed-back', epoch: 2 });
  });
});

describe.each(ENGINE_STORES.filter((s) => s.name === 'file'))('workers on $name, which has no queue', (kind) => {
  const open = useCairns();
  it('refuses submit and work with NOT_SUPPORTED', async () => {
    const url = await kind.freshUrl();
    const cairn = open(url);
    const def = pipeline('p').stage('a', () => 1);
    expect(await codeOf(cairn.submit(def, {}))).toBe('NOT_SUPPORTED');
    cairn.register(def);
    expect(await codeOf(cairn.work({ exitWhenIdle: true }))).toBe('NOT_SUPPORTED');
    const store = await openStore(url);
    expect(store.capabilities.queue).toBe(false);
    await store.close();
  });
});
