/**
 * Passing failures of the Postgres store, and what is sent again after one. A killed backend
 * (`pg_terminate_backend`, 57P01), a server restarting or crashed (57P02, 57P03, ECONNREFUSED), a
 * connection broken (class 08, ECONNRESET), too many connections (53300): the pool drops the
 * broken connection and opens a new one for the next try. A deadlock or serialization failure
 * (40P01, 40001) or a cancelled statement (57014): the server rolled it back.
 *
 * Sending again is safe when the first try surely did not commit (the server said it failed), and
 * for operations whose repeat changes nothing more (reads; renewing or releasing a lease;
 * recording artifacts, which replaces lines by path; queueing). A write whose reply was lost with
 * its connection may have committed, though, and sending it again could apply it twice: a second
 * checkpoint, a batch of items twice, a lease taken twice. Each such write carries what identifies
 * it once it landed (its exact sealed line, which holds its version or seq and its time; or a
 * random token), and after a lost reply {@link retryWrite} first asks the database whether it
 * landed; only if not is it sent again. The statements are also written so that a first try still
 * running on the server (a connection cut by the network, not by the server) and the try sent
 * again cannot both apply: each is a compare-and-set on what the first changes (the version, the
 * next seq, a live lease, the ledger's last batch token), so the later one finds it changed and
 * writes nothing. Fencing is untouched: a write sent again after the lease was taken over is
 * refused by the same statement (`LEASE_LOST`).
 *
 * What is left after the store's `transientRetryMs` is `STORE_UNAVAILABLE` (or `STORE_BUSY` for
 * lock conflicts), naming the store; a server out of disk space is `STORE_FULL`.
 */
import { CairnError, isCairnError } from '../../core/errors.js';
import { backoffDelay, pause } from '../transient.js';
import { sqlState } from './postgres-driver.js';

/** What a try ran into: its connection (outcome unknown if it was a write), or a conflict the server rolled back. */
export type PgTrouble = 'connection' | 'conflict';

/** Network errors of a connection that broke or could not be made. */
const NETWORK_CODES = new Set([
  'ECONNRESET',
  'ECONNREFUSED',
  'ECONNABORTED',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTCONN',
  'EAI_AGAIN',
]);

/** The driver's own errors for a connection that went away (they carry no code). */
const CONNECTION_MESSAGES =
  /^Connection terminated|connection error and is not queryable|Client was closed and is not queryable|timeout exceeded when trying to connect|Connection ended/i;

/** The SQLSTATEs of a server going away or refusing connections for now. */
const CONNECTION_STATES = new Set(['57P01', '57P02', '57P03', '57P05', '53300', '25006']);

/** The SQLSTATEs of a statement the server rolled back that a new try can pass. */
const CONFLICT_STATES = new Set(['40001', '40P01', '55P03', '57014']);

/** Whether `error` is a passing one, and which kind; undefined for everything else (cairn's own errors included). */
export function troubleOf(error: unknown): PgTrouble | undefined {
  if (isCairnError(error)) return undefined;
  const state = sqlState(error);
  if (state !== undefined) {
    if (CONNECTION_STATES.has(state) || (state.startsWith('08') && state !== '08P01')) return 'connection';
    if (CONFLICT_STATES.has(state)) return 'conflict';
    return undefined;
  }
  const code = (error as { code?: unknown } | null)?.code;
  if (typeof code === 'string' && NETWORK_CODES.has(code)) return 'connection';
  const message = error instanceof Error ? error.message : '';
  return CONNECTION_MESSAGES.test(message) ? 'connection' : undefined;
}

export interface RetryContext {
  /** The store's URL as shown to people (no password). */
  readonly url: string;
  /** How long a failing operation is tried again. */
  readonly retryMs: number;
  /** Throws `STORE_CLOSED` once the store is closed: nothing is tried again after that. */
  ensureOpen(): void;
}

/**
 * Sends `send` until it succeeds, again after each passing failure, with backoff, for up to
 * `ctx.retryMs`. After a lost connection (the outcome of a write unknown), `landed` is asked
 * first: a value means the write committed (that value is the result) and nothing is sent again.
 * Without `landed`, `send` must be safe to repeat.
 */
export async function retryWrite<T>(
  ctx: RetryContext,
  send: () => Promise<T>,
  landed?: () => Promise<{ value: T } | undefined>,
): Promise<T> {
  const started = Date.now();
  let unknown = false;
  for (let attempt = 0; ; attempt++) {
    try {
      if (unknown && landed) {
        const found = await landed();
        if (found) return found.value;
        unknown = false;
      }
      return await send();
    } catch (error) {
      const trouble = troubleOf(error);
      if (trouble === undefined) throw error;
      if (trouble === 'connection') unknown = true;
      const delay = backoffDelay(attempt, 50, 1000);
      if (Date.now() - started + delay > ctx.retryMs) throw gaveUp(ctx, trouble, error, Date.now() - started);
      await pause(delay);
      ctx.ensureOpen();
    }
  }
}

/** {@link retryWrite} for a read, or a write whose repeat changes nothing more than its first try. */
export function retryIdempotent<T>(ctx: RetryContext, send: () => Promise<T>): Promise<T> {
  return retryWrite(ctx, send);
}

function gaveUp(ctx: RetryContext, trouble: PgTrouble, error: unknown, waitedMs: number): CairnError {
  const text = error instanceof Error ? error.message : String(error);
  const code = sqlState(error) ?? (error as { code?: unknown } | null)?.code;
  const seconds = `${(waitedMs / 1000).toFixed(1)} s`;
  const context = { url: ctx.url, waitedMs, ...(typeof code === 'string' ? { driverCode: code } : {}) };
  if (trouble === 'conflict') {
    return new CairnError(
      'STORE_BUSY',
      `The Postgres store ${ctx.url} kept refusing the write for ${seconds} (${text}); nothing more was written. ` +
        'Find what holds the rows this long (a long transaction, a lock), then resume the run (cairn resume <run-id>).',
      context,
      { cause: error },
    );
  }
  return new CairnError(
    'STORE_UNAVAILABLE',
    `The Postgres store ${ctx.url} could not be reached for ${seconds} (${text}); nothing more was written. ` +
      'Check that the database server runs and accepts connections, then resume the run (cairn resume <run-id>); everything saved before is kept.',
    context,
    { cause: error },
  );
}

/**
 * An error of the Postgres driver as a cairn error naming the store: a server out of disk space
 * (53100) is `STORE_FULL`; a passing failure that reached a caller without being retried, and any
 * other server error, `STORE_UNAVAILABLE` with the server's message. Cairn errors come back unchanged.
 */
export function postgresError(error: unknown, url: string): unknown {
  if (isCairnError(error)) return error;
  const state = sqlState(error);
  const trouble = troubleOf(error);
  if (state === undefined && trouble === undefined) return error;
  const text = error instanceof Error ? error.message : String(error);
  const context = { url, ...(state === undefined ? {} : { sqlState: state }) };
  if (state === '53100') {
    return new CairnError(
      'STORE_FULL',
      `The database server of ${url} has no disk space left (${text}): nothing of this write counts; everything saved before is kept. ` +
        'Free space on the server, then resume the run (cairn resume <run-id>).',
      context,
      { cause: error },
    );
  }
  return new CairnError(
    'STORE_UNAVAILABLE',
    `The Postgres store ${url} could not do this (${text}${state ? `, SQLSTATE ${state}` : ''}). ` +
      'Check the database server and the store schema, then resume the run (cairn resume <run-id>).',
    context,
    { cause: error },
  );
}
