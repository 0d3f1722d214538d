/**
 * The engine's summary of a run, kept in `RunRecord.data`: stages, attempts, history, the input and
 * the inputs given to `waitFor`. Stored bytes are untrusted: they are parsed against a schema, and
 * a summary the engine did not write (a `CheckpointManager` workflow) reads as kind `checkpoints`.
 */
import { isDeepStrictEqual } from 'node:util';
import { z } from 'zod';
import type { SerializedError } from '../core/errors.js';
import { serializedErrorSchema } from '../stores/codec.js';
import type { RunRecord } from '../stores/store.js';
import type { AttemptSummary, HistoryEntry, ItemCounts, RunSummary, StageStatus, StageSummary } from './types.js';

export interface StoredStage {
  status: StageStatus;
  reason?: string;
  fingerprint?: string;
  /** Hash of the fingerprint and the upstream results the stage's current item ledgers were computed from. */
  basis?: string;
  /** Bumped when a completed (or differently fingerprinted) stage reruns: its item ledgers start fresh. */
  generation: number;
  startedAt?: string;
  endedAt?: string;
  durationMs?: number;
  runs: number;
  items?: Record<string, ItemCounts>;
  error?: SerializedError;
}

/**
 * A value given for `ctx.waitFor(name)`. It answers one wait: the first one that reads it binds it
 * (`for`, saved before the value is used), and from then on only that wait gets it — the same stage
 * generation or workflow step when it runs again after a crash; a later wait of the same name (a
 * loop, a stage rerun) waits for a new value.
 */
export interface Answer {
  value: unknown;
  givenAt: string;
  /** The wait it answered: `<stage>#<generation>#<basis>` or `<node>@<step>`; unset until read. */
  for?: string;
}

/** Where a run's definition lives: a module file and the export holding it. */
export interface RunSource {
  module: string;
  exportName?: string;
}

export interface RunData {
  kind: 'pipeline' | 'workflow';
  input: unknown;
  inputHash: string;
  /**
   * Values given to `waitFor` by earlier cairn versions (answers were reusable then). Read once as
   * answers not used yet, and kept empty: see {@link RunData.answers}.
   */
  inputs: Record<string, unknown>;
  /** The latest value given for each `waitFor` name, and the wait it answered once one read it. */
  answers?: Record<string, Answer>;
  /** Why the value given for the wait the run is waiting on was refused (its `waitFor` check), if it was. */
  waitRefused?: string;
  /** Stage (or node) names in definition order. */
  order: string[];
  stages: Record<string, StoredStage>;
  attempts: AttemptSummary[];
  history: HistoryEntry[];
  waitingFor?: string;
  /** The stage (or node) running now. */
  currentStage?: string;
  error?: SerializedError & { stage?: string };
  hasResult?: boolean;
  result?: unknown;
  steps?: number;
  /** Where the definition lives, when the run was started by the `cairn` command. */
  source?: RunSource;
  /** Set by `cairn.cancel` from another process; the holder stops at its next check. */
  cancelRequested?: boolean;
  /** Input-file hash cache: a file whose size and mtime did not change is not hashed again. */
  fileHashes?: Record<string, { size: number; mtimeMs: number; sha256: string }>;
}

const MAX_HISTORY = 500;
/** History messages and attempt reasons are cut to this many characters (the full error is in the error checkpoint). */
export const MAX_MESSAGE = 1000;

const counts = z.object({ done: z.number(), failed: z.number(), total: z.number() });

const storedStage = z.object({
  status: z.enum(['pending', 'running', 'waiting', 'completed', 'failed', 'skipped', 'interrupted']),
  reason: z.string().optional(),
  fingerprint: z.string().optional(),
  basis: z.string().optional(),
  generation: z.number().int().nonnegative(),
  startedAt: z.string().optional(),
  endedAt: z.string().optional(),
  durationMs: z.number().optional(),
  runs: z.number().int().nonnegative(),
  items: z.record(z.string(), counts).optional(),
  error: serializedErrorSchema.optional(),
});

const attempt = z.object({
  n: z.number().int(),
  startedAt: z.string(),
  endedAt: z.string().optional(),
  host: z.string(),
  pid: z.number().int(),
  outcome: z.string().optional(),
  reason: z.string().optional(),
});

const history = z.object({ at: z.string(), event: z.string(), stage: z.string().optional(), message: z.string() });

const runData = z.object({
  kind: z.enum(['pipeline', 'workflow']),
  input: z.unknown().optional(),
  inputHash: z.string(),
  inputs: z.record(z.string(), z.unknown()),
  order: z.array(z.string()),
  stages: z.record(z.string(), storedStage),
  attempts: z.array(attempt),
  history: z.array(history),
  answers: z.record(z.string(), z.object({ value: z.unknown().optional(), givenAt: z.string(), for: z.string().optional() })).optional(),
  waitingFor: z.string().optional(),
  waitRefused: z.string().optional(),
  currentStage: z.string().optional(),
  error: serializedErrorSchema.and(z.object({ stage: z.string().optional() })).optional(),
  hasResult: z.boolean().optional(),
  result: z.unknown().optional(),
  steps: z.number().optional(),
  cancelRequested: z.boolean().optional(),
  source: z.object({ module: z.string(), exportName: z.string().optional() }).optional(),
  fileHashes: z.record(z.string(), z.object({ size: z.number(), mtimeMs: z.number(), sha256: z.string() })).optional(),
});

