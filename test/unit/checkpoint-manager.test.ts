import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CheckpointManager, openStore } from '../../src/index.js';
import { codeOf } from '../helpers.js';

describe.each([
  ['memory', () => 'memory:'],
  ['file', (dir: string) => `file:${dir}/cp`],
  ['sqlite', (dir: string) => `sqlite:${dir}/cairn.db`],
])('CheckpointManager on the %s store', (_name, urlFor) => {
  let dir = '';
  let cm: CheckpointManager;

  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-cm-'));
    cm = new CheckpointManager({ store: urlFor(dir) });
  });

  afterEach(async () => {
    await cm.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('creates, loads, lists and finds the most recent checkpoint', async () => {
    expect(await cm.getMostRecent('wf-1')).toBeUndefined();
    const a = await cm.create('wf-1', { step: 1 }, { stage: 'fetch' });
    const b = await cm.create('wf-1', { step: 2, at: new Date(7) }, { stage: 'analyze' });
    await cm.create('wf-2', { other: true });
    expect(a).toMatchObject({ id: 'wf-1:1', workflowId: 'wf-1', seq: 1, meta: { stage: 'fetch' } });
    expect(b.id).toBe('wf-1:2');
    expect(await cm.load(a.id)).toEqual({ ...a, state: { step: 1 } });
    expect((await cm.getMostRecent('wf-1'))?.state).toEqual({ step: 2, at: new Date(7) });
    expect((await cm.list('wf-1')).map((r) => r.id)).toEqual(['wf-1:1', 'wf-1:2']);
    const all = await cm.listAll();
    expect(all.map((w) => [w.workflowId, w.checkpoints.length])).toEqual([
      ['wf-1', 2],
      ['wf-2', 1],
    ]);
  });

  it('gives clear errors for bad ids', async () => {
    expect(await codeOf(cm.load('wf-1:1'))).toBe('NOT_FOUND');
    expect(await codeOf(cm.load('no-seq'))).toBe('INVALID_INPUT');
    expect(await codeOf(cm.load('../etc:1'))).toBe('INVALID_RUN_ID');
    expect(await codeOf(cm.create('../etc', {}))).toBe('INVALID_RUN_ID');
    expect(await codeOf(cm.getMostRecent('a/b'))).toBe('INVALID_RUN_ID');
  });

  it('deletes one checkpoint, or a whole workflow by its id', async () => {
    await cm.create('wf', { step: 1 });
    const second = await cm.create('wf', { step: 2 });
    expect(await cm.delete(second.id)).toBe(true);
    expect((await cm.getMostRecent('wf'))?.state).toEqual({ step: 1 });
    expect(await cm.delete(second.id)).toBe(false);
    expect(await cm.delete('wf')).toBe(true);
    expect(await cm.list('wf')).toEqual([]);
    expect(await cm.delete('wf')).toBe(false);
  });

  it('cleans up old checkpoints and skips workflows held by a live lock', async () => {
    await cm.create('old', { step: 1 });
    await cm.create('kept', { step: 1 });
    await cm.create('busy', { step: 1 });
    const store = await cm.store();
    await store.acquireLock('busy', { owner: 'me' });
    await new Promise((resolve) => setTimeout(resolve, 20));
    const dry = await cm.cleanup({ olderThan: '10ms', dryRun: true });
    expect([...dry.deletedWorkflows].sort()).toEqual(['kept', 'old']);
    expect(dry.skippedLocked).toEqual(['busy']);
    expect((await cm.listAll()).length).toBe(3);
    const kept = await cm.cleanup({ olderThan: '10ms', workflowId: 'kept', keepLatest: true });
    expect(kept.deletedCheckpoints).toBe(0);
    const result = await cm.cleanup({ olderThan: '10ms' });
    expect(result.deletedCheckpoints).toBe(2);
    expect([...result.deletedWorkflows].sort()).toEqual(['kept', 'old']);
    expect(result.skippedLocked).toEqual(['busy']);
    expect((await cm.listAll()).map((w) => w.workflowId)).toEqual(['busy']);
    expect(await cm.cleanup({ olderThan: '7d' })).toMatchObject({ deletedCheckpoints: 0, deletedWorkflows: [] });
  });

  it('marks a workflow finished', async () => {
    await cm.create('wf', { step: 1 });
    await cm.finish('wf');
    expect((await cm.listAll())[0]?.status).toBe('completed');
    expect(await codeOf(cm.finish('nope'))).toBe('NOT_FOUND');
  });
});

it('works on a store instance it did not open, and leaves it open', async () => {
  const store = await openStore('memory:');
  const cm = new CheckpointManager({ store });
  await cm.create('wf', 1);
  await cm.close();
  expect((await store.latestCheckpoint('wf'))?.state).toBe(1);
  await store.close();
});

it('reports an unknown store URL on first use', async () => {
  const cm = new CheckpointManager({ store: 'redis://nope' });
  expect(await codeOf(cm.create('wf', 1))).toBe('INVALID_STORE_URL');
});
