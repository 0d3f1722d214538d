/**
 * Forking a run: a new run that holds the original's history up to one checkpoint, so that
 * resuming it replays everything after that point (Temporal's "reset", LangGraph's "replay from a
 * checkpoint"). The fork is built as an export bundle and written with `store.importRun`, which
 * verifies every record and makes the run appear whole or not at all; checkpoints keep their seqs
 * (a stage's recorded upstream seqs stay true) and are re-sealed under the new run id, so every
 * checksum is recomputed over content that was verified on the way out.
 *
 * Pipelines keep the stages completed at or before the checkpoint (their outputs, item ledgers and
 * artifact files); the stages after run again on resume. Workflows keep the snapshot and steps up
 * to the checkpoint; resume continues from that step. Values given to `waitFor` are not carried
 * over: the fork asks for them again, so that it can take another path.
 */
import path from 'node:path';
import { z } from 'zod';
import { CairnError } from '../core/errors.js';
import { assertRunId, MAX_RUN_ID_LENGTH, resolveInside } from '../core/ids.js';
import { copyArtifactFile } from '../core/no-follow.js';
import { DEFAULT_LIMITS, type PayloadLimits } from '../core/record.js';
import { decodeArtifact, decodeCheckpoint, encodeCheckpoint, encodeRun } from '../stores/codec.js';
import { nowIso } from '../stores/common.js';
import type { ArtifactEntry, CheckpointRef, ExportRecord, RunRecord, Store } from '../stores/store.js';
import { ledgerOwner } from './ledger-names.js';
import { STAGE_KIND } from './pipeline-plan.js';
import { addHistory, readRunData, RUN_DATA_FORMAT, type RunData, type StoredStage } from './run-data.js';
import { SNAPSHOT_KIND, STEP_KIND } from './workflow-executor.js';

export interface ForkOptions {
  /** Seq of the checkpoint to fork at: the fork holds the run's checkpoints up to and including it. */
  readonly fromSeq: number;
  /** Id of the new run. @defaultValue `<run id>-fork-<fromSeq>` (the run id shortened to stay within 128 characters) */
  readonly runId?: string;
}

/** The default id of a fork: `<run id>-fork-<seq>`, within the 128-character limit of run ids. */
export function forkRunId(runId: string, fromSeq: number): string {
  const suffix = `-fork-${fromSeq}`;
  return `${runId.slice(0, MAX_RUN_ID_LENGTH - suffix.length)}${suffix}`;
}

/** Records were already verified when read; re-sealing must not refuse what the store accepted. */
const RESEAL_LIMITS: PayloadLimits = { maxPayloadBytes: Number.MAX_SAFE_INTEGER, compressAboveBytes: DEFAULT_LIMITS.compressAboveBytes };

const completionState = z.object({
  stage: z.string(),
  fingerprint: z.string(),
  durationMs: z.number(),
  artifacts: z.array(z.string()),
});

interface KeptCompletion {
  readonly seq: number;
  readonly createdAt: string;
  readonly fingerprint: string;
  readonly durationMs: number;
  readonly artifacts: readonly string[];
}

/** What the fork keeps besides the checkpoints, and the fork's run summary. */
interface ForkPlan {
  readonly data: RunData;
  readonly keepLedger: (ledger: string) => boolean;
  /** Artifact paths (manifest names) whose entries and files are copied. */
  readonly artifacts: ReadonlySet<string>;
  readonly description: string;
}

/**
 * Creates the fork and returns its run record (status `interrupted`, so that resuming it continues).
 * `NOT_FOUND` (no such run), `INVALID_INPUT` (`fromSeq` is not an intact checkpoint of the run, or
 * the run is a CheckpointManager workflow), `ALREADY_EXISTS` (the new id is taken).
 */
