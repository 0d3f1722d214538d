/**
 * Live progress for `cairn run`/`resume`, on stderr so that stdout keeps only the result. On a
 * terminal: one line per stage with its state (pending, running with the time so far, retrying
 * with the error and the backoff, waiting for an input, done with its duration, skipped with the
 * reason, failed with the code), for item stages a bar with done/total, rate and ETA and the last
 * item retry, and the last warnings; the whole block is redrawn in place (live-frame.ts). Off a
 * terminal: plain lines, item progress and item retries at most every few seconds per items call.
 * Everything shown comes from the engine's events.
 */
import pc from 'picocolors';
import type { Cairn } from '../engine/cairn.js';
import { BUDGET_WAIT, formatAmount } from '../engine/spend.js';
import type { CairnEvents, ItemsProgress, RunSummary } from '../engine/types.js';
import { LiveFrame, rowsOf } from './live-frame.js';

type StageState = 'pending' | 'running' | 'retrying' | 'waiting' | 'done' | 'skipped' | 'failed' | 'interrupted' | 'cancelled';
type StageFail = CairnEvents['stage:fail'];
type ItemRetry = CairnEvents['items:retry'];

interface StageRow {
  readonly name: string;
  state: StageState;
  /** When this process started the stage (for the time so far), and how long it took. */
  startedAt?: number;
  durationMs?: number;
  /** Why it runs (when not simply its first run), why it was skipped, or `completed earlier; …`. */
  note?: string;
  /** The last failed try: the error, and when the next try starts if it is retried. */
  failure?: { readonly error: StageFail['error']; readonly try: number; readonly maxTries?: number; readonly retryAt?: number };
  waitingFor?: string;
  readonly items: Map<string, ItemsProgress>;
  /** Per items call: the last item retry, when its next try starts, and how many retries so far. */
  readonly retries: Map<string, { readonly last: ItemRetry; readonly retryAt: number; readonly count: number }>;
}

export interface ProgressOptions {
  readonly stream: NodeJS.WriteStream;
  /** Redraw in place (a TTY) or print lines. */
  readonly live: boolean;
  /** Other streams writing to the same terminal (stdout when it is one): their output goes above the live block. */
  readonly sameTerminal?: readonly NodeJS.WriteStream[];
  /** Minimum time between two plain item lines (progress, retries) of one items call. @defaultValue 2000 */
  readonly lineIntervalMs?: number;
  /** How long the engine lets in-flight work finish after a first Ctrl-C, to say so. @defaultValue 10000 */
  readonly gracePeriodMs?: number;
  /** Time between two redraws of the live block. @defaultValue 100 */
  readonly redrawMs?: number;
}

const BAR_WIDTH = 24;
/** Warnings kept on screen, the most recent last. */
const WARNINGS_SHOWN = 2;

export function formatDuration(ms: number): string {
  if (!Number.isFinite(ms) || ms < 0) return '?';
  if (ms < 1000) return `${Math.round(ms)}ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m${String(Math.round(s % 60)).padStart(2, '0')}s`;
  return `${Math.floor(m / 60)}h${String(m % 60).padStart(2, '0')}m`;
}

export function formatItems(p: ItemsProgress, withBar: boolean): string {
  const pct = p.total > 0 ? Math.floor(((p.done + p.failed) / p.total) * 100) : 100;
  const rate = p.rate > 0 ? `${p.rate >= 100 ? Math.round(p.rate) : p.rate.toFixed(1)}/s` : '–/s';
  const eta = p.eta === undefined ? 'ETA ?' : p.eta === 0 ? 'done' : `ETA ${formatDuration(p.eta * 1000)}`;
  const failed = p.failed > 0 ? ` ${p.failed} failed` : '';
  const counts = `${p.done}/${p.total}${failed} ${pct}% ${rate} ${eta}${spendOf(p)}`;
  if (!withBar) return `${p.name}: ${counts}`;
  const filled = p.total > 0 ? Math.round(((p.done + p.failed) / p.total) * BAR_WIDTH) : BAR_WIDTH;
  return `${p.name} ${pc.cyan('█'.repeat(filled))}${pc.dim('░'.repeat(BAR_WIDTH - filled))} ${counts}`;
}

