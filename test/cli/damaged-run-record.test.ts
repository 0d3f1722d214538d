/**
 * Issue 14, item 5: a damaged run record, walked through the built `cairn` binary the way a user
 * meets it. A run fails half-way through an items stage; its run record is then damaged in raw
 * storage (a flipped byte). `cairn list` lists the run, marked damaged; `cairn show` and
 * `cairn validate` name the run, the file or row and the command that repairs it; and the run
 * goes on without `--force-restart`, redoing no done item:
 *
 * - file store: the record is read back from the newest intact line of its run log, so `show`,
 *   `export`, `fork` and `resume` work (with the damage named), and the resume writes it whole.
 * - SQLite and Postgres: the row's columns give the header, the summary is lost; `resume`,
 *   `export` and `fork` refuse naming the run, the row and the next command, and `cairn run` with
 *   the same input rebuilds the summary from the intact checkpoints and ledger.
 *
 * A file-store run whose every run line is damaged cannot be read back: `list`, `show` and
 * `validate` report it with `cairn delete`, which removes it.
 */
import fs from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, describe, expect, it } from 'vitest';
import type { ValidateReport } from '../../src/cli/commands/validate.js';
import type { RunSummary } from '../../src/engine/types.js';
import { flipByte } from '../conformance/store-spec.js';
import { fileLogs, mutateFileRun } from '../helpers.js';
import { POSTGRES, dropSchema, freshSchema, postgresUrl, schemaOf, withClient } from '../postgres.js';
import { cairn, errorCode, json, useTempDirs, type CliResult } from './store-ops-helpers.js';

const FIXTURE = path.resolve(import.meta.dirname, 'fixtures', 'damaged-items.mjs');
const INPUT = '{"n":10}';

interface StoreKind {
  readonly name: 'file' | 'sqlite' | 'postgres';
  url(dir: string): string;
  /** Flips a byte of the run record in force, in raw storage. */
  damage(url: string, runId: string): Promise<void>;
  /** How messages name the damaged record. */
  readonly where: (runId: string) => string;
}

const schemas: string[] = [];
afterAll(async () => {
  for (const schema of schemas) await dropSchema(schema);
});

const STORES: StoreKind[] = [
  {
    name: 'file',
    url: (dir) => `file:${path.join(dir, 'store')}`,
    damage: (url, runId) => Promise.resolve(mutateFileRun(url.slice('file:'.length), runId, flipByte)),
    where: (runId) => `${runId}/seg-0/run.jsonl line`,
  },
  {
    name: 'sqlite',
    url: (dir) => `sqlite:${path.join(dir, 'cairn.db')}`,
    damage: (url, runId) => {
      const db = new Database(url.slice('sqlite:'.length));
      try {
        const line = db.prepare('SELECT line FROM cairn_runs WHERE id = ?').pluck().get(runId) as string;
        db.prepare('UPDATE cairn_runs SET line = ? WHERE id = ?').run(flipByte(line), runId);
      } finally {
        db.close();
      }
      return Promise.resolve();
    },
    where: (runId) => `row cairn_runs id=${runId}`,
  },
  ...(POSTGRES.reachable
    ? [
        {
          name: 'postgres' as const,
          url: (dir: string) => {
            const schema = freshSchema('cairn_damaged');
            schemas.push(schema);
            return postgresUrl(schema, { artifacts: path.join(dir, 'artifacts') });
          },
          damage: (url: string, runId: string) =>
            withClient(async (client) => {
              const table = `"${schemaOf(url)}".runs`;
              const { rows } = await client.query<{ line: string }>(`SELECT line FROM ${table} WHERE id = $1`, [runId]);
              await client.query(`UPDATE ${table} SET line = $2 WHERE id = $1`, [runId, flipByte(rows[0]!.line)]);
            }),
          where: (runId: string) => `.runs id=${runId}`,
        },
      ]
    : []),
];

/** Item numbers run so far, in order, read from the fixture's log. */
function itemsRun(log: string): number[] {
  if (!fs.existsSync(log)) return [];
  return fs
    .readFileSync(log, 'utf8')
    .split('\n')
    .filter((line) => line.startsWith('item '))
    .map((line) => Number(line.slice(5)));
}

