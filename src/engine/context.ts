/** The parts of a stage's or node's context that both executors share. */
import { CairnError } from '../core/errors.js';
import { artifactPath, describeArtifact } from './artifacts.js';
import { runItems, type ItemsScope } from './items.js';
import { WaitSignal } from './retry.js';
import type { RunSession } from './run-session.js';
import type { ArtifactRef, BaseContext, ItemCounts, ItemsFn } from './types.js';

export interface ContextScope {
  readonly session: RunSession;
  readonly stage: string;
  readonly attempt: number;
  readonly signal: AbortSignal;
  /** Ledger name for an items call (stage, generation or step included). */
  ledgerName(name: string): string;
  /** Artifacts recorded by this try, by name. */
  readonly artifacts: Map<string, ArtifactRef>;
  /** Item counts by items name. */
  readonly counts: Map<string, ItemCounts>;
}

export function baseContext<I>(scope: ContextScope, input: I): BaseContext<I> {
  const { session } = scope;
  const used = new Set<string>();
  const itemsScope: ItemsScope = {
    session,
    stage: scope.stage,
    signal: scope.signal,
    ledgerName: (name) => {
      if (used.has(name)) {
        throw new CairnError(
          'INVALID_DEFINITION',
          `ctx.items(${name}) was already called in ${scope.stage}; give each call its own name.`,
          { stage: scope.stage },
        );
      }
      used.add(name);
      return scope.ledgerName(name);
    },
    onCounts: (name, counts) => scope.counts.set(name, counts),
  };
  const items = ((name: string, list: readonly unknown[], fn: never, options?: never) =>
    runItems(itemsScope, name, list, fn, options)) as ItemsFn;
  return {
    runId: session.runId,
    input,
    attempt: scope.attempt,
    signal: scope.signal,
    items,
    artifactPath: (name) => artifactPath(session.store, session.runId, name),
    artifact: (file) => {
      const ref = describeArtifact(session.store, session.runId, file);
      scope.artifacts.set(ref.name, ref);
      return ref;
    },
    waitFor: <V>(name: string): Promise<V> => {
      if (Object.hasOwn(session.data.inputs, name)) return Promise.resolve(session.data.inputs[name] as V);
      return Promise.reject(new WaitSignal(name));
    },
  };
}
