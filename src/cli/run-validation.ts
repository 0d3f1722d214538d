/**
 * What `cairn validate` and `cairn cleanup --invalid` find wrong with a run, each problem with its
 * severity:
 *
 * - **untrustworthy**: what the run reads now (its record in force, a checkpoint or ledger record a
 *   resume would read, an artifact file, the order of its checkpoints) is damaged, missing or
 *   changed. The run is invalid: `validate` exits 1, `cleanup --invalid` deletes it.
 * - **damaged and recovered**: a record is damaged, but nothing read now depends on it; the store
 *   or the run summary shows why, by construction. The run stays valid: `validate` exits 0 (and
 *   lists the damage), `cleanup --invalid` keeps it.
 *
 * A problem counts as recovered only by one of these rules; everything else is untrustworthy
 * (a case that cannot be decided safely included):
 *
 * 1. Run record (`where: run`): a damaged earlier line of the file store's run log, while the line
 *    in force (the newest) is intact (the store marks it `superseded`). Every update appended a whole
 *    record; only the newest is read. A damaged record in force (read back from an older copy, or
 *    its summary lost) is untrustworthy, on every store.
 * 2. Checkpoint (`where: checkpoints`, a damaged record whose seq is known; never a seq missing,
 *    repeated or out of order, never `FORMAT_TOO_NEW`):
 *    - pipeline: the run is completed by its latest attempt, and that attempt's plan found the
 *      checkpoint damaged and did not use it (`RunData.ignoredCheckpoints`): the stages it held ran
 *      again, and every later plan reads the same intact records. Damage that came after the plan
 *      read the log is not in that list: untrustworthy.
 *    - workflow: an intact snapshot with a higher seq exists: a resume starts from the newest
 *      intact snapshot and reads only what follows it, so the state never depends on the damaged
 *      record. (Should the workflow's definition change later, the review of that change, not
 *      knowing which node the damaged step visited, counts every changed node as visited: more
 *      cautious, never a wrong state.)
 * 3. Item ledger (`where: items/<ledger>`, damaged records, never `FORMAT_TOO_NEW`), either:
 *    - the items call whose counts the run summary holds for that ledger (`StoredItemCounts.ledger`)
 *      skipped at least as many damaged records when it read the ledger at its start as the ledger
 *      has now (damage never heals, so it is the same damage, and none came later), got through its
 *      list (done + failed = total: the damaged records' items ran again), and the ledger still
 *      holds every item it counted done (no `LEDGER_SHORT`); or
 *    - pipeline: the ledger belongs to an earlier generation of its stage (the stage name and
 *      generation read unambiguously from the ledger's name): no run reads it again.
 *
 * `LEDGER_SHORT` (a ledger holding fewer done items than the run summary recorded when the items
 * call on it ended; a ledger only grows, so acknowledged batches were lost), `ARTIFACT_MISMATCH`,
 * `LEFTOVER_RECORDS`, `UNSAFE_PATH`, `NOT_FOUND` (missing checkpoints), `FORMAT_TOO_NEW`, a damaged
 * summary, damaged artifact manifest lines: always untrustworthy.
 *
 * The check works alike on every store: the store reports what does not read back
 * (`Store.validateRun`), the summary says what the engine relied on.
 */
import { isValidRunId } from '../core/ids.js';
import { ledgerOwner } from '../engine/ledger-names.js';
import { inspectRunData, type RunData, type StoredItemCounts } from '../engine/run-data.js';
import { SNAPSHOT_KIND } from '../engine/workflow-executor.js';
import type { RunRecord, Store, StoreProblem } from '../stores/store.js';
import { unreadableProblem } from './run-details.js';
import { shellQuote } from './table.js';

/** Problem codes: the store's, and `LEDGER_SHORT` (found against the run summary). */
export type ProblemCode = StoreProblem['code'] | 'LEDGER_SHORT';

