/**
 * What each store supplies to run the one conformance suite (`store-spec.ts`) unchanged.
 * Modelled on LangGraph's checkpoint-validation: a backend gives `{ name, open, destroy }` and
 * hooks that damage its raw storage the way a crash or a bad disk would.
 */
import type { StoreOptions } from '../../src/stores/common.js';
import type { Store } from '../../src/stores/store.js';

export interface StoreHarness {
  readonly name: string;
  /** A URL for a fresh, empty location (a new temp dir, database file, named memory space…). */
  freshUrl(): Promise<string>;
  /** Opens a store at `url`; a second call gives a second, independent instance on the same data. */
  open(url: string, options?: StoreOptions): Promise<Store>;
  /** Removes everything at `url` (every instance is closed first by the suite). */
  destroy(url: string): Promise<void>;
  /** For stores that keep files: the folder everything of `url` must stay inside. */
  rootDir?(url: string): string;
  readonly tamper: Tamper;
}

/** Raw-storage damage, applied while the store instances stay open. */
export interface Tamper {
  /** Replaces the stored line of checkpoint `seq` with `mutate(line)`. */
  mutateCheckpoint(url: string, runId: string, seq: number, mutate: (line: string) => string): Promise<void>;
  /**
   * Simulates a torn write after the last checkpoint: the first `partial` characters of a would-be
   * record (file stores: raw bytes without a newline; databases: a row holding the cut text as
   * the next seq).
   */
  tearCheckpointTail(url: string, runId: string, partial: string): Promise<void>;
  /** Replaces the `position`-th (0-based, append order) stored line of a stage's ledger. */
  mutateItem(url: string, runId: string, stage: string, position: number, mutate: (line: string) => string): Promise<void>;
  /** Replaces the stored run record line. */
  mutateRun(url: string, runId: string, mutate: (line: string) => string): Promise<void>;
  /**
   * Removes only the run record (as a user or a crash could), leaving the run's checkpoints,
   * ledgers, artifact entries and lease behind as leftovers; SQL stores delete the row with
   * cascades bypassed. Optional while a store's harness lacks it: its leftover cases are skipped.
   */
  removeRunRecord?(url: string, runId: string): Promise<void>;
}
