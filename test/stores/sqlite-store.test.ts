/**
 * What only the SQLite store has: migrations, pragmas, the lazy driver, and coordination between
 * processes. The shared behaviour is covered by test/conformance/sqlite.test.ts.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { StoreOptions } from '../../src/stores/common.js';
import { openStore } from '../../src/stores/open-store.js';
import { LATEST_SCHEMA_VERSION, migrate, MIGRATIONS } from '../../src/stores/sqlite/migrations.js';
import {
  BUSY_TIMEOUT_MS,
  loadSqliteDriver,
  openSqliteDatabase,
  type SqliteDatabaseConstructor,
} from '../../src/stores/sqlite/sqlite-driver.js';
import { SqliteStore } from '../../src/stores/sqlite/sqlite-store.js';
import type { ExportRecord, Store } from '../../src/stores/store.js';
import { codeOf, collect, done } from '../helpers.js';

async function errorOf(
  promise: Promise<unknown>,
): Promise<{ code?: string; message: string; cause?: unknown; context?: Record<string, unknown> }> {
  try {
    await promise;
  } catch (error) {
    return error as { code?: string; message: string };
  }
  throw new Error('expected a rejection');
}

/** The store's own connection, for checking pragmas. */
const connectionOf = (store: Store): Database.Database => (store as unknown as { db: Database.Database }).db;

function schemaOf(file: string): unknown[] {
  const db = new Database(file, { readonly: true });
  try {
    return db.prepare("SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name").all();
  } finally {
    db.close();
  }
}

let dir = '';
let file = '';
const opened: Store[] = [];

async function open(options?: StoreOptions, location = file): Promise<SqliteStore> {
  const store = await SqliteStore.open(location, options);
  opened.push(store);
  return store;
}

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-sqlite-test-'));
  file = path.join(dir, 'cairn.db');
});

afterEach(async (context) => {
  for (const store of opened.splice(0)) await store.close();
  if (context.task.result?.state === 'fail') console.error(`kept ${dir} for inspection`);
  else fs.rmSync(dir, { recursive: true, force: true });
});

describe('opening', () => {
  it('uses WAL, synchronous=FULL, a busy timeout and foreign keys, and names itself by absolute path', async () => {
    const store = (await openStore(`sqlite:${path.relative(process.cwd(), file)}`)) as SqliteStore;
    opened.push(store);
    expect(store.kind).toBe('sqlite');
    expect(store.url).toBe(`sqlite:${file}`);
    expect(store.capabilities).toEqual({
      durable: true,
      multiProcess: true,
      multiMachine: false,
      fencedWrites: true,
      localArtifacts: true,
      queue: true,
    });
    const db = connectionOf(store);
    expect(db.pragma('journal_mode', { simple: true })).toBe('wal');
    expect(db.pragma('synchronous', { simple: true })).toBe(2); // FULL
    expect(db.pragma('busy_timeout', { simple: true })).toBe(BUSY_TIMEOUT_MS); // one try's wait; the store tries again without blocking
    expect(db.pragma('foreign_keys', { simple: true })).toBe(1);
    expect(store.artifactDir('run-1')).toBe(`${file}-artifacts${path.sep}run-1`);
  });

  it('opens an up-to-date database while another connection holds the write lock (a process stopped mid-write)', async () => {
    const first = await open();
    await first.createRun({ id: 'r', name: 'n' });
    const holder = new Database(file);
    try {
      holder.exec('BEGIN IMMEDIATE');
      const second = await open(); // reads the schema version: no lock needed, no busy wait
      expect((await second.getRun('r'))?.id).toBe('r');
    } finally {
      holder.exec('ROLLBACK');
      holder.close();
    }
  });

  it('accepts ?synchronous=NORMAL', async () => {
    const store = (await openStore(`sqlite:${file}?synchronous=NORMAL`)) as SqliteStore;
    opened.push(store);
    expect(store.synchronous).toBe('NORMAL');
    expect(store.url).toBe(`sqlite:${file}?synchronous=NORMAL`);
    expect(connectionOf(store).pragma('synchronous', { simple: true })).toBe(1);
    expect(fs.existsSync(file)).toBe(true);
  });

  it('creates the parent folder, and refuses a file that is not a database', async () => {
    const nested = path.join(dir, 'a', 'b', 'cairn.db');
    const store = await open({}, nested);
    await store.createRun({ id: 'r', name: 'n' });
    expect(fs.existsSync(nested)).toBe(true);
    const junk = path.join(dir, 'junk.db');
    fs.writeFileSync(junk, 'this is not a database, just text that is long enough to have a header '.repeat(10));
    const error = await errorOf(SqliteStore.open(junk));
    expect(error.code).toBe('INVALID_STORE_URL');
    expect(error.message).toContain(junk);
  });

  it('works in memory, with a temporary artifact folder removed on close', async () => {
    const store = await openStore('sqlite::memory:');
    expect(store.url).toBe('sqlite::memory:');
    await store.createRun({ id: 'm', name: 'n' });
    expect((await store.appendCheckpoint('m', { state: 1 })).seq).toBe(1);
    const artifacts = store.artifactDir('m');
    expect(artifacts.startsWith(os.tmpdir())).toBe(true);
    fs.mkdirSync(artifacts, { recursive: true });
    await store.close();
    expect(fs.existsSync(artifacts)).toBe(false);
    expect(await codeOf(store.getRun('m'))).toBe('STORE_CLOSED');
  });
});

