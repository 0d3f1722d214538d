/**
 * `cairn list`, `cairn show` and `cairn fork` through the built binary, on the file and SQLite
 * stores. Runs are made the way users make them: through the engine API (completed, failed,
 * waiting, a CheckpointManager workflow), and in a child process stopped by SIGINT (interrupted)
 * or SIGKILL (crashed: still `running`, its lease stale, items committed after the last summary
 * save). We check the tables, the `--json` documents, what `show` says to do next, and exit codes.
 */
import { execFile, spawn } from 'node:child_process';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { beforeAll, describe, expect, it } from 'vitest';
import { Cairn, CheckpointManager, openStore, pipeline, RUN_STATUSES, type Definition, type RunSummary } from '../../src/index.js';
import { deferred } from '../engine/engine-helpers.js';
import { ENGINE_STORES } from '../engine/store-matrix.js';

const MAIN = path.resolve(import.meta.dirname, '../../dist/src/cli/main.js');
const FIXTURE = path.resolve(import.meta.dirname, 'fixtures/inspect.mjs');

interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

function cli(args: readonly string[], store?: string): Promise<Result> {
  const env: NodeJS.ProcessEnv = { ...process.env, NO_COLOR: '1' };
  delete env.FORCE_COLOR;
  if (store === undefined) delete env.CAIRN_STORE;
  else env.CAIRN_STORE = store;
  return new Promise((resolve) => {
    execFile(process.execPath, [MAIN, ...args], { env }, (error, stdout, stderr) => {
      const code = error ? (typeof error.code === 'number' ? error.code : -1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

async function json<T>(args: readonly string[], store: string): Promise<T> {
  const result = await cli([...args, '--json'], store);
  expect(result.stderr).toBe('');
  expect(result.code).toBe(0);
  return JSON.parse(result.stdout) as T;
}

/** Runs the fixture's `report` with { n, hold: true } in a child, stops it with `signal` once item 3 holds. */
async function stoppedRun(url: string, n: number, signal: 'SIGINT' | 'SIGKILL'): Promise<void> {
  const child = spawn(process.execPath, [FIXTURE, url, String(n)], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const exit = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  for await (const line of createInterface({ input: child.stdout })) {
    if (line === 'holding') {
      child.kill(signal);
      break;
    }
  }
  const code = await exit;
  if (signal === 'SIGINT') expect(code, stderr).toBe(130);
}

async function countRuns(url: string): Promise<number> {
  const store = await openStore(url);
  try {
    return (await store.listRuns()).length;
  } finally {
    await store.close();
  }
}

interface Details extends RunSummary {
  checkpoints: { seq: number; valid: boolean; kind: string; stage?: string; createdAt: string; bytes: number }[];
  ledgers: { name: string; stage: string | null; items: string | null; current: boolean; done: number; failed: number; total?: number }[];
  artifacts: { path: string; size: number; sha256: string; stage?: string }[];
  lock: { owner: string; pid: number; host: string; stale: boolean } | null;
  next: { message: string; command?: string };
}

describe.each(ENGINE_STORES.filter((k) => k.name !== 'memory'))('list, show and fork on $name', (kind) => {
  let url: string;
  /** The text output and usage errors do not depend on the store: checked on the file store only. */
  const full = kind.name === 'file';
  const ids = { completed: '', failed: '', waiting: '', interrupted: '', crashed: '', checkpoints: 'notes-1' };

  beforeAll(async () => {
    url = await kind.freshUrl();
    const { report, review } = (await import(FIXTURE)) as { report: Definition; review: Definition };
    const cairn = new Cairn({ store: url, handleSignals: false });
    const source = (exportName: string) => ({ source: { module: FIXTURE, exportName } });
    try {
      ids.completed = (await cairn.run(report, { n: 1 }, source('report'))).id;
      ids.failed = (await cairn.run(report, { n: 2, fail: true }, source('report'))).id;
      ids.waiting = (await cairn.run(review, { ticket: 7 }, source('review'))).id;
    } finally {
      await cairn.close();
    }
    const cm = new CheckpointManager({ store: url });
    await cm.create(ids.checkpoints, { step: 1 }, { stage: 'a' });
    await cm.create(ids.checkpoints, { step: 2 }, { stage: 'b' });
    await cm.close();
    await Promise.all([stoppedRun(url, 3, 'SIGINT'), stoppedRun(url, 4, 'SIGKILL')]);
    ids.interrupted = cairn.runIdFor(report, { n: 3, hold: true });
    ids.crashed = cairn.runIdFor(report, { n: 4, hold: true });
  });

  it('list prints a table of every run, newest first; --json is an array of run summaries', async () => {
    const [table, runs] = await Promise.all([cli(['list'], url), json<RunSummary[]>(['list'], url)]);
    expect(table.code, table.stderr).toBe(0);
    const lines = table.stdout.trimEnd().split('\n');
    expect(lines[0]).toMatch(/^ID\s+NAME\s+KIND\s+STATUS\s+PROGRESS\s+UPDATED$/);
    expect(lines).toHaveLength(7);
    expect(lines.find((l) => l.startsWith(ids.completed))).toMatch(/report\s+pipeline\s+completed\s+3\/3 stages\s+\d+s ago/);
    expect(lines.find((l) => l.startsWith(ids.failed))).toMatch(/failed\s+1\/3 stages/);
    expect(lines.find((l) => l.startsWith(ids.waiting))).toMatch(/review\s+workflow\s+waiting\s+1 step /);
    expect(lines.find((l) => l.startsWith('notes-1'))).toMatch(/notes-1\s+checkpoints\s+running\s+-/);
    // killed while running: no live process holds it
    expect(lines.find((l) => l.startsWith(ids.crashed))).toMatch(/report\s+pipeline\s+running, crashed\s+/);

    expect(runs.map((r) => [r.id, r.kind, r.status]).sort()).toEqual(
      [
        [ids.completed, 'pipeline', 'completed'],
        [ids.failed, 'pipeline', 'failed'],
        [ids.waiting, 'workflow', 'waiting'],
        [ids.interrupted, 'pipeline', 'interrupted'],
        [ids.crashed, 'pipeline', 'running'],
        ['notes-1', 'checkpoints', 'running'],
      ].sort(),
    );
    const updated = runs.map((r) => r.updatedAt);
    expect(updated).toEqual([...updated].sort().reverse());
    expect(runs.find((r) => r.id === ids.completed)).toMatchObject({ name: 'report', result: 91, stages: expect.any(Array) });
  });

  it.runIf(full)(
    'list --detailed adds the stage, items, attempts, error code and awaited input; --status filters and is validated',
    async () => {
      const [detailed, failed, waiting, cancelled, bad] = await Promise.all([
        cli(['list', '--detailed'], url),
        json<RunSummary[]>(['list', '--status', 'failed,interrupted'], url),
        cli(['list', '--status', 'waiting'], url),
        cli(['list', '--status', 'cancelled'], url),
        cli(['list', '--status', 'done'], url),
      ]);
      expect(detailed.code, detailed.stderr).toBe(0);
      const lines = detailed.stdout.split('\n');
      expect(lines[0]).toMatch(/STAGE\/NODE\s+ITEMS\s+ATTEMPTS\s+ERROR\s+WAITING FOR\s+INPUT$/);
      // each row ends with the run's input (one line of JSON, cut to 40 characters)
      expect(lines.find((l) => l.startsWith(ids.failed))).toMatch(/square\s+3\/6 \(1 failed\)\s+1\s+ITEM_FAILED\s+-\s+\{.*$/);
      expect(lines.find((l) => l.startsWith(ids.waiting))).toMatch(/confirm\s+3\/3\s+1\s+-\s+approval\s+\{.*$/);
      expect(lines.find((l) => l.startsWith(ids.completed))).toMatch(/-\s+6\/6\s+1\s+-\s+-\s+\{.*$/);

      expect(failed.map((r) => r.id).sort()).toEqual([ids.failed, ids.interrupted].sort());
      expect(waiting.stdout).toContain(ids.waiting);
      expect(waiting.stdout).not.toContain(ids.failed);
      expect(cancelled.stdout).toBe('No runs with status cancelled.\n');
      expect(bad.code).toBe(2);
      expect(bad.stdout).toBe('');
      expect(bad.stderr).toBe(`error INVALID_INPUT: Unknown status "done" for --status; use one of ${RUN_STATUSES.join(', ')}.\n`);
    },
  );

  it('show of a completed pipeline: stages with durations, live item counts, attempts, artifacts, checkpoints, history', async () => {
    const [shown, d] = await Promise.all([cli(['show', ids.completed], url), json<Details>(['show', ids.completed], url)]);
    expect(shown.code).toBe(0);
    expect(shown.stderr).toBe('');
    const out = shown.stdout;
    expect(out).toMatch(new RegExp(`^Run\\s+${ids.completed}\\nName\\s+report \\(pipeline\\)\\nInput\\s+.+\\nStatus\\s+completed\\n`));
    expect(out).toMatch(/✓ prepare\s+completed\s+\d+(ms|\.\ds)/);
    expect(out).toContain('      nums: 6 done, 0 failed, 6 total');
    expect(out).toMatch(/Attempts\n\s+#\s+STARTED\s+ENDED\s+TOOK\s+HOST:PID\s+OUTCOME\s+REASON\n\s+#1 .+completed\s+every stage completed/);
    expect(out).toMatch(/Artifacts\n\s+PATH\s+SIZE\s+SHA256\s+STAGE\n\s+numbers\.json\s+\d+ B\s+[0-9a-f]{12}\s+prepare/);
    expect(out).toMatch(/Checkpoints 3; fork from one with cairn fork .+ --from <seq>\n.*\n\s+1\s+stage\s+prepare/);
    expect(out).toContain('Nothing to do: the run completed.');
    expect(out).toMatch(/History\n.+attempt:start\s+first attempt/);

    expect(Object.keys(d)).toEqual(
      expect.arrayContaining([
        'id',
        'name',
        'kind',
        'status',
        'result',
        'stages',
        'attempts',
        'history',
        'checkpoints',
        'ledgers',
        'artifacts',
        'lock',
        'next',
      ]),
    );
    expect(d).toMatchObject({
      id: ids.completed,
      kind: 'pipeline',
      status: 'completed',
      result: 91,
      lock: null,
      source: { module: FIXTURE },
    });
    expect(d.checkpoints.map((c) => [c.seq, c.kind, c.stage, c.valid])).toEqual([
      [1, 'stage', 'prepare', true],
      [2, 'stage', 'square', true],
      [3, 'stage', 'sum', true],
    ]);
    expect(d.checkpoints[0]).toEqual({
      seq: 1,
      valid: true,
      kind: 'stage',
      stage: 'prepare',
      createdAt: expect.any(String),
      bytes: expect.any(Number),
      meta: { stage: 'prepare' },
    });
    expect(d.ledgers).toEqual([
      { name: 'square.nums', stage: 'square', items: 'nums', generation: 0, current: true, done: 6, failed: 0, total: 6 },
    ]);
    expect(d.artifacts).toEqual([
      {
        path: 'numbers.json',
        size: expect.any(Number),
        sha256: expect.stringMatching(/^[0-9a-f]{64}$/),
        stage: 'prepare',
        createdAt: expect.any(String),
      },
    ]);
    expect(d.next).toEqual({ message: expect.stringContaining('Nothing to do') });
  });

  it('show says what to do next: failed, waiting, interrupted, crashed (stale lease) and CheckpointManager runs', async () => {
    const [failed, waiting, interrupted, crashed, crashedText, cm] = await Promise.all([
      cli(['show', ids.failed, '--store', url]),
      json<Details>(['show', ids.waiting], url),
      json<Details>(['show', ids.interrupted], url),
      json<Details>(['show', ids.crashed], url),
      cli(['show', ids.crashed], url),
      json<Details>(['show', 'notes-1'], url),
    ]);
    expect(failed.code).toBe(0);
    expect(failed.stdout).toMatch(/✗ square\s+failed\s+.*ITEM_FAILED/);
    expect(failed.stdout).toContain('      nums: 3 done, 1 failed, 6 total');
    expect(failed.stdout).toMatch(/✗ 3 \(try 1\): E_BAD_ITEM: item 5 is bad/);
    expect(failed.stdout).toMatch(/Error\n\s+ITEM_FAILED in square: /);
    expect(failed.stdout).toContain(`Fix the cause (ITEM_FAILED in stage square), then resume`);
    expect(failed.stdout).toContain(`cairn resume ${ids.failed} --store ${url}\n`);

    expect(waiting).toMatchObject({ status: 'waiting', waitingFor: 'approval', steps: 1 });
    expect(waiting.next.command).toBe(`cairn resume ${ids.waiting} --input approval=<value>`);
    expect(waiting.ledgers).toEqual([
      { name: 'fetch.s0.parts', stage: 'fetch', items: 'parts', step: 0, current: true, done: 3, failed: 0, total: 3 },
    ]);
    expect(waiting.checkpoints.map((c) => [c.seq, c.kind])).toEqual([
      [1, 'snapshot'],
      [2, 'step'],
    ]);
    // a workflow is told in its own words: nodes, not stages
    const waitingText = (await cli(['show', ids.waiting, '--store', url])).stdout;
    expect(waitingText).toMatch(/\nNodes\n/);
    expect(waitingText).toMatch(/SEQ\s+KIND\s+NODE\s+SIZE/);
    expect(waitingText).not.toMatch(/\bstages?\b|STAGE/i);

    expect(interrupted.status).toBe('interrupted');
    expect(interrupted.next).toEqual({
      message: 'The run was interrupted: resume continues it from its last checkpoint.',
      command: `cairn resume ${ids.interrupted}`,
    });
    expect(interrupted.attempts.at(-1)).toMatchObject({ outcome: 'interrupted' });

    // killed mid-stage: the summary was last saved when `square` started, the ledger holds 3 items since
    expect(crashed.status).toBe('running');
    expect(crashed.stages.find((s) => s.name === 'square')?.items).toBeUndefined();
    expect(crashed.ledgers).toEqual([expect.objectContaining({ name: 'square.nums', stage: 'square', done: 3, failed: 0, current: true })]);
    expect(crashed.lock === null || crashed.lock.stale).toBe(true);
    expect(crashed.next.message).toMatch(/holds no live lease: it crashed\. Resume takes it over/);
    expect(crashed.next.command).toBe(`cairn resume ${crashed.id}`);
    expect(crashedText.stdout).toContain('      nums: 3 done, 0 failed');
    expect(crashedText.stdout).toMatch(/#1 .+ - {2,}-\s+\S+:\d+\s+crashed/);

    expect(cm).toMatchObject({ kind: 'checkpoints', stages: [], ledgers: [], lock: null });
    expect(cm.checkpoints.map((c) => [c.seq, c.stage])).toEqual([
      [1, 'a'],
      [2, 'b'],
    ]);
    expect(cm.next.message).toContain("newest intact checkpoint is seq 2. Load it in code with cm.getMostRecent('notes-1')");
  });

  it('show of a run held by a live process names the holder', async () => {
    const gate = deferred();
    const started = deferred();
    const held = pipeline('held').stage('wait', async () => {
      started.resolve();
      await gate.promise;
      return 1;
    });
    const cairn = new Cairn({ store: url, handleSignals: false });
    try {
      const run = cairn.run(held, {});
      await started.promise;
      const id = cairn.runIdFor(held, {});
      const d = await json<Details>(['show', id], url);
      expect(d.status).toBe('running');
      expect(d.lock).toMatchObject({ pid: process.pid, stale: false });
      expect(d.next.message).toMatch(new RegExp(`^Running: held by .+ \\(pid ${process.pid} on host .+\\)`));
      expect(d.next.command).toBeUndefined();
      expect(d.stages[0]).toMatchObject({ name: 'wait', status: 'running' });
      gate.resolve();
      expect((await run).status).toBe('completed');
    } finally {
      gate.resolve();
      await cairn.close();
    }
  });

  it.runIf(full)('show refuses an unknown run and hostile ids with exit 2', async () => {
    const cases = [
      ['no-such-run', 'NOT_FOUND'],
      ['../../etc', 'INVALID_RUN_ID'],
    ] as const;
    const results = await Promise.all(cases.map(([id]) => cli(['show', id, '--json'], url)));
    cases.forEach(([id, code], i) => {
      expect(results[i]!.code, id).toBe(2);
      expect(JSON.parse(results[i]!.stdout)).toMatchObject({ error: { code, exitCode: 2 } }); // --json: the error as JSON too
      expect(results[i]!.stderr).toMatch(new RegExp(`^error ${code}: `));
    });
  });

  it('fork replays a pipeline from a checkpoint: resume reruns the later stages and reproduces the result', async () => {
    const [forked, named] = await Promise.all([
      cli(['fork', ids.completed, '--from', '1'], url),
      json<RunSummary>(['fork', ids.waiting, '--from', '2', '--run-id', 'review-again'], url),
    ]);
    expect(forked.code, forked.stderr).toBe(0);
    expect(forked.stdout).toBe(
      `Forked ${ids.completed} at checkpoint 1 into ${ids.completed}-fork-1: kept stage(s) prepare; square, sum run again on resume.\n` +
        `Replay it with: cairn resume ${ids.completed}-fork-1\n`,
    );
    const d = await json<Details>(['show', `${ids.completed}-fork-1`], url);
    expect(d).toMatchObject({ status: 'interrupted', attempts: [], source: { module: FIXTURE, exportName: 'report' } });
    expect(d.stages.map((s) => s.status)).toEqual(['completed', 'pending', 'pending']);
    expect(d.checkpoints.map((c) => c.seq)).toEqual([1]);
    expect(d.artifacts.map((a) => a.path)).toEqual(['numbers.json']);
    expect(d.history.map((h) => h.event)).toEqual(['run:forked']);
    expect(d.next).toEqual({
      message: 'A fork that has not run yet: resume replays it from its last checkpoint.',
      command: `cairn resume ${ids.completed}-fork-1`,
    });

    const resumed = await cli(['resume', `${ids.completed}-fork-1`, '--json'], url);
    expect(resumed.code).toBe(0);
    const summary = JSON.parse(resumed.stdout) as RunSummary;
    expect(summary.result).toBe(91);
    expect(summary.stages.map((s) => [s.name, s.runs])).toEqual([
      ['prepare', 1],
      ['square', 1],
      ['sum', 1],
    ]);

    expect(named).toMatchObject({ id: 'review-again', kind: 'workflow', status: 'interrupted', steps: 1 });
    const original = await json<Details>(['show', ids.waiting], url);
    expect(original.status).toBe('waiting');
  });

  it.runIf(full)('fork refuses a seq that is not a checkpoint, a taken id, bad flags and unknown runs with exit 2', async () => {
    const cases: [string[], string][] = [
      [['fork', ids.completed, '--from', '9'], 'error INVALID_INPUT: Checkpoint 9 is not a checkpoint of run'],
      [['fork', ids.completed, '--from', 'two'], 'error INVALID_INPUT: --from must be a checkpoint seq'],
      [['fork', ids.completed, '--from', '1', '--run-id', ids.failed], `error ALREADY_EXISTS: Run ${ids.failed} already exists`],
      [['fork', 'notes-1', '--from', '1'], 'error INVALID_INPUT: Run notes-1 is a CheckpointManager workflow'],
      [['fork', ids.completed], "error: required option '--from <seq>' not specified"],
    ];
    const before = await countRuns(url);
    const results = await Promise.all(cases.map(([args]) => cli(args, url)));
    cases.forEach(([args, message], i) => {
      expect(results[i]!.code, args.join(' ')).toBe(2);
      expect(results[i]!.stderr.startsWith(message), results[i]!.stderr).toBe(true);
    });
    expect(await countRuns(url)).toBe(before);
  });
});

describe('cairn list, show and fork --help', () => {
  it('documents every option', async () => {
    const helps = await Promise.all(['list', 'show', 'fork'].map((command) => cli([command, '--help'])));
    helps.forEach((help, i) => {
      expect(help.code).toBe(0);
      expect(help.stdout).toMatch(new RegExp(`^Usage: cairn ${['list', 'show', 'fork'][i]} `));
      expect(help.stdout).toContain('--json');
      expect(help.stdout).toContain('--store <url>');
    });
  });
});
