/**
 * Postgres connections that die: a killed backend must not fail a run, a worker must not exit,
 * and a write whose reply was lost must never be applied twice.
 *
 * - Real kills: `pg_terminate_backend` on every backend of the store (found by the
 *   `application_name` its URL sets), again and again while a run executes in this process, and
 *   while a `cairn worker` process works a queue. The runs complete with the right results, the
 *   worker exits 0 with no errors, and the database holds every item and checkpoint once.
 * - Lost replies, made on purpose: a driver whose chosen statement commits and then fails with
 *   57P01, as when a backend dies between its commit and its answer. Each kind of write is then
 *   found landed (not sent twice) or sent again, and the database holds it once.
 */
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import pg from 'pg';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { Cairn, type Definition } from '../../src/engine/cairn.js';
import { pipeline } from '../../src/engine/pipeline.js';
import type { PgDriver, PgPool, PgPoolClient, PgPoolConfig, PgQueryable, PgResult } from '../../src/stores/postgres/postgres-driver.js';
import { PostgresStore } from '../../src/stores/postgres/postgres-store.js';
import { Child, killAll } from '../e2e/child.js';
import { done } from '../helpers.js';
import { POSTGRES, dropSchema, freshSchema, postgresUrl, withClient } from '../postgres.js';

const ROOT = path.resolve(import.meta.dirname, '../..');
const CLI = path.join(ROOT, 'dist/src/cli/main.js');
const RACE_JOB = path.join(ROOT, 'test/e2e/fixtures/race-job.mjs');

const schemas: string[] = [];
afterEach(killAll);
afterAll(async () => {
  for (const schema of schemas) await dropSchema(schema);
});

function newSchema(): string {
  const schema = freshSchema('cairn_outage');
  schemas.push(schema);
  return schema;
}

/** Kills every backend whose application_name is `app`; returns how many. */
async function killBackends(admin: pg.Client, app: string): Promise<number> {
  const result = await admin.query<{ killed: boolean }>(
    'SELECT pg_terminate_backend(pid) AS killed FROM pg_stat_activity WHERE application_name = $1 AND pid <> pg_backend_pid()',
    [app],
  );
  return result.rows.filter((r) => r.killed).length;
}

/**
 * Kills the backends of `app` every 40–160 ms until `until` settles; resolves to the number of
 * backends killed. Its own connection is separate (and not named `app`).
 */
async function killWhile(app: string, until: Promise<unknown>): Promise<number> {
  const admin = new pg.Client({ connectionString: postgresUrl('public') });
  await admin.connect();
  let settled = false;
  void until.then(
    () => (settled = true),
    () => (settled = true),
  );
  let killed = 0;
  try {
    while (!settled) {
      await new Promise((resolve) => setTimeout(resolve, 40 + Math.random() * 120));
      if (!settled) killed += await killBackends(admin, app);
    }
  } finally {
    await admin.end();
  }
  return killed;
}

