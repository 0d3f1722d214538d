/**
 * Rebuilding a run's summary from what is intact, so that a run whose record was damaged goes on
 * without redoing its intact work. Two cases:
 *
 * - The store read the record back from an earlier intact copy (the file store's run log): the
 *   summary is a few updates behind the run.
 * - Nothing of the summary is left (SQL stores keep one row per run: its header columns survive,
 *   its summary does not), or it fails its schema: a new summary is made from the definition and
 *   the input given again (`cairn run <module> --input … --run-id <id>`).
 *
 * Either way, what the executors rely on is read again from records that are intact: completed
 * stages from their checkpoints (the plan always reads them), and each stage's item ledgers from
 * their names — the newest generation of a stage that has no completion is taken as the one it was
 * working on, so its done items are skipped. The repaired summary is written at once (with a
 * history entry saying what happened), before the run goes on.
 */
import { CairnError } from '../core/errors.js';
import type { RunRecord, RunStatus, Store } from '../stores/store.js';
import { ledgerOwner } from './ledger-names.js';
import { readCompletedStages } from './pipeline-plan.js';
import { addHistory, inspectRunData, newRunData, stageOf, type RunData } from './run-data.js';

/** What the engine knows about the run it is asked to continue: its definition and input. */
export interface RepairTarget {
  readonly kind: 'pipeline' | 'workflow';
  readonly name: string;
  /** Stage (or node) names in definition order. */
  readonly order: readonly string[];
  readonly input: unknown;
  readonly inputHash: string;
}

/** A warning for `cairn.on('warning')`. */
export type RepairWarning = { readonly runId: string; readonly code: string; readonly message: string };

/** True when the stored record must be rebuilt before the engine continues the run. */
export function needsRepair(record: RunRecord): boolean {
  if (record.rebuilt) return true;
  const read = inspectRunData(record);
  return read.owner === 'unknown' && read.error.code === 'CHECKPOINT_CORRUPT';
}

/**
 * Rebuilds and writes the summary of a run whose record or summary is damaged, and returns the
 * record as written. A record that is not the engine's, or of another definition or input, is
 * returned as it is (the caller refuses it with the usual error); a newer format is refused.
 */
export async function repairRun(
  store: Store,
  record: RunRecord,
  target: RepairTarget,
  warn: (warning: RepairWarning) => void,
): Promise<RunRecord> {
  const read = inspectRunData(record);
  if (read.owner === 'checkpoint-manager') return record;
  if (read.owner === 'unknown' && read.error.code !== 'CHECKPOINT_CORRUPT') throw read.error;
  if (record.name !== target.name) {
    throw new CairnError('INVALID_INPUT', `Run ${record.id} belongs to ${record.name}, not to ${target.name}. Choose another runId.`, {
      runId: record.id,
    });
  }
  let data: RunData;
  const damage = record.rebuilt ? `The run record was damaged (${record.rebuilt.where}: ${record.rebuilt.reason})` : '';
  let what: string;
  if (read.owner === 'engine') {
    data = read.data;
    if (data.inputHash !== target.inputHash) return record; // another input: refused by the caller
    what = `${damage} and read back from ${record.rebuilt?.from ?? 'an earlier copy'}, a few updates behind the run`;
  } else {
    checkInputOfId(record.id, target);
    data = newRunData(target.kind, target.input, target.inputHash, target.order);
    const lost = record.rebuilt ? `${damage} and its summary lost with it` : `The run's summary was damaged (${read.reason})`;
    what = `${lost}; a new summary was made from the definition and the input given now`;
  }
  const kept = await reconcileStages(store, record.id, data);
  const message =
    `${what}. Stages and items were read again from the intact checkpoints and item ledgers` +
    `${kept.length > 0 ? ` (done items kept: ${kept.join(', ')})` : ''}; the attempts and history before this entry may be incomplete.`;
  addHistory(data, 'run:rebuilt', message);
  warn({ runId: record.id, code: 'CHECKPOINT_CORRUPT', message });
  // the summary is behind (or new): the run goes on from its checkpoints, whatever status it showed
  const status: RunStatus = record.status === 'cancelled' ? 'cancelled' : 'interrupted';
  delete data.waitingFor;
  delete data.currentStage;
  return store.updateRun(record.id, record.version, { status, data });
}

/** A default run id holds its input's hash: a new summary is made only for the input it was started with. */
function checkInputOfId(runId: string, target: RepairTarget): void {
  const prefix = `${target.name.slice(0, 100)}-`;
  const hash = runId.startsWith(prefix) ? runId.slice(prefix.length) : '';
  if (/^[0-9a-f]{16}$/.test(hash) && hash !== target.inputHash.slice(0, 16)) {
    throw new CairnError(
      'INVALID_INPUT',
      `Run ${runId} was started with another input (its id holds the input's hash, ${hash}); give the same input to rebuild its summary.`,
      { runId },
    );
  }
}

/**
 * Brings each pipeline stage's generation up to its newest item ledger. A stage with a completion
 * checkpoint reruns (if it must) in a generation of its own; one without takes its newest ledger
 * as the one it was working on (no basis recorded: the executor goes on in it). Returns the
 * ledgers whose done items are kept that way.
 */
async function reconcileStages(store: Store, runId: string, data: RunData): Promise<string[]> {
  if (data.kind !== 'pipeline') return [];
  const newest = new Map<string, { generation: number; ledger: string }>();
  for (const ledger of await store.listLedgers(runId)) {
    const owner = ledgerOwner(ledger, data);
    if (!owner || owner.generation === undefined) continue;
    const known = newest.get(owner.stage);
    if (!known || owner.generation > known.generation) newest.set(owner.stage, { generation: owner.generation, ledger });
  }
  const { completed } = await readCompletedStages(store, runId);
  const kept: string[] = [];
  for (const name of data.order) {
    const stage = stageOf(data, name);
    const found = newest.get(name);
    if (completed.has(name)) {
      // a rerun, should the plan need one, starts above every ledger the stage has
      stage.status = 'completed';
      if (found && found.generation > stage.generation) stage.generation = found.generation;
      continue;
    }
    if (!found) continue;
    if (found.generation > stage.generation || stage.basis === undefined) {
      stage.generation = found.generation;
      delete stage.basis; // unknown: the executor goes on in this generation rather than start a new one
      stage.status = 'interrupted';
    }
    kept.push(found.ledger);
  }
  return kept;
}
