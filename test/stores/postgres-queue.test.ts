/**
 * The Postgres work queue: claims race between store instances (separate pools, as separate
 * workers would be) and each run is claimed once; a run whose lease expired is claimed again as
 * stranded with a higher epoch and its old holder is fenced out; a handed-back run is claimed as
 * such; runs no worker continues are never claimed; names filter; claim and acquireLock never
 * both win.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { PostgresStore } from '../../src/stores/postgres/postgres-store.js';
import type { Claim, RunStatus } from '../../src/stores/store.js';
import { codeOf, collect, done } from '../helpers.js';
import { POSTGRES, dropSchema, freshSchema, postgresUrl } from '../postgres.js';

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

describe.skipIf(!POSTGRES.reachable)('Postgres work queue', () => {
  const schemas: string[] = [];
  const stores: PostgresStore[] = [];
  let tmp = '';
  let failed = false;
  let a: PostgresStore;
  let b: PostgresStore;

  beforeAll(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-pg-queue-'));
  });
  afterEach(async (context) => {
    if (context.task.result?.state === 'fail') failed = true;
    for (const store of stores.splice(0)) await store.close().catch(() => undefined);
  });
  afterAll(async () => {
    if (failed) return console.error(`kept schemas ${schemas.join(', ')} for inspection`);
    for (const schema of schemas) await dropSchema(schema);
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  /** Two stores (two pools, as two workers would have) on a fresh schema. */
  async function twoWorkers(): Promise<void> {
    const schema = freshSchema('cairn_q');
    schemas.push(schema);
    const url = postgresUrl(schema, { artifacts: path.join(tmp, schema) });
    a = await PostgresStore.open(url);
    b = await PostgresStore.open(url);
    stores.push(a, b);
  }

  async function queued(id: string, name = 'job', status: RunStatus = 'pending'): Promise<void> {
    await a.createRun({ id, name, status });
    await a.queue.enqueue(id);
  }

  it('lets racing workers claim each queued run exactly once, oldest first', async () => {
    await twoWorkers();
    const ids = Array.from({ length: 40 }, (_, i) => `run-${String(i).padStart(2, '0')}`);
    for (const id of ids) await queued(id);
    expect(await a.queue.pending()).toBe(40);
    const claims: { worker: string; claim: Claim }[] = [];
    const work = async (store: PostgresStore, worker: string): Promise<void> => {
      for (;;) {
        const claim = await store.queue.claim({ names: ['job'], owner: worker, ttlMs: 60_000 });
        if (!claim) return;
        claims.push({ worker, claim });
      }
    };
    // four claim loops per store, eight at once
    await Promise.all(['a1', 'a2', 'a3', 'a4', 'b1', 'b2', 'b3', 'b4'].map((w) => work(w.startsWith('a') ? a : b, w)));
    const claimed = claims.map((c) => c.claim.run.id);
    expect(new Set(claimed).size).toBe(40);
    expect(claimed.sort()).toEqual(ids);
    for (const { worker, claim } of claims) {
      expect(claim).toMatchObject({ reason: 'queued', lease: { owner: worker, epoch: 1, runId: claim.run.id } });
      expect(await b.getLock(claim.run.id)).toMatchObject({ owner: worker, epoch: 1 });
    }
    expect(new Set(claims.map((c) => c.worker)).size).toBeGreaterThan(1);
    expect(await a.queue.pending()).toBe(0);
    // one worker alone takes them in queue order
    await queued('later-1');
    await queued('later-2');
    expect((await b.queue.claim({ names: ['job'], owner: 'w' }))?.run.id).toBe('later-1');
    await a.queue.enqueue('later-1'); // again: idempotent, keeps its place
    expect((await b.queue.claim({ names: ['job'], owner: 'w' }))?.run.id).toBe('later-2');
  });

  it('claims a running run whose lease expired as stranded, with a higher epoch, and fences the old holder out', async () => {
    await twoWorkers();
    await queued('r');
    const first = await a.queue.claim({ names: ['job'], owner: 'slow', ttlMs: 200 });
    expect(first).toMatchObject({ reason: 'queued', lease: { epoch: 1 } });
    const old = first!.lease;
    await a.updateRun('r', 1, { status: 'running' }, { lease: old });
    await a.appendItems('r', 's', [done('k0', 0, 'from the first worker')], { lease: old });
    expect(await b.queue.claim({ names: ['job'], owner: 'fast' })).toBeUndefined(); // still live
    expect(await b.queue.pending(['job'])).toBe(0);
    await sleep(300);
    expect(await b.queue.pending(['job'])).toBe(1);
    const second = await b.queue.claim({ names: ['job'], owner: 'fast', ttlMs: 60_000 });
    expect(second).toMatchObject({ reason: 'stranded', run: { status: 'running', version: 2 }, lease: { owner: 'fast', epoch: 2 } });
    const lease = second!.lease;
    // every write of the old holder is refused, and none lands
    const at = new Date().toISOString();
    expect(await codeOf(a.appendItems('r', 's', [done('k1', 1, 'late')], { lease: old }))).toBe('LEASE_LOST');
    expect(await codeOf(a.appendCheckpoint('r', { state: 'late' }, { lease: old }))).toBe('LEASE_LOST');
    expect(await codeOf(a.updateRun('r', 2, { status: 'completed' }, { lease: old }))).toBe('LEASE_LOST');
    const sha = createHash('sha256').update('').digest('hex');
    expect(await codeOf(a.recordArtifacts('r', [{ path: 'late', size: 0, sha256: sha, createdAt: at }], { lease: old }))).toBe(
      'LEASE_LOST',
    );
    expect(await codeOf(a.renewLock(old))).toBe('LEASE_LOST');
    await a.releaseLock(old); // no-op: not its lease any more
    expect((await collect(b.readItems('r', 's'))).map((e) => e.key)).toEqual(['k0']);
    expect(await b.listCheckpoints('r')).toEqual([]);
    expect(await b.listArtifacts('r')).toEqual([]);
    expect(await b.getLock('r')).toMatchObject({ owner: 'fast', epoch: 2 });
    // the new holder writes
    await b.appendItems('r', 's', [done('k1', 1, 'from the second worker')], { lease });
    await b.updateRun('r', 2, { status: 'completed' }, { lease });
    await b.releaseLock(lease);
    expect(await a.queue.claim({ names: ['job'], owner: 'late' })).toBeUndefined(); // completed: never again
  });

  it('claims an interrupted run whose lease was released as handed back', async () => {
    await twoWorkers();
    await queued('h');
    const first = (await a.queue.claim({ names: ['job'], owner: 'stopping' }))!;
    await a.updateRun('h', 1, { status: 'running' }, { lease: first.lease });
    await a.updateRun('h', 2, { status: 'interrupted' }, { lease: first.lease });
    expect(await b.queue.claim({ names: ['job'], owner: 'next' })).toBeUndefined(); // its lease still holds
    await a.releaseLock(first.lease);
    const second = await b.queue.claim({ names: ['job'], owner: 'next' });
    expect(second).toMatchObject({ reason: 'handed-back', run: { status: 'interrupted' }, lease: { owner: 'next', epoch: 2 } });
  });

  it('never claims completed, failed, cancelled or waiting runs, nor runs not queued, nor runs a live lease holds', async () => {
    await twoWorkers();
    for (const status of ['completed', 'failed', 'cancelled', 'waiting'] as const) await queued(`s-${status}`, 'job', status);
    await a.createRun({ id: 'not-queued', name: 'job' });
    await queued('held');
    await b.acquireLock('held', { owner: 'someone', ttlMs: 60_000 });
    expect(await a.queue.pending()).toBe(0);
    expect(await a.queue.claim({ names: ['job'], owner: 'w' })).toBeUndefined();
    expect(await codeOf(a.queue.enqueue('unknown'))).toBe('NOT_FOUND');
    expect(await codeOf(a.queue.enqueue('../x'))).toBe('INVALID_RUN_ID');
    // a waiting run given its input goes back to pending: then it is claimable
    await a.updateRun('s-waiting', 1, { status: 'pending' });
    expect((await a.queue.claim({ names: ['job'], owner: 'w' }))?.run.id).toBe('s-waiting');
  });

  it('claims only runs of the names asked for, and counts them so', async () => {
    await twoWorkers();
    await queued('speech-1', 'speech');
    await queued('mining-1', 'mining');
    await queued('speech-2', 'speech');
    expect(await a.queue.pending()).toBe(3);
    expect(await a.queue.pending(['speech'])).toBe(2);
    expect(await a.queue.pending(['mining', 'other'])).toBe(1);
    expect(await a.queue.pending([])).toBe(0);
    expect(await a.queue.claim({ names: [], owner: 'w' })).toBeUndefined();
    expect((await a.queue.claim({ names: ['mining'], owner: 'w' }))?.run.id).toBe('mining-1');
    expect(await a.queue.claim({ names: ['mining'], owner: 'w' })).toBeUndefined();
    expect((await b.queue.claim({ names: ['speech', 'mining'], owner: 'w' }))?.run.id).toBe('speech-1');
  });

  it('lets exactly one of claim and acquireLock win a run, every time', async () => {
    await twoWorkers();
    let claims = 0;
    let locks = 0;
    for (let i = 0; i < 30; i++) {
      const id = `contested-${i}`;
      await queued(id);
      const [claim, lock] = await Promise.allSettled([
        a.queue.claim({ names: ['job'], owner: 'worker' }),
        b.acquireLock(id, { owner: 'cli' }),
      ]);
      const claimed = claim.status === 'fulfilled' && claim.value !== undefined;
      const locked = lock.status === 'fulfilled';
      if (!locked) expect(lock.reason).toMatchObject({ code: 'RUN_LOCKED' });
      expect(claimed !== locked, `run ${id}: claimed ${claimed}, locked ${locked}`).toBe(true);
      if (claimed) claims++;
      else locks++;
      expect((await a.getLock(id))?.owner).toBe(claimed ? 'worker' : 'cli');
    }
    console.log(`claim vs acquireLock: claim won ${claims}, acquireLock won ${locks} of 30`);
  });
});
