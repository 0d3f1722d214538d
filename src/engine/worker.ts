/**
 * The worker loop behind `cairn.work()` and `cairn worker`: claim a queued or stranded run, run it
 * under the claim's lease, repeat, with up to `concurrency` runs at once. The store does the hard
 * part (an atomic claim with a new epoch, fenced writes); this loop only paces the claims and
 * counts outcomes.
 */
import { CairnError, isCairnError } from '../core/errors.js';
import type { Claim, Store } from '../stores/store.js';
import type { CairnEvents, RunSummary } from './types.js';

export interface WorkOptions {
  /** Runs held at once. @defaultValue 1 */
  readonly concurrency?: number;
  /** Pause between claim attempts while nothing is claimable (with ±50 % jitter). @defaultValue 1000 */
  readonly pollMs?: number;
  /**
   * Stops the worker: it claims nothing more, and the runs it holds are interrupted (in-flight
   * work finishes within the grace period and is saved) and handed back to the queue.
   */
  readonly signal?: AbortSignal;
  /** Return as soon as nothing is claimable and nothing runs (a batch drain, tests). @defaultValue false */
  readonly exitWhenIdle?: boolean;
  /** Claim at most this many runs, then finish them and return. */
  readonly maxRuns?: number;
}

/** Errors that say this worker cannot start a run now, however soon it tries again. */
const CANNOT_START: ReadonlySet<string> = new Set([
  'CHECKPOINT_CORRUPT',
  'FORMAT_TOO_NEW',
  'SCHEMA_TOO_NEW',
  'STATE_TOO_NEW',
  'NOT_FOUND',
  'INVALID_INPUT',
  'INVALID_DEFINITION',
  'FINGERPRINT_CHANGED',
]);
/** How long a run this worker could not start is left to others before it tries it again. */
const UNRUNNABLE_FOR_MS = 10 * 60_000;

/** What a worker did, counted by how each claimed run ended. */
export interface WorkReport {
  claimed: number;
  completed: number;
  failed: number;
  waiting: number;
  interrupted: number;
  cancelled: number;
  /** Runs another worker took over while this one held them (its later writes were refused). */
  lost: number;
  /** Claims or runs that ended in an error outside any stage (a store that went away). */
  errors: number;
}

export interface WorkerHost {
  store(): Promise<Store>;
  /** Definition names this process can run. */
  names(): string[];
  readonly owner: string;
  readonly lockTtlMs: number;
  runClaim(claim: Claim): Promise<RunSummary>;
  /** Interrupts every run this process holds (they are saved and handed back). */
  interruptAll(reason: CairnError): void;
  emit<K extends keyof CairnEvents>(event: K, payload: CairnEvents[K]): void;
}

export async function runWorker(host: WorkerHost, options: WorkOptions): Promise<WorkReport> {
  const concurrency = options.concurrency ?? 1;
  const pollMs = options.pollMs ?? 1000;
  if (!Number.isSafeInteger(concurrency) || concurrency < 1 || !(pollMs >= 0)) {
    throw new CairnError('INVALID_INPUT', 'concurrency must be a positive integer and pollMs at least 0.');
  }
  const store = await host.store();
  const queue = store.queue;
  if (!queue) {
    throw new CairnError(
      'NOT_SUPPORTED',
      `The ${store.kind} store has no work queue: workers need a Postgres (postgres://…) or SQLite (sqlite:<path>) store.`,
    );
  }
  const names = host.names();
  if (names.length === 0) throw new CairnError('INVALID_INPUT', 'A worker needs at least one definition to run.');

  const report: WorkReport = { claimed: 0, completed: 0, failed: 0, waiting: 0, interrupted: 0, cancelled: 0, lost: 0, errors: 0 };
  const running = new Set<Promise<void>>();
  const signal = options.signal;
  let wake: () => void = () => undefined;
  const onAbort = (): void => {
    host.interruptAll(
      new CairnError('RUN_INTERRUPTED', 'The worker is stopping; the run is saved and handed back to the queue.', {
        reason: String(signal?.reason ?? 'stopped'),
      }),
    );
    wake();
  };
  signal?.addEventListener('abort', onAbort, { once: true });

  // Runs this worker could not start (a damaged or newer summary, an input its definition refuses…)
  // stay claimable: without this, the oldest of them would be claimed again at once, forever, and
  // starve every run queued after it. They are left to others (or to a repair) for a while.
  const unrunnable = new Map<string, number>(); // run id → until when (ms) it is not claimed again
  const excluded = (): string[] => {
    const now = Date.now();
    for (const [id, until] of unrunnable) if (until <= now) unrunnable.delete(id);
    return [...unrunnable.keys()];
  };

  const start = (claim: Claim): void => {
    report.claimed++;
    host.emit('run:claimed', {
      runId: claim.run.id,
      name: claim.run.name,
      reason: claim.reason,
      epoch: claim.lease.epoch,
      owner: claim.lease.owner,
    });
    const task = host.runClaim(claim).then(
      (summary) => {
        if (summary.status in report) report[summary.status as keyof WorkReport]++;
      },
      (error: unknown) => {
        if (isCairnError(error, 'LEASE_LOST')) report.lost++;
        else report.errors++;
        if (isCairnError(error) && CANNOT_START.has(error.code)) unrunnable.set(claim.run.id, Date.now() + UNRUNNABLE_FOR_MS);
        host.emit('warning', {
          runId: claim.run.id,
          code: isCairnError(error) ? error.code : 'WORKER_ERROR',
          message: error instanceof Error ? error.message : String(error),
        });
      },
    );
    const tracked: Promise<void> = task.finally(() => {
      running.delete(tracked);
      wake();
    });
    running.add(tracked);
  };

  try {
    for (;;) {
      if (signal?.aborted) break;
      const limitReached = options.maxRuns !== undefined && report.claimed >= options.maxRuns;
      let claimedNow = false;
      if (!limitReached && running.size < concurrency) {
        try {
          const claim = await queue.claim({ names, owner: host.owner, ttlMs: host.lockTtlMs, exclude: excluded() });
          if (claim && signal?.aborted) {
            await store.releaseLock(claim.lease).catch(() => undefined);
            break;
          }
          if (claim) {
            start(claim);
            claimedNow = true;
          }
        } catch (error) {
          if (isCairnError(error, 'STORE_CLOSED')) break;
          report.errors++;
          host.emit('warning', {
            runId: '',
            code: isCairnError(error) ? error.code : 'WORKER_ERROR',
            message: `Claiming failed, retrying: ${error instanceof Error ? error.message : String(error)}`,
          });
        }
      }
      if (claimedNow) {
        // claim more while there is room, letting timers and I/O run between claims
        await new Promise((resolve) => setImmediate(resolve));
        continue;
      }
      if (running.size === 0 && (limitReached || options.exitWhenIdle)) break;
      // wait for a run to finish (room to claim), the poll interval, or the stop signal
      await new Promise<void>((resolve) => {
        const timer = running.size >= concurrency || limitReached ? undefined : setTimeout(resolve, pollMs * (0.5 + Math.random()));
        wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      wake = () => undefined;
    }
    await Promise.all(running);
    return report;
  } finally {
    signal?.removeEventListener('abort', onAbort);
  }
}
