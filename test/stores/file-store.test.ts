/**
 * File-store specifics the shared conformance suite cannot see: the bytes on disk, torn writes,
 * batch framing, the cross-process mutex and lease files, and what hostile ids leave behind.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { unsealLine } from '../../src/core/record.js';
import { encodeItem } from '../../src/stores/codec.js';
import { DEFAULT_LIMITS } from '../../src/core/record.js';
import { HOST } from '../../src/stores/common.js';
import { FileStore } from '../../src/stores/file/file-store.js';
import type { Store, StoreProblem } from '../../src/stores/store.js';
import { flipByte, HOSTILE_IDS } from '../conformance/store-spec.js';
import { codeOf, collect, done } from '../helpers.js';
import { crc32Hex } from '../../src/core/checksum.js';

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

  const seg = (runId: string, n: number, file = ''): string => path.join(root, runId, `seg-${n}`, file);

  it('lays runs out as documented: segments of JSON Lines, one lease file per epoch', async () => {
    await store.createRun({ id: 'r', name: 'speech', data: { input: 'a.wav' } });
    await store.updateRun('r', 1, { status: 'running' });
    await store.appendCheckpoint('r', { state: { step: 1 }, kind: 'stage', stage: 'convert' });
    await store.appendItems('r', 'segments', [done('a', 0, 'A'), done('b', 1, 'B')]);
    await store.recordArtifacts('r', [{ path: 'x.wav', size: 0, sha256: '0'.repeat(64), createdAt: new Date().toISOString() }]);
    const lease = await store.acquireLock('r', { owner: 'me' });
    const dir = path.join(root, 'r');
    expect(store.url).toBe(`file:${fs.realpathSync(root)}`);
    expect(store.artifactDir('r')).toBe(path.join(fs.realpathSync(root), 'r', 'artifacts'));
    expect(fs.readdirSync(dir).sort()).toEqual(['lease', 'seg-0']);
    expect(
      lines(seg('r', 0, 'run.jsonl')).map((l) =>
        unsealLine(l).ok ? (unsealLine(l) as unknown as { body: { version: number } }).body.version : 0,
      ),
    ).toEqual([1, 2]);
    for (const file of ['seal.json', 'run.jsonl', 'checkpoints.jsonl', 'artifacts.jsonl']) {
      for (const line of lines(seg('r', 0, file))) expect(unsealLine(line).ok, file).toBe(true);
    }
    // ledger format 2: short item lines, then one end line with the batch's checksum
    const ledger = lines(seg('r', 0, 'items/segments.jsonl'));
    expect(ledger.slice(0, 2)).toEqual(['{"k":"a","i":0,"v":"A"}', '{"k":"b","i":1,"v":"B"}']);
    const end = JSON.parse(ledger[2]!) as Record<string, unknown>;
    expect(end).toMatchObject({ fv: 2, t: 'batch', n: 2, crc: crc32Hex(`${ledger[0]}\n${ledger[1]}\n`) });
    expect(ledger).toHaveLength(3);
    // the writes above each took a short lease of their own (epochs 1-4); acquireLock took the next
    const leaseFiles = fs.readdirSync(path.join(dir, 'lease'));
    expect(leaseFiles).toEqual([`${lease.epoch}.json`]);
    const stored = JSON.parse(fs.readFileSync(path.join(dir, 'lease', `${lease.epoch}.json`), 'utf8')) as Record<string, unknown>;
    expect(stored).toMatchObject({ owner: 'me', epoch: lease.epoch, host: HOST, pid: process.pid, ttlMs: 30_000 });
    await store.releaseLock(lease);
    expect(JSON.parse(fs.readFileSync(path.join(dir, 'lease', `${lease.epoch}.json`), 'utf8'))).toMatchObject({
      released: true,
      clean: true,
    });
    expect(fs.readdirSync(dir, { recursive: true, encoding: 'utf8' }).filter((n) => n.endsWith('.tmp'))).toEqual([]);
  });

  it('never fuses a new line with a torn one: the writer seals that segment and goes on in its own', async () => {
    await store.createRun({ id: 'r', name: 'n' });
    await store.appendCheckpoint('r', { state: 1 });
    await store.appendItems('r', 's', [done('a', 0, 1)]);
    const file = seg('r', 0, 'checkpoints.jsonl');
    const intact = fs.readFileSync(file, 'utf8');
    fs.appendFileSync(file, '{"crc":"0000');
    fs.appendFileSync(seg('r', 0, 'items/s.jsonl'), lines(seg('r', 0, 'items/s.jsonl'))[0]?.slice(0, 30) ?? '');
    expect((await store.listCheckpoints('r')).map((e) => e.valid)).toEqual([true]);
    const ref = await store.appendCheckpoint('r', { state: 2 });
    expect(ref.seq).toBe(2);
    expect(fs.readFileSync(file, 'utf8')).toBe(`${intact}{"crc":"0000`); // nobody truncates or writes after it
    const own = fs.readdirSync(path.join(root, 'r')).filter((n) => n.startsWith('seg-') && n !== 'seg-0');
    expect(own).toHaveLength(1);
    expect(lines(path.join(root, 'r', own[0]!, 'checkpoints.jsonl')).every((line) => unsealLine(line).ok)).toBe(true);
    await store.appendItems('r', 's', [done('b', 1, 2), done('c', 2, 3)]);
    expect((await collect(store.readItems('r', 's'))).map((e) => e.key)).toEqual(['a', 'b', 'c']);
    expect((await (await open()).getCheckpoint('r', 2)).state).toBe(2);
    expect(await store.validateRun('r')).toEqual([]);
  });

  it('drops a batch whose end line never came, in the middle and at the end', async () => {
    await store.createRun({ id: 'r', name: 'n' });
    const file = seg('r', 0, 'items/s.jsonl');
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

  it('reports a damaged batch once, at its end line, and keeps the other batches', async () => {
    await store.createRun({ id: 'r', name: 'n' });
    await store.appendItems('r', 's', [done('a', 0, 'A'), done('b', 1, 'B')]);
    await store.appendItems('r', 's', [done('c', 2, 'C')]);
    const file = seg('r', 0, 'items/s.jsonl');
    const all = lines(file);
    all[0] = flipByte(all[0] ?? '');
    fs.writeFileSync(file, all.map((l) => `${l}\n`).join(''));
    const problems: StoreProblem[] = [];
    const keys = (await collect(store.readItems('r', 's', { onProblem: (p) => problems.push(p) }))).map((e) => e.key);
    expect(keys).toEqual(['c']);
    expect(problems).toMatchObject([{ code: 'CHECKPOINT_CORRUPT', runId: 'r', where: 'items/s', position: 3 }]);
    expect(problems[0]?.message).toMatch(/Damaged item batch of 2 items .*checksum mismatch/);
  });

  it('never reuses a deleted seq, across instances and after reopening', async () => {
    await store.createRun({ id: 'r', name: 'n' });
    const other = await open();
    await store.appendCheckpoint('r', { state: 1 });
    await other.appendCheckpoint('r', { state: 2 });
    await store.appendCheckpoint('r', { state: 3 });
    expect(await other.deleteCheckpoints('r', [3, 3, 2])).toBe(2);
    expect(await store.deleteCheckpoints('r', [3])).toBe(0);
    expect(lines(seg('r', 0, 'checkpoints.jsonl')).filter((l) => l.includes('"t":"cp-del"'))).toHaveLength(2);
    expect((await store.appendCheckpoint('r', { state: 4 })).seq).toBe(4);
    expect((await (await open()).appendCheckpoint('r', { state: 5 })).seq).toBe(5);
    expect((await other.getCheckpoint('r', 5)).state).toBe(5);
    expect(await codeOf(store.getCheckpoint('r', 3))).toBe('NOT_FOUND');
    expect((await store.listCheckpoints('r')).map((e) => (e.valid ? e.ref.seq : 0))).toEqual([1, 4, 5]);
    expect((await store.latestCheckpoint('r'))?.seq).toBe(5);
    await store.deleteCheckpoints('r', [5]);
    expect((await store.latestCheckpoint('r'))?.seq).toBe(4);
    expect((await store.checkpointsSinceLatest('r', { kind: 'state' }))?.map((r) => r.valid && r.checkpoint.seq)).toEqual([4]);
    expect((await collect(store.exportRun('r'))).filter((r) => r.type === 'checkpoint')).toHaveLength(2);
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

  it('fences a stale holder by construction: what it writes after a takeover is refused and never read', async () => {
    await store.createRun({ id: 'r', name: 'n' });
    const stale = await store.acquireLock('r', { owner: 'stale', ttlMs: 30 });
    await store.appendCheckpoint('r', { state: 'before' }, { lease: stale });
    await store.appendItems('r', 's', [done('a', 0, 'stale A')], { lease: stale });
    await new Promise((resolve) => setTimeout(resolve, 60));
    const other = await open();
    const fresh = await other.acquireLock('r', { owner: 'fresh', ttlMs: 60_000 });
    expect(fresh.epoch).toBe(stale.epoch + 1);
    // the new holder sealed the old segment and writes its own
    expect(fs.existsSync(seg('r', fresh.epoch, 'seal.json'))).toBe(true);
    await other.appendCheckpoint('r', { state: 'after' }, { lease: fresh });
    await other.appendItems('r', 's', [done('b', 1, 'fresh B')], { lease: fresh });
    // the stale holder wakes: every write is refused, and nothing it did reaches readers
    expect(await codeOf(store.appendCheckpoint('r', { state: 'late' }, { lease: stale }))).toBe('LEASE_LOST');
    expect(await codeOf(store.appendItems('r', 's', [done('b', 1, 'stale B')], { lease: stale }))).toBe('LEASE_LOST');
    expect(await codeOf(store.updateRun('r', 1, { status: 'failed' }, { lease: stale }))).toBe('LEASE_LOST');
    expect(await codeOf(store.renewLock(stale))).toBe('LEASE_LOST');
    // a stale process that writes without looking (killed between its write and its check): bytes past the seal
    const staleLine = encodeItem(done('c', 2, 'stale C'), DEFAULT_LIMITS, {});
    fs.appendFileSync(seg('r', 0, 'items/s.jsonl'), `${staleLine}\n`);
    fs.appendFileSync(seg('r', 0, 'run.jsonl'), 'garbage\n');
    for (const reader of [store, other, await open()]) {
      expect((await collect(reader.readItems('r', 's'))).map((e) => [e.key, e.status === 'done' && e.result])).toEqual([
        ['a', 'stale A'],
        ['b', 'fresh B'],
      ]);
      expect((await reader.listCheckpoints('r')).map((e) => e.valid && e.ref.seq)).toEqual([1, 2]);
      expect((await reader.latestCheckpoint('r'))?.state).toBe('after');
      expect((await reader.getRun('r'))?.status).toBe('pending');
      expect(await reader.validateRun('r')).toEqual([]);
    }
    await other.releaseLock(fresh);
  });

  it('takes over a lease held by a dead process with the next epoch, in a new segment', async () => {
    await store.createRun({ id: 'r', name: 'n' });
    const dir = path.join(root, 'r');
    fs.mkdirSync(path.join(dir, 'lease'), { recursive: true });
    const now = Date.now();
    const held = {
      owner: 'crashed',
      epoch: 7,
      host: HOST,
      acquiredAt: new Date(now).toISOString(),
      expiresAt: new Date(now + 60_000).toISOString(),
      ttlMs: 60_000,
    };
    fs.writeFileSync(path.join(dir, 'lease', '7.json'), JSON.stringify({ ...held, pid: process.pid }));
    expect(await codeOf(store.acquireLock('r', { owner: 'me' }))).toBe('RUN_LOCKED');
    fs.writeFileSync(path.join(dir, 'lease', '7.json'), JSON.stringify({ ...held, pid: deadPid() }));
    expect(await store.getLock('r')).toBeUndefined();
    const lease = await store.acquireLock('r', { owner: 'me' });
    expect(lease).toMatchObject({ epoch: 8, owner: 'me', pid: process.pid });
    expect(fs.existsSync(seg('r', 8, 'seal.json'))).toBe(true);
    const stale = { ...lease, epoch: 7, owner: 'crashed' };
    expect(await codeOf(store.appendItems('r', 's', [done('a', 0, 1)], { lease: stale }))).toBe('LEASE_LOST');
    await store.appendItems('r', 's', [done('a', 0, 1)], { lease });
    await store.releaseLock(lease);
    expect(await codeOf(store.appendCheckpoint('r', { state: 1 }, { lease }))).toBe('LEASE_LOST');
    expect((await store.acquireLock('r', { owner: 'next' })).epoch).toBe(9);
    expect(fs.existsSync(seg('r', 9))).toBe(false); // given back cleanly: the next holder goes on in seg-8
  });

  it('validate names a lost line, a reordering, a duplicate and a completed run without checkpoints', async () => {
    const make = async (id: string): Promise<string[]> => {
      await store.createRun({ id, name: 'n' });
      for (let i = 1; i <= 4; i++) await store.appendCheckpoint(id, { state: i });
      return lines(seg(id, 0, 'checkpoints.jsonl'));
    };
    const write = (id: string, all: string[]): void => fs.writeFileSync(seg(id, 0, 'checkpoints.jsonl'), all.map((l) => `${l}\n`).join(''));
    const findings = async (id: string): Promise<string[]> => (await store.validateRun(id)).map((p) => `${p.code} ${p.where} ${p.message}`);

    const gap = await make('gap');
    write('gap', [gap[0]!, gap[2]!, gap[3]!]);
    expect(await findings('gap')).toEqual([expect.stringMatching(/^CHECKPOINT_CORRUPT checkpoints Checkpoint 2 missing/)]);

    const swapped = await make('swapped');
    write('swapped', [swapped[0]!, swapped[2]!, swapped[1]!, swapped[3]!]);
    expect(await findings('swapped')).toEqual([
      expect.stringMatching(/Checkpoint 2 missing: the log jumps to 3/),
      expect.stringMatching(/Checkpoint 2 is out of order/),
    ]);

    const twice = await make('twice');
    write('twice', [twice[0]!, twice[1]!, twice[1]!, twice[2]!, twice[3]!]);
    expect(await findings('twice')).toEqual([expect.stringMatching(/Checkpoint 2 appears twice \(line 3\)/)]);

    await make('done');
    await store.updateRun('done', 1, { status: 'completed' });
    fs.rmSync(seg('done', 0, 'checkpoints.jsonl'));
    expect(await findings('done')).toEqual([
      expect.stringMatching(/^NOT_FOUND checkpoints Run done is completed but has no checkpoint log/),
    ]);

    // deleted checkpoints are no gap: their tombstones say so
    await make('deleted');
    await store.deleteCheckpoints('deleted', [2, 3]);
    expect(await store.validateRun('deleted')).toEqual([]);
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

  it('reuses an empty run folder, refuses one holding leftovers, and removes what crashed creates and deletes left', async () => {
    fs.mkdirSync(path.join(root, 'empty'));
    fs.mkdirSync(path.join(root, 'half'));
    fs.mkdirSync(path.join(root, 'half', 'seg-0'));
    fs.writeFileSync(path.join(root, 'half', 'seg-0', 'checkpoints.jsonl'), 'x\n');
    fs.mkdirSync(path.join(root, '.trash-1-old'));
    fs.mkdirSync(path.join(root, `.new-${deadPid()}-x`));
    fs.mkdirSync(path.join(root, `.import-${process.pid}-x`)); // a live process's import: left alone
    expect(await store.listRuns()).toEqual([]);
    expect(await store.listRunIds()).toEqual(['half']);
    expect(await store.getRun('half')).toBeUndefined();
    expect(await store.validateRun('half')).toMatchObject([{ code: 'LEFTOVER_RECORDS', where: 'run' }]);
    expect(await store.validateRun('empty')).toMatchObject([{ code: 'NOT_FOUND' }]);
    expect(await codeOf(store.createRun({ id: 'half', name: 'n' }))).toBe('LEFTOVER_RECORDS');
    await store.createRun({ id: 'empty', name: 'n' });
    expect((await store.listRuns()).map((r) => r.id)).toEqual(['empty']);
    expect(await store.deleteRun('half')).toBe(true);
    await store.createRun({ id: 'half', name: 'n' });
    await open();
    expect(
      fs
        .readdirSync(root)
        .filter((n) => n.startsWith('.'))
        .sort(),
    ).toEqual([`.import-${process.pid}-x`]);
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

  it('refuses to take a run over while a log of it is a link, and loses nothing once the link is put right', async () => {
    await store.createRun({ id: 'r', name: 'n' });
    const crashed = await store.acquireLock('r', { owner: 'crashed', ttlMs: 30 });
    await store.appendItems('r', 's', [done('a', 0, 'A'), done('b', 1, 'B')], { lease: crashed });
    await new Promise((resolve) => setTimeout(resolve, 60)); // its lease runs out: the next holder takes over
    const ledger = seg('r', 0, 'items/s.jsonl');
    const moved = path.join(parent, 'moved.jsonl');
    fs.renameSync(ledger, moved);
    fs.symlinkSync(moved, ledger);
    const other = await open();
    const error = await other.acquireLock('r', { owner: 'next' }).catch((e: unknown) => e as { code: string; message: string });
    expect(error).toMatchObject({ code: 'UNSAFE_PATH' });
    expect((error as { message: string }).message).toContain(ledger);
    // no seal was written that leaves the ledger out
    expect(
      fs.readdirSync(path.join(root, 'r')).filter((n) => n.startsWith('seg-') && fs.existsSync(seg('r', Number(n.slice(4)), 'seal.json'))),
    ).toEqual(['seg-0']);
    fs.rmSync(ledger);
    fs.renameSync(moved, ledger);
    const lease = await other.acquireLock('r', { owner: 'next' });
    expect((await collect(other.readItems('r', 's'))).map((e) => e.key)).toEqual(['a', 'b']);
    await other.releaseLock(lease);
  });

  it('refuses a root no folder can be made in (under /proc) at once, instead of spinning', async () => {
    if (!fs.existsSync('/proc/self')) return; // Linux only: Node's recursive mkdir never returns there
    const error = await FileStore.open('/proc/cairn-no-such-folder/store').catch((e: unknown) => e as { code: string; message: string });
    expect(error).toMatchObject({ code: 'INVALID_STORE_URL' });
    expect((error as { message: string }).message).toContain('no folder can be created there');
  });

  it('refuses calls after close', async () => {
    await store.close();
    expect(await codeOf(store.createRun({ id: 'x', name: 'n' }))).toBe('STORE_CLOSED');
    expect(await codeOf(collect(store.readItems('x', 's')))).toBe('STORE_CLOSED');
    expect(await codeOf(store.appendItems('x', 's', []))).toBe('STORE_CLOSED');
  });
});
