/**
 * `cairn list`: the runs in a store, newest first, as a table (id, name, kind, status, progress,
 * updated), with `--detailed` the stage each is at, item counts, attempts, the last error's code
 * and what it waits for. `--json` prints an array of run summaries. A run whose record is damaged
 * is listed too, marked `damaged`: read back from what is intact (with its summary's status), or,
 * when nothing of it can be read, as `{ id, problem }` after the others.
 */
import type { Command } from 'commander';
import pc from 'picocolors';
import { inspectRunData, toSummary } from '../../engine/run-data.js';
import { formatSpend } from '../../engine/spend.js';
import type { RunProblem, RunSummary } from '../../engine/types.js';
import { RUN_STATUSES, type RunRecord, type RunStatus, type Store } from '../../stores/store.js';
import { isLeaseStale } from '../../stores/common.js';
import { printJson, storeSuffix, usageError, withStore, type StoreFlag } from '../cli-context.js';
import { unreadableProblem } from '../run-details.js';
import { formatAgo, renderTable, shortJson, statusCell, type Cell } from '../table.js';

interface ListFlags extends StoreFlag {
  readonly detailed?: boolean;
  readonly status?: string;
  readonly json?: boolean;
}

export function registerList(program: Command): void {
  program
    .command('list')
    .description('list the runs in the store, newest first')
    .option('--detailed', 'add the current or failed stage, item counts, attempts, the last error code and what a run waits for')
    .option('--status <status>', `only runs with this status (or several, comma-separated): ${RUN_STATUSES.join(', ')}`)
    .option('--store <url>', 'store URL (default: $CAIRN_STORE or file:./data/checkpoints)')
    .option('--json', 'print an array of run summaries')
    .action(async (flags: ListFlags) => {
      const status = parseStatuses(flags.status);
      const { summaries, inputs, crashed, unreadable } = await withStore(flags, async (store) => {
        const runs = await store.listRuns(status ? { status } : {});
        runs.sort((a, b) => (a.updatedAt < b.updatedAt ? 1 : a.updatedAt > b.updatedAt ? -1 : a.id.localeCompare(b.id)));
        const listed = new Set(runs.map((r) => r.id));
        const inputs = new Map(runs.flatMap((r) => inputOf(r)));
        // a run saved as running that no live process holds crashed (killed, or its machine went down)
        const crashed = new Set<string>();
        for (const run of runs) {
          if (run.status !== 'running') continue;
          const lease = await store.getLock(run.id);
          if (!lease || isLeaseStale(lease)) crashed.add(run.id);
        }
        return { summaries: runs.map((r) => toSummary(r)), inputs, crashed, unreadable: await readUnreadable(store, listed) };
      });
      // a run nothing can be read of has no status: listed unless a status was asked for
      const shown = status ? [] : unreadable;
      if (flags.json) {
        printJson([...summaries, ...shown]);
        return;
      }
      const lines: string[] = [];
      if (summaries.length + shown.length === 0) {
        const where = status ? ` with status ${status.join(' or ')}` : '';
        lines.push(`No runs${where}.`);
      } else {
        lines.push(...renderList(summaries, flags.detailed === true, shown, inputs, crashed));
      }
      lines.push(...damageNotes(summaries, shown, unreadable.length - shown.length, storeSuffix(flags)));
      process.stdout.write(`${lines.join('\n')}\n`);
    });
}

/** `--status failed,interrupted` → the statuses; an unknown one is a usage error naming the valid ones. */
export function parseStatuses(value: string | undefined): RunStatus[] | undefined {
  if (value === undefined) return undefined;
  const wanted = value
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
  const wrong = wanted.filter((s) => !(RUN_STATUSES as readonly string[]).includes(s));
  if (wanted.length === 0 || wrong.length > 0) {
    throw usageError(`Unknown status ${JSON.stringify(wrong[0] ?? value)} for --status; use one of ${RUN_STATUSES.join(', ')}.`);
  }
  return wanted as RunStatus[];
}

/** A run whose record cannot be read at all: `list --json` prints it as this, after the run summaries. */
export interface UnreadableRun {
  readonly id: string;
  readonly problem: RunProblem;
}

/** The runs `listRuns` could not return: ids that hold a run record nothing can be read of (leftovers are not runs). */
async function readUnreadable(store: Store, listed: ReadonlySet<string>): Promise<UnreadableRun[]> {
  const out: UnreadableRun[] = [];
  for (const id of await store.listRunIds({ except: listed })) {
    try {
      // undefined: deleted meanwhile, or records left without a run record (a run record lost to
      // damage on a store that keeps it apart): shown with what validate finds, never hidden
      if ((await store.getRun(id)) !== undefined) continue; // a run the filter left out
      for (const p of await store.validateRun(id)) {
        if (p.code !== 'LEFTOVER_RECORDS' && p.code !== 'CHECKPOINT_CORRUPT') continue;
        out.push({ id, problem: { code: p.code, where: p.where, message: p.message, rebuilt: false } });
        break;
      }
    } catch (error) {
      const problem = unreadableProblem(error);
      if (!problem) throw error;
      out.push({ id, problem });
    }
  }
  return out;
}

