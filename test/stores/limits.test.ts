/**
 * The rate-limit state of each store (`Store.limits`): memory, files, SQLite and Postgres (when a
 * server is reachable) pass the same cases, with two store instances opened on the same URL
 * standing for two processes: grants within the limit, waits, tokens charged after the call, a
 * slow-down seen by both, and a log that keeps only its window. Then what each store does of its
 * own: SQLite's connection pragma, Postgres's server clock, the file store's lock files.
 * Waits are checked from below only (by the store's own clock), so the cases hold on a busy machine.
 */
import fs from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { Limiter, resolveLimits } from '../../src/engine/limits.js';
import { HOST } from '../../src/stores/common.js';
import type { FileStore } from '../../src/stores/file/file-store.js';
import { LIMITS_DIR, STALE_LOCK_MS } from '../../src/stores/file/file-limits.js';
import type { MemoryStore } from '../../src/stores/memory/memory-store.js';
import { openStore } from '../../src/stores/open-store.js';
import type { LimitRule, Store } from '../../src/stores/store.js';
import { ALL_STORES, type EngineStoreKind } from '../engine/store-matrix.js';
import { schemaOf, withClient } from '../postgres.js';
import { codeOf } from '../helpers.js';

const HOUR = 3_600_000;
const opened: Store[] = [];
afterEach(async () => {
  for (const store of opened.splice(0)) await store.close();
});

async function open(url: string): Promise<Store & { limits: NonNullable<Store['limits']> }> {
  const store = await openStore(url);
  opened.push(store);
  if (!store.limits) throw new Error(`${url} keeps no limits`);
  return store as Store & { limits: NonNullable<Store['limits']> };
}

/** How many grants the raw log of limit `name` holds. */
async function logSize(kind: EngineStoreKind['name'], url: string, store: Store, name: string): Promise<number> {
  switch (kind) {
    case 'memory':
      return (store as MemoryStore).limits['windows' as keyof MemoryStore['limits']] === undefined
        ? -1
        : ((store.limits as unknown as { windows: Map<string, { grants: unknown[] }> }).windows.get(name)?.grants.length ?? 0);
    case 'file': {
      const file = path.join(url.slice('file:'.length), LIMITS_DIR, name, 'state.json');
      return (JSON.parse(fs.readFileSync(file, 'utf8')) as { grants: unknown[] }).grants.length;
    }
    case 'sqlite': {
      const db = new Database(url.slice('sqlite:'.length), { readonly: true });
      try {
        return db.prepare('SELECT count(*) FROM cairn_limit_grants WHERE name = ?').pluck().get(name) as number;
      } finally {
        db.close();
      }
    }
    case 'postgres':
      return withClient(
        async (c) =>
          (
            (await c.query(`SELECT count(*)::int AS n FROM "${schemaOf(url)}".limit_grants WHERE name = $1`, [name])).rows[0] as {
              n: number;
            }
          ).n,
      );
  }
}