/** ` usd 0.31 of ~1.02`: what the call spent and will have spent at its end (two units at most). */
function spendOf(p: ItemsProgress): string {
  if (!p.spend) return '';
  const units = Object.keys(p.spend).slice(0, 2);
  const parts = units.map((unit) => {
    const projected = p.projectedSpend?.[unit];
    const toCome = projected !== undefined && p.done < p.total ? ` of ~${formatAmount(projected)}` : '';
    return `${unit} ${formatAmount(p.spend![unit]!)}${toCome}`;
  });
  return ` · ${parts.join(', ')}`;
}

function waitText(name: string | undefined): string {
  return name === BUDGET_WAIT ? 'waiting for a higher budget' : `waiting for ${name ?? 'input'}`;
}

/** Text from outside (error messages, reasons, keys) on one line: no control characters or escapes. */
function oneLine(text: string): string {
  // eslint-disable-next-line no-control-regex -- control characters are what it removes
  return text.replace(/[\u0000-\u001f\u007f-\u009f]+/g, ' ').trim();
}

function errorText(error: { readonly code?: string; readonly message: string }): string {
  return oneLine(`${error.code ?? 'error'}: ${error.message.split('\n')[0] ?? ''}`);
}

/** Follows a Cairn's events and shows them; `stop()` leaves the final picture on screen. */
export class ProgressView {
  private readonly rows = new Map<string, StageRow>();
  private readonly frame: LiveFrame | undefined;
  private readonly warnings: string[] = [];
  private readonly lastLine = new Map<string, number>();
  private readonly lastCounts = new Map<string, string>();
  private readonly skippedRetries = new Map<string, number>();
  /** The first SIGINT/SIGTERM while the run is active: the run is stopping. */
  private stopping: NodeJS.Signals | undefined;
  private hasEvents = false;
  private timer: NodeJS.Timeout | undefined;
  private readonly detach: () => void;
  private readonly onSignal = (signal: NodeJS.Signals): void => this.signalled(signal);

  constructor(
    cairn: Cairn,
    stages: readonly string[],
    private readonly options: ProgressOptions,
  ) {
    for (const name of stages) this.rows.set(name, newRow(name));
    this.frame = options.live ? new LiveFrame(options.stream, options.sameTerminal) : undefined;
    const on = {
      start: (e: CairnEvents['stage:start']) => this.started(e),
      complete: (e: CairnEvents['stage:complete']) => this.completed(e),
      skip: (e: CairnEvents['stage:skip']) => this.skipped(e),
      fail: (e: StageFail) => this.failed(e),
      items: (p: ItemsProgress) => this.items(p),
      retry: (e: ItemRetry) => this.itemRetry(e),
      warning: (e: CairnEvents['warning']) => this.warning(e),
      runStart: () => this.listenForSignals(true),
      runEnd: (e: CairnEvents['run:end']) => this.ended(e.summary),
    };
    cairn
      .on('stage:start', on.start)
      .on('stage:complete', on.complete)
      .on('stage:skip', on.skip)
      .on('stage:fail', on.fail)
      .on('items:progress', on.items)
      .on('items:retry', on.retry)
      .on('warning', on.warning)
      .on('run:start', on.runStart)
      .on('run:end', on.runEnd);
    this.detach = () => {
      cairn
        .off('stage:start', on.start)
        .off('stage:complete', on.complete)
        .off('stage:skip', on.skip)
        .off('stage:fail', on.fail)
        .off('items:progress', on.items)
        .off('items:retry', on.retry)
        .off('warning', on.warning)
        .off('run:start', on.runStart)
        .off('run:end', on.runEnd);
      this.listenForSignals(false);
    };
    if (this.frame) {
      this.timer = setInterval(() => this.render(), options.redrawMs ?? 100);
      this.timer.unref();
    }
  }

  /**
   * Draws the last picture (live) and stops listening. Nothing is drawn if nothing happened (a
   * completed run returning its cached result), rather than a list of stages shown as pending.
   */
  stop(): void {
    clearInterval(this.timer);
    this.detach();
    if (this.frame) {
      if (this.hasEvents) this.render();
      this.frame.done();
    }
  }