export function renderList(
  summaries: readonly RunSummary[],
  detailed: boolean,
  unreadable: readonly UnreadableRun[] = [],
  inputs: ReadonlyMap<string, unknown> = new Map(),
  crashed: ReadonlySet<string> = new Set(),
): string[] {
  const now = Date.now();
  const headers = ['ID', 'NAME', 'KIND', 'STATUS', 'PROGRESS', 'UPDATED'];
  // SPENT only when a run reported spend (item.spend, ctx.spend)
  const withSpend = detailed && summaries.some((s) => s.spend !== undefined);
  if (detailed) headers.push('STAGE/NODE', 'ITEMS', ...(withSpend ? ['SPENT'] : []), 'ATTEMPTS', 'ERROR', 'WAITING FOR', 'INPUT');
  const rows = summaries.map((s) => {
    // (a CheckpointManager workflow takes no lease: its `running` says only that its loop has not ended)
    const died = crashed.has(s.id) && !s.problem && s.kind !== 'checkpoints';
    const status: Cell = died ? { text: 'running, crashed', color: pc.yellow } : runStatusCell(s);
    const row: Cell[] = [s.id, s.name, s.kind, status, progressOf(s), formatAgo(s.updatedAt, now)];
    if (detailed) {
      const code = s.error ? (s.error.code ?? s.error.name) : '-';
      row.push(stageOf(s), itemsOf(s));
      if (withSpend) row.push(s.spend ? formatSpend(s.spend) : '-');
      row.push(String(s.attempts.length), s.error ? { text: code, color: pc.red } : code, s.waitingFor ?? '-');
      row.push(inputs.has(s.id) ? shortJson(inputs.get(s.id), 40) : '-');
    }
    return row;
  });
  for (const run of unreadable) {
    const row: Cell[] = [run.id, '?', '?', { text: 'damaged', color: pc.red }, '-', '-'];
    if (detailed) row.push('-', '-', ...(withSpend ? ['-'] : []), '-', { text: run.problem.code, color: pc.red }, '-', '-');
    rows.push(row);
  }
  return renderTable(headers, rows);
}

/** The status, marked when the run's record is damaged (`failed, damaged`) or too new. */
function runStatusCell(s: RunSummary): Cell {
  if (!s.problem) return statusCell(s.status);
  const mark = s.problem.code === 'FORMAT_TOO_NEW' ? 'too new' : 'damaged';
  return { text: `${s.status}, ${mark}`, color: pc.red };
}

/** One line per run with a damaged (or too new) record: what, where, and the command that shows what to do. */
function damageNotes(summaries: readonly RunSummary[], unreadable: readonly UnreadableRun[], hidden: number, store: string): string[] {
  const notes = [
    ...summaries.flatMap((s) => (s.problem ? [{ id: s.id, problem: s.problem }] : [])),
    ...unreadable.map((r) => ({ id: r.id, problem: r.problem })),
  ].map(({ id, problem }) => {
    const what =
      problem.code === 'FORMAT_TOO_NEW'
        ? 'written by a newer cairn'
        : problem.rebuilt
          ? 'damaged, read back from an earlier copy'
          : 'damaged';
    return `  ${id}: ${what} (${problem.where}); see cairn show ${id}${store}`;
  });
  if (hidden > 0)
    notes.push(
      `  ${hidden} run${hidden === 1 ? '' : 's'} whose record cannot be read (status unknown) not shown; cairn list${store} without --status shows them`,
    );
  return notes.length === 0 ? [] : ['', pc.yellow('Runs with a damaged record:'), ...notes];
}

/** Pipelines: stages done/total; workflows: steps taken. */
function progressOf(s: RunSummary): string {
  if (s.kind === 'checkpoints' || s.kind === 'unknown') return '-';
  if (s.kind === 'workflow') return `${s.steps ?? 0} step${s.steps === 1 ? '' : 's'}`;
  const done = s.stages.filter((st) => st.status === 'completed' || st.status === 'skipped').length;
  return `${done}/${s.stages.length} stages`;
}

/** The stage that failed, runs, waits or was stopped. */
function stageOf(s: RunSummary): string {
  if (s.error?.stage) return s.error.stage;
  if (s.currentStage) return s.currentStage;
  const active = s.stages.find((st) => st.status === 'waiting' || st.status === 'running' || st.status === 'interrupted');
  return active?.name ?? '-';
}

/** Items done/total over every items call, as of each stage's last save (`cairn show` counts them live). */
function itemsOf(s: RunSummary): string {
  const counts = s.stages.flatMap((st) => Object.values(st.items ?? {}));
  if (counts.length === 0) return '-';
  const sum = (k: 'done' | 'failed' | 'total'): number => counts.reduce((n, c) => n + c[k], 0);
  const failed = sum('failed');
  return `${sum('done')}/${sum('total')}${failed > 0 ? ` (${failed} failed)` : ''}`;
}

/** `[id, input]` of an engine run whose summary reads; nothing for any other. */
function inputOf(run: RunRecord): [string, unknown][] {
  const read = inspectRunData(run);
  return read.owner === 'engine' ? [[run.id, read.data.input]] : [];
}
