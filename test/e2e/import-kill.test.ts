/**
 * Kill -9 during an import, for real, into file, SQLite and Postgres stores. An export with a few
 * MB of artifact files is imported by
 * - the built CLI (`cairn import`), SIGKILLed at varied moments: when its staging folder appears,
 *   when a share of the artifact bytes is staged, when its intent is written, after delays;
 * - a child driving the import through the library with a test hook, killed at each named point
 *   (staging created, a file staged, intent written, records imported, old artifact folder moved
 *   aside, new one placed), into an empty store and over an older version of the run.
 * After each kill a later command runs (a retry of the import, or `cairn cleanup`). Then nothing
 * an import stages is left anywhere (the store's folder, the database's folder, entries of
 * os.tmpdir() named after the killed pid), `cairn validate --all` exits 0, and the store holds the
 * run byte for byte as exported, or not at all (over an older version: the old run whole or the
 * new one whole, the new one as soon as its records were in).
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { isDeepStrictEqual } from 'node:util';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Cairn, exportRun, importRun, pipeline } from '../../src/index.js';
import type { ImportPoint } from '../../src/transfer/import-staging.js';
import { cairn, CLI, errorCode, snapshotRun, useTempDirs, withStore } from '../cli/store-ops-helpers.js';
import { dropSchema, freshSchema, POSTGRES, postgresUrl } from '../postgres.js';
import { Child, killAll } from './child.js';

const FIXTURE = path.join(import.meta.dirname, 'fixtures', 'import-child.mjs');
const RUN_ID = 'job';
/** Artifact files per run and their size: ~3.75 MB staged per import, ~5 MB of base64 in the export. */
const FILES = 3;
const FILE_BYTES = 1_250_000;
const STAGED_BYTES = FILES * FILE_BYTES;
/**
 * The named points are reached by a hook, whatever the sizes: their imports carry small files
 * (the kills of the CLI, timed on staged bytes, need the big ones to land mid-staging).
 */
const SMALL_FILE_BYTES = 20_000;
/** Kills of the CLI that must land per store. */
const CLI_KILLS = process.env.CAIRN_TORTURE === '1' ? 16 : 5;
/** Any one wait (a line, a folder, a byte count) gives up after this, saying what it waited for. */
const WAIT_MS = 60_000;
const ENV: NodeJS.ProcessEnv = { ...process.env, CAIRN_STORE: '', CAIRN_EXPORT_KEY: '', NO_COLOR: '1' };
/** What an import, or a store's own import, may leave behind if nothing cleans it. */
const LEFTOVER = /^\.cairn-import-|^\.import-|^\.trash-|\.import$|\.replaced$/;

const POINTS: readonly ImportPoint[] = [
  'staging-created',
  'file-staged',
  'intent-written',
  'records-imported',
  'old-moved-aside',
  'files-placed',
];
/** From here on the records are in the store: a later command finishes the import. */
const FIRST_POINT_WITH_RECORDS = POINTS.indexOf('records-imported');

/** When the CLI is killed: its staging folder appears · this share of the bytes is staged · its intent is written · this share of an uninterrupted import's time passed. */
type Trigger = { readonly staged: number } | { readonly intent: true } | { readonly afterShare: number };
const TRIGGERS: readonly Trigger[] = [
  { staged: 0 },
  { staged: 0.1 },
  { staged: 0.3 },
  { staged: 0.5 },
  { afterShare: 0.5 },
  { staged: 0.7 },
  { staged: 0.9 },
  { intent: true },
  { afterShare: 0.8 },
  { staged: 1 },
];

type Kind = 'file' | 'sqlite' | 'postgres';

interface Target {
  readonly url: string;
  /** Everything the store keeps on disk is under this folder (the database file and its folder included). */
  readonly dir: string;
  /** Where imports stage: the folder holding every run's artifact folder. */
  readonly area: string;
}

/** The run as exported: its snapshot through the store interface, and the export file. */
interface Version {
  readonly file: string;
  readonly snapshot: Record<string, unknown>;
}

interface Versions {
  readonly old: Version;
  readonly new: Version;
}

