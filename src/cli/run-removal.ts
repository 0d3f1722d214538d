/**
 * Deleting runs safely for `cairn delete` and `cairn cleanup`: the run's lease is taken first, so
 * a run a live process works on is never deleted under it (`RUN_LOCKED`), and a lease left by a
 * dead process is taken over.
 */
import { isCairnError, type CairnError } from '../core/errors.js';
import { runLockedError } from '../stores/common.js';
import type { Store } from '../stores/store.js';

/** Who holds a run, as `RUN_LOCKED` errors name it. */
export interface Holder {
  readonly owner?: string;
  readonly pid?: number;
  readonly host?: string;
  readonly expiresAt?: string;
}

/** The holder named by a `RUN_LOCKED` error. */
export function holderOf(error: CairnError): Holder {
  const { owner, pid, host, expiresAt } = error.context as Holder;
  return { owner, pid, host, expiresAt };
}

export function describeHolder(holder: Holder): string {
  return `in use by ${holder.owner ?? 'another process'} (pid ${holder.pid ?? '?'} on ${holder.host ?? '?'}) until ${holder.expiresAt ?? '?'}`;
}

/**
 * Deletes `runId` unless a live process holds it, or the records an earlier run with that id left
 * without its run record (no lease guards those: nothing can be written without the run record).
 * Returns false if there was nothing to delete; throws `RUN_LOCKED` (naming the holder) when it is in use.
 */
export async function deleteRunUnlessHeld(store: Store, runId: string): Promise<boolean> {
  try {
    await store.acquireLock(runId, { owner: `cairn (pid ${process.pid})`, ttlMs: 60_000 });
  } catch (error) {
    if (isCairnError(error, 'RUN_LOCKED')) throw error;
    if (isCairnError(error, 'NOT_FOUND')) return deleteLeftovers(store, runId);
    // a damaged run can keep the lease from being taken: then at least never delete under a live holder
    const held = await store.getLock(runId).catch(() => undefined); // live by the store's clock
    if (held) throw runLockedError(held);
  }
  return store.deleteRun(runId); // the lease goes with the run
}

/**
 * Deletes what an earlier run left without its run record, if anything. Checked first, so that a
 * run created since the lock was refused is not deleted (while leftovers exist, none can be).
 */
async function deleteLeftovers(store: Store, runId: string): Promise<boolean> {
  const problems = await store.validateRun(runId);
  if (!problems.some((p) => p.code === 'LEFTOVER_RECORDS')) return false;
  return store.deleteRun(runId);
}
