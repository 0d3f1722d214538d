/**
 * `cairn validate`, `cairn cleanup` and `cairn delete` through the built binary: problems named
 * with code, where and position; exit codes; cleanup by age, status and validity that never
 * deletes a run a live process holds (and does delete one whose holder died); hostile run ids.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import type { CleanupReport } from '../../src/cli/commands/cleanup.js';
import type { ValidateReport } from '../../src/cli/commands/validate.js';
import { openStore } from '../../src/index.js';
import { flipByte, reseal } from '../conformance/store-spec.js';
import { cairn, CLI, errorCode, json, listTree, makeRun, useTempDirs, withStore } from './store-ops-helpers.js';
import { mutateFileLine, mutateFileRun } from '../helpers.js';

const DAY = 86_400_000;
const INDEX = path.resolve(path.dirname(CLI), '..', 'index.js');

/** Replaces line `index` (0-based) of a file with `mutate(line)`. */

/** Moves a file-store run's `updatedAt` back by `days` (a correctly resealed record). */
function backdate(root: string, runId: string, days: number): void {
  const when = new Date(Date.now() - days * DAY).toISOString();
  mutateFileRun(root, runId, (line) => reseal(line, (body) => body.replace(/"updatedAt":"[^"]+"/, `"updatedAt":"${when}"`)));
}

/** Takes the run's lease in a child process that then exits without releasing it: a dead holder. */
function leaveStaleLease(url: string, runId: string): void {
  const script = `import { openStore } from ${JSON.stringify(INDEX)}; const s = await openStore(${JSON.stringify(url)}); await s.acquireLock(${JSON.stringify(runId)}, { owner: 'crashed worker', ttlMs: 3600000 }); process.exit(0);`;
  const result = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' });
  expect(result.stderr).toBe('');
}

describe('cairn validate', () => {
  const tempDir = useTempDirs();

  it('exits 0 for a valid run and 1 naming each problem (code, where, position) for a damaged one', async () => {
    const dir = tempDir();
    const root = path.join(dir, 'store');
    const url = `file:${root}`;
    await makeRun(url, 'good');
    await makeRun(url, 'bad');
    const ok = await cairn(['validate', 'good', '--store', url]);
    expect([ok.code, ok.stdout]).toEqual([0, '✓ good  valid\n1 run checked: 1 valid, 0 invalid\n']);
    expect(json<ValidateReport>(await cairn(['validate', 'good', '--store', url, '--json']))).toEqual({
      valid: true,
      runs: [{ id: 'good', valid: true, problems: [], recovered: [] }],
    });

    mutateFileLine(root, 'bad', 'checkpoints.jsonl', (_line, i) => i === 1, flipByte);
    mutateFileLine(root, 'bad', 'items/process.segments.jsonl', (_line, i) => i === 3, flipByte);
    fs.appendFileSync(path.join(root, 'bad', 'artifacts', 'out', 'report.txt'), '!');
    const bad = await cairn(['validate', 'bad', '--store', url, '--json']);
    expect(bad.code).toBe(1);
    const report = json<ValidateReport>(bad);
    expect(report.valid).toBe(false);
    expect(report.runs).toHaveLength(1);
    const problems = report.runs[0]!.problems;
    // all in force (one attempt, nothing read past them): untrustworthy; the damaged batch's items are missing from the ledger too
    expect(problems.map((p) => [p.code, p.where, p.position, p.recovered])).toEqual([
      ['CHECKPOINT_CORRUPT', 'checkpoints', 2, false],
      ['CHECKPOINT_CORRUPT', 'items/process.segments', expect.any(Number), false],
      ['ARTIFACT_MISMATCH', 'artifact:out/report.txt', null, false],
      ['LEDGER_SHORT', 'items/process.segments', null, false],
    ]);
    expect(report.runs[0]!.recovered).toEqual([]);
    for (const problem of problems) expect(problem.message.length).toBeGreaterThan(10);

    const text = await cairn(['validate', 'bad', '--store', url]);
    expect(text.code).toBe(1);
    expect(text.stdout).toContain('✗ bad  4 problems (untrustworthy)');
    expect(text.stdout).toContain('CHECKPOINT_CORRUPT at checkpoints #2: ');
    expect(text.stdout).toContain('ARTIFACT_MISMATCH at artifact:out/report.txt: ');
  });

  it('--all checks every run, one with a damaged run record included', async () => {
    const dir = tempDir();
    const root = path.join(dir, 'store');
    const url = `file:${root}`;
    const none = await cairn(['validate', '--all', '--store', url, '--json']);
    expect([none.code, errorCode(none)]).toEqual([2, 'NOT_FOUND']); // no store there: none is created
    expect(fs.existsSync(root)).toBe(false);
    fs.mkdirSync(root);
    const empty = await cairn(['validate', '--all', '--store', url, '--json']);
    expect([empty.code, json<ValidateReport>(empty)]).toEqual([0, { valid: true, runs: [] }]);
    await makeRun(url, 'a');
    await makeRun(url, 'b');
    mutateFileRun(root, 'b', flipByte);
    const result = await cairn(['validate', '--all', '--store', url, '--json']);
    expect(result.code).toBe(1);
    const report = json<ValidateReport>(result);
    expect(report.runs.map((r) => [r.id, r.valid])).toEqual([
      ['a', true],
      ['b', false],
    ]);
    expect(report.runs[1]!.problems[0]).toMatchObject({ code: 'CHECKPOINT_CORRUPT', where: 'run', position: null });
  });

  it('works on SQLite, and refuses unknown runs, missing or extra arguments and hostile ids with exit 2', async () => {
    const dir = tempDir();
    const sqlite = `sqlite:${dir}/runs.db`;
    await makeRun(sqlite, 'job');
    const store = path.join(dir, 'never');
    const [ok, unknown, none, both, ...hostile] = await Promise.all([
      cairn(['validate', 'job', '--store', sqlite]),
      cairn(['validate', 'nope', '--store', sqlite]),
      cairn(['validate', '--store', sqlite]),
      cairn(['validate', 'job', '--all', '--store', sqlite]),
      ...['../../etc', '/abs/path', 'y'.repeat(200)].map((id) => cairn(['validate', id, '--store', `file:${store}`])),
    ]);
    expect(ok.code).toBe(0);
    expect([unknown.code, errorCode(unknown)]).toEqual([2, 'NOT_FOUND']);
    expect([none.code, errorCode(none), both.code, errorCode(both)]).toEqual([2, 'INVALID_INPUT', 2, 'INVALID_INPUT']);
    for (const result of hostile) expect([result.code, errorCode(result)]).toEqual([2, 'INVALID_RUN_ID']);
    expect(listTree(store)).toBeUndefined();
  });
});

describe('cairn cleanup', () => {
  const tempDir = useTempDirs();

  /**
   * old-done (completed, 10 days), old-failed, old-held (lease of this live process), old-stale (dead
   * holder), old-waiting (waiting for a person), old-queued (pending for workers), fresh-done.
   */
  async function fixture() {
    const dir = tempDir();
    const root = path.join(dir, 'store');
    const url = `file:${root}`;
    await makeRun(url, 'old-done', 5);
    await makeRun(url, 'fresh-done', 5);
    const store = await openStore(url);
    await store.createRun({ id: 'old-failed', name: 'job', status: 'failed' });
    await store.createRun({ id: 'old-held', name: 'job', status: 'running' });
    await store.createRun({ id: 'old-stale', name: 'job', status: 'running' });
    await store.createRun({ id: 'old-waiting', name: 'job', status: 'waiting' });
    await store.createRun({ id: 'old-queued', name: 'job', status: 'pending' });
    const lease = await store.acquireLock('old-held', { owner: 'busy worker', ttlMs: 600_000 });
    leaveStaleLease(url, 'old-stale');
    for (const id of ['old-done', 'old-failed', 'old-held', 'old-stale', 'old-waiting', 'old-queued']) backdate(root, id, 10);
    return {
      root,
      url,
      release: async () => {
        await store.releaseLock(lease);
        await store.close();
      },
    };
  }

  const ids = (list: { id: string }[]): string[] => list.map((r) => r.id).sort();

  it('--dry-run lists what would go (older than 7d by default) and deletes nothing', async () => {
    const { url, release } = await fixture();
    try {
      const result = await cairn(['cleanup', '--dry-run', '--json', '--store', url]);
      expect(result.code).toBe(0);
      const report = json<CleanupReport>(result);
      expect(report).toMatchObject({ dryRun: true, olderThan: '7d', completedOnly: false, invalidOnly: false });
      expect(ids(report.deleted)).toEqual(['old-done', 'old-failed', 'old-stale']);
      expect(report.skipped).toEqual([
        expect.objectContaining({ id: 'old-held', holder: expect.objectContaining({ owner: 'busy worker', pid: process.pid }) }),
      ]);
      expect(report.kept).toEqual([
        expect.objectContaining({ id: 'fresh-done', reason: expect.stringContaining('newer than 7d') }),
        expect.objectContaining({ id: 'old-queued', reason: 'status pending; `--status pending` deletes such runs' }),
        expect.objectContaining({
          id: 'old-waiting',
          reason: 'waiting for input (a person may still answer); `--status waiting` deletes such runs',
        }),
      ]);
      expect(await withStore(url, (s) => s.listRunIds())).toEqual([
        'fresh-done',
        'old-done',
        'old-failed',
        'old-held',
        'old-queued',
        'old-stale',
        'old-waiting',
      ]);
      const text = await cairn(['cleanup', '--dry-run', '--store', url]);
      expect(text.stdout).toMatch(/^would delete {2}old-done {2}completed, updated 10d ago$/m);
      expect(text.stdout).toMatch(/^skipped +old-held {2}in use by busy worker \(pid \d+ on .+\)/m);
      expect(text.stdout).toContain('3 would delete, 1 skipped (in use), 3 kept');
    } finally {
      await release();
    }
  });

  it('deletes old runs, only completed ones with --completed, never one a live process holds', async () => {
    const { root, url, release } = await fixture();
    try {
      const completed = json<CleanupReport>(await cairn(['cleanup', '--completed', '--json', '--store', url]));
      expect(ids(completed.deleted)).toEqual(['old-done']);
      expect(completed.kept.find((r) => r.id === 'old-failed')?.reason).toBe('status failed, not completed');
      expect(fs.existsSync(path.join(root, 'old-done'))).toBe(false);

      const rest = await cairn(['cleanup', '--older-than', '24h', '--store', url]);
      expect(rest.code).toBe(0);
      expect(rest.stdout).toMatch(/^deleted {2}old-failed {2}failed, updated 10d ago$/m);
      expect(rest.stdout).toMatch(/^deleted {2}old-stale {2}running, updated 10d ago$/m);
      expect(rest.stdout).toMatch(/^skipped +old-held {2}in use by busy worker/m);
      expect(rest.stdout).toMatch(/^kept +fresh-done {2}updated \d+s ago, newer than 24h$/m);
      expect(rest.stdout).toMatch(/^kept +old-waiting {2}waiting for input/m);
      expect(await withStore(url, (s) => s.listRunIds())).toEqual(['fresh-done', 'old-held', 'old-queued', 'old-waiting']);

      // asked by name: the week-old approval goes
      const waiting = json<CleanupReport>(await cairn(['cleanup', '--status', 'waiting', '--json', '--store', url]));
      expect(ids(waiting.deleted)).toEqual(['old-waiting']);
      expect(waiting.statuses).toEqual(['waiting']);
      expect(await withStore(url, (s) => s.listRunIds())).toEqual(['fresh-done', 'old-held', 'old-queued']);
      const unknown = await cairn(['cleanup', '--status', 'done', '--store', url]);
      expect([unknown.code, errorCode(unknown)]).toEqual([2, 'INVALID_INPUT']);
    } finally {
      await release();
    }
    const bad = await cairn(['cleanup', '--older-than', 'soon', '--store', `file:${root}-never`]);
    expect([bad.code, errorCode(bad)]).toEqual([2, 'INVALID_INPUT']);
    expect(fs.existsSync(`${root}-never`)).toBe(false);
  });

  it('--invalid deletes runs that fail validation, of any age unless --older-than is given', async () => {
    const dir = tempDir();
    const root = path.join(dir, 'store');
    const url = `file:${root}`;
    for (const id of ['fine', 'torn', 'no-record']) await makeRun(url, id, 5);
    mutateFileLine(root, 'torn', 'checkpoints.jsonl', (_line, i) => i === 0, flipByte);
    mutateFileRun(root, 'no-record', flipByte);

    const aged = json<CleanupReport>(await cairn(['cleanup', '--invalid', '--older-than', '1d', '--json', '--store', url]));
    expect(aged.deleted).toEqual([]);
    expect(aged.kept.map((r) => [r.id, r.reason.split(' ')[0]])).toEqual([
      ['fine', 'updated'],
      ['no-record', 'updated'], // its damaged record is read back from the line before it
      ['torn', 'updated'],
    ]);

    const result = await cairn(['cleanup', '--invalid', '--json', '--store', url]);
    const report = json<CleanupReport>(result);
    expect(report).toMatchObject({ olderThan: null, cutoff: null, invalidOnly: true });
    expect(ids(report.deleted)).toEqual(['no-record', 'torn']);
    expect(report.deleted.find((r) => r.id === 'torn')?.reason).toContain('invalid: 1 problem (CHECKPOINT_CORRUPT at checkpoints)');
    expect(report.kept).toEqual([expect.objectContaining({ id: 'fine', reason: 'valid' })]);
    expect(await withStore(url, (s) => s.listRunIds())).toEqual(['fine']);
  });
});

describe('cairn delete', () => {
  const tempDir = useTempDirs();

  it('deletes a run and its files; unknown runs are NOT_FOUND (exit 2), held ones RUN_LOCKED (exit 1)', async () => {
    const dir = tempDir();
    const root = path.join(dir, 'store');
    const url = `file:${root}`;
    await makeRun(url, 'a', 5);
    await makeRun(url, 'b', 5);
    const deleted = await cairn(['delete', 'a', '--store', url, '--json']);
    expect([deleted.code, json<{ id: string; deleted: boolean }>(deleted)]).toEqual([0, { id: 'a', deleted: true }]);
    expect(fs.existsSync(path.join(root, 'a'))).toBe(false);
    const again = await cairn(['delete', 'a', '--store', url]);
    expect([again.code, errorCode(again)]).toEqual([2, 'NOT_FOUND']);

    const store = await openStore(url);
    try {
      const lease = await store.acquireLock('b', { owner: 'busy worker' });
      const locked = await cairn(['delete', 'b', '--store', url]);
      expect([locked.code, errorCode(locked)]).toEqual([1, 'RUN_LOCKED']);
      expect(locked.stderr).toContain('busy worker');
      expect(await store.getRun('b')).toBeDefined();
      await store.releaseLock(lease);
    } finally {
      await store.close();
    }
    leaveStaleLease(url, 'b'); // a holder that died does not keep a run
    const text = await cairn(['delete', 'b', '--store', url]);
    expect([text.code, text.stdout]).toEqual([0, 'deleted run b\n']);
    expect(listTree(root)).toEqual([]);
  });

  it('deletes from SQLite, artifact files included', async () => {
    const dir = tempDir();
    const sqlite = `sqlite:${dir}/runs.db`;
    await makeRun(sqlite, 'job', 5);
    const artifacts = await withStore(sqlite, async (s) => s.artifactDir('job'));
    expect(fs.existsSync(artifacts)).toBe(true);
    expect((await cairn(['delete', 'job', '--store', sqlite])).code).toBe(0);
    expect(fs.existsSync(artifacts)).toBe(false);
    expect(await withStore(sqlite, (s) => s.listRunIds())).toEqual([]);
  });

  it('refuses hostile run ids with INVALID_RUN_ID and creates nothing', async () => {
    const dir = tempDir();
    const store = path.join(dir, 'store');
    // a NUL byte cannot travel in argv (the OS refuses it); import covers NUL in ids read from a file
    const hostile = ['../../etc', '/abs/path', 'z'.repeat(200), '..', 'a/../../b', '.hidden'];
    const results = await Promise.all(hostile.map((id) => cairn(['delete', id, '--store', `file:${store}`])));
    for (const [i, result] of results.entries())
      expect([hostile[i], result.code, errorCode(result)]).toEqual([hostile[i], 2, 'INVALID_RUN_ID']);
    expect(listTree(dir)).toEqual([]);
  });
});
