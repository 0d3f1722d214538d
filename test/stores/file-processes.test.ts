/**
 * The file store across real processes: the store is compiled once to plain JS, then child
 * processes race on one run (leases, compare-and-set, seq assignment, shared ledger) or are killed
 * with SIGKILL in the middle of appending.
 */
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileStore } from '../../src/stores/file/file-store.js';
import type { ItemEntry, StoreProblem } from '../../src/stores/store.js';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
let work = '';

const CHILD = `
import { FileStore } from './dist/src/stores/file/file-store.js';
const [root, mode, count, tag] = process.argv.slice(2);
const n = Number(count);
const store = await FileStore.open(root);
if (mode === 'race') {
  for (let i = 0; i < n; i++) {
    for (;;) {
      const run = await store.getRun('shared');
      try {
        await store.updateRun('shared', run.version, { data: { count: run.data.count + 1 } });
        break;
      } catch (error) {
        if (error.code !== 'CONFLICT') throw error;
      }
    }
    await store.appendCheckpoint('shared', { state: { tag, i } });
    await store.appendItems('shared', 'common', [0, 1, 2].map((j) => ({ key: tag + '-' + i + '-' + j, index: i * 3 + j, status: 'done', attempt: 1, result: tag })));
  }
} else if (mode === 'burst') {
  // a holder of the run's lease that appends for a while: writes of others wait for it
  const lease = await store.acquireLock('shared', { owner: tag });
  await store.appendCheckpoint('shared', { state: -1 }, { lease });
  process.stdout.write('ready\\n');
  const until = Date.now() + n;
  let count = 1;
  while (Date.now() < until) {
    await store.appendCheckpoint('shared', { state: count }, { lease });
    count++;
  }
  await store.releaseLock(lease);
  process.stdout.write(count + '\\n');
} else if (mode === 'flood') {
  process.stdout.write('ready\\n');
  for (let i = 0; ; i++) {
    const big = 'x'.repeat(1 + (i % 7) * 20000);
    await store.appendItems('shared', 'flood', Array.from({ length: 50 }, (_, j) => ({ key: tag + ':' + i + ':' + j, index: i * 50 + j, status: 'done', attempt: 1, result: big })));
    await store.appendCheckpoint('shared', { state: { i, big } });
  }
}
await store.close();
`;

function runChild(root: string, mode: string, count: number, tag: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(work, 'child.mjs'), root, mode, String(count), tag], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.on('error', reject);
    child.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`child ${tag} exited with ${code}: ${stderr}`))));
  });
}

