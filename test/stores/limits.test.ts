/**
 * The rate-limit state of each store (`Store.limits`): memory, files, SQLite and Postgres (when a
 * server is reachable) pass the same cases, with two store instances opened on the same URL
 * standing for two processes: grants within the limit, waits, tokens charged after the call, a
 * slow-down seen by both, and a log that keeps only its window. Then what each store does of its
 * own: SQLite's connection pragma, Postgres's server clock, the file store's lock and ring: the
 * same decisions as the in-memory log on random operations (a clock moved by hand), the same bytes
 * read per acquire however full the window, and real processes (run through tsx) killed or frozen
 * (SIGSTOP) at random moments. Waits are checked from below only (by the store's own clock), so the
 * cases hold on a busy machine.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { Limiter, resolveLimits } from '../../src/engine/limits.js';
import { HOST } from '../../src/stores/common.js';
import type { FileStore } from '../../src/stores/file/file-store.js';
import { LIMITS_DIR, STALE_LOCK_MS } from '../../src/stores/file/file-limits.js';
import { MemoryLimits } from '../../src/stores/memory/memory-limits.js';
import type { MemoryStore } from '../../src/stores/memory/memory-store.js';
import { openStore } from '../../src/stores/open-store.js';
import type { LimitRule, Store } from '../../src/stores/store.js';
import { ALL_STORES, type EngineStoreKind } from '../engine/store-matrix.js';
import { schemaOf, withClient } from '../postgres.js';
import { codeOf } from '../helpers.js';
import { Child } from '../e2e/child.js';

const REPO = path.resolve(import.meta.dirname, '../..');

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

/**
 * The file store's current log of a limit (the highest `log-<n>`), decoded by the layout in
 * file-limits.ts, with the header's copy of the last slot written applied as the next holder applies it.
 */
function readFileLog(dir: string) {
  const gen = Math.max(...fs.readdirSync(dir).flatMap((name) => (/^log-\d+$/.test(name) ? [Number(name.slice(4))] : [])));
  const buf = fs.readFileSync(path.join(dir, `log-${gen}`));
  const capacity = buf.readUInt32LE(12);
  const [windowMs, blockedUntil, head, count, tokens] = [16, 24, 32, 40, 48].map((offset) => buf.readDoubleLE(offset)) as [
    number,
    number,
    number,
    number,
    number,
  ];
  const slotAt = (seq: number): number => 128 + (seq % capacity) * 48;
  const redo = buf.readUInt32LE(56) === 1;
  if (redo) buf.copy(buf, slotAt(buf.readDoubleLE(60)), 60, 108);
  const slots = Array.from({ length: count }, (_, i) => {
    const at = slotAt(head + i);
    return {
      seq: buf.readDoubleLE(at),
      at: buf.readDoubleLE(at + 8),
      tokens: buf.readDoubleLE(at + 16),
      id: buf.toString('hex', at + 24, at + 40),
    };
  });
  return { gen, capacity, windowMs, blockedUntil, head, count, tokens, redo, slots, firstSlotAt: slotAt(head) };
}

/** How a grant id is written in the file store's log. */
const idHex = (id: string): string => createHash('sha256').update(id).digest().toString('hex', 0, 16);