describe('driver loading', () => {
  it('says which package to install when the driver is missing', async () => {
    const error = await errorOf(loadSqliteDriver('cairn-no-such-sqlite-driver'));
    expect(error.code).toBe('DRIVER_MISSING');
    expect(error.message).toBe('The sqlite: store needs the better-sqlite3 package: npm install better-sqlite3');
    expect(error.cause).toBeInstanceOf(Error);
  });

  it('says to rebuild when the native module does not load', async () => {
    const Broken = function () {
      throw Object.assign(new Error('The module was compiled against a different Node.js version using NODE_MODULE_VERSION 115.'), {
        code: 'ERR_DLOPEN_FAILED',
      });
    } as unknown as SqliteDatabaseConstructor;
    const error = await errorOf(SqliteStore.open(file, {}, Broken));
    expect(error.code).toBe('DRIVER_MISSING');
    expect(error.message).toContain('npm rebuild better-sqlite3');
  });

  it('loads the real driver once', async () => {
    expect(await loadSqliteDriver()).toBe(await loadSqliteDriver());
  });

  it('is imported by the sqlite store alone, and only lazily', () => {
    const src = path.resolve(import.meta.dirname, '../../src');
    for (const entry of fs.readdirSync(src, { recursive: true, encoding: 'utf8' })) {
      if (!entry.endsWith('.ts')) continue;
      const text = fs.readFileSync(path.join(src, entry), 'utf8');
      expect(/from\s+['"]better-sqlite3['"]|import\(\s*['"]better-sqlite3['"]|require\(\s*['"]better-sqlite3['"]/.test(text), entry).toBe(
        false,
      );
    }
  });
});

