/**
 * Runs a definition for `cairn run` / `cairn resume` with progress, then prints the outcome: the
 * run summary (`--json`), only the result (`--quiet`), or a short human report saying what to do
 * next. Returns the exit code for the run's status.
 */
import { Cairn, type Definition } from '../engine/cairn.js';
import { budgetWaitText, BUDGET_WAIT, formatSpend } from '../engine/spend.js';
import type { RunSummary } from '../engine/types.js';
import { storeLocation } from '../stores/open-store.js';
import { exitCodeForStatus, printable, printJson, storeExists, storeSuffix, storeUrl, type StoreFlag } from './cli-context.js';
import { formatDuration, ProgressView } from './progress.js';
import { userFrame } from './user-location.js';

export { storeSuffix };

export interface OutputFlags extends StoreFlag {
  readonly json?: boolean;
  readonly quiet?: boolean;
}

/** How long in-flight work may finish after a first Ctrl-C (the engine's default), as the live view says. */
const GRACE_PERIOD_MS = 10_000;

/** How a user runs this again, for the hints. */
export interface RerunHint {
  readonly resume: string;
}

export async function executeWithProgress(
  flags: OutputFlags,
  definitions: readonly Definition[],
  stages: readonly string[],
  start: (cairn: Cairn) => Promise<RunSummary>,
): Promise<number> {
  const quietOutput = flags.json === true || flags.quiet === true;
  // a store that is not there yet is made by this run: say so first, so that a mistyped --store is
  // seen at once (on stderr, with the progress: --json and --quiet print nothing else)
  const location = storeLocation(storeUrl(flags));
  if (location && !storeExists(flags) && !quietOutput) {
    process.stderr.write(`New store: ${location.path} did not exist; this run makes it.\n`);
  }
  const cairn = new Cairn({ store: storeUrl(flags), definitions, gracePeriodMs: GRACE_PERIOD_MS });
  const live = process.stderr.isTTY === true;
  const view = quietOutput
    ? undefined
    : new ProgressView(cairn, stages, {
        stream: process.stderr,
        live,
        // stdout on the same terminal (no redirection): what stages print goes above the live stage list
        sameTerminal: live && process.stdout.isTTY === true ? [process.stdout] : [],
        gracePeriodMs: GRACE_PERIOD_MS,
      });
  const started = Date.now();
  // no run:start means the engine returned a completed run's stored result without running anything
  let ran = false;
  cairn.once('run:start', () => (ran = true));
  // --json and --quiet: stdout holds the one document or result only; what stages print goes to stderr
  const restoreStdout = quietOutput ? routeStdoutToStderr() : undefined;
  let summary: RunSummary;
  try {
    summary = await start(cairn);
  } finally {
    restoreStdout?.();
    view?.stop();
    await cairn.close();
  }
  if (flags.json) printJson(summary);
  else if (flags.quiet) printResult(summary, storeSuffix(flags));
  else printReport(summary, Date.now() - started, !ran, storeSuffix(flags));
  // interrupted by a signal: the engine set 130 (SIGINT) or 143 (SIGTERM)
  const bySignal = process.exitCode === 130 || process.exitCode === 143 ? process.exitCode : undefined;
  return summary.status === 'interrupted' && bySignal !== undefined ? bySignal : exitCodeForStatus(summary.status);
}

/** Sends what is written to stdout to stderr until the returned function is called. */
function routeStdoutToStderr(): () => void {
  const stdout = process.stdout;
  const own = Object.getOwnPropertyDescriptor(stdout, 'write');
  stdout.write = ((...args: Parameters<typeof process.stderr.write>) => process.stderr.write(...args)) as typeof stdout.write;
  return () => {
    if (own) Object.defineProperty(stdout, 'write', own);
    else delete (stdout as { write?: unknown }).write;
  };
}

function printResult(summary: RunSummary, store: string): void {
  // only the result goes to stdout; a waiting run still says, on stderr, how to answer
  if (summary.status === 'waiting' && summary.waitingFor === BUDGET_WAIT) {
    const { spent, raise } = budgetWaitText(summary);
    process.stderr.write(`waiting for a higher budget (${spent}): cairn resume ${summary.id} ${raise}${store}\n`);
  } else if (summary.status === 'waiting')
    process.stderr.write(`waiting for ${summary.waitingFor}: cairn resume ${summary.id} --input ${summary.waitingFor}=<value>${store}\n`);
  if (summary.status === 'completed') process.stdout.write(`${renderValue(summary.result, Infinity)}\n`);
}

