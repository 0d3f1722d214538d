/**
 * The live view of `cairn run` / `cairn resume` as a user sees it: the built binary runs on a
 * pseudo-terminal (util-linux `script`, 80×30 set with stty), every byte it writes there is fed
 * into a terminal emulator (xterm.js headless), and the tests assert on the visible lines at
 * chosen moments. The fixture (fixtures/live-view.mjs) waits for gate files the test creates, so
 * each moment is the same on a loaded machine; every wait has a deadline and names what it waits for.
 * Ctrl-C is typed into the terminal (byte 0x03), so the line discipline sends SIGINT and echoes ^C
 * as it does for a user. Colours are on (no NO_COLOR): the emulator drops them.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it, type TestContext } from 'vitest';
import { expectLines, Screen } from './terminal-screen.js';

const ROOT = path.resolve(import.meta.dirname, '..', '..');
const CLI = path.join(ROOT, 'dist', 'src', 'cli', 'main.js');
const FIXTURE = path.join(import.meta.dirname, 'fixtures', 'live-view.mjs');
const SCRIPT = ['/usr/bin/script', '/bin/script'].find((p) => fs.existsSync(p));
const COLS = 80;
const ROWS = 30;
const STAGES = ['prepare', 'fetch', 'check', 'approve', 'report'];

interface Workspace {
  readonly dir: string;
  readonly store: string;
  /** Opens gate `name`: the fixture step waiting for it goes on. */
  open(name: string): void;
}

interface TtyRun {
  readonly screen: Screen;
  /** Types bytes into the terminal (0x03 is Ctrl-C). */
  type(text: string): void;
  /** The exit code, once the command ended. */
  readonly exited: Promise<number | null>;
}

function workspace(ctx: TestContext): Workspace {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-live-view-'));
  fs.mkdirSync(path.join(dir, 'gates'));
  fs.mkdirSync(path.join(dir, 'store')); // an existing (empty) store: the screens show no "New store" line
  ctx.onTestFinished(({ task }) => {
    if (task.result?.state === 'fail') console.error(`${task.name}: kept ${dir}`);
    else fs.rmSync(dir, { recursive: true, force: true });
  });
  return { dir, store: path.join(dir, 'store'), open: (name) => fs.writeFileSync(path.join(dir, 'gates', name), '') };
}

/** `cairn <args> --store file:<store>` on a terminal of COLS×ROWS; the screen follows what it writes. */
function runOnTty(ctx: TestContext, ws: Workspace, args: readonly string[]): TtyRun {
  const quote = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;
  const command = [process.execPath, CLI, ...args, '--store', `file:${ws.store}`].map(quote).join(' ');
  const env: NodeJS.ProcessEnv = { ...process.env, CAIRN_STORE: '', CAIRN_TEST_GATES: path.join(ws.dir, 'gates'), TERM: 'xterm-256color' };
  delete env.NO_COLOR;
  delete env.FORCE_COLOR;
  // exec: the command is the terminal's foreground process itself, as when a user types it
  const child: ChildProcess = spawn(
    SCRIPT ?? 'script',
    ['-q', '-e', '-c', `stty cols ${COLS} rows ${ROWS} && exec ${command}`, '/dev/null'],
    {
      cwd: ws.dir,
      env,
      stdio: ['pipe', 'pipe', 'pipe'],
    },
  );
  const screen = new Screen({ cols: COLS, rows: ROWS });
  let scriptErrors = '';
  child.stdout?.on('data', (chunk: Buffer) => screen.write(chunk));
  child.stderr?.on('data', (chunk: Buffer) => (scriptErrors += chunk.toString()));
  const exited = new Promise<number | null>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code) => {
      if (scriptErrors) console.error(`script: ${scriptErrors}`);
      resolve(code);
    });
  });
  ctx.onTestFinished(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    screen.dispose();
  });
  return { screen, type: (text) => child.stdin?.write(text), exited };
}

