/**
 * Executes a graph workflow. Every step is one durable checkpoint holding that step's update (a
 * delta) and the next node; a full snapshot is written only when a resume would otherwise read
 * more than twice the state (the last snapshot plus the deltas after it). Storage therefore grows
 * with the updates, not with steps × state (LangGraph stores the whole state at every step), and
 * resume reads at most about two states' worth, each record once.
 */
import { z } from 'zod';
import { CairnError, isCairnError } from '../core/errors.js';
import { encodeValue, restateUnserializable } from '../core/serialize.js';
import type { CheckpointEntry, CheckpointRead, Store } from '../stores/store.js';
import { toEntries } from './artifacts.js';
import { baseContext, checkCallsAwaited, forgetReadAnswers, type ContextScope } from './context.js';
import { finishFailed, finishStopped } from './pipeline-executor.js';
import { resolveRetry } from './retry.js';
import { addHistory, stageOf } from './run-data.js';
import type { RunSession } from './run-session.js';
import { settleStep, waitReason } from './spend.js';
import { runTries } from './tries.js';
import type { NodeContext } from './types.js';
import { reviewDefinition } from './workflow-change.js';
import { END, initialState, type Reducer, type Workflow } from './workflow.js';

type AnyWorkflow = Workflow<unknown, Record<string, unknown>, string>;

export const SNAPSHOT_KIND = 'snapshot';
export const STEP_KIND = 'step';
/** A resume may read up to twice the state plus this much: small states are not snapshotted every few steps. */
const READ_SLACK = 64 * 1024;
/** The state is measured again after at least this many more bytes of steps (and a quarter of its size). */
const MIN_CHECK_GAP = 4 * 1024;
/** What a stored record adds to its payload (`ref.bytes`): checksum, ids, seq, time, kind, meta. An estimate. */
const RECORD_BYTES = 192;
/** A snapshot at least every this many steps bounds the number of records a resume reads. */
const MAX_STEPS_BETWEEN_SNAPSHOTS = 10_000;
/** The run summary is saved at most this often while steps run (each step is durable without it). */
const SUMMARY_EVERY_MS = 5000;

const snapshotState = z.object({
  v: z.number().int(),
  step: z.number().int().nonnegative(),
  state: z.unknown(),
  next: z.string(),
  /** The step the run (re)started from: set when a changed definition started it over. */
  from: z.number().int().nonnegative().optional(),
});
const stepState = z.object({
  v: z.number().int(),
  step: z.number().int().positive(),
  node: z.string(),
  update: z.unknown(),
  next: z.string(),
});

interface Position {
  state: Record<string, unknown>;
  step: number;
  next: string;
  version: number;
  /** About what a resume reads now: the last snapshot's record and the step records after it. */
  readBytes: number;
  /** When `readBytes` reaches this, the state is measured and a snapshot written if a resume would read too much. */
  checkAt: number;
  stepsSinceSnapshot: number;
  needsSnapshot: boolean;
  /** The step the run started from: 0, or where a changed definition started it over (maxSteps counts from here). */
  from: number;
}

