/**
 * Executes a pipeline run in one attempt: follows the plan, runs the stages that must run, saves
 * each completion as a durable checkpoint before the next stage starts, and ends the attempt as
 * completed, failed, waiting, interrupted or cancelled.
 */
import { CairnError, serializeError } from '../core/errors.js';
import { restateUnserializable } from '../core/serialize.js';
import { toEntries } from './artifacts.js';
import { baseContext, checkCallsAwaited, forgetReadAnswers, type ContextScope } from './context.js';
import { ledgerBasis, processingKey, seqLedgerBasis } from './fingerprint.js';
import type { Pipeline, StageDef } from './pipeline.js';
import { ERROR_KIND, planPipeline, readCompletedStages, STAGE_KIND, type StageCheckpointState, type StagePlan } from './pipeline-plan.js';
import { resolveRetry } from './retry.js';
import { addHistory, savedText, stageOf, type StoredStage } from './run-data.js';
import type { RunSession } from './run-session.js';
import { waitReason } from './spend.js';
import { recordNameOf } from './stage-renames.js';
import { runTries } from './tries.js';
import type { StageContext } from './types.js';

type AnyPipeline = Pipeline<unknown, Record<string, unknown>, unknown>;

export async function executePipeline(session: RunSession, def: AnyPipeline): Promise<void> {
  const { store, runId, data } = session;
  const { completed, damaged } = await readCompletedStages(store, runId);
  // which damaged records this attempt's plan read past: cairn validate counts them as recovered once it completes the run
  const ignored = damaged.filter((seq) => seq >= 0);
  if (ignored.length > 0) data.ignoredCheckpoints = { attempt: session.attempt, seqs: ignored };
  else delete data.ignoredCheckpoints;
  if (damaged.length > 0) {
    const message = `${damaged.length} damaged checkpoint record(s) (seq ${damaged.join(', ')}) were ignored; the stages they held run again.`;
    addHistory(data, 'checkpoint:damaged', message);
    session.emit('warning', { runId, code: 'CHECKPOINT_CORRUPT', message });
  }
  const plans = await planPipeline(store, runId, def, data, completed);
  const refused = plans.find((p) => p.refused);
  if (refused) {
    const error = new CairnError(
      'FINGERPRINT_CHANGED',
      `Stage ${refused.stage.name} of run ${runId} changed (${refused.reason}) and says onChange: 'refuse'. ` +
        'Restore the old version, or run again with { forceRestart: true } (cairn run … --force-restart).',
      { runId, stage: refused.stage.name },
    );
    await finishFailed(session, refused.stage.name, error);
    return;
  }

  const outputs = new Map<string, unknown>();
  const seqs = new Map<string, number>();
  const skipped = new Map<string, string>();
  let result: unknown;
  for (const plan of plans) {
    const name = plan.stage.name;
    const summary = stageOf(data, name);
    if (plan.action === 'condition') {
      skipped.set(name, plan.reason);
      Object.assign(summary, { status: 'skipped', reason: plan.reason });
      session.emit('stage:skip', { runId, stage: name, reason: plan.reason });
      continue;
    }
    if (plan.action === 'skip' && plan.previous) {
      outputs.set(name, plan.previous.state.output);
      seqs.set(name, plan.previous.seq);
      result = plan.previous.state.output;
      if (summary.status !== 'completed') Object.assign(summary, { status: 'completed' });
      session.emit('stage:skip', { runId, stage: name, reason: plan.reason });
      continue;
    }
    if (session.signal.aborted) break;
    if (plan.isRerun) {
      addHistory(data, 'stage:rerun', `Stage ${name} runs again: ${plan.reason.replace(/\.$/, '')}.`, name);
      if (plan.reason.startsWith('ARTIFACT_MISMATCH'))
        session.emit('warning', { runId, stage: name, code: 'ARTIFACT_MISMATCH', message: plan.reason });
    }
    const outcome = await runStage(session, def, plan, outputs, seqs, skipped);
    if (outcome === 'stop') return;
    result = outputs.get(name);
  }
  if (session.signal.aborted) {
    await finishStopped(session, session.signal.reason as CairnError);
    return;
  }
  data.result = result;
  data.hasResult = true;
  await session.end('completed', 'every stage completed');
}

