/**
 * The staging folder of an import (src/transfer/import-staging.ts), in process: where each store
 * kind puts it, which leftovers a later process treats as stale (dead owner, or untouched for an
 * hour) and which it leaves (a live import's), links never followed (a staging name, a run folder),
 * an intent whose run moved on dropped without touching the run, and a new run removed again when
 * its files cannot be put in place.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { exportRun, openStore } from '../../src/index.js';
import type { Store } from '../../src/stores/store.js';
import { importExportFile } from '../../src/transfer/import-run.js';
import { artifactArea, ImportStaging, recoverStaleImports, STAGING_PREFIX } from '../../src/transfer/import-staging.js';
import { makeRun } from '../cli/store-ops-helpers.js';

let dirs: string[] = [];
let stores: Store[] = [];
afterEach(async (context) => {
  for (const store of stores) await store.close();
  if (context.task.result?.state === 'fail') process.stderr.write(`kept for inspection: ${dirs.join(', ')}\n`);
  else for (const dir of dirs) fs.rmSync(dir, { recursive: true, force: true });
  dirs = [];
  stores = [];
});

function tempDir(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-staging-'));
  dirs.push(dir);
  return dir;
}

async function open(url: string): Promise<Store> {
  const store = await openStore(url);
  stores.push(store);
  return store;
}

/** The pid of a process that has exited. */
function deadPid(): number {
  const child = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' });
  return Number(child.stdout);
}

/** A staging folder's name with another owner pid (or host tag). */
function renamed(name: string, change: { pid?: number; host?: string }): string {
  const [, pid, host, uuid] = /^\.cairn-import-(\d+)-([0-9a-f]{12})-(.+)$/.exec(name)!;
  return `${STAGING_PREFIX}${change.pid ?? pid}-${change.host ?? host}-${uuid}`;
}

const hoursAgo = (hours: number): Date => new Date(Date.now() - hours * 3_600_000);