/** How many grants the raw log of limit `name` holds. */
async function logSize(kind: EngineStoreKind['name'], url: string, store: Store, name: string): Promise<number> {
  switch (kind) {
    case 'memory':
      return (store as MemoryStore).limits['windows' as keyof MemoryStore['limits']] === undefined
        ? -1
        : ((store.limits as unknown as { windows: Map<string, { grants: unknown[] }> }).windows.get(name)?.grants.length ?? 0);
    case 'file':
      return readFileLog(path.join(url.slice('file:'.length), LIMITS_DIR, name)).count;
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
  const limitDir = (store: Store, name = 'api'): string => path.join((store as FileStore).root, LIMITS_DIR, name);

  it('keep one lock file and one log per limit, the lock given back, and no temp files', async () => {
    const url = await fileUrl();
    const store = await open(url);
    for (let i = 0; i < 3; i++) await store.limits.tryAcquire('api', rule, `f${i}`, i);
    const dir = limitDir(store);
    expect(fs.readdirSync(dir).sort()).toEqual(['lock-3', 'log-1']); // the log made by the first lock's holder
    expect(fs.statSync(path.join(dir, 'lock-3')).mtimeMs).toBe(0); // given back
    expect(JSON.parse(fs.readFileSync(path.join(dir, 'lock-3'), 'utf8'))).toEqual({ pid: process.pid, host: HOST });
    const log = readFileLog(dir);
    expect(log).toMatchObject({ capacity: 64, windowMs: HOUR, blockedUntil: 0, count: 3, tokens: 3 });
    expect(log.slots.map((s) => [s.seq - log.head, s.tokens, s.id])).toEqual([0, 1, 2].map((i) => [i, i, idHex(`f${i}`)]));
    expect(fs.statSync(path.join(dir, 'log-1')).size).toBe(128 + 64 * 48);
    // the run listing never sees the folder
    expect(await store.listRunIds()).toEqual([]);
  });

  it('wait while a live process holds the lock, take over one whose holder died or that is too old, and copy the log first', async () => {
    const url = await fileUrl();
    const store = (await open(url)) as FileStore;
    await store.limits.tryAcquire('api', rule, 'first', 0);
    const dir = limitDir(store);
    // a live holder (this process's pid), just taken, that has the log open to write
    const frozen = fs.openSync(path.join(dir, 'log-1'), 'r+');
    fs.writeFileSync(path.join(dir, 'lock-2'), JSON.stringify({ pid: process.pid, host: HOST }));
    let settled = false;
    const waiting = store.limits.tryAcquire('api', rule, 'second', 0).finally(() => (settled = true));
    await new Promise((resolve) => setTimeout(resolve, 150));
    expect(settled).toBe(false);
    // older than STALE_LOCK_MS: taken over, the log copied into one of the taker's number
    const old = new Date(Date.now() - STALE_LOCK_MS - 1000);
    fs.utimesSync(path.join(dir, 'lock-2'), old, old);
    expect(await waiting).toMatchObject({ granted: true });
    expect(fs.readdirSync(dir).sort()).toEqual(['lock-3', 'log-3']);
    // the frozen holder runs again and writes what it had: an empty log (its view of log 1, zeroed); nobody reads it
    fs.writeSync(frozen, Buffer.alloc(128 + 64 * 48), 0, 128 + 64 * 48, 0);
    fs.closeSync(frozen);
    expect(readFileLog(dir)).toMatchObject({ gen: 3, count: 2 });
    expect(await store.limits.tryAcquire('api', { perMs: HOUR, requests: 2 }, 'third', 0)).toMatchObject({
      granted: false,
      why: 'requests',
    });
    // a dead holder of this host, however recent: taken over at once
    fs.writeFileSync(path.join(dir, 'lock-4'), JSON.stringify({ pid: 2 ** 22 + 12_345, host: HOST }));
    expect(await store.limits.tryAcquire('api', rule, 'third', 0)).toMatchObject({ granted: true });
    expect(fs.readdirSync(dir).sort()).toEqual(['lock-5', 'log-5']);
    expect(readFileLog(dir).slots.map((s) => s.id)).toEqual(['first', 'second', 'third'].map(idHex));
  });

  it('never follow a link, take a damaged log for a full window, and refuse a newer format', async () => {
    const url = await fileUrl();
    const store = (await open(url)) as FileStore;
    const elsewhere = fs.mkdtempSync(path.join(path.dirname(store.root), 'elsewhere-'));
    fs.symlinkSync(elsewhere, path.join(store.root, LIMITS_DIR));
    expect(await codeOf(store.limits.tryAcquire('api', rule, 'l1', 0))).toBe('UNSAFE_PATH');
    expect(fs.readdirSync(elsewhere)).toEqual([]);
    fs.unlinkSync(path.join(store.root, LIMITS_DIR));
    await store.limits.tryAcquire('api', rule, 'l2', 0);
    const dir = limitDir(store);
    // a log that is a link: refused, and what it points to is left alone
    fs.renameSync(path.join(dir, 'log-1'), path.join(elsewhere, 'log'));
    fs.symlinkSync(path.join(elsewhere, 'log'), path.join(dir, 'log-1'));
    expect(await codeOf(store.limits.tryAcquire('api', rule, 'l3', 0))).toBe('UNSAFE_PATH');
    fs.unlinkSync(path.join(dir, 'log-1'));
    fs.renameSync(path.join(elsewhere, 'log'), path.join(dir, 'log-1'));
    // a damaged header, then a damaged slot: each a full window of the longest window known
    const damage = (offset: number): void => {
      const fd = fs.openSync(path.join(dir, `log-${readFileLog(dir).gen}`), 'r+');
      fs.writeSync(fd, Buffer.from([0xff]), 0, 1, offset);
      fs.closeSync(fd);
    };
    damage(20);
    const blocked = await store.limits.tryAcquire('api', { perMs: 1000, requests: 100 }, 'l4', 0);
    expect(blocked).toMatchObject({ granted: false, why: 'slowed' });
    expect((blocked as { waitMs: number }).waitMs).toBeGreaterThan(900);
    expect(readFileLog(dir)).toMatchObject({ count: 0, windowMs: 1000 }); // started again
    fs.rmSync(dir, { recursive: true });
    await store.limits.tryAcquire('api', rule, 'l5', 0);
    await store.limits.tryAcquire('api', rule, 'l6', 0); // the header's copy is of this one's slot
    damage(readFileLog(dir).firstSlotAt + 8); // the first slot's time
    const slowed = await store.limits.tryAcquire('api', { perMs: 1000, requests: 100 }, 'l7', 0);
    expect(slowed).toMatchObject({ granted: false, why: 'slowed' });
    expect((slowed as { waitMs: number }).waitMs).toBeGreaterThan(HOUR - 60_000); // the log said its window is an hour
    // a charge never starts a log again (it does not know the window): the next acquire does
    damage(20);
    await store.limits.charge('api', 'l5', 10);
    const header = Buffer.alloc(128);
    const fd = fs.openSync(path.join(dir, `log-${readFileLog(dir).gen}`), 'r+');
    header.writeUInt32LE(2, 8); // format 2, from a newer cairn
    fs.writeSync(fd, Buffer.from('cairnlim'), 0, 8, 0);
    fs.writeSync(fd, header, 8, 4, 8);
    fs.closeSync(fd);
    expect(await codeOf(store.limits.tryAcquire('api', rule, 'l8', 0))).toBe('FORMAT_TOO_NEW');
  });

  it('decide exactly as the in-memory log does, through growth, windows declared differently and charges by either instance', async () => {
    const url = await fileUrl();
    const [a, b] = [await open(url), await open(url)];
    let clock = Date.now();
    const now = vi.spyOn(Date, 'now').mockImplementation(() => clock);
    try {
      const reference = new MemoryLimits(() => clock);
      const rules: LimitRule[] = [
        { perMs: 1000, requests: 40, tokens: 900 },
        { perMs: 3000, requests: 100 },
        { perMs: 500, tokens: 400 },
      ];
      let seed = 7;
      const random = (n: number): number => {
        seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31;
        return Math.floor((seed / 2 ** 31) * n);
      };
      const charged = new Map<string, number>();
      const tally = { granted: 0, requests: 0, tokens: 0, slowed: 0 };
      for (let i = 0; i < 3000; i++) {
        const store = random(2) === 0 ? a : b;
        const op = random(100);
        if (op < 75) {
          const [r, tokens, id] = [rules[random(rules.length)]!, random(30), `g${i}`];
          const got = await store.limits.tryAcquire('api', r, id, tokens);
          expect(got, `operation ${i}`).toEqual(await reference.tryAcquire('api', r, id, tokens));
          tally[got.granted ? 'granted' : got.why]++;
          if (got.granted) charged.set(id, tokens);
        } else if (op < 98 && charged.size > 0) {
          const ids = [...charged.keys()].slice(-200);
          const id = ids[random(ids.length)]!;
          const total = charged.get(id)! + random(40) - 5;
          await store.limits.charge('api', id, total);
          await reference.charge('api', id, total);
          charged.set(id, Math.max(total, charged.get(id)!));
        } else if (op >= 99) {
          const ms = random(300);
          await store.limits.slowDown('api', rules[0]!, ms);
          await reference.slowDown('api', rules[0]!, ms);
        }
        clock += random(6);
      }
      // every path was taken, and the ring grew past its first size
      for (const count of Object.values(tally)) expect(count).toBeGreaterThan(20);
      expect(readFileLog(limitDir(a)).capacity).toBeGreaterThan(64);
    } finally {
      now.mockRestore();
    }
  });

  it('read and write the same bytes for an acquire however many grants the window holds', async () => {
    const store = await open(await fileUrl());
    const many: LimitRule = { perMs: HOUR, requests: 1_000_000, tokens: 1e12 };
    let made = 0;
    const io = async (kept: number): Promise<number[]> => {
      while (made < kept) await store.limits.tryAcquire('api', many, `k${made++}`, 1);
      const read = vi.spyOn(fs, 'readSync');
      const write = vi.spyOn(fs, 'writeSync');
      try {
        for (let i = 0; i < 5; i++) {
          await store.limits.tryAcquire('api', many, `k${made}`, 1);
          await store.limits.charge('api', `k${made++}`, 5);
        }
        const bytes = (calls: unknown[][]): number => calls.reduce((sum, call) => sum + (call[3] as number), 0);
        return [read.mock.calls.length, bytes(read.mock.calls), write.mock.calls.length, bytes(write.mock.calls)];
      } finally {
        read.mockRestore();
        write.mockRestore();
      }
    };
    const few = await io(100);
    expect(few[1]).toBe(5 * (128 + 2 * 48) + 5 * (128 + 48)); // each acquire a header and two slots, each charge a header and a slot
    expect(await io(5000)).toEqual(few);
    expect(readFileLog(limitDir(store))).toMatchObject({ count: 5005, tokens: 4995 + 10 * 5, capacity: 8192 });
  });

  it('a try again with the id of a grant that landed gets that grant, not a second (as when a holder finds it lost the lock)', async () => {
    const store = await open(await fileUrl());
    const first = await store.limits.tryAcquire('api', rule, 'same-id', 0);
    expect(await store.limits.tryAcquire('api', rule, 'same-id', 0)).toEqual(first);
    expect(readFileLog(limitDir(store)).count).toBe(1);
  });

  it('a holder killed between writing the header and the slot leaves a copy of the slot, written by the next one', async () => {
    const url = await fileUrl();
    const [a, b] = [await open(url), await open(url)];
    const tokens: LimitRule = { perMs: HOUR, tokens: 100 };
    expect(await a.limits.tryAcquire('llm', tokens, 't1', 10)).toMatchObject({ granted: true });
    const dir = limitDir(a, 'llm');
    const file = path.join(dir, `log-${readFileLog(dir).gen}`);
    const at = readFileLog(dir).firstSlotAt;
    const before = fs.readFileSync(file).subarray(at, at + 48);
    await a.limits.charge('llm', 't1', 90);
    // the slot as it was: the header (tokens 90, and its copy of the slot) went out, the slot did not
    const fd = fs.openSync(file, 'r+');
    fs.writeSync(fd, before, 0, 48, at);
    fs.closeSync(fd);
    expect(fs.readFileSync(file).readDoubleLE(at + 16)).toBe(10);
    expect(await b.limits.tryAcquire('llm', tokens, 't2', 20)).toMatchObject({ granted: false, why: 'tokens' });
    expect(fs.readFileSync(file).readDoubleLE(at + 16)).toBe(90); // written again
    expect(await b.limits.tryAcquire('llm', tokens, 't3', 10)).toMatchObject({ granted: true }); // exactly 100
  });

  /** A process of its own that acquires one grant after another on limit `api` of `root`, charging each, and says so after each step. */
  function startGranting(root: string, tag: string): Child {
    const script = path.join(path.dirname(root), `${path.basename(root)}-granting.mjs`);
    fs.writeFileSync(
      script,
      `import { FileStore } from ${JSON.stringify(path.join(REPO, 'src/stores/file/file-store.ts'))};
const [root, tag] = process.argv.slice(2);
const store = await FileStore.open(root);
const rule = { perMs: 3_600_000, requests: 1_000_000, tokens: 1e12 };
// each line handed to the pipe before going on (writes to a pipe may wait in the process): a killed process misses one at most
const say = (line) => new Promise((resolve) => process.stdout.write(line + '\\n', resolve));
await say('ready');
for (let i = 0; ; i++) {
  const id = tag + '-' + i;
  const grant = await store.limits.tryAcquire('api', rule, id, 1);
  if (!grant.granted) throw new Error('not granted: ' + JSON.stringify(grant));
  await say('g ' + id);
  await store.limits.charge('api', id, 3);
  await say('c ' + id);
}
`,
    );
    return new Child(script, [root, tag], { cwd: REPO, env: { ...process.env, NODE_OPTIONS: '--import tsx' } });
  }

  /** The grants (and tokens) that processes said they made, from their lines; then checks the log keeps each of them. */
  function expectKept(dir: string, reported: Map<string, number>, lines: readonly string[], unreported: number): void {
    for (const line of lines) {
      const [what, id] = line.split(' ');
      if (what === 'g' || what === 'c') reported.set(id!, what === 'g' ? 1 : 3);
    }
    const log = readFileLog(dir);
    expect(log.slots.map((s) => s.seq - log.head)).toEqual(log.slots.map((_, i) => i));
    expect(log.tokens).toBe(log.slots.reduce((sum, s) => sum + s.tokens, 0)); // with the header's copy of the last slot
    const kept = new Map(log.slots.map((s) => [s.id, s.tokens]));
    expect(kept.size, 'a grant counted twice').toBe(log.count);
    for (const [id, tokens] of reported) expect(kept.get(idHex(id)), id).toBeGreaterThanOrEqual(tokens);
    expect(log.count).toBeLessThanOrEqual(reported.size + unreported);
  }

  it(
    'keep counters that agree with their slots, and every grant reported, when processes are killed at random moments',
    { timeout: 120_000 },
    async () => {
      const url = await fileUrl();
      const store = await open(url);
      const dir = limitDir(store);
      const reported = new Map<string, number>();
      for (let round = 0; round < 6; round++) {
        const child = startGranting(url.slice('file:'.length), `p${round}`);
        try {
          await child.waitForLine('ready');
          await child.line(1 + 2 * (5 + Math.floor(Math.random() * 60)));
          await new Promise((resolve) => setTimeout(resolve, Math.random() * 3));
          child.kill('SIGKILL');
          expect((await child.exit).signal).toBe('SIGKILL');
        } finally {
          child.kill('SIGKILL');
        }
        // each killed process made at most one grant it did not report
        expectKept(dir, reported, child.lines, round + 1);
        // the dead holder's lock (if it held it) is taken over at once, and the log copied
        expect(await store.limits.tryAcquire('api', { perMs: HOUR, requests: 1_000_000 }, `parent-${round}`, 0)).toMatchObject({
          granted: true,
        });
        expectKept(dir, reported.set(`parent-${round}`, 0), [], round + 1);
      }
    },
  );

  it.skipIf(process.platform !== 'linux')(
    'a process frozen (SIGSTOP) with the lock and taken over writes into no log anyone reads, and answers no grant that is not kept',
    { timeout: 120_000 },
    async () => {
      const url = await fileUrl();
      const store = await open(url);
      const dir = limitDir(store);
      const child = startGranting(url.slice('file:'.length), 'frozen');
      const reported = new Map<string, number>();
      const isStopped = (): boolean => fs.readFileSync(`/proc/${child.pid}/stat`, 'utf8').split(') ')[1]?.startsWith('T') ?? false;
      let takenOver = 0;
      try {
        await child.waitForLine('ready');
        // stopped at random moments until it was stopped with the lock five times
        for (let round = 0; takenOver < 5 && round < 500; round++) {
          await child.line(child.lines.length + 3); // it goes on after each stop
          await new Promise((resolve) => setTimeout(resolve, Math.random() * 3));
          child.kill('SIGSTOP');
          for (const deadline = Date.now() + 10_000; !isStopped();) {
            if (Date.now() > deadline) throw new Error('the process did not stop');
            await new Promise((resolve) => setTimeout(resolve, 1));
          }
          const top = path.join(
            dir,
            fs
              .readdirSync(dir)
              .filter((n) => n.startsWith('lock-'))
              .sort((a, b) => Number(b.slice(5)) - Number(a.slice(5)))[0]!,
          );
          if (fs.statSync(top).mtimeMs !== 0 && fs.readFileSync(top, 'utf8').includes(`"pid":${child.pid},`)) {
            // frozen with the lock: once its lock is too old, the next acquire takes it over
            const old = new Date(Date.now() - STALE_LOCK_MS - 1000);
            fs.utimesSync(top, old, old);
            expect(await store.limits.tryAcquire('api', { perMs: HOUR, requests: 1_000_000 }, `parent-${round}`, 2)).toMatchObject({
              granted: true,
            });
            await store.limits.charge('api', `parent-${round}`, 3);
            reported.set(`parent-${round}`, 3);
            takenOver++;
          }
          child.kill('SIGCONT');
        }
        await child.line(child.lines.length + 3);
        child.kill('SIGKILL');
        await child.exit;
      } finally {
        child.kill('SIGKILL');
      }
      expect(takenOver).toBe(5);
      // what it wrote once it ran again went nowhere read: every grant it reported is kept, and counted once
      expectKept(dir, reported, child.lines, 1);
    },
  );
});