export async function executeWorkflow(session: RunSession, def: AnyWorkflow): Promise<void> {
  const { runId, data } = session;
  const reducers = (def.options.reducers ?? {}) as Record<string, Reducer | undefined>;
  const maxSteps = def.options.maxSteps ?? 10_000;
  const stateVersion = def.options.stateVersion ?? 1;
  const pos = await loadPosition(session, def, reducers, stateVersion);
  if (!pos) return;
  const review = await reviewDefinition(session, def, pos);
  if (review.action === 'refuse') {
    await finishFailed(session, review.node, review.error);
    return;
  }
  if (review.action === 'restart') {
    // a new position at a step number never used before: ledgers and waits of the earlier steps stay theirs
    Object.assign(pos, newPosition(checkUpdate(initialState(def, data.input), 'initial'), review.from, entryOf(def), stateVersion), {
      from: review.from,
      needsSnapshot: true,
    });
  }
  if (pos.needsSnapshot) {
    try {
      await writeSnapshot(session, pos);
    } catch (error) {
      throw restateUnserializable(error, `The state of workflow ${def.name}`, '.state', { runId });
    }
  }
  if (review.action !== 'same') await session.save('running'); // after the snapshot: a crash in between starts over again
  let lastSummarySave = Date.now();

  while (pos.next !== END) {
    // woken after the lease ran out: no node (a paid call perhaps) starts before a renewal says the run is still ours
    if (session.isLeaseOverdue) await session.renewNow();
    if (session.signal.aborted) {
      await finishStopped(session, session.signal.reason as CairnError);
      return;
    }
    const nodeName = pos.next;
    if (pos.step - pos.from >= maxSteps) {
      const error = new CairnError(
        'MAX_STEPS_EXCEEDED',
        `Workflow ${def.name} took ${pos.step - pos.from} steps without reaching END (next node: ${nodeName}). ` +
          'A conditional edge probably never exits its loop; fix it, or raise maxSteps and resume.',
        { runId, stage: nodeName, maxSteps },
      );
      await finishFailed(session, nodeName, error);
      return;
    }
    const node = def.getNode(nodeName);
    if (!node) {
      await finishFailed(
        session,
        nodeName,
        new CairnError('INVALID_DEFINITION', `Workflow ${def.name} has no node ${nodeName}.`, { runId, stage: nodeName }),
      );
      return;
    }
    const summary = stageOf(data, nodeName);
    Object.assign(summary, { status: 'running', startedAt: new Date().toISOString(), runs: summary.runs + 1 });
    delete summary.error;
    data.currentStage = nodeName;
    session.emit('stage:start', { runId, stage: nodeName, try: 1 });
    const started = Date.now();
    const step = pos.step;
    let scope: ContextScope | undefined;
    const outcome = await runTries(
      session,
      nodeName,
      resolveRetry(node.options.retries, `Node ${nodeName}`),
      node.options.timeoutMs,
      (tryNo, signal) => {
        scope = {
          session,
          stage: nodeName,
          attempt: tryNo,
          signal,
          ledgerName: (items) => `${nodeName}.s${step}.${items}`,
          waitKey: `${nodeName}@${step}`,
          artifacts: new Map(),
          counts: new Map(),
          calls: [],
        };
        const tryScope = scope;
        const ctx: NodeContext<unknown> = { ...baseContext(tryScope, data.input), node: nodeName, step };
        return Promise.resolve(node.fn(pos.state, ctx)).then((update) => {
          checkCallsAwaited(tryScope);
          return update;
        });
      },
    );

    if (scope && scope.counts.size > 0) summary.items = Object.fromEntries(scope.counts);
    if (outcome.kind === 'wait') {
      const why = waitReason(session, outcome.name);
      Object.assign(summary, { status: 'waiting', reason: why });
      data.waitingFor = outcome.name;
      data.steps = pos.step;
      addHistory(data, 'run:waiting', `Node ${nodeName}: ${why}.`, nodeName);
      await session.end('waiting', why);
      return;
    }
    if (outcome.kind === 'stopped') {
      summary.status = 'interrupted';
      data.steps = pos.step;
      await finishStopped(session, outcome.reason);
      return;
    }
    let next: string;
    let update: Record<string, unknown>;
    try {
      if (outcome.kind === 'error') throw outcome.error;
      update = checkUpdate(outcome.value, nodeName);
      // artifacts are recorded before the step that returns them is durable, as a stage's are
      const artifacts = scope ? [...scope.artifacts.values()] : [];
      if (artifacts.length > 0) await session.store.recordArtifacts(runId, toEntries(artifacts, nodeName), session.writeOptions);
      const state = mergeState(pos.state, update, reducers);
      next = await resolveEdge(def, nodeName, state);
      const ref = await session.appendCheckpoint({
        kind: STEP_KIND,
        stage: nodeName,
        meta: { step: step + 1, next },
        state: { v: pos.version, step: step + 1, node: nodeName, update, next },
      });
      session.commitPoint('step', { stage: nodeName });
      if (scope) forgetReadAnswers(scope); // the step is durable: what its waits read answers nothing more
      settleStep(data.spend, nodeName, `${nodeName}.s${step}.`); // its ledgers are never read again
      pos.state = state;
      pos.step = step + 1;
      pos.next = next;
      data.steps = pos.step; // in memory only: every later save (failed, interrupted, waiting) reports it
      pos.readBytes += RECORD_BYTES + ref.bytes;
      pos.stepsSinceSnapshot += 1;
    } catch (error) {
      data.steps = pos.step;
      await finishFailed(
        session,
        nodeName,
        restateUnserializable(error, `The update returned by node ${nodeName}`, '.update', { runId, stage: nodeName }),
      );
      return;
    }
    const durationMs = Date.now() - started;
    Object.assign(summary, { status: 'completed', endedAt: new Date().toISOString(), durationMs });
    session.emit('stage:complete', { runId, stage: nodeName, durationMs });
    try {
      if (shouldSnapshot(pos)) await writeSnapshot(session, pos);
    } catch (error) {
      // a state no update could make alone: a reducer built it (nested deeper at every step, say)
      if (!isCairnError(error, 'UNSERIALIZABLE')) throw error;
      await finishFailed(
        session,
        nodeName,
        restateUnserializable(error, `The workflow state after node ${nodeName}`, '.state', { runId, stage: nodeName }),
      );
      return;
    }
    if (Date.now() - lastSummarySave >= SUMMARY_EVERY_MS) {
      data.steps = pos.step;
      await session.save('running');
      lastSummarySave = Date.now();
    }
  }
  delete data.currentStage;
  data.steps = pos.step;
  data.result = pos.state;
  data.hasResult = true;
  await session.end('completed', `reached END after ${pos.step} steps`);
}

