/**
 * Store failures that are not the run's fault, in one vocabulary for every store: a lock held by
 * another process (`STORE_BUSY`), a database out of reach (`STORE_UNAVAILABLE`), a full disk
 * (`STORE_FULL`). Each store maps its driver's codes (SQLite result codes, Postgres SQLSTATEs,
 * errno) to these, so that no raw driver code ever reaches a user; the passing ones are tried
 * again with the backoff below, up to the store's `transientRetryMs`.
 */
import fs from 'node:fs';
import { CairnError, isCairnError, type ErrorContext } from '../core/errors.js';
import { errnoOf } from '../core/durable-fs.js';

/** The wait before try `attempt + 1` (0-based): doubling from `baseMs` up to `capMs`, each between half and all of it. */
export function backoffDelay(attempt: number, baseMs: number, capMs: number): number {
  const full = Math.min(capMs, baseMs * 2 ** Math.min(attempt, 30));
  return Math.round(full * (0.5 + Math.random() / 2));
}

export function pause(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** errno codes of a disk that cannot take more bytes. */
const DISK_FULL = new Set(['ENOSPC', 'EDQUOT']);

/** errno codes of a file system that cannot be written now, with what to say about each. */
const UNWRITABLE: ReadonlyMap<string, string> = new Map([
  ['EIO', 'an I/O error (a failing disk or a lost network file system)'],
  ['EROFS', 'the file system is mounted read-only'],
  ['ESTALE', 'a stale handle of a network file system'],
  ['EACCES', 'permission denied'],
  ['EPERM', 'operation not permitted'],
  ['EMFILE', 'this process has too many files open'],
  ['ENFILE', 'the system has too many files open'],
]);

/** True for an error of a full disk or an exhausted quota (`ENOSPC`, `EDQUOT`). */
export function isDiskFull(error: unknown): boolean {
  const code = errnoOf(error);
  return code !== undefined && DISK_FULL.has(code);
}

/** `STORE_FULL`: no space left where `where` (a file or folder) lives. */
export function storeFullError(where: string, cause: unknown, context: ErrorContext = {}, detail = ''): CairnError {
  const code = errnoOf(cause);
  const why = code === 'EDQUOT' ? 'the disk quota is exhausted' : 'no space left on the disk';
  return new CairnError(
    'STORE_FULL',
    `Cannot write ${where}: ${why}${detail ? ` (${detail})` : ''}. Nothing of this write counts; everything saved before it is kept. ` +
      'Free space there, then resume the run (cairn resume <run-id>).',
    { ...context, path: where },
    { cause },
  );
}

/**
 * A file system error of a store's write as a cairn error naming `where`: `STORE_FULL` for a full
 * disk or quota, `STORE_UNAVAILABLE` for an I/O error, a read-only or stale file system, missing
 * permissions or too many open files. Cairn errors and other errors come back unchanged.
 */
export function fileSystemError(error: unknown, where: string, context: ErrorContext = {}): unknown {
  if (isCairnError(error)) return error;
  const code = errnoOf(error);
  if (code === undefined) return error;
  const at = (error as { path?: unknown }).path;
  const place = typeof at === 'string' && at.length > 0 ? at : where;
  if (DISK_FULL.has(code)) return storeFullError(place, error, context);
  const why = UNWRITABLE.get(code);
  if (why === undefined) return error;
  return new CairnError(
    'STORE_UNAVAILABLE',
    `Cannot use ${place}: ${why} (${code}). Put the store right, then resume the run (cairn resume <run-id>); everything saved before is kept.`,
    { ...context, path: place },
    { cause: error },
  );
}

/**
 * Free bytes a store keeps on its disk for the records that end an attempt (the run record saying
 * `interrupted`, the lease given back): a write of items or of a checkpoint that would leave less is
 * refused before anything is written (the file and SQLite stores).
 */
export const FREE_SPACE_RESERVE_BYTES = 1024 * 1024;

/**
 * Free bytes on the file system holding `dir` for an unprivileged writer, or undefined when the
 * system cannot say (then nothing is refused on that ground).
 */
export function freeBytes(dir: string): number | undefined {
  try {
    const stats = fs.statfsSync(dir);
    return stats.bavail * stats.bsize;
  } catch {
    return undefined;
  }
}