  private row(stage: string): StageRow {
    let row = this.rows.get(stage);
    if (!row) this.rows.set(stage, (row = newRow(stage))); // a stage not in the list given (never for cairn's own definitions)
    this.hasEvents = true;
    return row;
  }

  private started(e: CairnEvents['stage:start']): void {
    const row = this.row(e.stage);
    Object.assign(row, { state: 'running', startedAt: Date.now() });
    row.note = e.reason && e.reason !== 'not run yet' ? oneLine(e.reason) : undefined;
    row.failure = undefined;
    row.waitingFor = undefined;
    row.items.clear(); // a workflow node visited again has new items
    row.retries.clear();
    // why a stage runs is news when it runs again (changed, resuming); a first run needs no reason
    this.print(`▸ ${e.stage}: started${e.reason && e.reason !== 'not run yet' ? ` (${e.reason})` : ''}`);
  }

  private completed(e: CairnEvents['stage:complete']): void {
    const row = this.row(e.stage);
    Object.assign(row, { state: 'done', durationMs: e.durationMs, note: undefined, failure: undefined });
    this.print(`✓ ${e.stage}: completed in ${formatDuration(e.durationMs)}`);
  }

  private skipped(e: CairnEvents['stage:skip']): void {
    const row = this.row(e.stage);
    Object.assign(row, { state: e.reason.startsWith('completed earlier') ? 'done' : 'skipped', note: oneLine(e.reason) });
    this.print(`↷ ${e.stage}: skipped (${e.reason})`);
  }

  private failed(e: StageFail): void {
    const row = this.row(e.stage);
    const tryNo = e.try ?? (row.failure?.try ?? 0) + 1;
    const retryAt = e.willRetry ? Date.now() + (e.retryInMs ?? 0) : undefined;
    row.failure = {
      error: e.error,
      try: tryNo,
      ...(e.maxTries === undefined ? {} : { maxTries: e.maxTries }),
      ...(retryAt ? { retryAt } : {}),
    };
    row.state = e.willRetry ? 'retrying' : 'failed';
    const retry = e.willRetry
      ? ` — retrying${e.retryInMs === undefined ? '' : ` in ${formatDuration(e.retryInMs)}`}${e.maxTries ? ` (try ${tryNo + 1} of ${e.maxTries})` : ''}`
      : '';
    this.print(`✗ ${e.stage}: ${errorText(e.error)}${retry}`);
  }

  private items(p: ItemsProgress): void {
    const row = this.row(p.stage);
    row.items.set(p.name, p);
    if (row.state === 'pending') Object.assign(row, { state: 'running', startedAt: row.startedAt ?? Date.now() });
    if (this.frame) return;
    const now = Date.now();
    const key = `${p.stage}/${p.name}`;
    const finished = p.done + p.failed >= p.total;
    const counts = `${p.done}/${p.failed}/${p.total}`;
    if (this.lastCounts.get(key) === counts) return; // the engine repeats the final count; print it once
    if (!finished && now - (this.lastLine.get(key) ?? 0) < (this.options.lineIntervalMs ?? 2000)) return;
    this.lastLine.set(key, now);
    this.lastCounts.set(key, counts);
    this.options.stream.write(`  ${p.stage} ${formatItems(p, false)}\n`);
  }

  private itemRetry(e: ItemRetry): void {
    const row = this.row(e.stage);
    const count = (row.retries.get(e.name)?.count ?? 0) + 1;
    row.retries.set(e.name, { last: e, retryAt: Date.now() + e.delayMs, count });
    if (this.frame) return;
    // plain lines: at most one per items call per interval, saying how many were not printed
    const key = `${e.stage}/${e.name}`;
    const now = Date.now();
    if (now - (this.lastLine.get(`retry:${key}`) ?? 0) < (this.options.lineIntervalMs ?? 2000)) {
      this.skippedRetries.set(key, (this.skippedRetries.get(key) ?? 0) + 1);
      return;
    }
    this.lastLine.set(`retry:${key}`, now);
    const skipped = this.skippedRetries.get(key) ?? 0;
    this.skippedRetries.delete(key);
    const more = skipped > 0 ? ` (and ${skipped} more retr${skipped === 1 ? 'y' : 'ies'} since the last line)` : '';
    this.options.stream.write(`  ↻ ${e.stage} ${e.name}: ${retryText(e)}${more}\n`);
  }