/**
 * A resume reads the last snapshot and the steps since (`readBytes`); a snapshot makes that one
 * state. Snapshot before a resume would read more than twice the state plus {@link READ_SLACK}. The
 * state's size is measured (serialized) only when `readBytes` reaches `checkAt`, which is placed
 * so that measurements are at least a quarter of the state apart (the cost stays linear) and the
 * next one comes before the limit is passed.
 */
function shouldSnapshot(pos: Position): boolean {
  if (pos.stepsSinceSnapshot >= MAX_STEPS_BETWEEN_SNAPSHOTS) return true;
  if (pos.readBytes < pos.checkAt) return false;
  const stateBytes = encodeValue(pos.state).text.length; // UTF-16 units, at most its bytes: errs towards snapshotting
  const limit = 2 * stateBytes + READ_SLACK;
  const gap = Math.max(stateBytes / 4, MIN_CHECK_GAP);
  if (pos.readBytes + gap >= limit) return true;
  pos.checkAt = Math.max(pos.readBytes + gap, limit - gap);
  return false;
}

/** Where the next measurement goes after a snapshot of `stateBytes` (see {@link shouldSnapshot}). */
function firstCheck(readBytes: number, stateBytes: number): number {
  const gap = Math.max(stateBytes / 4, MIN_CHECK_GAP);
  return Math.max(readBytes + gap, 2 * stateBytes + READ_SLACK - gap);
}

async function writeSnapshot(session: RunSession, pos: Position): Promise<void> {
  const ref = await session.appendCheckpoint({
    kind: SNAPSHOT_KIND,
    meta: { step: pos.step, next: pos.next },
    state: { v: pos.version, step: pos.step, state: pos.state, next: pos.next, ...(pos.from > 0 ? { from: pos.from } : {}) },
  });
  pos.readBytes = RECORD_BYTES + ref.bytes;
  pos.checkAt = firstCheck(pos.readBytes, ref.bytes);
  pos.stepsSinceSnapshot = 0;
  pos.needsSnapshot = false;
}

