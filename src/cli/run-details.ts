/**
 * Everything `cairn show` reports about one run, read from the store: the run summary, every
 * checkpoint (damaged ones flagged), each item ledger with live counts (the summary's counts are
 * only as of its last save), the artifact manifest, the lock, and what to do next. `show --json`
 * prints this document as is.
 */
import { CairnError, isCairnError } from '../core/errors.js';
import { assertRunId } from '../core/ids.js';
import { ledgerOwner } from '../engine/ledger-names.js';
import { inspectRunData, toSummary, type RunData } from '../engine/run-data.js';
import { addInto, budgetWaitText, BUDGET_WAIT, runSpend, stageSpend, type StoredSpend } from '../engine/spend.js';
import type { RunProblem, RunSummary } from '../engine/types.js';
import { isLeaseStale } from '../stores/common.js';
import type { ArtifactEntry, CheckpointEntry, ItemEntry, Store } from '../stores/store.js';
import { shellQuote } from './table.js';

export type CheckpointDetails =
  | {
      readonly seq: number;
      readonly valid: true;
      readonly kind: string;
      readonly stage?: string;
      readonly createdAt: string;
      readonly bytes: number;
      readonly meta?: Readonly<Record<string, unknown>>;
    }
  | { readonly seq?: number; readonly valid: false; readonly code: string; readonly reason: string };

export interface LedgerDetails {
  /** The ledger's stored name (`<stage>.<items>`, `<stage>.<items>.g<N>`, `<node>.s<step>.<items>`). */
  readonly name: string;
  /** The stage or node it belongs to, or null if no stage of the run matches the name. */
  readonly stage: string | null;
  /** The `ctx.items` name. */
  readonly items: string | null;
  /** Pipelines: the stage generation (0 before any rerun). */
  readonly generation?: number;
  /** Workflows: the step at which the node ran. */
  readonly step?: number;
  /** The ledger the stage uses now (older generations and earlier visits are history). */
  readonly current: boolean;
  /** Items whose latest entry is done / failed, counted from the ledger now. */
  readonly done: number;
  readonly failed: number;
  /** Items in the list, as of the stage's last save (current ledgers only). */
  readonly total?: number;
  /** What its entries say the items spent (every try that was saved, by unit), when any reported spend. */
  readonly spend?: Readonly<Record<string, number>>;
  /** What the call will have spent once every item is done, at the spend per item that ran so far (current ledgers with items left). */
  readonly projectedSpend?: Readonly<Record<string, number>>;
  /** Done items whose result was taken from an earlier generation's ledger (`reuse: 'content'`): nothing was paid for them. */
  readonly reused?: number;
  /** The first failed items (at most 5), with their errors. */
  readonly failures?: readonly { readonly key: string; readonly attempt: number; readonly code?: string; readonly message: string }[];
}

export interface LockDetails {
  readonly owner: string;
  readonly host: string;
  readonly pid: number;
  readonly epoch: number;
  readonly acquiredAt: string;
  readonly expiresAt: string;
  /** Expired, or held by a process of this host that is gone: the next resume takes it over. */
  readonly stale: boolean;
}

export interface NextStep {
  /** One sentence: what the state means and what to do. */
  readonly message: string;
  /** The command to run, when there is one. */
  readonly command?: string;
}

/** The `show --json` document: the run summary plus what the store holds about the run. */
export type RunDetails = RunSummary & {
  /** The run's input (engine runs): what tells runs of one definition apart. */
  readonly input?: unknown;
  readonly checkpoints: readonly CheckpointDetails[];
  readonly ledgers: readonly LedgerDetails[];
  readonly artifacts: readonly ArtifactEntry[];
  readonly lock: LockDetails | null;
  readonly next: NextStep;
};

const MAX_FAILURES = 5;

/**
 * The `show --json` document of a run whose record cannot be read at all (damaged, nothing intact
 * to read it back from, or written by a newer cairn): what is wrong, what is intact, what to do.
 */
export interface UnreadableRunDetails {
  readonly id: string;
  readonly problem: RunProblem;
  readonly checkpoints: readonly CheckpointDetails[];
  /** Ledgers with their counts; which stage each belongs to is unknown without the summary (`stage: null`). */
  readonly ledgers: readonly LedgerDetails[];
  readonly artifacts: readonly ArtifactEntry[];
  readonly lock: LockDetails | null;
  readonly next: NextStep;
}

/**
 * The run's and its stages' spend with each ledger's as its entries say now: the summary is saved at
 * most every 2 s while a run goes, and not at all by a process that was killed (the ledger entries
 * are what holds an item's spend).
 */
