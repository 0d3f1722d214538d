/**
 * Issue 15, item 4: `cairn validate` tells damage a run recovered from (nothing read now depends on
 * it: exit 0, the problems listed as recovered) from untrustworthy problems (exit 1), and
 * `cairn cleanup --invalid` removes only untrustworthy runs, saying which problems made each one
 * invalid. Through the built binary, on the file store, SQLite and Postgres (when reachable):
 *
 * - a run fails half-way through an items stage; its run record in force, an item record of its
 *   ledger and the checkpoint of its first stage are damaged. The run is untrustworthy until it is
 *   run again (same input): it rebuilds its summary, skips the damaged records, redoes their work
 *   and completes. Then every problem is recovered: the damaged item batch (the last items call
 *   read past it and got through its list), the checkpoint (the completing attempt's plan ignored
 *   it), and on the file store the damaged run line (a later intact line is in force; SQL stores
 *   rewrite the row). Damage after that (an item record, the newest checkpoint) is in force:
 *   untrustworthy, and cleanup --invalid removes the run.
 * - a completed run whose ledger lost its last acknowledged batches (cut at a batch boundary: no
 *   damaged record shows it) is untrustworthy with `LEDGER_SHORT`.
 */
import fs from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, describe, expect, it } from 'vitest';
import type { CleanupReport } from '../../src/cli/commands/cleanup.js';
import type { ProblemView, ValidateReport } from '../../src/cli/commands/validate.js';
import type { RunSummary } from '../../src/engine/types.js';
import { flipByte } from '../conformance/store-spec.js';
import { fileLog, mutateFileLine, mutateFileRun } from '../helpers.js';
import { POSTGRES, dropSchema, freshSchema, postgresUrl, schemaOf, withClient } from '../postgres.js';
import { cairn, json, useTempDirs, withStore, type CliResult } from './store-ops-helpers.js';

const FIXTURE = path.resolve(import.meta.dirname, 'fixtures', 'damaged-items.mjs');
const INPUT = '{"n":10}';
const LEDGER = 'square.nums';

/** Raw-storage damage, the way a disk, a crash or a hand edit leaves it. */
interface StoreKind {
  readonly name: 'file' | 'sqlite' | 'postgres';
  url(dir: string): string;
  /** Flips a byte of the run record in force. */
  damageRun(url: string, runId: string): Promise<void>;
  /** Flips a byte of the first ledger record of the item with this key. */
  damageItem(url: string, runId: string, key: number): Promise<void>;
  /** Flips a byte of checkpoint `seq`. */
  damageCheckpoint(url: string, runId: string, seq: number): Promise<void>;
  /** Removes the last `count` acknowledged batches of the ledger (one item each here), whole. */
  dropLastItems(url: string, runId: string, count: number): Promise<void>;
}

const schemas: string[] = [];
afterAll(async () => {
  for (const schema of schemas) await dropSchema(schema);
});

const rootOf = (url: string): string => url.slice('file:'.length);

function withSqlite(url: string, fn: (db: Database.Database) => void): Promise<void> {
  const db = new Database(url.slice('sqlite:'.length));
  try {
    fn(db);
  } finally {
    db.close();
  }
  return Promise.resolve();
}

const ITEM_OF = (key: number): string => `%"key":"${key}"%`;

