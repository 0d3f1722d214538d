/**
 * The live block (src/cli/live-frame.ts) and the progress view (src/cli/progress.ts) in process,
 * on fake terminals whose output goes into a terminal emulator (xterm.js headless): growing and
 * shrinking blocks, lines longer than the width, a block taller than the terminal, a resize, output
 * from others between two redraws, and the view's lines for each stage state, driven by events.
 */
import { EventEmitter } from 'node:events';
import { describe, expect, it, type TestContext } from 'vitest';
import { fitWidth, LiveFrame } from '../../src/cli/live-frame.js';
import { ProgressView } from '../../src/cli/progress.js';
import type { Cairn } from '../../src/engine/cairn.js';
import { TypedEmitter } from '../../src/engine/events.js';
import type { CairnEvents, RunSummary } from '../../src/engine/types.js';
import { expectLines, Screen } from './terminal-screen.js';

/** A stream that says it is a terminal of `columns`×`rows` and writes into `screen`. */
class FakeTerminal extends EventEmitter {
  readonly isTTY = true;
  constructor(
    private readonly screen: Screen,
    public columns: number,
    public rows: number,
  ) {
    super();
  }
  write(chunk: string | Uint8Array): boolean {
    this.screen.write(chunk);
    return true;
  }
  /**
   * The terminal changes size once what was written is on screen: the emulator reflows it; the
   * stream says so with 'resize' (as Node does on SIGWINCH) unless `quietly`.
   */
  async resize(columns: number, rows: number, quietly = false): Promise<void> {
    await this.screen.settled();
    this.screen.resize(columns, rows);
    this.columns = columns;
    this.rows = rows;
    if (!quietly) this.emit('resize');
  }
}

function terminal(ctx: TestContext, columns: number, rows: number): { screen: Screen; stderr: FakeTerminal; stdout: FakeTerminal } {
  const screen = new Screen({ cols: columns, rows, convertEol: true });
  ctx.onTestFinished(() => screen.dispose());
  return { screen, stderr: new FakeTerminal(screen, columns, rows), stdout: new FakeTerminal(screen, columns, rows) };
}

const asStream = (t: FakeTerminal): NodeJS.WriteStream => t as unknown as NodeJS.WriteStream;

async function shown(screen: Screen): Promise<string[]> {
  return screen.current();
}

describe('LiveFrame', () => {
  it('redraws the whole block when it grows or shrinks in its middle: no line lost or repeated', async (ctx) => {
    const { screen, stderr } = terminal(ctx, 40, 12);
    stderr.write('$ cairn run x\n');
    const frame = new LiveFrame(asStream(stderr));
    frame.draw(['a', 'b', 'c']);
    expectLines(await shown(screen), ['$ cairn run x', 'a', 'b', 'c']);
    frame.draw(['a', 'bar 1', 'bar 2', 'b', 'c']);
    expectLines(await shown(screen), ['$ cairn run x', 'a', 'bar 1', 'bar 2', 'b', 'c']);
    frame.draw(['a', 'c']);
    expectLines(await shown(screen), ['$ cairn run x', 'a', 'c']);
    frame.draw(['a longer line', 'c', 'd']);
    expectLines(await shown(screen), ['$ cairn run x', 'a longer line', 'c', 'd']);
    frame.done();
    stderr.write('after\n');
    expectLines(await shown(screen), ['$ cairn run x', 'a longer line', 'c', 'd', 'after']);
  });

  it('cuts lines to the width less one column, counting colours as nothing and wide characters as two', async (ctx) => {
    const { screen, stderr } = terminal(ctx, 20, 10);
    const frame = new LiveFrame(asStream(stderr));
    frame.draw(['x'.repeat(30), `\u001B[32m${'y'.repeat(30)}\u001B[39m`, '漢字'.repeat(10), 'short']);
    expectLines(await shown(screen), [`${'x'.repeat(18)}…`, `${'y'.repeat(18)}…`, '漢字漢字漢字漢字漢…', 'short']);
    expect(screen.wrappedRows()).toBe(0);
    expect(fitWidth('\u001B[31mabcdef\u001B[39m', 4)).toEqual({ text: '\u001B[31mabc…\u001B[0m', width: 4 });
    expect(fitWidth('abcd', 4)).toEqual({ text: 'abcd', width: 4 });
    frame.done();
  });

  it('keeps to the terminal height less one row, saying how many lines were left out', async (ctx) => {
    const { screen, stderr } = terminal(ctx, 30, 6);
    const frame = new LiveFrame(asStream(stderr));
    const lines = Array.from({ length: 10 }, (_, i) => `line ${i}`);
    frame.draw(lines);
    frame.draw([...lines, 'line 10']); // redrawn in place: nothing scrolls away
    expectLines(await shown(screen), ['line 0', 'line 1', 'line 2', 'line 3', '… 7 more line(s)']);
    frame.done();
  });

  it('after a resize to fewer columns, erases the old block as the terminal reflowed it and draws it at the new width', async (ctx) => {
    const { screen, stderr } = terminal(ctx, 60, 12);
    stderr.write('$ cairn run x\n');
    const frame = new LiveFrame(asStream(stderr));
    const lines = ['a'.repeat(50), 'b'.repeat(50), 'c'.repeat(10)];
    frame.draw(lines);
    await stderr.resize(30, 12, true); // the 50-column lines now take two rows each
    expect(screen.wrappedRows()).toBe(2);
    stderr.emit('resize');
    expectLines(await shown(screen), ['$ cairn run x', `${'a'.repeat(28)}…`, `${'b'.repeat(28)}…`, 'c'.repeat(10)]);
    expect(screen.wrappedRows()).toBe(0);
    await stderr.resize(70, 12); // wider: nothing wraps, the lines grow back
    expectLines(await shown(screen), ['$ cairn run x', ...lines]);
    frame.done();
  });

  it('lets output from others through above the block, then draws the block again below it', async (ctx) => {
    const { screen, stderr, stdout } = terminal(ctx, 40, 20);
    const frame = new LiveFrame(asStream(stderr), [asStream(stdout)]);
    frame.draw(['▸ stage', '  bar']);
    stdout.write('a line from the stage\n');
    expectLines(await shown(screen), ['a line from the stage', '▸ stage', '  bar']);
    stderr.write('(node) a warning\n');
    stdout.write('no newline');
    // within 50 ms of the last redraw: drawn again once the output pauses
    const lines = await screen.until('the block below the output', (l) => l.at(-1) === '  bar', 2000);
    expectLines(lines, ['a line from the stage', '(node) a warning', 'no newline', '▸ stage', '  bar']);
    frame.done();
    expect(Object.prototype.hasOwnProperty.call(stdout, 'write')).toBe(false); // the streams are given back
    expect(Object.prototype.hasOwnProperty.call(stderr, 'write')).toBe(false);
  });

  it('with keepOnOutput, output from others ends the block: it stays, the text goes below it', async (ctx) => {
    const { screen, stderr } = terminal(ctx, 40, 20);
    const frame = new LiveFrame(asStream(stderr));
    frame.draw(['▸ stage  stopping']);
    frame.keepOnOutput = true;
    stderr.write('\nSIGINT again: exiting now\n');
    frame.draw(['▸ stage  changed']); // no longer drawn
    expectLines(await shown(screen), ['▸ stage  stopping', '', 'SIGINT again: exiting now']);
    frame.done();
  });
});

