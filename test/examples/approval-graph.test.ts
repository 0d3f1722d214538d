/**
 * examples/approval-graph through the built `cairn` binary: `cairn run` stops at the approval with
 * exit code 3 and says how to answer; `cairn resume <id> --input approval=true|false`, from another
 * process and another working directory sharing the store, takes the publish or the archive edge.
 * Then the whole thing again from scratch under SIGKILL at random moments: the published document
 * is byte-identical to an uninterrupted run's, and no step whose checkpoint was durable ran again.
 * The example appends `<pid> <step> <node>` to $CAIRN_DEMO_LOG when each node starts.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, it, type TestContext } from 'vitest';
import { Child, killAll, killLoop } from '../e2e/child.js';

const ROOT = path.resolve(import.meta.dirname, '..', '..');
const CLI = path.join(ROOT, 'dist', 'src', 'cli', 'main.js');
const MODULE_TS = path.join(ROOT, 'examples', 'approval-graph', 'index.ts');
/** The kill loop runs the compiled module: no tsx start-up in every one of its many processes. */
const MODULE_JS = path.join(ROOT, 'dist', 'examples', 'approval-graph', 'index.js');
const KILLS = Number(process.env.CAIRN_EXAMPLE_KILLS ?? (process.env.CAIRN_TORTURE === '1' ? 50 : 6));
const STEP_MS = 60;
/** A lower bound of a CLI process's start-up (node, imports, store, lease) before its first node runs. */
const STARTUP_FLOOR_MS = 150;
/** The default input's path: draft, review, revise, review, revise, review, confirm (waits) | confirm, publish. */
const WAIT_STEP = 6;
const LAST_STEP = 7;

// not afterEach: the tests run concurrently, and killAll stops every child of the file
afterAll(killAll);

interface Workspace {
  readonly dir: string;
  readonly out: string;
  readonly log: string;
  readonly env: NodeJS.ProcessEnv;
  /** `cairn <args>` from `cwd` (default: the workspace), to its end. */
  cairn(args: readonly string[], cwd?: string): Promise<Child>;
  /** `<pid> <step> <node>` lines the example logged, in order. */
  steps(): { pid: number; step: number; node: string }[];
  /** Every file under out/, by relative path. */
  outputs(): Record<string, string>;
}

function workspace(ctx: TestContext): Workspace {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-approval-graph-'));
  ctx.onTestFinished(({ task }) => {
    if (task.result?.state === 'fail') console.error(`${task.name}: kept ${dir}`);
    else fs.rmSync(dir, { recursive: true, force: true });
  });
  const log = path.join(dir, 'steps.log');
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    CAIRN_STORE: `file:${path.join(dir, 'store')}`,
    CAIRN_DEMO_STEP_MS: String(STEP_MS),
    CAIRN_DEMO_LOG: log,
    NO_COLOR: '1',
  };
  delete env.FORCE_COLOR;
  const out = path.join(dir, 'out');
  return {
    dir,
    out,
    log,
    env,
    cairn: async (args, cwd = dir) => {
      const child = new Child(CLI, args, { cwd, env });
      await child.exit;
      return child;
    },
    steps: () =>
      (fs.existsSync(log) ? fs.readFileSync(log, 'utf8') : '')
        .split('\n')
        .filter(Boolean)
        .map((line) => {
          const [pid, step, node] = line.split(' ');
          return { pid: Number(pid), step: Number(step), node: node! };
        }),
    outputs: () => {
      const files: Record<string, string> = {};
      if (!fs.existsSync(out)) return files;
      for (const f of fs.readdirSync(out, { recursive: true, encoding: 'utf8' }).sort()) {
        const file = path.join(out, f);
        if (fs.statSync(file).isFile()) files[f] = fs.readFileSync(file, 'utf8');
      }
      return files;
    },
  };
}

const input = (ws: Workspace): string => JSON.stringify({ topic: 'Quarterly report', out: ws.out });
const output = (child: Child): string => `stdout: ${child.lines.join('\n')}\nstderr: ${child.stderr}`;
const exitOf = async (child: Child): Promise<number | null> => (await child.exit).code;
/** The run id from the hint `cairn run` prints when the run waits. */
const runIdOf = (child: Child): string =>
  /Answer with: cairn resume (\S+) --input approval=<value>/.exec(child.lines.join('\n'))?.[1] ?? '';

