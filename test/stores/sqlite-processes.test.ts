/**
 * Real processes sharing one SQLite file. Node 20 cannot run TypeScript and tsx is not installed,
 * so the sources are transpiled once (typescript's `transpileModule`, no type check) into a temp
 * folder whose `node_modules` links to this repository's; the children are plain `node` processes.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import ts from 'typescript';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Child, killAll } from '../e2e/child.js';
import { MIGRATIONS } from '../../src/stores/sqlite/migrations.js';
import { SqliteStore } from '../../src/stores/sqlite/sqlite-store.js';
import type { Lease } from '../../src/stores/store.js';

const REPO = path.resolve(import.meta.dirname, '../..');

/** What each child does; the parent starts them all, then says go once every one is ready. */
const CHILD = `
import fs from 'node:fs';
import { migrate } from './src/stores/sqlite/migrations.js';
import { isBusy, loadSqliteDriver, openSqliteDatabase } from './src/stores/sqlite/sqlite-driver.js';
import { SqliteStore } from './src/stores/sqlite/sqlite-store.js';

const [mode, file, go, count] = process.argv.slice(2);
const Database = await loadSqliteDriver();
console.log('ready');
while (!fs.existsSync(go)) await new Promise((resolve) => setTimeout(resolve, 2));

if (mode === 'race') {
  // 1. every process migrates the new file at once; report the version each one found. A lock
  // held by another process is waited out with short tries, as SqliteStore.open does
  let from;
  for (const deadline = Date.now() + 30_000; ; ) {
    const db = openSqliteDatabase(Database, file, 'FULL');
    try {
      ({ from } = migrate(db, file));
      break;
    } catch (error) {
      if (!isBusy(error) || Date.now() > deadline) throw error;
      await new Promise((resolve) => setTimeout(resolve, 5 + Math.random() * 20));
    } finally {
      db.close();
    }
  }
  // 2. every process increments one counter with compare-and-set, retrying on CONFLICT
  const store = await SqliteStore.open(file);
  try {
    await store.createRun({ id: 'shared', name: 'race', data: { count: 0 } });
  } catch (error) {
    if (error.code !== 'ALREADY_EXISTS') throw error;
  }
  let conflicts = 0;
  for (let done = 0; done < Number(count); ) {
    const run = await store.getRun('shared');
    try {
      await store.updateRun('shared', run.version, { data: { count: run.data.count + 1 } });
      done++;
    } catch (error) {
      if (error.code !== 'CONFLICT') throw error;
      conflicts++;
    }
  }
  await store.close();
  console.log(JSON.stringify({ from, conflicts }));
} else if (mode === 'hold') {
  const store = await SqliteStore.open(file);
  const lease = await store.acquireLock('held', { owner: 'child-' + process.pid, ttlMs: 60_000 });
  await store.appendCheckpoint('held', { state: 'from the child' }, { lease });
  console.log(JSON.stringify(lease));
  setInterval(() => undefined, 1000); // hold the lease until killed
}
`;

let build = '';
let work = '';

function transpileSources(out: string): void {
  const src = path.join(REPO, 'src');
  for (const entry of fs.readdirSync(src, { recursive: true, encoding: 'utf8' })) {
    if (!entry.endsWith('.ts')) continue;
    const { outputText } = ts.transpileModule(fs.readFileSync(path.join(src, entry), 'utf8'), {
      compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022, verbatimModuleSyntax: true },
      fileName: entry,
    });
    const target = path.join(out, 'src', entry.replace(/\.ts$/, '.js'));
    fs.mkdirSync(path.dirname(target), { recursive: true });
    fs.writeFileSync(target, outputText);
  }
  fs.symlinkSync(path.join(REPO, 'node_modules'), path.join(out, 'node_modules'), 'dir');
  fs.writeFileSync(path.join(out, 'package.json'), '{ "type": "module" }');
  fs.writeFileSync(path.join(out, 'child.mjs'), CHILD);
}

/** A child running `child.mjs`: it prints a first line when ready, then its result. */
function startChild(...args: string[]): { child: Child; ready: Promise<unknown>; result: Promise<string>; exit: Promise<number | null> } {
  const child = new Child(path.join(build, 'child.mjs'), args);
  return { child, ready: child.line(0), result: child.line(1), exit: child.exit.then((e) => e.code) };
}

// a failed test leaves no child behind
afterEach(killAll);

beforeAll(() => {
  build = fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-sqlite-build-'));
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-sqlite-procs-'));
  transpileSources(build);
});

afterAll(() => {
  fs.rmSync(build, { recursive: true, force: true });
  fs.rmSync(work, { recursive: true, force: true });
});

describe('sqlite store across processes', () => {
  it('ten processes opening a new file migrate it exactly once, and lose no compare-and-set update', async () => {
    const file = path.join(work, 'race.db');
    const go = path.join(work, 'go');
    const perChild = 50;
    const children = Array.from({ length: 10 }, () => startChild('race', file, go, String(perChild)));
    await Promise.all(children.map((c) => c.ready));
    fs.writeFileSync(go, '');
    const results = (await Promise.all(children.map((c) => c.result))).map(
      (line) => JSON.parse(line) as { from: number; conflicts: number },
    );
    expect(await Promise.all(children.map((c) => c.exit))).toEqual(Array(10).fill(0));
    expect(results.filter((r) => r.from === 0)).toHaveLength(1); // one migrated, nine found it done
    const db = new Database(file, { readonly: true });
    expect(db.prepare('SELECT version FROM cairn_migrations ORDER BY version').pluck().all()).toEqual(MIGRATIONS.map((m) => m.version));
    db.close();
    const store = await SqliteStore.open(file);
    const run = await store.getRun('shared');
    await store.close();
    expect(run?.data).toEqual({ count: 10 * perChild });
    expect(run?.version).toBe(1 + 10 * perChild);
    console.log(`sqlite processes: ${results.reduce((n, r) => n + r.conflicts, 0)} conflicts retried`);
  });

  it('takes over the lease of a killed process and fences its writes out', async () => {
    const file = path.join(work, 'lease.db');
    const store = await SqliteStore.open(file);
    try {
      await store.createRun({ id: 'held', name: 'n' });
      const go = path.join(work, 'go-hold');
      fs.writeFileSync(go, '');
      const child = startChild('hold', file, go);
      const lease = JSON.parse(await child.result) as Lease;
      expect(lease).toMatchObject({ runId: 'held', epoch: 1, pid: child.child.pid });
      const locked = await store.acquireLock('held', { owner: 'parent' }).catch((e: unknown) => e as { code: string; message: string });
      expect(locked).toMatchObject({ code: 'RUN_LOCKED' });
      expect((locked as { message: string }).message).toContain(`child-${String(child.child.pid)}`);
      child.child.kill('SIGKILL');
      await child.exit;
      expect(await store.getLock('held')).toBeUndefined(); // its holder is gone
      const mine = await store.acquireLock('held', { owner: 'parent' });
      expect(mine.epoch).toBe(2);
      const late = await store.appendCheckpoint('held', { state: 'late' }, { lease }).catch((e: unknown) => e as { code: string });
      expect(late).toMatchObject({ code: 'LEASE_LOST' });
      expect((await store.listCheckpoints('held')).length).toBe(1);
      expect((await store.latestCheckpoint('held'))?.state).toBe('from the child');
    } finally {
      await store.close();
    }
  });
});
