/**
 * The engine's summary of a run, kept in `RunRecord.data`: stages, attempts, history, the input and
 * the inputs given to `waitFor`. Stored bytes are untrusted: they are parsed against a schema, and
 * a summary the engine did not write (a `CheckpointManager` workflow) reads as kind `checkpoints`.
 */
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

/** Where a run's definition lives: a module file and the export holding it. */
export interface RunSource {
  module: string;
  exportName?: string;
}

export interface RunData {
  kind: 'pipeline' | 'workflow';
  input: unknown;
  inputHash: string;
  /** Values given to `waitFor`, by name. */
  inputs: Record<string, unknown>;
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
  waitingFor: z.string().optional(),
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

function pick<T extends object, K extends keyof T>(obj: T, keys: readonly K[]): Partial<Pick<T, K>> {
  const out: Partial<Pick<T, K>> = {};
  for (const k of keys) if (obj[k] !== undefined) out[k] = obj[k];
  return out;
}