async function runStage(
  session: RunSession,
  def: AnyPipeline,
  plan: StagePlan,
  outputs: Map<string, unknown>,
  seqs: Map<string, number>,
  skipped: Map<string, string>,
): Promise<'ok' | 'stop'> {
  const { runId, data } = session;
  const stage: StageDef = plan.stage;
  const name = stage.name;
  const summary = stageOf(data, name);
  // a renamed stage keeps its records under the name it had (its ledgers, its dependents' bases)
  const recordName = (stageName: string): string => recordNameOf(data, stageName);
  const ledgerPrefix = recordName(name);
  const depSeqs: Record<string, number> = {};
  for (const dep of stage.dependsOn) {
    const seq = seqs.get(dep);
    if (seq !== undefined) depSeqs[recordName(dep)] = seq;
  }
  // Item ledgers belong to one basis: the fingerprint and the content of the upstream outputs. They
  // are kept while it holds, also when the completed stage runs again (an upstream stage reran to the
  // same output, its own checkpoint was damaged), but not when its artifacts broke (items may have
  // made them). A basis stored by an earlier cairn (upstream seqs) still counts while the seqs hold.
  const basis = ledgerBasis(plan.parts, stage.dependsOn, outputs, recordName);
  const processing = processingKey(plan.parts);
  const keepsLedgers =
    summary.basis !== undefined &&
    (summary.basis === basis || summary.basis === seqLedgerBasis(plan.fingerprint, depSeqs)) &&
    !(summary.status === 'completed' && plan.reason.startsWith('ARTIFACT_MISMATCH'));
  if (!keepsLedgers && (summary.basis !== undefined || summary.status === 'completed')) {
    summary.generation += 1;
    delete summary.round;
    // a broken artifact of its own: its items may have made it, none is taken as it was
    const sources = plan.reason.startsWith('ARTIFACT_MISMATCH') ? undefined : reuseSources(summary, processing);
    if (sources) summary.reuseFrom = sources;
    else delete summary.reuseFrom;
  } else if (keepsLedgers && summary.status === 'completed') {
    summary.round = (summary.round ?? 0) + 1; // a new round of the same ledgers: its waits ask again
    addHistory(
      data,
      'stage:items-kept',
      `Stage ${name} keeps its finished items: its fingerprint and upstream outputs are unchanged.`,
      name,
    );
  }
  const startedAt = new Date().toISOString();
  Object.assign(summary, {
    status: 'running',
    basis,
    processing,
    fingerprint: plan.fingerprint,
    startedAt,
    reason: plan.reason,
    runs: summary.runs + 1,
  });
  delete summary.error;
  delete summary.endedAt;
  delete summary.durationMs;
  data.currentStage = name;
  await session.save('running');
  session.emit('stage:start', { runId, stage: name, try: 1, reason: plan.reason });

  const started = Date.now();
  const policy = resolveRetry(stage.options.retries, `Stage ${name}`);
  let scope: ContextScope | undefined;
  const outcome = await runTries(session, name, policy, stage.options.timeoutMs, (tryNo, signal) => {
    scope = {
      session,
      stage: name,
      attempt: tryNo,
      signal,
      ledgerName: (items) => (summary.generation === 0 ? `${ledgerPrefix}.${items}` : `${ledgerPrefix}.${items}.g${summary.generation}`),
      waitKey: `${ledgerPrefix}#${summary.generation}#${basis}${summary.round ? `#${summary.round}` : ''}`,
      artifacts: new Map(),
      counts: new Map(),
      calls: [],
    };
    const tryScope = scope;
    const ctx: StageContext<unknown, Record<string, unknown>> = {
      ...baseContext(scope, data.input),
      stage: name,
      config: stage.options.config,
      output: (dep) => {
        if (outputs.has(dep)) return outputs.get(dep);
        const why = skipped.get(dep);
        throw new CairnError(
          'INVALID_DEFINITION',
          why === undefined
            ? `Stage ${name} asked for the output of ${dep}, which has not run before it. Declare it earlier or list it in dependsOn.`
            : `Stage ${name} asked for the output of ${dep}, which was skipped (${why}). Use ctx.maybeOutput('${dep}') on alternative paths.`,
          { runId, stage: name },
        );
      },
      maybeOutput: (dep) => outputs.get(dep),
    };
    return Promise.resolve(stage.fn(ctx)).then((output) => {
      checkCallsAwaited(tryScope);
      return output;
    });
  });
  if (scope && scope.counts.size > 0) summary.items = Object.fromEntries(scope.counts);

  if (outcome.kind === 'ok') {
    const artifacts = scope ? [...scope.artifacts.values()] : [];
    if (artifacts.length > 0) await session.store.recordArtifacts(runId, toEntries(artifacts, name), session.writeOptions);
    const durationMs = Date.now() - started;
    const state: StageCheckpointState = {
      stage: name,
      fingerprint: plan.fingerprint,
      parts: plan.parts,
      depSeqs,
      output: outcome.value,
      artifacts: artifacts.map((a) => a.name),
      durationMs,
    };
    let ref;
    try {
      ref = await session.appendCheckpoint({ kind: STAGE_KIND, stage: name, meta: { stage: name }, state });
    } catch (error) {
      await finishFailed(session, name, restateUnserializable(error, `The output of stage ${name}`, '.output', { runId, stage: name }));
      return 'stop';
    }
    session.commitPoint('stage', { stage: name });
    if (scope) forgetReadAnswers(scope); // the stage is done: what its waits read answers nothing more
    outputs.set(name, outcome.value);
    seqs.set(name, ref.seq);
    Object.assign(summary, { status: 'completed', endedAt: new Date().toISOString(), durationMs });
    delete data.currentStage;
    await session.save('running');
    session.emit('stage:complete', { runId, stage: name, durationMs });
    return 'ok';
  }
  if (outcome.kind === 'wait') {
    const why = waitReason(session, outcome.name);
    Object.assign(summary, { status: 'waiting', reason: why });
    data.waitingFor = outcome.name;
    addHistory(data, 'run:waiting', `Stage ${name}: ${why}.`, name);
    await session.end('waiting', why);
    return 'stop';
  }
  if (outcome.kind === 'stopped') {
    Object.assign(summary, { status: 'interrupted', endedAt: new Date().toISOString() });
    await finishStopped(session, outcome.reason);
    return 'stop';
  }
  await finishFailed(session, name, outcome.error);
  return 'stop';
}

