/**
 * Renamed pipeline stages (`renamedFrom`). A stage renamed in the definition takes over what the
 * run holds under its former name: its summary (moved to the new name, in the same place of the
 * stage order, with its spend), its item ledgers (they keep their names: the summary records the
 * name they are named after, `ledgerStage`), and its completion (the plan looks it up under the
 * former name while the new one has none). Dependents know a stage by that same recorded name in
 * their fingerprints and ledger bases, so they are not rerun either. Nothing is copied: a rename
 * costs one summary write, whatever the size of the ledgers.
 */
import { CairnError } from '../core/errors.js';
import type { Pipeline } from './pipeline.js';
import { addHistory, type RunData, type StoredStage } from './run-data.js';
import { addInto } from './spend.js';

type AnyPipeline = Pipeline<unknown, Record<string, unknown>, unknown>;

/**
 * Moves the summary of each stage the definition renames (`renamedFrom`) to its new name, unless
 * the new name has a state of its own already (then the rename was applied before, or both names
 * ran: nothing moves). Refuses (`INVALID_DEFINITION`) a stage named after the ledgers of another.
 */
export function applyRenames(def: AnyPipeline, data: RunData): void {
  for (const stage of def.stages) {
    const former = stage.options.renamedFrom;
    if (former === undefined || !Object.hasOwn(data.stages, former)) continue;
    const current = Object.hasOwn(data.stages, stage.name) ? data.stages[stage.name] : undefined;
    if (current && !isUntouched(current)) continue;
    const moved: StoredStage = { ...data.stages[former]! };
    const ledgerStage = moved.ledgerStage ?? former;
    if (ledgerStage === stage.name) delete moved.ledgerStage;
    else moved.ledgerStage = ledgerStage;
    data.stages[stage.name] = moved;
    delete data.stages[former];
    const order = data.order.filter((name) => name !== stage.name);
    const at = order.indexOf(former);
    if (at >= 0) order[at] = stage.name;
    else order.push(stage.name);
    data.order.splice(0, data.order.length, ...order);
    if (data.currentStage === former) data.currentStage = stage.name;
    if (data.error?.stage === former) data.error = { ...data.error, stage: stage.name };
    moveSpend(data, former, stage.name);
    addHistory(
      data,
      'stage:renamed',
      `Stage ${former} is now named ${stage.name} (renamedFrom): it keeps its completion, item ledgers and summary.`,
      stage.name,
    );
  }
  for (const stage of def.stages) {
    for (const [other, summary] of Object.entries(data.stages)) {
      if (other === stage.name || summary.ledgerStage !== stage.name) continue;
      throw new CairnError(
        'INVALID_DEFINITION',
        `Stage ${stage.name} of pipeline ${def.name} has the former name of stage ${other}, whose item ledgers in this run ` +
          `are still named after it. Choose another name, give it back to that stage ({ renamedFrom: '${other}' }), ` +
          'or start the run over ({ forceRestart: true }).',
        { stage: stage.name },
      );
    }
  }
}

/**
 * The name a stage's records are kept under: its ledgers, and its entry in its dependents'
 * fingerprints (`deps`, `depSeqs`) and ledger bases. A stage's own name, unless it was renamed.
 */
export function recordNameOf(data: Pick<RunData, 'stages'>, stage: string): string {
  return (Object.hasOwn(data.stages, stage) ? data.stages[stage]?.ledgerStage : undefined) ?? stage;
}

/** A summary that holds nothing yet: created for a stage that never ran. */
function isUntouched(stage: StoredStage): boolean {
  return stage.runs === 0 && stage.generation === 0 && stage.basis === undefined && stage.items === undefined;
}

/** The stage's spend moves with it: the ledgers it owns, and what it paid outside items. */
function moveSpend(data: RunData, from: string, to: string): void {
  const spend = data.spend;
  if (!spend) return;
  for (const open of Object.values(spend.open ?? {})) if (open.stage === from) open.stage = to;
  const settled = spend.settled;
  if (settled && Object.hasOwn(settled, from)) {
    addInto(Object.hasOwn(settled, to) ? settled[to]! : (settled[to] = {}), settled[from]!);
    delete settled[from];
  }
}
