/**
 * Another process holds the SQLite database's write lock (a child that runs BEGIN IMMEDIATE and
 * keeps it, as a long writer or a stopped process would) while a run writes item batches:
 *
 * - held past the per-try busy timeout and past the 5 s the store used to wait, but released
 *   within the retry bound: the run waits, without blocking this process's event loop, and
 *   completes with every item once;
 * - held past the retry bound: the run stops with `STORE_BUSY` naming the database file and what
 *   to do, and resumes once the lock is gone.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { Cairn } from '../../src/engine/cairn.js';
import { pipeline } from '../../src/engine/pipeline.js';
import { openStore } from '../../src/stores/open-store.js';
import { Child, killAll } from '../e2e/child.js';
import { collect } from '../helpers.js';

const HOLDER = path.resolve(import.meta.dirname, '../e2e/fixtures/sqlite-lock-holder.mjs');
const ITEMS = 120;
/** Items done before the lock is taken (the rest wait for the gate). */
const BEFORE_LOCK = 40;

const dirs: string[] = [];
afterEach(killAll);
afterAll(() => {
  for (const dir of dirs) fs.rmSync(dir, { recursive: true, force: true });
});

function tempDb(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-busy-'));
  dirs.push(dir);
  return path.join(dir, 'cairn.db');
}

/** Polls `check` every 20 ms until it returns true; fails saying what it waited for after `ms`. */
async function waitUntil(what: string, ms: number, check: () => boolean | Promise<boolean>): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`waited ${ms} ms for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** A promise that settles within `ms`, or a failure naming what did not happen. */
function within<T>(what: string, ms: number, promise: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`waited ${ms} ms for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** A job whose items after the first `BEFORE_LOCK` wait for `gate`; counts each item's executions. */
function gatedJob(gate: Promise<void>, executed: Map<number, number>) {
  return pipeline('busy', { version: '1' }).stage('work', async (ctx) => {
    const results = await ctx.items(
      'n',
      Array.from({ length: ITEMS }, (_, i) => i),
      async (n) => {
        if (n >= BEFORE_LOCK) await gate;
        executed.set(n, (executed.get(n) ?? 0) + 1);
        return n * n;
      },
      { key: (n) => String(n), checkpointEvery: 10 },
    );
    return results.reduce((a, b) => a + b, 0);
  });
}

const EXPECTED = Array.from({ length: ITEMS }, (_, i) => i * i).reduce((a, b) => a + b, 0);

/** Item results the store holds for the run, read through a connection of its own. */
async function storedItems(file: string, runId: string): Promise<number> {
  const store = await openStore(`sqlite:${file}`);
  try {
    const ledgers = await store.listLedgers(runId);
    return ledgers.length === 0 ? 0 : (await collect(store.readItems(runId, ledgers[0]!))).length;
  } finally {
    await store.close();
  }
}

