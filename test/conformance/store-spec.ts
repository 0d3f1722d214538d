/**
 * The one conformance suite every store passes unchanged. A bug found in one store becomes a case
 * here first. Each backend calls `describeStoreConformance(harness)` from its own test file.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { sealBody, unsealLine } from '../../src/core/record.js';
import { MemoryStore } from '../../src/stores/memory/memory-store.js';
import type { StoreOptions } from '../../src/stores/common.js';
import type { ExportRecord, ItemEntry, Store } from '../../src/stores/store.js';
import type { StoreHarness } from './harness.js';
import { codeOf, collect, done } from '../helpers.js';

/** Rewrites a sealed line's body and seals it again with a correct checksum. */
export function reseal(line: string, edit: (body: string) => string): string {
  const opened = unsealLine(line);
  if (!opened.ok) throw new Error(`cannot reseal a damaged line: ${opened.reason}`);
  return sealBody(edit(opened.bodyText));
}

/** Flips one character in the middle of a line's body (the checksum no longer matches). */
export function flipByte(line: string): string {
  const at = Math.floor(line.length * 0.6);
  const c = line[at] === 'x' ? 'y' : 'x';
  return line.slice(0, at) + c + line.slice(at + 1);
}

export const HOSTILE_IDS = ['../x', '/etc/passwd', 'a/b', '%2e%2e', 'a\0b', 'x'.repeat(300), '.hidden', '..', '', 'a b', 'ä', 'a\\b'];

/** A value using every rich type the serializer promises to keep. */
function richValue(): Record<string, unknown> {
  const shared = { shared: true };
  const cyclic: Record<string, unknown> = { name: 'loop' };
  cyclic.self = cyclic;
  return {
    date: new Date('2026-01-02T03:04:05.678Z'),
    map: new Map<unknown, unknown>([
      ['a', 1],
      [2, { b: [3] }],
    ]),
    set: new Set(['x', 'y']),
    big: 12345678901234567890n,
    bytes: new Uint8Array([0, 1, 254, 255]),
    undef: undefined,
    nan: NaN,
    inf: -Infinity,
    negZero: -0,
    sparse: [1, , 3], // eslint-disable-line no-sparse-arrays
    one: shared,
    two: shared,
    cyclic,
    surrogate: 'lone \ud800 high and \udfff low',
    looksLikeTags: { $type: 'Date', value: 'x', __type: 'Map', lc: 1, type: 'constructor', id: ['langchain', 'Fn'] },
    devalueLike: ['Date', '2020-01-01', ['Map', 1], 'Function'],
    constructor: 'just a string',
  };
}

function expectRichValue(value: unknown): void {
  const v = value as Record<string, unknown>;
  expect(v.date).toEqual(new Date('2026-01-02T03:04:05.678Z'));
  expect(v.map).toEqual(
    new Map<unknown, unknown>([
      ['a', 1],
      [2, { b: [3] }],
    ]),
  );
  expect(v.set).toEqual(new Set(['x', 'y']));
  expect(v.big).toBe(12345678901234567890n);
  expect(v.bytes).toEqual(new Uint8Array([0, 1, 254, 255]));
  expect('undef' in v && v.undef === undefined).toBe(true);
  expect(Number.isNaN(v.nan)).toBe(true);
  expect(v.inf).toBe(-Infinity);
  expect(Object.is(v.negZero, -0)).toBe(true);
  expect(1 in (v.sparse as unknown[])).toBe(false);
  expect(v.one).toBe(v.two);
  expect((v.cyclic as Record<string, unknown>).self).toBe(v.cyclic);
  expect(v.surrogate).toBe('lone \ud800 high and \udfff low');
  expect(v.looksLikeTags).toEqual({ $type: 'Date', value: 'x', __type: 'Map', lc: 1, type: 'constructor', id: ['langchain', 'Fn'] });
  expect(v.devalueLike).toEqual(['Date', '2020-01-01', ['Map', 1], 'Function']);
  expect(Object.getOwnPropertyDescriptor(v, 'constructor')?.value).toBe('just a string');
}

