/**
 * Live progress for `cairn run`/`resume`, on stderr so that stdout keeps only the result. On a
 * TTY: the stage list (✓ done, ▸ running, · pending, ↷ skipped with its reason) and, for item
 * stages, a bar with done/total, rate and ETA, redrawn in place (log-update). Off a TTY: plain
 * lines, item progress at most every few seconds.
 */
import { createLogUpdate } from 'log-update';
import pc from 'picocolors';
import type { Cairn } from '../engine/cairn.js';
import type { ItemsProgress } from '../engine/types.js';

type Row = { name: string; state: 'pending' | 'running' | 'done' | 'skipped' | 'failed' | 'waiting'; note?: string; items?: ItemsProgress };

export interface ProgressOptions {
  readonly stream: NodeJS.WriteStream;
  /** Redraw in place (a TTY) or print lines. */
  readonly live: boolean;
  /** Minimum time between two plain item lines. @defaultValue 2000 */
  readonly lineIntervalMs?: number;
}

const BAR_WIDTH = 24;

/**
 * A terminal that reports no size (0 columns: some pseudo-terminals, CI shells) would get nothing
 * drawn by log-update, which clips to the size; such a stream is given a usual one.
 */
function sizedStream(stream: NodeJS.WriteStream): NodeJS.WriteStream {
  if (stream.columns > 0 && stream.rows > 0) return stream;
  return { write: (chunk: string) => stream.write(chunk), columns: 100, rows: 40, isTTY: true } as unknown as NodeJS.WriteStream;
}

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
  const counts = `${p.done}/${p.total}${failed} ${pct}% ${rate} ${eta}`;
  if (!withBar) return `${p.name}: ${counts}`;
  const filled = p.total > 0 ? Math.round(((p.done + p.failed) / p.total) * BAR_WIDTH) : BAR_WIDTH;
  return `${p.name} ${pc.cyan('█'.repeat(filled))}${pc.dim('░'.repeat(BAR_WIDTH - filled))} ${counts}`;
}

/** Follows a Cairn's events and shows them; `stop()` leaves the final picture on screen. */
export class ProgressView {
  private readonly rows = new Map<string, Row>();
  private readonly log: ReturnType<typeof createLogUpdate> | undefined;
  private readonly lastLine = new Map<string, number>();
  private readonly lastCounts = new Map<string, string>();
  private timer: NodeJS.Timeout | undefined;
  private dirty = false;
  private readonly detach: () => void;

  constructor(
    cairn: Cairn,
    stages: readonly string[],
    private readonly options: ProgressOptions,
  ) {
    for (const name of stages) this.rows.set(name, { name, state: 'pending' });
    this.log = options.live ? createLogUpdate(sizedStream(options.stream), { showCursor: true }) : undefined;
    const on = {
      start: (e: { stage: string; reason?: string }) =>
        this.update(
          e.stage,
          { state: 'running', ...(e.reason ? { note: e.reason } : {}) },
          `▸ ${e.stage}: started${e.reason ? ` (${e.reason})` : ''}`,
        ),
      complete: (e: { stage: string; durationMs: number }) =>
        this.update(
          e.stage,
          { state: 'done', note: formatDuration(e.durationMs) },
          `✓ ${e.stage}: completed in ${formatDuration(e.durationMs)}`,
        ),
      skip: (e: { stage: string; reason: string }) =>
        this.update(
          e.stage,
          { state: e.reason.startsWith('completed earlier') ? 'done' : 'skipped', note: e.reason },
          `↷ ${e.stage}: skipped (${e.reason})`,
        ),
      fail: (e: { stage: string; error: { message: string; code?: string }; willRetry: boolean }) =>
        this.update(
          e.stage,
          {
            state: e.willRetry ? 'running' : 'failed',
            note: `${e.error.code ?? 'error'}: ${e.error.message}${e.willRetry ? ' (retrying)' : ''}`,
          },
          `✗ ${e.stage}: ${e.error.code ?? 'error'}: ${e.error.message}${e.willRetry ? ' — retrying' : ''}`,
        ),
      items: (p: ItemsProgress) => this.items(p),
    };
    cairn
      .on('stage:start', on.start)
      .on('stage:complete', on.complete)
      .on('stage:skip', on.skip)
      .on('stage:fail', on.fail)
      .on('items:progress', on.items);
    this.detach = () => {
      cairn
        .off('stage:start', on.start)
        .off('stage:complete', on.complete)
        .off('stage:skip', on.skip)
        .off('stage:fail', on.fail)
        .off('items:progress', on.items);
    };
    if (this.log) {
      this.timer = setInterval(() => this.render(), 100);
      this.timer.unref();
    }
  }

  private update(stage: string, patch: Partial<Row>, line: string): void {
    const row = this.rows.get(stage) ?? { name: stage, state: 'pending' as const };
    if (patch.state === 'running' && row.state === 'running' && patch.note === undefined) delete row.note;
    this.rows.set(stage, { ...row, ...patch });
    if (this.log) this.dirty = true;
    else this.options.stream.write(`${line}\n`);
  }

  private items(p: ItemsProgress): void {
    const row = this.rows.get(p.stage) ?? { name: p.stage, state: 'running' as const };
    this.rows.set(p.stage, { ...row, items: p });
    if (this.log) {
      this.dirty = true;
      return;
    }
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

  private render(): void {
    if (!this.log || !this.dirty) return;
    this.dirty = false;
    const lines = [...this.rows.values()].map((row) => {
      const mark = {
        pending: pc.dim('·'),
        running: pc.yellow('▸'),
        done: pc.green('✓'),
        skipped: pc.dim('↷'),
        failed: pc.red('✗'),
        waiting: pc.blue('…'),
      }[row.state];
      const note = row.note ? pc.dim(`  ${row.note}`) : '';
      const head = `${mark} ${row.state === 'pending' ? pc.dim(row.name) : row.name}${note}`;
      return row.items && row.state === 'running' ? `${head}\n    ${formatItems(row.items, true)}` : head;
    });
    this.log(lines.join('\n'));
  }

  /**
   * Draws the last picture (live) and stops listening. Nothing is drawn if nothing happened (a
   * completed run returning its cached result), rather than a list of stages shown as pending.
   */
  stop(): void {
    clearInterval(this.timer);
    this.detach();
    if (this.log) {
      this.render();
      this.log.done();
    }
  }
}