function within<T>(what: string, ms: number, promise: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`waited ${ms} ms for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

const ITEMS = 400;
const job = pipeline('outage', { version: '1' })
  .stage('prepare', (ctx) => ({ base: (ctx.input as { n: number }).n }))
  .stage('square', async (ctx) => {
    const { base } = ctx.output('prepare');
    return ctx.items(
      'parts',
      Array.from({ length: ITEMS }, (_, i) => i),
      async (i) => {
        await new Promise((resolve) => setTimeout(resolve, 2 + (i % 5)));
        return (base * 1000 + i) % 9973;
      },
      { key: (i) => String(i), concurrency: 4, checkpointEvery: 10 },
    );
  })
  .stage('sum', (ctx) => ctx.output('square').reduce((a, b) => a + b, 0));

function expectedSum(n: number): number {
  let total = 0;
  for (let i = 0; i < ITEMS; i++) total += (n * 1000 + i) % 9973;
  return total;
}

/** Rows the schema holds: item rows and stage checkpoints per run, and runs. */
async function counts(schema: string): Promise<{ items: Record<string, number>; stageCheckpoints: Record<string, number> }> {
  return withClient(async (c) => {
    const items = await c.query<{ run_id: string; n: number }>(
      `SELECT l.run_id, count(*)::int AS n FROM "${schema}".items i JOIN "${schema}".ledgers l ON l.id = i.ledger_id GROUP BY l.run_id`,
    );
    const cps = await c.query<{ run_id: string; n: number }>(
      `SELECT run_id, count(*)::int AS n FROM "${schema}".checkpoints WHERE kind = 'stage' GROUP BY run_id`,
    );
    return {
      items: Object.fromEntries(items.rows.map((r) => [r.run_id, r.n])),
      stageCheckpoints: Object.fromEntries(cps.rows.map((r) => [r.run_id, r.n])),
    };
  });
}

describe.skipIf(!POSTGRES.reachable)('Postgres store: backends killed while runs execute', () => {
  it(
    'completes every run, each item and checkpoint stored once, while its backends are killed again and again',
    { timeout: 180_000 },
    async () => {
      const schema = newSchema();
      const app = `cairn_kill_${randomBytes(4).toString('hex')}`;
      const url = postgresUrl(schema, { application_name: app });
      const cairn = new Cairn({ store: url, handleSignals: false });
      const warnings: string[] = [];
      cairn.on('warning', (w) => warnings.push(`${w.code}: ${w.message}`));
      let killed = 0;
      const RUNS = 4;
      try {
        await cairn.store(); // the schema exists before the kills start
        for (let n = 1; n <= RUNS; n++) {
          const running = cairn.run(job, { n });
          killed += await killWhile(app, running);
          const summary = await within(`run ${n} to end`, 120_000, running);
          expect(summary.status, JSON.stringify(summary.error)).toBe('completed');
          expect(summary.result).toBe(expectedSum(n));
        }
      } finally {
        await cairn.close();
      }
      const stored = await counts(schema);
      expect(Object.values(stored.items)).toEqual(Array<number>(RUNS).fill(ITEMS));
      expect(Object.values(stored.stageCheckpoints)).toEqual(Array<number>(RUNS).fill(3));
      expect(killed).toBeGreaterThan(RUNS); // the kills did land (several per run)
      expect(warnings.filter((w) => !w.startsWith('ATTEMPT'))).toEqual([]);
      console.log(`Postgres: ${RUNS} runs completed while ${killed} of their backends were killed`);
    },
  );

  it('keeps a worker working: it exits 0 with no errors and every queued run completed', { timeout: 240_000 }, async () => {
    const schema = newSchema();
    const app = `cairn_kill_${randomBytes(4).toString('hex')}`;
    const url = postgresUrl(schema, { application_name: app });
    const race = (await import(RACE_JOB)) as { default: Definition; expected(n: number): unknown };
    const client = new Cairn({ store: postgresUrl(schema), handleSignals: false });
    const RUNS = 30;
    try {
      for (let n = 0; n < RUNS; n++) await client.submit(race.default, { n });
      const worker = new Child(CLI, [
        'worker',
        RACE_JOB,
        '--store',
        url,
        '--json',
        '--concurrency',
        '2',
        '--poll-ms',
        '50',
        '--exit-when-idle',
      ]);
      const killed = await killWhile(app, worker.exit);
      const exit = await within('the worker to exit', 120_000, worker.exit);
      const events = worker.lines.filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>);
      const report = events.find((e) => e.event === 'report');
      expect(exit, worker.stderr).toEqual({ code: 0, signal: null });
      expect(report, worker.lines.join('\n')).toMatchObject({ errors: 0, completed: RUNS, failed: 0, lost: 0 });
      expect(events.filter((e) => e.event === 'warning')).toEqual([]);
      const store = await client.store();
      for (let n = 0; n < RUNS; n++) {
        const run = await client.get(client.runIdFor(race.default, { n }));
        expect(run?.status).toBe('completed');
        expect(run?.result).toEqual(race.expected(n));
      }
      expect(await store.queue!.pending()).toBe(0);
      expect(killed).toBeGreaterThan(0);
      console.log(`Postgres worker: ${RUNS} runs completed, exit 0, while ${killed} of its backends were killed`);
    } finally {
      await client.close();
    }
  });
});

/**
 * A `pg` pool whose statements matching `lose` commit and then fail as if the backend died before
 * it answered (57P01), the first `times` times each.
 */
function losingDriver(lose: (text: string) => boolean, times = 1): PgDriver & { lost: string[] } {
  const lost: string[] = [];
  let left = times;
  const wrap = async (target: PgQueryable, text: string, values?: readonly unknown[]): Promise<PgResult> => {
    const result = await target.query(text, values);
    if (left > 0 && lose(text)) {
      left -= 1;
      lost.push(text.slice(0, 60));
      throw Object.assign(new Error('terminating connection due to administrator command'), { code: '57P01' });
    }
    return result;
  };
  class LosingPool implements PgPool {
    private readonly pool: pg.Pool;
    constructor(config: PgPoolConfig) {
      this.pool = new pg.Pool(config);
    }
    query(text: string, values?: readonly unknown[]): Promise<PgResult> {
      return wrap(this.pool, text, values);
    }
    async connect(): Promise<PgPoolClient> {
      const client = await this.pool.connect();
      return {
        query: (text, values) => wrap(client, text, values),
        release: (error) => client.release(error),
        on: (event, listener) => client.on(event, listener),
        removeListener: (event, listener) => client.removeListener(event, listener),
      };
    }
    end(): Promise<void> {
      return this.pool.end();
    }
    on(event: 'error', listener: (error: Error) => void): unknown;
    on(event: 'connect', listener: (client: PgPoolClient) => void): unknown;
    on(event: 'error' | 'connect', listener: ((error: Error) => void) | ((client: PgPoolClient) => void)): unknown {
      return this.pool.on(event as 'error', listener as (error: Error) => void); // 'connect' passes pg's own client
    }
  }
  return { Pool: LosingPool, lost };
}

describe.skipIf(!POSTGRES.reachable)('Postgres store: a write whose reply was lost is applied once', () => {
  const open = async (lose: (text: string) => boolean): Promise<{ store: PostgresStore; lost: string[]; schema: string }> => {
    const schema = newSchema();
    const driver = losingDriver(() => false, 0);
    await (await PostgresStore.open(postgresUrl(schema), {}, driver)).close(); // migrated without losses
    const losing = losingDriver(lose);
    return { store: await PostgresStore.open(postgresUrl(schema), {}, losing), lost: losing.lost, schema };
  };
  const count = (schema: string, table: string): Promise<number> =>
    withClient(async (c) => Number((await c.query<{ n: string }>(`SELECT count(*) AS n FROM "${schema}".${table}`)).rows[0]!.n));

  it('createRun and updateRun: found landed by their line, not refused as ALREADY_EXISTS or CONFLICT', async () => {
    const { store, lost } = await open((text) => /^INSERT INTO "[^"]+"\.runs|^UPDATE "[^"]+"\.runs SET status/.test(text));
    try {
      const created = await store.createRun({ id: 'r', name: 'n', data: { a: 1 } });
      const updated = await store.updateRun('r', created.version, { data: { a: 2 } });
      expect(lost).toHaveLength(1); // one loss in all (the first matching statement)
      expect(updated.version).toBe(created.version + 1);
      expect((await store.getRun('r'))?.data).toEqual({ a: 2 });
    } finally {
      await store.close();
    }
  });

  it.each([
    ['a checkpoint', /^WITH taken AS \(UPDATE/],
    [
      'a batch of items',
      /^WITH allowed AS MATERIALIZED \(SELECT r\.id FROM "[^"]+"\.runs r WHERE r\.id = \$1 AND .*INSERT INTO "[^"]+"\.ledgers/,
    ],
  ])('%s: stored once', async (_what, pattern) => {
    const { store, lost, schema } = await open((text) => pattern.test(text));
    try {
      await store.createRun({ id: 'r', name: 'n' });
      const lease = await store.acquireLock('r', { owner: 'me' });
      const ref = await store.appendCheckpoint('r', { kind: 'stage', state: { x: 1 } }, { lease });
      await store.appendItems('r', 's', [done('a', 0, 1), done('b', 1, 2)], { lease });
      const next = await store.appendCheckpoint('r', { kind: 'stage', state: { x: 2 } }, { lease });
      await store.appendItems('r', 's', [done('c', 2, 3)], { lease });
      expect(lost).toHaveLength(1);
      expect([ref.seq, next.seq]).toEqual([1, 2]);
      expect(await count(schema, 'checkpoints')).toBe(2);
      expect(await count(schema, 'items')).toBe(3);
    } finally {
      await store.close();
    }
  });

  it('acquireLock: the lease taken is returned, not refused as RUN_LOCKED by itself', async () => {
    const { store, lost } = await open((text) =>
      /^INSERT INTO "[^"]+"\.leases AS l \(run_id, owner, epoch, host, pid, acquired_at, expires_at, released, token\) SELECT/.test(text),
    );
    try {
      await store.createRun({ id: 'r', name: 'n' });
      const lease = await store.acquireLock('r', { owner: 'me' });
      expect(lost).toHaveLength(1);
      expect(lease.epoch).toBe(1);
      expect(await store.getLock('r')).toMatchObject({ epoch: 1, owner: 'me' });
      await store.appendCheckpoint('r', { state: 1 }, { lease }); // the lease works
    } finally {
      await store.close();
    }
  });

  it('claim: the run claimed is returned, not left leased to nobody', async () => {
    const { store, lost } = await open((text) => text === 'COMMIT');
    try {
      await store.createRun({ id: 'q', name: 'job', status: 'pending' });
      await store.queue.enqueue('q');
      const claim = await store.queue.claim({ names: ['job'], owner: 'worker' });
      expect(lost).toEqual(['COMMIT']);
      expect(claim?.run.id).toBe('q');
      expect(claim?.lease.epoch).toBe(1);
      expect(await store.queue.pending(['job'])).toBe(0);
      await store.appendCheckpoint('q', { state: 1 }, { lease: claim!.lease });
    } finally {
      await store.close();
    }
  });

  it('gives up with STORE_UNAVAILABLE naming the store (never a raw 57P01) when every try loses its connection', async () => {
    const schema = newSchema();
    await (await PostgresStore.open(postgresUrl(schema))).close();
    const always = losingDriver((text) => text.includes('.runs'), Number.POSITIVE_INFINITY);
    const store = await PostgresStore.open(postgresUrl(schema), { transientRetryMs: 600 }, always);
    try {
      const error = (await store.getRun('r').then(
        () => undefined,
        (e: unknown) => e,
      )) as { code?: string; message?: string };
      expect(error.code).toBe('STORE_UNAVAILABLE');
      expect(error.message).toContain(schema);
      expect(error.message).toMatch(/could not be reached .* resume the run/);
    } finally {
      await store.close();
    }
  });
});
