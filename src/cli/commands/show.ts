/**
 * `cairn show <run-id>`: one run in detail, like Temporal's `workflow describe` and DBOS's
 * `workflow steps`: stages with status and duration, items done/failed/total per items call
 * (counted from the ledgers now), attempts, artifacts, checkpoints, the last error, what to do
 * next, and the recent history. `--json` prints the {@link RunDetails} document.
 */
import type { Command } from 'commander';
import pc from 'picocolors';
import type { StageSummary } from '../../engine/types.js';
import { BUDGET_WAIT, formatSpend } from '../../engine/spend.js';
import { displayStoreUrl } from '../../stores/open-store.js';
import { EXIT, printJson, withStore, type StoreFlag } from '../cli-context.js';
import { formatDuration } from '../progress.js';
import { readRunDetails, type LedgerDetails, type RunDetails, type UnreadableRunDetails } from '../run-details.js';
import { formatAgo, formatBytes, formatTime, renderTable, shortJson, statusCell, type Cell } from '../table.js';

interface ShowFlags extends StoreFlag {
  readonly json?: boolean;
}

/** Lines of history and checkpoints shown (all of them are in --json). */
const RECENT = 10;

export function registerShow(program: Command): void {
  program
    .command('show')
    .description('one run in detail: stages, items, attempts, artifacts, checkpoints, the last error, what to do next, history')
    .argument('<run-id>', 'the run to show')
    .option('--store <url>', 'store URL (default: $CAIRN_STORE or file:./data/checkpoints)')
    .option('--json', 'print the run summary plus checkpoints, ledgers, artifacts, lock and next step as JSON')
    .action(async (runId: string, flags: ShowFlags) => {
      const details = await withStore(flags, (store) =>
        readRunDetails(store, runId, flags.store === undefined ? undefined : displayStoreUrl(flags.store)),
      );
      if (flags.json) printJson(details);
      else process.stdout.write(`${('status' in details ? renderDetails(details) : renderUnreadable(details)).join('\n')}\n`);
      // a run nothing can be read of is shown, and cannot be used: exit 1
      if (!('status' in details)) process.exitCode = EXIT.failed;
    });
}

