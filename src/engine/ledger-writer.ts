/**
 * Group commit for item ledgers. Results queue in memory; a flush starts as soon as the previous
 * one is durable (or, with `flushIntervalMs`, no sooner than that after it started) and writes
 * everything queued as one atomic batch. Workers wait only when `checkpointEvery` results are
 * unflushed. So slow items (paid API calls) are durable within about one fsync, and fast items
 * batch by the thousand without a promise per item.
 */
import { isCairnError } from '../core/errors.js';
import type { ItemEntry, Store, WriteOptions } from '../stores/store.js';
import { serializeError } from '../core/errors.js';

export interface LedgerWriterConfig {
  readonly store: Store;
  readonly runId: string;
  readonly ledger: string;
  readonly checkpointEvery: number;
  readonly flushIntervalMs: number;
  readonly writeOptions: () => WriteOptions;
  /** After each durable batch. */
  readonly onFlushed: (count: number) => void;
  /** An entry the store refused (its result too large or not serializable) was written as failed instead. */
  readonly onRejected: (entry: Extract<ItemEntry, { status: 'done' }>, failed: Extract<ItemEntry, { status: 'failed' }>) => void;
}

export class LedgerWriter {
  private pending: ItemEntry[] = [];
  private inFlight = 0;
  private flushing: Promise<void> | undefined;
  private scheduled = false;
  private lastFlushStart = 0;
  private added = 0;
  private durable = 0;
  private roomWaiters: (() => void)[] = [];
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

  /** Queues an entry; returns its sequence number (for {@link waitDurable}). */
  add(entry: ItemEntry): number {
    this.pending.push(entry);
    this.added += 1;
    this.schedule();
    return this.added;
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

  /** Writes everything queued; rejects with the first write error. */
  async drain(): Promise<void> {
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
        if (wait > 0 && this.pending.length < this.config.checkpointEvery) {
          await new Promise((resolve) => setTimeout(resolve, wait));
          continue;
        }
        this.lastFlushStart = Date.now();
        const batch = this.pending;
        this.pending = [];
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
