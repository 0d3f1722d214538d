/** Retries with exponential backoff, abortable sleeps and timeouts for stage, node and item tries. */
import { CairnError, isCairnError } from '../core/errors.js';
import type { RetryPolicy } from './types.js';

/** Errors that no retry can fix: the run is stopping, or the call itself was wrong. */
const NEVER_RETRIED = new Set([
  'INVALID_INPUT',
  'INVALID_DEFINITION',
  'INVALID_RUN_ID',
  'PAYLOAD_TOO_LARGE',
  'UNSERIALIZABLE',
  'LEASE_LOST',
  'RUN_INTERRUPTED',
  'RUN_CANCELLED',
  'FINGERPRINT_CHANGED',
  'MAX_STEPS_EXCEEDED',
  'STORE_CLOSED',
]);

export interface ResolvedRetry {
  readonly max: number;
  readonly backoffMs: number;
  readonly factor: number;
  readonly jitter: boolean;
  readonly maxBackoffMs: number;
  readonly retryIf: (error: unknown) => boolean;
}

export function resolveRetry(policy: RetryPolicy | undefined, what: string): ResolvedRetry {
  const resolved = {
    max: policy?.max ?? 0,
    backoffMs: policy?.backoffMs ?? 1000,
    factor: policy?.factor ?? 2,
    jitter: policy?.jitter ?? true,
    maxBackoffMs: policy?.maxBackoffMs ?? 60_000,
    retryIf: policy?.retryIf ?? (() => true),
  };
  if (!Number.isInteger(resolved.max) || resolved.max < 0)
    throw new CairnError('INVALID_DEFINITION', `${what}: retries.max must be an integer ≥ 0.`);
  if (!(resolved.backoffMs >= 0) || !(resolved.factor >= 1) || !(resolved.maxBackoffMs >= 0)) {
    throw new CairnError('INVALID_DEFINITION', `${what}: retries need backoffMs ≥ 0, factor ≥ 1 and maxBackoffMs ≥ 0.`);
  }
  return Object.freeze(resolved);
}

/** True when `error` (thrown by try number `tryNo`, 1-based) should be retried under `policy`. */
export function shouldRetry(policy: ResolvedRetry, error: unknown, tryNo: number, signal: AbortSignal): boolean {
  if (signal.aborted || tryNo > policy.max) return false;
  if (isWaitSignal(error)) return false;
  if (isCairnError(error) && NEVER_RETRIED.has(error.code)) return false;
  try {
    return policy.retryIf(error);
  } catch {
    return false;
  }
}

/** The wait before retry number `retryNo` (1-based). */
export function backoffDelay(policy: ResolvedRetry, retryNo: number): number {
  const base = Math.min(policy.maxBackoffMs, policy.backoffMs * policy.factor ** (retryNo - 1));
  return policy.jitter ? Math.round(base * (0.5 + Math.random())) : base;
}

/** Resolves after `ms`, or rejects with the signal's reason as soon as it aborts. */
export function sleep(ms: number, signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.reject(signal.reason as Error);
  return new Promise((resolve, reject) => {
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal.reason as Error);
    };
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * Runs `fn` with a child signal that aborts when `parent` does or after `timeoutMs`; the returned
 * promise rejects with `STAGE_TIMEOUT` at the deadline even if `fn` ignores its signal.
 */
export async function withTimeout<T>(
  fn: (signal: AbortSignal) => Promise<T>,
  parent: AbortSignal,
  timeoutMs: number | undefined,
  what: string,
  context: Record<string, unknown>,
): Promise<T> {
  if (timeoutMs === undefined) return fn(parent);
  const controller = new AbortController();
  const onParentAbort = (): void => controller.abort(parent.reason);
  parent.addEventListener('abort', onParentAbort, { once: true });
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      const error = new CairnError('STAGE_TIMEOUT', `${what} ran longer than its timeout of ${timeoutMs} ms.`, { ...context, timeoutMs });
      controller.abort(error);
      reject(error);
    }, timeoutMs);
  });
  try {
    return await Promise.race([fn(controller.signal), deadline]);
  } finally {
    clearTimeout(timer);
    parent.removeEventListener('abort', onParentAbort);
  }
}

/** Thrown by `ctx.waitFor` when its input has not been given yet; the executor saves the run as waiting. */
export class WaitSignal extends Error {
  override readonly name = 'WaitSignal';
  constructor(readonly inputName: string) {
    super(`Waiting for input ${inputName}.`);
  }
}

export function isWaitSignal(error: unknown): error is WaitSignal {
  return error instanceof WaitSignal;
}

/**
 * Waits for `work`; once `signal` aborts, waits at most `graceMs` more for it to finish (so that
 * finished work is saved), then rejects with the signal's reason.
 */
export function raceGrace<T>(work: Promise<T>, signal: AbortSignal, graceMs: number): Promise<T> {
  return new Promise((resolve, reject) => {
    let timer: NodeJS.Timeout | undefined;
    const onAbort = (): void => {
      timer = setTimeout(() => reject(signal.reason as Error), graceMs);
    };
    const settle = (): void => {
      clearTimeout(timer);
      signal.removeEventListener('abort', onAbort);
    };
    if (signal.aborted) onAbort();
    else signal.addEventListener('abort', onAbort, { once: true });
    work.then(
      (value) => {
        settle();
        resolve(value);
      },
      (error: unknown) => {
        settle();
        reject(error);
      },
    );
  });
}