describe('ProgressView', () => {
  const RUN = 'run-1';
  const summary = (patch: Partial<RunSummary>): RunSummary =>
    ({ id: RUN, name: 'p', kind: 'pipeline', status: 'completed', stages: [], attempts: [], history: [], ...patch }) as RunSummary;
  const error = (code: string, message: string): CairnEvents['stage:fail']['error'] => ({ name: 'Error', code, message });

  function liveView(ctx: TestContext, stages: readonly string[], columns = 80, rows = 30) {
    const { screen, stderr } = terminal(ctx, columns, rows);
    const events = new TypedEmitter();
    const view = new ProgressView(events as unknown as Cairn, stages, { stream: asStream(stderr), live: true, redrawMs: 10 });
    ctx.onTestFinished(() => view.stop());
    return { screen, events, view };
  }

  it('shows each stage state from the events: done, skipped, retrying with its backoff, failed, waiting, pending', async (ctx) => {
    const stages = ['load', 'alt', 'fetch', 'check', 'publish', 'approve', 'report'];
    const { screen, events, view } = liveView(ctx, stages);
    events.emit('run:start', { runId: RUN, name: 'p', attempt: 1, resumed: false });
    events.emit('stage:skip', { runId: RUN, stage: 'load', reason: 'completed earlier; fingerprint and artifacts match' });
    events.emit('stage:skip', { runId: RUN, stage: 'alt', reason: 'no speakers to identify' });
    events.emit('stage:start', { runId: RUN, stage: 'fetch', try: 1, reason: 'version changed: 1 → 2' });
    events.emit('items:progress', { runId: RUN, stage: 'fetch', name: 'rows', done: 3, failed: 0, total: 12, rate: 2, eta: 4.5 });
    events.emit('items:retry', {
      runId: RUN,
      stage: 'fetch',
      name: 'rows',
      key: 'r4',
      try: 1,
      maxTries: 4,
      attempt: 1,
      error: error('E_BUSY', 'rate limited'),
      delayMs: 60_000,
    });
    events.emit('stage:start', { runId: RUN, stage: 'check', try: 1 });
    events.emit('stage:fail', {
      runId: RUN,
      stage: 'check',
      error: error('E_CHECK', 'bad\nsum'),
      willRetry: true,
      try: 1,
      maxTries: 3,
      retryInMs: 60_000,
    });
    events.emit('stage:start', { runId: RUN, stage: 'publish', try: 1 });
    events.emit('stage:fail', {
      runId: RUN,
      stage: 'publish',
      error: error('E_AUTH', 'token expired'),
      willRetry: true,
      try: 2,
      maxTries: 3,
      retryInMs: 0,
    });
    let lines = await screen.until('publish on its third try', (l) => l.some((x) => x.startsWith('▸ publish')));
    expectLines(lines, [
      '✓ load  completed earlier; fingerprint and artifacts match',
      '↷ alt  skipped: no speakers to identify',
      /▸ fetch {2}running \d+ms {2}\(version changed: 1 → 2\)/,
      / {4}rows █{6}░{18} 3\/12 25% 2\.0\/s ETA 4\.5s/,
      / {6}↻ item r4: try 1 of 4 failed: E_BUSY: rate limited; retrying in (59|60)\.\ds/,
      /↻ check {2}retrying in (59|60)\.\ds {2}try 1 of 3 failed: E_CHECK: bad/,
      /▸ publish {2}running \d+ms {2}try 3 of 3; try 2 failed: E_AUTH: token expired/,
      '· approve  pending',
      '· report  pending',
    ]);
    events.emit('stage:complete', { runId: RUN, stage: 'fetch', durationMs: 2500 });
    events.emit('stage:fail', { runId: RUN, stage: 'check', error: error('E_CHECK', 'bad sum'), willRetry: false, try: 3, maxTries: 3 });
    events.emit('stage:complete', { runId: RUN, stage: 'publish', durationMs: 12 });
    events.emit('stage:start', { runId: RUN, stage: 'approve', try: 1 });
    events.emit('warning', { runId: RUN, code: 'ARTIFACT_MISMATCH', stage: 'load', message: 'report.md changed' });
    events.emit('run:end', {
      runId: RUN,
      status: 'waiting',
      summary: summary({ status: 'waiting', waitingFor: 'approval', currentStage: 'approve' }),
    });
    view.stop();
    lines = await shown(screen);
    expectLines(lines, [
      '✓ load  completed earlier; fingerprint and artifacts match',
      '↷ alt  skipped: no speakers to identify',
      '✓ fetch  2.5s',
      '✗ check  failed: E_CHECK: bad sum',
      '✓ publish  12ms',
      '… approve  waiting for approval',
      '· report  pending',
      '! load: ARTIFACT_MISMATCH: report.md changed',
    ]);
  });

  it('on a short, narrow terminal folds the finished stages and the pending ones, and cuts every line to the width', async (ctx) => {
    const stages = Array.from({ length: 12 }, (_, i) => `stage-${i}`);
    const { screen, events, view } = liveView(ctx, stages, 32, 8);
    events.emit('run:start', { runId: RUN, name: 'p', attempt: 1, resumed: false });
    for (const stage of stages.slice(0, 6)) events.emit('stage:complete', { runId: RUN, stage, durationMs: 5 });
    events.emit('stage:start', { runId: RUN, stage: 'stage-6', try: 1 });
    events.emit('items:progress', { runId: RUN, stage: 'stage-6', name: 'chunks', done: 5, failed: 0, total: 10, rate: 1, eta: 5 });
    view.stop();
    const lines = await shown(screen);
    expectLines(lines, [
      '✓ 6 stage(s) done or skipped',
      /▸ stage-6 {2}running \d+ms/,
      / {4}chunks █{12}░{7}…/,
      '· stage-7  pending',
      '· stage-8  pending',
      '· stage-9  pending',
      '· 2 more stage(s) pending',
    ]);
    expect(screen.wrappedRows()).toBe(0);
  });

  it('off a terminal prints plain lines: retries with their backoff, item retries at most one per interval, the wait, warnings', (ctx) => {
    const out: string[] = [];
    const stream = { write: (chunk: string) => out.push(chunk), isTTY: false } as unknown as NodeJS.WriteStream;
    const events = new TypedEmitter();
    const view = new ProgressView(events as unknown as Cairn, ['fetch', 'approve'], { stream, live: false, lineIntervalMs: 60_000 });
    ctx.onTestFinished(() => view.stop());
    events.emit('stage:start', { runId: RUN, stage: 'fetch', try: 1 });
    const retry = (key: string): CairnEvents['items:retry'] => ({
      runId: RUN,
      stage: 'fetch',
      name: 'rows',
      key,
      try: 1,
      maxTries: 3,
      attempt: 1,
      error: error('E_BUSY', 'rate limited'),
      delayMs: 500,
    });
    for (const key of ['r1', 'r2', 'r3']) events.emit('items:retry', retry(key));
    events.emit('stage:fail', {
      runId: RUN,
      stage: 'fetch',
      error: error('E_X', 'down'),
      willRetry: true,
      try: 1,
      maxTries: 3,
      retryInMs: 1500,
    });
    events.emit('warning', { runId: RUN, code: 'CHECKPOINT_CORRUPT', message: '1 damaged record(s) skipped' });
    events.emit('run:end', {
      runId: RUN,
      status: 'waiting',
      summary: summary({ status: 'waiting', waitingFor: 'approval', currentStage: 'approve' }),
    });
    expect(out.join('')).toBe(
      [
        '▸ fetch: started',
        '  ↻ fetch rows: item r1: try 1 of 3 failed: E_BUSY: rate limited; retrying in 500ms',
        '✗ fetch: E_X: down — retrying in 1.5s (try 2 of 3)',
        '! CHECKPOINT_CORRUPT: 1 damaged record(s) skipped',
        '… approve: waiting for approval',
        '',
      ].join('\n'),
    );
  });
});
