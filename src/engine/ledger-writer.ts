/**
 * Group commit for item ledgers. Results queue in memory; a flush starts as soon as the previous
 * one is durable (or, with `flushIntervalMs`, no sooner than that after it started) and writes
 * everything queued as one atomic batch. Workers wait only when `checkpointEvery` results are
 * unflushed. So slow items (paid API calls) are durable within about one fsync, and fast items
 * batch by the thousand without a promise per item.
 *
 * Queued results are kept in reused columns (position, attempt), not as an entry object each: a
 * queue that lives across garbage collections would otherwise promote every entry to the old
 * generation, where a million-item stage leaves a hundred bytes of garbage per item. The entries
 * the store takes are made when the batch is written.
 */
import { isCairnError, type SerializedError } from '../core/errors.js';
import type { ItemEntry, ItemEntryExtras, Store, WriteOptions } from '../stores/store.js';
import { serializeError } from '../core/errors.js';

export interface LedgerWriterConfig {
  readonly store: Store;
  readonly runId: string;
  readonly ledger: string;
  readonly checkpointEvery: number;
  readonly flushIntervalMs: number;
  /** The key of the item at `index` of the list. */
  readonly keyOf: (index: number) => string;
  readonly writeOptions: () => WriteOptions;
  /** After each durable batch. */
  readonly onFlushed: (count: number) => void;
  /** An entry the store refused (its result too large or not serializable) was written as failed instead. */
  readonly onRejected: (entry: Extract<ItemEntry, { status: 'done' }>, failed: Extract<ItemEntry, { status: 'failed' }>) => void;
}

/** Entries waiting for the next batch, by column; failures (rare) keep their error on the side. */
class PendingEntries {
  length = 0;
  private indexes: Float64Array = new Float64Array(64);
  private attempts: Float64Array = new Float64Array(64);
  private results: unknown[] = [];
  private readonly errors = new Map<number, SerializedError>();
  /** Spend, content hash, reuse mark: only for entries that have any. */
  private readonly extras = new Map<number, ItemEntryExtras>();

  push(index: number, attempt: number, result: unknown, error?: SerializedError, extras?: ItemEntryExtras): void {
    if (this.length === this.indexes.length) {
      this.indexes = grow(this.indexes);
      this.attempts = grow(this.attempts);
    }
    this.indexes[this.length] = index;
    this.attempts[this.length] = attempt;
    this.results[this.length] = result;
    if (error !== undefined) this.errors.set(this.length, error);
    if (extras !== undefined) this.extras.set(this.length, extras);
    this.length += 1;
  }

  /** The queued entries as the store takes them; the queue is empty after. */
  take(keyOf: (index: number) => string): ItemEntry[] {
    const entries = new Array<ItemEntry>(this.length);
    for (let j = 0; j < this.length; j++) {
      const index = this.indexes[j]!;
      const attempt = this.attempts[j]!;
      const error = this.errors.get(j);
      const extras = this.extras.size === 0 ? undefined : this.extras.get(j);
      entries[j] =
        error === undefined
          ? { key: keyOf(index), index, attempt, status: 'done', result: this.results[j], ...extras }
          : { key: keyOf(index), index, attempt, status: 'failed', error, ...extras };
      this.results[j] = undefined;
    }
    this.errors.clear();
    this.extras.clear();
    this.length = 0;
    return entries;
  }
}

function grow(column: Float64Array): Float64Array {
  const bigger = new Float64Array(column.length * 2);
  bigger.set(column);
  return bigger;
}

export class LedgerWriter {
  private readonly pending = new PendingEntries();
  private inFlight = 0;
  private flushing: Promise<void> | undefined;
  private scheduled = false;
  private lastFlushStart = 0;
  private addedCount = 0;
  private durable = 0;
  private roomWaiters: (() => void)[] = [];
  /** Set by {@link drain}: everything queued is written now, not after `flushIntervalMs`. */
  private draining = false;
  /** Ends the flush loop's `flushIntervalMs` wait early. */
  private cutWait: (() => void) | undefined;
  private durableWaiters: { seq: number; resolve: () => void; reject: (e: unknown) => void }[] = [];
  /** The first write error: the ledger accepts nothing after it. */
  error: Error | undefined;

  constructor(private readonly config: LedgerWriterConfig) {}

  get unflushed(): number {
    return this.pending.length + this.inFlight;
  }

  get hasRoom(): boolean {
    return this.unflushed < this.config.checkpointEvery;
  }

  /** Queues the result of the item at `index`; returns its sequence number (for {@link waitDurable}). */
  addDone(index: number, attempt: number, result: unknown, extras?: ItemEntryExtras): number {
    this.pending.push(index, attempt, result, undefined, extras);
    return this.added();
  }

  /** Queues the failure of the item at `index`; returns its sequence number. */
  addFailed(index: number, attempt: number, error: SerializedError, extras?: ItemEntryExtras): number {
    this.pending.push(index, attempt, undefined, error, extras);
    return this.added();
  }

