/**
 * Format 1 → 2 of the file store (docs/file-store-format.md): a store written by cairn 0.1
 * (test/fixtures/file-store-v1/store, made by the old code: see its README) is read, resumed and
 * migrated by today's code. Every test works on a copy of the fixture; the checked-in copy is
 * never written.
 *
 * What is checked: each run reads back exactly what the old code read from it (expected.json,
 * written by the old code when the fixture was made) and validates clean, also through the built
 * `cairn validate --all`; reading writes nothing; the completed run returns its stored result with
 * no stage run; the interrupted pipeline redoes only its uncommitted items; the waiting workflow
 * completes with its approval; the CheckpointManager workflow never reuses a deleted seq; the
 * workflow killed while it held the old mutex (zeros ahead of its log) resumes after its last
 * step. A run a new holder writes to is migrated: one new sealed segment `seg-<epoch>` that
 * trusts every old log whole, a lease epoch above the old lock.json's, the old files byte for byte
 * as they were; a second resume reads it all back, and its export imports into a fresh store.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { append, Cairn, CheckpointManager, END, pipeline, workflow } from '../../src/index.js';
import type { ExportRecord, Store } from '../../src/stores/store.js';
import { cairn as cli, json, snapshotRun, withStore } from '../cli/store-ops-helpers.js';
import {
  COUNTER_INPUT,
  COUNTER_STEPS,
  fixtureDefinitions,
  itemResult,
  LEDGER_INPUT,
  ledgerItems,
  MANAGER_DELETED,
  managerState,
  REVIEW_INPUT,
  RUN_IDS,
  sha,
  type DefinitionApi,
  type DefinitionHooks,
} from '../fixtures/file-store-v1/defs.js';

const FIXTURE = path.resolve(import.meta.dirname, '..', 'fixtures', 'file-store-v1');
const FIXTURE_STORE = path.join(FIXTURE, 'store');

interface RunRead {
  run: Record<string, unknown> & { data: Record<string, unknown> };
  checkpoints: { seq: number; kind: string; state: unknown }[];
  latest: number | null;
  ledgers: Record<string, { key: string; index: number; status: string; attempt: number; result?: unknown }[]>;
  artifacts: { path: string; size: number; sha256: string }[];
  problems: unknown[];
}

/** What the old code read back from each run when the fixture was made. */
const expected = JSON.parse(fs.readFileSync(path.join(FIXTURE, 'expected.json'), 'utf8')) as { runs: Record<string, RunRead> };

const api: DefinitionApi = { pipeline, workflow, END, append };

let temps: string[] = [];
afterEach((context) => {
  if (context.task.result?.state === 'fail') process.stderr.write(`kept for inspection: ${temps.join(', ')}\n`);
  else for (const dir of temps) fs.rmSync(dir, { recursive: true, force: true });
  temps = [];
});

function tempDir(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-format-v1-'));
  temps.push(dir);
  return dir;
}

/** A copy of the fixture store to work on. */
function copyFixture(): { root: string; url: string } {
  const root = path.join(tempDir(), 'store');
  fs.cpSync(FIXTURE_STORE, root, { recursive: true });
  return { root, url: `file:${root}` };
}

/** Every file under `dir`, relative path → bytes. */
function filesOf(dir: string): Map<string, Buffer> {
  const files = new Map<string, Buffer>();
  for (const rel of (fs.readdirSync(dir, { recursive: true }) as string[]).sort()) {
    const file = path.join(dir, rel);
    if (fs.lstatSync(file).isFile()) files.set(rel, fs.readFileSync(file));
  }
  return files;
}

/** The relative paths of every entry (files and folders) under `dir`. */
function treeOf(dir: string): string[] {
  return (fs.readdirSync(dir, { recursive: true }) as string[]).sort();
}

/** Every file the old code wrote for the run is still there, byte for byte. */
function expectOldFilesUnchanged(root: string, runId: string): void {
  const now = path.join(root, runId);
  for (const [rel, bytes] of filesOf(path.join(FIXTURE_STORE, runId))) {
    expect(fs.readFileSync(path.join(now, rel)).equals(bytes), `${runId}/${rel} unchanged`).toBe(true);
  }
}

/** The epoch of the run's old lock.json (0 when it has none). */
function oldEpoch(runId: string): number {
  const file = path.join(FIXTURE_STORE, runId, 'lock.json');
  return fs.existsSync(file) ? (JSON.parse(fs.readFileSync(file, 'utf8')) as { epoch: number }).epoch : 0;
}

