/**
 * The Postgres store beyond the conformance suite: its URL, its migrations' refusal of a newer
 * schema, hostile values that must reach the server only as parameters (every SQL text sent is
 * recorded), item batches in one round trip, ledgers read back in pages, fencing that holds
 * against a concurrent takeover, and leases judged by the database clock, never this machine's.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { CheckpointManager } from '../../src/engine/checkpoint-manager.js';
import { openStore } from '../../src/stores/open-store.js';
import { LATEST_SCHEMA_VERSION } from '../../src/stores/postgres/migrations.js';
import { loadPgDriver, parsePostgresUrl, redactPostgresUrl, type PgDriver } from '../../src/stores/postgres/postgres-driver.js';
import { buildSql } from '../../src/stores/postgres/postgres-sql.js';
import { PostgresStore } from '../../src/stores/postgres/postgres-store.js';
import { ITEM_PAGE_ROWS } from '../../src/stores/postgres/postgres-transfer.js';
import type { ItemEntry, Store } from '../../src/stores/store.js';
import { codeOf, collect, done } from '../helpers.js';
import { POSTGRES, dropSchema, freshSchema, postgresUrl, withClient } from '../postgres.js';

interface SentQuery {
  readonly text: string;
  readonly values: readonly unknown[];
}

/** A driver whose every client records each statement it sends (one entry = one round trip). */
function recordingDriver(sent: SentQuery[]): PgDriver {
  class RecordingClient extends pg.Client {
    constructor(config?: pg.ClientConfig) {
      super(config);
      const query = this.query.bind(this) as (...args: unknown[]) => unknown;
      (this as { query: unknown }).query = (...args: unknown[]): unknown => {
        const [first, second] = args;
        const text = typeof first === 'string' ? first : (first as { text: string }).text;
        sent.push({ text, values: Array.isArray(second) ? (second as unknown[]) : [] });
        return query(...args);
      };
    }
  }
  class RecordingPool extends pg.Pool {
    constructor(config: pg.PoolConfig) {
      super({ ...config, Client: RecordingClient });
    }
  }
  return { Pool: RecordingPool };
}

const sha256 = (text: string): string => createHash('sha256').update(text).digest('hex');

describe('Postgres URL', () => {
  it('reads schema, pool and artifacts, removes them (and nothing else) before the driver, and never shows a password', () => {
    const parsed = parsePostgresUrl(
      'postgresql://app:s3cr%40t@db.example:6543/jobs?sslmode=require&schema=team_a&pool=3&artifacts=/mnt/shared',
    );
    expect(parsed).toEqual({
      connectionString: 'postgresql://app:s3cr%40t@db.example:6543/jobs?sslmode=require',
      displayUrl: 'postgresql://app@db.example:6543/jobs?sslmode=require&schema=team_a&pool=3&artifacts=/mnt/shared',
      schema: 'team_a',
      poolSize: 3,
      artifactRoot: '/mnt/shared',
    });
    expect(parsePostgresUrl('postgres://localhost/db').schema).toBe('cairn');
    expect(redactPostgresUrl('postgres://u@h/db?password=hunter2&schema=x')).toBe('postgres://u@h/db?schema=x');
    expect(redactPostgresUrl('file:./data')).toBe('file:./data');
  });

  it('refuses schemas that are not plain lower-case names, and bad pool sizes, without repeating the password', () => {
    for (const schema of ['Cairn', 'a-b', '1abc', 'x'.repeat(64), '', 'a"b', 'a;drop', 'ü']) {
      const url = `postgres://u:topsecret@h/db?schema=${encodeURIComponent(schema)}`;
      let error: unknown;
      try {
        parsePostgresUrl(url);
      } catch (e) {
        error = e;
      }
      expect(error, schema).toMatchObject({ code: 'INVALID_STORE_URL' });
      expect((error as Error).message).not.toContain('topsecret');
    }
    for (const pool of ['0', '-1', '1.5', 'ten', '100000']) {
      expect(() => parsePostgresUrl(`postgres://h/db?pool=${pool}`), pool).toThrow(expect.objectContaining({ code: 'INVALID_STORE_URL' }));
    }
  });

  it('says which package to install when pg is missing', async () => {
    expect(await codeOf(loadPgDriver('pg-that-is-not-installed'))).toBe('DRIVER_MISSING');
    await expect(loadPgDriver('pg-that-is-not-installed')).rejects.toThrow('npm install pg');
  });
});

