/**
 * Reading item ledger names back: which stage (or workflow node) a ledger belongs to. The executors
 * name ledgers `<stage>.<items>` (generation 0) and `<stage>.<items>.g<N>` after a stage reran
 * (pipelines), and `<node>.s<step>.<items>` (workflows: one ledger per visit of a node). Stage and
 * items names may contain dots, so the run's own stage names and known items names resolve the
 * ambiguity. A renamed stage's ledgers keep the name it had (`ledgerStage` in its summary).
 */
import type { RunData } from './run-data.js';
import { recordNameOf } from './stage-renames.js';

export interface LedgerOwner {
  /** The stage or node the ledger belongs to. */
  readonly stage: string;
  /** The name given to `ctx.items`. */
  readonly items: string;
  /** Pipelines: the stage generation the ledger was written in (0 before any rerun). */
  readonly generation?: number;
  /** Workflows: the step at which the node ran (0 for the entry node's first visit). */
  readonly step?: number;
}

const GENERATION_SUFFIX = /^(.+)\.g(\d+)$/;
const STEP_PREFIX = /^s(\d+)\.(.+)$/;

/** The stage and items call of a ledger, or undefined if the name matches no stage of the run. */
export function ledgerOwner(ledger: string, data: Pick<RunData, 'kind' | 'order' | 'stages'>): LedgerOwner | undefined {
  // longest prefix first: `a.b.items` belongs to stage `a.b` rather than `a` when both exist
  const prefixes = data.order
    .map((stage) => ({ stage, prefix: recordNameOf(data, stage) }))
    .sort((x, y) => y.prefix.length - x.prefix.length);
  for (const { stage, prefix } of prefixes) {
    if (!ledger.startsWith(`${prefix}.`)) continue;
    const rest = ledger.slice(prefix.length + 1);
    if (data.kind === 'workflow') {
      const match = STEP_PREFIX.exec(rest);
      if (match) return { stage, step: Number(match[1]), items: match[2]! };
      continue;
    }
    if (data.stages[stage]?.items?.[rest] !== undefined) return { stage, items: rest, generation: 0 };
    const match = GENERATION_SUFFIX.exec(rest);
    if (match) return { stage, items: match[1]!, generation: Number(match[2]) };
    return { stage, items: rest, generation: 0 };
  }
  return undefined;
}