describe.each(STORES)('a damaged run record on the $name store, through the cairn command', (kind) => {
  const tempDir = useTempDirs();

  it(
    'is listed, shown and validated with the run, where and the next command; the run goes on, redoing no done item',
    { timeout: 120_000 },
    async () => {
      const dir = tempDir();
      const url = kind.url(dir);
      const log = path.join(dir, 'items.log');
      const run = (args: string[], env: Record<string, string> = {}): Promise<CliResult> =>
        cairn([...args, '--store', url], { cwd: dir, env: { CAIRN_TEST_LOG: log, ...env } });

      const failed = await run(['run', FIXTURE, '--input', INPUT, '--json']);
      expect(failed.code, failed.stderr).toBe(1);
      const id = json<RunSummary>(failed).id;
      const firstPass = itemsRun(log);
      expect(firstPass.slice(0, 7)).toEqual([0, 1, 2, 3, 4, 5, 6]); // 0–5 done, 6 failed
      await kind.damage(url, id);

      // list: the run is listed, marked damaged (never "No runs.")
      const list = await run(['list']);
      expect(list.code, list.stderr).toBe(0);
      expect(list.stdout).not.toContain('No runs');
      expect(list.stdout).toContain(id);
      expect(list.stdout).toContain('damaged');
      expect(list.stdout).toContain(`cairn show ${id}`);
      const listed = json<RunSummary[]>(await run(['list', '--json']));
      expect(listed.map((s) => [s.id, s.problem?.code])).toEqual([[id, 'CHECKPOINT_CORRUPT']]);

      // show: the run, where its record is, and the command that repairs it
      const show = await run(['show', id]);
      expect(show.code, show.stderr).toBe(0);
      expect(show.stdout).toContain(id);
      expect(show.stdout).toContain('Damaged');
      expect(show.stdout).toContain(kind.where(id));
      const details = json<{ problem?: { where: string }; next: { command?: string } }>(await run(['show', id, '--json']));
      expect(details.problem?.where).toContain(kind.where(id));

      // validate: exit 1, the run, where, and the next command
      const validate = await run(['validate', id]);
      expect(validate.code).toBe(1);
      expect(validate.stdout).toContain(id);
      expect(validate.stdout).toContain('CHECKPOINT_CORRUPT at run');
      expect(validate.stdout).toContain(kind.where(id));
      const report = json<ValidateReport>(await run(['validate', '--all', '--json']));
      expect(report.runs.map((r) => [r.id, r.valid])).toEqual([[id, false]]);
      const runProblem = report.runs[0]!.problems.find((p) => p.where === 'run');
      expect(runProblem?.code).toBe('CHECKPOINT_CORRUPT');

      const exportFile = path.join(dir, 'run.cairn');
      if (kind.name === 'file') {
        // read back from an earlier intact line: everything works, the damage is named
        expect(details.next.command).toBe(`cairn resume ${id} --store ${url}`);
        expect(runProblem?.command).toBe(`cairn resume ${id} --store ${url}`);
        const exported = await run(['export', id, exportFile, '--json']);
        expect(exported.code, exported.stderr).toBe(0);
        expect(JSON.stringify(json<{ warnings: string[] }>(exported).warnings)).toContain('CHECKPOINT_CORRUPT at run');
        const fork = await run(['fork', id, '--from', '1', '--run-id', 'the-fork', '--json']);
        expect(fork.code, fork.stderr).toBe(0);
        expect(json<RunSummary>(fork).id).toBe('the-fork');

        const resumed = await run(['resume', id, '--json'], { CAIRN_TEST_FIXED: '1' });
        expect(resumed.code, resumed.stderr).toBe(0);
        const summary = json<RunSummary>(resumed);
        expect(summary).toMatchObject({ status: 'completed', result: 285 });
        expect(summary.history.some((h) => h.event === 'run:rebuilt' && h.message.includes(kind.where(id)))).toBe(true);
      } else {
        // the row's columns survive, the summary does not: what needs it refuses, naming the run, the row and the next command
        const rebuild = `cairn run <module> --input <json> --run-id ${id}`;
        expect(details.next.command).toContain(`--run-id ${id}`);
        expect(runProblem?.command).toContain(`--run-id ${id}`);
        for (const args of [
          ['resume', id],
          ['export', id, exportFile],
          ['fork', id, '--from', '1'],
        ]) {
          const refused = await run(args);
          expect(refused.code, `${args[0]}: ${refused.stdout}`).toBe(1);
          expect(errorCode(refused)).toBe('CHECKPOINT_CORRUPT');
          expect(refused.stderr).toContain(`run ${id}`);
          expect(refused.stderr).toContain(kind.where(id));
          expect(refused.stderr).toContain(rebuild);
        }
        expect(fs.existsSync(exportFile)).toBe(false);

        const again = await run(['run', FIXTURE, '--input', INPUT, '--json'], { CAIRN_TEST_FIXED: '1' });
        expect(again.code, again.stderr).toBe(0);
        const summary = json<RunSummary>(again);
        expect(summary).toMatchObject({ id, status: 'completed', result: 285 });
        expect(summary.history.some((h) => h.event === 'run:rebuilt' && h.message.includes(kind.where(id)))).toBe(true);
      }
      // no done item ran again: only the failed one and those after it
      const secondPass = itemsRun(log).slice(firstPass.length);
      expect(secondPass).toEqual([6, 7, 8, 9].filter((n) => n === 6 || !firstPass.includes(n)));

      // written whole again: valid, listed as it is
      const valid = await run(['validate', id]);
      expect(valid.code, valid.stdout).toBe(0);
      expect(json<RunSummary[]>(await run(['list', '--json'])).find((s) => s.id === id)?.problem).toBeUndefined();
    },
  );
});