function liveSpend(
  data: RunData,
  summary: RunSummary,
  ledgers: readonly LedgerDetails[],
): Pick<RunSummary, 'spend' | 'stages'> | undefined {
  const stored = data.spend;
  if (!ledgers.some((l) => l.spend !== undefined)) return undefined;
  const open: NonNullable<StoredSpend['open']> = { ...stored?.open };
  for (const ledger of ledgers) {
    if (ledger.spend === undefined || ledger.stage === null) continue;
    open[ledger.name] = { stage: open[ledger.name]?.stage ?? ledger.stage, spend: { ...ledger.spend } };
  }
  // a workflow step's ledgers are settled into their node's total once it completes: those are counted there
  for (const name of Object.keys(open)) if (!stored?.open?.[name] && ledgerSettled(data, name)) delete open[name];
  const spend: StoredSpend = { ...stored, open };
  const total = runSpend(spend);
  const stages = summary.stages.map((stage) => {
    const { spend: _stored, ...rest } = stage;
    const now = stageSpend(spend, stage.name);
    return now ? { ...rest, spend: now } : rest;
  });
  return { ...(total ? { spend: total } : {}), stages };
}

/** Whether a workflow step's ledger (`<node>.s<step>.<items>`) belongs to a step that completed (its spend is in `settled`). */
function ledgerSettled(data: RunData, ledger: string): boolean {
  const step = /\.s(\d+)\./.exec(ledger);
  return data.kind === 'workflow' && step !== null && Number(step[1]) < (data.steps ?? 0);
}

/** A ledger's spend at its end: what it spent, plus the spend per item that ran times the items left. */
function projectSpend(ledger: LedgerDetails, total: number): Record<string, number> | undefined {
  const ran = ledger.done - (ledger.reused ?? 0);
  if (!ledger.spend || ran <= 0 || ledger.done >= total) return undefined;
  const out: Record<string, number> = {};
  for (const unit of Object.keys(ledger.spend))
    out[unit] = Number((ledger.spend[unit]! + (ledger.spend[unit]! / ran) * (total - ledger.done)).toPrecision(6));
  return out;
}

/** The problem of a run record `getRun` could not read (`CHECKPOINT_CORRUPT`, `FORMAT_TOO_NEW`), or undefined for any other error. */
export function unreadableProblem(error: unknown): RunProblem | undefined {
  const code = isCairnError(error, 'FORMAT_TOO_NEW')
    ? 'FORMAT_TOO_NEW'
    : isCairnError(error, 'CHECKPOINT_CORRUPT')
      ? 'CHECKPOINT_CORRUPT'
      : undefined;
  if (!code) return undefined;
  const { context, message } = error as CairnError;
  return { code, where: typeof context.where === 'string' ? context.where : 'run record', message, rebuilt: false };
}

/**
 * Reads a run's details; `INVALID_RUN_ID` for a hostile id, `NOT_FOUND` for an unknown run. A run
 * whose record cannot be read at all gets {@link UnreadableRunDetails}.
 */
export async function readRunDetails(store: Store, runId: string, storeFlag?: string): Promise<RunDetails | UnreadableRunDetails> {
  assertRunId(runId);
  let record;
  try {
    record = await store.getRun(runId);
  } catch (error) {
    const problem = unreadableProblem(error);
    if (!problem) throw error;
    return readUnreadableDetails(store, runId, problem, storeFlag);
  }
  if (!record) {
    // records left without a readable run record (damage, or a leftover): show what is intact, never "not found"
    const found = (await store.validateRun(runId)).find((p) => p.code === 'LEFTOVER_RECORDS' || p.code === 'CHECKPOINT_CORRUPT');
    if (found && (found.code === 'LEFTOVER_RECORDS' || found.code === 'CHECKPOINT_CORRUPT')) {
      return readUnreadableDetails(
        store,
        runId,
        { code: found.code, where: found.where, message: found.message, rebuilt: false },
        storeFlag,
      );
    }
    throw new CairnError('NOT_FOUND', `Run ${runId} not found in ${store.url}.`, { runId });
  }
  const summary = toSummary(record);
  const read = inspectRunData(record);
  const checkpoints = (await store.listCheckpoints(runId)).map(checkpointDetails);
  const ledgers =
    read.owner === 'checkpoint-manager' ? [] : await readLedgers(store, runId, read.owner === 'engine' ? read.data : undefined);
  const artifacts = await store.listArtifacts(runId);
  const lock = await readLock(store, runId);
  const input = read.owner === 'engine' ? { input: read.data.input } : {};
  const live = read.owner === 'engine' ? liveSpend(read.data, summary, ledgers) : undefined;
  return {
    ...summary,
    ...input,
    ...(live ?? {}),
    checkpoints,
    ledgers,
    artifacts,
    lock,
    next: nextStep(summary, checkpoints, lock, storeFlag, input.input),
  };
}