const STORES: StoreKind[] = [
  {
    name: 'file',
    url: (dir) => `file:${path.join(dir, 'store')}`,
    damageRun: (url, runId) => Promise.resolve(mutateFileRun(rootOf(url), runId, flipByte)),
    damageItem: (url, runId, key) =>
      Promise.resolve(mutateFileLine(rootOf(url), runId, `items/${LEDGER}.jsonl`, (line) => line.startsWith(`{"i":${key},`), flipByte)),
    damageCheckpoint: (url, runId, seq) =>
      Promise.resolve(mutateFileLine(rootOf(url), runId, 'checkpoints.jsonl', (line) => line.includes(`"seq":${seq},`), flipByte)),
    dropLastItems: (url, runId, count) => {
      // format 2: each batch ends with its end line; cut right after the end line `count` batches from the end
      const file = fileLog(rootOf(url), runId, `items/${LEDGER}.jsonl`);
      const lines = fs.readFileSync(file, 'utf8').split('\n').slice(0, -1);
      const ends = lines.flatMap((line, i) => (line.startsWith('{"fv":2,"t":"batch"') ? [i] : []));
      fs.writeFileSync(file, `${lines.slice(0, ends.at(-count - 1)! + 1).join('\n')}\n`);
      return Promise.resolve();
    },
  },
  {
    name: 'sqlite',
    url: (dir) => `sqlite:${path.join(dir, 'cairn.db')}`,
    damageRun: (url, runId) =>
      withSqlite(url, (db) => {
        const line = db.prepare('SELECT line FROM cairn_runs WHERE id = ?').pluck().get(runId) as string;
        db.prepare('UPDATE cairn_runs SET line = ? WHERE id = ?').run(flipByte(line), runId);
      }),
    damageItem: (url, runId, key) =>
      withSqlite(url, (db) => {
        const row = db
          .prepare(
            'SELECT i.id, i.line FROM cairn_items i JOIN cairn_ledgers l ON l.id = i.ledger_id WHERE l.run_id = ? AND l.stage = ? AND i.line LIKE ? ORDER BY i.id LIMIT 1',
          )
          .get(runId, LEDGER, ITEM_OF(key)) as { id: number; line: string };
        db.prepare('UPDATE cairn_items SET line = ? WHERE id = ?').run(flipByte(row.line), row.id);
      }),
    damageCheckpoint: (url, runId, seq) =>
      withSqlite(url, (db) => {
        const line = db.prepare('SELECT line FROM cairn_checkpoints WHERE run_id = ? AND seq = ?').pluck().get(runId, seq) as string;
        db.prepare('UPDATE cairn_checkpoints SET line = ? WHERE run_id = ? AND seq = ?').run(flipByte(line), runId, seq);
      }),
    dropLastItems: (url, runId, count) =>
      withSqlite(url, (db) => {
        db.prepare(
          'DELETE FROM cairn_items WHERE id IN (SELECT i.id FROM cairn_items i JOIN cairn_ledgers l ON l.id = i.ledger_id WHERE l.run_id = ? AND l.stage = ? ORDER BY i.id DESC LIMIT ?)',
        ).run(runId, LEDGER, count);
      }),
  },
  ...(POSTGRES.reachable
    ? [
        {
          name: 'postgres' as const,
          url: (dir: string) => {
            const schema = freshSchema('cairn_recovered');
            schemas.push(schema);
            return postgresUrl(schema, { artifacts: path.join(dir, 'artifacts') });
          },
          damageRun: (url: string, runId: string) =>
            withClient(async (client) => {
              const table = `"${schemaOf(url)}".runs`;
              const { rows } = await client.query<{ line: string }>(`SELECT line FROM ${table} WHERE id = $1`, [runId]);
              await client.query(`UPDATE ${table} SET line = $2 WHERE id = $1`, [runId, flipByte(rows[0]!.line)]);
            }),
          damageItem: (url: string, runId: string, key: number) =>
            withClient(async (client) => {
              const s = `"${schemaOf(url)}"`;
              const { rows } = await client.query<{ id: string; line: string }>(
                `SELECT i.id, i.line FROM ${s}.items i JOIN ${s}.ledgers l ON l.id = i.ledger_id
                 WHERE l.run_id = $1 AND l.stage = $2 AND i.line LIKE $3 ORDER BY i.id LIMIT 1`,
                [runId, LEDGER, ITEM_OF(key)],
              );
              await client.query(`UPDATE ${s}.items SET line = $2 WHERE id = $1`, [rows[0]!.id, flipByte(rows[0]!.line)]);
            }),
          damageCheckpoint: (url: string, runId: string, seq: number) =>
            withClient(async (client) => {
              const table = `"${schemaOf(url)}".checkpoints`;
              const { rows } = await client.query<{ line: string }>(`SELECT line FROM ${table} WHERE run_id = $1 AND seq = $2`, [
                runId,
                seq,
              ]);
              await client.query(`UPDATE ${table} SET line = $3 WHERE run_id = $1 AND seq = $2`, [runId, seq, flipByte(rows[0]!.line)]);
            }),
          dropLastItems: (url: string, runId: string, count: number) =>
            withClient(async (client) => {
              const s = `"${schemaOf(url)}"`;
              await client.query(
                `DELETE FROM ${s}.items WHERE id IN (SELECT i.id FROM ${s}.items i JOIN ${s}.ledgers l ON l.id = i.ledger_id
                 WHERE l.run_id = $1 AND l.stage = $2 ORDER BY i.id DESC LIMIT $3)`,
                [runId, LEDGER, count],
              );
            }),
        },
      ]
    : []),
];