/** The engine data of a run, or undefined when the run was not written by the engine. */
export function readRunData(run: RunRecord): RunData | undefined {
  const parsed = runData.safeParse(run.data);
  if (!parsed.success) return undefined;
  // zod rebuilds objects, and `__proto__` keys are already dropped by the store's deserializer
  return parsed.data as RunData;
}

export function newRunData(kind: RunData['kind'], input: unknown, inputHash: string, order: readonly string[]): RunData {
  const stages: Record<string, StoredStage> = {};
  for (const name of order) stages[name] = { status: 'pending', generation: 0, runs: 0 };
  return { kind, input, inputHash, inputs: {}, order: [...order], stages, attempts: [], history: [] };
}

export function stageOf(data: RunData, name: string): StoredStage {
  let stage = data.stages[name];
  if (!stage) {
    stage = { status: 'pending', generation: 0, runs: 0 };
    data.stages[name] = stage;
    if (!data.order.includes(name)) data.order.push(name);
  }
  return stage;
}

export function addHistory(data: RunData, event: string, message: string, stage?: string): void {
  const text = message.length > MAX_MESSAGE ? `${message.slice(0, MAX_MESSAGE)}…` : message;
  data.history.push({ at: new Date().toISOString(), event, message: text, ...(stage === undefined ? {} : { stage }) });
  if (data.history.length > MAX_HISTORY) data.history.splice(0, data.history.length - MAX_HISTORY);
}

/** The public summary of a run. */
export function toSummary<R = unknown>(run: RunRecord): RunSummary<R> {
  const data = readRunData(run);
  if (!data) {
    return {
      id: run.id,
      name: run.name,
      kind: 'checkpoints',
      status: run.status,
      stages: [],
      attempts: [],
      history: [],
      createdAt: run.createdAt,
      updatedAt: run.updatedAt,
    };
  }
  const stages: StageSummary[] = data.order.map((name) => {
    const s = data.stages[name] ?? { status: 'pending' as const, generation: 0, runs: 0 };
    return {
      name,
      status: s.status,
      runs: s.runs,
      ...pick(s, ['reason', 'fingerprint', 'startedAt', 'endedAt', 'durationMs', 'items', 'error']),
    };
  });
  return {
    id: run.id,
    name: run.name,
    kind: data.kind,
    status: run.status,
    ...(data.hasResult ? { result: data.result as R } : {}),
    ...(data.error ? { error: data.error } : {}),
    stages,
    ...(data.waitingFor !== undefined && run.status === 'waiting' ? { waitingFor: data.waitingFor } : {}),
    attempts: data.attempts,
    history: data.history,
    createdAt: run.createdAt,
    updatedAt: run.updatedAt,
    ...(data.steps === undefined ? {} : { steps: data.steps }),
    ...(data.source ? { source: data.source } : {}),
    ...(data.currentStage === undefined ? {} : { currentStage: data.currentStage }),
  };
}

/** What a stopped run holds, for its last history entry: `Saved: 2 of 5 stages, 1,200 of 2,000 items of transcribe.` */
export function savedText(data: RunData): string {
  const stages = data.order.map((name) => data.stages[name]).filter((s) => s !== undefined);
  const completed = stages.filter((s) => s.status === 'completed').length;
  const unit = data.kind === 'workflow' ? `${data.steps ?? 0} step(s)` : `${completed} of ${stages.length} stage(s)`;
  const items = data.order.flatMap((name) =>
    Object.entries(data.stages[name]?.items ?? {})
      .filter(([, c]) => c.done < c.total)
      .map(([items, c]) => `${c.done} of ${c.total} items of ${name}/${items}`),
  );
  return `Saved: ${[unit, ...items].join(', ')}; resume continues from there.`;
}

/**
 * Records values given for waits (run, resume, submit). A value for the wait the run is waiting
 * on (`waitingFor`) is a new, unread answer. Any other value equal to the latest one given for its
 * name is the same command given again (after a crash, a script that always passes it): the answer
 * stays as it is, bound to the wait that read it, if one did. Other values replace the latest one,
 * unread. Values given by older cairn versions (`inputs`) move into `answers` first.
 */
export function giveAnswers(data: RunData, values: Readonly<Record<string, unknown>>, waitingFor: string | undefined): void {
  const answers = answersOf(data);
  const givenAt = new Date().toISOString();
  for (const [name, value] of Object.entries(values)) {
    if (name !== waitingFor && isSameAnswer(data, name, value)) continue;
    answers[name] = { value, givenAt };
  }
}

/** True when `value` is the latest value given for `name`. */
export function isSameAnswer(data: RunData, name: string, value: unknown): boolean {
  const latest = answersOf(data)[name];
  return latest !== undefined && isDeepStrictEqual(latest.value, value);
}

/** The run's answers, with values given by older cairn versions (`inputs`) moved in as unread. */
export function answersOf(data: RunData): Record<string, Answer> {
  data.answers ??= {};
  for (const [name, value] of Object.entries(data.inputs)) data.answers[name] ??= { value, givenAt: new Date(0).toISOString() };
  data.inputs = {};
  return data.answers;
}

function pick<T extends object, K extends keyof T>(obj: T, keys: readonly K[]): Partial<Pick<T, K>> {
  const out: Partial<Pick<T, K>> = {};
  for (const k of keys) if (obj[k] !== undefined) out[k] = obj[k];
  return out;
}