export function describeStoreConformance(h: StoreHarness): void {
  describe(`store conformance: ${h.name}`, () => {
    let url = '';
    let store: Store;
    const opened: Store[] = [];
    const open = async (options?: StoreOptions): Promise<Store> => {
      const s = await h.open(url, options);
      opened.push(s);
      return s;
    };

    beforeEach(async () => {
      url = await h.freshUrl();
      store = await open();
    });

    afterEach(async (context) => {
      for (const s of opened.splice(0)) await s.close().catch(() => undefined);
      if (context.task.result?.state === 'fail') console.error(`[${h.name}] kept ${url} for inspection`);
      else await h.destroy(url);
    });

    describe('runs', () => {
      it('creates, reads, and refuses a duplicate id', async () => {
        const run = await store.createRun({ id: 'run-1', name: 'speech', data: { input: { file: 'a.wav' } } });
        expect(run).toMatchObject({ id: 'run-1', name: 'speech', status: 'pending', version: 1, data: { input: { file: 'a.wav' } } });
        expect(Date.parse(run.createdAt)).not.toBeNaN();
        expect(await store.getRun('run-1')).toEqual(run);
        expect(await store.getRun('nope')).toBeUndefined();
        expect(await codeOf(store.createRun({ id: 'run-1', name: 'other' }))).toBe('ALREADY_EXISTS');
        expect((await store.getRun('run-1'))?.name).toBe('speech');
      });

      it('updates with compare-and-set and refuses a stale version', async () => {
        await store.createRun({ id: 'r', name: 'n' });
        const v2 = await store.updateRun('r', 1, { status: 'running', data: { stage: 'convert' } });
        expect(v2).toMatchObject({ version: 2, status: 'running', data: { stage: 'convert' } });
        const v3 = await store.updateRun('r', 2, { status: 'completed' });
        expect(v3).toMatchObject({ version: 3, status: 'completed', data: { stage: 'convert' } });
        expect(await codeOf(store.updateRun('r', 2, { status: 'failed' }))).toBe('CONFLICT');
        expect(await store.getRun('r')).toMatchObject({ version: 3, status: 'completed' });
        expect(await codeOf(store.updateRun('missing', 1, { status: 'failed' }))).toBe('NOT_FOUND');
      });

      it('lets exactly one of two store instances win each compare-and-set', async () => {
        const other = await open();
        await store.createRun({ id: 'race', name: 'n' });
        for (let version = 1; version <= 5; version++) {
          const results = await Promise.allSettled(
            Array.from({ length: 10 }, (_, i) => (i % 2 ? other : store).updateRun('race', version, { data: { writer: i } })),
          );
          expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
          for (const r of results) if (r.status === 'rejected') expect((r.reason as { code: string }).code).toBe('CONFLICT');
        }
        expect((await other.getRun('race'))?.version).toBe(6);
      });

      it('lists runs with filters', async () => {
        await store.createRun({ id: 'a', name: 'speech' });
        await store.createRun({ id: 'b', name: 'mining', status: 'running' });
        await store.createRun({ id: 'c', name: 'speech' });
        await new Promise((resolve) => setTimeout(resolve, 5)); // updatedAt has millisecond resolution
        await store.updateRun('c', 1, { status: 'completed' });
        expect((await store.listRuns()).map((r) => r.id)).toEqual(['a', 'b', 'c']);
        expect((await store.listRuns({ name: 'speech' })).map((r) => r.id)).toEqual(['a', 'c']);
        expect((await store.listRuns({ status: 'completed' })).map((r) => r.id)).toEqual(['c']);
        expect((await store.listRuns({ status: ['pending', 'running'] })).map((r) => r.id)).toEqual(['a', 'b']);
        expect(await store.listRuns({ updatedBefore: new Date('2000-01-01') })).toEqual([]);
        expect(await store.listRuns({ updatedBefore: new Date(Date.now() + 60_000) })).toHaveLength(3);
        expect((await store.listRuns({ limit: 1 })).map((r) => r.id)).toEqual(['c']);
      });

      it('lists runs not updated for a while, measured by the store clock (olderThanMs)', async () => {
        await store.createRun({ id: 'old', name: 'n' });
        await store.createRun({ id: 'done', name: 'n', status: 'completed' });
        await new Promise((resolve) => setTimeout(resolve, 500));
        await store.createRun({ id: 'new', name: 'n' });
        // 'old' is at least 500 ms old, 'new' a few ms: 250 ms lies between them
        expect((await store.listRuns({ olderThanMs: 250 })).map((r) => r.id).sort()).toEqual(['done', 'old']);
        expect((await store.listRuns({ olderThanMs: 250, status: 'completed' })).map((r) => r.id)).toEqual(['done']);
        expect((await store.listRuns({ olderThanMs: 0 })).map((r) => r.id).sort()).toEqual(['done', 'new', 'old']);
        expect(await store.listRuns({ olderThanMs: 3_600_000 })).toEqual([]);
        await store.updateRun('old', 1, { status: 'failed' }); // an update makes a run recent again
        expect((await store.listRuns({ olderThanMs: 250 })).map((r) => r.id)).toEqual(['done']);
      });

      it('deletes a run with everything under it, and the id can be reused', async () => {
        await store.createRun({ id: 'gone', name: 'n' });
        await store.appendCheckpoint('gone', { state: { a: 1 } });
        await store.appendItems('gone', 'stage', [done('k', 0, 1)]);
        await store.recordArtifacts('gone', [{ path: 'a.txt', size: 0, sha256: sha256(''), createdAt: new Date().toISOString() }]);
        expect(await store.deleteRun('gone')).toBe(true);
        expect(await store.getRun('gone')).toBeUndefined();
        expect(await store.listCheckpoints('gone')).toEqual([]);
        expect(await collect(store.readItems('gone', 'stage'))).toEqual([]);
        expect(await store.listArtifacts('gone')).toEqual([]);
        expect(await store.deleteRun('gone')).toBe(false);
        await store.createRun({ id: 'gone', name: 'again' });
        expect((await store.appendCheckpoint('gone', { state: 1 })).seq).toBe(1);
      });

      it('refuses a run record it could not read back, storing nothing', async () => {
        expect(await codeOf(store.createRun({ id: 'long', name: 'n'.repeat(2000) }))).toBe('INVALID_INPUT');
        expect(await store.getRun('long')).toBeUndefined();
        await store.createRun({ id: 'ok', name: 'n' });
        expect(await codeOf(store.updateRun('ok', 1, { status: 'bogus' as 'failed' }))).toBe('INVALID_INPUT');
        expect(await store.getRun('ok')).toMatchObject({ version: 1, status: 'pending' });
      });

      it('keeps rich data in the run record', async () => {
        await store.createRun({ id: 'rich', name: 'n', data: richValue() });
        expectRichValue((await store.getRun('rich'))?.data);
      });

      it('reports a damaged run record instead of using it: read back from what is intact, or refused naming the run', async () => {
        await store.createRun({ id: 'ok', name: 'n' });
        await store.createRun({ id: 'bad', name: 'n', status: 'running', data: { step: 1 } });
        await h.tamper.mutateRun(url, 'bad', flipByte);
        const got = await store.getRun('bad').then(
          (run) => ({ run }),
          (error: Error & { code?: string }) => ({ error }),
        );
        if ('error' in got) {
          // nothing earlier to read it back from (one record written): refused, naming the run and where it is
          expect(got.error.code).toBe('CHECKPOINT_CORRUPT');
          expect(got.error.message).toContain('run bad');
          expect(got.error.message).toContain('cairn delete bad');
          expect((await store.listRuns()).map((r) => r.id)).toEqual(['ok']);
        } else {
          // SQL stores: the header from the row's columns; the summary is lost, never the damaged one used
          expect(got.run).toMatchObject({ id: 'bad', name: 'n', status: 'running', version: 1, data: undefined });
          expect(got.run?.rebuilt).toMatchObject({ dataLost: true });
          expect(got.run?.rebuilt?.where).toContain('bad');
          expect((await store.listRuns()).map((r) => r.id).sort()).toEqual(['bad', 'ok']);
          expect(await codeOf(store.updateRun('bad', 1, { status: 'failed' }))).toBe('CHECKPOINT_CORRUPT'); // not without a summary
          expect(await codeOf(collect(store.exportRun('bad')))).toBe('CHECKPOINT_CORRUPT');
        }
        expect(await store.listRunIds()).toEqual(['bad', 'ok']);
        expect(await store.listRunIds({ except: new Set(['ok']) })).toEqual(['bad']); // what `cairn list` asks after listRuns
        const problems = await store.validateRun('bad');
        expect(problems.map((p) => [p.code, p.where])).toEqual([['CHECKPOINT_CORRUPT', 'run']]);
        expect(problems[0]?.message).toContain('bad');
        expect(await store.getRun('ok')).toBeDefined();
      });

      it('reads a damaged run record back from an intact copy where it has one, and the next update writes it whole', async () => {
        await store.createRun({ id: 'bad', name: 'n', status: 'running', data: { step: 1 } });
        await store.updateRun('bad', 1, { data: { step: 2 } });
        await h.tamper.mutateRun(url, 'bad', flipByte);
        let read;
        try {
          read = await store.getRun('bad');
        } catch (error) {
          expect((error as { code?: string }).code).toBe('CHECKPOINT_CORRUPT'); // a store that keeps one copy only
          return;
        }
        if (!read) throw new Error('run bad is gone');
        const run = read;
        expect(run.rebuilt).toBeDefined();
        expect(run.data).not.toEqual({ step: 2 });
        if (run.rebuilt?.dataLost) {
          expect(run).toMatchObject({ version: 2, data: undefined }); // the row's columns
        } else {
          expect(run).toMatchObject({ version: 1, data: { step: 1 } }); // the file store's earlier line
          const records = await collect(store.exportRun('bad'));
          expect(records[0]).toMatchObject({ type: 'run' });
          expect(unsealLine((records[0] as { line: string }).line)).toMatchObject({ ok: true });
        }
        expect((await store.listRuns()).map((r) => [r.id, r.rebuilt !== undefined])).toEqual([['bad', true]]);
        const version = run.version;
        const repaired = await store.updateRun('bad', version, { status: 'failed', data: { step: 3 } });
        expect(repaired.rebuilt).toBeUndefined();
        const now = await store.getRun('bad');
        expect(now).toMatchObject({ status: 'failed', version: version + 1, data: { step: 3 } });
        expect(now?.rebuilt).toBeUndefined();
        // a store that read it back from an earlier copy keeps the damaged one, superseded: nothing reads it
        const left = await store.validateRun('bad');
        expect(left.map((p) => [p.code, p.where, p.superseded])).toEqual(
          run.rebuilt?.dataLost ? [] : [['CHECKPOINT_CORRUPT', 'run', true]],
        );
      });
    });

    describe('checkpoints', () => {
      beforeEach(async () => {
        await store.createRun({ id: 'wf', name: 'wf' });
      });

      it('appends numbered checkpoints and reads them back', async () => {
        const a = await store.appendCheckpoint('wf', { state: { step: 1 }, stage: 'fetch', meta: { stage: 'fetch' } });
        const b = await store.appendCheckpoint('wf', { state: { step: 2 }, kind: 'stage', stage: 'analyze' });
        const c = await store.appendCheckpoint('wf', { state: richValue(), kind: 'snapshot' });
        expect([a.seq, b.seq, c.seq]).toEqual([1, 2, 3]);
        expect(a).toMatchObject({ runId: 'wf', kind: 'state', stage: 'fetch', meta: { stage: 'fetch' } });
        expect(a.bytes).toBeGreaterThan(0);
        const got = await store.getCheckpoint('wf', 1);
        expect(got).toEqual({ ...a, state: { step: 1 } });
        expectRichValue((await store.getCheckpoint('wf', 3)).state);
        const list = await store.listCheckpoints('wf');
        expect(list).toEqual([a, b, c].map((ref) => ({ valid: true, ref })));
        expect((await store.latestCheckpoint('wf'))?.seq).toBe(3);
        expect((await store.latestCheckpoint('wf', { kind: 'stage' }))?.state).toEqual({ step: 2 });
        expect(await store.latestCheckpoint('wf', { kind: 'none' })).toBeUndefined();
      });

      it('refuses unknown runs and bad seqs with clear codes', async () => {
        expect(await codeOf(store.appendCheckpoint('nope', { state: 1 }))).toBe('NOT_FOUND');
        expect(await codeOf(store.getCheckpoint('wf', 1))).toBe('NOT_FOUND');
        expect(await codeOf(store.getCheckpoint('wf', 0))).toBe('INVALID_INPUT');
        expect(await codeOf(store.getCheckpoint('wf', 1.5))).toBe('INVALID_INPUT');
        expect(await store.listCheckpoints('nope')).toEqual([]);
        expect(await store.latestCheckpoint('nope')).toBeUndefined();
      });

      it('deletes checkpoints without ever reusing their numbers', async () => {
        for (let i = 1; i <= 4; i++) await store.appendCheckpoint('wf', { state: i });
        expect(await store.deleteCheckpoints('wf', [2, 4, 99])).toBe(2);
        expect((await store.listCheckpoints('wf')).map((e) => (e.valid ? e.ref.seq : -1))).toEqual([1, 3]);
        expect(await codeOf(store.getCheckpoint('wf', 4))).toBe('NOT_FOUND');
        expect((await store.appendCheckpoint('wf', { state: 5 })).seq).toBe(5);
        expect((await store.latestCheckpoint('wf'))?.state).toBe(5);
      });

      it('detects a flipped byte, falls back to the previous checkpoint, and loses nothing else', async () => {
        for (let i = 1; i <= 3; i++) await store.appendCheckpoint('wf', { state: { step: i, text: 'checkpoint body '.repeat(4) } });
        await h.tamper.mutateCheckpoint(url, 'wf', 3, flipByte);
        expect(await codeOf(store.getCheckpoint('wf', 3))).toBe('CHECKPOINT_CORRUPT');
        const latest = await store.latestCheckpoint('wf');
        expect(latest?.seq).toBe(2);
        expect(latest?.state).toMatchObject({ step: 2 });
        const list = await store.listCheckpoints('wf');
        expect(list.map((e) => e.valid)).toEqual([true, true, false]);
        expect(list[2]).toMatchObject({ valid: false, code: 'CHECKPOINT_CORRUPT' });
        expect((await store.getCheckpoint('wf', 1)).state).toMatchObject({ step: 1 });
        const problems = await store.validateRun('wf');
        expect(problems.map((p) => [p.code, p.where])).toEqual([['CHECKPOINT_CORRUPT', 'checkpoints']]);
        // damage in the middle: the rest still reads
        await h.tamper.mutateCheckpoint(url, 'wf', 2, flipByte);
        expect((await store.latestCheckpoint('wf'))?.seq).toBe(1);
        const next = await store.appendCheckpoint('wf', { state: { step: 4 } });
        expect(next.seq).toBe(4);
        expect((await store.latestCheckpoint('wf'))?.state).toEqual({ step: 4 });
      });

      it('never returns a torn tail, and appends cleanly after it', async () => {
        await store.appendCheckpoint('wf', { state: { step: 1 } });
        await store.appendCheckpoint('wf', { state: { step: 2 } });
        const whole = (await collect(store.exportRun('wf'))).find((r) => r.type === 'checkpoint' && r.line.includes('"seq":2'));
        const cut = (whole as { line: string }).line.replace('"seq":2', '"seq":3');
        await h.tamper.tearCheckpointTail(url, 'wf', cut.slice(0, Math.floor(cut.length / 2)));
        expect((await store.latestCheckpoint('wf'))?.state).toEqual({ step: 2 });
        const valid = (await store.listCheckpoints('wf')).filter((e) => e.valid);
        expect(valid).toHaveLength(2);
        const ref = await store.appendCheckpoint('wf', { state: { step: 'after' } });
        expect(ref.seq).toBeGreaterThanOrEqual(3);
        expect((await store.getCheckpoint('wf', ref.seq)).state).toEqual({ step: 'after' });
        expect((await store.latestCheckpoint('wf'))?.seq).toBe(ref.seq);
        const again = await open();
        expect((await again.latestCheckpoint('wf'))?.state).toEqual({ step: 'after' });
        expect((await again.getCheckpoint('wf', 1)).state).toEqual({ step: 1 });
      });

      it('reads the newest intact checkpoint of a kind and every record after it, where the store offers it', async () => {
        if (!store.checkpointsSinceLatest) return; // optional: the engine lists and reads one by one instead
        const since = async (s: Store, kind = 'snapshot') =>
          (await s.checkpointsSinceLatest!('wf', { kind }))?.map((r) =>
            r.valid ? [r.checkpoint.seq, r.checkpoint.kind, r.checkpoint.state] : [r.seq, r.code],
          );
        expect(await store.checkpointsSinceLatest('nope', { kind: 'snapshot' })).toBeUndefined();
        expect(await since(store)).toBeUndefined();
        const big = 'b'.repeat(150_000); // a record longer than a read chunk
        await store.appendCheckpoint('wf', { kind: 'snapshot', state: 's1' });
        await store.appendCheckpoint('wf', { kind: 'step', state: 2 });
        await store.appendCheckpoint('wf', { kind: 'snapshot', state: big });
        await store.appendCheckpoint('wf', { kind: 'step', state: 4 });
        await store.appendCheckpoint('wf', { kind: 'step', state: 5 });
        await store.appendCheckpoint('wf', { kind: 'step', state: 6 });
        await store.appendCheckpoint('wf', { kind: 'snapshot', state: 's7' });
        expect(await store.deleteCheckpoints('wf', [5])).toBe(1);
        await h.tamper.mutateCheckpoint(url, 'wf', 7, flipByte); // the newest snapshot is damaged: the one before is the base
        const expected = [
          [3, 'snapshot', big],
          [4, 'step', 4],
          [6, 'step', 6],
          [7, 'CHECKPOINT_CORRUPT'],
        ];
        expect(await since(store)).toEqual(expected);
        expect(await since(store, 'step')).toEqual(expected.slice(2));
        const again = await open();
        expect(await since(again)).toEqual(expected);
        // appends go on after it with the next number, and older checkpoints still read
        expect((await again.appendCheckpoint('wf', { kind: 'step', state: 8 })).seq).toBe(8);
        expect((await again.getCheckpoint('wf', 1)).state).toBe('s1');
        expect((await again.latestCheckpoint('wf', { kind: 'snapshot' }))?.seq).toBe(3);
        expect((await again.listCheckpoints('wf')).map((e) => (e.valid ? e.ref.seq : -1))).toEqual([1, 2, 3, 4, 6, -1, 8]);
        expect((await since(store))?.at(-1)).toEqual([8, 'step', 8]);
      });

      it('refuses a record from a newer format instead of silently using an older one', async () => {
        await store.appendCheckpoint('wf', { state: { step: 1 } });
        await store.appendCheckpoint('wf', { state: { step: 2 } });
        await h.tamper.mutateCheckpoint(url, 'wf', 2, (line) => reseal(line, (body) => body.replace('"fv":1', '"fv":99')));
        expect(await codeOf(store.getCheckpoint('wf', 2))).toBe('FORMAT_TOO_NEW');
        expect(await codeOf(store.latestCheckpoint('wf'))).toBe('FORMAT_TOO_NEW');
        expect((await store.listCheckpoints('wf'))[1]).toMatchObject({ valid: false, code: 'FORMAT_TOO_NEW' });
        expect((await store.validateRun('wf')).map((p) => p.code)).toEqual(['FORMAT_TOO_NEW']);
        expect((await store.getCheckpoint('wf', 1)).state).toEqual({ step: 1 });
      });

      it('keeps stored data inert: no constructor calls, no prototype pollution', async () => {
        const hostile = JSON.parse('{"__proto__":{"polluted":true},"nested":{"__proto__":{"polluted2":true}},"ok":1}') as unknown;
        await store.appendCheckpoint('wf', { state: hostile });
        const back = (await store.getCheckpoint('wf', 1)).state as Record<string, unknown>;
        expect(back).toEqual({ nested: {}, ok: 1 });
        expect(Object.prototype.hasOwnProperty.call(back, '__proto__')).toBe(false);
        expect(({} as Record<string, unknown>).polluted).toBeUndefined();
        // hand-made records that try to make the loader build functions or pollute prototypes
        const payloads = [
          '"enc":"devalue","zip":0,"data":[["Function","return process.exit(7)"]]',
          '"enc":"devalue","zip":0,"data":[{"__proto__":1},{"polluted3":2},true]',
          '"enc":"devalue","zip":0,"data":[["Promise",1],2]',
          '"enc":"pickle","zip":0,"data":"cos\\nsystem"',
        ];
        for (const [i, payload] of payloads.entries()) {
          await store.appendCheckpoint('wf', { state: { placeholder: i } });
          const seq = i + 2;
          await h.tamper.mutateCheckpoint(url, 'wf', seq, (line) =>
            reseal(line, (body) => body.replace(/"enc":"json","zip":0,"data":.*}$/, `${payload}}`)),
          );
          expect(await codeOf(store.getCheckpoint('wf', seq))).toBe('CHECKPOINT_CORRUPT');
        }
        expect(({} as Record<string, unknown>).polluted3).toBeUndefined();
        expect((await store.latestCheckpoint('wf'))?.seq).toBe(1);
      });

      it('refuses oversized payloads and keeps what was stored', async () => {
        const small = await open({ maxPayloadBytes: 1024 });
        await small.appendCheckpoint('wf', { state: 'ok' });
        expect(await codeOf(small.appendCheckpoint('wf', { state: 'x'.repeat(2000) }))).toBe('PAYLOAD_TOO_LARGE');
        expect(await codeOf(small.updateRun('wf', 1, { data: 'x'.repeat(2000) }))).toBe('PAYLOAD_TOO_LARGE');
        expect(await codeOf(small.appendItems('wf', 's', [done('a', 0, 1), done('b', 1, 'x'.repeat(2000))]))).toBe('PAYLOAD_TOO_LARGE');
        expect((await small.listCheckpoints('wf')).length).toBe(1);
        expect((await small.getRun('wf'))?.version).toBe(1);
        expect(await collect(small.readItems('wf', 's'))).toEqual([]);
      });

      it('compresses large payloads and reads them back', async () => {
        const zipping = await open({ compressAboveBytes: 100 });
        const big = { text: 'compress me '.repeat(5000), rich: new Map([[1, new Date(0)]]) };
        await zipping.appendCheckpoint('wf', { state: big });
        expect((await zipping.getCheckpoint('wf', 1)).state).toEqual(big);
        const line = (await collect(zipping.exportRun('wf'))).find((r) => r.type === 'checkpoint') as { line: string };
        expect(line.line).toContain('"zip":"deflate"');
        expect(line.line.length).toBeLessThan(5000);
        expect((await store.getCheckpoint('wf', 1)).state).toEqual(big); // readable without the option
      });

      it('refuses values that cannot be stored', async () => {
        expect(await codeOf(store.appendCheckpoint('wf', { state: { fn: () => 1 } }))).toBe('UNSERIALIZABLE');
        expect(await codeOf(store.appendCheckpoint('wf', { state: new (class Thing {})() }))).toBe('UNSERIALIZABLE');
        expect(await store.listCheckpoints('wf')).toEqual([]);
      });
    });

    describe('item ledgers', () => {
      beforeEach(async () => {
        await store.createRun({ id: 'job', name: 'mining' });
      });

      it('appends batches and reads them back in order', async () => {
        await store.appendItems('job', 'segments', [done('s1', 0, { claims: ['a'] }), done('s2', 1, { at: new Date(5) })]);
        const failure: ItemEntry = {
          key: 's3',
          index: 2,
          status: 'failed',
          attempt: 2,
          error: { name: 'Error', message: 'rate limited', code: 'E429' },
        };
        await store.appendItems('job', 'segments', [failure]);
        await store.appendItems('job', 'other', [done('x', 0, null)]);
        const items = await collect(store.readItems('job', 'segments'));
        expect(items).toEqual([done('s1', 0, { claims: ['a'] }), done('s2', 1, { at: new Date(5) }), failure]);
        expect(await store.listLedgers('job')).toEqual(['other', 'segments']);
        expect(await collect(store.readItems('job', 'empty'))).toEqual([]);
        expect(await codeOf(store.appendItems('nope', 'segments', [done('a', 0, 1)]))).toBe('NOT_FOUND');
      });

      it('keeps what an entry carries besides its outcome: spend, content hash, reuse mark', async () => {
        const paid: ItemEntry = { ...done('s1', 0, 'A'), spend: { usd: 0.0021, tokens: 812 }, hash: 'h1' };
        const reused: ItemEntry = { ...done('s2', 1, 'B'), hash: 'h2', reusedFrom: 'mine.segments' };
        const failed: ItemEntry = {
          key: 's3',
          index: 2,
          status: 'failed',
          attempt: 3,
          error: { name: 'Error', message: '429' },
          spend: { usd: 0.5, constructor: 1 }, // a unit named like an Object method is a unit like any other
        };
        await store.appendItems('job', 'paid', [paid, reused, failed, done('4', 4, 4)]);
        expect(await collect(store.readItems('job', 'paid'))).toEqual([paid, reused, failed, done('4', 4, 4)]);
        // bad spend is refused before anything is written
        const bad = [done('b', 5, 2), { ...done('c', 6, 3), spend: { usd: -1 } }];
        expect(await codeOf(store.appendItems('job', 'paid', bad))).toBe('INVALID_INPUT');
        expect(await codeOf(store.appendItems('job', 'paid', [{ ...done('c', 6, 3), spend: { __proto__x: 1 } }]))).toBe('INVALID_INPUT');
        expect(await collect(store.readItems('job', 'paid'))).toHaveLength(4);
      });

      it('writes a batch whole or not at all', async () => {
        await store.appendItems('job', 's', [done('a', 0, 1)]);
        const bad = [done('b', 1, 2), done('c', 2, { fn: () => 3 }), done('d', 3, 4)];
        expect(await codeOf(store.appendItems('job', 's', bad))).toBe('UNSERIALIZABLE');
        expect((await collect(store.readItems('job', 's'))).map((e) => e.key)).toEqual(['a']);
      });

      it('streams a large ledger', async () => {
        const batch = 1000;
        for (let b = 0; b < 20; b++) {
          await store.appendItems(
            'job',
            'big',
            Array.from({ length: batch }, (_, i) => done(`k${b * batch + i}`, b * batch + i, { n: b * batch + i })),
          );
        }
        let count = 0;
        for await (const entry of store.readItems('job', 'big')) {
          expect(entry.index).toBe(count);
          count++;
        }
        expect(count).toBe(20_000);
      });

      it('reports and skips a damaged entry (or its whole batch, where a batch has one checksum), keeping the other batches', async () => {
        await store.appendItems('job', 's', [done('a', 0, 'A'), done('b', 1, 'B'), done('c', 2, 'C')]);
        await store.appendItems('job', 's', [done('d', 3, 'D')]);
        await h.tamper.mutateItem(url, 'job', 's', 1, flipByte);
        const problems: unknown[] = [];
        const items = await collect(store.readItems('job', 's', { onProblem: (p) => problems.push(p) }));
        const keys = items.map((e) => e.key);
        expect(keys).not.toContain('b');
        expect(keys.filter((k) => k !== 'd')).toEqual(['a', 'c'].filter((k) => keys.includes(k)));
        expect(keys.at(-1)).toBe('d');
        for (const item of items) expect(item).toMatchObject({ status: 'done', result: item.key.toUpperCase() });
        expect(problems).toHaveLength(1);
        expect(problems[0]).toMatchObject({ code: 'CHECKPOINT_CORRUPT', runId: 'job', where: 'items/s' });
        expect((await store.validateRun('job')).map((p) => p.where)).toEqual(['items/s']);
      });
    });

    describe('artifacts', () => {
      beforeEach(async () => {
        await store.createRun({ id: 'art', name: 'speech' });
      });

      it('records a manifest, latest entry per path, and validates the files', async () => {
        const dir = store.artifactDir('art');
        if (h.rootDir) expect(path.relative(h.rootDir(url), dir).startsWith('..')).toBe(false);
        fs.mkdirSync(dir, { recursive: true });
        fs.writeFileSync(path.join(dir, 'converted.wav'), 'RIFF....');
        fs.mkdirSync(path.join(dir, 'sub'), { recursive: true });
        fs.writeFileSync(path.join(dir, 'sub', 'turns.json'), '[]');
        const at = new Date().toISOString();
        await store.recordArtifacts('art', [{ path: 'converted.wav', size: 1, sha256: sha256('old'), stage: 'convert', createdAt: at }]);
        await store.recordArtifacts('art', [
          { path: 'converted.wav', size: 8, sha256: sha256('RIFF....'), stage: 'convert', createdAt: at },
          { path: 'sub/turns.json', size: 2, sha256: sha256('[]'), createdAt: at },
        ]);
        expect(await store.listArtifacts('art')).toEqual([
          { path: 'converted.wav', size: 8, sha256: sha256('RIFF....'), stage: 'convert', createdAt: at },
          { path: 'sub/turns.json', size: 2, sha256: sha256('[]'), createdAt: at },
        ]);
        expect(await store.validateRun('art')).toEqual([]);
        fs.writeFileSync(path.join(dir, 'converted.wav'), 'RIFF');
        fs.rmSync(path.join(dir, 'sub', 'turns.json'));
        const problems = await store.validateRun('art');
        expect(problems.map((p) => [p.code, p.where]).sort()).toEqual([
          ['ARTIFACT_MISMATCH', 'artifact:converted.wav'],
          ['ARTIFACT_MISMATCH', 'artifact:sub/turns.json'],
        ]);
      });

      it('refuses artifact paths that leave the folder', async () => {
        for (const bad of ['../x', '/etc/passwd', 'a/../../b', '', 'a\0b']) {
          const entry = { path: bad, size: 0, sha256: sha256(''), createdAt: new Date().toISOString() };
          expect(await codeOf(store.recordArtifacts('art', [entry]))).toBe('INVALID_INPUT');
        }
        expect(await store.listArtifacts('art')).toEqual([]);
      });
    });

    describe('locks', () => {
      beforeEach(async () => {
        await store.createRun({ id: 'locked', name: 'n' });
      });

      it('is exclusive across store instances, with growing epochs', async () => {
        const other = await open();
        const lease = await store.acquireLock('locked', { owner: 'worker-a', ttlMs: 10_000 });
        expect(lease).toMatchObject({ runId: 'locked', owner: 'worker-a', epoch: 1, pid: process.pid });
        const err = await other.acquireLock('locked', { owner: 'worker-b' }).catch((e: unknown) => e as { code: string; message: string });
        expect(err).toMatchObject({ code: 'RUN_LOCKED' });
        expect((err as { message: string }).message).toContain('worker-a');
        expect(await other.getLock('locked')).toMatchObject({ owner: 'worker-a', epoch: 1 });
        const renewed = await store.renewLock(lease, { ttlMs: 20_000 });
        expect(Date.parse(renewed.expiresAt)).toBeGreaterThan(Date.parse(lease.expiresAt));
        await store.releaseLock(renewed);
        expect(await other.getLock('locked')).toBeUndefined();
        const second = await other.acquireLock('locked', { owner: 'worker-b' });
        expect(second.epoch).toBe(2);
        expect(await codeOf(store.renewLock(renewed))).toBe('LEASE_LOST');
      });

      it('takes over an expired lease and fences the old holder out', async () => {
        const other = await open();
        const old = await store.acquireLock('locked', { owner: 'slow', ttlMs: 30 });
        await new Promise((resolve) => setTimeout(resolve, 80));
        expect(await store.getLock('locked')).toBeUndefined();
        const fresh = await other.acquireLock('locked', { owner: 'fast', ttlMs: 10_000 });
        expect(fresh.epoch).toBe(old.epoch + 1);
        expect(await codeOf(store.renewLock(old))).toBe('LEASE_LOST');
        expect(await codeOf(store.appendCheckpoint('locked', { state: 'late' }, { lease: old }))).toBe('LEASE_LOST');
        expect(await codeOf(store.appendItems('locked', 's', [done('a', 0, 'late')], { lease: old }))).toBe('LEASE_LOST');
        expect(await codeOf(store.updateRun('locked', 1, { status: 'failed' }, { lease: old }))).toBe('LEASE_LOST');
        expect(await store.listCheckpoints('locked')).toEqual([]);
        expect(await collect(store.readItems('locked', 's'))).toEqual([]);
        expect((await store.getRun('locked'))?.status).toBe('pending');
        await other.appendCheckpoint('locked', { state: 'current' }, { lease: fresh });
        await other.updateRun('locked', 1, { status: 'running' }, { lease: fresh });
        await store.releaseLock(old); // no-op: not ours any more
        expect(await other.getLock('locked')).toMatchObject({ owner: 'fast' });
      });

      it('refuses to lock an unknown run', async () => {
        expect(await codeOf(store.acquireLock('nope', { owner: 'x' }))).toBe('NOT_FOUND');
      });
    });

    // A run's records exist only with its run record: what is left when the run record is gone
    // (removed by hand, or lost) is reported and removable, and never adopted by a new run.
    describe.skipIf(h.tamper.removeRunRecord === undefined)('leftover records (the run record removed)', () => {
      const removeRunRecord = (runId: string): Promise<void> => h.tamper.removeRunRecord!(url, runId);

      /** 3 checkpoints, 2 item ledgers (3 items), 1 artifact entry with its file, and a held lease; then the run record goes. */
      async function leaveLeftovers(runId: string): Promise<void> {
        await store.createRun({ id: runId, name: 'old', data: { input: 1 } });
        await store.acquireLock(runId, { owner: 'old worker', ttlMs: 600_000 });
        for (let i = 1; i <= 3; i++) await store.appendCheckpoint(runId, { state: { step: i }, kind: 'stage', stage: `s${i}` });
        await store.appendItems(runId, 'a', [done('k1', 0, 'one'), done('k2', 1, 'two')]);
        await store.appendItems(runId, 'b', [done('k3', 0, 'three')]);
        const dir = store.artifactDir(runId);
        fs.mkdirSync(dir, { recursive: true });
        fs.writeFileSync(path.join(dir, 'out.txt'), 'old');
        await store.recordArtifacts(runId, [{ path: 'out.txt', size: 3, sha256: sha256('old'), createdAt: new Date().toISOString() }]);
        await removeRunRecord(runId);
      }

      it('refuses createRun with LEFTOVER_RECORDS naming the id and what is left, changing nothing', async () => {
        await store.createRun({ id: 'neighbour', name: 'n' });
        await leaveLeftovers('old');
        const before = await store.validateRun('old');
        for (const s of [store, await open()]) {
          const error = (await s.createRun({ id: 'old', name: 'new', data: { input: 2 } }).then(
            () => ({ code: 'none', message: '' }),
            (e: unknown) => e,
          )) as { code: string; message: string };
          expect(error).toMatchObject({ code: 'LEFTOVER_RECORDS' });
          expect(error.message).toContain('old');
          expect(error.message).toContain('3 checkpoints');
          expect(error.message).toContain('2 item ledgers');
          expect(error.message).toContain('cairn delete old');
        }
        expect(await store.getRun('old')).toBeUndefined();
        expect(await store.validateRun('old')).toEqual(before);
        expect(await store.listRunIds()).toEqual(['neighbour', 'old']);
        // nothing can be written there, and no lease guards it
        expect(await codeOf(store.appendCheckpoint('old', { state: 'late' }))).toBe('NOT_FOUND');
        expect(await codeOf(store.appendItems('old', 'a', [done('k9', 9, 'late')]))).toBe('NOT_FOUND');
        expect(await codeOf(store.updateRun('old', 1, { status: 'running' }))).toBe('NOT_FOUND');
        expect(await codeOf(store.acquireLock('old', { owner: 'new worker' }))).toBe('NOT_FOUND');
        expect(await store.getLock('old')).toBeUndefined();
        // an import is refused the same way, unless it overwrites
        const source = new MemoryStore();
        await source.createRun({ id: 'old', name: 'imported' });
        await source.appendCheckpoint('old', { state: 'imported' });
        const records = await collect(source.exportRun('old'));
        await source.close();
        expect(await codeOf(store.importRun(records))).toBe('LEFTOVER_RECORDS');
        expect(await store.validateRun('old')).toEqual(before);
        expect(await store.getRun('neighbour')).toMatchObject({ id: 'neighbour', version: 1 });
      });

      it('lists the id among run ids (for validate and cleanup), not among runs', async () => {
        await store.createRun({ id: 'alive', name: 'n' });
        await leaveLeftovers('old');
        expect(await store.listRunIds()).toEqual(['alive', 'old']);
        expect((await store.listRuns()).map((r) => r.id)).toEqual(['alive']);
        expect((await store.listRuns({ name: 'old' })).map((r) => r.id)).toEqual([]);
      });

      it('validates the id as one LEFTOVER_RECORDS problem at run; an unknown id stays NOT_FOUND', async () => {
        await leaveLeftovers('old');
        const problems = await store.validateRun('old');
        expect(problems.map((p) => [p.code, p.runId, p.where])).toEqual([['LEFTOVER_RECORDS', 'old', 'run']]);
        expect(problems[0]!.message).toContain('3 checkpoints');
        expect(await store.validateRun('never')).toEqual([expect.objectContaining({ code: 'NOT_FOUND', where: 'run' })]);
      });

      it('deletes the leftovers with deleteRun, after which the id starts afresh', async () => {
        await leaveLeftovers('old');
        expect(await store.deleteRun('old')).toBe(true);
        expect(await store.deleteRun('old')).toBe(false);
        expect(fs.existsSync(path.join(store.artifactDir('old'), 'out.txt'))).toBe(false);
        expect(await store.listRunIds()).toEqual([]);
        expect(await store.validateRun('old')).toEqual([expect.objectContaining({ code: 'NOT_FOUND', where: 'run' })]);
        const fresh = await store.createRun({ id: 'old', name: 'new', data: { input: 2 } });
        expect(fresh).toMatchObject({ id: 'old', name: 'new', version: 1, data: { input: 2 } });
        expect(await store.listCheckpoints('old')).toEqual([]);
        expect(await store.latestCheckpoint('old')).toBeUndefined();
        expect(await store.listLedgers('old')).toEqual([]);
        expect(await collect(store.readItems('old', 'a'))).toEqual([]);
        expect(await store.listArtifacts('old')).toEqual([]);
        expect(await store.getLock('old')).toBeUndefined();
        const lease = await store.acquireLock('old', { owner: 'new worker' });
        expect((await store.appendCheckpoint('old', { state: 'new' }, { lease })).seq).toBe(1);
        await store.appendItems('old', 'a', [done('k1', 0, 'new')], { lease });
        expect(await collect(store.readItems('old', 'a'))).toEqual([done('k1', 0, 'new')]);
        expect(await store.validateRun('old')).toEqual([]);
      });

      it('replaces the leftovers on an import that overwrites', async () => {
        await leaveLeftovers('old');
        const source = new MemoryStore();
        await source.createRun({ id: 'old', name: 'imported' });
        await source.appendCheckpoint('old', { state: 'imported' });
        const records = await collect(source.exportRun('old'));
        await source.close();
        expect(await store.importRun(records, { overwrite: true })).toMatchObject({ id: 'old', name: 'imported' });
        expect((await store.listCheckpoints('old')).map((e) => e.valid && e.ref.seq)).toEqual([1]);
        expect((await store.getCheckpoint('old', 1)).state).toBe('imported');
        expect(await store.listLedgers('old')).toEqual([]);
        expect(await store.listArtifacts('old')).toEqual([]);
        expect(await store.validateRun('old')).toEqual([]);
        expect(await store.getLock('old')).toBeUndefined();
        const lease = await store.acquireLock('old', { owner: 'new worker' });
        expect((await store.appendCheckpoint('old', { state: 'next' }, { lease })).seq).toBe(2);
      });
    });

    describe('hostile input', () => {
      it('refuses hostile run ids and stage names, creating nothing outside the root', async () => {
        const root = h.rootDir?.(url);
        const parent = root ? path.dirname(root) : undefined;
        const before = parent ? fs.readdirSync(parent).sort() : [];
        await store.createRun({ id: 'fine', name: 'n' });
        for (const id of HOSTILE_IDS) {
          expect(await codeOf(store.createRun({ id, name: 'n' })), id).toBe('INVALID_RUN_ID');
          expect(await codeOf(store.getRun(id)), id).toBe('INVALID_RUN_ID');
          expect(await codeOf(store.updateRun(id, 1, {})), id).toBe('INVALID_RUN_ID');
          expect(await codeOf(store.appendCheckpoint(id, { state: 1 })), id).toBe('INVALID_RUN_ID');
          expect(await codeOf(store.listCheckpoints(id)), id).toBe('INVALID_RUN_ID');
          expect(await codeOf(store.appendItems(id, 's', [done('a', 0, 1)])), id).toBe('INVALID_RUN_ID');
          expect(await codeOf(store.appendItems('fine', id, [done('a', 0, 1)])), id).toBe('INVALID_RUN_ID');
          expect(await codeOf(collect(store.readItems('fine', id))), id).toBe('INVALID_RUN_ID');
          expect(await codeOf(store.acquireLock(id, { owner: 'x' })), id).toBe('INVALID_RUN_ID');
          expect(await codeOf(store.deleteRun(id)), id).toBe('INVALID_RUN_ID');
          expect(await codeOf(() => store.artifactDir(id)), id).toBe('INVALID_RUN_ID');
          expect(await codeOf(collect(store.exportRun(id))), id).toBe('INVALID_RUN_ID');
        }
        expect((await store.listRuns()).map((r) => r.id)).toEqual(['fine']);
        if (parent) expect(fs.readdirSync(parent).sort()).toEqual(before);
      });
    });

    describe('export and import', () => {
      async function seed(s: Store, id: string): Promise<void> {
        await s.createRun({ id, name: 'speech', data: { input: 'a.wav' } });
        await s.appendCheckpoint(id, { state: { step: 1 }, kind: 'stage', stage: 'convert' });
        await s.appendCheckpoint(id, { state: richValue(), kind: 'stage', stage: 'diarize' });
        await s.appendItems(id, 'transcribe', [done('seg-1', 0, 'hello'), done('seg-2', 1, 'world')]);
        await s.recordArtifacts(id, [{ path: 'converted.wav', size: 3, sha256: sha256('wav'), createdAt: new Date().toISOString() }]);
        await s.updateRun(id, 1, { status: 'completed' });
      }

      it('round-trips a run through another store and back', async () => {
        await seed(store, 'exp');
        const records = await collect(store.exportRun('exp'));
        expect(records[0]?.type).toBe('run');
        const memory = new MemoryStore();
        await memory.importRun(records);
        const back = await collect(memory.exportRun('exp'));
        const targetUrl = await h.freshUrl();
        const target = await h.open(targetUrl);
        const imported = await target.importRun(back);
        expect(imported).toEqual(await store.getRun('exp'));
        expect(await target.listCheckpoints('exp')).toEqual(await store.listCheckpoints('exp'));
        expectRichValue((await target.getCheckpoint('exp', 2)).state);
        expect(await collect(target.readItems('exp', 'transcribe'))).toEqual(await collect(store.readItems('exp', 'transcribe')));
        expect(await target.listArtifacts('exp')).toEqual(await store.listArtifacts('exp'));
        expect((await target.appendCheckpoint('exp', { state: 'next' })).seq).toBe(3);
        await memory.close();
        await target.close();
        await h.destroy(targetUrl);
      });

      it('refuses to overwrite unless asked, and replaces whole when asked', async () => {
        await seed(store, 'dup');
        const records = await collect(store.exportRun('dup'));
        expect(await codeOf(store.importRun(records))).toBe('ALREADY_EXISTS');
        await store.appendCheckpoint('dup', { state: 'extra' });
        await store.importRun(records, { overwrite: true });
        expect((await store.listCheckpoints('dup')).length).toBe(2);
      });

      it('validates everything before writing anything', async () => {
        await seed(store, 'src');
        const records = await collect(store.exportRun('src'));
        const rename = (r: ExportRecord): ExportRecord =>
          r.type === 'run' ? { ...r, line: reseal(r.line, (b) => b.replace('"id":"src"', '"id":"dst"')) } : r;
        const bad: ExportRecord[][] = [
          [],
          records.slice(1),
          [...records.map(rename).slice(0, 2), { type: 'checkpoint', line: flipByte((records[2] as { line: string }).line) }],
          [...records.map(rename), { type: 'items', stage: '../evil', lines: [] }],
          [...records.map(rename), { type: 'bogus' } as unknown as ExportRecord],
          [...records.map(rename), records[0] as ExportRecord],
          [rename(records[0] as ExportRecord), { type: 'checkpoint', line: 'not a record' }],
        ];
        for (const attempt of bad) {
          expect(await codeOf(store.importRun(attempt))).toBe('IMPORT_INVALID');
          expect(await store.getRun('dst')).toBeUndefined();
        }
        expect(await store.getRun('src')).toBeDefined();
        expect(await codeOf(collect(store.exportRun('unknown')))).toBe('NOT_FOUND');
      });
    });

    it('rejects calls after close', async () => {
      const s = await open();
      await s.close();
      expect(await codeOf(s.getRun('x'))).toBe('STORE_CLOSED');
      expect(await codeOf(s.listRuns())).toBe('STORE_CLOSED');
    });
  });
}

function sha256(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}