/**
 * The run was migrated by one new holder: it wrote one segment, `seg-<old epoch + 1>`, whose seal
 * follows the old format's files ("legacy") and trusts each of its logs whole; the lease epoch went
 * on above the old lock.json's; the old files are as they were.
 */
function expectMigrated(root: string, runId: string): void {
  const dir = path.join(root, runId);
  const epoch = oldEpoch(runId) + 1;
  expect(
    fs.readdirSync(dir).filter((name) => name.startsWith('seg-')),
    `${runId}: one new segment`,
  ).toEqual([`seg-${epoch}`]);
  const sealLine = fs.readFileSync(path.join(dir, `seg-${epoch}`, 'seal.json'), 'utf8');
  const seal = (JSON.parse(sealLine) as { rec: { t: string; run: string; seg: number; prev: unknown; trusted: Record<string, number> } })
    .rec;
  const oldLogs = Object.fromEntries(
    [...filesOf(path.join(FIXTURE_STORE, runId))].filter(([rel]) => rel.endsWith('.jsonl')).map(([rel, bytes]) => [rel, bytes.length]),
  );
  expect(seal).toMatchObject({ t: 'seal', run: runId, seg: epoch, prev: 'legacy', trusted: oldLogs });
  const epochs = fs.readdirSync(path.join(dir, 'lease')).map((name) => Number(name.replace(/\.json$/, '')));
  expect(Math.min(...epochs)).toBeGreaterThan(oldEpoch(runId));
  expectOldFilesUnchanged(root, runId);
}

/** Everything the store reads back of a run, in the shape of expected.json. */
async function readRun(store: Store, runId: string): Promise<RunRead> {
  const { run, checkpoints, ledgers, artifacts, problems } = await snapshotRun(store, runId);
  const read = { run, checkpoints, latest: (await store.latestCheckpoint(runId))?.seq ?? null, ledgers, artifacts, problems };
  return JSON.parse(JSON.stringify(read)) as RunRead; // as expected.json holds it
}

/** A Cairn on `url` with the fixture's definitions, and what they did. */
function engine(url: string): { cairn: Cairn; steps: string[]; items: string[]; defs: ReturnType<typeof fixtureDefinitions> } {
  const steps: string[] = [];
  const items: string[] = [];
  const hooks: DefinitionHooks = {
    onItem: (key) => items.push(key),
    onStep: (name) => steps.push(name),
    onTick: (n) => steps.push(`tick ${n}`),
  };
  const defs = fixtureDefinitions(api, hooks);
  const cairn = new Cairn({ store: url, handleSignals: false, definitions: [defs.ledger, defs.review, defs.counter] });
  return { cairn, steps, items, defs };
}

/** The result of `ledger` on LEDGER_INPUT, computed here. */
function ledgerResult(): { lines: number; sha256: string; report: string } {
  const results = ledgerItems(LEDGER_INPUT).map(itemResult);
  return { lines: results.length, sha256: sha(results.map((r, i) => `${i} ${r}\n`).join('')), report: 'out/report.txt' };
}

/** Resumes every run that is not done, as the tests below do one by one: all of them are then migrated. */
async function resumeAll(url: string): Promise<void> {
  const { cairn, defs } = engine(url);
  try {
    expect((await cairn.run(defs.ledger, LEDGER_INPUT, { runId: RUN_IDS.interrupted })).status).toBe('completed');
    expect((await cairn.resume(RUN_IDS.waiting, { inputs: { approval: true } })).status).toBe('completed');
    expect((await cairn.run(defs.counter, COUNTER_INPUT, { runId: RUN_IDS.counter })).status).toBe('completed');
  } finally {
    await cairn.close();
  }
  const manager = new CheckpointManager({ store: url });
  try {
    await manager.create(RUN_IDS.manager, managerState(6));
  } finally {
    await manager.close();
  }
}