/** Runs `job` to completion in `url`: an item stage, then FILES artifact files of `bytes` random bytes each. */
async function makeJob(url: string, seed: number, bytes: number): Promise<void> {
  const definition = pipeline('import-kill-job', { version: '1' })
    .stage('numbers', (ctx) =>
      ctx.items(
        'numbers',
        Array.from({ length: 30 }, (_, i) => i),
        (n) => ({ n, seed }),
        { key: (n) => String(n) },
      ),
    )
    .stage('files', (ctx) => {
      const refs: Record<string, unknown> = {};
      for (let i = 0; i < FILES; i++) {
        const file = ctx.artifactPath(`out/part-${i}.bin`);
        fs.writeFileSync(file, randomBytes(bytes));
        refs[`part${i}`] = ctx.artifact(file);
      }
      return refs;
    });
  const engine = new Cairn({ store: url, handleSignals: false });
  try {
    const run = await engine.run(definition, { seed }, { runId: RUN_ID });
    if (run.status !== 'completed') throw new Error(`the source run ended ${run.status}`);
  } finally {
    await engine.close();
  }
}

/** The stored run, read whole (with its artifact bytes), or undefined when the store has none. */
function storedRun(url: string): Promise<Record<string, unknown> | undefined> {
  return withStore(url, async (store) => ((await store.getRun(RUN_ID)) ? snapshotRun(store, RUN_ID) : undefined));
}

/** Names under `dir`, recursively, that a staging folder or an import temp file left. */
function leftoversIn(dir: string): string[] {
  if (!fs.existsSync(dir)) return [];
  return (fs.readdirSync(dir, { recursive: true }) as string[]).filter((rel) => LEFTOVER.test(path.basename(rel))).sort();
}

/** Entries of os.tmpdir() not in `before` whose name holds `pid` as a number of its own. */
function tmpEntriesOf(pid: number, before: ReadonlySet<string>): string[] {
  const token = new RegExp(`(^|[^0-9])${pid}([^0-9]|$)`);
  return fs.readdirSync(os.tmpdir()).filter((name) => !before.has(name) && token.test(name));
}

/** Bytes under the staging folders' `files/` in `area` (temp files included); undefined while there is no staging folder. */
function stagedBytes(area: string): number | undefined {
  let names: string[];
  try {
    names = fs.readdirSync(area).filter((name) => name.startsWith('.cairn-import-'));
  } catch {
    return undefined;
  }
  if (names.length === 0) return undefined;
  let bytes = 0;
  for (const name of names) {
    const files = path.join(area, name, 'files');
    let entries: string[];
    try {
      entries = fs.readdirSync(files, { recursive: true }) as string[];
    } catch {
      continue; // not yet made, or moved into place
    }
    for (const rel of entries) bytes += fs.statSync(path.join(files, rel), { throwIfNoEntry: false })?.size ?? 0;
  }
  return bytes;
}

function hasIntent(area: string): boolean {
  try {
    return fs.readdirSync(area).some((name) => name.startsWith('.cairn-import-') && fs.existsSync(path.join(area, name, 'intent.json')));
  } catch {
    return false;
  }
}

/** Resolves with `promise`, or fails after `ms` naming what was waited for. */
async function within<T>(ms: number, what: string, promise: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`gave up after ${ms} ms waiting for ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Kills `child` when `trigger` holds; returns what was seen at the kill, or undefined when the
 * child ended first (a phase can be too short to catch: that import simply completed).
 */
async function killWhen(child: Child, area: string, trigger: Trigger, importMs: number): Promise<string | undefined> {
  if ('afterShare' in trigger) {
    await sleep(Math.round(trigger.afterShare * importMs));
    if (!child.isRunning) return undefined;
    child.kill('SIGKILL');
    return `${Math.round(trigger.afterShare * 100)}% of an import's time (staged: ${stagedBytes(area) ?? 'no folder'})`;
  }
  const what = 'intent' in trigger ? 'the intent to be written' : `${Math.round(trigger.staged * 100)}% of the artifact bytes to be staged`;
  const started = Date.now();
  while (child.isRunning) {
    if (Date.now() - started > WAIT_MS) throw new Error(`gave up after ${WAIT_MS} ms waiting for ${what}`);
    const staged = stagedBytes(area);
    const hit = 'intent' in trigger ? hasIntent(area) : staged !== undefined && staged >= trigger.staged * STAGED_BYTES;
    if (hit) {
      child.kill('SIGKILL');
      return `${what} (staged: ${staged ?? 'no folder'})`;
    }
    await sleep(1);
  }
  return undefined;
}

