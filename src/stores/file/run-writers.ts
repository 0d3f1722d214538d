/**
 * The run writers of one file store instance: at most one per run (see {@link RunWriter}), and a
 * queue of operations per run so that a writer is never shared mid-write. A write with a lease uses
 * that lease's writer; a write without one (the low-level API, the CLI) takes a short lease of the
 * instance for the call, waiting for the run's lease to be free, and gives it back right after
 * (kept while more calls on the run are queued).
 */
import path from 'node:path';
import { isCairnError } from '../../core/errors.js';
import { notFound, type ResolvedStoreOptions } from '../common.js';
import { fileSystemError } from '../transient.js';
import type { Lease, WriteOptions } from '../store.js';
import { RunWriter } from './run-writer.js';
import { resolveChain } from './segments.js';

/** How long a write without a lease waits for the run's lease to be free before `RUN_LOCKED`. */
const IMPLICIT_WAIT_MS = 10_000;
const IMPLICIT_OWNER = 'cairn store write';

export class RunWriters {
  private readonly queues = new KeyedQueue();
  private readonly held = new Map<string, { writer: RunWriter; implicit: boolean }>();

  constructor(
    private readonly root: string,
    private readonly options: ResolvedStoreOptions,
    private readonly ensureOpen: () => void,
  ) {}

  /** Runs `task` after the operations already queued on the run. */
  queue<T>(runId: string, task: () => Promise<T>): Promise<T> {
    return this.queues.run(runId, task).catch((error: unknown) => {
      throw fileSystemError(error, path.join(this.root, runId), { runId });
    });
  }

  /**
   * Runs `write` with the run's writer: the one of `options.lease` (`LEASE_LOST` unless it is
   * current), the one this instance holds, or one taken for the call.
   */
  write<T>(runId: string, dir: string, options: WriteOptions | undefined, write: (writer: RunWriter) => T): Promise<T> {
    // the usual write of a lease holder (a workflow step, a batch of items) when nothing else is
    // queued on the run: done now, in the caller's turn, without a trip through the queue
    const held = this.held.get(runId);
    const lease = options?.lease;
    if (lease && held && !held.implicit && this.queues.isIdle(runId) && isSame(held.writer.lease, lease) && held.writer.isOpen) {
      try {
        this.ensureOpen();
        return Promise.resolve(write(held.writer));
      } catch (error) {
        return Promise.reject(fileSystemError(error, dir, { runId }));
      }
    }
    return this.queue(runId, async () => {
      this.ensureOpen();
      const held = this.held.get(runId);
      let writer: RunWriter;
      let implicit = false;
      const lease = options?.lease;
      if (lease) {
        if (held && isSame(held.writer.lease, lease) && held.writer.isOpen) writer = held.writer;
        else {
          if (held?.implicit) this.drop(runId);
          writer = RunWriter.attach(this.root, dir, lease, this.options);
        }
      } else if (held?.writer.isOpen) {
        if (!resolveChain(this.root, dir, runId)) throw notFound(runId);
        writer = held.writer; // this instance holds the run: its own write needs no other lease
        implicit = held.implicit;
      } else {
        if (held) this.drop(runId);
        writer = await this.acquireForCall(runId, dir);
        this.held.set(runId, { writer, implicit: true });
        implicit = true;
      }
      try {
        return write(writer);
      } finally {
        if (implicit && !this.queues.hasQueued(runId)) this.drop(runId);
      }
    });
  }

  /** Takes the run's lease for `owner` (the caller queued this on the run). */
  acquire(runId: string, dir: string, owner: string, ttlMs: number): Lease {
    this.ensureOpen();
    this.drop(runId); // an idle lease of this instance's own writes is given back first
    const writer = RunWriter.acquire(this.root, dir, runId, owner, ttlMs, this.options);
    this.held.set(runId, { writer, implicit: false });
    return writer.lease;
  }

  /** Gives back `lease` if this instance holds it; false otherwise. */
  release(lease: Lease): boolean {
    const held = this.held.get(lease.runId);
    if (!held || !isSame(held.writer.lease, lease)) return false;
    this.drop(lease.runId);
    return true;
  }

  private async acquireForCall(runId: string, dir: string): Promise<RunWriter> {
    const deadline = Date.now() + IMPLICIT_WAIT_MS;
    for (let attempt = 0; ; attempt++) {
      try {
        return RunWriter.acquire(this.root, dir, runId, `${IMPLICIT_OWNER} (pid ${process.pid})`, this.options.lockTtlMs, this.options);
      } catch (error) {
        if (!isCairnError(error, 'RUN_LOCKED') || Date.now() >= deadline) throw error;
      }
      await sleep(Math.min(20, 1 + attempt) * (0.5 + Math.random() / 2));
    }
  }

  /** Gives back the run's writer, if this instance holds one. */
  drop(runId: string): void {
    const held = this.held.get(runId);
    if (!held) return;
    this.held.delete(runId);
    held.writer.release();
  }

  /** Waits for every queued operation, then gives back every lease. */
  async close(): Promise<void> {
    await this.queues.drain();
    for (const runId of [...this.held.keys()]) this.drop(runId);
  }
}

function isSame(a: Lease, b: Lease): boolean {
  return a.epoch === b.epoch && a.owner === b.owner;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Runs tasks one at a time per key (a run id), in call order; different keys run in parallel. */
class KeyedQueue {
  private readonly tails = new Map<string, { tail: Promise<unknown>; count: number }>();

  run<T>(key: string, task: () => Promise<T>): Promise<T> {
    const entry = this.tails.get(key) ?? { tail: Promise.resolve(), count: 0 };
    entry.count += 1;
    const result = entry.tail.then(task, task);
    entry.tail = result.then(
      () => undefined,
      () => undefined,
    );
    this.tails.set(key, entry);
    void entry.tail.then(() => {
      entry.count -= 1;
      if (entry.count === 0 && this.tails.get(key) === entry) this.tails.delete(key);
    });
    return result;
  }

  /** True when no task is queued or running for `key`. */
  isIdle(key: string): boolean {
    return !this.tails.has(key);
  }

  /** True when more tasks than the running one are queued for `key`. */
  hasQueued(key: string): boolean {
    return (this.tails.get(key)?.count ?? 0) > 1;
  }

  /** Resolves when every queued task has settled. */
  async drain(): Promise<void> {
    while (this.tails.size > 0) await Promise.all([...this.tails.values()].map((e) => e.tail));
  }
}
