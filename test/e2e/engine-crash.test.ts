/**
 * The engine under real process deaths. A child process runs a three-stage pipeline through the
 * public API (fixtures/three-stage.mjs) and reports on stdout what it started, finished and
 * committed; we SIGKILL it at named points and at random moments (mostly inside the item stage),
 * SIGINT it, race a second process against it for the run's lock, and hand a waiting workflow's
 * approval to another process. Then we check the final output byte for byte against an
 * uninterrupted run, that no committed stage ever started again, and count redone side effects.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Cairn, openStore } from '../../src/index.js';
import { Child, killAll } from './child.js';

const FIXTURES = path.join(import.meta.dirname, 'fixtures');
const THREE_STAGE = path.join(FIXTURES, 'three-stage.mjs');
const APPROVAL = path.join(FIXTURES, 'approval.mjs');
const KILLS = Number(process.env.CAIRN_CRASH_KILLS ?? (process.env.CAIRN_TORTURE === '1' ? 100 : 12));
/** What the fixture sets: the bound on items redone per crash is checkpointEvery + concurrency. */
const ITEMS = 2000;
const CHECKPOINT_EVERY = 100;
const CONCURRENCY = 4;
const STAGES = ['prepare', 'process', 'merge'] as const;

const STORES = [
  ['file', (dir: string) => `file:${dir}/checkpoints`],
  ['sqlite', (dir: string) => `sqlite:${dir}/cairn.db`],
] as const;
type StoreKind = (typeof STORES)[number][0];
const urlFor = (kind: StoreKind, dir: string): string => STORES.find(([k]) => k === kind)![1](dir);

let dirs: string[] = []; // the current test's folders
afterEach((context) => {
  killAll();
  if (context.task.result?.state === 'fail') console.error(`kept for a look: ${dirs.join(' ')}`);
  else for (const dir of dirs) fs.rmSync(dir, { recursive: true, force: true });
  dirs = [];
});

function tempDir(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-engine-crash-'));
  dirs.push(dir);
  return dir;
}

const readLines = (file: string): string[] => (fs.existsSync(file) ? fs.readFileSync(file, 'utf8').split('\n').slice(0, -1) : []);
const effectsOf = (work: string): string[] => readLines(path.join(work, 'effects.log'));
const output = (work: string): string => fs.readFileSync(path.join(work, 'output.txt'), 'utf8');

function tally(lines: readonly string[]): Map<string, number> {
  const counts = new Map<string, number>();
  for (const line of lines) counts.set(line, (counts.get(line) ?? 0) + 1);
  return counts;
}

/** `stage <name>` lines of stages.log, per stage. */
function stageRuns(work: string): Record<string, number> {
  const counts = tally(readLines(path.join(work, 'stages.log')));
  return Object.fromEntries(STAGES.map((s) => [s, counts.get(`stage ${s}`) ?? 0]));
}

function expectEveryItemOnce(work: string): void {
  const effects = effectsOf(work);
  expect(effects.length).toBe(ITEMS);
  expect(new Set(effects).size).toBe(ITEMS);
}

/** Runs the pipeline uninterrupted in a fresh store and returns its output. */
async function runUninterrupted(kind: StoreKind): Promise<string> {
  const work = tempDir();
  const child = new Child(THREE_STAGE, [urlFor(kind, work), work]);
  await child.expectExit(0);
  expect(await child.json('summary')).toMatchObject({ status: 'completed' });
  expectEveryItemOnce(work);
  expect(stageRuns(work)).toEqual({ prepare: 1, process: 1, merge: 1 });
  return output(work);
}

const references = new Map<StoreKind, Promise<string>>();
function reference(kind: StoreKind): Promise<string> {
  let ref = references.get(kind);
  if (!ref) references.set(kind, (ref = runUninterrupted(kind)));
  return ref;
}