function renderValue(value: unknown, max: number, more = ''): string {
  let text: string;
  try {
    text = typeof value === 'string' ? value : (JSON.stringify(printable(value), null, 2) ?? 'undefined');
  } catch {
    text = String(value);
  }
  return text.length > max ? `${text.slice(0, max)}… (${text.length} characters${more ? `; ${more} for all` : ''})` : text;
}

function printReport(summary: RunSummary, ms: number, isCached: boolean, store: string): void {
  const out = (line = ''): boolean => process.stdout.write(`${line}\n`);
  const id = summary.id;
  switch (summary.status) {
    case 'completed':
      out(
        isCached
          ? `Run ${id} was already complete (${summary.updatedAt}): its input, stage versions, config and files are unchanged, so no stage ran ` +
              `(a stage's code is not fingerprinted: after changing it, bump the stage's version, or --force-restart).`
          : `Run ${id} completed (${formatDuration(ms)}).`,
      );
      out(`Result: ${renderValue(summary.result, 2000, `cairn show ${id} --json${store}`)}`);
      break;
    case 'waiting':
      if (summary.waitingFor === BUDGET_WAIT) {
        const { spent, raise } = budgetWaitText(summary);
        out(`Run ${id} reached its budget (${spent}): no item started past it, and every result so far is saved.`);
        out(`Raise it to continue: cairn resume ${id} ${raise}${store}`);
        break;
      }
      out(`Run ${id} is waiting for input "${summary.waitingFor}". Everything so far is saved; this process can exit.`);
      out(`Answer with: cairn resume ${id} --input ${summary.waitingFor}=<value>${store}`);
      break;
    case 'interrupted':
      out(`Run ${id} was interrupted${summary.currentStage ? ` during stage ${summary.currentStage}` : ''}. ${savedSummary(summary)}`);
      // a store that could not take a write (full disk, lock or outage past the retry bound) says why and what to do first
      if (summary.error?.code?.startsWith('STORE_')) out(`Because: ${summary.error.code}: ${summary.error.message}`);
      out(`Resume with: cairn resume ${id}${store}   (or run the same command again)`);
      break;
    case 'failed': {
      const e = summary.error;
      // where in the user's code it failed: the first frame of the stored stack that is not cairn's or a dependency's
      const at = userFrame(e?.stack);
      out(
        `Run ${id} failed${e?.stage ? ` in stage ${e.stage}` : ''}: ${e?.code ? `${e.code}: ` : ''}${e?.message ?? 'unknown error'}${at ? ` (at ${at})` : ''}`,
      );
      out(`${savedSummary(summary)} Fix the cause, then: cairn resume ${id}${store}   (details: cairn show ${id}${store})`);
      break;
    }
    case 'cancelled':
      out(`Run ${id} was cancelled. Start it over: the same command with --force-restart (cairn show ${id}${store} prints it).`);
      break;
    default:
      out(`Run ${id} is ${summary.status}.`);
  }
  if (summary.spend) out(`Spent: ${formatSpend(summary.spend)}${summary.budget ? ` (budget: ${formatSpend(summary.budget)})` : ''}`);
  // a budget on a unit nothing reports (a typo: ust for usd) never stops anything: say so
  const unreported =
    summary.spend && summary.budget ? Object.keys(summary.budget).filter((unit) => !Object.hasOwn(summary.spend!, unit)) : [];
  if (unreported.length > 0) {
    out(
      `Note: no spend was reported in ${unreported.join(', ')}, so the budget on ${unreported.length > 1 ? 'them' : 'it'} stops nothing ` +
        `(units reported: ${Object.keys(summary.spend!).join(', ')}).`,
    );
  }
}

function savedSummary(summary: RunSummary): string {
  const done = summary.stages.filter((s) => s.status === 'completed').length;
  const items = summary.stages.flatMap((s) => Object.values(s.items ?? {}));
  const itemsDone = items.reduce((n, c) => n + c.done, 0);
  const itemsText = items.length > 0 ? ` and ${itemsDone} item result(s)` : '';
  return `Saved: ${done} of ${summary.stages.length} stage(s)${itemsText}.`;
}