/** One problem as `--json` prints it; `position` is a seq or line number, null when unknown. */
export interface ProblemView {
  readonly code: ProblemCode;
  readonly where: string;
  readonly position: number | null;
  readonly message: string;
  /** True: damaged and recovered (nothing read now depends on it); false: untrustworthy. */
  readonly recovered: boolean;
  /** For a recovered problem: what took the damaged record's place. */
  readonly recoveredBy?: string;
  /** For a damaged run record or summary: the command that repairs the run, or removes it. */
  readonly command?: string;
}

export interface RunValidation {
  readonly id: string;
  /** True when no problem is untrustworthy (damage the run recovered from may be listed). */
  readonly valid: boolean;
  /** The untrustworthy problems: what makes the run invalid. */
  readonly problems: ProblemView[];
  /** The problems the run recovered from. */
  readonly recovered: ProblemView[];
}

/** What a ledger named by the run summary's counts holds now. */
interface LedgerFacts {
  readonly stage: string;
  readonly items: string;
  readonly counts: StoredItemCounts;
  /** Distinct items whose latest entry is done. */
  readonly done: number;
}

/** What the rules read besides the problem itself. */
interface Context {
  readonly record: RunRecord | undefined;
  readonly data: RunData | undefined;
  readonly ledgers: ReadonlyMap<string, LedgerFacts>;
  /** Records of each ledger that do not read back (damaged or of a newer format), by ledger. */
  readonly unreadable: ReadonlyMap<string, number>;
  /** Seqs of the intact snapshots (workflows, when a damaged checkpoint needs them). */
  readonly snapshots: readonly number[];
}

/**
 * Checks one run: every record the store holds (`Store.validateRun`), the summary, and each ledger
 * against the counts the summary recorded; undefined when the store has no such run. `storeFlag`
 * goes into the commands suggested for a damaged run record.
 */
export async function checkRun(store: Store, runId: string, storeFlag?: string): Promise<RunValidation | undefined> {
  const found = await store.validateRun(runId);
  if (found.some((p) => p.code === 'NOT_FOUND' && p.where === 'run')) return undefined;
  const problems: StoreProblem[] = [...found];
  let record: RunRecord | undefined;
  let data: RunData | undefined;
  let command: string | undefined;
  let ledgers = new Map<string, LedgerFacts>();
  let snapshots: number[] = [];
  if (!found.some((p) => p.code === 'LEFTOVER_RECORDS')) {
    const flag = storeFlag === undefined ? '' : ` --store ${shellQuote(storeFlag)}`;
    try {
      record = await store.getRun(runId);
      if (record) {
        const read = inspectRunData(record);
        if (read.owner === 'unknown') {
          command = read.error.code === 'FORMAT_TOO_NEW' ? undefined : `cairn run <module> --input <json> --run-id ${runId}${flag}`;
          // a summary lost with its record is reported by the store already
          if (!record.rebuilt) problems.push({ code: read.problem.code, runId, where: 'run', message: read.problem.message });
        } else {
          if (record.rebuilt) command = `cairn resume ${runId}${flag}`;
          if (read.owner === 'engine') data = read.data;
        }
      }
    } catch (error) {
      if (!unreadableProblem(error)) throw error;
      command = `cairn delete ${runId}${flag}`;
    }
    // a link where a file of the run should be: nothing more is read
    if (data && !found.some((p) => p.code === 'UNSAFE_PATH')) {
      ledgers = await readLedgerFacts(store, runId, data);
      snapshots = await intactSnapshots(store, runId, data, found);
    }
  }
  const unreadable = new Map<string, number>();
  for (const p of found) {
    if (p.where.startsWith('items/')) unreadable.set(p.where.slice(6), (unreadable.get(p.where.slice(6)) ?? 0) + 1);
  }
  const views: ProblemView[] = problems.map((p) => toView(p, { record, data, ledgers, unreadable, snapshots }, command));
  for (const [ledger, facts] of ledgers) {
    if (facts.done < facts.counts.done) views.push(ledgerShort(ledger, facts, unreadable.get(ledger) ?? 0));
  }
  const untrustworthy = views.filter((v) => !v.recovered);
  return { id: runId, valid: untrustworthy.length === 0, problems: untrustworthy, recovered: views.filter((v) => v.recovered) };
}

