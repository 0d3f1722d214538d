/**
 * examples/checkpoint-loop (the hand-written loop over CheckpointManager) under SIGKILL at random
 * moments: the report is byte-identical to an uninterrupted run's, and no stage runs again once its
 * checkpoint was acknowledged (`create` resolved). Also `--list` (list + load), `--keep` (cleanup)
 * and `--fresh`. Ctrl-C, resume and the cached result are covered by test/e2e/checkpoint-loop.test.ts.
 * The example appends `<pid> start|ack <stage>` to $CAIRN_DEMO_LOG.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, it, type TestContext } from 'vitest';
import { Child, killAll, killLoop } from '../e2e/child.js';

const DEMO = path.resolve(import.meta.dirname, '..', '..', 'dist', 'examples', 'checkpoint-loop', 'index.js');
const KILLS = Number(process.env.CAIRN_EXAMPLE_KILLS ?? (process.env.CAIRN_TORTURE === '1' ? 50 : 6));
const STAGES = ['load', 'split', 'count', 'summarize', 'report'];
const SLOW_MS = 60;
/** A lower bound of the example's start-up (node, imports, opening the store) before its first stage. */
const STARTUP_FLOOR_MS = 80;

// not afterEach: the tests run concurrently, and killAll stops every child of the file
afterAll(killAll);

interface Workspace {
  readonly dir: string;
  readonly env: NodeJS.ProcessEnv;
  demo(args?: readonly string[]): Promise<Child>;
  report(): Buffer;
  events(): { pid: number; event: string; stage: string }[];
}

function workspace(ctx: TestContext): Workspace {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-example-loop-'));
  ctx.onTestFinished(({ task }) => {
    if (task.result?.state === 'fail') console.error(`${task.name}: kept ${dir}`);
    else fs.rmSync(dir, { recursive: true, force: true });
  });
  const log = path.join(dir, 'stages.log');
  const env: NodeJS.ProcessEnv = { ...process.env, CAIRN_STORE: '', CAIRN_DEMO_SLOW_MS: String(SLOW_MS), CAIRN_DEMO_LOG: log };
  return {
    dir,
    env,
    demo: async (args = []) => {
      const child = new Child(DEMO, args, { cwd: dir, env });
      await child.exit;
      return child;
    },
    report: () => fs.readFileSync(path.join(dir, 'data', 'demo-report.txt')),
    events: () =>
      (fs.existsSync(log) ? fs.readFileSync(log, 'utf8') : '')
        .split('\n')
        .filter(Boolean)
        .map((line) => {
          const [pid, event, stage] = line.split(' ');
          return { pid: Number(pid), event: event!, stage: stage! };
        }),
  };
}

const output = (child: Child): string => `stdout: ${child.lines.join('\n')}\nstderr: ${child.stderr}`;
const exitOf = async (child: Child): Promise<number | null> => (await child.exit).code;
/** `--list` lines: `  <id> <stage> <createdAt>  state: <keys>`. */
const listed = (child: Child): { id: string; stage: string }[] =>
  child.lines.flatMap((l) => {
    const m = /^ {2}(\S+) +(\S+) +\S+ {2}state: /.exec(l);
    return m ? [{ id: m[1]!, stage: m[2]! }] : [];
  });

describe.concurrent('examples/checkpoint-loop', () => {
  it(`survives ${KILLS} SIGKILLs at random moments: same report, no stage run again after its checkpoint`, async (ctx) => {
    const { expect } = ctx;
    const ref = workspace(ctx);
    const clean = await ref.demo();
    expect(await exitOf(clean), output(clean)).toBe(0);
    const reference = ref.report();

    const ws = workspace(ctx);
    const started = Date.now();
    let kills = 0;
    let last: Child;
    for (;;) {
      // kills land anywhere from start-up to just before the process would finish, so every kill lands
      const acked = new Set(ws.events().flatMap((e) => (e.event === 'ack' ? [e.stage] : []))).size;
      const window = STARTUP_FLOOR_MS + 0.9 * SLOW_MS * Math.max(1, STAGES.length - acked);
      const r = await killLoop(DEMO, [], { kills: kills < KILLS ? 1 : 0, maxDelayMs: window, cwd: ws.dir, env: ws.env });
      kills += r.kills;
      if (r.kills === 0) {
        last = r.last;
        break;
      }
    }
    console.log(`checkpoint-loop: ${kills} kills in ${((Date.now() - started) / 1000).toFixed(1)}s`);
    expect(await exitOf(last), output(last)).toBe(0);
    expect(kills).toBeGreaterThanOrEqual(KILLS);
    expect(ws.report().equals(reference)).toBe(true);

    // a stage acknowledged by one process is never started again, by it or a later one
    const ackedSoFar = new Set<string>();
    for (const e of ws.events()) {
      if (e.event === 'ack') ackedSoFar.add(e.stage);
      else expect(ackedSoFar.has(e.stage), `${e.stage} started again after its checkpoint (pid ${e.pid})`).toBe(false);
    }
    expect(ackedSoFar).toEqual(new Set(STAGES));

    // and the store holds exactly one checkpoint per stage, in order
    const list = await ws.demo(['--list']);
    expect(await exitOf(list), output(list)).toBe(0);
    expect(listed(list).map((c) => c.stage)).toEqual(STAGES);
    const again = await ws.demo();
    expect(again.lines.join('\n')).toContain('Already complete');
  });

  it('--keep cleans up all but the newest checkpoint once done; --fresh starts over', async (ctx) => {
    const { expect } = ctx;
    const ws = workspace(ctx);
    const first = await ws.demo();
    expect(await exitOf(first), output(first)).toBe(0);
    expect(first.lines.join('\n')).not.toContain('Cleanup:'); // the default keeps a week
    const before = await ws.demo(['--list']);
    expect(listed(before).map((c) => c.id)).toEqual(STAGES.map((_, i) => `demo-gettysburg:${i + 1}`));
    const report = ws.report();

    const tidy = await ws.demo(['--keep', '0s']);
    expect(await exitOf(tidy), output(tidy)).toBe(0);
    expect(tidy.lines).toContain('Cleanup: deleted 4 checkpoint(s) older than 0s; kept the newest.');
    const after = await ws.demo(['--list']);
    expect(listed(after)).toEqual([{ id: 'demo-gettysburg:5', stage: 'report' }]);

    // the newest checkpoint is the cached result: still complete, no stage runs
    const cached = await ws.demo();
    expect(cached.lines.join('\n')).toContain('Already complete (checkpoint demo-gettysburg:5');
    expect(cached.lines.join('\n')).not.toContain('→ checkpoint');

    const fresh = await ws.demo(['--fresh']);
    expect(await exitOf(fresh), output(fresh)).toBe(0);
    expect(fresh.lines).toContain('--fresh: deleted the previous checkpoints.');
    expect(fresh.lines.filter((l) => l.includes('→ checkpoint'))).toHaveLength(STAGES.length);
    expect(ws.report().equals(report)).toBe(true);
  });
});