describe('migrations', () => {
  it('records each applied version once', async () => {
    await open();
    await open();
    const db = new Database(file, { readonly: true });
    const versions = db.prepare('SELECT version FROM cairn_migrations ORDER BY version').pluck().all();
    db.close();
    expect(versions).toEqual(MIGRATIONS.map((m) => m.version));
    expect(LATEST_SCHEMA_VERSION).toBe(MIGRATIONS.at(-1)?.version);
  });

  it('refuses a schema newer than the code, changing nothing', async () => {
    const store = await open();
    await store.createRun({ id: 'keep', name: 'n', data: { a: 1 } });
    await store.close();
    const db = new Database(file);
    db.prepare('INSERT INTO cairn_migrations (version, applied_at) VALUES (?, ?)').run(999, new Date().toISOString());
    db.close();
    const before = schemaOf(file);
    const error = await errorOf(SqliteStore.open(file));
    expect(error.code).toBe('SCHEMA_TOO_NEW');
    expect(error.message).toContain('999');
    expect(error.message).toContain(String(LATEST_SCHEMA_VERSION));
    expect(error.message).toContain('Upgrade cairnjs');
    expect(schemaOf(file)).toEqual(before);
    const raw = new Database(file, { readonly: true });
    expect(raw.prepare('SELECT count(*) FROM cairn_runs').pluck().get()).toBe(1);
    raw.close();
  });

  it('says STORE_BUSY, writing nothing, when the write lock is held past the retry bound', { timeout: 20_000 }, async () => {
    const store = await open({ transientRetryMs: 500 });
    await store.createRun({ id: 'r', name: 'n' });
    const other = new Database(file);
    other.exec('BEGIN IMMEDIATE');
    try {
      const started = Date.now();
      expect(await codeOf(store.appendCheckpoint('r', { state: 1 }))).toBe('STORE_BUSY');
      expect(Date.now() - started).toBeGreaterThanOrEqual(400); // tried again for about the bound, not once
    } finally {
      other.exec('ROLLBACK');
      other.close();
    }
    expect(await store.listCheckpoints('r')).toEqual([]);
    expect((await store.appendCheckpoint('r', { state: 2 })).seq).toBe(1);
  });

  it('applies only the missing migrations, in order, and rolls a failed one back whole', async () => {
    const Driver = await loadSqliteDriver();
    const db = openSqliteDatabase(Driver, file, 'FULL');
    try {
      expect(migrate(db, file)).toEqual({ from: 0, to: LATEST_SCHEMA_VERSION });
      const next = LATEST_SCHEMA_VERSION + 1;
      const broken = [...MIGRATIONS, { version: next, name: 'half', sql: 'CREATE TABLE cairn_half (x); SELECT * FROM no_such_table;' }];
      expect(() => migrate(db, file, broken)).toThrow(/no_such_table/);
      const tables = (): unknown[] => db.prepare("SELECT name FROM sqlite_master WHERE name = 'cairn_half'").pluck().all();
      expect(tables()).toEqual([]);
      const extra = [...MIGRATIONS, { version: next, name: 'extra', sql: 'CREATE TABLE cairn_extra (x)' }];
      expect(migrate(db, file, extra)).toEqual({ from: LATEST_SCHEMA_VERSION, to: next });
      expect(migrate(db, file, extra)).toEqual({ from: next, to: next });
      expect(db.prepare('SELECT max(version) FROM cairn_migrations').pluck().get()).toBe(next);
      expect(() => migrate(db, file)).toThrow(/Upgrade cairnjs/);
    } finally {
      db.close();
    }
  });

  it('migrates once when many stores open a new file at the same moment', async () => {
    const stores = await Promise.all(Array.from({ length: 10 }, () => open()));
    await stores[0]?.createRun({ id: 'r', name: 'n' });
    for (const store of stores) expect(await store.getRun('r')).toBeDefined();
  });
});