  private added(): number {
    this.addedCount += 1;
    this.schedule();
    return this.addedCount;
  }

  /** Resolves when fewer than `checkpointEvery` results are unflushed (or the ledger failed). */
  waitForRoom(): Promise<void> {
    if (this.hasRoom || this.error !== undefined) return Promise.resolve();
    return new Promise((resolve) => this.roomWaiters.push(resolve));
  }

  /** Resolves when the entry with this sequence number is durable. */
  waitDurable(seq: number): Promise<void> {
    if (this.durable >= seq) return Promise.resolve();
    return new Promise((resolve, reject) => {
      if (this.error !== undefined) reject(this.error);
      else this.durableWaiters.push({ seq, resolve, reject });
    });
  }

  /** Writes everything queued now (a `flushIntervalMs` wait is cut short); rejects with the first write error. */
  async drain(): Promise<void> {
    this.draining = true;
    this.cutWait?.();
    while (this.flushing || this.pending.length > 0) {
      if (this.error !== undefined) break;
      if (!this.flushing) this.flushing = this.flushLoop();
      await this.flushing;
    }
    if (this.error !== undefined) throw this.error;
  }

  private schedule(): void {
    if (this.flushing || this.scheduled || this.error !== undefined) return;
    this.scheduled = true;
    // let the results of this turn of the event loop join the batch
    setImmediate(() => {
      this.scheduled = false;
      if (!this.flushing && this.pending.length > 0 && this.error === undefined) this.flushing = this.flushLoop();
    });
  }

  private async flushLoop(): Promise<void> {
    try {
      while (this.pending.length > 0 && this.error === undefined) {
        const wait = this.lastFlushStart + this.config.flushIntervalMs - Date.now();
        if (wait > 0 && this.pending.length < this.config.checkpointEvery && !this.draining) {
          await new Promise<void>((resolve) => {
            const timer = setTimeout(resolve, wait);
            this.cutWait = () => {
              clearTimeout(timer);
              resolve();
            };
          });
          this.cutWait = undefined;
          continue;
        }
        this.lastFlushStart = Date.now();
        const batch = this.pending.take(this.config.keyOf);
        this.inFlight = batch.length;
        try {
          await this.writeBatch(batch);
        } catch (error) {
          this.fail(error);
          return;
        } finally {
          this.inFlight = 0;
        }
        this.durable += batch.length;
        this.config.onFlushed(batch.length);
        this.wake();
      }
    } finally {
      this.flushing = undefined;
    }
  }

  /** Writes a batch; a result the store refuses is isolated by halving and written as a failure. */
  private async writeBatch(batch: ItemEntry[]): Promise<void> {
    try {
      await this.config.store.appendItems(this.config.runId, this.config.ledger, batch, this.config.writeOptions());
    } catch (error) {
      if (!isCairnError(error, 'PAYLOAD_TOO_LARGE') && !isCairnError(error, 'UNSERIALIZABLE')) throw error;
      const first = batch[0];
      if (batch.length === 1 && first?.status === 'done') {
        const failed = {
          key: first.key,
          index: first.index,
          attempt: first.attempt,
          status: 'failed' as const,
          error: serializeError(error),
          ...(first.spend === undefined ? {} : { spend: first.spend }), // paid for, even if its result cannot be kept
          ...(first.hash === undefined ? {} : { hash: first.hash }),
        };
        await this.config.store.appendItems(this.config.runId, this.config.ledger, [failed], this.config.writeOptions());
        this.config.onRejected(first, failed);
        return;
      }
      if (batch.length === 1 && first?.status === 'failed' && (first.error.stack !== undefined || first.error.message.length > 500)) {
        // a failure whose error is too large to store: keep its name, code and the start of its message
        const { name, code, message } = first.error;
        const error = {
          name,
          message: message.length > 500 ? `${message.slice(0, 500)}…` : message,
          ...(code === undefined ? {} : { code }),
        };
        await this.writeBatch([{ ...first, error }]);
        return;
      }
      if (batch.length === 1) throw error;
      const half = Math.ceil(batch.length / 2);
      await this.writeBatch(batch.slice(0, half));
      await this.writeBatch(batch.slice(half));
    }
  }

  private wake(): void {
    if (this.hasRoom && this.roomWaiters.length > 0) {
      const waiters = this.roomWaiters;
      this.roomWaiters = [];
      for (const resolve of waiters) resolve();
    }
    let n = 0;
    while (n < this.durableWaiters.length && this.durableWaiters[n]!.seq <= this.durable) this.durableWaiters[n++]!.resolve();
    if (n > 0) this.durableWaiters.splice(0, n);
  }

  private fail(cause: unknown): void {
    const error = cause instanceof Error ? cause : new Error(String(cause));
    this.error = error;
    for (const resolve of this.roomWaiters) resolve();
    this.roomWaiters = [];
    for (const w of this.durableWaiters) w.reject(error);
    this.durableWaiters = [];
  }
}
