/**
 * File-store specifics the shared conformance suite cannot see: the bytes on disk, torn writes,
 * batch framing, the cross-process mutex and lease files, and what hostile ids leave behind.
 */
import { spawnSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { unsealLine } from '../../src/core/record.js';
import { encodeItem } from '../../src/stores/codec.js';
import { DEFAULT_LIMITS } from '../../src/core/record.js';
import { HOST } from '../../src/stores/common.js';
import { FileStore } from '../../src/stores/file/file-store.js';
import { acquireFileMutex, releaseFileMutex } from '../../src/stores/file/file-mutex.js';
import type { Store, StoreProblem } from '../../src/stores/store.js';
import { flipByte, HOSTILE_IDS } from '../conformance/store-spec.js';
import { codeOf, collect, done } from '../helpers.js';

/** A pid that belonged to a process which has exited. */
function deadPid(): number {
  const child = spawnSync(process.execPath, ['-e', '']);
  if (typeof child.pid !== 'number') throw new Error('could not spawn');
  return child.pid;
}

const lines = (file: string): string[] => fs.readFileSync(file, 'utf8').split('\n').slice(0, -1);

describe('file store', () => {
  let parent = '';
  let root = '';
  const stores: Store[] = [];
  const open = async (): Promise<FileStore> => {
    const store = await FileStore.open(root);
    stores.push(store);
    return store;
  };
  let store: FileStore;

  beforeEach(async () => {
    parent = fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-file-store-'));
    root = path.join(parent, 'root');
    store = await open();
  });

  afterEach(async (context) => {
    for (const s of stores.splice(0)) await s.close();
    if (context.task.result?.state === 'fail') console.error(`kept ${parent} for inspection`);
    else fs.rmSync(parent, { recursive: true, force: true });
  });

  it('lays runs out as documented, one sealed line per record', async () => {
    await store.createRun({ id: 'r', name: 'speech', data: { input: 'a.wav' } });
    await store.updateRun('r', 1, { status: 'running' });
    await store.appendCheckpoint('r', { state: { step: 1 }, kind: 'stage', stage: 'convert' });
    await store.appendItems('r', 'segments', [done('a', 0, 'A'), done('b', 1, 'B')]);
    await store.recordArtifacts('r', [{ path: 'x.wav', size: 0, sha256: '0'.repeat(64), createdAt: new Date().toISOString() }]);
    const lease = await store.acquireLock('r', { owner: 'me' });
    const dir = path.join(root, 'r');
    expect(store.url).toBe(`file:${root}`);
    expect(store.artifactDir('r')).toBe(path.join(dir, 'artifacts'));
    const runText = fs.readFileSync(path.join(dir, 'run.json'), 'utf8');
    expect(runText.endsWith('}\n') && runText.indexOf('\n') === runText.length - 1).toBe(true);
    for (const file of ['checkpoints.jsonl', 'items/segments.jsonl', 'artifacts.jsonl']) {
      for (const line of lines(path.join(dir, file))) expect(unsealLine(line).ok, file).toBe(true);
    }
    const ledger = lines(path.join(dir, 'items/segments.jsonl')).map((l) => unsealLine(l));
    const marks = ledger.map((l) => (l.ok ? [l.body.b, l.body.n] : []));
    expect(marks[0]?.[0]).toBe(marks[1]?.[0]);
    expect(marks.map((m) => m[1])).toEqual([undefined, 2]);
    const lock = JSON.parse(fs.readFileSync(path.join(dir, 'lock.json'), 'utf8')) as Record<string, unknown>;
    expect(lock).toMatchObject({ runId: 'r', owner: 'me', epoch: 1, host: HOST, pid: process.pid, ttlMs: 30_000 });
    await store.releaseLock(lease);
    expect(JSON.parse(fs.readFileSync(path.join(dir, 'lock.json'), 'utf8'))).toMatchObject({ epoch: 1, released: true });
    expect(fs.readdirSync(dir).filter((n) => n.endsWith('.tmp') || n === '.mutex')).toEqual([]);
  });

  it('cuts a torn checkpoint tail before appending, and the new record reads back', async () => {
    await store.createRun({ id: 'r', name: 'n' });
    await store.appendCheckpoint('r', { state: 1 });
    const file = path.join(root, 'r', 'checkpoints.jsonl');
    const intact = fs.readFileSync(file, 'utf8');
    fs.appendFileSync(file, '{"crc":"0000');
    expect((await store.listCheckpoints('r')).map((e) => e.valid)).toEqual([true]);
    const ref = await store.appendCheckpoint('r', { state: 2 });
    expect(ref.seq).toBe(2);
    const text = fs.readFileSync(file, 'utf8');
    expect(text.startsWith(intact)).toBe(true);
    expect(text).not.toContain('{"crc":"0000{');
    expect(lines(file).every((line) => unsealLine(line).ok)).toBe(true);
    expect((await (await open()).getCheckpoint('r', 2)).state).toBe(2);
  });

  it('cuts a torn ledger line before appending a batch', async () => {
    await store.createRun({ id: 'r', name: 'n' });
    await store.appendItems('r', 's', [done('a', 0, 1)]);
    const file = path.join(root, 'r', 'items', 's.jsonl');
    fs.appendFileSync(file, lines(file)[0]?.slice(0, 30) ?? '');
    await store.appendItems('r', 's', [done('b', 1, 2), done('c', 2, 3)]);
    expect(lines(file)).toHaveLength(3);
    expect((await collect(store.readItems('r', 's'))).map((e) => e.key)).toEqual(['a', 'b', 'c']);
  });

  it('drops a batch whose end line never came, in the middle and at the end', async () => {
    await store.createRun({ id: 'r', name: 'n' });
    const file = path.join(root, 'r', 'items', 's.jsonl');
    await store.appendItems('r', 's', [done('a', 0, 1)]);
    // a crash after two of three lines of batch 7 reached the disk
    const torn = [done('t1', 1, 1), done('t2', 2, 2)].map((e) => encodeItem(e, DEFAULT_LIMITS, {}, { id: 7 }));
    fs.appendFileSync(file, torn.map((l) => `${l}\n`).join(''));
    await store.appendItems('r', 's', [done('b', 3, 3), done('c', 4, 4)]);
    fs.appendFileSync(file, `${encodeItem(done('t3', 5, 5), DEFAULT_LIMITS, {}, { id: 8 })}\n`);
    // a line without a batch mark (an imported ledger) is complete by itself
    fs.appendFileSync(file, `${encodeItem(done('plain', 6, 6), DEFAULT_LIMITS, {})}\n`);
    const problems: StoreProblem[] = [];
    const keys = (await collect(store.readItems('r', 's', { onProblem: (p) => problems.push(p) }))).map((e) => e.key);
    expect(keys).toEqual(['a', 'b', 'c', 'plain']);
    expect(problems).toEqual([]);
    expect(await store.validateRun('r')).toEqual([]);
    const exported = (await collect(store.exportRun('r'))).flatMap((r) => (r.type === 'items' ? r.lines : []));
    expect(exported).toHaveLength(4);
  });

  it('reports a damaged middle line with its line number and keeps the rest', async () => {
    await store.createRun({ id: 'r', name: 'n' });
    await store.appendItems('r', 's', [done('a', 0, 'A'), done('b', 1, 'B')]);
    await store.appendItems('r', 's', [done('c', 2, 'C')]);
    const file = path.join(root, 'r', 'items', 's.jsonl');
    const all = lines(file);
    all[0] = flipByte(all[0] ?? '');
    fs.writeFileSync(file, all.map((l) => `${l}\n`).join(''));
    const problems: StoreProblem[] = [];
    const keys = (await collect(store.readItems('r', 's', { onProblem: (p) => problems.push(p) }))).map((e) => e.key);
    expect(keys).toEqual(['b', 'c']);
    expect(problems).toMatchObject([{ code: 'CHECKPOINT_CORRUPT', runId: 'r', where: 'items/s', position: 1 }]);
  });

  it('never reuses a deleted seq, across instances and after reopening', async () => {
    await store.createRun({ id: 'r', name: 'n' });
    const other = await open();
    await store.appendCheckpoint('r', { state: 1 });
    await other.appendCheckpoint('r', { state: 2 });
    await store.appendCheckpoint('r', { state: 3 });
    expect(await other.deleteCheckpoints('r', [3, 3, 2])).toBe(2);
    expect(await store.deleteCheckpoints('r', [3])).toBe(0);
    const file = path.join(root, 'r', 'checkpoints.jsonl');
    expect(lines(file).filter((l) => l.includes('"t":"cp-del"'))).toHaveLength(2);
    expect((await store.appendCheckpoint('r', { state: 4 })).seq).toBe(4);
    expect((await (await open()).appendCheckpoint('r', { state: 5 })).seq).toBe(5);
    expect((await other.getCheckpoint('r', 5)).state).toBe(5);
    expect(await codeOf(store.getCheckpoint('r', 3))).toBe('NOT_FOUND');
    expect((await store.listCheckpoints('r')).map((e) => (e.valid ? e.ref.seq : 0))).toEqual([1, 4, 5]);
    expect((await collect(store.exportRun('r'))).filter((r) => r.type === 'checkpoint')).toHaveLength(3);
    expect(await store.validateRun('r')).toEqual([]);
  });

  it('reads lines far longer than one read chunk', async () => {
    const big = await FileStore.open(root, { compressAboveBytes: false, maxPayloadBytes: 64 * 1024 * 1024 });
    stores.push(big);
    await big.createRun({ id: 'r', name: 'n' });
    const text = 'x'.repeat(3 * 1024 * 1024 + 17);
    await big.appendCheckpoint('r', { state: { text } });
    await big.appendCheckpoint('r', { state: 'small' });
    await big.appendItems('r', 's', [done('a', 0, text), done('b', 1, 'b')]);
    expect(((await store.getCheckpoint('r', 1)).state as { text: string }).text).toBe(text);
    expect((await store.listCheckpoints('r')).map((e) => e.valid)).toEqual([true, true]);
    expect((await collect(store.readItems('r', 's'))).map((e) => e.key)).toEqual(['a', 'b']);
  });

  it('writes zeros ahead of a burst of checkpoint appends, cuts them when the burst ends, and a crash leaves only a torn tail', async () => {
    await store.createRun({ id: 'r', name: 'n' });
    const file = path.join(root, 'r', 'checkpoints.jsonl');
    await store.appendCheckpoint('r', { state: 0 });
    await store.listCheckpoints('r'); // indexed: the appends below take the fast path
    await new Promise((resolve) => setImmediate(resolve));
    // back-to-back appends in one turn of the event loop keep the run's mutex
    for (let i = 1; i <= 40; i++) await store.appendCheckpoint('r', { state: i });
    const end = lines(file).length;
    expect(fs.existsSync(path.join(root, 'r', '.mutex'))).toBe(true);
    const held = fs.readFileSync(file);
    expect(held.length).toBeGreaterThan(held.lastIndexOf(0x0a) + 1);
    expect(held.subarray(held.lastIndexOf(0x0a) + 1).every((byte) => byte === 0)).toBe(true);
    // what a crash now would leave: another root with these bytes
    const crashed = path.join(parent, 'crashed');
    fs.mkdirSync(path.join(crashed, 'r'), { recursive: true });
    for (const name of ['run.json', 'checkpoints.jsonl']) fs.copyFileSync(path.join(root, 'r', name), path.join(crashed, 'r', name));
    await new Promise((resolve) => setImmediate(resolve));
    // the burst is over: mutex given back, zeros cut
    expect(fs.existsSync(path.join(root, 'r', '.mutex'))).toBe(false);
    const after = fs.readFileSync(file);
    expect(after.length).toBe(after.lastIndexOf(0x0a) + 1);
    expect(lines(file)).toHaveLength(end);
    const other = await FileStore.open(crashed);
    stores.push(other);
    expect((await other.listCheckpoints('r')).map((e) => (e.valid ? e.ref.seq : -1))).toEqual(Array.from({ length: 41 }, (_, i) => i + 1));
    expect((await other.checkpointsSinceLatest('r', { kind: 'state' }))?.map((r) => r.valid && r.checkpoint.state)).toEqual([40]);
    expect(await other.validateRun('r')).toEqual([]);
    expect((await other.appendCheckpoint('r', { state: 'next' })).seq).toBe(42);
    const repaired = fs.readFileSync(path.join(crashed, 'r', 'checkpoints.jsonl'));
    expect(repaired.includes(0)).toBe(false);
    expect((await other.latestCheckpoint('r'))?.state).toBe('next');
  });

  it('takes over a mutex left by a dead process', async () => {
    await store.createRun({ id: 'r', name: 'n' });
    const dir = path.join(root, 'r');
    const staleToken = randomUUID();
    fs.writeFileSync(
      path.join(dir, '.mutex'),
      JSON.stringify({ token: staleToken, pid: deadPid(), host: HOST, at: new Date().toISOString() }),
    );
    const started = Date.now();
    expect((await store.updateRun('r', 1, { status: 'running' })).version).toBe(2);
    expect(Date.now() - started).toBeLessThan(30_000); // did not wait out the 60 s staleness window
    expect(fs.existsSync(path.join(dir, '.mutex'))).toBe(false);
    expect(fs.existsSync(path.join(dir, `.mutex-takeover-${staleToken}`))).toBe(true); // kept: no second takeover
  });

  it('takes over a mutex older than a minute, and waits for a live one', async () => {
    await store.createRun({ id: 'r', name: 'n' });
    const dir = path.join(root, 'r');
    const old = new Date(Date.now() - 61_000).toISOString();
    fs.writeFileSync(path.join(dir, '.mutex'), JSON.stringify({ token: randomUUID(), pid: process.pid, host: HOST, at: old }));
    expect((await store.appendCheckpoint('r', { state: 1 })).seq).toBe(1);
    const token = await acquireFileMutex(dir, 'r');
    const waited = Date.now();
    expect(await codeOf(acquireFileMutex(dir, 'r', { waitMs: 150 }))).toBe('CONFLICT');
    expect(Date.now() - waited).toBeGreaterThanOrEqual(150);
    const pending = store.updateRun('r', 1, { status: 'running' });
    await new Promise((resolve) => setTimeout(resolve, 50));
    await releaseFileMutex(dir, token);
    expect((await pending).version).toBe(2);
  });

  it('takes over a lease held by a dead process with the next epoch', async () => {
    await store.createRun({ id: 'r', name: 'n' });
    const file = path.join(root, 'r', 'lock.json');
    const now = Date.now();
    const held = {
      runId: 'r',
      owner: 'crashed',
      epoch: 7,
      host: HOST,
      acquiredAt: new Date(now).toISOString(),
      expiresAt: new Date(now + 60_000).toISOString(),
      ttlMs: 60_000,
    };
    fs.writeFileSync(file, JSON.stringify({ ...held, pid: process.pid }));
    expect(await codeOf(store.acquireLock('r', { owner: 'me' }))).toBe('RUN_LOCKED');
    fs.writeFileSync(file, JSON.stringify({ ...held, pid: deadPid() }));
    expect(await store.getLock('r')).toBeUndefined();
    const lease = await store.acquireLock('r', { owner: 'me' });
    expect(lease).toMatchObject({ epoch: 8, owner: 'me', pid: process.pid });
    const stale = { ...lease, epoch: 7, owner: 'crashed' };
    expect(await codeOf(store.appendItems('r', 's', [done('a', 0, 1)], { lease: stale }))).toBe('LEASE_LOST');
    await store.appendItems('r', 's', [done('a', 0, 1)], { lease });
    await store.releaseLock(lease);
    expect(await codeOf(store.appendCheckpoint('r', { state: 1 }, { lease }))).toBe('LEASE_LOST');
    expect((await store.acquireLock('r', { owner: 'next' })).epoch).toBe(9);
  });

  it('lets exactly one of 50 racing compare-and-sets win each version, across two instances', async () => {
    const other = await open();
    await store.createRun({ id: 'race', name: 'n' });
    for (let version = 1; version <= 4; version++) {
      const results = await Promise.allSettled(
        Array.from({ length: 50 }, (_, i) => (i % 2 ? other : store).updateRun('race', version, { data: { writer: i } })),
      );
      expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
      for (const r of results) if (r.status === 'rejected') expect((r.reason as { code: string }).code).toBe('CONFLICT');
    }
    expect((await store.getRun('race'))?.version).toBe(5);
    const seqs = await Promise.all(Array.from({ length: 40 }, (_, i) => (i % 2 ? other : store).appendCheckpoint('race', { state: i })));
    expect(seqs.map((r) => r.seq).sort((a, b) => a - b)).toEqual(Array.from({ length: 40 }, (_, i) => i + 1));
  });

  it('refuses hostile ids and creates nothing, inside the root or out', async () => {
    await store.createRun({ id: 'fine', name: 'n' });
    const snapshot = (): string[] => fs.readdirSync(parent, { recursive: true, encoding: 'utf8' }).sort();
    const before = snapshot();
    for (const id of [...HOSTILE_IDS, '..%2f..%2fetc', 'a/../../b', '.trash-x', '.import-x']) {
      expect(await codeOf(store.createRun({ id, name: 'n' })), id).toBe('INVALID_RUN_ID');
      expect(await codeOf(store.importRun([{ type: 'run', line: 'x' }]))).toBe('IMPORT_INVALID');
      expect(await codeOf(store.appendItems('fine', id, [done('a', 0, 1)])), id).toBe('INVALID_RUN_ID');
      expect(await codeOf(store.recordArtifacts(id, [])), id).toBe('INVALID_RUN_ID');
      expect(await codeOf(store.deleteCheckpoints(id, [1])), id).toBe('INVALID_RUN_ID');
      expect(await codeOf(store.validateRun(id)), id).toBe('INVALID_RUN_ID');
      expect(await codeOf(store.listLedgers(id)), id).toBe('INVALID_RUN_ID');
      expect(await codeOf(store.getLock(id)), id).toBe('INVALID_RUN_ID');
    }
    expect(snapshot()).toEqual(before);
  });

  it('reuses a run folder left without run.json by a crash during create, and skips it when listing', async () => {
    fs.mkdirSync(path.join(root, 'half'));
    fs.writeFileSync(path.join(root, 'half', '.run.json.123.tmp'), '{"crc":');
    fs.mkdirSync(path.join(root, '.trash-old'));
    expect(await store.listRuns()).toEqual([]);
    expect(await store.getRun('half')).toBeUndefined();
    expect(await store.validateRun('half')).toMatchObject([{ code: 'NOT_FOUND' }]);
    await store.createRun({ id: 'half', name: 'n' });
    expect((await store.listRuns()).map((r) => r.id)).toEqual(['half']);
    await open();
    expect(fs.existsSync(path.join(root, '.trash-old'))).toBe(false);
  });

  it('keeps lease epochs growing when a run is replaced by an import', async () => {
    await store.createRun({ id: 'r', name: 'n' });
    const records = await collect(store.exportRun('r'));
    const lease = await store.acquireLock('r', { owner: 'a' });
    await store.importRun(records, { overwrite: true });
    expect(await store.getLock('r')).toBeUndefined();
    expect(await codeOf(store.renewLock(lease))).toBe('LEASE_LOST');
    expect((await store.acquireLock('r', { owner: 'b' })).epoch).toBe(2);
    expect(fs.readdirSync(root).filter((n) => n.startsWith('.'))).toEqual([]);
  });

  it('refuses calls after close', async () => {
    await store.close();
    expect(await codeOf(store.createRun({ id: 'x', name: 'n' }))).toBe('STORE_CLOSED');
    expect(await codeOf(collect(store.readItems('x', 's')))).toBe('STORE_CLOSED');
    expect(await codeOf(store.appendItems('x', 's', []))).toBe('STORE_CLOSED');
  });
});