function toView(problem: StoreProblem, context: Context, command: string | undefined): ProblemView {
  const recoveredBy = recovery(problem, context);
  return {
    code: problem.code,
    where: problem.where,
    position: problem.position ?? null,
    message: problem.message,
    recovered: recoveredBy !== undefined,
    ...(recoveredBy === undefined ? {} : { recoveredBy }),
    // the command that repairs (or removes) a run whose record or summary is damaged
    ...(command !== undefined && recoveredBy === undefined && problem.where === 'run' && problem.code !== 'FORMAT_TOO_NEW'
      ? { command }
      : {}),
  };
}

/** Why `problem` is damage the run recovered from (the rules in this file's comment), or undefined: untrustworthy. */
function recovery(problem: StoreProblem, { record, data, ledgers, unreadable, snapshots }: Context): string | undefined {
  if (problem.code !== 'CHECKPOINT_CORRUPT') return undefined;
  // 1. an earlier line of the run log, while the record in force is intact
  if (problem.where === 'run') {
    return problem.superseded && record && !record.rebuilt ? 'a later intact run record is in force' : undefined;
  }
  if (!data) return undefined; // not the engine's run (or its summary is unusable): nothing shows what was read past
  // 2. a damaged checkpoint
  if (problem.where === 'checkpoints') {
    const seq = problem.seq;
    if (seq === undefined) return undefined; // not one damaged record: the log's order, or an unreadable seq
    if (data.kind === 'pipeline') {
      const last = data.attempts.at(-1);
      const ignored = data.ignoredCheckpoints;
      const completed = record?.status === 'completed' && last?.outcome === 'completed';
      if (completed && ignored?.attempt === last.n && ignored.seqs.includes(seq)) {
        return `attempt ${last.n} found it damaged, did not use it, ran again the stages it held and completed the run`;
      }
      return undefined;
    }
    const newer = snapshots.find((s) => s > seq);
    return newer === undefined
      ? undefined
      : `snapshot ${newer} is intact and newer: the run goes on from there and never reads this record`;
  }
  // 3. a damaged record of an item ledger
  if (!problem.where.startsWith('items/')) return undefined;
  const ledger = problem.where.slice(6);
  const facts = ledgers.get(ledger);
  const { done, failed, total, damaged } = facts?.counts ?? { done: 0, failed: 0, total: 0 };
  if (facts && (damaged ?? 0) >= (unreadable.get(ledger) ?? 0) && done + failed === total && facts.done >= done) {
    return (
      `the last items call on this ledger (stage ${facts.stage}, items ${facts.items}) skipped its damaged records, ` +
      `ran their items again and got through its list; the ledger holds all ${done} items it counted done`
    );
  }
  const earlier = earlierGeneration(ledger, data);
  return earlier === undefined ? undefined : `${earlier}: no run reads it again`;
}

/**
 * For a pipeline ledger of an earlier generation of its stage, says so; undefined otherwise, and
 * whenever the name could be read two ways (stage names that prefix one another, an items name
 * ending like a generation).
 */
function earlierGeneration(ledger: string, data: RunData): string | undefined {
  if (data.kind !== 'pipeline') return undefined;
  if (data.order.filter((stage) => ledger.startsWith(`${stage}.`)).length !== 1) return undefined;
  const owner = ledgerOwner(ledger, data);
  if (owner?.generation === undefined || /\.g\d+$/.test(owner.items)) return undefined;
  const current = data.stages[owner.stage]?.generation;
  if (current === undefined || owner.generation >= current) return undefined;
  return `a ledger of generation ${owner.generation} of stage ${owner.stage}, which now works in generation ${current}`;
}