/**
 * Rebuilds the state: the newest intact snapshot, then the steps after it in order. A damaged or
 * missing step ends the replay there (the run continues from the last intact step, and a fresh
 * snapshot makes that the new base).
 */
async function loadPosition(
  session: RunSession,
  def: AnyWorkflow,
  reducers: Record<string, Reducer | undefined>,
  stateVersion: number,
): Promise<Position | undefined> {
  const { store, runId, data } = session;
  const records = await checkpointsSinceLatest(store, runId, SNAPSHOT_KIND);
  const base = records?.[0];
  let pos: Position;
  let damaged = 0;
  if (!base?.valid) {
    const initial =
      typeof def.options.initial === 'function' ? (def.options.initial as (input: unknown) => unknown)(data.input) : def.options.initial;
    const entry = def.entryNode ?? def.nodes[0]?.name;
    if (!entry) {
      await finishFailed(session, def.name, new CairnError('INVALID_DEFINITION', `Workflow ${def.name} has no nodes.`, { runId }));
      return undefined;
    }
    pos = newPosition(checkUpdate(initial, 'initial'), 0, entry, stateVersion);
    pos.needsSnapshot = true;
    // no intact snapshot: a log that is not empty holds only damaged or unusable records
    damaged = (await store.listCheckpoints(runId)).filter((e) => !e.valid).length;
  } else {
    const { seq, bytes } = base.checkpoint;
    const snap = snapshotState.safeParse(base.checkpoint.state);
    if (!snap.success)
      throw new CairnError('CHECKPOINT_CORRUPT', `Snapshot ${seq} of run ${runId} has an unexpected shape.`, { runId, seq });
    pos = newPosition(checkUpdate(snap.data.state, 'snapshot'), snap.data.step, snap.data.next, snap.data.v);
    pos.from = snap.data.from ?? 0;
    pos.readBytes = RECORD_BYTES + bytes;
    pos.checkAt = firstCheck(pos.readBytes, bytes);
    for (const record of records!.slice(1)) {
      if (!record.valid) {
        damaged++;
        break;
      }
      const cp = record.checkpoint;
      if (cp.kind !== STEP_KIND) continue;
      const parsed = stepState.safeParse(cp.state);
      if (!parsed.success || parsed.data.step !== pos.step + 1 || parsed.data.v !== pos.version) {
        damaged++;
        break;
      }
      const update = checkUpdate(parsed.data.update, 'stored step');
      pos.state = mergeState(pos.state, update, reducers);
      pos.step = parsed.data.step;
      pos.next = parsed.data.next;
      pos.readBytes += RECORD_BYTES + cp.bytes;
      pos.stepsSinceSnapshot += 1;
    }
  }
  if (damaged > 0) {
    const message = `Damaged checkpoint records were found; the workflow continues from step ${pos.step}, the last intact one.`;
    addHistory(data, 'checkpoint:damaged', message);
    session.emit('warning', { runId, code: 'CHECKPOINT_CORRUPT', message });
    pos.needsSnapshot = true;
  }
  if (pos.version > stateVersion) {
    throw new CairnError(
      'STATE_TOO_NEW',
      `Run ${runId} holds state version ${pos.version}, newer than this definition's stateVersion ${stateVersion}. Use the newer code to resume it.`,
      { runId },
    );
  }
  if (pos.version < stateVersion) {
    if (!def.options.migrate) {
      throw new CairnError(
        'INVALID_DEFINITION',
        `Run ${runId} holds state version ${pos.version}; workflow ${def.name} is at stateVersion ${stateVersion} and declares no migrate(old, fromVersion).`,
        { runId },
      );
    }
    const from = pos.version;
    pos.state = checkUpdate(def.options.migrate(pos.state, from), 'migrate');
    pos.version = stateVersion;
    pos.needsSnapshot = true;
    addHistory(data, 'state:migrated', `State migrated from version ${from} to ${stateVersion}.`);
  }
  data.steps = pos.step;
  return pos;
}

