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
 * Deletes `runId` unless a live process holds it. Returns false if there is no such run; throws
 * `RUN_LOCKED` (naming the holder) when it is in use.
 */
export async function deleteRunUnlessHeld(store: Store, runId: string): Promise<boolean> {
  try {
    await store.acquireLock(runId, { owner: `cairn (pid ${process.pid})`, ttlMs: 60_000 });
  } catch (error) {
    if (isCairnError(error, 'RUN_LOCKED')) throw error;
    if (isCairnError(error, 'NOT_FOUND')) return false;
    // a damaged run can keep the lease from being taken: then at least never delete under a live holder
    const held = await store.getLock(runId).catch(() => undefined); // live by the store's clock
    if (held) throw runLockedError(held);
  }
  return store.deleteRun(runId); // the lease goes with the run
}