  private warning(e: CairnEvents['warning']): void {
    this.hasEvents = true;
    const text = `${e.stage ? `${e.stage}: ` : ''}${errorText(e)}`;
    this.warnings.push(text);
    if (this.warnings.length > WARNINGS_SHOWN) this.warnings.shift();
    this.print(`! ${text}`);
  }

  private ended(summary: RunSummary): void {
    this.listenForSignals(false);
    this.stopping = undefined;
    const now = Date.now();
    const isActive = (row: StageRow): boolean => row.state === 'running' || row.state === 'retrying';
    if (summary.status === 'waiting' && summary.waitingFor !== undefined) {
      const stage = summary.stages.find((s) => s.status === 'waiting')?.name ?? summary.currentStage;
      const row = stage === undefined ? undefined : this.row(stage);
      if (row) {
        Object.assign(row, { state: 'waiting', waitingFor: summary.waitingFor, failure: undefined });
        this.print(`… ${row.name}: ${waitText(summary.waitingFor)}`);
      }
    } else if (summary.status === 'interrupted' || summary.status === 'cancelled') {
      for (const row of this.rows.values())
        if (isActive(row)) Object.assign(row, { state: summary.status, durationMs: now - (row.startedAt ?? now) });
    }
    this.render();
  }

  /** While a run is active, a first SIGINT/SIGTERM shows that the run is stopping (the engine handles the signal itself). */
  private listenForSignals(on: boolean): void {
    for (const signal of ['SIGINT', 'SIGTERM'] as const) {
      process.off(signal, this.onSignal);
      if (on) process.on(signal, this.onSignal);
    }
  }

  private signalled(signal: NodeJS.Signals): void {
    if (process.listenerCount(signal) <= 1) {
      // nobody else handles it (the engine is not listening): do what the signal would have done
      this.listenForSignals(false);
      process.kill(process.pid, signal);
      return;
    }
    if (this.stopping) return; // a second one: the engine says so and exits
    this.stopping = signal;
    // the engine's message on a second signal must be the last thing on screen, below the stage list
    if (this.frame) this.frame.keepOnOutput = true;
    for (const line of stoppingLines(signal, this.options.gracePeriodMs ?? 10_000)) this.print(line);
    this.render();
  }

  /** A plain line (off a terminal); on a terminal, the next redraw shows the change. */
  private print(line: string): void {
    if (!this.frame) this.options.stream.write(`${line}\n`);
  }

  private render(): void {
    if (!this.frame || !this.hasEvents) return;
    const now = Date.now();
    const blocks = [...this.rows.values()].map((row) => stageLines(row, now, this.stopping !== undefined));
    const footer = this.warnings.map((w) => pc.yellow(`! ${w}`));
    if (this.stopping) footer.push(...stoppingLines(this.stopping, this.options.gracePeriodMs ?? 10_000).map((l) => pc.yellow(l)));
    this.frame.draw(fitBlocks(blocks, footer, rowsOf(this.options.stream) - 1));
  }
}

function newRow(name: string): StageRow {
  return { name, state: 'pending', items: new Map(), retries: new Map() };
}

/** What a first SIGINT/SIGTERM does, in two lines that fit a narrow terminal. */
function stoppingLines(signal: NodeJS.Signals, graceMs: number): [string, string] {
  const key = signal === 'SIGINT' ? 'Ctrl-C' : signal;
  const grace = graceMs % 1000 === 0 ? `${graceMs / 1000}s` : formatDuration(graceMs);
  return [
    `Stopping (${key}): in-flight work has up to ${grace} to finish and be saved.`,
    `${key} again exits at once (what is in flight then runs again on resume).`,
  ];
}

function retryText(e: ItemRetry, now?: number, retryAt?: number): string {
  const next =
    now === undefined || retryAt === undefined
      ? `retrying in ${formatDuration(e.delayMs)}`
      : now < retryAt
        ? `retrying in ${formatDuration(retryAt - now)}`
        : `try ${e.try + 1} running`;
  return `item ${oneLine(e.key)}: try ${e.try} of ${e.maxTries} failed: ${errorText(e.error)}; ${next}`;
}

