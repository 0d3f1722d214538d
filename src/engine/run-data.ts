/**
 * The summary of a run, kept in `RunRecord.data`. It carries its format version (`fv`) and says who
 * owns the run (`owner`): the engine (stages, attempts, history, the input, the values given to
 * `waitFor`) or a `CheckpointManager` workflow (nothing more). Stored bytes are untrusted: an
 * engine summary is parsed against a schema; one that fails it is damaged (`CHECKPOINT_CORRUPT`,
 * naming the run and what is wrong), never taken for another owner's; one of a newer format is
 * refused (`FORMAT_TOO_NEW`). Fields this cairn does not know (a newer cairn's) are kept as they
 * are when the summary is written again. Summaries of cairn versions before `fv` read as before:
 * the engine's are recognised by their `kind` and `inputHash`, anything else is a CheckpointManager
 * workflow's.
 */
import { isDeepStrictEqual } from 'node:util';
import { z } from 'zod';
import { CairnError, type SerializedError } from '../core/errors.js';
import { serializedErrorSchema } from '../stores/codec.js';
import type { RunRecord } from '../stores/store.js';
import { runSpend, stageSpend, type StoredSpend } from './spend.js';
import type { AttemptSummary, HistoryEntry, ItemCounts, RunProblem, RunSummary, StageStatus, StageSummary } from './types.js';

/** The summary format this cairn writes and reads (summaries without `fv` are version 0, read as before). */
export const RUN_DATA_FORMAT = 1;

/** Who writes a run's summary. */
export type RunOwner = 'engine' | 'checkpoint-manager';

/**
 * Item counts as stored (kept out of run summaries, which show done, failed and total): the counts
 * an items call ended with, and what `cairn validate` checks its ledger against.
 */
export interface StoredItemCounts extends ItemCounts {
  /** Items per second the last attempt that finished items measured: a resume's progress uses it until it has its own. */
  rate?: number;
  /**
   * The ledger the counts were taken on. A ledger only grows, so it holds at least `done` done
   * items for good: `cairn validate` reports `LEDGER_SHORT` when it holds fewer. Unset in counts
   * an earlier cairn stored (their ledgers are not checked).
   */
  ledger?: string;
  /**
   * Damaged records the call skipped when it read the ledger at its start (their items ran again).
   * `cairn validate` counts the ledger's damage as recovered when it is no more than this, the call
   * got through its list and the ledger holds every item it counted done.
   */
  damaged?: number;
}

export interface StoredStage {
  status: StageStatus;
  reason?: string;
  fingerprint?: string;
  /** Hash of the fingerprint and the upstream outputs' content the current item ledgers were computed from (before: upstream seqs). */
  basis?: string;
  /** Bumped when a completed (or differently fingerprinted) stage reruns: its item ledgers start fresh. */
  generation: number;
  /** Bumped when a completed stage runs again on the same basis, keeping its item ledgers: its waits ask again. */
  round?: number;
  startedAt?: string;
  endedAt?: string;
  durationMs?: number;
  runs: number;
  items?: Record<string, StoredItemCounts>;
  error?: SerializedError;
  /**
   * The name the stage's item ledgers are named after, and that its dependents' fingerprints and
   * ledger bases know it by, when that is not its own: the name it had before a `renamedFrom`
   * (the first one, after several). Kept for the life of the run; no other stage may take it.
   */
  ledgerStage?: string;
  /** Hash of what says how the stage processes an item (pipeline version, stage version, config) in this generation: salts content hashes (`reuse`). */
  processing?: string;
  /**
   * By items name, the ledger of an earlier generation that `reuse: 'content'` calls of this
   * generation may take results from: the one the stage last ran that call with, kept when the
   * generation began only if the processing was the same.
   */
  reuseFrom?: Record<string, string>;
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
  /** The summary's format version: {@link RUN_DATA_FORMAT} once read (older summaries are migrated on read). */
  fv: number;
  owner: 'engine';
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
  /**
   * The values waits read, by `<name> @ <wait>`, while the stage or step that read them has not
   * completed: the same wait run again (after a crash, a failure, a later wait of its try) gets the
   * same value. Removed once the stage or step completes.
   */
  readAnswers?: Record<string, unknown>;
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
  /** Workflows: the fingerprint of the definition the run last ran under, and its parts (see workflow-change.ts). */
  definition?: { fingerprint: string; parts: unknown };
  /**
   * Pipelines: the damaged checkpoints the plan of attempt `attempt` (the latest) found and did not
   * use; the stages they held ran again. Once that attempt completes the run, nothing read depends
   * on them (`cairn validate` counts them as recovered). Unset when the latest plan found none.
   */
  ignoredCheckpoints?: { attempt: number; seqs: number[] };
  /** Spend limits by unit (`{ usd: 5 }`): no item starts once one is reached; the run waits for `budget`. */
  budget?: Record<string, number>;
  /** What the run has spent, kept so that nothing is counted twice (see spend.ts). */
  spend?: StoredSpend;
}