describe.skipIf(!POSTGRES.reachable)('Postgres store', () => {
  const schemas: string[] = [];
  const stores: Store[] = [];
  let tmp = '';
  let failed = false;

  beforeAll(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-pg-store-'));
  });
  afterEach(async (context) => {
    if (context.task.result?.state === 'fail') failed = true;
    for (const store of stores.splice(0)) await store.close().catch(() => undefined);
  });
  afterAll(async () => {
    if (failed) {
      console.error(`kept schemas ${schemas.join(', ')} and ${tmp} for inspection`);
      return;
    }
    for (const schema of schemas) await dropSchema(schema);
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  /** A fresh schema's URL and a store on it (`driver` records queries when given). */
  async function fresh(driver?: PgDriver): Promise<{ schema: string; url: string; store: PostgresStore }> {
    const schema = freshSchema();
    schemas.push(schema);
    const url = postgresUrl(schema, { artifacts: path.join(tmp, schema) });
    const store = await PostgresStore.open(url, {}, driver);
    stores.push(store);
    return { schema, url, store };
  }

  it('opens through openStore with capabilities, a password-free url and the queue', async () => {
    const schema = freshSchema();
    schemas.push(schema);
    const withPassword = new URL(postgresUrl(schema));
    withPassword.password = 'not-needed-under-trust';
    const store = await openStore(withPassword.toString());
    stores.push(store);
    expect(store.kind).toBe('postgres');
    expect(store.url).not.toContain('not-needed-under-trust');
    expect(store.url).toContain(`schema=${schema}`);
    expect(store.capabilities).toEqual({
      durable: true,
      multiProcess: true,
      multiMachine: true,
      fencedWrites: true,
      localArtifacts: true,
      queue: true,
    });
    expect(store.queue).toBeDefined();
    expect(store.artifactDir('r1')).toBe(path.resolve('data', 'artifacts', schema, 'r1'));
    await store.close();
    expect(await codeOf(store.createRun({ id: 'x', name: 'n' }))).toBe('STORE_CLOSED');
    expect(await codeOf(store.queue!.pending())).toBe('STORE_CLOSED');
  });

  it('says it cannot connect, naming the URL without its password: a server down is STORE_UNAVAILABLE, a wrong database INVALID_STORE_URL', async () => {
    const error = (await openStore('postgres://postgres:hunter2@127.0.0.1:1/test?schema=nowhere').catch((e: unknown) => e)) as Error;
    expect(error).toMatchObject({ code: 'STORE_UNAVAILABLE' });
    expect(error.message).toContain('postgres://postgres@127.0.0.1:1/test');
    expect(error.message).not.toContain('hunter2');
    const wrong = (await openStore(`postgres://postgres@127.0.0.1:5432/no_such_database_${process.pid}?schema=nowhere`).catch(
      (e: unknown) => e,
    )) as Error;
    expect(wrong).toMatchObject({ code: 'INVALID_STORE_URL' });
  });

  it('refuses a schema written by a newer cairnjs and changes nothing', async () => {
    const { schema, url, store } = await fresh();
    await store.createRun({ id: 'kept', name: 'n' });
    const snapshot = (): Promise<unknown> =>
      withClient(async (c) => ({
        tables: (await c.query(`SELECT table_name FROM information_schema.tables WHERE table_schema = $1 ORDER BY 1`, [schema])).rows,
        migrations: (await c.query(`SELECT version, name FROM "${schema}".schema_migrations ORDER BY version`)).rows,
        runs: (await c.query(`SELECT id, version, line FROM "${schema}".runs`)).rows,
      }));
    expect(LATEST_SCHEMA_VERSION).toBeGreaterThanOrEqual(1);
    await withClient((c) =>
      c.query(`INSERT INTO "${schema}".schema_migrations (version, name) VALUES ($1, 'from the future')`, [LATEST_SCHEMA_VERSION + 7]),
    );
    const before = await snapshot();
    const error = (await openStore(url).catch((e: unknown) => e)) as Error & { code: string };
    expect(error.code).toBe('SCHEMA_TOO_NEW');
    expect(error.message).toContain(`version ${LATEST_SCHEMA_VERSION + 7}`);
    expect(await snapshot()).toEqual(before);
  });

  it('sends hostile values only as parameters, through a fixed set of statements, and keeps them intact', async () => {
    const sent: SentQuery[] = [];
    const { schema, store } = await fresh(recordingDriver(sent));
    const HOSTILE = [
      `'; DROP TABLE runs; --`,
      `"; DROP SCHEMA ${schema} CASCADE; --`,
      '$1',
      '$2::text',
      '\\',
      `\\'; SELECT pg_sleep(10); --`,
      'O\'Reilly "quoted"',
      'ünïcødé 漢字 😀 \u202e',
      'a%b_c',
    ];
    sent.length = 0; // the opening queries (migrations) are not under test here
    const runId = 'hostile-1';
    const name = HOSTILE.join(' | ');
    await store.createRun({ id: runId, name, data: { values: HOSTILE, nul: 'a\0b' } });
    const lease = await store.acquireLock(runId, { owner: HOSTILE[0]! });
    for (const [i, value] of HOSTILE.entries()) {
      await store.appendCheckpoint(
        runId,
        { kind: value.slice(0, 64), stage: value, meta: { value, nul: 'x\0y' }, state: { value } },
        { lease },
      );
      expect(await store.latestCheckpoint(runId, { kind: value.slice(0, 64) })).toMatchObject({
        stage: value,
        meta: { value },
        state: { value },
      });
      expect((await store.listRuns({ name: value })).length).toBe(0);
      expect(await store.queue.claim({ names: [value, name], owner: value })).toBeUndefined(); // not queued
      await store.appendItems(runId, 'stage-1', [done(value, i, { value, nul: '\0' })], { lease });
    }
    const paths = [`it's; DROP TABLE artifacts;--.txt`, '$1/ünï "x".bin', `a%_b/'c'.txt`];
    const at = new Date().toISOString();
    await store.recordArtifacts(
      runId,
      paths.map((p, i) => ({ path: p, size: i, sha256: sha256(p), stage: HOSTILE[i]!, createdAt: at })),
      { lease },
    );
    await store.updateRun(runId, 1, { status: 'running', data: { values: HOSTILE } }, { lease });
    expect((await store.listRuns({ name, status: ['running'] })).map((r) => r.id)).toEqual([runId]);
    await store.queue.enqueue(runId);
    expect(await store.queue.pending([name, HOSTILE[1]!])).toBe(0); // held by a live lease
    // invalid ids never reach the server at all
    const count = sent.length;
    for (const id of HOSTILE) expect(await codeOf(store.getRun(id)), id).toBe('INVALID_RUN_ID');
    expect(sent.length).toBe(count);

    // every statement is one of the store's fixed texts (or transaction control); no text holds a value
    // ('$1' and '$2::text' are in the texts as placeholders, so only the fixed-set check speaks for them)
    const fixed = new Set<string>([...Object.values(buildSql(schema)), 'BEGIN', 'COMMIT', 'ROLLBACK']);
    const distinctive = [...HOSTILE, ...paths, runId].filter((value) => !/^\$\d/.test(value));
    for (const { text } of sent) {
      expect(fixed.has(text), text).toBe(true);
      for (const value of distinctive) expect(text.includes(value), `${value} in ${text}`).toBe(false);
    }
    expect(sent.some((q) => q.values.includes(HOSTILE[0]))).toBe(true);

    // nothing was dropped, and every value reads back as written
    const tables = await withClient(async (c) =>
      (await c.query(`SELECT table_name FROM information_schema.tables WHERE table_schema = $1 ORDER BY 1`, [schema])).rows.map(
        (r: { table_name: string }) => r.table_name,
      ),
    );
    expect(tables).toEqual([
      'artifacts',
      'checkpoints',
      'items',
      'leases',
      'ledgers',
      'limit_grants',
      'limits',
      'runs',
      'schema_migrations',
    ]);
    const run = await store.getRun(runId);
    expect(run).toMatchObject({ name, status: 'running', data: { values: HOSTILE } });
    const checkpoints = await store.listCheckpoints(runId);
    expect(checkpoints.map((e) => (e.valid ? e.ref.stage : null))).toEqual(HOSTILE);
    expect(checkpoints.map((e) => (e.valid ? e.ref.meta : null))).toEqual(HOSTILE.map((value) => ({ value, nul: 'x\0y' })));
    const items = await collect(store.readItems(runId, 'stage-1'));
    expect(items.map((e) => e.key)).toEqual(HOSTILE);
    expect(items.map((e) => (e.status === 'done' ? e.result : null))).toEqual(HOSTILE.map((value) => ({ value, nul: '\0' })));
    expect((await store.listArtifacts(runId)).map((a) => [a.path, a.stage])).toEqual(paths.map((p, i) => [p, HOSTILE[i]]));
    expect((await store.getLock(runId))?.owner).toBe(HOSTILE[0]);
    expect(await store.validateRun(runId)).toHaveLength(3); // the artifact files were never written: nothing else is wrong
  });

  it('refuses NUL where Postgres text cannot hold it, writing nothing', async () => {
    const { store } = await fresh();
    expect(await codeOf(store.createRun({ id: 'nul', name: 'a\0b' }))).toBe('INVALID_INPUT');
    expect(await store.getRun('nul')).toBeUndefined();
    await store.createRun({ id: 'ok', name: 'n' });
    expect(await codeOf(store.appendCheckpoint('ok', { stage: 'a\0b', state: 1 }))).toBe('INVALID_INPUT');
    expect(await codeOf(store.acquireLock('ok', { owner: 'me\0' }))).toBe('INVALID_INPUT');
    expect(await store.listCheckpoints('ok')).toEqual([]);
    expect(await store.listRuns({ name: 'a\0b' })).toEqual([]);
  });

  it('appends a batch of 1,000 item results in one round trip, fenced or not, new ledger or not', async () => {
    const sent: SentQuery[] = [];
    const { store } = await fresh(recordingDriver(sent));
    await store.createRun({ id: 'batch', name: 'n' });
    const batch = (from: number): ItemEntry[] => Array.from({ length: 1000 }, (_, i) => done(`k${from + i}`, from + i, { n: from + i }));
    const trips: number[] = [];
    for (const [b, options] of [{}, {}, { lease: await store.acquireLock('batch', { owner: 'w' }) }].entries()) {
      const before = sent.length;
      await store.appendItems('batch', 'segments', batch(b * 1000), options);
      trips.push(sent.length - before);
    }
    expect(trips).toEqual([1, 1, 1]);
    const epochs = await withClient(
      async (c) =>
        (
          await c.query<{ epoch: string | null; n: number }>(
            `SELECT i.epoch, count(*)::int AS n FROM "${store.schema}".items i GROUP BY i.epoch ORDER BY i.epoch NULLS FIRST`,
          )
        ).rows,
    );
    expect(epochs).toEqual([
      { epoch: null, n: 2000 },
      { epoch: '1', n: 1000 },
    ]);
    const keys = (await collect(store.readItems('batch', 'segments'))).map((e) => e.index);
    expect(keys).toEqual(Array.from({ length: 3000 }, (_, i) => i));
  });

  it('costs one round trip per write on the hot path; CheckpointManager opens it by URL', async () => {
    const sent: SentQuery[] = [];
    const { url, store } = await fresh(recordingDriver(sent));
    const trips = async (fn: () => Promise<unknown>): Promise<number> => {
      const before = sent.length;
      await fn();
      return sent.length - before;
    };
    await store.createRun({ id: 'steps', name: 'n' });
    const lease = await store.acquireLock('steps', { owner: 'w' });
    const counts = {
      appendCheckpoint: await trips(() => store.appendCheckpoint('steps', { state: 1 }, { lease })),
      appendCheckpointAgain: await trips(() => store.appendCheckpoint('steps', { state: 2 }, { lease })),
      appendItems: await trips(() => store.appendItems('steps', 's', [done('a', 0, 1)], { lease })),
      updateRun: await trips(() => store.updateRun('steps', 1, { status: 'running' }, { lease })),
      renewLock: await trips(() => store.renewLock(lease)),
      getRun: await trips(() => store.getRun('steps')),
      acquireLock: await trips(() => store.acquireLock('steps', { owner: 'x' }).catch(() => undefined)),
    };
    // a refused acquireLock asks once more who holds the run, to name it
    expect(counts).toEqual({
      appendCheckpoint: 1,
      appendCheckpointAgain: 1,
      appendItems: 1,
      updateRun: 2,
      renewLock: 1,
      getRun: 1,
      acquireLock: 2,
    });

    const cm = new CheckpointManager({ store: url });
    try {
      const ref = await cm.create('wf-1', { merged: [1, 2] }, { stage: 'merge' });
      expect(ref).toMatchObject({ workflowId: 'wf-1', seq: 1 });
      expect((await cm.load(ref.id)).state).toEqual({ merged: [1, 2] });
      expect((await cm.getMostRecent('wf-1'))?.seq).toBe(1);
    } finally {
      await cm.close();
    }
  });

  it('reads a 200,000-item ledger back in pages, never in one query', async () => {
    const sent: SentQuery[] = [];
    const { store } = await fresh(recordingDriver(sent));
    await store.createRun({ id: 'big', name: 'n' });
    const total = 200_000;
    const perBatch = 20_000;
    for (let from = 0; from < total; from += perBatch) {
      await store.appendItems(
        'big',
        'segments',
        Array.from({ length: perBatch }, (_, i) => done(`s${from + i}`, from + i, from + i)),
      );
    }
    const sql = buildSql(store.schema);
    const before = sent.length;
    const started = Date.now();
    let count = 0;
    let ordered = true;
    for await (const entry of store.readItems('big', 'segments')) {
      if (entry.index !== count) ordered = false;
      count++;
    }
    expect(count).toBe(total);
    expect(ordered).toBe(true);
    const pages = sent.slice(before).filter((q) => q.text === sql.itemsBetween);
    expect(pages.length).toBeGreaterThanOrEqual(total / ITEM_PAGE_ROWS);
    expect(Math.max(...pages.map((q) => Number(q.values[3])))).toBeLessThanOrEqual(ITEM_PAGE_ROWS);
    console.log(
      `readItems of ${total} entries: ${pages.length} page queries of at most ${ITEM_PAGE_ROWS} rows, ${Date.now() - started} ms`,
    );
  });

  it('fences a write against a takeover happening at the same moment: it waits for it, then writes nothing', async () => {
    const { schema, store } = await fresh();
    await store.createRun({ id: 'fenced', name: 'n' });
    const lease = await store.acquireLock('fenced', { owner: 'old', ttlMs: 60_000 });
    await store.appendItems('fenced', 's', [done('before', 0, 1)], { lease });
    await withClient(async (takeover) => {
      await takeover.query('BEGIN');
      // a takeover in flight: it holds the lease row until it commits
      await takeover.query(`UPDATE "${schema}".leases SET epoch = epoch + 1, owner = 'new' WHERE run_id = 'fenced'`);
      const settled: string[] = [];
      const writes = [
        store.appendItems('fenced', 's', [done('late', 1, 2)], { lease }),
        store.appendCheckpoint('fenced', { state: 'late' }, { lease }),
        store.updateRun('fenced', 1, { status: 'failed' }, { lease }),
        store.recordArtifacts('fenced', [{ path: 'late.txt', size: 0, sha256: sha256(''), createdAt: new Date().toISOString() }], {
          lease,
        }),
      ].map((p) => p.finally(() => settled.push('settled')));
      await new Promise((resolve) => setTimeout(resolve, 300));
      expect(settled).toEqual([]); // blocked on the lease row
      await takeover.query('COMMIT');
      expect(await Promise.all(writes.map((w) => codeOf(w)))).toEqual(['LEASE_LOST', 'LEASE_LOST', 'LEASE_LOST', 'LEASE_LOST']);
    });
    expect((await collect(store.readItems('fenced', 's'))).map((e) => e.key)).toEqual(['before']);
    expect(await store.listCheckpoints('fenced')).toEqual([]);
    expect(await store.listArtifacts('fenced')).toEqual([]);
    expect((await store.getRun('fenced'))?.status).toBe('pending');
    expect(await codeOf(store.renewLock(lease))).toBe('LEASE_LOST');
  });

  it('records the lease epoch on every row written under a lease, and none without one', async () => {
    const { schema, store } = await fresh();
    await store.createRun({ id: 'e', name: 'n' });
    await store.appendCheckpoint('e', { state: 0 });
    const first = await store.acquireLock('e', { owner: 'a' });
    await store.releaseLock(first);
    const second = await store.acquireLock('e', { owner: 'b' });
    expect(second.epoch).toBe(2);
    await store.appendCheckpoint('e', { state: 1 }, { lease: second });
    await store.appendItems('e', 's', [done('k', 0, 1)], { lease: second });
    await store.recordArtifacts('e', [{ path: 'a', size: 0, sha256: sha256(''), createdAt: new Date().toISOString() }], { lease: second });
    const rows = await withClient(async (c) => ({
      checkpoints: (await c.query(`SELECT seq::int, epoch::int FROM "${schema}".checkpoints ORDER BY seq`)).rows,
      items: (await c.query(`SELECT epoch::int FROM "${schema}".items`)).rows,
      artifacts: (await c.query(`SELECT epoch::int FROM "${schema}".artifacts`)).rows,
    }));
    expect(rows).toEqual({
      checkpoints: [
        { seq: 1, epoch: null },
        { seq: 2, epoch: 2 },
      ],
      items: [{ epoch: 2 }],
      artifacts: [{ epoch: 2 }],
    });
  });

  describe('time is the database clock', () => {
    afterEach(() => {
      vi.useRealTimers();
    });

    it('a live lease stays live, and an expired one expired, whatever this machine says the time is', async () => {
      const { url, store } = await fresh();
      const other = await PostgresStore.open(url);
      stores.push(other);
      await store.createRun({ id: 'live', name: 'job' });
      await store.createRun({ id: 'short', name: 'job' });
      const live = await store.acquireLock('live', { owner: 'a', ttlMs: 60_000 });
      const short = await store.acquireLock('short', { owner: 'a', ttlMs: 150 });
      await new Promise((resolve) => setTimeout(resolve, 300));
      vi.useFakeTimers({ toFake: ['Date'] });
      vi.setSystemTime(Date.now() + 3_600_000); // this machine runs an hour fast
      expect(await other.getLock('live')).toMatchObject({ owner: 'a', epoch: live.epoch });
      expect(await codeOf(other.acquireLock('live', { owner: 'b' }))).toBe('RUN_LOCKED');
      expect((await store.renewLock(live)).epoch).toBe(live.epoch);
      expect(await other.listRuns({ olderThanMs: 30 * 60_000 })).toEqual([]);
      vi.setSystemTime(Date.now() - 7_200_000); // now an hour slow
      expect(await other.getLock('short')).toBeUndefined();
      expect((await other.acquireLock('short', { owner: 'b' })).epoch).toBe(short.epoch + 1);
      await other.queue.enqueue('live');
      expect(await other.queue.pending(['job'])).toBe(0);
    });
  });
});