describe('file store format 1 (cairn 0.1) read, resumed and migrated by format 2', () => {
  it('the fixture is what its README says', () => {
    expect(Object.keys(expected.runs).sort()).toEqual(Object.values(RUN_IDS).sort());
    for (const runId of Object.values(RUN_IDS)) {
      const names = fs.readdirSync(path.join(FIXTURE_STORE, runId));
      expect(names, runId).toContain('run.json');
      expect(
        names.filter((name) => /^(seg-|lease$)/.test(name)),
        runId,
      ).toEqual([]);
    }
    // the counter workflow was killed while it held the run's mutex, with zeros written ahead of its log
    expect(fs.existsSync(path.join(FIXTURE_STORE, RUN_IDS.counter, '.mutex'))).toBe(true);
    const log = fs.readFileSync(path.join(FIXTURE_STORE, RUN_IDS.counter, 'checkpoints.jsonl'));
    const zeros = log.subarray(log.lastIndexOf(0x0a) + 1);
    expect(zeros.length).toBeGreaterThan(1000);
    expect(zeros.every((byte) => byte === 0)).toBe(true);
    // leases left by killed processes, never released
    for (const runId of [RUN_IDS.interrupted, RUN_IDS.counter]) {
      expect(JSON.parse(fs.readFileSync(path.join(FIXTURE_STORE, runId, 'lock.json'), 'utf8'))).not.toHaveProperty('released');
    }
    expect(oldEpoch(RUN_IDS.interrupted)).toBe(2);
    expect(oldEpoch(RUN_IDS.waiting)).toBe(2);
    // a deleted checkpoint's line was replaced by its tombstone in place
    const manager = fs
      .readFileSync(path.join(FIXTURE_STORE, RUN_IDS.manager, 'checkpoints.jsonl'), 'utf8')
      .trimEnd()
      .split('\n');
    expect(manager.map((line) => /"t":"(cp|cp-del)"/.exec(line)?.[1])).toEqual(['cp', 'cp-del', 'cp', 'cp', 'cp-del']);
  });

  it('lists every run and reads each back exactly as the old code did, validates clean, and writes nothing', async () => {
    const { root, url } = copyFixture();
    const before = treeOf(root);
    await withStore(url, async (store) => {
      expect(await store.listRunIds()).toEqual(Object.keys(expected.runs).sort());
      expect((await store.listRuns()).map((run) => run.id).sort()).toEqual(Object.keys(expected.runs).sort());
      for (const runId of Object.keys(expected.runs)) {
        expect(await readRun(store, runId), runId).toEqual(expected.runs[runId]);
        expect(await store.validateRun(runId)).toEqual([]);
        expect(await store.getLock(runId), `${runId}: its old lease is stale or released`).toBeUndefined();
      }
    });
    const validate = await cli(['validate', '--all', '--store', url, '--json']);
    expect(validate.code, validate.stderr).toBe(0);
    expect(json<{ valid: boolean; runs: { id: string; valid: boolean }[] }>(validate)).toEqual({
      valid: true,
      runs: Object.keys(expected.runs)
        .sort()
        .map((id) => ({ id, valid: true, problems: [], recovered: [] })),
    });
    expect(treeOf(root)).toEqual(before);
    for (const runId of Object.values(RUN_IDS)) expectOldFilesUnchanged(root, runId);
  });

  it('the completed run returns its stored result at once: no stage runs, nothing is written', async () => {
    const { root, url } = copyFixture();
    const { cairn, defs, steps, items } = engine(url);
    try {
      const run = await cairn.run(defs.ledger, LEDGER_INPUT, { runId: RUN_IDS.completed });
      expect(run.status).toBe('completed');
      expect(run.result).toEqual(expected.runs[RUN_IDS.completed]!.run.data.result);
      expect(run.result).toEqual(ledgerResult());
    } finally {
      await cairn.close();
    }
    expect(steps).toEqual([]);
    expect(items).toEqual([]);
    expect(treeOf(path.join(root, RUN_IDS.completed))).toEqual(treeOf(path.join(FIXTURE_STORE, RUN_IDS.completed)));
    expectOldFilesUnchanged(root, RUN_IDS.completed);
  });

  it('the interrupted pipeline resumes, redoes only the items that were not committed, and ends as the uninterrupted run', async () => {
    const { root, url } = copyFixture();
    const committed = expected.runs[RUN_IDS.interrupted]!.ledgers['process.work']!;
    const all = ledgerItems(LEDGER_INPUT).map((item) => item.key);
    const notCommitted = all.filter((key) => !committed.some((entry) => entry.key === key));
    expect(committed.length).toBeGreaterThan(100); // some batches of both killed processes were committed…
    expect(notCommitted.length).toBeGreaterThan(100); // …and many items were not

    const first = engine(url);
    try {
      const run = await first.cairn.run(first.defs.ledger, LEDGER_INPUT, { runId: RUN_IDS.interrupted });
      expect(run.status).toBe('completed');
      expect(run.result).toEqual(expected.runs[RUN_IDS.completed]!.run.data.result); // the run the old code completed uninterrupted
      expect(run.result).toEqual(ledgerResult());
    } finally {
      await first.cairn.close();
    }
    expect(first.steps).toEqual(['process', 'report']); // prepare completed before the kills
    expect(first.items.length).toBe(all.length - committed.length);
    expect([...first.items].sort()).toEqual(notCommitted);
    expectMigrated(root, RUN_IDS.interrupted);
    const report = fs.readFileSync(path.join(root, RUN_IDS.interrupted, 'artifacts', 'out', 'report.txt'));
    expect(report.equals(fs.readFileSync(path.join(FIXTURE_STORE, RUN_IDS.completed, 'artifacts', 'out', 'report.txt')))).toBe(true);

    // a second resume reads it all back: the old ledger's entries first, then the new segment's
    const second = engine(url);
    try {
      const again = await second.cairn.run(second.defs.ledger, LEDGER_INPUT, { runId: RUN_IDS.interrupted });
      expect(again.status).toBe('completed');
      expect(again.result).toEqual(ledgerResult());
    } finally {
      await second.cairn.close();
    }
    expect(second.steps).toEqual([]);
    expect(second.items).toEqual([]);
    await withStore(url, async (store) => {
      const read = await readRun(store, RUN_IDS.interrupted);
      expect(read.problems).toEqual([]);
      const ledger = read.ledgers['process.work']!;
      expect(ledger.slice(0, committed.length)).toEqual(committed);
      expect(ledger.slice(committed.length).map((entry) => entry.key)).toEqual(first.items);
      expect(ledger.map((entry) => entry.key).sort()).toEqual(all);
      expect(read.checkpoints.map((cp) => cp.seq)).toEqual([1, 2, 3]);
      expect(read.checkpoints[0]).toEqual(expected.runs[RUN_IDS.interrupted]!.checkpoints[0]);
      expect(read.artifacts.map((a) => a.path)).toEqual(['items.json', 'out/report.txt']);
    });
    expectMigrated(root, RUN_IDS.interrupted);
  });

  it('the waiting workflow resumes with its approval and completes', async () => {
    const { root, url } = copyFixture();
    const first = engine(url);
    try {
      const run = await first.cairn.resume(RUN_IDS.waiting, { inputs: { approval: true } });
      expect(run.status).toBe('completed');
      expect(run.result).toEqual({
        visits: ['fetch', 'enrich', 'score', 'confirm', 'report'],
        data: `ticket ${REVIEW_INPUT.ticket}`,
        extra: `ticket ${REVIEW_INPUT.ticket} (enriched)`,
        score: 22,
        approved: true,
        report: `approved: ticket ${REVIEW_INPUT.ticket} (enriched), score 22`,
      });
    } finally {
      await first.cairn.close();
    }
    expect(first.steps).toEqual(['confirm', 'report']); // the three steps before the wait are not run again
    expectMigrated(root, RUN_IDS.waiting);

    const second = engine(url);
    try {
      const again = await second.cairn.run(second.defs.review, REVIEW_INPUT, { runId: RUN_IDS.waiting });
      expect(again.status).toBe('completed');
      expect((again.result as { report: string }).report).toBe(`approved: ticket ${REVIEW_INPUT.ticket} (enriched), score 22`);
    } finally {
      await second.cairn.close();
    }
    expect(second.steps).toEqual([]);
    await withStore(url, async (store) => {
      const read = await readRun(store, RUN_IDS.waiting);
      expect(read.problems).toEqual([]);
      const old = expected.runs[RUN_IDS.waiting]!.checkpoints;
      expect(read.checkpoints.slice(0, old.length)).toEqual(old);
      expect(read.checkpoints.map((cp) => cp.seq)).toEqual(read.checkpoints.map((_, i) => i + 1));
      expect(read.checkpoints.length).toBeGreaterThan(old.length);
    });
    expectMigrated(root, RUN_IDS.waiting);
  });

  it('CheckpointManager reads the old checkpoints and never reuses a deleted seq', async () => {
    const { root, url } = copyFixture();
    const id = RUN_IDS.manager;
    const manager = new CheckpointManager({ store: url });
    try {
      expect((await manager.list(id)).map((ref) => ref.seq)).toEqual([1, 3, 4]);
      for (const seq of [1, 3, 4]) expect((await manager.load(`${id}:${seq}`)).state).toEqual(managerState(seq));
      for (const seq of MANAGER_DELETED) await expect(manager.load(`${id}:${seq}`)).rejects.toMatchObject({ code: 'NOT_FOUND' });
      expect((await manager.getMostRecent(id))?.seq).toBe(4); // 5, the newest, was deleted
      expect(fs.readdirSync(path.join(root, id))).toEqual(fs.readdirSync(path.join(FIXTURE_STORE, id))); // reads wrote nothing

      expect((await manager.create(id, managerState(6))).seq).toBe(6);
      expectMigrated(root, id);
      expect(await manager.delete(`${id}:3`)).toBe(true);
      expect((await manager.create(id, managerState(7))).seq).toBe(7);
      expect((await manager.list(id)).map((ref) => ref.seq)).toEqual([1, 4, 6, 7]);
    } finally {
      await manager.close();
    }
    expectMigrated(root, id); // the deletion went to the new segment as a tombstone: the old log is as it was

    const reopened = new CheckpointManager({ store: url });
    try {
      expect((await reopened.list(id)).map((ref) => ref.seq)).toEqual([1, 4, 6, 7]);
      expect((await reopened.getMostRecent(id))?.state).toEqual(managerState(7));
      expect((await reopened.create(id, managerState(8))).seq).toBe(8);
    } finally {
      await reopened.close();
    }
    await withStore(url, async (store) => expect(await store.validateRun(id)).toEqual([]));
  });

  it('the workflow killed while holding the old mutex, zeros ahead of its log, resumes after its last step', async () => {
    const { root, url } = copyFixture();
    const saved = expected.runs[RUN_IDS.counter]!.checkpoints.length;
    const first = engine(url);
    try {
      const run = await first.cairn.run(first.defs.counter, COUNTER_INPUT, { runId: RUN_IDS.counter });
      expect(run.status).toBe('completed');
      expect(run.result).toEqual({ n: COUNTER_STEPS, trail: Array.from({ length: COUNTER_STEPS }, (_, i) => i * i), done: true });
    } finally {
      await first.cairn.close();
    }
    // one checkpoint per step taken: the ticks after the last saved one are the only ones run again
    expect(first.steps).toEqual(Array.from({ length: COUNTER_STEPS - saved + 1 }, (_, i) => `tick ${saved - 1 + i}`));
    expectMigrated(root, RUN_IDS.counter); // .mutex and the zeros included

    const second = engine(url);
    try {
      expect((await second.cairn.run(second.defs.counter, COUNTER_INPUT, { runId: RUN_IDS.counter })).status).toBe('completed');
    } finally {
      await second.cairn.close();
    }
    expect(second.steps).toEqual([]);
    await withStore(url, async (store) => {
      const read = await readRun(store, RUN_IDS.counter);
      expect(read.problems).toEqual([]);
      expect(read.checkpoints.slice(0, saved)).toEqual(expected.runs[RUN_IDS.counter]!.checkpoints);
      expect(read.checkpoints.map((cp) => cp.seq)).toEqual(read.checkpoints.map((_, i) => i + 1));
    });
  });

  it('after migration every run validates (cairn validate --all exits 0), and each migrated run exports and imports into a fresh store', async () => {
    const { root, url } = copyFixture();
    await resumeAll(url);
    for (const runId of [RUN_IDS.interrupted, RUN_IDS.waiting, RUN_IDS.counter, RUN_IDS.manager]) expectMigrated(root, runId);
    const validate = await cli(['validate', '--all', '--store', url]);
    expect(validate.code, validate.stdout + validate.stderr).toBe(0);

    const fresh = path.join(tempDir(), 'fresh');
    for (const runId of Object.values(RUN_IDS)) {
      const records: ExportRecord[] = [];
      const source = await withStore(url, async (store) => {
        for await (const record of store.exportRun(runId)) records.push(record);
        return readRun(store, runId);
      });
      const imported = await withStore(`file:${fresh}`, async (store) => {
        await store.importRun(records);
        // the export carries the artifact manifest; the files go along as the CLI's export file carries them
        const artifacts = path.join(root, runId, 'artifacts');
        if (fs.existsSync(artifacts)) fs.cpSync(artifacts, store.artifactDir(runId), { recursive: true });
        return readRun(store, runId);
      }).catch((error: unknown) => {
        throw new Error(`${runId}: ${String(error)}`);
      });
      expect(imported, runId).toEqual({ ...source, problems: [] });
      expect(source.problems, runId).toEqual([]);
    }
    const freshValidate = await cli(['validate', '--all', '--store', `file:${fresh}`]);
    expect(freshValidate.code, freshValidate.stdout + freshValidate.stderr).toBe(0);
  });
});
