/** Small helpers shared by the test suites. */
import type { ItemEntry } from '../src/stores/store.js';

/** The `code` of the error a promise (or function) fails with, or undefined if it succeeds. */
export async function codeOf(promise: Promise<unknown> | (() => unknown)): Promise<string | undefined> {
  try {
    await (typeof promise === 'function' ? promise() : promise);
    return undefined;
  } catch (error) {
    return (error as { code?: string }).code ?? `uncoded: ${(error as Error).message}`;
  }
}

export async function collect<T>(iterable: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const value of iterable) out.push(value);
  return out;
}

/** A `done` ledger entry. */
export const done = (key: string, index: number, result: unknown, attempt = 1): ItemEntry => ({
  key,
  index,
  status: 'done',
  attempt,
  result,
});