describe('coordination between store instances', () => {
  it('lets exactly one of 50 concurrent compare-and-set updates win each version', async () => {
    const a = await open();
    const b = await open();
    await a.createRun({ id: 'race', name: 'n', data: { writer: -1 } });
    for (let version = 1; version <= 10; version++) {
      const results = await Promise.allSettled(
        Array.from({ length: 50 }, (_, i) => (i % 2 ? b : a).updateRun('race', version, { data: { writer: i } })),
      );
      const winners = results.filter((r) => r.status === 'fulfilled');
      expect(winners).toHaveLength(1);
      for (const r of results) if (r.status === 'rejected') expect((r.reason as { code: string }).code).toBe('CONFLICT');
    }
    expect((await b.getRun('race'))?.version).toBe(11);
  });

  it('fences out a stale lease: nothing it writes lands', async () => {
    const a = await open();
    const b = await open();
    await a.createRun({ id: 'job', name: 'n' });
    await a.createRun({ id: 'other', name: 'n' });
    const old = await a.acquireLock('job', { owner: 'worker-a', ttlMs: 20 });
    await a.appendItems('job', 's', [done('k0', 0, 'ok')], { lease: old });
    await new Promise((resolve) => setTimeout(resolve, 50));
    const fresh = await b.acquireLock('job', { owner: 'worker-b', ttlMs: 10_000 });
    expect(fresh.epoch).toBe(old.epoch + 1);
    const at = new Date().toISOString();
    const sha = createHash('sha256').update('').digest('hex');
    const writes: (() => Promise<unknown>)[] = [
      () => a.appendCheckpoint('job', { state: 'late' }, { lease: old }),
      () => a.appendItems('job', 's', [done('k1', 1, 'late')], { lease: old }),
      () => a.recordArtifacts('job', [{ path: 'late.txt', size: 0, sha256: sha, createdAt: at }], { lease: old }),
      () => a.updateRun('job', 1, { status: 'failed' }, { lease: old }),
      () => a.renewLock(old),
      () => a.appendCheckpoint('other', { state: 'wrong run' }, { lease: fresh }),
    ];
    for (const write of writes) expect(await codeOf(write)).toBe('LEASE_LOST');
    expect(await b.listCheckpoints('job')).toEqual([]);
    expect(await b.listCheckpoints('other')).toEqual([]);
    expect((await collect(b.readItems('job', 's'))).map((e) => e.key)).toEqual(['k0']);
    expect(await b.listArtifacts('job')).toEqual([]);
    expect(await b.getRun('job')).toMatchObject({ status: 'pending', version: 1 });
    await a.releaseLock(old); // not the holder any more: no effect
    expect(await b.getLock('job')).toMatchObject({ owner: 'worker-b', epoch: fresh.epoch });
    await b.releaseLock(fresh);
    expect(await codeOf(b.appendCheckpoint('job', { state: 'released' }, { lease: fresh }))).toBe('LEASE_LOST');
  });

  it('keeps epochs growing when an import replaces a run', async () => {
    const store = await open();
    await store.createRun({ id: 'imp', name: 'n' });
    const first = await store.acquireLock('imp', { owner: 'w' });
    const records = await collect(store.exportRun('imp'));
    await store.importRun(records, { overwrite: true });
    expect(await store.getLock('imp')).toBeUndefined();
    expect(await codeOf(store.appendCheckpoint('imp', { state: 1 }, { lease: first }))).toBe('LEASE_LOST');
    expect((await store.acquireLock('imp', { owner: 'w' })).epoch).toBe(first.epoch + 1);
  });
});