export function renderDetails(d: RunDetails): string[] {
  const out: string[] = [];
  const field = (name: string, value: string): number => out.push(`${pc.dim(name.padEnd(9))}${value}`);
  const status = statusCell(d.status);
  field('Run', pc.bold(d.id));
  const stepWord = d.kind === 'workflow' ? 'NODE' : 'STAGE'; // a workflow is told in its own words
  field('Name', `${d.name} (${d.kind})`);
  if (d.input !== undefined) field('Input', shortJson(d.input, 200));
  field('Status', typeof status === 'string' ? status : (status.color?.(status.text) ?? status.text));
  if (d.problem) field('Damaged', pc.red(`${d.problem.code} at ${d.problem.where}`));
  field('Created', `${formatTime(d.createdAt)} (${formatAgo(d.createdAt)})`);
  field('Updated', `${formatTime(d.updatedAt)} (${formatAgo(d.updatedAt)})`);
  if (d.source)
    field('Source', `${d.source.module}${d.source.exportName && d.source.exportName !== 'default' ? `#${d.source.exportName}` : ''}`);
  if (d.steps !== undefined) field('Steps', String(d.steps));
  if (d.spend || d.budget)
    field(
      'Spent',
      `${formatSpend(d.spend)}${d.budget ? `; budget ${formatSpend(d.budget)}${d.status === 'waiting' && d.waitingFor === BUDGET_WAIT ? pc.blue(' (reached)') : ''}` : ''}`,
    );
  if (d.lock)
    field(
      'Lock',
      `${d.lock.owner} (pid ${d.lock.pid} on ${d.lock.host}), until ${formatTime(d.lock.expiresAt)}${d.lock.stale ? ' — stale' : ''}`,
    );

  if (d.stages.length > 0) {
    out.push('', pc.bold(d.kind === 'workflow' ? 'Nodes' : 'Stages'));
    for (const stage of d.stages) out.push(...renderStage(stage, d));
  }

  if (d.error) {
    out.push('', pc.bold('Error'));
    out.push(`  ${pc.red(d.error.code ?? d.error.name)}${d.error.stage ? ` in ${d.error.stage}` : ''}: ${d.error.message}`);
  }

  if (d.problem) out.push('', pc.bold('Damaged record'), `  ${pc.red(d.problem.code)}: ${d.problem.message}`);

  out.push('', pc.bold('Next'), `  ${d.next.message}`);
  if (d.next.command) out.push(`  ${pc.cyan(d.next.command)}`);

  if (d.attempts.length > 0) {
    out.push('', pc.bold('Attempts'));
    const rows = d.attempts.map((a): Cell[] => [
      `#${a.n}`,
      formatTime(a.startedAt),
      a.endedAt ? formatTime(a.endedAt) : '-',
      a.endedAt ? formatDuration(Date.parse(a.endedAt) - Date.parse(a.startedAt)) : '-',
      `${a.host}:${a.pid}`,
      a.outcome ? statusCell(a.outcome) : a.endedAt ? '-' : unended(d, a.n),
      clip(a.reason ?? '', 80),
    ]);
    out.push(...renderTable(['#', 'STARTED', 'ENDED', 'TOOK', 'HOST:PID', 'OUTCOME', 'REASON'], rows, '  '));
  }

  if (d.artifacts.length > 0) {
    out.push('', pc.bold('Artifacts'));
    const rows = d.artifacts.map((a): Cell[] => [a.path, formatBytes(a.size), a.sha256.slice(0, 12), a.stage ?? '-']);
    out.push(...renderTable(['PATH', 'SIZE', 'SHA256', stepWord], rows, '  '));
  }

  if (d.checkpoints.length > 0) {
    const damaged = d.checkpoints.filter((c) => !c.valid).length;
    const shown = d.checkpoints.slice(-RECENT);
    const earlier = d.checkpoints.length - shown.length;
    out.push(
      '',
      `${pc.bold('Checkpoints')}${pc.dim(` ${d.checkpoints.length}${damaged > 0 ? `, ${damaged} damaged` : ''}${earlier > 0 ? ` (last ${shown.length} shown)` : ''}; fork from one with cairn fork ${d.id} --from <seq>`)}`,
    );
    const rows = shown.map((c): Cell[] =>
      c.valid
        ? [String(c.seq), c.kind, c.stage ?? '-', formatBytes(c.bytes), formatTime(c.createdAt), describeMeta(c.meta)]
        : [String(c.seq ?? '?'), { text: 'damaged', color: pc.red }, '-', '-', '-', `${c.code}: ${c.reason}`],
    );
    out.push(...renderTable(['SEQ', 'KIND', stepWord, 'SIZE', 'CREATED', 'NOTE'], rows, '  '));
  }

  if (d.history.length > 0) {
    const shown = d.history.slice(-RECENT);
    out.push('', `${pc.bold('History')}${shown.length < d.history.length ? pc.dim(` (last ${shown.length} of ${d.history.length})`) : ''}`);
    out.push(...shown.map((h) => `  ${pc.dim(formatTime(h.at))}  ${h.event.padEnd(18)}  ${h.message}`));
  }
  return out;
}

/** A run whose record cannot be read: what is wrong, what is still intact, what to do. */
export function renderUnreadable(d: UnreadableRunDetails): string[] {
  const out: string[] = [];
  const field = (name: string, value: string): number => out.push(`${pc.dim(name.padEnd(9))}${value}`);
  field('Run', pc.bold(d.id));
  field('Status', pc.red(d.problem.code === 'FORMAT_TOO_NEW' ? 'unknown (written by a newer cairn)' : 'unknown (run record damaged)'));
  field('Where', d.problem.where);
  out.push('', pc.bold('Damaged record'), `  ${pc.red(d.problem.code)}: ${d.problem.message}`);
  const intact = d.checkpoints.filter((c) => c.valid).length;
  const items = d.ledgers.reduce((n, l) => n + l.done, 0);
  out.push(
    '',
    pc.bold('Intact'),
    `  ${intact} of ${d.checkpoints.length} checkpoint(s); ${d.ledgers.length} item ledger(s) with ${items} done item(s); ${d.artifacts.length} artifact(s)`,
  );
  if (d.lock) out.push(`  lock: ${d.lock.owner} (pid ${d.lock.pid} on ${d.lock.host})${d.lock.stale ? ' — stale' : ''}`);
  out.push('', pc.bold('Next'), `  ${d.next.message}`);
  if (d.next.command) out.push(`  ${pc.cyan(d.next.command)}`);
  return out;
}

/** An attempt with no end: running if a live lease holds the run, else it died without saving. */
function unended(d: RunDetails, n: number): Cell {
  const live = d.status === 'running' && d.lock !== null && !d.lock.stale && n === d.attempts.at(-1)?.n;
  return live ? { text: 'running', color: pc.cyan } : { text: 'crashed', color: pc.red };
}

function renderStage(stage: StageSummary, d: RunDetails): string[] {
  const mark = {
    completed: pc.green('✓'),
    failed: pc.red('✗'),
    running: pc.cyan('▸'),
    waiting: pc.blue('…'),
    interrupted: pc.yellow('■'),
    skipped: pc.dim('↷'),
    pending: pc.dim('·'),
  }[stage.status];
  const took =
    stage.durationMs !== undefined
      ? formatDuration(stage.durationMs)
      : stage.startedAt && stage.endedAt
        ? formatDuration(Date.parse(stage.endedAt) - Date.parse(stage.startedAt))
        : stage.status === 'running' && stage.startedAt && d.lock && !d.lock.stale
          ? `${formatDuration(Date.now() - Date.parse(stage.startedAt))} so far`
          : '';
  const runs = stage.runs > 1 ? pc.dim(` ×${stage.runs}`) : '';
  const status = statusCell(stage.status);
  const statusText = typeof status === 'string' ? status.padEnd(11) : (status.color?.(status.text.padEnd(11)) ?? status.text);
  const width = Math.max(...d.stages.map((s) => s.name.length));
  const note = stage.error
    ? pc.red(`  ${stage.error.code ?? stage.error.name}: ${clip(stage.error.message, 80)}`)
    : stage.reason && stage.reason !== 'not run yet' && ['skipped', 'running', 'waiting', 'interrupted'].includes(stage.status)
      ? pc.dim(`  ${stage.reason}`)
      : '';
  // the stage's spend, unless its items lines below say it already
  const shownBelow = d.ledgers.some((l) => l.stage === stage.name && l.current && l.spend !== undefined);
  const spent = stage.spend && !shownBelow ? pc.dim(`  spent ${formatSpend(stage.spend)}`) : '';
  const lines = [`  ${mark} ${stage.name.padEnd(width)}  ${statusText} ${took.padEnd(9)}${runs}${spent}${note}`.trimEnd()];
  for (const item of itemLines(stage, d.ledgers)) lines.push(`      ${item}`);
  return lines;
}

/** One line per items call of the stage: live counts from its current ledger, the total from the summary. */
function itemLines(stage: StageSummary, ledgers: readonly LedgerDetails[]): string[] {
  return itemBlocks(stage, ledgers).flat();
}

function itemBlocks(stage: StageSummary, ledgers: readonly LedgerDetails[]): string[][] {
  const current = ledgers.filter((l) => l.stage === stage.name && l.current);
  const names = new Set([...Object.keys(stage.items ?? {}), ...current.map((l) => l.items ?? l.name)]);
  return [...names].map((name) => {
    const ledger = current.find((l) => l.items === name);
    const saved = stage.items?.[name];
    const done = ledger?.done ?? saved?.done ?? 0;
    const failed = ledger?.failed ?? saved?.failed ?? 0;
    const total = ledger?.total ?? saved?.total;
    const failedText = failed > 0 ? pc.red(`${failed} failed`) : '0 failed';
    const step = ledger?.step === undefined ? '' : pc.dim(` (step ${ledger.step})`);
    const reused = ledger?.reused ? `, ${ledger.reused} reused unchanged` : '';
    const projected = ledger?.projectedSpend ? ` (at this pace ${formatSpend(ledger.projectedSpend)} in all)` : '';
    const spent = ledger?.spend ? pc.dim(`; spent ${formatSpend(ledger.spend)}${projected}`) : '';
    const line = `${name}: ${done} done${reused}, ${failedText}${total === undefined ? '' : `, ${total} total`}${step}${spent}`;
    const failures = (ledger?.failures ?? []).map((f) =>
      pc.dim(`  ✗ ${f.key} (try ${f.attempt}): ${f.code ? `${f.code}: ` : ''}${clip(f.message, 80)}`),
    );
    const more =
      ledger && ledger.failed > failures.length ? [pc.dim(`  … ${ledger.failed - failures.length} more (cairn show --json)`)] : [];
    return [line, ...failures, ...more];
  });
}

/** The first line of `text`, at most `max` characters. */
function clip(text: string, max: number): string {
  const line = text.split('\n')[0] ?? '';
  return line.length > max ? `${line.slice(0, max - 1)}…` : line;
}

function describeMeta(meta: Readonly<Record<string, unknown>> | undefined): string {
  if (!meta) return '';
  const parts: string[] = [];
  if (typeof meta.step === 'number') parts.push(`step ${meta.step}`);
  if (typeof meta.next === 'string') parts.push(`next ${meta.next}`);
  if (typeof meta.code === 'string') parts.push(meta.code);
  return parts.join(', ');
}
