/**
 * Records a run left without its run record (removed by hand, the way `sqlite3` or `psql` can),
 * through the built binary on SQLite and Postgres: `run` refuses the id with LEFTOVER_RECORDS
 * instead of adopting them, `validate --all` reports them (exit 1), `cleanup --invalid` and
 * `delete` remove them, and the id then runs afresh.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { CleanupReport } from '../../src/cli/commands/cleanup.js';
import type { ValidateReport } from '../../src/cli/commands/validate.js';
import type { RunSummary } from '../../src/engine/types.js';
import { POSTGRES, dropSchema, freshSchema, postgresUrl } from '../postgres.js';
import { removeRunRecord } from '../remove-run-record.js';
import { cairn, errorCode, json, makeRun, useTempDirs, withStore } from './store-ops-helpers.js';

const HELLO = path.resolve(import.meta.dirname, 'fixtures', 'hello.mjs');

const schemas: string[] = [];
afterAll(async () => {
  for (const schema of schemas) await dropSchema(schema);
});

const STORES: { name: string; url: (dir: string) => string }[] = [
  { name: 'file', url: (dir) => `file:${path.join(dir, 'runs')}` },
  { name: 'sqlite', url: (dir) => `sqlite:${path.join(dir, 'runs.db')}` },
  ...(POSTGRES.reachable
    ? [
        {
          name: 'postgres',
          url: (dir: string) => {
            const schema = freshSchema('cairn_cli_leftovers');
            schemas.push(schema);
            return postgresUrl(schema, { artifacts: path.join(dir, 'artifacts') });
          },
        },
      ]
    : []),
];

describe.each(STORES)('leftover records on $name', ({ url: urlIn }) => {
  const tempDir = useTempDirs();

  it(
    'run refuses the id (exit 1, LEFTOVER_RECORDS), validate --all reports it, cleanup --invalid removes it',
    { timeout: 60_000 },
    async () => {
      const dir = tempDir();
      const url = urlIn(dir);
      for (const id of ['kept', 'orphan-a', 'orphan-b']) await makeRun(url, id, 5);
      const artifacts = await withStore(url, async (s) => s.artifactDir('orphan-a'));
      expect(fs.existsSync(artifacts)).toBe(true);
      await removeRunRecord(url, 'orphan-a');
      await removeRunRecord(url, 'orphan-b');

      const refused = await cairn(['run', HELLO, '--run-id', 'orphan-a', '--store', url], { cwd: dir });
      expect([refused.code, errorCode(refused)]).toEqual([1, 'LEFTOVER_RECORDS']);
      expect(refused.stderr).toContain('orphan-a');
      expect(refused.stderr).toContain('cairn delete orphan-a');

      // listed, never hidden: the run, and the leftovers with what is wrong (they are not runs)
      const listed = json<(RunSummary | { id: string; problem: { code: string } })[]>(await cairn(['list', '--json', '--store', url]));
      expect(listed.map((r) => [r.id, 'problem' in r && r.problem ? r.problem.code : 'run'])).toEqual([
        ['kept', 'run'],
        ['orphan-a', 'LEFTOVER_RECORDS'],
        ['orphan-b', 'LEFTOVER_RECORDS'],
      ]);

      const all = await cairn(['validate', '--all', '--store', url, '--json']);
      expect(all.code).toBe(1);
      const report = json<ValidateReport>(all);
      expect(report.valid).toBe(false);
      expect(report.runs.map((r) => [r.id, r.valid, r.problems.map((p) => [p.code, p.where, p.position])])).toEqual([
        ['kept', true, []],
        ['orphan-a', false, [['LEFTOVER_RECORDS', 'run', null]]],
        ['orphan-b', false, [['LEFTOVER_RECORDS', 'run', null]]],
      ]);
      expect(report.runs[1]!.problems[0]!.message).toMatch(/^Run orphan-a has no run record, but .*\d+ checkpoints/);
      const one = await cairn(['validate', 'orphan-a', '--store', url]);
      expect(one.code).toBe(1);
      expect(one.stdout).toContain('✗ orphan-a  1 problem');
      expect(one.stdout).toContain('LEFTOVER_RECORDS at run: Run orphan-a has no run record');

      const dry = json<CleanupReport>(await cairn(['cleanup', '--invalid', '--dry-run', '--json', '--store', url]));
      expect(dry.deleted.map((r) => r.id)).toEqual(['orphan-a', 'orphan-b']);
      expect(dry.deleted[0]).toMatchObject({ status: null, updatedAt: null, reason: 'invalid: 1 problem (LEFTOVER_RECORDS at run)' });
      expect(dry.kept).toEqual([expect.objectContaining({ id: 'kept', reason: 'valid' })]);
      expect(await withStore(url, (s) => s.listRunIds())).toEqual(['kept', 'orphan-a', 'orphan-b']);

      const aged = json<CleanupReport>(await cairn(['cleanup', '--invalid', '--older-than', '1d', '--json', '--store', url]));
      expect(aged.deleted).toEqual([]);
      expect(aged.kept.find((r) => r.id === 'orphan-a')?.reason).toContain('age unknown (damaged or missing run record)');

      const cleaned = await cairn(['cleanup', '--invalid', '--json', '--store', url]);
      expect(cleaned.code).toBe(0);
      expect(json<CleanupReport>(cleaned).deleted.map((r) => r.id)).toEqual(['orphan-a', 'orphan-b']);
      expect(await withStore(url, (s) => s.listRunIds())).toEqual(['kept']);
      expect(fs.existsSync(artifacts)).toBe(false);
      const clean = await cairn(['validate', '--all', '--store', url, '--json']);
      expect([clean.code, json<ValidateReport>(clean).runs.map((r) => r.id)]).toEqual([0, ['kept']]);

      const fresh = await cairn(['run', HELLO, '--run-id', 'orphan-a', '--store', url, '--json'], { cwd: dir });
      expect(fresh.code, fresh.stderr).toBe(0);
      expect(json<RunSummary>(fresh)).toMatchObject({ id: 'orphan-a', status: 'completed', result: { greeting: 'hello world from mjs' } });
    },
  );

  it('delete removes them (exit 0), and then knows the id no more (NOT_FOUND, exit 2)', { timeout: 60_000 }, async () => {
    const dir = tempDir();
    const url = urlIn(dir);
    await makeRun(url, 'orphan', 5);
    await removeRunRecord(url, 'orphan');
    const deleted = await cairn(['delete', 'orphan', '--store', url, '--json']);
    expect([deleted.code, json<{ id: string; deleted: boolean }>(deleted)]).toEqual([0, { id: 'orphan', deleted: true }]);
    expect(await withStore(url, (s) => s.listRunIds())).toEqual([]);
    const again = await cairn(['delete', 'orphan', '--store', url]);
    expect([again.code, errorCode(again)]).toEqual([2, 'NOT_FOUND']);
  });
});
