/**
 * Real processes sharing one Postgres schema, running the built code (`npm test` builds `dist/`
 * first): ten processes opening a fresh schema at once apply each migration exactly once; a
 * process killed while it holds a lease has it taken over at once on this host, and its lease
 * fences nothing in any more.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Child, killAll } from '../e2e/child.js';
import { MIGRATIONS } from '../../src/stores/postgres/migrations.js';
import { PostgresStore } from '../../src/stores/postgres/postgres-store.js';
import type { Lease } from '../../src/stores/store.js';
import { POSTGRES, dropSchema, freshSchema, postgresUrl, withClient } from '../postgres.js';

const DIST = path.resolve(import.meta.dirname, '../../dist/src');

/** What each child does; the parent starts them all, then says go once every one is ready. */
const CHILD = `
import fs from 'node:fs';
import { pathToFileURL } from 'node:url';
const [dist, mode, url, go] = process.argv.slice(2);
const load = (file) => import(pathToFileURL(dist + '/' + file).href);
const { migrate } = await load('stores/postgres/migrations.js');
const { loadPgDriver, parsePostgresUrl } = await load('stores/postgres/postgres-driver.js');
const { openStore } = await load('stores/open-store.js');
const { Pool } = await loadPgDriver();
console.log('ready');
while (!fs.existsSync(go)) await new Promise((resolve) => setTimeout(resolve, 2));
if (mode === 'migrate') {
  // the migration itself, to report what each process found; then the whole open path
  const location = parsePostgresUrl(url);
  const pool = new Pool({ connectionString: location.connectionString, max: 1 });
  const { from, to } = await migrate(pool, location.schema);
  await pool.end();
  const store = await openStore(url);
  await store.createRun({ id: 'child-' + process.pid, name: 'migrated' });
  await store.close();
  console.log(JSON.stringify({ from, to }));
} else if (mode === 'hold') {
  const store = await openStore(url);
  const lease = await store.acquireLock('held', { owner: 'child-' + process.pid, ttlMs: 600_000 });
  await store.appendCheckpoint('held', { state: 'from the child' }, { lease });
  console.log(JSON.stringify(lease));
  setInterval(() => undefined, 1000); // hold the lease until killed
}
`;

let work = '';

/** A child running `child.mjs`: it prints a first line when ready, then its result. */
function startChild(...args: string[]): { child: Child; ready: Promise<unknown>; result: Promise<string>; exit: Promise<number | null> } {
  const child = new Child(path.join(work, 'child.mjs'), [DIST, ...args]);
  return { child, ready: child.line(0), result: child.line(1), exit: child.exit.then((e) => e.code) };
}

// a failed test leaves no child behind
afterEach(killAll);

describe.skipIf(!POSTGRES.reachable)('Postgres store across processes', () => {
  const schemas: string[] = [];
  let failed = false;

  beforeAll(() => {
    if (!fs.existsSync(path.join(DIST, 'stores', 'postgres', 'postgres-store.js'))) {
      throw new Error(`${DIST} has no Postgres store: run npm run build first (npm test does)`);
    }
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-pg-procs-'));
    fs.writeFileSync(path.join(work, 'child.mjs'), CHILD);
  });
  afterAll(async () => {
    if (failed) return console.error(`kept schemas ${schemas.join(', ')} and ${work} for inspection`);
    for (const schema of schemas) await dropSchema(schema);
    fs.rmSync(work, { recursive: true, force: true });
  });

  it('ten processes opening a fresh schema at once apply each migration exactly once', async () => {
    const schema = freshSchema('cairn_mig');
    schemas.push(schema);
    const url = postgresUrl(schema, { artifacts: path.join(work, 'artifacts') });
    const go = path.join(work, 'go-migrate');
    const children = Array.from({ length: 10 }, () => startChild('migrate', url, go));
    try {
      await Promise.all(children.map((c) => c.ready));
      fs.writeFileSync(go, '');
      const results = (await Promise.all(children.map((c) => c.result))).map((line) => JSON.parse(line) as { from: number; to: number });
      expect(await Promise.all(children.map((c) => c.exit))).toEqual(Array(10).fill(0));
      const latest = Math.max(...MIGRATIONS.map((m) => m.version));
      expect(results.filter((r) => r.from === 0)).toHaveLength(1); // one migrated, nine found it done
      expect(results.every((r) => r.to === latest)).toBe(true);
      const rows = await withClient(async (c) => ({
        migrations: (
          await c.query(`SELECT version, count(*)::int AS n FROM "${schema}".schema_migrations GROUP BY version ORDER BY version`)
        ).rows,
        runs: (await c.query(`SELECT count(*)::int AS n FROM "${schema}".runs`)).rows[0] as { n: number },
      }));
      expect(rows.migrations).toEqual(MIGRATIONS.map((m) => ({ version: m.version, n: 1 })));
      expect(rows.runs.n).toBe(10); // every process opened the store and wrote through it
    } catch (error) {
      failed = true;
      throw error;
    } finally {
      for (const child of children) child.child.kill('SIGKILL');
    }
  });

  it('takes over at once the lease of a process killed on this host, and fences its writes out', async () => {
    const schema = freshSchema('cairn_hold');
    schemas.push(schema);
    const url = postgresUrl(schema, { artifacts: path.join(work, 'artifacts') });
    const store = await PostgresStore.open(url);
    try {
      await store.createRun({ id: 'held', name: 'n' });
      const go = path.join(work, 'go-hold');
      fs.writeFileSync(go, '');
      const child = startChild('hold', url, go);
      const lease = JSON.parse(await child.result) as Lease;
      expect(lease).toMatchObject({ runId: 'held', epoch: 1, pid: child.child.pid });
      const locked = await store.acquireLock('held', { owner: 'parent' }).catch((e: unknown) => e as { code: string; message: string });
      expect(locked).toMatchObject({ code: 'RUN_LOCKED' });
      expect((locked as { message: string }).message).toContain(`child-${String(child.child.pid)}`);
      child.child.kill('SIGKILL');
      await child.exit;
      expect(await store.getLock('held')).toBeUndefined(); // its holder is gone, though its lease runs for ten minutes
      const mine = await store.acquireLock('held', { owner: 'parent' });
      expect(mine.epoch).toBe(2);
      expect(await store.appendCheckpoint('held', { state: 'late' }, { lease }).catch((e: unknown) => e)).toMatchObject({
        code: 'LEASE_LOST',
      });
      expect((await store.listCheckpoints('held')).length).toBe(1);
      expect((await store.latestCheckpoint('held'))?.state).toBe('from the child');
    } catch (error) {
      failed = true;
      throw error;
    } finally {
      await store.close();
    }
  });
});
