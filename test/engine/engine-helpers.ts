/**
 * Helpers the engine suites share: Cairn instances that are closed after each test, promises a
 * test resolves by hand, event recording, and raw damage of a stored checkpoint on every store.
 */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, afterEach } from 'vitest';
import { unsealLine } from '../../src/core/record.js';
import { Cairn, type CairnOptions } from '../../src/engine/cairn.js';
import type { CairnEventName, CairnEvents } from '../../src/engine/types.js';
import { MemoryStore } from '../../src/stores/memory/memory-store.js';
import { openStore } from '../../src/stores/open-store.js';
import type { ItemEntry, Store } from '../../src/stores/store.js';
import { flipByte } from '../conformance/store-spec.js';
import type { EngineStoreKind } from './store-matrix.js';
import { mutateFileLine } from '../helpers.js';

export type CairnFactory = ((url: string, options?: Omit<CairnOptions, 'store'>) => Cairn) & {
  /** Closes one instance now (the rest are closed after the test). */
  close(cairn: Cairn): Promise<void>;
};

/**
 * Call inside a `describe`: returns `open(url, options)`, which makes a `Cairn` without signal
 * handling; every instance still open is closed after each test. Artifact folders of memory
 * stores (under the OS temp folder) are removed after the file.
 */
export function useCairns(): CairnFactory {
  const open = new Set<Cairn>();
  const memoryNames = new Set<string>();
  afterEach(async () => {
    const all = [...open];
    open.clear();
    for (const cairn of all) await cairn.close();
  });
  afterAll(async () => {
    for (const name of memoryNames)
      await fs.rm(path.join(os.tmpdir(), `cairn-memory-${process.pid}-${name}`), { recursive: true, force: true });
  });
  const factory = (url: string, options: Omit<CairnOptions, 'store'> = {}): Cairn => {
    if (url.startsWith('memory:')) memoryNames.add(url.slice('memory:'.length));
    const cairn = new Cairn({ handleSignals: false, ...options, store: url });
    open.add(cairn);
    return cairn;
  };
  factory.close = async (cairn: Cairn): Promise<void> => {
    if (open.delete(cairn)) await cairn.close();
  };
  return factory;
}

/** A promise with its resolve and reject functions, for stages a test releases by hand. */
export function deferred<T = void>(): { promise: Promise<T>; resolve: (value: T) => void; reject: (error: unknown) => void } {
  let resolve!: (value: T) => void;
  let reject!: (error: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/** Records every payload of `event` emitted by `cairn`. */
export function record<K extends CairnEventName>(cairn: Cairn, event: K): CairnEvents[K][] {
  const seen: CairnEvents[K][] = [];
  cairn.on(event, (payload) => seen.push(payload));
  return seen;
}

/** Counts calls per key. */
export class Counter {
  private readonly counts = new Map<string, number>();
  hit(key: string): void {
    this.counts.set(key, this.of(key) + 1);
  }
  of(key: string): number {
    return this.counts.get(key) ?? 0;
  }
  reset(): void {
    this.counts.clear();
  }
}

/** Resolves after `ms` (used only to shuffle completion order, never asserted on). */
export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Opens a second, independent store instance on `url`, runs `fn`, closes it. */
export async function withStore<T>(url: string, fn: (store: Store) => Promise<T>): Promise<T> {
  const store = await openStore(url);
  try {
    return await fn(store);
  } finally {
    await store.close();
  }
}

/** Every entry of a ledger, in append order. */
export async function ledgerEntries(url: string, runId: string, ledger: string): Promise<ItemEntry[]> {
  return withStore(url, async (store) => {
    const out: ItemEntry[] = [];
    for await (const entry of store.readItems(runId, ledger)) out.push(entry);
    return out;
  });
}

/**
 * Damages the stored line of checkpoint `seq` (one character flipped, so its checksum no longer
 * matches), the way a bad disk would: in the memory space, in `checkpoints.jsonl`, or in the
 * SQLite row through a second connection.
 */
export async function damageCheckpoint(kind: EngineStoreKind['name'], url: string, runId: string, seq: number): Promise<void> {
  const rest = url.slice(url.indexOf(':') + 1);
  if (kind === 'memory') {
    const data = new MemoryStore(rest).space.get(runId);
    const line = data?.checkpoints.get(seq);
    if (!data || line === undefined) throw new Error(`no checkpoint ${seq} of ${runId} in ${url}`);
    data.checkpoints.set(seq, flipByte(line));
    return;
  }
  if (kind === 'file') {
    mutateFileLine(
      rest,
      runId,
      'checkpoints.jsonl',
      (line) => {
        const opened = unsealLine(line);
        return opened.ok && opened.body.seq === seq && opened.body.t === 'cp';
      },
      flipByte,
    );
    return;
  }
  const db = new Database(rest);
  try {
    const line = db.prepare('SELECT line FROM cairn_checkpoints WHERE run_id = ? AND seq = ?').pluck().get(runId, seq) as
      string | undefined;
    if (line === undefined) throw new Error(`no checkpoint ${seq} of ${runId} in ${rest}`);
    db.prepare('UPDATE cairn_checkpoints SET line = ? WHERE run_id = ? AND seq = ?').run(flipByte(line), runId, seq);
  } finally {
    db.close();
  }
}