const MAX_HISTORY = 500;
/** History messages and attempt reasons are cut to this many characters (the full error is in the error checkpoint). */
export const MAX_MESSAGE = 1000;

// Loose objects: fields a newer cairn added (at the same format version) are kept, and written back.
const counts = z.looseObject({
  done: z.number(),
  failed: z.number(),
  total: z.number(),
  rate: z.number().optional(),
  ledger: z.string().optional(),
  damaged: z.number().int().nonnegative().optional(),
  reused: z.number().int().nonnegative().optional(),
});

const storedStage = z.looseObject({
  status: z.enum(['pending', 'running', 'waiting', 'completed', 'failed', 'skipped', 'interrupted']),
  reason: z.string().optional(),
  fingerprint: z.string().optional(),
  basis: z.string().optional(),
  generation: z.number().int().nonnegative(),
  round: z.number().int().nonnegative().optional(),
  startedAt: z.string().optional(),
  endedAt: z.string().optional(),
  durationMs: z.number().optional(),
  runs: z.number().int().nonnegative(),
  items: z.record(z.string(), counts).optional(),
  error: serializedErrorSchema.optional(),
  ledgerStage: z.string().optional(),
  processing: z.string().optional(),
  reuseFrom: z.record(z.string(), z.string()).optional(),
});

const attempt = z.looseObject({
  n: z.number().int(),
  startedAt: z.string(),
  endedAt: z.string().optional(),
  host: z.string(),
  pid: z.number().int(),
  outcome: z.string().optional(),
  reason: z.string().optional(),
});

const history = z.looseObject({ at: z.string(), event: z.string(), stage: z.string().optional(), message: z.string() });

const runData = z.looseObject({
  fv: z.number().int().nonnegative().optional(),
  owner: z.literal('engine').optional(),
  kind: z.enum(['pipeline', 'workflow']),
  input: z.unknown().optional(),
  inputHash: z.string(),
  inputs: z.record(z.string(), z.unknown()),
  order: z.array(z.string()),
  stages: z.record(z.string(), storedStage),
  attempts: z.array(attempt),
  history: z.array(history),
  answers: z
    .record(z.string(), z.looseObject({ value: z.unknown().optional(), givenAt: z.string(), for: z.string().optional() }))
    .optional(),
  readAnswers: z.record(z.string(), z.unknown()).optional(),
  waitingFor: z.string().optional(),
  waitRefused: z.string().optional(),
  currentStage: z.string().optional(),
  error: serializedErrorSchema.and(z.looseObject({ stage: z.string().optional() })).optional(),
  hasResult: z.boolean().optional(),
  result: z.unknown().optional(),
  steps: z.number().optional(),
  cancelRequested: z.boolean().optional(),
  source: z.looseObject({ module: z.string(), exportName: z.string().optional() }).optional(),
  fileHashes: z.record(z.string(), z.looseObject({ size: z.number(), mtimeMs: z.number(), sha256: z.string() })).optional(),
  definition: z.looseObject({ fingerprint: z.string(), parts: z.unknown() }).optional(),
  ignoredCheckpoints: z.looseObject({ attempt: z.number().int(), seqs: z.array(z.number().int()) }).optional(),
  budget: z.record(z.string(), z.number()).optional(),
  spend: z
    .looseObject({
      open: z.record(z.string(), z.looseObject({ stage: z.string(), spend: z.record(z.string(), z.number()) })).optional(),
      settled: z.record(z.string(), z.record(z.string(), z.number())).optional(),
    })
    .optional(),
});

