/**
 * Every CLI command on a `postgres://` store, through the built binary: run (completed, waiting,
 * failed), list, show, validate, export, import into SQLite (compared field by field), resume,
 * cleanup --dry-run; exit codes as documented. The URL carries a password (the test server trusts
 * local connections, so it is never needed) that must never be printed, hints included.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { CleanupReport } from '../../src/cli/commands/cleanup.js';
import type { ValidateReport } from '../../src/cli/commands/validate.js';
import type { ExportSummary } from '../../src/transfer/export-run.js';
import type { ImportSummary } from '../../src/transfer/import-run.js';
import type { RunSummary } from '../../src/engine/types.js';
import { POSTGRES, dropSchema, freshSchema, postgresUrl } from '../postgres.js';
import { cairn, errorCode, json, snapshotRun, useTempDirs, withStore, type CliResult } from './store-ops-helpers.js';

const FIXTURES = path.resolve(import.meta.dirname, 'fixtures');
const INSPECT = path.join(FIXTURES, 'inspect.mjs');
const PASSWORD = 'pw-never-printed-7c1e';

describe.skipIf(!POSTGRES.reachable)('cairn on a Postgres store', () => {
  const tempDir = useTempDirs();
  const schemas: string[] = [];
  afterAll(async () => {
    for (const schema of schemas) await dropSchema(schema);
  });

  it(
    'runs, lists, shows, validates, exports to SQLite, resumes and cleans up, never printing the password',
    { timeout: 120_000 },
    async () => {
      const dir = tempDir();
      const schema = freshSchema('cairn_cli');
      schemas.push(schema);
      const withPassword = new URL(postgresUrl(schema, { artifacts: path.join(dir, 'artifacts') }));
      withPassword.password = PASSWORD;
      const url = withPassword.toString();
      const shown = (() => {
        const u = new URL(url);
        u.password = '';
        return u.toString();
      })();
      const outputs: CliResult[] = [];
      const run = async (args: string[]): Promise<CliResult> => {
        const result = await cairn([...args, '--store', url], { cwd: dir });
        outputs.push(result);
        return result;
      };

      // run: completed (0), waiting (3), failed (1)
      const completed = await run(['run', INSPECT, '--pipeline', 'report', '--input', '{"n":2}', '--json']);
      expect(completed.code, completed.stderr).toBe(0);
      const done = json<RunSummary>(completed);
      expect(done).toMatchObject({ status: 'completed', result: 139 });
      const waiting = await run(['run', INSPECT, '--pipeline', 'review']);
      expect(waiting.code, waiting.stderr).toBe(3);
      expect(waiting.stdout).toContain(`--store '${shown}'`);
      const failed = await run(['run', INSPECT, '--pipeline', 'report', '--input', '{"n":3,"fail":true}']);
      expect(failed.code).toBe(1);
      expect(failed.stdout).toContain(`--store '${shown}'`);

      // list, show, validate
      const list = json<RunSummary[]>(await run(['list', '--json']));
      expect(list.map((r) => r.status).sort()).toEqual(['completed', 'failed', 'waiting']);
      const waitingId = list.find((r) => r.status === 'waiting')!.id;
      const failedId = list.find((r) => r.status === 'failed')!.id;
      const show = await run(['show', failedId]);
      expect(show.code).toBe(0);
      expect(show.stdout).toContain('E_BAD_ITEM');
      const next = json<{ next: { command?: string } }>(await run(['show', waitingId, '--json'])).next;
      expect(next.command).toContain(`--store '${shown}'`);
      const valid = await run(['validate', '--all', '--json']);
      expect(valid.code).toBe(0);
      expect(json<ValidateReport>(valid)).toMatchObject({ valid: true });
      expect(json<ValidateReport>(valid).runs).toHaveLength(3);

      // export with artifacts, import into SQLite: the same run, field by field
      const file = path.join(dir, 'report.cairn');
      const exported = await run(['export', done.id, file, '--with-artifacts', '--json']);
      expect(exported.code, exported.stderr).toBe(0);
      expect(json<ExportSummary>(exported)).toMatchObject({
        runId: done.id,
        records: { ledgers: 1, items: 6, artifacts: 1 },
        artifactFiles: 1,
      });
      const sqlite = `sqlite:${path.join(dir, 'copy.db')}`;
      const imported = await cairn(['import', file, '--store', sqlite, '--json']);
      expect(imported.code, imported.stderr).toBe(0);
      expect(json<ImportSummary>(imported)).toMatchObject({ runId: done.id, status: 'completed', artifactFiles: 1 });
      const original = await withStore(url, (s) => snapshotRun(s, done.id));
      expect(original.problems).toEqual([]);
      expect(await withStore(sqlite, (s) => snapshotRun(s, done.id))).toEqual(original);
      expect(fs.readFileSync(file, 'utf8')).not.toContain(PASSWORD);

      // resume the waiting run, then cleanup: nothing is 7 days old; everything is a second old
      const resumed = await run(['resume', waitingId, '--input', 'approval=true', '--json']);
      expect(resumed.code, resumed.stderr).toBe(0);
      expect(json<RunSummary>(resumed)).toMatchObject({ status: 'completed', result: { report: 'approved ABC' } });
      const week = json<CleanupReport>(await run(['cleanup', '--dry-run', '--json']));
      expect(week.deleted).toEqual([]);
      expect(week.kept).toHaveLength(3);
      await new Promise((resolve) => setTimeout(resolve, 1100));
      const second = await run(['cleanup', '--dry-run', '--older-than', '1s', '--json']);
      expect(second.code).toBe(0);
      expect(
        json<CleanupReport>(second)
          .deleted.map((r) => r.id)
          .sort(),
      ).toEqual([done.id, failedId, waitingId].sort());
      expect(await withStore(url, (s) => s.listRunIds())).toHaveLength(3); // a dry run

      // bad URLs are usage errors (2), and still say nothing of the password
      const badSchema = await cairn(['list', '--store', `postgres://postgres:${PASSWORD}@127.0.0.1:5432/test?schema=Bad-Name`]);
      outputs.push(badSchema);
      expect(badSchema.code).toBe(2);
      expect(badSchema.stderr).toContain('INVALID_STORE_URL');
      const unreachable = await cairn(['list', '--store', `postgres://postgres:${PASSWORD}@127.0.0.1:1/test`]);
      outputs.push(unreachable);
      expect([unreachable.code, errorCode(unreachable)]).toEqual([1, 'STORE_UNAVAILABLE']); // a server down: try again later, not a bad URL

      for (const output of outputs) {
        expect(output.stdout).not.toContain(PASSWORD);
        expect(output.stderr).not.toContain(PASSWORD);
      }
    },
  );
});