/**
 * Where the `reuse: 'content'` calls of a new generation may take results from, by items name: the
 * ledger each call last ran with (from the stage's item counts; a call this generation did not
 * reach keeps the source it had). None when the stage processes items differently now (its
 * version, the pipeline's or its config changed): then every item runs.
 */
function reuseSources(summary: StoredStage, processing: string): Record<string, string> | undefined {
  if (summary.processing !== processing) return undefined;
  const sources: Record<string, string> = { ...summary.reuseFrom };
  for (const [items, counts] of Object.entries(summary.items ?? {})) if (counts.ledger !== undefined) sources[items] = counts.ledger;
  return Object.keys(sources).length > 0 ? sources : undefined;
}

/** Saves an error checkpoint (every result so far stays) and ends the attempt as failed. */
export async function finishFailed(session: RunSession, stage: string, error: unknown): Promise<void> {
  const outage = session.storeOutageError;
  if (outage) {
    // the store could not take a write (a full disk, a lock or an outage past its retry bound):
    // the step did not fail, the run stops here and resumes once the store takes writes again
    Object.assign(stageOf(session.data, stage), { status: 'interrupted', endedAt: new Date().toISOString() });
    await finishStopped(session, outage);
    return;
  }
  const serialized = serializeError(error);
  const summary = stageOf(session.data, stage);
  Object.assign(summary, { status: 'failed', endedAt: new Date().toISOString(), error: serialized });
  session.data.error = { ...serialized, stage };
  addHistory(session.data, 'stage:failed', `Stage ${stage} failed: ${serialized.message}`, stage);
  try {
    await session.appendCheckpoint({
      kind: ERROR_KIND,
      stage,
      meta: { stage, code: serialized.code ?? serialized.name },
      state: { stage, error: serialized },
    });
  } catch {
    // the run summary below still records the failure
  }
  await session.end('failed', `stage ${stage} failed: ${serialized.message}`);
}

/** Ends the attempt after an interruption, a cancel or a lost lease. */
export async function finishStopped(session: RunSession, reason: CairnError): Promise<void> {
  const status = reason.code === 'RUN_CANCELLED' ? 'cancelled' : 'interrupted';
  if (reason.code === 'LEASE_LOST' || session.isLeaseLost) {
    // another process owns the run now: write nothing more
    addHistory(session.data, `run:${status}`, reason.message);
    await session.abandon();
    return;
  }
  // by now every items call of the stopped stage has flushed what finished: say what the store holds
  const message = `${reason.message} ${savedText(session.data)}`;
  addHistory(session.data, `run:${status}`, message);
  await session.end(status, message);
}