describe('import staging', () => {
  it('lives in the folder that holds every run artifact folder of the store', async () => {
    const dir = tempDir();
    expect(artifactArea(await open(`file:${dir}/store`))).toBe(path.join(dir, 'store'));
    expect(artifactArea(await open(`sqlite:${dir}/runs.db`))).toBe(path.join(dir, 'runs.db-artifacts'));
    const memory = await open('memory:');
    expect(artifactArea(memory)).toBe(path.dirname(memory.artifactDir('job')));
  });

  it('removes what dead or long-silent imports left, keeps live ones, and never follows a link', async () => {
    const dir = tempDir();
    const store = await open(`sqlite:${dir}/runs.db`);
    const live = await ImportStaging.create(store); // this process: alive
    const area = path.dirname(live.dir);
    const name = path.basename(live.dir);
    const make = (entry: string, mtime?: Date): string => {
      const folder = path.join(area, entry);
      fs.mkdirSync(path.join(folder, 'files'), { recursive: true });
      fs.writeFileSync(path.join(folder, 'files', 'part.bin'), 'staged');
      if (mtime) fs.utimesSync(folder, mtime, mtime);
      return entry;
    };
    const dead = make(renamed(name, { pid: deadPid() }));
    const otherHostYoung = make(renamed(name, { host: 'f'.repeat(12), pid: 1 }));
    const otherHostOld = make(renamed(name, { host: 'e'.repeat(12), pid: 1 }), hoursAgo(2));
    const unnamedOld = make(`${STAGING_PREFIX}by-hand`, hoursAgo(2));
    const unrelated = make('.kept-by-someone-else', hoursAgo(2));
    // a link named like a dead import's staging folder, to a folder outside the store
    const outside = path.join(dir, 'outside');
    fs.mkdirSync(path.join(outside, 'files'), { recursive: true });
    fs.writeFileSync(path.join(outside, 'intent.json'), '{}');
    fs.writeFileSync(path.join(outside, 'files', 'precious'), 'keep me');
    const link = renamed(name, { pid: deadPid() });
    fs.symlinkSync(outside, path.join(area, link));

    const result = await recoverStaleImports(store);
    expect(result).toEqual({ removed: 4, finished: [], warnings: [] });
    const left = fs.readdirSync(area).sort();
    expect(left).toEqual([name, otherHostYoung, unrelated].sort());
    expect(left).not.toContain(dead);
    expect(left).not.toContain(otherHostOld);
    expect(left).not.toContain(unnamedOld);
    expect(fs.readFileSync(path.join(outside, 'files', 'precious'), 'utf8')).toBe('keep me');
    expect(fs.readdirSync(outside).sort()).toEqual(['files', 'intent.json']);
    await live.remove();
  });

  it('drops the staged files of an import whose run changed since, leaving the run as it is', async () => {
    const dir = tempDir();
    const url = `sqlite:${dir}/runs.db`;
    await makeRun(url, 'job');
    const store = await open(url);
    const before = fs.readdirSync(store.artifactDir('job'), { recursive: true });
    const staging = await ImportStaging.create(store);
    fs.writeFileSync(path.join(staging.files, 'raw.bin'), 'other bytes');
    const run = (await store.getRun('job'))!;
    await staging.writeIntent('job', { version: run.version - 1, updatedAt: run.updatedAt }, 1); // a write since the import
    const stale = path.join(path.dirname(staging.dir), renamed(path.basename(staging.dir), { pid: deadPid() }));
    fs.renameSync(staging.dir, stale);
    expect(await recoverStaleImports(store)).toEqual({ removed: 1, finished: [], warnings: [] });
    expect(fs.readdirSync(store.artifactDir('job'), { recursive: true })).toEqual(before);
    expect(await store.validateRun('job')).toEqual([]);
    expect(fs.readdirSync(artifactArea(store)).filter((n) => n.startsWith(STAGING_PREFIX))).toEqual([]);
  });

  it('never puts the files in place through a link planted where the run folder was', async () => {
    const dir = tempDir();
    await makeRun(`sqlite:${dir}/source.db`, 'job');
    const file = path.join(dir, 'job.cairn');
    await exportRun(`sqlite:${dir}/source.db`, 'job', file, { withArtifacts: true, key: '' });
    const store = await open(`file:${dir}/store`);
    const outside = path.join(dir, 'outside');
    fs.mkdirSync(outside);
    const importing = importExportFile(store, file, { key: undefined }, undefined, {
      onPoint: (point) => {
        if (point !== 'records-imported') return;
        const runDir = path.dirname(store.artifactDir('job'));
        fs.renameSync(runDir, path.join(dir, 'moved-away'));
        fs.symlinkSync(outside, runDir);
      },
    });
    await expect(importing).rejects.toMatchObject({ code: 'UNSAFE_PATH' });
    expect(fs.readdirSync(outside)).toEqual([]);
    expect(fs.readdirSync(artifactArea(store)).filter((n) => n.startsWith(STAGING_PREFIX))).toEqual([]);
  });

  it('removes a new run again when its artifact files cannot be put in place after its records went in', async () => {
    const dir = tempDir();
    await makeRun(`sqlite:${dir}/source.db`, 'job');
    const file = path.join(dir, 'job.cairn');
    await exportRun(`sqlite:${dir}/source.db`, 'job', file, { withArtifacts: true, key: '' });
    const store = await open(`sqlite:${dir}/target.db`);
    const importing = importExportFile(store, file, { key: undefined }, undefined, {
      onPoint: (point) => {
        if (point !== 'records-imported') return;
        for (const name of fs.readdirSync(artifactArea(store)))
          fs.rmSync(path.join(artifactArea(store), name, 'files'), { recursive: true });
      },
    });
    await expect(importing).rejects.toMatchObject({ code: 'ENOENT' });
    expect(await store.listRunIds()).toEqual([]);
    expect(fs.readdirSync(artifactArea(store))).toEqual([]);
  });
});
