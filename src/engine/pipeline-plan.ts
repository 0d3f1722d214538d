/**
 * Decides, before anything runs, what each stage of a pipeline run will do: skip (completed, same
 * fingerprint, same upstream results, artifacts intact), run, or stay skipped by its `when`. The
 * plan is read-only, so a completed run can be checked and returned without taking its lock.
 */
import { z } from 'zod';
import { CairnError } from '../core/errors.js';
import type { ArtifactEntry, Store } from '../stores/store.js';
import { verifyStageArtifacts } from './artifacts.js';
import { configHash, describeChange, fingerprintOf, hashInputFiles, type FingerprintParts } from './fingerprint.js';
import type { Pipeline, StageDef } from './pipeline.js';
import type { RunData } from './run-data.js';
import { applyRenames, recordNameOf } from './stage-renames.js';

/** What a stage's completion checkpoint holds. */
export interface StageCheckpointState {
  readonly stage: string;
  readonly fingerprint: string;
  readonly parts: FingerprintParts;
  /** Checkpoint seq of each dependency's completion this result was computed from. */
  readonly depSeqs: Readonly<Record<string, number>>;
  readonly output: unknown;
  readonly artifacts: readonly string[];
  readonly durationMs: number;
}

export interface CompletedStage {
  readonly seq: number;
  readonly state: StageCheckpointState;
}

const stageState = z.object({
  stage: z.string(),
  fingerprint: z.string(),
  parts: z.object({
    pipelineVersion: z.string(),
    version: z.string(),
    config: z.string(),
    inputs: z.record(z.string(), z.string()),
    deps: z.record(z.string(), z.string()),
  }),
  depSeqs: z.record(z.string(), z.number()),
  output: z.unknown(),
  artifacts: z.array(z.string()),
  durationMs: z.number(),
});

export const STAGE_KIND = 'stage';
export const ERROR_KIND = 'error';

/** The newest intact completion checkpoint of each stage, and how many records were damaged. */
export async function readCompletedStages(
  store: Store,
  runId: string,
): Promise<{ completed: Map<string, CompletedStage>; damaged: number[] }> {
  const completed = new Map<string, CompletedStage>();
  const damaged: number[] = [];
  for (const entry of await store.listCheckpoints(runId)) {
    if (!entry.valid) {
      if (entry.code === 'FORMAT_TOO_NEW') {
        throw new CairnError('FORMAT_TOO_NEW', `Run ${runId} has a checkpoint written by a newer cairn; upgrade cairnjs to resume it.`, {
          runId,
        });
      }
      damaged.push(entry.seq ?? -1);
      continue;
    }
    if (entry.ref.kind !== STAGE_KIND) continue;
    const cp = await store.getCheckpoint(runId, entry.ref.seq);
    const parsed = stageState.safeParse(cp.state);
    if (!parsed.success) {
      damaged.push(entry.ref.seq);
      continue;
    }
    completed.set(parsed.data.stage, { seq: cp.seq, state: parsed.data });
  }
  return { completed, damaged };
}

export type StageAction = 'skip' | 'run' | 'condition';

export interface StagePlan {
  readonly stage: StageDef;
  readonly action: StageAction;
  /** Why the stage runs again, or why it is skipped. */
  readonly reason: string;
  readonly fingerprint: string;
  readonly parts: FingerprintParts;
  readonly depSeqs: Record<string, number>;
  readonly previous?: CompletedStage;
  /** The fingerprint changed and the stage says `onChange: 'refuse'`. */
  readonly refused: boolean;
  /** Completed before and runs again (fingerprint, upstream or artifact change). */
  readonly isRerun: boolean;
}

/**
 * Plans every stage. Stages that run make their dependents run too; a dependent's recorded
 * upstream seqs must match the upstream completions it would now read. Stages the definition
 * renames take over their former name's summary in `data` first (see stage-renames.ts); upstream
 * stages are known by the name their records are kept under, which a rename does not change.
 */