/** The fixture run to completion on a file store in `dir`: its root, URL, a `cairn` on it, and its id. */
async function fileStoreRun(dir: string) {
  const root = path.join(dir, 'store');
  const url = `file:${root}`;
  const log = path.join(dir, 'items.log');
  const run = (args: string[]): Promise<CliResult> => cairn([...args, '--store', url], { cwd: dir, env: { CAIRN_TEST_LOG: log } });
  const id = json<RunSummary>(await run(['run', FIXTURE, '--input', INPUT, '--json'])).id;
  return { root, url, run, id };
}

describe('a file-store run whose every run line is damaged', () => {
  const tempDir = useTempDirs();

  it('is listed, shown and validated as damaged with cairn delete, which removes it', { timeout: 60_000 }, async () => {
    const { root, url, run, id } = await fileStoreRun(tempDir());
    for (const file of fileLogs(root, id, 'run.jsonl')) {
      const lines = fs.readFileSync(file, 'utf8').split('\n');
      fs.writeFileSync(file, lines.map((line) => (line.length > 0 ? flipByte(line) : line)).join('\n'));
    }

    const list = await run(['list']);
    expect(list.code).toBe(0);
    expect(list.stdout).toMatch(new RegExp(`${id}\\s+\\?\\s+\\?\\s+damaged`));
    expect(json<unknown[]>(await run(['list', '--json']))).toEqual([
      {
        id,
        problem: expect.objectContaining({
          code: 'CHECKPOINT_CORRUPT',
          where: expect.stringMatching(/seg-0\/run\.jsonl line \d+$/) as unknown,
        }) as unknown,
      },
    ]);
    const show = await run(['show', id]);
    expect(show.code).toBe(1);
    expect(show.stdout).toMatch(new RegExp(`${id}/seg-0/run\\.jsonl line \\d+`));
    expect(show.stdout).toContain(`cairn delete ${id} --store ${url}`);
    expect(show.stdout).toMatch(/Intact\n {2}\d+ of \d+ checkpoint/);
    const validate = await run(['validate', id]);
    expect(validate.code).toBe(1);
    expect(validate.stdout).toContain(`next: cairn delete ${id} --store ${url}`);
    const resume = await run(['resume', id]);
    expect(resume.code).toBe(1);
    expect(resume.stderr).toContain(`run ${id}`);
    expect(resume.stderr).toContain(`cairn delete ${id}`);

    const deleted = await run(['delete', id]);
    expect(deleted.code, deleted.stderr).toBe(0);
    expect((await run(['list'])).stdout).toContain('No runs.');
  });

  it('an emptied run log is listed and shown as damaged, never "No runs." or NOT_FOUND', { timeout: 60_000 }, async () => {
    const { root, url, run, id } = await fileStoreRun(tempDir());
    for (const file of fileLogs(root, id, 'run.jsonl')) fs.truncateSync(file, 0);

    const list = await run(['list']);
    expect(list.code).toBe(0);
    expect(list.stdout).toMatch(new RegExp(`${id}\\s+\\?\\s+\\?\\s+damaged`));
    expect(list.stdout).not.toContain('No runs.');
    const show = await run(['show', id]);
    expect(show.stdout).toContain('CHECKPOINT_CORRUPT');
    expect(show.stdout).toMatch(/Intact\n {2}\d+ of \d+ checkpoint/);
    expect(show.stdout).toContain(`cairn delete ${id} --store ${url}`);
  });
});
