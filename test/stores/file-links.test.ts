/**
 * Links planted inside a file store root are never followed (DESIGN guarantee 5): a link at every
 * kind of path of a run folder (logs, the seal, ledgers, folders, the lease, artifacts, the cancel
 * request) and among the root's children. Every public operation either works without going
 * through the link or is refused with `UNSAFE_PATH` naming it, and nothing outside the root
 * changes: every file of an "outside" folder (the links' targets, an /etc/hostname stand-in) is
 * hashed before and after.
 */
import { execFile, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { isCairnError } from '../../src/core/errors.js';
import { Cairn } from '../../src/engine/cairn.js';
import { pipeline } from '../../src/engine/pipeline.js';
import { FileStore } from '../../src/stores/file/file-store.js';
import { exportRun } from '../../src/transfer/export-run.js';
import { collect, done } from '../helpers.js';

const RUN = 'r';
const CLI = path.resolve(import.meta.dirname, '..', '..', 'dist', 'src', 'cli', 'main.js');

/** Runs the built `cairn` binary. */
function cli(args: readonly string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { env: { ...process.env, CAIRN_STORE: '', NO_COLOR: '1' } }, (error, stdout, stderr) => {
      resolve({ code: error ? (typeof error.code === 'number' ? error.code : null) : 0, stdout, stderr });
    });
  });
}

/** A pid that belonged to a process which has exited. */
function deadPid(): number {
  const child = spawnSync(process.execPath, ['-e', '']);
  if (typeof child.pid !== 'number') throw new Error('could not spawn');
  return child.pid;
}

const ARTIFACT = Buffer.from('the artifact a stage wrote\n');

/** Every entry under `dir` (recursively, links not followed): kind and content hash, or link target. */
function snapshot(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (current: string): void => {
    for (const name of fs.readdirSync(current).sort()) {
      const file = path.join(current, name);
      const rel = path.relative(dir, file);
      const stat = fs.lstatSync(file);
      if (stat.isSymbolicLink()) out[rel] = `link -> ${fs.readlinkSync(file)}`;
      else if (stat.isDirectory()) {
        out[rel] = 'folder';
        walk(file);
      } else out[rel] = `file ${createHash('sha256').update(fs.readFileSync(file)).digest('hex')}`;
    }
  };
  walk(dir);
  return out;
}

/** What `fn` gave (summed up by `show`), or the error's code (`UNSAFE_PATH @<path named, relative to the root>`). */
async function outcome<T>(root: string, fn: () => Promise<T>, show: (value: T) => string = () => 'ok'): Promise<string> {
  try {
    return show(await fn());
  } catch (error) {
    if (isCairnError(error, 'UNSAFE_PATH')) {
      const named = String((error.context as { path?: unknown }).path);
      expect(error.message).toContain(named);
      return `UNSAFE_PATH @${path.relative(root, named)}`;
    }
    return (error as { code?: string }).code ?? `uncoded: ${(error as Error).message}`;
  }
}