/** Waits for the command's exit code, with a deadline. */
async function exitOf(run: TtyRun, what: string, timeoutMs = 30_000): Promise<number | null> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(
      () => reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}; the screen:\n${run.screen.lines().join('\n')}`)),
      timeoutMs,
    );
  });
  try {
    const code = await Promise.race([run.exited, deadline]);
    await run.screen.settled();
    return code;
  } finally {
    clearTimeout(timer);
  }
}

/** No stage line appears twice on any screen seen, and they always come in the definition's order. */
function expectNoStageLineRepeated(screen: Screen, stages: readonly string[]): void {
  for (const [i, lines] of screen.history.entries()) {
    const seen = lines.map((line) => stages.find((s) => new RegExp(`^. ${s} {2}`).test(line))).filter((s) => s !== undefined);
    const inOrder = seen.every((s, k) => k === 0 || stages.indexOf(s) > stages.indexOf(seen[k - 1]!));
    if (new Set(seen).size !== seen.length || !inOrder)
      throw new Error(`screen #${i} repeats or reorders a stage line:\n${lines.join('\n')}`);
  }
}

const ELAPSED = String.raw`(\d+ms|\d+\.\ds)`;

describe.skipIf(!SCRIPT)('cairn run on a terminal: the live view', () => {
  it('draws each moment whole: running, an item bar with a retrying item, a stage retry and its backoff, a wait, the final frame', async (ctx) => {
    const ws = workspace(ctx);
    const run = runOnTty(ctx, ws, ['run', FIXTURE]);
    const { screen } = run;

    // 1. the first stage runs; the others are listed as pending
    let lines = await screen.until('prepare running', (l) => l.some((line) => line.startsWith('▸ prepare  running')));
    expectLines(
      lines,
      [new RegExp(`▸ prepare  running ${ELAPSED}`), '· fetch  pending', '· check  pending', '· approve  pending', '· report  pending'],
      'prepare running',
    );

    // 2. the frame grows in its middle: the items bar and the retry of item c (its second try waits);
    //    what the stage printed on stdout stays above the frame
    ws.open('prepare');
    lines = await screen.until('item c retrying with 2/5 done', (l) =>
      l.some((x) => x.includes('item c: try 1 of 3 failed') && l.some((y) => y.includes(' 2/5 '))),
    );
    expectLines(
      lines,
      [
        'prepared 5 keys',
        new RegExp(`✓ prepare  ${ELAPSED}`),
        new RegExp(`▸ fetch  running ${ELAPSED}`),
        / {4}keys █{10}░{14} 2\/5 40% [\d.]+\/s ETA .+/,
        / {6}↻ item c: try 1 of 3 failed: E_BUSY: rate limited; (retrying in \d+ms|try 2 running)/,
        '· check  pending',
        '· approve  pending',
        '· report  pending',
      ],
      'fetch with a retrying item',
    );

    // 3. the frame shrinks: the stage retry in its backoff (4 s; any screen seen in it counts), with the error
    ws.open('retry-c');
    lines = await screen.until('check retrying', (l) => l.some((line) => line.startsWith('↻ check  retrying in')));
    expectLines(
      lines,
      [
        'prepared 5 keys',
        new RegExp(`✓ prepare  ${ELAPSED}`),
        new RegExp(`✓ fetch  ${ELAPSED}`),
        new RegExp(`↻ check  retrying in ${ELAPSED}  try 1 of 3 failed: E_CHECK: checksum mismatch`),
        '· approve  pending',
        '· report  pending',
      ],
      'check in its backoff',
    );

    // 4. its second try runs (and waits for its gate), saying which try it is and why
    lines = await screen.until('check running its second try', (l) => l.some((line) => line.startsWith('▸ check  running')));
    expectLines(
      lines.slice(3, 4),
      [new RegExp(`▸ check  running ${ELAPSED}  try 2 of 3; try 1 failed: E_CHECK: checksum mismatch`)],
      'check, second try',
    );

    // 5. the run waits for approval: the final frame, then the report on stdout
    ws.open('check');
    expect(await exitOf(run, 'the run to wait for approval (exit 3)')).toBe(3);
    lines = screen.lines();
    expectLines(
      lines,
      [
        'prepared 5 keys',
        new RegExp(`✓ prepare  ${ELAPSED}`),
        new RegExp(`✓ fetch  ${ELAPSED}`),
        new RegExp(`✓ check  ${ELAPSED}`),
        '… approve  waiting for approval',
        '· report  pending',
        /Run live-view-[0-9a-f]{16} is waiting for input "approval"\. Everything so far is saved; this process can exit\./,
        /Answer with: cairn resume live-view-[0-9a-f]{16} --input approval=<value> --store file:.+/,
      ],
      'final frame, waiting',
    );
    expect(screen.wrappedRows()).toBe(2); // only the two report lines are longer than 80 columns
    expectNoStageLineRepeated(screen, STAGES);

    // 6. resume with the answer, on the terminal too: the stages done before say so, the rest run
    const id = /Run (live-view-[0-9a-f]{16})/.exec(lines.join('\n'))?.[1] ?? '';
    const resumed = runOnTty(ctx, ws, ['resume', id, '--input', 'approval=true']);
    expect(await exitOf(resumed, 'the resumed run to complete (exit 0)')).toBe(0);
    expectLines(
      resumed.screen.lines(),
      [
        '✓ prepare  completed earlier; fingerprint and artifacts match',
        '✓ fetch  completed earlier; fingerprint and artifacts match',
        '✓ check  completed earlier; fingerprint and artifacts match',
        new RegExp(`✓ approve  ${ELAPSED}`),
        new RegExp(`✓ report  ${ELAPSED}`),
        new RegExp(`Run ${id} completed \\(${ELAPSED}\\)\\.`),
        'Result: ABCDE approved',
      ],
      'final frame, resumed',
    );
    expectNoStageLineRepeated(resumed.screen, STAGES);
  });

  it('a first Ctrl-C shows the run stopping and the grace period; the frame then shows what was saved', async (ctx) => {
    const ws = workspace(ctx);
    const run = runOnTty(ctx, ws, ['run', FIXTURE, '--pipeline', 'stoppable']);
    const { screen } = run;
    await screen.until('two of four items done', (l) => l.some((line) => line.includes(' 2/4 ')));
    run.type('\x03');
    const lines = await screen.until('the stopping notice', (l) => l.some((line) => line.startsWith('Stopping (Ctrl-C)')));
    expectLines(
      lines,
      [
        new RegExp(`▸ work  stopping ${ELAPSED}`),
        / {4}keys █{12}░{12} 2\/4 50% .+/,
        'Stopping (Ctrl-C): in-flight work has up to 10s to finish and be saved.',
        'Ctrl-C again exits at once (what is in flight then runs again on resume).',
      ],
      'stopping',
    );
    ws.open('finish'); // the two items in flight finish within the grace period and are saved
    expect(await exitOf(run, 'the interrupted run to exit (130)')).toBe(130);
    expectLines(
      screen.lines(),
      [
        new RegExp(`■ work  interrupted after ${ELAPSED}`),
        / {4}keys █{24} 4\/4 100% .+/,
        /Run stoppable-[0-9a-f]{16} was interrupted during stage work\. Saved: 0 of 1 stage\(s\) and 4 item result\(s\)\./,
        /Resume with: cairn resume stoppable-[0-9a-f]{16} --store file:.+ {3}\(or run the same command again\)/,
      ],
      'interrupted',
    );
  });

  it('a second Ctrl-C: the engine says it exits now, on its own lines below the stage list, which stays whole', async (ctx) => {
    const ws = workspace(ctx);
    const run = runOnTty(ctx, ws, ['run', FIXTURE, '--pipeline', 'stoppable']);
    const { screen } = run;
    await screen.until('two of four items done', (l) => l.some((line) => line.includes(' 2/4 ')));
    run.type('\x03');
    await screen.until('the stopping notice', (l) => l.some((line) => line.startsWith('Stopping (Ctrl-C)')));
    run.type('\x03');
    expect(await exitOf(run, 'the process to exit at once (130)')).toBe(130);
    expectLines(
      screen.lines(),
      [
        new RegExp(`▸ work  stopping ${ELAPSED}`),
        / {4}keys █{12}░{12} 2\/4 50% .+/,
        'Stopping (Ctrl-C): in-flight work has up to 10s to finish and be saved.',
        'Ctrl-C again exits at once (what is in flight then runs again on resume).',
        '^C',
        'SIGINT again: exiting now without waiting for in-flight work. Every result saved so far is kept; the items and steps that were running run again on resume.',
      ],
      'after the second Ctrl-C',
    );
  });
});
if (!SCRIPT) console.warn('live-view.test.ts: util-linux `script` not found; the live view tests are skipped');
