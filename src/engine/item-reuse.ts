/**
 * `ctx.items(…, { reuse: 'content' })`: results taken from an earlier generation of the stage for
 * items whose key and content are unchanged, instead of running them again.
 *
 * The rule. When a stage begins a new generation (it reruns: an input file or an upstream output
 * changed) and its processing is the same (pipeline version, stage version, config), the executor
 * records, per items name, the ledger the stage last ran that call with (`reuseFrom` in the stage's
 * summary). A call with `reuse: 'content'` hashes each item it has not done yet and takes the
 * result of an item whose latest entry in that ledger is done, under the same key, with the same
 * hash. The hash is of the item as the list gives it, salted with the processing (see
 * `processingKey`): a result is taken only for the same item processed the same way, whatever
 * ledger is read, so a stale source (a crash before the summary caught up) can never lend a result
 * computed under another version or config. A reused result is written to the new ledger as a done
 * entry marked `reusedFrom` (with its hash): a crash after it needs no second lookup, and nothing is
 * paid (no spend). Only that one ledger is read: an item it lacks runs.
 */
import { CairnError } from '../core/errors.js';
import { canonicalHash } from '../core/hash.js';
import type { RunSession } from './run-session.js';
import type { ItemEntry, Store } from '../stores/store.js';

/** A ledger entry of an item that is done. */
export type DoneEntry = Extract<ItemEntry, { readonly status: 'done' }>;

/** What a `reuse: 'content'` call needs from the run: the salt of its hashes and the ledger it may take results from. */
export interface ReuseSetup {
  /** The stage's processing key (empty for workflow nodes, which have no generations to reuse). */
  readonly salt: string;
  /** The ledger of an earlier generation to read, if any. */
  readonly source: string | undefined;
}

export function reuseSetup(session: RunSession, stage: string, name: string, ledger: string): ReuseSetup {
  const summary = Object.hasOwn(session.data.stages, stage) ? session.data.stages[stage] : undefined;
  const from = summary?.reuseFrom;
  const source = from && Object.hasOwn(from, name) ? from[name] : undefined;
  return { salt: summary?.processing ?? '', source: source === ledger ? undefined : source };
}

/** The hash an entry of a `reuse: 'content'` call carries: the item's canonical hash, salted with the stage's processing. */
export function itemHash(item: unknown, salt: string, where: { name: string; key: string; stage: string }): string {
  try {
    return canonicalHash({ p: salt, v: item }).slice(0, 32);
  } catch (error) {
    throw new CairnError(
      'INVALID_INPUT',
      `ctx.items(${where.name}) with reuse: 'content': item ${where.key} cannot be hashed (${(error as Error).message}). ` +
        'Give plain data (objects, arrays, strings, numbers, dates), or leave reuse out.',
      { stage: where.stage, items: where.name, key: where.key },
      { cause: error },
    );
  }
}

/**
 * The entries of `source` whose results the items at `pending` positions can take: the latest entry
 * of each such item's key, when it is done and carries the item's hash. Damaged records are
 * skipped (their items run).
 */
export async function findReusable(
  store: Store,
  runId: string,
  source: string,
  indexOf: (key: string) => number | undefined,
  hashOf: (index: number) => string | undefined,
): Promise<Map<number, DoneEntry>> {
  const found = new Map<number, DoneEntry>();
  const chunks = store.readItemChunks ? store.readItemChunks(runId, source) : oneByOne(store.readItems(runId, source));
  for await (const chunk of chunks)
    for (const entry of chunk) {
      const i = indexOf(entry.key);
      const hash = i === undefined ? undefined : hashOf(i);
      if (hash === undefined) continue; // not in the list, or done already
      // a later entry of the key supersedes an earlier one, whatever it says
      if (entry.status === 'done' && entry.hash === hash) found.set(i!, entry);
      else found.delete(i!);
    }
  return found;
}

async function* oneByOne(entries: AsyncIterable<ItemEntry>): AsyncGenerator<readonly ItemEntry[]> {
  for await (const entry of entries) yield [entry];
}