describe.each(ALL_STORES)('rate limits on the $name store', (kind) => {
  it('grants while the window has room, across two instances on the same URL, then says how long to wait', async () => {
    const url = await kind.freshUrl();
    const [a, b] = [await open(url), await open(url)];
    const rule: LimitRule = { perMs: HOUR, requests: 3 };
    expect(a.limits.sharedBy).toBe(kind.name === 'memory' ? 'process' : kind.name === 'file' ? 'machine' : 'store');
    const first = await a.limits.tryAcquire('api', rule, 'g1', 0);
    expect(first).toMatchObject({ granted: true });
    expect(await b.limits.tryAcquire('api', rule, 'g2', 0)).toMatchObject({ granted: true });
    expect(await a.limits.tryAcquire('api', rule, 'g3', 0)).toMatchObject({ granted: true });
    const blocked = await b.limits.tryAcquire('api', rule, 'g4', 0);
    expect(blocked).toMatchObject({ granted: false, why: 'requests' });
    const waitMs = (blocked as { waitMs: number }).waitMs;
    expect(waitMs).toBeGreaterThan(HOUR - 60_000); // until the first grant leaves: an hour after it
    expect(waitMs).toBeLessThanOrEqual(HOUR);
    // another limit has a log of its own
    expect(await b.limits.tryAcquire('other', rule, 'o1', 0)).toMatchObject({ granted: true });
  });

  it('counts tokens asked for and charged after the call (through either instance)', async () => {
    const url = await kind.freshUrl();
    const [a, b] = [await open(url), await open(url)];
    const rule: LimitRule = { perMs: HOUR, tokens: 100 };
    expect(await a.limits.tryAcquire('llm', rule, 't1', 40)).toMatchObject({ granted: true });
    await b.limits.charge('llm', 't1', 90); // the call used 90
    expect(await a.limits.tryAcquire('llm', rule, 't2', 20)).toMatchObject({ granted: false, why: 'tokens' });
    await a.limits.charge('llm', 't1', 50); // never lowers what was counted
    expect(await b.limits.tryAcquire('llm', rule, 't2', 20)).toMatchObject({ granted: false, why: 'tokens' });
    expect(await b.limits.tryAcquire('llm', rule, 't3', 10)).toMatchObject({ granted: true }); // exactly 100
    await a.limits.charge('llm', 'unknown-grant', 10); // nothing to charge: no error
  });

  it('makes Limiters on both instances wait, without ever letting more than N start in a window', async () => {
    const url = await kind.freshUrl();
    const [a, b] = [await open(url), await open(url)];
    const rules = resolveLimits({ api: { requests: 2, per: 300 } });
    const limiters = [Limiter.forStore(rules, a), Limiter.forStore(rules, b)];
    const grants = await Promise.all(
      Array.from({ length: 6 }, (_, i) => limiters[i % 2]!.acquire('api', { signal: AbortSignal.timeout(20_000) })),
    );
    const at = grants.map((g) => g.at).sort((x, y) => x - y);
    // by the store's clock (the server's on Postgres): any 3 grants span at least the window
    for (let i = 0; i + 2 < at.length; i++)
      expect(at[i + 2]! - at[i]!, `grants ${i}..${i + 2} of ${at.join(', ')}`).toBeGreaterThanOrEqual(300);
  });

  it('a slow-down asked through one instance stops every request through the other', async () => {
    const url = await kind.freshUrl();
    const [a, b] = [await open(url), await open(url)];
    const rule: LimitRule = { perMs: 1000, requests: 100 };
    await a.limits.slowDown('api', rule, HOUR);
    await a.limits.slowDown('api', rule, 10); // never shortens it
    const blocked = await b.limits.tryAcquire('api', rule, 's1', 0);
    expect(blocked).toMatchObject({ granted: false, why: 'slowed' });
    expect((blocked as { waitMs: number }).waitMs).toBeGreaterThan(HOUR - 60_000);
    const limiter = Limiter.forStore(resolveLimits({ api: { requests: 100, per: '1s' } }), b);
    await expect(limiter.acquire('api', { signal: AbortSignal.timeout(100) })).rejects.toMatchObject({ name: 'TimeoutError' });
    expect(await b.limits.tryAcquire('other', rule, 's2', 0)).toMatchObject({ granted: true }); // only that limit
  });

  it('keeps the grants a longer window declared by another process needs, and counts each process’s own window', async () => {
    const url = await kind.freshUrl();
    const [a, b] = [await open(url), await open(url)];
    const short: LimitRule = { perMs: 50, requests: 1 };
    const long: LimitRule = { perMs: HOUR, requests: 2 };
    expect(await b.limits.tryAcquire('api', short, 'm1', 0)).toMatchObject({ granted: true });
    expect(await b.limits.tryAcquire('api', short, 'm2', 0)).toMatchObject({ granted: false, why: 'requests' });
    expect(await a.limits.tryAcquire('api', long, 'm3', 0)).toMatchObject({ granted: true });
    await new Promise((resolve) => setTimeout(resolve, 80));
    expect(await b.limits.tryAcquire('api', short, 'm4', 0)).toMatchObject({ granted: true }); // its own 50 ms are empty
    expect(await a.limits.tryAcquire('api', long, 'm5', 0)).toMatchObject({ granted: false, why: 'requests' }); // 3 in the hour
    expect(await logSize(kind.name, url, a, 'api')).toBe(3);
  });

  it('drops the grants that left the window on each acquire (the log stays as long as one window)', async () => {
    const url = await kind.freshUrl();
    const store = await open(url);
    const rule: LimitRule = { perMs: 50, requests: 1000 };
    for (let i = 0; i < 5; i++) await store.limits.tryAcquire('api', rule, `p${i}`, 0);
    expect(await logSize(kind.name, url, store, 'api')).toBe(5);
    await new Promise((resolve) => setTimeout(resolve, 80)); // every grant is now older than the window
    expect(await store.limits.tryAcquire('api', rule, 'p5', 0)).toMatchObject({ granted: true });
    expect(await logSize(kind.name, url, store, 'api')).toBe(1);
  });
});