/** Keys whose results are durable in the run's item ledgers, and the ledgers' names. */
async function readDurable(url: string, runId: string): Promise<{ keys: Set<string>; ledgers: string[] }> {
  const store = await openStore(url);
  try {
    const ledgers = await store.listLedgers(runId);
    const keys = new Set<string>();
    for (const ledger of ledgers)
      for await (const entry of store.readItems(runId, ledger)) if (entry.status === 'done') keys.add(entry.key);
    return { keys, ledgers };
  } finally {
    await store.close();
  }
}

/** The count of a `committed items <stage> <count>` line. */
const committedCount = (line: string): number => Number(line.slice(line.lastIndexOf(' ') + 1));
const random = (n: number): number => Math.floor(Math.random() * n);

/**
 * How one process of the torture loop is killed. Every such process runs with `--hold=merge`, so
 * it can never complete: at the latest it is killed in the middle of writing the output.
 */
type KillPlan =
  | { kind: 'line'; line: string; delayMs?: number } // when this line is read (a named point), after an optional delay
  | { kind: 'items'; after: number; delayMs: number } // once this process committed this many items, after a delay
  | { kind: 'clock'; delayMs: number }; // at a random moment after the spawn (startup, prepare, early items)

describe.each(STORES)('engine under kill -9: %s store', (kind) => {
  it(`survives ${KILLS} SIGKILLs of a three-stage pipeline`, { timeout: 60_000 + KILLS * 2_000 }, async () => {
    const expected = await reference(kind);
    const work = tempDir();
    const url = urlFor(kind, work);

    const committed = new Set<string>(); // stages whose commit point some process reported
    const restartedAfterCommit: string[] = [];
    const stageLogAtCommit = new Map<string, number>(); // stages.log counts once the commit was acknowledged
    const lostPerCrash: number[] = []; // items whose side effect ran but whose result was not durable at the kill
    let runId = '';
    let kills = 0;
    let killsInStage2 = 0;
    let processes = 0;

    /** Runs one process until it is killed. */
    const runOnce = async (plan: KillPlan): Promise<void> => {
      let itemsCommitted = 0;
      let armed = false;
      const seen = new Set<string>();
      const arm = (child: Child, delayMs: number): void => {
        if (armed) return;
        armed = true;
        if (delayMs === 0) child.kill('SIGKILL');
        else setTimeout(() => child.kill('SIGKILL'), delayMs);
      };
      processes++;
      const child = new Child(THREE_STAGE, [url, work, '--hold=merge'], {
        onLine: (line, self) => {
          seen.add(line.startsWith('committed items ') ? 'committed items' : line);
          if (line.startsWith('run ')) runId = line.slice('run '.length);
          if (line.startsWith('start ')) {
            const stage = line.slice('start '.length);
            if (committed.has(stage)) restartedAfterCommit.push(`${stage} (process ${processes})`);
          }
          if (line.startsWith('committed stage ')) committed.add(line.slice('committed stage '.length));
          if (line.startsWith('committed items ')) itemsCommitted += committedCount(line);
          if (plan.kind === 'line' && line === plan.line) arm(self, plan.delayMs ?? 0);
          if (line === 'holding merge') arm(self, 0);
          if (plan.kind === 'items' && itemsCommitted >= plan.after) arm(self, plan.delayMs);
        },
      });
      if (plan.kind === 'clock') arm(child, plan.delayMs);
      const exit = await child.exit;
      expect(exit, `${child.lines.join(' | ')}\n${child.stderr}`).toEqual({ code: null, signal: 'SIGKILL' });
      kills++;
      if (seen.has('start process') && !seen.has('committed stage process')) killsInStage2++;
    };

    let effectsBefore = 0;
    /** Side effects of the process that just ended whose results are not in the ledger: they run again. */
    const countLost = async (): Promise<number> => {
      const effects = effectsOf(work);
      const { keys } = await readDurable(url, runId);
      const lost = effects.slice(effectsBefore).filter((key) => !keys.has(key)).length;
      effectsBefore = effects.length;
      return lost;
    };

    while (kills < KILLS) {
      let plan: KillPlan;
      const left = KILLS - 2 - kills; // item-stage kills still to come; the last two go to the stage boundary and merge
      if (kills === 0) plan = { kind: 'line', line: 'committed stage prepare' };
      else if (committed.has('process')) plan = { kind: 'line', line: 'holding merge' };
      else if (left <= 0) plan = { kind: 'line', line: 'committed stage process' };
      else if (Math.random() < 0.15) plan = { kind: 'clock', delayMs: random(300) };
      else if (Math.random() < 0.35)
        plan = { kind: 'line', line: 'start process', delayMs: random(10) }; // before or around the first batch
      else {
        // spread the item stage over the kills: on average about half an equal share per process, plus the delay
        const remaining = ITEMS - new Set(effectsOf(work)).size;
        plan = { kind: 'items', after: 1 + random(Math.max(1, Math.floor(remaining / (left + 1)))), delayMs: random(8) };
      }
      await runOnce(plan);
      lostPerCrash.push(await countLost());
      const runs = stageRuns(work);
      for (const stage of committed) if (!stageLogAtCommit.has(stage)) stageLogAtCommit.set(stage, runs[stage]!);
    }
    expect(committed.has('merge'), 'merge holds until killed').toBe(false);

    // and now to the end, uninterrupted
    const last = new Child(THREE_STAGE, [url, work], {
      onLine: (line) => {
        if (line.startsWith('start ') && committed.has(line.slice(6))) restartedAfterCommit.push(`${line.slice(6)} (last process)`);
      },
    });
    await last.expectExit(0);
    expect(await last.json('summary')).toMatchObject({ status: 'completed' });
    expect(await countLost(), 'after completion every result is durable').toBe(0);

    expect(output(work)).toBe(expected);
    const cairn = new Cairn({ store: url });
    try {
      // every attempt a process got to record ended in a crash, except the last one
      const attempts = (await cairn.get(runId))?.attempts ?? [];
      expect(attempts.length).toBeLessThanOrEqual(processes + 1);
      expect(attempts.map((a) => a.outcome)).toEqual([...attempts.slice(1).map(() => 'crashed'), 'completed']);
    } finally {
      await cairn.close();
    }
    expect(restartedAfterCommit, 'a stage started again after its commit was acknowledged').toEqual([]);
    const runs = stageRuns(work);
    for (const stage of STAGES) expect(runs[stage], `stage ${stage} never finished`).toBeGreaterThanOrEqual(1);
    for (const [stage, count] of stageLogAtCommit) expect(runs[stage], `stage ${stage} ran again after its commit`).toBe(count);

    // every key ran once, plus once more for each crash that lost its result; no crash lost more than one window
    const effects = effectsOf(work);
    const perKey = tally(effects);
    expect(perKey.size).toBe(ITEMS);
    const duplicates = effects.length - perKey.size;
    expect(duplicates, 'items redone although their results were durable').toBe(lostPerCrash.reduce((a, b) => a + b, 0));
    const maxLost = Math.max(...lostPerCrash);
    expect(maxLost).toBeLessThanOrEqual(CHECKPOINT_EVERY + CONCURRENCY);
    expect(duplicates).toBeLessThanOrEqual(kills * (CHECKPOINT_EVERY + CONCURRENCY));
    expect((await readDurable(url, runId)).ledgers, 'one ledger: resumes never start the items over').toHaveLength(1);
    expect(killsInStage2, 'no kill landed inside stage process').toBeGreaterThanOrEqual(1);

    console.log(
      `[${kind}] ${kills} kills (${killsInStage2} inside stage process), ${processes + 1} processes, stage runs ${JSON.stringify(runs)}, ` +
        `items redone per crash: max ${maxLost}, mean ${(duplicates / kills).toFixed(1)} (bound ${CHECKPOINT_EVERY + CONCURRENCY})`,
    );
  });
});