export async function forkRun(store: Store, runId: string, options: ForkOptions): Promise<RunRecord> {
  assertRunId(runId);
  const { fromSeq } = options;
  if (!Number.isSafeInteger(fromSeq) || fromSeq < 1) {
    throw new CairnError('INVALID_INPUT', `fromSeq must be a checkpoint seq (a positive integer), not ${String(fromSeq)}.`, { runId });
  }
  const newId = options.runId ?? forkRunId(runId, fromSeq);
  assertRunId(newId);
  const source = await store.getRun(runId);
  if (!source) throw new CairnError('NOT_FOUND', `Run ${runId} not found in ${store.url}.`, { runId });
  const data = readRunData(source);
  if (!data) {
    throw new CairnError('INVALID_INPUT', `Run ${runId} is a CheckpointManager workflow; only pipeline and workflow runs can be forked.`, {
      runId,
    });
  }
  const entries = await store.listCheckpoints(runId);
  const target = entries.find((e) => (e.valid ? e.ref.seq : e.seq) === fromSeq);
  if (!target?.valid) {
    const seqs = entries.flatMap((e) => (e.valid ? [e.ref.seq] : []));
    const known = seqs.length === 0 ? 'it has none' : `its intact ones: ${describeSeqs(seqs)}`;
    throw new CairnError(
      'INVALID_INPUT',
      `Checkpoint ${fromSeq} is not ${target ? 'an intact' : 'a'} checkpoint of run ${runId} (${known}).`,
      { runId, seq: fromSeq },
    );
  }
  if (await store.getRun(newId)) {
    throw new CairnError('ALREADY_EXISTS', `Run ${newId} already exists; choose another id for the fork (or delete that run first).`, {
      runId: newId,
    });
  }
  const kept = entries.flatMap((e) => (e.valid && e.ref.seq <= fromSeq ? [e.ref] : []));
  const plan = data.kind === 'pipeline' ? await planPipelineFork(store, runId, data, kept, entries) : planWorkflowFork(data, kept);
  addHistory(plan.data, 'run:forked', `Forked from run ${runId} at checkpoint ${fromSeq}: ${plan.description}.`);

  const now = nowIso();
  const record: RunRecord = {
    id: newId,
    name: source.name,
    status: 'interrupted',
    version: 1,
    createdAt: now,
    updatedAt: now,
    data: plan.data,
  };
  const records: ExportRecord[] = [{ type: 'run', line: encodeRun(record, RESEAL_LIMITS) }];
  const manifest: ArtifactEntry[] = [];
  for await (const rec of store.exportRun(runId)) {
    if (rec.type === 'checkpoint') {
      const line = resealCheckpoint(rec.line, runId, newId, fromSeq);
      if (line !== undefined) records.push({ type: 'checkpoint', line });
    } else if (rec.type === 'items') {
      if (plan.keepLedger(rec.stage)) records.push(rec);
    } else if (rec.type === 'artifact') {
      const entry = decodeArtifact(rec.line, { runId });
      if (!plan.artifacts.has(entry.path)) continue;
      records.push(rec);
      manifest.push(entry);
    }
  }
  const created = await store.importRun(records);
  try {
    await copyArtifactFiles(store, runId, newId, manifest);
  } catch (error) {
    await store.deleteRun(newId).catch(() => undefined);
    throw error;
  }
  return created;
}

/** The checkpoint re-sealed under the new run id with its seq and time, or undefined if it is not kept. */
function resealCheckpoint(line: string, runId: string, newId: string, fromSeq: number): string | undefined {
  let cp;
  try {
    cp = decodeCheckpoint(line, { runId }, true);
  } catch {
    return undefined; // damaged records are not carried into the fork
  }
  if (cp.seq > fromSeq) return undefined;
  const input = {
    kind: cp.kind,
    state: cp.state,
    ...(cp.stage === undefined ? {} : { stage: cp.stage }),
    ...(cp.meta ? { meta: cp.meta } : {}),
  };
  return encodeCheckpoint(newId, cp.seq, cp.createdAt, input, RESEAL_LIMITS).line;
}

async function planPipelineFork(
  store: Store,
  runId: string,
  data: RunData,
  kept: readonly CheckpointRef[],
  entries: Awaited<ReturnType<Store['listCheckpoints']>>,
): Promise<ForkPlan> {
  const completions = new Map<string, KeptCompletion>();
  for (const ref of kept) {
    if (ref.kind !== STAGE_KIND) continue;
    const parsed = completionState.safeParse((await store.getCheckpoint(runId, ref.seq)).state);
    if (!parsed.success) continue; // not a completion the engine would use either
    const { stage, fingerprint, durationMs, artifacts } = parsed.data;
    completions.set(stage, { seq: ref.seq, createdAt: ref.createdAt, fingerprint, durationMs, artifacts });
  }
  // the original's newest completion of each stage: when it is the kept one, its summary still describes it
  const newest = new Map<string, number>();
  for (const e of entries) if (e.valid && e.ref.kind === STAGE_KIND && e.ref.stage !== undefined) newest.set(e.ref.stage, e.ref.seq);

  const stages: Record<string, StoredStage> = {};
  const artifacts = new Set<string>();
  const keptStages = new Set<string>();
  for (const name of data.order) {
    const original = data.stages[name];
    // a renamed stage keeps its ledgers' name, and may have completed under it
    const ledgerStage = original?.ledgerStage;
    const completedAs = completions.has(name) || ledgerStage === undefined ? name : ledgerStage;
    const completion = completions.get(completedAs);
    if (!completion || !original) {
      stages[name] = { status: 'pending', generation: 0, runs: 0, ...(ledgerStage === undefined ? {} : { ledgerStage }) };
      continue;
    }
    keptStages.add(name);
    for (const a of completion.artifacts) artifacts.add(a);
    const same = newest.get(completedAs) === completion.seq;
    stages[name] = {
      status: 'completed',
      fingerprint: completion.fingerprint,
      generation: original.generation,
      runs: same ? original.runs : 1,
      endedAt: completion.createdAt,
      durationMs: completion.durationMs,
      ...(same && original.startedAt !== undefined ? { startedAt: original.startedAt } : {}),
      ...(same && original.items !== undefined ? { items: original.items } : {}),
      ...(ledgerStage === undefined ? {} : { ledgerStage }),
    };
  }
  const keptNames = data.order.filter((n) => keptStages.has(n));
  const rerun = data.order.filter((n) => !keptStages.has(n));
  const description =
    `kept ${keptNames.length === 0 ? 'no stage' : `stage(s) ${keptNames.join(', ')}`}` +
    (rerun.length > 0 ? `; ${rerun.join(', ')} run again on resume` : '');
  return {
    data: freshData(data, stages),
    keepLedger: (ledger) => {
      const owner = ledgerOwner(ledger, data);
      return owner !== undefined && keptStages.has(owner.stage);
    },
    artifacts,
    description,
  };
}