describe.each(ALL_STORES.filter((k) => k.name === 'sqlite' || k.name === 'postgres'))('the $name store’s limit counters', (kind) => {
  /** The limit's counters, and what its rows add up to. */
  async function counters(url: string, name: string): Promise<{ kept: [number, number]; rows: [number, number] }> {
    if (kind.name === 'sqlite') {
      const db = new Database(url.slice('sqlite:'.length), { readonly: true });
      try {
        const kept = db.prepare('SELECT grants, tokens FROM cairn_limits WHERE name = ?').raw().get(name) as [number, number];
        const rows = db.prepare('SELECT count(*), total(tokens) FROM cairn_limit_grants WHERE name = ?').raw().get(name) as [
          number,
          number,
        ];
        return { kept, rows };
      } finally {
        db.close();
      }
    }
    const s = `"${schemaOf(url)}"`;
    return withClient(async (c) => {
      const kept = (
        await c.query({ text: `SELECT grants::int, tokens FROM ${s}.limits WHERE name = $1`, values: [name], rowMode: 'array' })
      ).rows[0] as [number, number];
      const rows = (
        await c.query({
          text: `SELECT count(*)::int, coalesce(sum(tokens), 0)::float8 FROM ${s}.limit_grants WHERE name = $1`,
          values: [name],
          rowMode: 'array',
        })
      ).rows[0] as [number, number];
      return { kept, rows };
    });
  }

  it('match the rows after grants, waits, charges (sent twice) and prunes: an acquire reads them, not the rows', async () => {
    const url = await kind.freshUrl();
    const [a, b] = [await open(url), await open(url)];
    const rule: LimitRule = { perMs: HOUR, tokens: 1000, requests: 4 };
    for (const [i, tokens] of [10, 20, 30, 40].entries()) await a.limits.tryAcquire('llm', rule, `c${i}`, tokens);
    expect(await b.limits.tryAcquire('llm', rule, 'c4', 0)).toMatchObject({ granted: false, why: 'requests' });
    await b.limits.charge('llm', 'c1', 500);
    await b.limits.charge('llm', 'c1', 500); // sent again: counted once
    await a.limits.charge('llm', 'c2', 5); // lower: nothing
    expect(await counters(url, 'llm')).toEqual({ kept: [4, 580], rows: [4, 580] });
    expect(await b.limits.tryAcquire('llm', { ...rule, requests: 100 }, 'c5', 450)).toMatchObject({ granted: false, why: 'tokens' });
    expect(await b.limits.tryAcquire('llm', { ...rule, requests: 100 }, 'c6', 420)).toMatchObject({ granted: true });
    expect(await counters(url, 'llm')).toEqual({ kept: [5, 1000], rows: [5, 1000] });
    // grants that left the window are taken off the counters with their rows
    const short: LimitRule = { perMs: 50, requests: 100 };
    for (let i = 0; i < 3; i++) await a.limits.tryAcquire('short', short, `s${i}`, 3);
    await a.limits.charge('short', 's0', 9);
    await new Promise((resolve) => setTimeout(resolve, 80)); // all three left the window
    expect(await b.limits.tryAcquire('short', short, 's3', 7)).toMatchObject({ granted: true });
    expect(await counters(url, 'short')).toEqual({ kept: [1, 7], rows: [1, 7] });
  });
});

describe('the SQLite store’s limits', () => {
  it('commit without the fsync of synchronous=FULL, and put the connection back to FULL', async () => {
    const url = await ALL_STORES.find((k) => k.name === 'sqlite')!.freshUrl();
    const store = await open(url);
    await store.limits.tryAcquire('api', { perMs: 1000, requests: 1 }, 'x', 0);
    await store.limits.tryAcquire('api', { perMs: 1000, requests: 1 }, 'y', 0); // a wait commits too
    await store.limits.slowDown('api', { perMs: 1000, requests: 1 }, 10);
    const db = (store as unknown as { db: Database.Database }).db;
    expect(db.pragma('synchronous', { simple: true })).toBe(2); // FULL
  });
});

describe.skipIf(!ALL_STORES.some((k) => k.name === 'postgres'))('the Postgres store’s limits', () => {
  it('grant times are the server’s clock, read after the limit’s lock', async () => {
    const url = await ALL_STORES.find((k) => k.name === 'postgres')!.freshUrl();
    const store = await open(url);
    const serverNow = (): Promise<number> =>
      withClient(
        async (c) => ((await c.query('SELECT extract(epoch FROM clock_timestamp())::float8 * 1000 AS t')).rows[0] as { t: number }).t,
      );
    const before = await serverNow();
    const grant = await store.limits.tryAcquire('api', { perMs: 1000, requests: 10 }, 'c1', 0);
    const after = await serverNow();
    expect(grant.granted).toBe(true);
    const at = (grant as { at: number }).at;
    expect(at).toBeGreaterThanOrEqual(before);
    expect(at).toBeLessThanOrEqual(after);
  });

  it('a grant whose id already landed (a reply lost with its connection) is returned, not made twice', async () => {
    const url = await ALL_STORES.find((k) => k.name === 'postgres')!.freshUrl();
    const store = await open(url);
    const rule = { perMs: HOUR, requests: 10 };
    const first = await store.limits.tryAcquire('api', rule, 'same-id', 0);
    expect(await store.limits.tryAcquire('api', rule, 'same-id', 0)).toEqual(first);
    expect(await logSize('postgres', url, store, 'api')).toBe(1);
  });
});