/** A stage's lines on screen, and whether they may be folded away when the screen is short. */
interface Block {
  readonly kind: 'finished' | 'pending' | 'active';
  readonly lines: readonly string[];
}

/** The lines of one stage: its state, then for item stages the bar and the last item retry. */
function stageLines(row: StageRow, now: number, isStopping: boolean): Block {
  const name = row.name;
  const elapsed = formatDuration(now - (row.startedAt ?? now));
  const failure = row.failure;
  let head: string;
  switch (row.state) {
    case 'pending':
      head = `${pc.dim('·')} ${pc.dim(name)}  ${pc.dim('pending')}`;
      break;
    case 'running':
    case 'retrying': {
      const retryAt = row.state === 'retrying' ? failure?.retryAt : undefined;
      const of = failure?.maxTries ? ` of ${failure.maxTries}` : '';
      if (failure && retryAt !== undefined && now < retryAt) {
        head = `${pc.yellow('↻')} ${name}  ${pc.yellow(`retrying in ${formatDuration(retryAt - now)}`)}`;
        head += pc.dim(`  try ${failure.try}${of} failed: ${errorText(failure.error)}`);
      } else {
        const what = isStopping ? `stopping ${elapsed}` : `running ${elapsed}`;
        head = `${pc.yellow('▸')} ${name}  ${pc.yellow(what)}`;
        if (failure) head += pc.dim(`  try ${failure.try + 1}${of}; try ${failure.try} failed: ${errorText(failure.error)}`);
        else if (row.note) head += pc.dim(`  (${row.note})`);
      }
      break;
    }
    case 'waiting':
      head = `${pc.blue('…')} ${name}  ${pc.blue(waitText(row.waitingFor))}`;
      break;
    case 'done':
      head = `${pc.green('✓')} ${name}  ${pc.dim(row.note ?? formatDuration(row.durationMs ?? 0))}`;
      break;
    case 'skipped':
      head = `${pc.dim('↷')} ${name}  ${pc.dim(`skipped: ${row.note ?? ''}`)}`;
      break;
    case 'failed':
      head = `${pc.red('✗')} ${name}  ${pc.red(`failed: ${failure ? errorText(failure.error) : 'error'}`)}`;
      break;
    case 'interrupted':
    case 'cancelled':
      head = `${pc.yellow('■')} ${name}  ${pc.yellow(`${row.state} after ${formatDuration(row.durationMs ?? 0)}`)}`;
      break;
  }
  if (row.state === 'done' || row.state === 'skipped') return { kind: 'finished', lines: [head] };
  if (row.state === 'pending') return { kind: 'pending', lines: [head] };
  const lines = [head];
  for (const p of row.items.values()) {
    lines.push(`    ${formatItems(p, true)}`);
    const retry = row.retries.get(p.name);
    if (retry) {
      const count = retry.count > 1 ? `${retry.count} retries, last: ` : '';
      lines.push(pc.yellow(`      ↻ ${count}${retryText(retry.last, now, retry.retryAt)}`));
    }
  }
  return { kind: 'active', lines };
}

/**
 * Fits the stage blocks and the footer into `max` lines: finished stages at the top fold into one
 * line first, then pending ones at the bottom; what still does not fit is cut by the frame.
 */
function fitBlocks(blocks: readonly Block[], footer: readonly string[], max: number): string[] {
  const linesOf = (list: readonly Block[]): number => list.reduce((n, b) => n + b.lines.length, 0);
  let lead = 0;
  while (lead < blocks.length && blocks[lead]?.kind === 'finished') lead++;
  let folded = 0;
  let dropped = 0;
  const need = (): number =>
    (folded > 0 ? 1 : 0) + linesOf(blocks.slice(folded, blocks.length - dropped)) + (dropped > 0 ? 1 : 0) + footer.length;
  while (folded < lead && need() > max) folded++;
  while (need() > max && dropped < blocks.length - folded && blocks[blocks.length - 1 - dropped]?.kind === 'pending') dropped++;
  const lines = blocks.slice(folded, blocks.length - dropped).flatMap((b) => b.lines);
  if (folded > 0) lines.unshift(pc.green(`✓ ${folded} stage(s) done or skipped`));
  if (dropped > 0) lines.push(pc.dim(`· ${dropped} more stage(s) pending`));
  return [...lines, ...footer];
}
