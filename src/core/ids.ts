import path from 'node:path';
import { CairnError } from './errors.js';

/** At most 128 characters of `[A-Za-z0-9._-]`, not starting with `.`. */
const RUN_ID_PATTERN = /^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$/;

export const MAX_RUN_ID_LENGTH = 128;

/** True when `id` is a valid run / workflow id. */
export function isValidRunId(id: unknown): id is string {
  return typeof id === 'string' && RUN_ID_PATTERN.test(id);
}

/**
 * Throws `INVALID_RUN_ID` unless `id` is a valid run id. Call before an id touches a path or a query.
 * @example assertRunId('speech-3f2a9c'); // ok
 */
export function assertRunId(id: unknown, what = 'run id'): asserts id is string {
  if (isValidRunId(id)) return;
  const shown = typeof id === 'string' ? JSON.stringify(id.length > 60 ? `${id.slice(0, 60)}…` : id) : typeof id;
  throw new CairnError(
    'INVALID_RUN_ID',
    `Invalid ${what} ${shown}: use at most ${MAX_RUN_ID_LENGTH} characters of letters, digits, '.', '_' and '-', not starting with '.'.`,
    { value: typeof id === 'string' ? id.slice(0, 200) : undefined },
  );
}

/** Stage and ledger names follow the same rule as run ids: they become file names. */
export function assertName(name: unknown, what: string): asserts name is string {
  assertRunId(name, what);
}

/**
 * Joins `parts` under `root` and proves the result stays inside it (defence in depth after the
 * id check): a path that would escape the root is refused with `INVALID_RUN_ID`.
 */
export function resolveInside(root: string, ...parts: string[]): string {
  const base = path.resolve(root);
  const target = path.resolve(base, ...parts);
  const rel = path.relative(base, target);
  if (rel === '' || rel.startsWith('..') || path.isAbsolute(rel)) {
    throw new CairnError('INVALID_RUN_ID', `Refusing path ${JSON.stringify(parts.join('/'))}: it resolves outside ${base}.`);
  }
  return target;
}