describe('file store across processes', () => {
  beforeAll(() => {
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-file-processes-'));
    const tsc = path.join(repo, 'node_modules', 'typescript', 'bin', 'tsc');
    // type errors elsewhere in the tree do not stop the emit; only the file store's imports are compiled
    spawnSync(process.execPath, [
      tsc,
      path.join(repo, 'src/stores/file/file-store.ts'),
      ...['--outDir', path.join(work, 'dist'), '--rootDir', repo, '--module', 'nodenext', '--moduleResolution', 'nodenext'],
      ...['--target', 'es2022', '--strict', '--skipLibCheck', '--types', 'node'],
    ]);
    if (!fs.existsSync(path.join(work, 'dist/src/stores/file/file-store.js'))) throw new Error('could not compile the file store');
    fs.writeFileSync(path.join(work, 'package.json'), '{"type":"module"}');
    fs.symlinkSync(path.join(repo, 'node_modules'), path.join(work, 'node_modules'));
    fs.writeFileSync(path.join(work, 'child.mjs'), CHILD);
  });

  afterAll(() => {
    if (work) fs.rmSync(work, { recursive: true, force: true });
  });

  it('keeps compare-and-set, seq numbers and a shared ledger exact under four racing processes', async () => {
    const root = path.join(work, 'race');
    const store = await FileStore.open(root);
    await store.createRun({ id: 'shared', name: 'n', data: { count: 0 } });
    const perChild = 15;
    await Promise.all(['a', 'b', 'c', 'd'].map((tag) => runChild(root, 'race', perChild, tag)));
    const total = 4 * perChild;
    const run = await store.getRun('shared');
    expect(run?.data).toEqual({ count: total });
    expect(run?.version).toBe(total + 1);
    const seqs = (await store.listCheckpoints('shared')).map((e) => (e.valid ? e.ref.seq : -1));
    expect(seqs).toEqual(Array.from({ length: total }, (_, i) => i + 1));
    const problems: StoreProblem[] = [];
    const items: ItemEntry[] = [];
    for await (const item of store.readItems('shared', 'common', { onProblem: (p) => problems.push(p) })) items.push(item);
    expect(problems).toEqual([]);
    expect(new Set(items.map((e) => e.key)).size).toBe(total * 3);
    expect(await store.validateRun('shared')).toEqual([]);
    await store.close();
  });

  it('makes a write without a lease wait while another process holds the run, and land once it is given back', async () => {
    const root = path.join(work, 'burst');
    const store = await FileStore.open(root);
    await store.createRun({ id: 'shared', name: 'n', data: { count: 0 } });
    const child = spawn(process.execPath, [path.join(work, 'child.mjs'), root, 'burst', '2500', 'b'], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    child.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
    const exited = new Promise((resolve) => child.on('exit', resolve));
    await new Promise<void>((resolve) => child.stdout.once('data', () => resolve()));
    const waits: number[] = [];
    for (let i = 0; i < 5; i++) {
      const started = Date.now();
      const run = await store.getRun('shared');
      await store.updateRun('shared', run!.version, { data: { count: i + 1 } });
      waits.push(Date.now() - started);
    }
    expect(await exited).toBe(0);
    const count = Number(out.trim().split('\n').pop());
    expect(count).toBeGreaterThan(100);
    const seqs = (await store.listCheckpoints('shared')).map((e) => (e.valid ? e.ref.seq : -1));
    expect(seqs).toEqual(Array.from({ length: count }, (_, i) => i + 1));
    expect((await store.getRun('shared'))?.data).toEqual({ count: 5 });
    // the burst ran whole under its lease: the updates landed after it, not between its appends
    expect(waits[0], waits.join(', ')).toBeGreaterThan(0);
    expect(await store.validateRun('shared')).toEqual([]);
    await store.close();
  });

  it('survives SIGKILL in the middle of appending: every batch whole or absent, appends continue', async () => {
    const root = path.join(work, 'kill');
    const store = await FileStore.open(root);
    await store.createRun({ id: 'shared', name: 'n' });
    for (let round = 0; round < 3; round++) {
      const child = spawn(process.execPath, [path.join(work, 'child.mjs'), root, 'flood', '0', `r${round}`], {
        stdio: ['ignore', 'pipe', 'inherit'],
      });
      await new Promise<void>((resolve) => child.stdout.once('data', () => resolve()));
      await new Promise((resolve) => setTimeout(resolve, 150 + Math.random() * 250));
      const exited = new Promise((resolve) => child.on('exit', resolve));
      child.kill('SIGKILL');
      await exited;
      const problems: StoreProblem[] = [];
      const counts = new Map<string, number>();
      for await (const item of store.readItems('shared', 'flood', { onProblem: (p) => problems.push(p) })) {
        if (item.key.startsWith('after-')) continue;
        const batch = item.key.split(':').slice(0, 2).join(':');
        counts.set(batch, (counts.get(batch) ?? 0) + 1);
      }
      expect(problems).toEqual([]);
      expect([...counts.values()].every((n) => n === 50)).toBe(true);
      expect((await store.listCheckpoints('shared')).every((e) => e.valid)).toBe(true);
      // the store can be written after the crash (the dead writer's lease is taken over into a new segment)
      await store.appendItems('shared', 'flood', [{ key: `after-${round}`, index: 0, status: 'done', attempt: 1, result: null }]);
      const ref = await store.appendCheckpoint('shared', { state: 'after' });
      expect((await store.getCheckpoint('shared', ref.seq)).state).toBe('after');
      expect(await store.validateRun('shared')).toEqual([]);
    }
    await store.close();
  });
});