/** What a run's stored summary is: the engine's (parsed), a CheckpointManager workflow's, or unusable as stored. */
export type RunDataRead =
  | { readonly owner: 'engine'; readonly data: RunData }
  | { readonly owner: 'checkpoint-manager' }
  | {
      readonly owner: 'unknown';
      /** `CHECKPOINT_CORRUPT` (damaged, or lost with a damaged run record) or `FORMAT_TOO_NEW`. */
      readonly error: CairnError;
      readonly problem: RunProblem;
      /** What is wrong, in a few words (`attempts: expected array, received string`). */
      readonly reason: string;
      /** The kind the summary claims, when it says one. */
      readonly kind?: 'pipeline' | 'workflow';
    };

/**
 * Reads a run's summary without throwing. A summary written by a newer cairn is `FORMAT_TOO_NEW`;
 * one that says it is the engine's (or, before `fv`, looks like it) but fails the schema, and one
 * lost with a damaged run record, are `CHECKPOINT_CORRUPT`.
 */
export function inspectRunData(run: RunRecord): RunDataRead {
  const lost = run.rebuilt?.dataLost === true;
  const raw = lost ? undefined : run.data;
  const kind = claimedKind(raw);
  const unusable = (code: RunProblem['code'], where: string, reason: string, message: string): RunDataRead => {
    const problem: RunProblem = { code, where, message, rebuilt: false };
    const error = new CairnError(code, message, { runId: run.id, where });
    return { owner: 'unknown', error, problem, reason, ...(kind ? { kind } : {}) };
  };
  const damaged = (reason: string): RunDataRead =>
    unusable(
      'CHECKPOINT_CORRUPT',
      'summary',
      reason,
      `The summary of run ${run.id} is damaged (${reason}); it is not used. ${REBUILD_NEXT(run.id)}`,
    );
  if (lost) {
    const where = run.rebuilt?.where ?? 'run record';
    const reason = run.rebuilt?.reason ?? 'unreadable';
    return unusable(
      'CHECKPOINT_CORRUPT',
      where,
      reason,
      `The run record of run ${run.id} is damaged (${where}: ${reason}) and its summary (input, stages, history) is lost with it. ` +
        REBUILD_NEXT(run.id),
    );
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return { owner: 'checkpoint-manager' }; // before fv: no data
  const body = raw as Record<string, unknown>;
  const fv = body.fv;
  if (fv !== undefined) {
    if (typeof fv !== 'number' || !Number.isSafeInteger(fv) || fv < 1) return damaged(`fv is ${JSON.stringify(fv)}`);
    if (fv > RUN_DATA_FORMAT) {
      return unusable(
        'FORMAT_TOO_NEW',
        'summary',
        `summary format ${fv}`,
        `Run ${run.id} was written by a newer cairn (summary format ${fv}; this cairn reads up to ${RUN_DATA_FORMAT}): ` +
          'upgrade cairnjs to use it. Nothing was changed.',
      );
    }
    if (body.owner === 'checkpoint-manager') return { owner: 'checkpoint-manager' };
    if (body.owner !== 'engine') return damaged(`owner is ${JSON.stringify(body.owner)}, not engine or checkpoint-manager`);
  } else if (kind === undefined || !('inputHash' in body)) {
    return { owner: 'checkpoint-manager' }; // before fv, a summary the engine did not write
  }
  const parsed = runData.safeParse(raw);
  if (!parsed.success) {
    return damaged(
      parsed.error.issues
        .slice(0, 3)
        .map((issue) => `${issue.path.length > 0 ? issue.path.join('.') : 'summary'}: ${issue.message}`)
        .join('; '),
    );
  }
  // zod rebuilds objects (unknown keys kept), and `__proto__` keys are already dropped by the store's deserializer
  const data = parsed.data as unknown as RunData;
  data.fv = RUN_DATA_FORMAT; // version 0 → 1: the fields below are all that changed
  data.owner = 'engine';
  return { owner: 'engine', data };
}

/** What to do about a run whose summary cannot be used: rebuild it from what is intact, or remove the run. */
const REBUILD_NEXT = (runId: string): string =>
  `Run its definition again with the same input to rebuild the summary from the intact checkpoints and item results ` +
  `(cairn run <module> --input <json> --run-id ${runId}; in code: cairn.run(definition, input, { runId: '${runId}' })), ` +
  `or remove the run with cairn delete ${runId}.`;

function claimedKind(raw: unknown): 'pipeline' | 'workflow' | undefined {
  if (typeof raw !== 'object' || raw === null) return undefined;
  const kind = (raw as Record<string, unknown>).kind;
  return kind === 'pipeline' || kind === 'workflow' ? kind : undefined;
}

/**
 * The engine data of a run, or undefined when the run is a CheckpointManager workflow. Throws
 * `CHECKPOINT_CORRUPT` for a damaged or lost summary and `FORMAT_TOO_NEW` for a newer one.
 */
export function readRunData(run: RunRecord): RunData | undefined {
  const read = inspectRunData(run);
  if (read.owner === 'unknown') throw read.error;
  return read.owner === 'engine' ? read.data : undefined;
}

/** The summary a CheckpointManager workflow's run record holds: its owner, nothing more. */
export function checkpointManagerData(): { fv: number; owner: RunOwner } {
  return { fv: RUN_DATA_FORMAT, owner: 'checkpoint-manager' };
}

/** What `list` and `show` say about a run whose record was rebuilt from what is intact. */
export function rebuiltProblem(run: RunRecord): RunProblem | undefined {
  const rebuilt = run.rebuilt;
  if (!rebuilt || rebuilt.dataLost) return undefined;
  return {
    code: 'CHECKPOINT_CORRUPT',
    where: rebuilt.where,
    message:
      `The run record of run ${run.id} is damaged (${rebuilt.where}: ${rebuilt.reason}); it was read back from ${rebuilt.from}, ` +
      `so its summary may be behind. Resuming the run (cairn resume ${run.id}) writes it back whole; checkpoints and item results are kept.`,
    rebuilt: true,
  };
}

export function newRunData(kind: RunData['kind'], input: unknown, inputHash: string, order: readonly string[]): RunData {
  const stages: Record<string, StoredStage> = {};
  for (const name of order) stages[name] = { status: 'pending', generation: 0, runs: 0 };
  return { fv: RUN_DATA_FORMAT, owner: 'engine', kind, input, inputHash, inputs: {}, order: [...order], stages, attempts: [], history: [] };
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
  const read = inspectRunData(run);
  if (read.owner !== 'engine') {
    return {
      id: run.id,
      name: run.name,
      kind: read.owner === 'checkpoint-manager' ? 'checkpoints' : (read.kind ?? 'unknown'),
      status: run.status,
      stages: [],
      attempts: [],
      history: [],
      createdAt: run.createdAt,
      updatedAt: run.updatedAt,
      ...(read.owner === 'unknown' ? { problem: read.problem } : {}),
    };
  }
  const data = read.data;
  const problem = rebuiltProblem(run);
  const stages: StageSummary[] = data.order.map((name) => {
    const s = data.stages[name] ?? { status: 'pending' as const, generation: 0, runs: 0 };
    const spend = stageSpend(data.spend, name);
    return {
      name,
      status: s.status,
      runs: s.runs,
      ...pick(s, ['reason', 'fingerprint', 'startedAt', 'endedAt', 'durationMs', 'error']),
      ...(s.items ? { items: publicCounts(s.items) } : {}),
      ...(spend ? { spend } : {}),
    };
  });
  const spend = runSpend(data.spend);
  return {
    id: run.id,
    name: run.name,
    kind: data.kind,
    status: run.status,
    // a completed run that runs again keeps its last result stored, but it is not the result of what runs now
    ...(data.hasResult && run.status === 'completed' ? { result: data.result as R } : {}),
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
    ...(spend ? { spend } : {}),
    ...(data.budget ? { budget: data.budget } : {}),
    ...(problem ? { problem } : {}),
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

/** The counts a run summary shows: done, failed, total (the stored rate is the engine's). */
function publicCounts(items: Readonly<Record<string, StoredItemCounts>>): Record<string, ItemCounts> {
  const out: Record<string, ItemCounts> = {};
  for (const [name, { done, failed, total, reused }] of Object.entries(items))
    out[name] = reused === undefined ? { done, failed, total } : { done, failed, total, reused };
  return out;
}

function pick<T extends object, K extends keyof T>(obj: T, keys: readonly K[]): Partial<Pick<T, K>> {
  const out: Partial<Pick<T, K>> = {};
  for (const k of keys) if (obj[k] !== undefined) out[k] = obj[k];
  return out;
}