function planWorkflowFork(data: RunData, kept: readonly CheckpointRef[]): ForkPlan {
  let steps = 0;
  let next: string | undefined;
  const visits = new Map<string, { runs: number; endedAt: string }>();
  for (const ref of kept) {
    if (ref.kind !== STEP_KIND && ref.kind !== SNAPSHOT_KIND) continue;
    const step = ref.meta?.step;
    if (typeof step === 'number' && Number.isSafeInteger(step)) steps = step;
    if (typeof ref.meta?.next === 'string') next = ref.meta.next;
    if (ref.kind === STEP_KIND && ref.stage !== undefined) {
      visits.set(ref.stage, { runs: (visits.get(ref.stage)?.runs ?? 0) + 1, endedAt: ref.createdAt });
    }
  }
  const stages: Record<string, StoredStage> = {};
  for (const name of data.order) {
    const visit = visits.get(name);
    stages[name] = visit
      ? { status: 'completed', generation: 0, runs: visit.runs, endedAt: visit.endedAt }
      : { status: 'pending', generation: 0, runs: 0 };
  }
  const fresh = freshData(data, stages);
  fresh.steps = steps;
  const description = `kept ${steps} step(s)${next === undefined ? '' : `; resume continues with ${next}`}`;
  return {
    data: fresh,
    // a node's ledger at step s belongs to the visit recorded as step s + 1
    keepLedger: (ledger) => {
      const owner = ledgerOwner(ledger, data);
      return owner?.step !== undefined && owner.step < steps;
    },
    artifacts: new Set(),
    description,
  };
}

/** The fork's summary: same definition, input and source; no attempts, no waitFor values, no error. */
function freshData(data: RunData, stages: Record<string, StoredStage>): RunData {
  return {
    fv: RUN_DATA_FORMAT,
    owner: 'engine',
    kind: data.kind,
    input: data.input,
    inputHash: data.inputHash,
    inputs: {},
    order: [...data.order],
    stages,
    attempts: [],
    history: [],
    ...(data.source ? { source: { ...data.source } } : {}),
    ...(data.fileHashes ? { fileHashes: structuredClone(data.fileHashes) } : {}),
    ...(data.definition ? { definition: structuredClone(data.definition) } : {}),
  };
}

/** Copies the kept artifact files, never through a link; one missing (or not a regular file) is left missing (resume then reruns its stage). */
async function copyArtifactFiles(store: Store, runId: string, newId: string, entries: readonly ArtifactEntry[]): Promise<void> {
  const from = path.resolve(store.artifactDir(runId));
  const to = path.resolve(store.artifactDir(newId));
  for (const name of new Set(entries.map((e) => e.path))) {
    const parts = name.split('/');
    await copyArtifactFile(from, resolveInside(from, ...parts), to, resolveInside(to, ...parts));
  }
}

/** `1–5, 7, 9–12` */
function describeSeqs(seqs: readonly number[]): string {
  const parts: string[] = [];
  let start = seqs[0]!;
  let prev = start;
  for (const seq of [...seqs.slice(1), Number.NaN]) {
    if (seq === prev + 1) {
      prev = seq;
      continue;
    }
    parts.push(start === prev ? `${start}` : `${start}–${prev}`);
    start = prev = seq;
  }
  return parts.join(', ');
}