describe('storage', () => {
  it('binds every value: SQL in names and data is just text', async () => {
    const store = await open();
    const name = "x'); DROP TABLE cairn_runs; --";
    await store.createRun({ id: 'inj', name, data: "'; DELETE FROM cairn_checkpoints; --" });
    expect((await store.listRuns({ name })).map((r) => r.id)).toEqual(['inj']);
    expect((await store.listRuns({ name: "' OR 1=1 --" })).length).toBe(0);
    await store.appendCheckpoint('inj', { state: 1, kind: "k' OR '1'='1", meta: { q: "'" } });
    expect((await store.latestCheckpoint('inj', { kind: "k' OR '1'='1" }))?.state).toBe(1);
  });

  it('deletes a run with its artifact folder, and leaves other runs alone', async () => {
    const store = await open();
    await store.createRun({ id: 'a', name: 'n' });
    await store.createRun({ id: 'b', name: 'n' });
    for (const id of ['a', 'b']) {
      await store.appendCheckpoint(id, { state: id });
      await store.appendItems(id, 's', [done('k', 0, id)]);
      await store.acquireLock(id, { owner: 'w' });
      fs.mkdirSync(store.artifactDir(id), { recursive: true });
      fs.writeFileSync(path.join(store.artifactDir(id), 'f.txt'), id);
    }
    expect(await store.deleteRun('a')).toBe(true);
    expect(fs.existsSync(store.artifactDir('a'))).toBe(false);
    expect(fs.existsSync(store.artifactDir('b'))).toBe(true);
    const raw = new Database(file, { readonly: true });
    for (const table of ['cairn_checkpoints', 'cairn_ledgers', 'cairn_leases']) {
      expect(raw.prepare(`SELECT count(*) FROM ${table} WHERE run_id = 'a'`).pluck().get(), table).toBe(0);
    }
    expect(raw.prepare('SELECT count(*) FROM cairn_items').pluck().get()).toBe(1);
    raw.close();
    expect((await collect(store.readItems('b', 's'))).map((e) => (e.status === 'done' ? e.result : e.error))).toEqual(['b']);
  });

  it('never lets a new ledger adopt the items of a ledger row deleted by hand with foreign keys off', async () => {
    const store = await open();
    await store.createRun({ id: 'a', name: 'n' });
    await store.appendItems('a', 's', [done('old-1', 0, 'old'), done('old-2', 1, 'old')]);
    const raw = new Database(file);
    raw.pragma('foreign_keys = OFF'); // as the sqlite3 shell has it: its items stay
    raw.prepare("DELETE FROM cairn_ledgers WHERE run_id = 'a'").run();
    raw.close();
    // the new ledger gets the deleted one's rowid (the highest): its items must not come with it
    await store.appendItems('a', 's', [done('new', 0, 'new')]);
    expect(await collect(store.readItems('a', 's'))).toEqual([done('new', 0, 'new')]);
  });

  it('exports a large ledger in records of at most 10,000 lines, and imports it back', async () => {
    const store = await open();
    await store.createRun({ id: 'big', name: 'n' });
    for (let b = 0; b < 5; b++) {
      await store.appendItems(
        'big',
        'seg',
        Array.from({ length: 5000 }, (_, i) => done(`k${b * 5000 + i}`, b * 5000 + i, b * 5000 + i)),
      );
    }
    await store.appendItems('big', 'empty', []);
    const records = await collect(store.exportRun('big'));
    const items = records.filter((r): r is Extract<ExportRecord, { type: 'items' }> => r.type === 'items');
    expect(items.map((r) => [r.stage, r.lines.length])).toEqual([
      ['seg', 10_000],
      ['seg', 10_000],
      ['seg', 5000],
      ['empty', 0],
    ]);
    const target = await open({}, path.join(dir, 'copy.db'));
    await target.importRun(records);
    expect(await target.listLedgers('big')).toEqual(['empty', 'seg']);
    let n = 0;
    for await (const entry of target.readItems('big', 'seg')) expect(entry.index).toBe(n++);
    expect(n).toBe(25_000);
  });

  it('does not hold the connection while a reader is paused between pages', async () => {
    const store = await open();
    await store.createRun({ id: 'r', name: 'n' });
    await store.appendItems(
      'r',
      's',
      Array.from({ length: 25_000 }, (_, i) => done(`k${i}`, i, i)),
    );
    let seen = 0;
    for await (const entry of store.readItems('r', 's')) {
      if (seen === 5) {
        await store.appendItems('r', 's', [done('late', 25_000, 'late')]);
        await store.appendCheckpoint('r', { state: 'meanwhile' });
        await store.updateRun('r', 1, { status: 'running' });
      }
      expect(entry.index).toBe(seen++);
    }
    expect(seen).toBe(25_001); // the page reads after the append see it
  });

  it('reports STORE_CLOSED to a reader when the store closes between pages', async () => {
    const store = await open();
    await store.createRun({ id: 'r', name: 'n' });
    await store.appendItems(
      'r',
      's',
      Array.from({ length: 15_000 }, (_, i) => done(`k${i}`, i, i)),
    );
    const read = async (): Promise<void> => {
      let n = 0;
      for await (const entry of store.readItems('r', 's')) {
        expect(entry.index).toBe(n++);
        if (n === 1) await store.close();
      }
    };
    expect(await codeOf(read())).toBe('STORE_CLOSED');
  });

  it('appends and reads back 100,000 items in order', async () => {
    const store = await open();
    await store.createRun({ id: 'perf', name: 'n' });
    const batch = 1000;
    for (let b = 0; b < 100; b++) {
      await store.appendItems(
        'perf',
        's',
        Array.from({ length: batch }, (_, i) => done(`seg-${b * batch + i}`, b * batch + i, { text: 'hello world', n: i })),
      );
    }
    let count = 0;
    for await (const entry of store.readItems('perf', 's')) {
      expect(entry.index).toBe(count);
      count += entry.status === 'done' ? 1 : 0;
    }
    expect(count).toBe(100_000); // speed is measured by `npm run bench`, not here
  });
});
