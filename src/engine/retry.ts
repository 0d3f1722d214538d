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

/**
 * The wait before retry number `retryNo` (1-based) after `error`: what the error says to wait, when
 * it says (see {@link retryAfterOf}), else the policy's exponential backoff.
 */
export function backoffDelay(policy: ResolvedRetry, retryNo: number, error?: unknown): number {
  const asked = retryAfterOf(error);
  if (asked !== undefined) return asked;
  const base = Math.min(policy.maxBackoffMs, policy.backoffMs * policy.factor ** (retryNo - 1));
  return policy.jitter ? Math.round(base * (0.5 + Math.random())) : base;
}

/** The longest wait an error can ask for; a date or a number past it is taken as this. */
const MAX_RETRY_AFTER_MS = 6 * 60 * 60 * 1000;

/**
 * How long `error` asks to wait before the next try, in ms, or undefined when it does not say:
 * a `retryAfterMs` number on the error (set it on errors your code throws), else an HTTP
 * `Retry-After` header (seconds, or a date) on the error's `headers` or `response.headers` (a plain
 * object or a fetch `Headers`), as HTTP clients attach them to a 429 or 503.
 */
export function retryAfterOf(error: unknown): number | undefined {
  if (typeof error !== 'object' || error === null) return undefined;
  const own = (error as { retryAfterMs?: unknown }).retryAfterMs;
  if (typeof own === 'number' && own >= 0 && Number.isFinite(own)) return Math.min(Math.round(own), MAX_RETRY_AFTER_MS);
  const carrier = error as { headers?: unknown; response?: { headers?: unknown } };
  const value = headerOf(carrier.headers, 'retry-after') ?? headerOf(carrier.response?.headers, 'retry-after');
  if (value === undefined) return undefined;
  const text = value.trim();
  const ms = /^\d+(\.\d+)?$/.test(text) ? Number(text) * 1000 : Date.parse(text) - Date.now();
  return Number.isFinite(ms) ? Math.min(Math.max(0, Math.round(ms)), MAX_RETRY_AFTER_MS) : undefined;
}

function headerOf(headers: unknown, name: string): string | undefined {
  if (typeof headers !== 'object' || headers === null) return undefined;
  const get = (headers as { get?: unknown }).get;
  if (typeof get === 'function') {
    const value: unknown = (get as (n: string) => unknown).call(headers, name);
    return typeof value === 'string' ? value : undefined;
  }
  for (const [key, value] of Object.entries(headers)) {
    if (key.toLowerCase() !== name) continue;
    if (typeof value === 'string') return value;
    if (typeof value === 'number') return String(value);
    if (Array.isArray(value) && typeof value[0] === 'string') return value[0];
  }
  return undefined;
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
 * promise rejects with `code` (`STAGE_TIMEOUT` for a stage or node, `ITEM_TIMEOUT` for an item) at
 * the deadline even if `fn` ignores its signal; what `fn` returns after that is dropped.
 */
export async function withTimeout<T>(
  fn: (signal: AbortSignal) => T | PromiseLike<T>,
  parent: AbortSignal,
  timeoutMs: number | undefined,
  what: string,
  context: Record<string, unknown>,
  code: 'STAGE_TIMEOUT' | 'ITEM_TIMEOUT' = 'STAGE_TIMEOUT',
): Promise<T> {
  if (timeoutMs === undefined) return fn(parent);
  const controller = new AbortController();
  const onParentAbort = (): void => controller.abort(parent.reason);
  if (parent.aborted) controller.abort(parent.reason);
  else parent.addEventListener('abort', onParentAbort, { once: true });
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      const error = new CairnError(code, `${what} ran longer than its timeout of ${timeoutMs} ms.`, { ...context, timeoutMs });
      controller.abort(error);
      reject(error);
    }, timeoutMs);
  });
  try {
    return await Promise.race([Promise.resolve().then(() => fn(controller.signal)), deadline]);
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