describe('the file store’s limits', () => {
  const fileUrl = (): Promise<string> => ALL_STORES.find((k) => k.name === 'file')!.freshUrl();
  const rule: LimitRule = { perMs: HOUR, requests: 100 };

  it('keep a state file and one lock file per limit, given back, and no temp files', async () => {
    const url = await fileUrl();
    const store = await open(url);
    for (let i = 0; i < 3; i++) await store.limits.tryAcquire('api', rule, `f${i}`, 0);
    const dir = path.join(url.slice('file:'.length), LIMITS_DIR, 'api');
    expect(fs.readdirSync(dir).sort()).toEqual(['lock-3', 'state.json']);
    expect(fs.statSync(path.join(dir, 'lock-3')).mtimeMs).toBe(0); // given back
    expect(JSON.parse(fs.readFileSync(path.join(dir, 'lock-3'), 'utf8'))).toEqual({ pid: process.pid, host: HOST });
    expect(JSON.parse(fs.readFileSync(path.join(dir, 'state.json'), 'utf8'))).toMatchObject({
      v: 1,
      windowMs: HOUR,
      grants: [
        ['f0', expect.any(Number), 0],
        ['f1', expect.any(Number), 0],
        ['f2', expect.any(Number), 0],
      ],
    });
    // the run listing never sees the folder
    expect(await store.listRunIds()).toEqual([]);
  });

  it('wait while a live process holds the lock, and take over a lock whose holder died or that is too old', async () => {
    const url = await fileUrl();
    const store = (await open(url)) as FileStore;
    await store.limits.tryAcquire('api', rule, 'first', 0);
    const dir = path.join(store.root, LIMITS_DIR, 'api');
    // a live holder (this process's pid), just taken
    fs.writeFileSync(path.join(dir, 'lock-2'), JSON.stringify({ pid: process.pid, host: HOST }));
    let settled = false;
    const waiting = store.limits.tryAcquire('api', rule, 'second', 0).finally(() => (settled = true));
    await new Promise((resolve) => setTimeout(resolve, 150));
    expect(settled).toBe(false);
    // older than STALE_LOCK_MS: taken over
    const old = new Date(Date.now() - STALE_LOCK_MS - 1000);
    fs.utimesSync(path.join(dir, 'lock-2'), old, old);
    expect(await waiting).toMatchObject({ granted: true });
    expect(fs.readdirSync(dir).sort()).toEqual(['lock-3', 'state.json']);
    // a dead holder of this host, however recent: taken over at once
    fs.writeFileSync(path.join(dir, 'lock-4'), JSON.stringify({ pid: 2 ** 22 + 12_345, host: HOST }));
    expect(await store.limits.tryAcquire('api', rule, 'third', 0)).toMatchObject({ granted: true });
    expect(fs.readdirSync(dir).sort()).toEqual(['lock-5', 'state.json']);
  });

  it('never follow a link, and take a damaged state for a full window', async () => {
    const url = await fileUrl();
    const store = (await open(url)) as FileStore;
    const elsewhere = fs.mkdtempSync(path.join(path.dirname(store.root), 'elsewhere-'));
    fs.symlinkSync(elsewhere, path.join(store.root, LIMITS_DIR));
    expect(await codeOf(store.limits.tryAcquire('api', rule, 'l1', 0))).toBe('UNSAFE_PATH');
    expect(fs.readdirSync(elsewhere)).toEqual([]);
    fs.unlinkSync(path.join(store.root, LIMITS_DIR));
    await store.limits.tryAcquire('api', rule, 'l2', 0);
    const state = path.join(store.root, LIMITS_DIR, 'api', 'state.json');
    fs.writeFileSync(state, '{"v":1,"grants":[[');
    const blocked = await store.limits.tryAcquire('api', { perMs: 1000, requests: 100 }, 'l3', 0);
    expect(blocked).toMatchObject({ granted: false, why: 'slowed' });
    expect(JSON.parse(fs.readFileSync(state, 'utf8'))).toMatchObject({ v: 1, grants: [] }); // rewritten whole
    fs.writeFileSync(state, '{"v":2,"grants":[]}');
    expect(await codeOf(store.limits.tryAcquire('api', rule, 'l4', 0))).toBe('FORMAT_TOO_NEW');
  });
});