describe.each(STORES)('engine across processes: %s store', (kind) => {
  it('SIGINT mid-items: exits 130 by itself, status interrupted, resume redoes nothing', { timeout: 60_000 }, async () => {
    const expected = await reference(kind);
    const work = tempDir();
    const url = urlFor(kind, work);
    let itemsCommitted = 0;
    const first = new Child(THREE_STAGE, [url, work, '--item-ms=5'], {
      onLine: (line, self) => {
        if (!line.startsWith('committed items ')) return;
        const before = itemsCommitted;
        itemsCommitted += committedCount(line);
        if (before < 300 && itemsCommitted >= 300) self.kill('SIGINT');
      },
    });
    const runId = (await first.waitForLine('run ')).slice(4);
    await first.expectExit(130);
    expect(await first.json('summary')).toMatchObject({ status: 'interrupted' });

    const cairn = new Cairn({ store: url });
    try {
      const run = await cairn.get(runId);
      expect(run?.status).toBe('interrupted');
      expect(run?.stages.find((s) => s.name === 'process')?.status).toBe('interrupted');
    } finally {
      await cairn.close();
    }
    const partial = effectsOf(work);
    expect(partial.length).toBeGreaterThan(0);
    expect(partial.length).toBeLessThan(ITEMS);
    expect(new Set(partial).size).toBe(partial.length);

    const second = new Child(THREE_STAGE, [url, work]);
    await second.expectExit(0);
    expect(await second.json('summary')).toMatchObject({ status: 'completed' });
    expect(output(work)).toBe(expected);
    expectEveryItemOnce(work); // zero duplicate side effects
    expect(stageRuns(work)).toEqual({ prepare: 1, process: 1, merge: 1 });
  });

  it('a waiting workflow gets its approval in another process, and a refusal takes the other edge', { timeout: 60_000 }, async () => {
    const url = urlFor(kind, tempDir());
    const decide = async (ticket: string, approval: boolean) => {
      const starter = new Child(APPROVAL, ['start', url, ticket]);
      await starter.expectExit(0);
      const waiting = JSON.parse(starter.lines[0]!);
      expect(waiting).toMatchObject({ status: 'waiting', waitingFor: 'approval' });
      const decider = new Child(APPROVAL, ['resume', url, waiting.id, String(approval)]);
      await decider.expectExit(0);
      const done = JSON.parse(decider.lines[0]!);
      expect(done).toMatchObject({ id: waiting.id, status: 'completed' });
      expect(done.result).toMatchObject({ approved: approval, fetchedBy: starter.pid, decidedBy: decider.pid });
      return done.result as { visits: string[]; report: string };
    };
    expect(await decide('T-1', true)).toMatchObject({ visits: ['fetch', 'confirm', 'report'], report: 'approved: ticket T-1' });
    expect(await decide('T-2', false)).toMatchObject({ visits: ['fetch', 'confirm', 'rejected'], report: 'rejected: ticket T-2' });
  });

  it("RUN_LOCKED names the holder's pid; once it is killed, its lock is taken over", { timeout: 60_000 }, async () => {
    const expected = await reference(kind);
    const work = tempDir();
    const url = urlFor(kind, work);
    const holder = new Child(THREE_STAGE, [url, work, '--hold=prepare']);
    await holder.waitForLine('holding prepare');
    const contender = new Child(THREE_STAGE, [url, work, '--retry-on-stdin'], { stdin: 'pipe' });
    const locked = await contender.json('locked');
    expect(locked).toMatchObject({ code: 'RUN_LOCKED', context: { pid: holder.pid } });
    expect(locked.message).toContain(`pid ${holder.pid}`);

    holder.kill('SIGKILL');
    expect(await holder.exit).toEqual({ code: null, signal: 'SIGKILL' });
    contender.write('go\n');
    await contender.expectExit(0);
    expect(await contender.json('summary')).toMatchObject({ status: 'completed' });
    expect(output(work)).toBe(expected);
    expectEveryItemOnce(work);
    expect(stageRuns(work)).toEqual({ prepare: 1, process: 1, merge: 1 });

    const runId = (await contender.waitForLine('run ')).slice(4);
    const cairn = new Cairn({ store: url });
    try {
      const run = await cairn.get(runId);
      expect(run?.attempts.map((a) => [a.pid, a.outcome])).toEqual([
        [holder.pid, 'crashed'],
        [contender.pid, 'completed'],
      ]);
    } finally {
      await cairn.close();
    }
  });
});