describe.each<Kind>(['file', 'sqlite', 'postgres'])('a killed import into a %s store', (kind) => {
  const tempDir = useTempDirs();
  const skip = kind === 'postgres' && !POSTGRES.reachable;
  /** The run's two versions as exported, with big artifact files, and with small ones. */
  let versions: Versions;
  let small: Versions;
  let schema: string | undefined;
  let sourceDir: string;

  beforeAll(async () => {
    if (skip) return;
    if (kind === 'postgres') schema = freshSchema('cairn_import_kill');
    sourceDir = fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-import-kill-source-'));
    const version = async (name: string, seed: number, bytes = FILE_BYTES): Promise<Version> => {
      const url = `file:${path.join(sourceDir, name)}`;
      await makeJob(url, seed, bytes);
      const file = path.join(sourceDir, `${name}.cairn`);
      const summary = await exportRun(url, RUN_ID, file, { withArtifacts: true, key: '' });
      expect(summary.artifactBytes).toBe(FILES * bytes);
      const snapshot = (await storedRun(url))!;
      expect(snapshot.problems).toEqual([]);
      return { file, snapshot };
    };
    versions = { old: await version('old', 1), new: await version('new', 2) };
    small = { old: await version('old-small', 1, SMALL_FILE_BYTES), new: await version('new-small', 2, SMALL_FILE_BYTES) };
  }, 120_000);

  afterAll(async () => {
    if (schema) await dropSchema(schema);
    if (sourceDir) fs.rmSync(sourceDir, { recursive: true, force: true });
  });

  afterEach(() => killAll());

  /** A fresh store for one import: empty, or holding the old version of the run (of `set`). */
  async function prepare(holdsOld: boolean, set: Versions = versions): Promise<Target> {
    const dir = tempDir();
    let target: Target;
    if (kind === 'file') target = { url: `file:${path.join(dir, 'store')}`, dir, area: path.join(dir, 'store') };
    else if (kind === 'sqlite') {
      fs.mkdirSync(path.join(dir, 'db'));
      target = { url: `sqlite:${path.join(dir, 'db', 'runs.db')}`, dir, area: path.join(dir, 'db', 'runs.db-artifacts') };
    } else {
      const artifacts = path.join(dir, 'artifacts');
      target = { url: postgresUrl(schema!, { artifacts }), dir, area: artifacts };
      await withStore(target.url, (store) => store.deleteRun(RUN_ID)); // one schema for every import of this suite
    }
    if (holdsOld) await importRun(target.url, set.old.file, { key: '' });
    return target;
  }

  /** Which version (of `set`) the store holds: 'none', 'old', 'new', or a description of what differs. */
  async function heldVersion(target: Target, set: Versions = versions): Promise<string> {
    let stored: Record<string, unknown> | undefined;
    try {
      stored = await storedRun(target.url);
    } catch (error) {
      return `a run that cannot be read whole: ${(error as Error).message}`; // e.g. an artifact file missing
    }
    if (stored === undefined) return 'none';
    if (isDeepStrictEqual(stored, set.new.snapshot)) return 'new';
    if (isDeepStrictEqual(stored, set.old.snapshot)) return 'old';
    const differs = Object.keys(stored).filter((key) => !isDeepStrictEqual(stored[key], set.new.snapshot[key]));
    return `a run that is neither version (differs from the new one in: ${differs.join(', ')}; problems: ${JSON.stringify(stored.problems)})`;
  }

  /** What must hold after the later command: nothing staged left anywhere, the store valid. */
  async function expectClean(target: Target, pid: number, tmpBefore: ReadonlySet<string>, context: string): Promise<void> {
    expect(leftoversIn(target.dir), `${context}: left in ${target.dir}`).toEqual([]);
    expect(tmpEntriesOf(pid, tmpBefore), `${context}: left in ${os.tmpdir()} by pid ${pid}`).toEqual([]);
    const validate = await cairn(['validate', '--all', '--json', '--store', target.url]);
    expect(validate.code, `${context}: cairn validate --all: ${validate.stdout}${validate.stderr}`).toBe(0);
  }

  it.skipIf(skip)(
    `cairn import, SIGKILLed at ${CLI_KILLS}+ moments, then retried or cleaned up: the run whole or absent, nothing staged left`,
    async () => {
      // one uninterrupted import: the happy path, and how long one takes here and now
      const warm = await prepare(false);
      const t0 = Date.now();
      const first = await cairn(['import', versions.new.file, '--store', warm.url, '--json']);
      const importMs = Date.now() - t0;
      expect(first.code, first.stderr).toBe(0);
      expect(await heldVersion(warm)).toBe('new');
      expect(leftoversIn(warm.dir)).toEqual([]);

      const landed: string[] = [];
      let attempts = 0;
      while (landed.length < CLI_KILLS) {
        if (attempts >= TRIGGERS.length * 3) {
          throw new Error(`only ${landed.length} of ${CLI_KILLS} kills landed in ${attempts} imports: ${landed.join('; ')}`);
        }
        const trigger = TRIGGERS[attempts % TRIGGERS.length]!;
        attempts += 1;
        const target = await prepare(false);
        const tmpBefore = new Set(fs.readdirSync(os.tmpdir()));
        const child = new Child(CLI, ['import', versions.new.file, '--store', target.url, '--json'], { env: ENV });
        const seen = await killWhen(child, target.area, trigger, importMs);
        const exit = await within(WAIT_MS, `cairn import (pid ${child.pid}) to exit`, child.exit);
        const context = `import ${attempts} (${seen ?? 'completed before the kill'})`;
        if (exit.signal === 'SIGKILL') landed.push(seen!);
        else expect(exit, `${context}: ${child.stderr}`).toEqual({ code: 0, signal: null });

        // the later command: a retry at once (the killed pid is dead: its staging is stale now), or cleanup
        if (attempts % 2 === 0) {
          const retry = await cairn(['import', versions.new.file, '--store', target.url, '--json']);
          if (retry.code !== 0) expect([retry.code, errorCode(retry)], `${context}: retry: ${retry.stderr}`).toEqual([2, 'ALREADY_EXISTS']);
          expect(await heldVersion(target), context).toBe('new');
        } else {
          const cleanup = await cairn(['cleanup', '--older-than', '3650d', '--store', target.url, '--json']);
          expect(cleanup.code, `${context}: cleanup: ${cleanup.stderr}`).toBe(0);
          expect(['none', 'new'], context).toContain(await heldVersion(target));
        }
        await expectClean(target, child.pid, tmpBefore, context);
      }
      expect(landed.length).toBeGreaterThanOrEqual(CLI_KILLS);
    },
    300_000,
  );

  it.skipIf(skip)(
    'an import killed at each named point, into an empty store and over an older run, is finished or undone by cairn cleanup',
    async () => {
      const reached: string[] = [];
      for (const overwrite of [false, true]) {
        for (const [index, point] of POINTS.entries()) {
          const target = await prepare(overwrite, small);
          const tmpBefore = new Set(fs.readdirSync(os.tmpdir()));
          const child = new Child(FIXTURE, [target.url, small.new.file, point, ...(overwrite ? ['--overwrite'] : [])], { env: ENV });
          const stopped = await within(
            WAIT_MS,
            `the import (pid ${child.pid}) to reach ${point} or end`,
            Promise.race([child.waitForLine('point ').then(() => true), child.exit.then(() => false)]),
          );
          const context = `${overwrite ? 'overwrite' : 'new run'}, killed at ${point}`;
          if (stopped) {
            child.kill('SIGKILL');
            expect((await within(WAIT_MS, `pid ${child.pid} to die`, child.exit)).signal).toBe('SIGKILL');
            reached.push(`${overwrite ? 'overwrite' : 'new'}:${point}`);
          } else {
            // only a store whose artifact folder is there to move aside passes that point
            expect(point, `${context}: ${child.lines.join(' | ')} ${child.stderr}`).toBe('old-moved-aside');
            expect(await child.exit).toEqual({ code: 0, signal: null });
          }
          if (stopped) expect(leftoversIn(target.dir).length, `${context}: the kill left its staging folder`).toBeGreaterThan(0);

          const cleanup = await cairn(['cleanup', '--older-than', '3650d', '--store', target.url, '--json']);
          expect(cleanup.code, `${context}: cleanup: ${cleanup.stderr}`).toBe(0);
          const expected = !stopped || index >= FIRST_POINT_WITH_RECORDS ? 'new' : overwrite ? 'old' : 'none';
          expect(await heldVersion(target, small), context).toBe(expected);
          await expectClean(target, child.pid, tmpBefore, context);
        }
      }
      // every point but the move aside is passed by every import
      for (const mode of ['new', 'overwrite']) {
        for (const point of POINTS.filter((p) => p !== 'old-moved-aside')) expect(reached).toContain(`${mode}:${point}`);
      }
    },
    300_000,
  );
});