describe('SQLite store: another process holds the write lock while a run writes', () => {
  it(
    'waits past the busy timeout without blocking the event loop, and completes once the lock is released',
    { timeout: 90_000 },
    async () => {
      const file = tempDb();
      let open!: () => void;
      const gate = new Promise<void>((resolve) => (open = resolve));
      const executed = new Map<number, number>();
      const job = gatedJob(gate, executed);
      const cairn = new Cairn({ store: `sqlite:${file}`, handleSignals: false });
      const runId = cairn.runIdFor(job, {});
      try {
        const running = cairn.run(job, {});
        await waitUntil(`the first ${BEFORE_LOCK} items to be saved`, 30_000, async () => (await storedItems(file, runId)) === BEFORE_LOCK);

        const holder = new Child(HOLDER, [file], { stdin: 'pipe' });
        await within('the other process to take the write lock', 15_000, holder.waitForLine('locked'));
        const saved = await storedItems(file, runId);
        // the event loop's worst lag while the run waits for the lock: the old store blocked in SQLite's busy handler for 5 s
        let lag = 0;
        let last = Date.now();
        const probe = setInterval(() => {
          lag = Math.max(lag, Date.now() - last - 50);
          last = Date.now();
        }, 50);
        open();
        const heldMs = 6500; // past the old 5 s busy timeout, well inside the 30 s retry bound
        await new Promise((resolve) => setTimeout(resolve, heldMs));
        clearInterval(probe);
        let settled = false;
        void running.finally(() => (settled = true));
        expect(settled, 'the run went on while the lock was held').toBe(false);
        expect(await storedItems(file, runId), 'items saved while the lock was held').toBe(saved);
        expect(lag, 'longest event loop stall (ms) while waiting for the lock').toBeLessThan(3000);

        holder.write('release\n');
        await within('the other process to release the lock', 15_000, holder.waitForLine('released'));
        const summary = await within('the run to complete after the lock was released', 60_000, running);
        expect(summary.status, JSON.stringify(summary.error)).toBe('completed');
        expect(summary.result).toBe(EXPECTED);
        expect([...executed.values()].every((n) => n === 1)).toBe(true);
        expect(executed.size).toBe(ITEMS);
        console.log(`SQLite lock held ${heldMs} ms by another process: the run waited and completed; longest event loop stall ${lag} ms`);
      } finally {
        await cairn.close();
      }
    },
  );

  it(
    'stops with STORE_BUSY naming the file when the lock is held past the retry bound, and resumes after',
    { timeout: 90_000 },
    async () => {
      const file = tempDb();
      let open!: () => void;
      const gate = new Promise<void>((resolve) => (open = resolve));
      const executed = new Map<number, number>();
      const job = gatedJob(gate, executed);
      const cairn = new Cairn({ store: `sqlite:${file}`, handleSignals: false, transientRetryMs: 1500, lockTtlMs: 2000 });
      const runId = cairn.runIdFor(job, {});
      try {
        const running = cairn.run(job, {});
        await waitUntil(`the first ${BEFORE_LOCK} items to be saved`, 30_000, async () => (await storedItems(file, runId)) === BEFORE_LOCK);
        const holder = new Child(HOLDER, [file], { stdin: 'pipe' });
        await within('the other process to take the write lock', 15_000, holder.waitForLine('locked'));
        open();
        // the lock is never released while the run waits: it gives up after the bound
        const outcome = await within(
          'the run to give up on the lock',
          60_000,
          running.then(
            (summary) => ({ summary, error: undefined }),
            (error: unknown) => ({ summary: undefined, error: error as { code?: string; message?: string } }),
          ),
        );
        // the record of the interruption cannot be written either (the lock is still held): run() rejects with the cause
        const code = outcome.error?.code ?? outcome.summary?.error?.code;
        const message = outcome.error?.message ?? outcome.summary?.error?.message ?? '';
        expect(code, JSON.stringify(outcome)).toBe('STORE_BUSY');
        expect(message).toContain(file);
        expect(message).toMatch(/stayed locked by another process/);
        expect(message).toMatch(/resume the run/);
        expect(message).not.toMatch(/SQLITE_BUSY/);

        holder.write('release\n');
        await within('the other process to release the lock', 15_000, holder.waitForLine('released'));
        // the attempt could not give its lease back while the lock was held: it ends with the lease's ttl
        const store = await cairn.store();
        await waitUntil('the stopped attempt’s lease to expire', 15_000, async () => (await store.getLock(runId)) === undefined);
        const before = new Map(executed);
        const acknowledged = await storedItems(file, runId);
        const summary = await within('the resumed run to complete', 60_000, cairn.resume(runId));
        expect(summary.status, JSON.stringify(summary.error)).toBe('completed');
        expect(summary.result).toBe(EXPECTED);
        const again = [...executed].filter(([n, count]) => count > (before.get(n) ?? 0) && before.has(n)).length;
        expect(again).toBeLessThanOrEqual(ITEMS - acknowledged);
      } finally {
        await cairn.close();
      }
    },
  );
});