export async function planPipeline(
  store: Store,
  runId: string,
  def: Pipeline<unknown, Record<string, unknown>, unknown>,
  data: RunData,
  completed: ReadonlyMap<string, CompletedStage>,
): Promise<StagePlan[]> {
  const plans: StagePlan[] = [];
  const byName = new Map<string, StagePlan>();
  let manifest: ArtifactEntry[] | undefined;
  const pipelineVersion = def.options.version ?? '1';
  applyRenames(def, data);
  for (const stage of def.stages) {
    const opts = stage.options;
    const deps: Record<string, string> = {};
    const depSeqs: Record<string, number> = {};
    for (const dep of stage.dependsOn) {
      const depPlan = byName.get(dep)!;
      const key = recordNameOf(data, dep);
      deps[key] = depPlan.action === 'condition' ? 'skipped' : depPlan.fingerprint;
      const seq = depPlan.action === 'skip' ? depPlan.previous?.seq : undefined;
      if (seq !== undefined) depSeqs[key] = seq;
    }
    const files = typeof opts.inputs === 'function' ? opts.inputs(data.input) : (opts.inputs ?? []);
    const parts: FingerprintParts = {
      pipelineVersion,
      version: opts.version ?? '1',
      config: configHash(opts.config, stage.name),
      inputs: hashInputFiles(files, data, stage.name),
      deps,
    };
    const fingerprint = fingerprintOf(parts);
    const previous = completed.get(stage.name) ?? formerCompletion(stage, data, completed);
    const base = { stage, fingerprint, parts, depSeqs };

    const condition = opts.when?.({ input: data.input, config: opts.config });
    if (condition !== undefined && condition !== true) {
      const reason = typeof condition === 'string' && condition.length > 0 ? condition : 'its condition (when) is false';
      pushPlan({ ...base, action: 'condition', reason, refused: false, isRerun: false });
      continue;
    }

    let rerun: string | undefined;
    let refused = false;
    const runningDep = stage.dependsOn.find((d) => byName.get(d)?.action === 'run');
    if (!previous) {
      rerun = undefined;
    } else if (previous.state.fingerprint !== fingerprint) {
      rerun = describeChange(previous.state.parts, parts);
      refused = (opts.onChange ?? def.options.onChange ?? 'rerun') === 'refuse' && !runningDep;
    } else if (runningDep) {
      rerun = `upstream stage ${runningDep} runs again`;
    } else {
      const staleDep = stage.dependsOn.find((d) => previous.state.depSeqs[recordNameOf(data, d)] !== depSeqs[recordNameOf(data, d)]);
      if (staleDep) {
        rerun = `upstream stage ${staleDep} was rerun since`;
      } else if (previous.state.artifacts.length > 0) {
        manifest ??= await store.listArtifacts(runId);
        const problems = await verifyStageArtifacts(store, runId, manifest, previous.state.artifacts);
        if (problems.length > 0) rerun = `ARTIFACT_MISMATCH: ${problems.join(' ')}`;
      }
      if (!rerun) {
        pushPlan({
          ...base,
          previous,
          action: 'skip',
          reason: 'completed earlier; fingerprint and artifacts match',
          refused: false,
          isRerun: false,
        });
        continue;
      }
    }
    pushPlan({
      ...base,
      ...(previous ? { previous } : {}),
      action: 'run',
      reason: rerun ?? (data.stages[stage.name]?.status === 'pending' || !data.stages[stage.name] ? 'not run yet' : 'resuming'),
      refused,
      isRerun: previous !== undefined,
    });
  }
  return plans;

  function pushPlan(plan: StagePlan): void {
    plans.push(plan);
    byName.set(plan.stage.name, plan);
  }
}

/**
 * A renamed stage's completion under a former name: the one it was renamed from, or the one its
 * ledgers keep. Only for a stage that took over another's summary: a stage that ran under its own
 * name never takes the completion of the stage it says it was renamed from.
 */
function formerCompletion(stage: StageDef, data: RunData, completed: ReadonlyMap<string, CompletedStage>): CompletedStage | undefined {
  const recordName = recordNameOf(data, stage.name);
  if (recordName === stage.name) return undefined;
  const renamedFrom = stage.options.renamedFrom;
  return (renamedFrom === undefined ? undefined : completed.get(renamedFrom)) ?? completed.get(recordName);
}