function newPosition(state: Record<string, unknown>, step: number, next: string, version: number): Position {
  return { state, step, next, version, readBytes: 0, checkAt: 0, stepsSinceSnapshot: 0, needsSnapshot: false, from: 0 };
}

/**
 * The newest intact checkpoint of `kind` and the records after it ({@link Store.checkpointsSinceLatest});
 * on stores without that method, from the listing and one read per record.
 */
async function checkpointsSinceLatest(store: Store, runId: string, kind: string): Promise<CheckpointRead[] | undefined> {
  if (store.checkpointsSinceLatest) return store.checkpointsSinceLatest(runId, { kind });
  const entries = await store.listCheckpoints(runId);
  const records: CheckpointRead[] = []; // newest first
  for (let i = entries.length - 1; i >= 0; i--) {
    const record = await readRecord(store, runId, entries[i]!);
    records.push(record);
    if (record.valid && record.checkpoint.kind === kind) return records.reverse();
  }
  return undefined;
}

/** A listed checkpoint read whole; one that does not read back is flagged as damaged. */
async function readRecord(store: Store, runId: string, entry: CheckpointEntry): Promise<CheckpointRead> {
  if (!entry.valid) return entry;
  try {
    return { valid: true, checkpoint: await store.getCheckpoint(runId, entry.ref.seq) };
  } catch (error) {
    if (!isCairnError(error, 'CHECKPOINT_CORRUPT') && !isCairnError(error, 'FORMAT_TOO_NEW')) throw error;
    const code = error.code === 'FORMAT_TOO_NEW' ? 'FORMAT_TOO_NEW' : 'CHECKPOINT_CORRUPT';
    return { valid: false, seq: entry.ref.seq, reason: error.message, code };
  }
}

/** Merges an update: reducer keys through their reducer, the others replaced. */
export function mergeState(
  state: Record<string, unknown>,
  update: Record<string, unknown>,
  reducers: Record<string, Reducer | undefined>,
): Record<string, unknown> {
  const next: Record<string, unknown> = { ...state };
  for (const key of Object.keys(update)) {
    if (key === '__proto__') continue;
    const reducer = Object.hasOwn(reducers, key) ? reducers[key] : undefined;
    next[key] = reducer ? reducer(state[key], update[key]) : update[key];
  }
  return next;
}

function checkUpdate(value: unknown, node: string): Record<string, unknown> {
  if (value === undefined || value === null) return {};
  if (typeof value !== 'object' || Array.isArray(value)) {
    throw new CairnError(
      'INVALID_INPUT',
      `Node ${node} must return an object (a partial state) or nothing, not ${Array.isArray(value) ? 'an array' : typeof value}.`,
      {
        stage: node,
      },
    );
  }
  return value as Record<string, unknown>;
}

async function resolveEdge(def: AnyWorkflow, from: string, state: Record<string, unknown>): Promise<string> {
  const edge = def.edges.get(from);
  if (edge === undefined) return END;
  const target = typeof edge === 'function' ? await edge(state) : edge;
  if (target === END || (typeof target === 'string' && def.getNode(target))) return target;
  throw new CairnError(
    'INVALID_DEFINITION',
    `The edge out of ${from} chose ${JSON.stringify(target)}, which is not a node of workflow ${def.name} (nodes: ${def.nodes.map((n) => n.name).join(', ')}; or END).`,
    { stage: from },
  );
}

function entryOf(def: AnyWorkflow): string {
  return def.entryNode ?? def.nodes[0]?.name ?? END;
}