async function readUnreadableDetails(store: Store, runId: string, problem: RunProblem, storeFlag?: string): Promise<UnreadableRunDetails> {
  const checkpoints = (await store.listCheckpoints(runId)).map(checkpointDetails);
  const ledgers = await readLedgers(store, runId, undefined);
  const artifacts = await store.listArtifacts(runId);
  const lock = await readLock(store, runId);
  const store_ = storeFlag === undefined ? '' : ` --store ${shellQuote(storeFlag)}`;
  const next: NextStep =
    problem.code === 'FORMAT_TOO_NEW'
      ? { message: 'The run was written by a newer cairn: upgrade cairnjs to use it. Nothing was changed.' }
      : {
          message:
            'Nothing intact is left to read the run record back from, so the run cannot be resumed, exported or forked. ' +
            'Its checkpoints, item ledgers and artifacts are listed above; deleting the run removes them with it.',
          command: `cairn delete ${runId}${store_}`,
        };
  return { id: runId, problem, checkpoints, ledgers, artifacts, lock, next };
}

async function readLock(store: Store, runId: string): Promise<LockDetails | null> {
  const lease = await store.getLock(runId);
  return lease
    ? {
        owner: lease.owner,
        host: lease.host,
        pid: lease.pid,
        epoch: lease.epoch,
        acquiredAt: lease.acquiredAt,
        expiresAt: lease.expiresAt,
        stale: isLeaseStale(lease),
      }
    : null;
}

function checkpointDetails(entry: CheckpointEntry): CheckpointDetails {
  if (!entry.valid) return { ...(entry.seq === undefined ? {} : { seq: entry.seq }), valid: false, code: entry.code, reason: entry.reason };
  const { seq, kind, stage, createdAt, bytes, meta } = entry.ref;
  return { seq, valid: true, kind, ...(stage === undefined ? {} : { stage }), createdAt, bytes, ...(meta ? { meta } : {}) };
}

/**
 * Every ledger of the run with its done/failed counts, read now (the latest entry per key counts).
 * Without the run's summary (`data` undefined: damaged) no ledger is matched to a stage.
 */
async function readLedgers(store: Store, runId: string, data: RunData | undefined): Promise<LedgerDetails[]> {
  const out: LedgerDetails[] = [];
  for (const name of await store.listLedgers(runId)) {
    const latest = new Map<string, ItemEntry | true | 'reused'>(); // done items keep no result: counts only
    let spend: Record<string, number> | undefined;
    for await (const entry of store.readItems(runId, name)) {
      if (entry.spend) addInto((spend ??= {}), entry.spend);
      latest.set(entry.key, entry.status === 'done' ? (entry.reusedFrom === undefined ? true : 'reused') : entry);
    }
    let done = 0;
    let reused = 0;
    const failures: NonNullable<LedgerDetails['failures']>[number][] = [];
    for (const entry of latest.values()) {
      if (entry === true) done++;
      else if (entry === 'reused') {
        done++;
        reused++;
      } else if (entry.status === 'failed' && failures.length < MAX_FAILURES) {
        const { code, message } = entry.error;
        failures.push({ key: entry.key, attempt: entry.attempt, ...(code === undefined ? {} : { code }), message });
      }
    }
    const owner = data && ledgerOwner(name, data);
    out.push({
      name,
      stage: owner?.stage ?? null,
      items: owner?.items ?? null,
      ...(owner?.generation === undefined ? {} : { generation: owner.generation }),
      ...(owner?.step === undefined ? {} : { step: owner.step }),
      current: false,
      done,
      failed: latest.size - done,
      ...(spend ? { spend } : {}),
      ...(reused > 0 ? { reused } : {}),
      ...(failures.length > 0 ? { failures } : {}),
    });
  }
  // current: the stage's generation (pipelines), the node's latest visit (workflows)
  return out.map((ledger) => {
    if (ledger.stage === null || ledger.items === null || !data) return ledger;
    const stage = data.stages[ledger.stage];
    const current =
      ledger.step === undefined
        ? ledger.generation === (stage?.generation ?? 0)
        : !out.some((o) => o.stage === ledger.stage && o.items === ledger.items && (o.step ?? -1) > (ledger.step ?? -1));
    const total = current ? stage?.items?.[ledger.items]?.total : undefined;
    const projectedSpend = total === undefined ? undefined : projectSpend(ledger, total);
    return { ...ledger, current, ...(total === undefined ? {} : { total }), ...(projectedSpend ? { projectedSpend } : {}) };
  });
}

