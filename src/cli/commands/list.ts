/**
 * `cairn list`: the runs in a store, newest first, as a table (id, name, kind, status, progress,
 * updated), with `--detailed` the stage each is at, item counts, attempts, the last error's code
 * and what it waits for. `--json` prints an array of run summaries.
 */
import type { Command } from 'commander';
import pc from 'picocolors';
import { toSummary } from '../../engine/run-data.js';
import type { RunSummary } from '../../engine/types.js';
import { RUN_STATUSES, type RunStatus } from '../../stores/store.js';
import { printJson, usageError, withStore, type StoreFlag } from '../cli-context.js';
import { formatAgo, renderTable, statusCell, type Cell } from '../table.js';

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
      const summaries = await withStore(flags, async (store) => {
        const runs = await store.listRuns(status ? { status } : {});
        runs.sort((a, b) => (a.updatedAt < b.updatedAt ? 1 : a.updatedAt > b.updatedAt ? -1 : a.id.localeCompare(b.id)));
        return runs.map((r) => toSummary(r));
      });
      if (flags.json) {
        printJson(summaries);
        return;
      }
      if (summaries.length === 0) {
        const where = status ? ` with status ${status.join(' or ')}` : '';
        process.stdout.write(`No runs${where}.\n`);
        return;
      }
      process.stdout.write(`${renderList(summaries, flags.detailed === true).join('\n')}\n`);
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

export function renderList(summaries: readonly RunSummary[], detailed: boolean): string[] {
  const now = Date.now();
  const headers = ['ID', 'NAME', 'KIND', 'STATUS', 'PROGRESS', 'UPDATED'];
  if (detailed) headers.push('STAGE', 'ITEMS', 'ATTEMPTS', 'ERROR', 'WAITING FOR');
  const rows = summaries.map((s) => {
    const row: Cell[] = [s.id, s.name, s.kind, statusCell(s.status), progressOf(s), formatAgo(s.updatedAt, now)];
    if (detailed) {
      const code = s.error ? (s.error.code ?? s.error.name) : '-';
      row.push(stageOf(s), itemsOf(s), String(s.attempts.length), s.error ? { text: code, color: pc.red } : code, s.waitingFor ?? '-');
    }
    return row;
  });
  return renderTable(headers, rows);
}

/** Pipelines: stages done/total; workflows: steps taken. */
function progressOf(s: RunSummary): string {
  if (s.kind === 'checkpoints') return '-';
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
