/** Runs one stage or node: tries with timeout and retries, stopped by the run's signal. */
import type { CairnError } from '../core/errors.js';
import { serializeError } from '../core/errors.js';
import { backoffDelay, isWaitSignal, raceGrace, shouldRetry, sleep, withTimeout, type ResolvedRetry } from './retry.js';
import type { RunSession } from './run-session.js';

export type TryOutcome<T> =
  | { readonly kind: 'ok'; readonly value: T }
  | { readonly kind: 'wait'; readonly name: string }
  | { readonly kind: 'stopped'; readonly reason: CairnError }
  | { readonly kind: 'error'; readonly error: unknown };

/** Extra time after the grace period for the stage's own saving (a ledger flush) to land. */
const SAVE_MARGIN_MS = 2000;

export async function runTries<T>(
  session: RunSession,
  stage: string,
  policy: ResolvedRetry,
  timeoutMs: number | undefined,
  fn: (tryNo: number, signal: AbortSignal) => Promise<T>,
): Promise<TryOutcome<T>> {
  const signal = session.signal;
  for (let tryNo = 1; ; tryNo++) {
    try {
      const work = withTimeout((s) => fn(tryNo, s), signal, timeoutMs, `Stage ${stage}`, { runId: session.runId, stage });
      const value = await raceGrace(work, signal, session.config.gracePeriodMs + SAVE_MARGIN_MS);
      return { kind: 'ok', value };
    } catch (error) {
      if (isWaitSignal(error)) return { kind: 'wait', name: error.inputName };
      if (signal.aborted) return { kind: 'stopped', reason: signal.reason as CairnError };
      const retry = shouldRetry(policy, error, tryNo, signal);
      const delayMs = retry ? backoffDelay(policy, tryNo, error) : 0;
      const tries = { try: tryNo, maxTries: policy.max + 1, ...(retry ? { retryInMs: delayMs } : {}) };
      session.emit('stage:fail', { runId: session.runId, stage, error: serializeError(error), willRetry: retry, ...tries });
      if (!retry) return { kind: 'error', error };
      try {
        await sleep(delayMs, signal);
      } catch {
        return { kind: 'stopped', reason: signal.reason as CairnError };
      }
    }
  }
}