/** What the run's state means and the command that moves it on. */
export function nextStep(
  summary: RunSummary,
  checkpoints: readonly CheckpointDetails[],
  lock: LockDetails | null,
  storeFlag?: string,
  input?: unknown,
): NextStep {
  const id = summary.id;
  const store = storeFlag === undefined ? '' : ` --store ${shellQuote(storeFlag)}`;
  const module = summary.source ? '' : ' --module <file>';
  const resume = `cairn resume ${id}${store}${module}`;
  const why = summary.source ? '' : ' (--module: the run was not started by `cairn run`, so say where its definition is)';
  const problem = summary.problem;
  if (problem?.code === 'FORMAT_TOO_NEW') return { message: problem.message };
  if (problem?.rebuilt) {
    return {
      message:
        `The run record is damaged (${problem.where}) and was read back from an earlier copy, so what is shown may be behind. ` +
        `Resuming writes it back whole and continues the run; checkpoints and item results are kept${why}.`,
      command: resume,
    };
  }
  if (problem) {
    return {
      message:
        `The run's summary is lost or damaged (${problem.where}), its input with it. Run the definition again with the same input ` +
        `to rebuild it from the intact checkpoints and item results (done items are not redone), or remove the run with cairn delete ${id}${store}.`,
      command: `cairn run ${shellQuote(summary.source?.module ?? '<module>')} --input <json> --run-id ${id}${store}`,
    };
  }
  if (summary.kind === 'checkpoints') {
    const last = [...checkpoints].reverse().find((c) => c.valid);
    return {
      message:
        `A CheckpointManager workflow${last ? `; its newest intact checkpoint is seq ${last.seq}` : ' with no intact checkpoint'}. ` +
        `Load it in code with cm.getMostRecent('${id}').`,
    };
  }
  switch (summary.status) {
    case 'completed':
      return { message: `Nothing to do: the run completed. Its result: cairn show ${id}${store} --json (.result).` };
    case 'waiting': {
      if (summary.waitingFor === BUDGET_WAIT) {
        const { spent, raise } = budgetWaitText(summary);
        return { message: `The run reached its budget (${spent}); raise it and the run continues${why}.`, command: `${resume} ${raise}` };
      }
      const name = summary.waitingFor ?? '<name>';
      return {
        message: `The run waits for input "${name}"; give it and the run continues${why}.`,
        command: `${resume} --input ${shellQuote(name)}=<value>`,
      };
    }
    case 'failed': {
      const e = summary.error;
      const what = e ? `${e.code ?? e.name}${e.stage ? ` in stage ${e.stage}` : ''}` : 'the error above';
      return { message: `Fix the cause (${what}), then resume: completed work is kept${why}.`, command: resume };
    }
    case 'interrupted': {
      const forked = summary.attempts.length === 0 && summary.history.at(-1)?.event === 'run:forked';
      const what = forked ? 'A fork that has not run yet: resume replays it' : 'The run was interrupted: resume continues it';
      return { message: `${what} from its last checkpoint${why}.`, command: resume };
    }
    case 'pending':
      return { message: `The run has not started; resume starts it${why}.`, command: resume };
    case 'cancelled': {
      const last = [...checkpoints].reverse().find((c) => c.valid);
      const keep = last ? `; or keep its work: cairn fork ${id} --from ${last.seq}${store}, then resume the fork` : '';
      return {
        message: `The run was cancelled. To start it over: ${restartCommand(summary, input, store)}${keep}.`,
      };
    }
    case 'running': {
      if (lock && !lock.stale) {
        return {
          message: `Running: held by ${lock.owner} (pid ${lock.pid} on host ${lock.host}) until ${lock.expiresAt}, renewed while it works. Wait for it, or stop that process (Ctrl-C saves and stops it).`,
        };
      }
      const last = summary.attempts.at(-1);
      const who = last ? ` (pid ${last.pid} on host ${last.host})` : '';
      return {
        message: `Marked running, but the process${who} holds no live lease: it crashed. Resume takes it over from the last checkpoint${why}.`,
        command: resume,
      };
    }
  }
}

/** The command that starts a run over: its module and export, its input, the store it is in (`store`: ` --store …` or ''). */
export function restartCommand(summary: RunSummary, input: unknown, store: string): string {
  const module = shellQuote(summary.source?.module ?? '<module>');
  const exportName = summary.source?.exportName;
  const pick = exportName && exportName !== 'default' ? ` --pipeline ${shellQuote(exportName)}` : '';
  const given = input === undefined ? '' : ` --input ${shellQuote(JSON.stringify(input))}`;
  return `cairn run ${module}${pick}${given} --force-restart${store}`;
}