/** The parts of `cairn show --json` the tests read (the rest is checked with toMatchObject). */
interface Details {
  readonly stages: readonly { readonly name: string; readonly status: string }[];
  readonly checkpoints: readonly { readonly kind?: string; readonly stage?: string; readonly meta?: { readonly step?: number } }[];
  readonly next: { readonly command?: string };
  readonly [key: string]: unknown;
}

async function showJson(ws: Workspace, id: string): Promise<Details> {
  const show = await ws.cairn(['show', id, '--json']);
  return JSON.parse(show.lines.join('\n')) as Details;
}

describe.concurrent('examples/approval-graph', () => {
  it('cairn run waits with exit code 3 and the hint; approval=true from another process publishes', async (ctx) => {
    const { expect } = ctx;
    const ws = workspace(ctx);
    const run = await ws.cairn(['run', MODULE_TS, '--input', input(ws)]);
    expect(await exitOf(run), output(run)).toBe(3);
    const id = runIdOf(run);
    expect(id).toMatch(/^approval-graph-[0-9a-f]{16}$/);
    expect(run.lines[0]).toBe(`Run ${id} is waiting for input "approval". Everything so far is saved; this process can exit.`);
    expect(ws.outputs()).toEqual({});

    const waiting = await showJson(ws, id);
    expect(waiting).toMatchObject({ status: 'waiting', waitingFor: 'approval', steps: WAIT_STEP, kind: 'workflow' });
    expect(waiting.stages.find((s) => s.name === 'confirm')).toMatchObject({ status: 'waiting' });
    expect(waiting.next.command).toBe(`cairn resume ${id} --input approval=<value>`);
    const human = await ws.cairn(['show', id]);
    expect(human.lines.join('\n')).toMatch(/confirm +waiting +waiting for input approval/);

    // another process, in another working directory: only the store (and the absolute out folder) is shared
    const elsewhere = fs.mkdtempSync(path.join(ws.dir, 'elsewhere-'));
    const resume = await ws.cairn(['resume', id, '--input', 'approval=true'], elsewhere);
    expect(await exitOf(resume), output(resume)).toBe(0);
    expect(resume.lines[0]).toMatch(new RegExp(`^Run ${id} completed`));
    const files = ws.outputs();
    expect(Object.keys(files)).toEqual([path.join('published', 'quarterly-report.md')]);
    expect(files[path.join('published', 'quarterly-report.md')]).toContain('Published after approval. Review score 80/100');

    const done = await showJson(ws, id);
    expect(done).toMatchObject({ status: 'completed', steps: LAST_STEP + 1, result: { approved: true, revision: 2, score: 80 } });
    const statuses = Object.fromEntries(done.stages.map((s) => [s.name, s.status]));
    expect(statuses).toEqual({
      draft: 'completed',
      review: 'completed',
      revise: 'completed',
      confirm: 'completed',
      publish: 'completed',
      archive: 'pending',
    });
    expect(ws.steps().map((s) => s.node)).toEqual([
      'draft',
      'review',
      'revise',
      'review',
      'revise',
      'review',
      'confirm',
      'confirm',
      'publish',
    ]);
  });

  it('approval=false takes the archive edge; an answer that is not a boolean is refused and can be given again', async (ctx) => {
    const { expect } = ctx;
    const ws = workspace(ctx);
    const run = await ws.cairn(['run', MODULE_JS, '--input', input(ws)]);
    expect(await exitOf(run), output(run)).toBe(3);
    const id = runIdOf(run);

    const wrong = await ws.cairn(['resume', id, '--input', 'approval=maybe']);
    expect(await exitOf(wrong), output(wrong)).toBe(2);
    expect(output(wrong)).toContain('approval must be true or false, not "maybe"');
    expect(output(wrong)).toContain('still waits for approval');
    expect(await showJson(ws, id)).toMatchObject({ status: 'waiting', waitingFor: 'approval' });
    const elsewhere = await ws.cairn(['resume', id, '--input', 'approve=true']);
    expect(await exitOf(elsewhere), output(elsewhere)).toBe(2);
    expect(output(elsewhere)).toContain('waits for approval, not for approve');

    const no = await ws.cairn(['resume', id, '--input', 'approval=false']);
    expect(await exitOf(no), output(no)).toBe(0);
    const files = ws.outputs();
    expect(Object.keys(files)).toEqual([path.join('archived', 'quarterly-report.md')]);
    expect(files[path.join('archived', 'quarterly-report.md')]).toContain('Archived: the approver said no. Not published.');
    expect(await showJson(ws, id)).toMatchObject({ status: 'completed', result: { approved: false } });
    expect(ws.steps().at(-1)?.node).toBe('archive');
  });

  it(`survives ${KILLS} SIGKILLs at random moments: same document, no durable step run again`, { timeout: 120_000 }, async (ctx) => {
    const { expect } = ctx;
    const ref = workspace(ctx);
    const refRun = await ref.cairn(['run', MODULE_JS, '--input', input(ref)]);
    expect(await exitOf(refRun), output(refRun)).toBe(3);
    const refDone = await ref.cairn(['resume', runIdOf(refRun), '--input', 'approval=true']);
    expect(await exitOf(refDone), output(refDone)).toBe(0);
    const reference = ref.outputs();
    const refSteps = ref.steps().filter((s, i, all) => all.findIndex((t) => t.step === s.step) === i);

    const ws = workspace(ctx);
    const started = Date.now();
    /** Kills land anywhere from start-up to just before the process would finish, so every kill lands. */
    const killWindow = (phaseLast: number): number => {
      const last = ws.steps().at(-1)?.step ?? -1;
      return STARTUP_FLOOR_MS + 0.9 * STEP_MS * Math.max(1, phaseLast - last);
    };
    const phase = async (args: string[], kills: number, phaseLast: number): Promise<{ kills: number; last: Child }> => {
      let landed = 0;
      for (;;) {
        const armed = landed < kills;
        const r = await killLoop(CLI, args, { kills: armed ? 1 : 0, maxDelayMs: killWindow(phaseLast), cwd: ws.dir, env: ws.env });
        landed += r.kills;
        if (r.kills === 0) return { kills: landed, last: r.last };
      }
    };
    const runKills = Math.ceil(KILLS * 0.7);
    const runPhase = await phase(['run', MODULE_JS, '--input', input(ws)], runKills, WAIT_STEP);
    expect(await exitOf(runPhase.last), output(runPhase.last)).toBe(3);
    const id = runIdOf(runPhase.last);
    const resumePhase = await phase(['resume', id, '--input', 'approval=true'], KILLS - runPhase.kills, LAST_STEP);
    expect(await exitOf(resumePhase.last), output(resumePhase.last)).toBe(0);
    console.log(
      `approval-graph: ${runPhase.kills} + ${resumePhase.kills} kills (run, resume) in ${((Date.now() - started) / 1000).toFixed(1)}s`,
    );
    expect(runPhase.kills + resumePhase.kills).toBeGreaterThanOrEqual(KILLS);

    expect(ws.outputs()).toEqual(reference);

    // each process starts where the durable history ends: at the step the previous one was running (not
    // durable) or the one after (durable); never earlier, which would run a durable step again
    const steps = ws.steps();
    const processes = [...new Set(steps.map((s) => s.pid))].map((pid) => steps.filter((s) => s.pid === pid).map((s) => s.step));
    for (const [k, mine] of processes.entries()) {
      for (let i = 1; i < mine.length; i++) expect(mine[i]).toBe(mine[i - 1]! + 1);
      const before = processes[k - 1]?.at(-1);
      if (before !== undefined) expect([before, before + 1]).toContain(mine[0]);
    }
    // the same path as the reference, step by step
    for (const s of steps) expect(refSteps[s.step]?.node, `step ${s.step}`).toBe(s.node);

    // one durable record per step, in order, and the same final state
    const details = await showJson(ws, id);
    const stepRecords = details.checkpoints.filter((c) => c.kind === 'step');
    expect(stepRecords.map((c) => c.meta?.step)).toEqual(refSteps.map((s) => s.step + 1));
    expect(stepRecords.map((c) => c.stage)).toEqual(refSteps.map((s) => s.node));
    expect(details).toMatchObject({ status: 'completed', steps: LAST_STEP + 1, result: { approved: true, score: 80 } });
    const validate = await ws.cairn(['validate', id]);
    expect(await exitOf(validate), output(validate)).toBe(0);
  });
});