function ledgerShort(ledger: string, facts: LedgerFacts, unreadable: number): ProblemView {
  const lost = facts.counts.done - facts.done;
  const damage = unreadable > 0 ? ` (its ${unreadable} damaged record${unreadable === 1 ? '' : 's'} may hold some of them)` : '';
  return {
    code: 'LEDGER_SHORT',
    where: `items/${ledger}`,
    position: null,
    message:
      `The ledger of items ${facts.items} of stage ${facts.stage} holds ${facts.done} done item${facts.done === 1 ? '' : 's'}, ` +
      `but the run summary records ${facts.counts.done} done when the items call on it ended: ${lost} acknowledged ` +
      `item${lost === 1 ? ' is' : 's are'} missing from it${damage}. Should the stage run again on this ledger, they run again.`,
    recovered: false,
  };
}

/**
 * Each ledger the run summary holds counts for (counts stored by an earlier cairn name none), with the
 * items it holds done now. A ledger only grows: read after the summary, it holds at least what the
 * summary counted unless records were lost.
 */
async function readLedgerFacts(store: Store, runId: string, data: RunData): Promise<Map<string, LedgerFacts>> {
  const facts = new Map<string, LedgerFacts>();
  for (const [stage, summary] of Object.entries(data.stages)) {
    for (const [items, counts] of Object.entries(summary?.items ?? {})) {
      const ledger = counts.ledger;
      if (!isValidRunId(ledger) || facts.has(ledger)) continue;
      facts.set(ledger, { stage, items, counts, done: await doneItems(store, runId, ledger, counts.total) });
    }
  }
  return facts;
}

/** Distinct items whose latest entry in the ledger is done (keys 0…total-1 in a bitmap, others in a map). */
async function doneItems(store: Store, runId: string, ledger: string, total: number): Promise<number> {
  const size = Number.isSafeInteger(total) && total > 0 && total <= 1e9 ? total : 0;
  const bits = new Uint8Array(Math.ceil(size / 8));
  const others = new Map<string, boolean>();
  let done = 0;
  for await (const entry of store.readItems(runId, ledger)) {
    const isDone = entry.status === 'done';
    const i = Number(entry.key);
    let was: boolean;
    if (Number.isInteger(i) && i >= 0 && i < size && String(i) === entry.key) {
      was = (bits[i >> 3]! & (1 << (i & 7))) !== 0;
      if (isDone) bits[i >> 3]! |= 1 << (i & 7);
      else bits[i >> 3]! &= ~(1 << (i & 7));
    } else {
      was = others.get(entry.key) === true;
      others.set(entry.key, isDone);
    }
    if (isDone && !was) done++;
    else if (!isDone && was) done--;
  }
  return done;
}

/** Seqs of a workflow's intact snapshots, read only when a damaged checkpoint may need them. */
async function intactSnapshots(store: Store, runId: string, data: RunData, problems: readonly StoreProblem[]): Promise<number[]> {
  const damaged = problems.filter((p) => p.where === 'checkpoints');
  if (data.kind !== 'workflow' || !damaged.some((p) => p.seq !== undefined)) return [];
  const bad = new Set(damaged.flatMap((p) => [p.seq, p.position]));
  return (await store.listCheckpoints(runId)).flatMap((entry) =>
    entry.valid && entry.ref.kind === SNAPSHOT_KIND && !bad.has(entry.ref.seq) ? [entry.ref.seq] : [],
  );
}

/** `CODE at where #position: message`. */
export function describeProblem(problem: ProblemView): string {
  const at = problem.position === null ? problem.where : `${problem.where} #${problem.position}`;
  return `${problem.code} at ${at}: ${problem.message}`;
}

/** `CODE at where, CODE at where…`: the problems in a few words, at most `max` of them named. */
export function nameProblems(problems: readonly ProblemView[], max = 3): string {
  const named = problems.slice(0, max).map((p) => `${p.code} at ${p.where}`);
  if (problems.length > max) named.push(`${problems.length - max} more`);
  return named.join(', ');
}