describe('file store: links inside the root are never followed', () => {
  let parent = '';
  let root = '';
  let outside = '';
  let store: FileStore;
  let before: Record<string, string> = {};

  beforeEach(async () => {
    parent = fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-file-links-'));
    root = path.join(parent, 'root');
    outside = path.join(parent, 'outside');
    fs.mkdirSync(outside);
    fs.writeFileSync(path.join(outside, 'hostname'), 'a-precious-host\n');
    fs.mkdirSync(path.join(outside, 'folder'));
    fs.writeFileSync(path.join(outside, 'folder', 'keep.txt'), 'keep me\n');
    store = await FileStore.open(root);
  });

  afterEach(async (context) => {
    await store.close();
    if (context.task.result?.state === 'fail') console.error(`kept ${parent} for inspection`);
    else fs.rmSync(parent, { recursive: true, force: true });
  });

  const runDir = (rel = ''): string => path.join(root, RUN, rel);

  /** A run with a checkpoint, a ledger, a recorded artifact file and a released lease. */
  async function makeRun(): Promise<void> {
    await store.createRun({ id: RUN, name: 'links' });
    await store.updateRun(RUN, 1, { status: 'running' });
    await store.appendCheckpoint(RUN, { state: { n: 1 }, kind: 'stage', stage: 'a' });
    await store.appendItems(RUN, 's', [done('a', 0, 'A')]);
    fs.mkdirSync(store.artifactDir(RUN), { recursive: true });
    fs.writeFileSync(path.join(store.artifactDir(RUN), 'out.bin'), ARTIFACT);
    const sha256 = createHash('sha256').update(ARTIFACT).digest('hex');
    await store.recordArtifacts(RUN, [{ path: 'out.bin', size: ARTIFACT.length, sha256, stage: 'a', createdAt: new Date().toISOString() }]);
    const lease = await store.acquireLock(RUN, { owner: 'test' });
    await store.releaseLock(lease);
  }

  /** Moves `rel` of the run folder out of the root and leaves a link to it in its place. */
  function moveOut(rel: string): string {
    const link = runDir(rel);
    const target = path.join(outside, rel.replaceAll('/', '_'));
    fs.renameSync(link, target);
    fs.symlinkSync(target, link);
    before = snapshot(outside);
    return link;
  }

  /** Replaces `rel` of the run folder with a link to `target` (outside the root). */
  function linkTo(rel: string, target: string): string {
    const link = runDir(rel);
    fs.rmSync(link, { recursive: true, force: true });
    fs.symlinkSync(target, link);
    before = snapshot(outside);
    return link;
  }

  /** The run's current lease file (highest epoch). */
  const leaseRel = (): string => {
    const epochs = fs
      .readdirSync(runDir('lease'))
      .filter((name) => /^\d+\.json$/.test(name))
      .map((name) => Number.parseInt(name, 10));
    return `lease/${Math.max(...epochs)}.json`;
  };

  /** Every public operation on the run, in order, with its outcome. */
  async function exercise(): Promise<Record<string, string>> {
    const results: Record<string, string> = {};
    const run = async <T>(name: string, fn: () => Promise<T>, show?: (value: T) => string): Promise<void> => {
      results[name] = await outcome(root, fn, show);
    };
    await run(
      'getRun',
      () => store.getRun(RUN),
      (r) => r?.status ?? 'none',
    );
    await run(
      'listRuns',
      () => store.listRuns(),
      (runs) => `[${runs.map((r) => r.id).join()}]`,
    );
    await run(
      'listRunIds',
      () => store.listRunIds(),
      (ids) => `[${ids.join()}]`,
    );
    await run(
      'listCheckpoints',
      () => store.listCheckpoints(RUN),
      (cps) => `${cps.length}`,
    );
    await run(
      'latestCheckpoint',
      () => store.latestCheckpoint(RUN),
      (cp) => `${cp?.seq ?? 'none'}`,
    );
    await run(
      'readItems',
      () => collect(store.readItems(RUN, 's')),
      (items) => `${items.length}`,
    );
    await run(
      'listLedgers',
      () => store.listLedgers(RUN),
      (names) => `[${names.join()}]`,
    );
    await run(
      'listArtifacts',
      () => store.listArtifacts(RUN),
      (entries) => `${entries.length}`,
    );
    await run(
      'getLock',
      () => store.getLock(RUN),
      (lease) => (lease ? 'held' : 'free'),
    );
    await run(
      'validateRun',
      () => store.validateRun(RUN),
      (problems) => `[${problems.map((p) => `${p.code}@${p.where}`).join()}]`,
    );
    await run(
      'exportRun',
      () => collect(store.exportRun(RUN)),
      (records) => records.map((r) => r.type[0]).join(''),
    );
    await run('appendCheckpoint', () => store.appendCheckpoint(RUN, { state: { n: 2 }, kind: 'stage', stage: 'b' }));
    await run('appendItems', () => store.appendItems(RUN, 's', [done('b', 1, 'B')]));
    await run('updateRun', async () => {
      const current = await store.getRun(RUN);
      await store.updateRun(RUN, current?.version ?? 0, { status: 'completed' });
    });
    await run('acquireLock', async () => {
      const lease = await store.acquireLock(RUN, { owner: 'links test' });
      await store.requestCancel(RUN);
      await store.getRun(RUN);
      await store.releaseLock(lease);
    });
    return results;
  }

  /** What every operation gives on the run with no link planted. */
  const BASELINE: Readonly<Record<string, string>> = {
    getRun: 'running',
    listRuns: '[r]',
    listRunIds: '[r]',
    listCheckpoints: '1',
    latestCheckpoint: '1',
    readItems: '1',
    listLedgers: '[s]',
    listArtifacts: '1',
    getLock: 'free',
    validateRun: '[]',
    exportRun: 'rcia',
    appendCheckpoint: 'ok',
    appendItems: 'ok',
    updateRun: 'ok',
    acquireLock: 'ok',
  };

  it('with no link, every operation works (the baseline of the cases below)', async () => {
    await makeRun();
    before = snapshot(outside);
    expect(await exercise()).toEqual(BASELINE);
  });

  /** Operations refused with UNSAFE_PATH naming the link; validateRun reports it as a problem instead (so validate --all goes on). */
  const refused = (link: string, ...ops: string[]): Record<string, string> =>
    Object.fromEntries(ops.map((op) => [op, op === 'validateRun' ? '[UNSAFE_PATH@run]' : `UNSAFE_PATH @${RUN}/${link}`]));
  /** A link at the seal or at the segment folder hides the segment: the run reads as absent (its leftovers are reported). */
  const unseen = {
    getRun: 'none',
    listRuns: '[]',
    listCheckpoints: '0',
    latestCheckpoint: 'none',
    readItems: '0',
    listLedgers: '[]',
    listArtifacts: '0',
    validateRun: '[LEFTOVER_RECORDS@run]',
    exportRun: 'NOT_FOUND',
    appendCheckpoint: 'NOT_FOUND',
    appendItems: 'NOT_FOUND',
    updateRun: 'NOT_FOUND',
    acquireLock: 'NOT_FOUND',
  };
  const LEASE = 'lease/<epoch>.json';

  it.each<[string, Record<string, string>]>([
    [
      'seg-0/checkpoints.jsonl',
      refused('seg-0/checkpoints.jsonl', 'listCheckpoints', 'latestCheckpoint', 'validateRun', 'exportRun', 'appendCheckpoint'),
    ],
    [
      'seg-0/run.jsonl',
      { ...refused('seg-0/run.jsonl', 'getRun', 'validateRun', 'exportRun', 'updateRun', 'acquireLock'), listRuns: '[]' },
    ],
    ['seg-0/seal.json', unseen],
    ['seg-0/artifacts.jsonl', refused('seg-0/artifacts.jsonl', 'listArtifacts', 'validateRun', 'exportRun')],
    ['seg-0/items/s.jsonl', refused('seg-0/items/s.jsonl', 'readItems', 'validateRun', 'exportRun', 'appendItems')],
    ['seg-0/items', refused('seg-0/items', 'readItems', 'listLedgers', 'validateRun', 'exportRun', 'appendItems')],
    ['seg-0', unseen],
    ['lease', refused('lease', 'getLock', 'appendCheckpoint', 'appendItems', 'updateRun', 'acquireLock')],
    [LEASE, {}], // read as a damaged lease and taken over; the link is removed with the old epochs
    ['artifacts', refused('artifacts', 'validateRun')],
  ])('a link at %s (to the moved original): every operation works without it or is refused naming it', async (rel, changes) => {
    await makeRun();
    moveOut(rel === LEASE ? leaseRel() : rel);
    expect(await exercise()).toEqual({ ...BASELINE, ...changes });
    expect(snapshot(outside)).toEqual(before);
    expect(await outcome(root, () => store.deleteRun(RUN), String)).toBe('true');
    expect(fs.readdirSync(root)).toEqual([]);
    expect(snapshot(outside)).toEqual(before);
  });

  it('deleteRun of a run folder holding links of every kind removes the links, never their targets', async () => {
    await makeRun();
    const lease = await store.acquireLock(RUN, { owner: 'holder' });
    fs.writeFileSync(path.join(outside, 'cancel.json'), `${JSON.stringify({ epoch: lease.epoch })}\n`);
    await store.releaseLock(lease);
    for (const rel of ['seg-0/checkpoints.jsonl', 'seg-0/items', 'lease']) moveOut(rel);
    linkTo('artifacts/out.bin', path.join(outside, 'hostname'));
    linkTo('cancel-request.json', path.join(outside, 'cancel.json'));
    linkTo('seg-0/extra', path.join(outside, 'folder'));
    linkTo('artifacts/dangling', path.join(outside, 'nothing-here'));
    expect(await outcome(root, () => store.deleteRun(RUN), String)).toBe('true');
    expect(fs.readdirSync(root)).toEqual([]);
    expect(snapshot(outside)).toEqual(before);
  });

  it('a link at an artifact file (to an outside file): a mismatch naming it, never read; deleteRun removes the link only', async () => {
    await makeRun();
    const hostname = path.join(outside, 'hostname');
    const link = linkTo('artifacts/out.bin', hostname);
    const problems = await store.validateRun(RUN);
    expect(problems).toEqual([expect.objectContaining({ code: 'ARTIFACT_MISMATCH', where: 'artifact:out.bin' })]);
    expect(problems[0]?.message).toContain(`is a link at ${link}`);
    expect(
      await outcome(
        root,
        () => collect(store.exportRun(RUN)),
        (records) => records.map((r) => r.type[0]).join(''),
      ),
    ).toBe('rcia');
    expect(await outcome(root, () => store.deleteRun(RUN), String)).toBe('true');
    expect(fs.readdirSync(root)).toEqual([]);
    expect(snapshot(outside)).toEqual(before);
  });

  it('exportRun --with-artifacts refuses an artifact that is a link (ARTIFACT_MISMATCH naming it), reading nothing through it', async () => {
    await makeRun();
    const link = linkTo('artifacts/out.bin', path.join(outside, 'hostname'));
    const file = path.join(parent, 'r.cairn');
    const refused = await exportRun(store, RUN, file, { withArtifacts: true }).catch((error: unknown) => error);
    expect(refused).toMatchObject({ code: 'ARTIFACT_MISMATCH', message: expect.stringContaining(`is a link at ${link}`) as unknown });
    expect(fs.readdirSync(parent).sort()).toEqual(['outside', 'root']);
    const summary = await exportRun(store, RUN, file); // without the files' bytes: nothing to read through the link
    expect(summary.runId).toBe(RUN);
    expect(fs.readFileSync(file, 'utf8')).not.toContain(Buffer.from('a-precious-host').toString('base64').slice(0, 16));
    expect(snapshot(outside)).toEqual(before);
  });

  it('a link at cancel-request.json: never followed, it asks nothing; requestCancel replaces the link itself', async () => {
    await makeRun();
    const lease = await store.acquireLock(RUN, { owner: 'holder' });
    fs.writeFileSync(path.join(outside, 'cancel.json'), `${JSON.stringify({ epoch: lease.epoch })}\n`);
    const link = linkTo('cancel-request.json', path.join(outside, 'cancel.json'));
    expect(
      await outcome(
        root,
        () => store.getRun(RUN),
        (r) => String(r?.cancelRequested),
      ),
    ).toBe('undefined');
    expect(
      await outcome(
        root,
        () => store.listRuns(),
        (runs) => `[${runs.map((r) => r.id).join()}]`,
      ),
    ).toBe(`[${RUN}]`);
    expect(await outcome(root, () => store.requestCancel(RUN))).toBe('ok');
    expect(fs.lstatSync(link).isFile()).toBe(true);
    expect(
      await outcome(
        root,
        () => store.getRun(RUN),
        (r) => String(r?.cancelRequested),
      ),
    ).toBe('true');
    await store.releaseLock(lease);
    expect(snapshot(outside)).toEqual(before);
  });

  it('a run folder that is a link: refused or not listed, never created through; deleteRun removes the link only', async () => {
    await makeRun();
    fs.renameSync(runDir(), path.join(outside, 'run'));
    fs.symlinkSync(path.join(outside, 'run'), runDir());
    fs.mkdirSync(path.join(outside, 'empty'));
    fs.symlinkSync(path.join(outside, 'empty'), path.join(root, 'fresh'));
    before = snapshot(outside);
    const results: Record<string, string> = {
      getRun: await outcome(root, () => store.getRun(RUN)),
      listRuns: await outcome(
        root,
        () => store.listRuns(),
        (runs) => `[${runs.map((r) => r.id).join()}]`,
      ),
      listRunIds: await outcome(
        root,
        () => store.listRunIds(),
        (ids) => `[${ids.join()}]`,
      ),
      appendCheckpoint: await outcome(root, () => store.appendCheckpoint(RUN, { state: 2, kind: 'stage', stage: 'b' })),
      appendItems: await outcome(root, () => store.appendItems(RUN, 's', [done('b', 1, 'B')])),
      readItems: await outcome(root, () => collect(store.readItems(RUN, 's'))),
      updateRun: await outcome(root, () => store.updateRun(RUN, 2, { status: 'completed' })),
      acquireLock: await outcome(root, () => store.acquireLock(RUN, { owner: 'x' })),
      validateRun: await outcome(
        root,
        () => store.validateRun(RUN),
        (problems) => `[${problems.map((p) => `${p.code}@${p.where}`).join()}]`,
      ),
      exportRun: await outcome(root, () => collect(store.exportRun(RUN))),
      'createRun fresh': await outcome(root, () => store.createRun({ id: 'fresh', name: 'links' })),
      artifactDir: await outcome(root, () => Promise.resolve(store.artifactDir(RUN))),
    };
    expect(results).toEqual({
      getRun: 'UNSAFE_PATH @r',
      listRuns: '[]',
      listRunIds: '[]',
      appendCheckpoint: 'UNSAFE_PATH @r',
      appendItems: 'UNSAFE_PATH @r',
      readItems: 'UNSAFE_PATH @r',
      updateRun: 'UNSAFE_PATH @r',
      acquireLock: 'UNSAFE_PATH @r',
      validateRun: '[UNSAFE_PATH@run]',
      exportRun: 'UNSAFE_PATH @r',
      'createRun fresh': 'UNSAFE_PATH @fresh',
      artifactDir: 'UNSAFE_PATH @r',
    });
    expect(await outcome(root, () => store.deleteRun(RUN), String)).toBe('true');
    expect(await outcome(root, () => store.deleteRun('fresh'), String)).toBe('true');
    expect(fs.readdirSync(root)).toEqual([]);
    expect(snapshot(outside)).toEqual(before);
  });

  it('.trash-*, .new-* and .import-* entries of the root that are links: removed at open (the links only), never listed', async () => {
    for (const name of ['.trash-1-x', `.new-${deadPid()}-y`, `.import-${deadPid()}-z`]) {
      fs.mkdirSync(path.join(outside, name));
      fs.writeFileSync(path.join(outside, name, 'keep.txt'), name);
      fs.symlinkSync(path.join(outside, name), path.join(root, name));
    }
    fs.symlinkSync(path.join(outside, 'folder'), path.join(root, `.new-${process.pid}-live`));
    before = snapshot(outside);
    expect(await store.listRunIds()).toEqual([]);
    const reopened = await FileStore.open(root);
    expect(fs.readdirSync(root)).toEqual([`.new-${process.pid}-live`]);
    expect(await reopened.listRuns()).toEqual([]);
    await reopened.close();
    expect(snapshot(outside)).toEqual(before);
  });
  describe('a pipeline run through Cairn', () => {
    const cairns: Cairn[] = [];
    afterEach(async () => {
      for (const cairn of cairns.splice(0)) await cairn.close();
    });
    const openCairn = (): Cairn => {
      const cairn = new Cairn({ store: `file:${root}`, handleSignals: false });
      cairns.push(cairn);
      return cairn;
    };
    const REPORT = 'the report\n';

    /** fetch → items (ctx.items over three keys; fails after them while `failAfterItems`) → render (an artifact). */
    function def(calls: Record<string, number>, failAfterItems = false) {
      return pipeline('links')
        .stage('items', async (ctx) => {
          calls.items = (calls.items ?? 0) + 1;
          const out = await ctx.items('xs', ['a', 'b', 'c'], (x) => Promise.resolve(x.toUpperCase()), { key: (x) => x });
          if (failAfterItems) throw new Error('stop after the items');
          return out;
        })
        .stage('render', (ctx) => {
          calls.render = (calls.render ?? 0) + 1;
          const file = ctx.artifactPath('out/report.txt');
          fs.writeFileSync(file, REPORT);
          return ctx.artifact(file);
        });
    }

    it('an artifact replaced by a link to an outside file: the rerun writes a regular file in the run folder, never the target', async () => {
      const cairn = openCairn();
      const first = await cairn.run(def({}), {});
      expect(first.status).toBe('completed');
      const file = path.join(root, first.id, 'artifacts', 'out', 'report.txt');
      const hostname = path.join(outside, 'hostname');
      fs.rmSync(file);
      fs.symlinkSync(hostname, file);
      before = snapshot(outside);
      const calls: Record<string, number> = {};
      const rerun = await cairn.run(def(calls), {});
      expect(rerun.status).toBe('completed');
      expect(calls).toEqual({ render: 1 });
      expect(rerun.history.find((h) => h.event === 'stage:rerun')?.message).toContain(`is a link at ${file}`);
      expect(snapshot(outside)).toEqual(before);
      expect(fs.readFileSync(hostname, 'utf8')).toBe('a-precious-host\n');
      expect(fs.lstatSync(file).isFile()).toBe(true);
      expect(fs.readFileSync(file, 'utf8')).toBe(REPORT);
      expect(await store.validateRun(first.id)).toEqual([]);
    });

    it.each([['seg-0/checkpoints.jsonl'], ['items ledger']])(
      'a link at the %s of a failed run: the resume is refused with UNSAFE_PATH naming it, nothing outside changes',
      async (what) => {
        const cairn = openCairn();
        const first = await cairn.run(def({}, true), {});
        expect(first.status).toBe('failed');
        const ledgers = fs.readdirSync(path.join(root, first.id, 'seg-0', 'items'));
        expect(ledgers).toHaveLength(1);
        const rel = what === 'items ledger' ? `seg-0/items/${ledgers[0]}` : what;
        const link = path.join(root, first.id, rel);
        fs.renameSync(link, path.join(outside, 'moved'));
        fs.symlinkSync(path.join(outside, 'moved'), link);
        before = snapshot(outside);
        const calls: Record<string, number> = {};
        const outcome = await cairn.run(def(calls), {}).then(
          (summary) => summary.error,
          (error: unknown) => error,
        );
        expect(outcome).toMatchObject({ code: 'UNSAFE_PATH', message: expect.stringContaining(link) as unknown });
        expect(calls.render).toBeUndefined();
        expect(snapshot(outside)).toEqual(before);
      },
    );
  });

  it('cairn validate --all, cleanup --invalid and delete (the built CLI) remove the links, never their targets', async () => {
    await makeRun();
    await store.close();
    moveOut('seg-0'); // the run reads as leftovers: validate reports them, cleanup --invalid removes them
    fs.mkdirSync(path.join(outside, 'other'));
    fs.writeFileSync(path.join(outside, 'other', 'keep.txt'), 'keep\n');
    fs.symlinkSync(path.join(outside, 'other'), path.join(root, 'other')); // a root child that is a link: not a run
    fs.mkdirSync(path.join(root, 'third', 'artifacts'), { recursive: true });
    fs.symlinkSync(path.join(outside, 'hostname'), path.join(root, 'third', 'artifacts', 'x')); // leftovers with a link
    before = snapshot(outside);
    const url = `file:${root}`;
    const validate = await cli(['validate', '--all', '--json', '--store', url]);
    expect(validate.code).toBe(1);
    expect(JSON.parse(validate.stdout)).toMatchObject({
      valid: false,
      runs: [
        { id: RUN, problems: [{ code: 'LEFTOVER_RECORDS' }] },
        { id: 'third', problems: [{ code: 'LEFTOVER_RECORDS' }] },
      ],
    });
    const cleanup = await cli(['cleanup', '--invalid', '--json', '--store', url]);
    expect([cleanup.code, cleanup.stderr]).toEqual([0, '']);
    expect((JSON.parse(cleanup.stdout) as { deleted: { id: string }[] }).deleted.map((r) => r.id).sort()).toEqual([RUN, 'third']);
    expect(fs.readdirSync(root)).toEqual(['other']);
    const removed = await cli(['delete', 'other', '--store', url]);
    expect(removed.stderr).toBe('');
    expect(fs.readdirSync(root)).toEqual([]);
    expect(snapshot(outside)).toEqual(before);
    store = await FileStore.open(root);
  });
});