/** `[code, where]` of each problem, to compare as a list. */
const named = (problems: readonly ProblemView[]): string[][] => problems.map((p) => [p.code, p.where]);

describe.each(STORES)('damage a run recovered from, and damage in force, on the $name store', (kind) => {
  const tempDir = useTempDirs();

  function setup() {
    const dir = tempDir();
    const url = kind.url(dir);
    const run = (args: string[], env: Record<string, string> = {}): Promise<CliResult> =>
      cairn([...args, '--store', url], { cwd: dir, env: { CAIRN_TEST_LOG: path.join(dir, 'items.log'), ...env } });
    return { url, run };
  }

  it(
    'recovered damage: validate exits 0 listing it as recovered, cleanup --invalid keeps the run; damage in force: exit 1, removed',
    { timeout: 120_000 },
    async () => {
      const { url, run } = setup();
      const failed = await run(['run', FIXTURE, '--input', INPUT, '--json']);
      expect(failed.code, failed.stderr).toBe(1); // items 0–5 done, 6 failed
      const id = json<RunSummary>(failed).id;
      await kind.damageItem(url, id, 3);
      await kind.damageCheckpoint(url, id, 1); // the completion of stage list
      await kind.damageRun(url, id);

      // before the run goes on: all of it is untrustworthy
      const before = await run(['validate', id, '--json']);
      expect(before.code).toBe(1);
      const untrustworthy = json<ValidateReport>(before).runs[0]!;
      expect(untrustworthy.valid).toBe(false);
      expect(named(untrustworthy.problems)).toEqual(
        expect.arrayContaining([
          ['CHECKPOINT_CORRUPT', 'run'],
          ['CHECKPOINT_CORRUPT', 'checkpoints'],
          ['CHECKPOINT_CORRUPT', `items/${LEDGER}`],
        ]),
      );
      expect(untrustworthy.recovered).toEqual([]);

      // run again with the same input: the summary is rebuilt, the damaged records skipped, their work redone
      const again = await run(['run', FIXTURE, '--input', INPUT, '--json'], { CAIRN_TEST_FIXED: '1' });
      expect(again.code, again.stderr).toBe(0);
      expect(json<RunSummary>(again)).toMatchObject({ id, status: 'completed', result: 285 });

      const after = await run(['validate', id, '--json']);
      expect(after.code, after.stdout).toBe(0);
      const report = json<ValidateReport>(after);
      expect(report.valid).toBe(true);
      const checked = report.runs[0]!;
      expect(checked).toMatchObject({ id, valid: true, problems: [] });
      expect(checked.recovered.map((p) => [p.code, p.where, p.recovered])).toEqual([
        // the file store keeps the damaged line in its run log, superseded; SQL stores rewrote the row
        ...(kind.name === 'file' ? [['CHECKPOINT_CORRUPT', 'run', true]] : []),
        ['CHECKPOINT_CORRUPT', 'checkpoints', true],
        ['CHECKPOINT_CORRUPT', `items/${LEDGER}`, true],
      ]);
      expect(checked.recovered.find((p) => p.where === 'checkpoints')?.position).toBe(1);
      for (const problem of checked.recovered) expect(problem.recoveredBy?.length).toBeGreaterThan(10);
      const text = await run(['validate', id]);
      expect(text.code).toBe(0);
      expect(text.stdout).toContain(`✓ ${id}  valid (${checked.recovered.length} problems damaged and recovered)`);
      expect(text.stdout).toContain('recovered  CHECKPOINT_CORRUPT at checkpoints #1');
      expect(text.stdout).toContain('Every problem found was recovered from');

      // cleanup --invalid keeps it, saying why
      const dry = json<CleanupReport>(await run(['cleanup', '--invalid', '--dry-run', '--json']));
      expect(dry.deleted).toEqual([]);
      expect(dry.kept).toEqual([
        expect.objectContaining({ id, reason: expect.stringMatching(/^valid \(\d problems damaged and recovered: /) }),
      ]);
      expect(dry.kept[0]!.recovered).toHaveLength(checked.recovered.length);
      const kept = await run(['cleanup', '--invalid', '--json']);
      expect(kept.code, kept.stderr).toBe(0);
      expect(json<CleanupReport>(kept).deleted).toEqual([]);
      expect(await withStore(url, (s) => s.listRunIds())).toEqual([id]);

      // damage after the run completed is in force: an item record and the newest checkpoint
      const newest = await withStore(url, async (s) =>
        Math.max(...(await s.listCheckpoints(id)).map((e) => (e.valid ? e.ref.seq : (e.seq ?? 0)))),
      );
      await kind.damageItem(url, id, 8);
      await kind.damageCheckpoint(url, id, newest);
      const broken = await run(['validate', '--all', '--json']);
      expect(broken.code).toBe(1);
      const invalid = json<ValidateReport>(broken).runs[0]!;
      expect(invalid.valid).toBe(false);
      // the ledger's damage grew past what the last items call read past: all of it is in force now
      expect(named(invalid.problems)).toEqual([
        ['CHECKPOINT_CORRUPT', 'checkpoints'],
        ['CHECKPOINT_CORRUPT', `items/${LEDGER}`],
        ['CHECKPOINT_CORRUPT', `items/${LEDGER}`],
        ['LEDGER_SHORT', `items/${LEDGER}`],
      ]);
      expect(invalid.problems[0]!.position).toBe(newest);
      expect(invalid.problems.at(-1)!.message).toContain('holds 9 done items');
      expect(invalid.problems.at(-1)!.message).toContain('records 10 done');
      // what was recovered before still is
      expect(named(invalid.recovered)).toEqual([
        ...(kind.name === 'file' ? [['CHECKPOINT_CORRUPT', 'run']] : []),
        ['CHECKPOINT_CORRUPT', 'checkpoints'],
      ]);

      const listed = await run(['cleanup', '--invalid', '--dry-run']);
      expect(listed.code).toBe(0);
      expect(listed.stdout).toMatch(new RegExp(`^would delete {2}${id} {2}completed, updated \\d+s ago; invalid: 4 problems \\(`, 'm'));
      expect(listed.stdout).toContain(`LEDGER_SHORT at items/${LEDGER}: `);
      const removed = json<CleanupReport>(await run(['cleanup', '--invalid', '--json']));
      expect(removed.deleted.map((r) => [r.id, named(r.problems ?? [])])).toEqual([[id, named(invalid.problems)]]);
      expect(await withStore(url, (s) => s.listRunIds())).toEqual([]);
    },
  );

  it(
    'a completed run whose ledger lost its last acknowledged batches: LEDGER_SHORT, exit 1, removed by cleanup --invalid',
    {
      timeout: 60_000,
    },
    async () => {
      const { url, run } = setup();
      const done = await run(['run', FIXTURE, '--input', INPUT, '--json'], { CAIRN_TEST_FIXED: '1' });
      expect(done.code, done.stderr).toBe(0);
      const id = json<RunSummary>(done).id;
      expect((await run(['validate', id])).code).toBe(0);
      await kind.dropLastItems(url, id, 3); // whole batches: no damaged record shows it

      const result = await run(['validate', id, '--json']);
      expect(result.code).toBe(1);
      const checked = json<ValidateReport>(result).runs[0]!;
      expect(checked).toMatchObject({ id, valid: false, recovered: [] });
      expect(checked.problems).toEqual([
        {
          code: 'LEDGER_SHORT',
          where: `items/${LEDGER}`,
          position: null,
          message: expect.stringContaining('holds 7 done items, but the run summary records 10 done') as unknown,
          recovered: false,
        },
      ]);
      const text = await run(['validate', id]);
      expect(text.stdout).toContain(`✗ ${id}  1 problem (untrustworthy)`);
      expect(text.stdout).toContain(`LEDGER_SHORT at items/${LEDGER}: The ledger of items nums of stage square holds 7 done items`);

      const removed = json<CleanupReport>(await run(['cleanup', '--invalid', '--json']));
      expect(removed.deleted).toEqual([
        expect.objectContaining({
          id,
          reason: expect.stringContaining(`invalid: 1 problem (LEDGER_SHORT at items/${LEDGER})`),
          problems: checked.problems,
        }),
      ]);
      expect(await withStore(url, (s) => s.listRunIds())).toEqual([]);
    },
  );
});
