/**
 * examples/mining-job through the built `cairn` command, as its README runs it. An uninterrupted
 * run gives the reference claims.json; then, in each durability mode, a run from scratch is
 * SIGKILLed at random moments (most kills once the process has paid for a random number of calls
 * during `mine`, a few at a random time after the spawn) and resumed until it completes: claims.json
 * must be byte-identical, no stage may start again once the store says it completed, and the paid
 * calls stay within segments + kills × (checkpointEvery + concurrency) ('batch') or
 * segments + kills × concurrency ('item'). Then, on the default 20,000 segments: a failure
 * injected at one segment fails the run (exit 1) with an error checkpoint and every result so far;
 * resuming pays for no segment twice; the completed job returns its cached result without a call.
 */
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { Child, killByProgress } from '../e2e/child.js';
import { costUsd } from '../../examples/mining-job/provider.js';
import { durableState, useParentDir, watchCompletedStages } from './example-helpers.js';

const ROOT = path.resolve(import.meta.dirname, '..', '..');
const CLI = path.join(ROOT, 'dist', 'src', 'cli', 'main.js');
const MODULE = 'examples/mining-job/index.ts';
const KILLS = process.env.CAIRN_TORTURE === '1' ? 50 : 6;
/** The killed runs: small enough to stay fast, with a bound that means something. */
const SEGMENTS = process.env.CAIRN_TORTURE === '1' ? 6000 : 2000;
const CHECKPOINT_EVERY = 50;
const CONCURRENCY = 8;
const CALL_MS = 2;

const parent = useParentDir('mining');

interface Job {
  readonly store: string;
  readonly outDir: string;
  readonly input: Record<string, unknown>;
}

function newJob(name: string, input: Record<string, unknown>): Job {
  const dir = path.join(parent, name);
  const outDir = path.join(dir, 'out');
  return { store: `file:${path.join(dir, 'store')}`, outDir, input: { ...input, outDir } };
}

function start(job: Job, env: Record<string, string> = {}): Child {
  return new Child(CLI, ['run', MODULE, '--store', job.store, '--input', JSON.stringify(job.input), '--json'], {
    cwd: ROOT,
    // no rate limit here (these tests measure crashes and throughput); the budget test below runs under it
    env: { ...process.env, NO_COLOR: '1', MINING_CALL_MS: String(CALL_MS), MINING_RPM: 'off', ...env },
  });
}

const readLines = (file: string): string[] => (fs.existsSync(file) ? fs.readFileSync(file, 'utf8').split('\n').slice(0, -1) : []);
const paidKeys = (job: Job): string[] => readLines(path.join(job.outDir, 'paid-calls.log')).map((l) => l.split('\t')[0]!);
/** Stages started, one per `start <stage> pid=…` line of job.log. */
const stageStarts = (job: Job): string[] => readLines(path.join(job.outDir, 'job.log')).map((l) => l.split(' ')[1]!);
const claimsOf = (job: Job): string => fs.readFileSync(path.join(job.outDir, 'claims.json'), 'utf8');
/** The parts of `--json` documents this test reads. */
interface SummaryJson {
  id: string;
  status: string;
  error?: { code?: string; stage?: string; message: string };
  result?: { segments: number; paidCalls: { run: number; repeated: number; lastProcess: number } };
}
interface ShowJson {
  ledgers: { done: number; failed: number; total: number }[];
  checkpoints: { kind: string; stage?: string }[];
}
const summaryOf = (child: Child): SummaryJson => JSON.parse(child.lines.join('\n')) as SummaryJson;

/** `cairn show --json`. */
async function show(job: Job, id: string): Promise<ShowJson> {
  const child = new Child(CLI, ['show', id, '--store', job.store, '--json'], { cwd: ROOT });
  await child.expectExit(0);
  return JSON.parse(child.lines.join('\n')) as ShowJson;
}

/**
 * Runs the job again and again, SIGKILLing each process at a random moment, until `kills` kills
 * landed; then lets it complete. Checks after each process that it started no stage the store
 * already held as completed.
 */
async function runWithKills(job: Job, segments: number): Promise<{ kills: number; killsInMine: number; processes: number; last: Child }> {
  const stages = watchCompletedStages(job.store, () => stageStarts(job));
  const result = await killByProgress({
    kills: KILLS,
    start: () => start(job),
    done: () => paidKeys(job).length,
    left: () => segments - new Set(paidKeys(job)).size,
    watch: stages.watch,
  });
  await result.last.expectExit(0);
  expect(stages.reruns, 'a stage started again after the store held it as completed').toEqual([]);
  return { kills: result.kills, killsInMine: result.killsAfterWork, processes: result.processes, last: result.last };
}

let reference: Promise<string> | undefined;
/** claims.json of an uninterrupted run; exactly one paid call per segment. */
function referenceClaims(): Promise<string> {
  reference ??= (async () => {
    const job = newJob('reference', { segments: SEGMENTS, checkpointEvery: CHECKPOINT_EVERY, concurrency: CONCURRENCY });
    const child = start(job);
    await child.expectExit(0);
    const summary = summaryOf(child);
    expect(summary.status).toBe('completed');
    expect(summary.result).toMatchObject({ segments: SEGMENTS, paidCalls: { run: SEGMENTS, repeated: 0, lastProcess: SEGMENTS } });
    expect(paidKeys(job)).toHaveLength(SEGMENTS);
    expect(stageStarts(job)).toEqual(['parse', 'mine', 'store']);
    return claimsOf(job);
  })();
  return reference;
}

describe('mining-job under kill -9', () => {
  it.each([
    ['batch', CHECKPOINT_EVERY + CONCURRENCY],
    ['item', CONCURRENCY],
  ] as const)(
    `durability %s: ${KILLS} SIGKILLs, same claims.json, paid calls ≤ segments + kills × %i`,
    { timeout: 60_000 + KILLS * 2_000 },
    async (durability, window) => {
      const expected = await referenceClaims();
      const job = newJob(`killed-${durability}`, {
        segments: SEGMENTS,
        checkpointEvery: CHECKPOINT_EVERY,
        concurrency: CONCURRENCY,
        durability,
      });
      const started = Date.now();
      const { kills, killsInMine, processes, last } = await runWithKills(job, SEGMENTS);
      expect(kills).toBeGreaterThanOrEqual(KILLS);
      expect(killsInMine, 'kills that landed during mine').toBeGreaterThanOrEqual(KILLS / 2);
      expect(summaryOf(last)).toMatchObject({ status: 'completed', result: { segments: SEGMENTS } });
      expect(claimsOf(job)).toBe(expected);

      const paid = paidKeys(job);
      expect(new Set(paid).size).toBe(SEGMENTS);
      expect(paid.length).toBeLessThanOrEqual(SEGMENTS + kills * window);
      expect(summaryOf(last).result?.paidCalls).toMatchObject({ run: paid.length, repeated: paid.length - SEGMENTS });
      const { id } = await durableState(job.store);
      const details = await show(job, id!);
      expect(details.ledgers).toEqual([expect.objectContaining({ done: SEGMENTS, failed: 0 })]);
      console.log(
        `[mining-job ${durability}] ${kills} kills (${killsInMine} during mine), ${processes} processes, ${paid.length} paid calls for ${SEGMENTS} segments ` +
          `(${paid.length - SEGMENTS} repeated; bound ${kills * window}), ${((Date.now() - started) / 1000).toFixed(1)}s`,
      );
    },
  );
});

describe('mining-job: error checkpoint, resume, cached result (20,000 segments)', () => {
  it('fails at the injected segment keeping every result, resumes paying for no segment twice, then returns the cached result', async () => {
    const job = newJob('failure', {}); // the defaults: 20,000 segments, checkpointEvery 250, concurrency 8
    const failing = start(job, { MINING_FAIL_AT: '12345', MINING_CALL_MS: '0' });
    await failing.expectExit(1);
    const failedRun = summaryOf(failing);
    expect(failedRun).toMatchObject({ status: 'failed', error: { code: 'ITEM_FAILED', stage: 'mine' } });
    expect(failedRun.error?.message).toContain('seg-12345');
    const details = await show(job, failedRun.id);
    expect(details.checkpoints.map((c) => `${c.kind} ${c.stage}`)).toEqual(['stage parse', 'error mine']);
    const [ledger] = details.ledgers;
    const paidBefore = paidKeys(job);
    // items are taken in order: every segment before the failing one was mined, and every paid call is saved
    expect(ledger).toMatchObject({ done: paidBefore.length, failed: 1, total: 20_000 });
    expect(paidBefore.length).toBeGreaterThanOrEqual(12_345);
    expect(paidBefore.length).toBeLessThan(12_345 + CONCURRENCY);

    const resumed = start(job, { MINING_CALL_MS: '0' });
    await resumed.expectExit(0);
    expect(summaryOf(resumed)).toMatchObject({
      status: 'completed',
      result: { segments: 20_000, paidCalls: { run: 20_000, repeated: 0, lastProcess: 20_000 - paidBefore.length } },
    });
    const paid = paidKeys(job);
    expect(paid).toHaveLength(20_000);
    expect(new Set(paid).size).toBe(20_000);
    expect(stageStarts(job)).toEqual(['parse', 'mine', 'mine', 'store']);
    const claims = claimsOf(job);
    expect(JSON.parse(claims)).toMatchObject({ episode: 'episode-0042', segments: 20_000 });

    const t0 = Date.now();
    const cached = new Child(CLI, ['run', MODULE, '--store', job.store, '--input', JSON.stringify(job.input)], { cwd: ROOT });
    await cached.expectExit(0);
    const cachedMs = Date.now() - t0;
    expect(cached.lines[0]).toMatch(
      /^Run mining-job-[0-9a-f]{16} was already complete .*no stage ran \(a stage.s code is not fingerprinted/,
    );
    expect(paidKeys(job)).toHaveLength(20_000);
    expect(stageStarts(job)).toHaveLength(4);
    expect(claimsOf(job)).toBe(claims);
    console.log(`[mining-job] failed at seg-12345 with ${paidBefore.length} results saved; cached result in ${cachedMs}ms`);
  });
});

/** Cost of one paid-calls.log line, as the stand-in bills it (`key\tinput\toutput`). */
function lineCost(line: string): { segment: string; usd: number } {
  const [key, input, output] = line.split('\t');
  return { segment: key!.split('/').at(-1)!, usd: costUsd({ inputTokens: Number(input), outputTokens: Number(output) }) };
}

describe('mining-job with a budget, under SIGTERM and kill -9', () => {
  it(
    'pauses at the budget (exit 3) through a SIGTERM and kills, waits again without a raise, then completes paying for no saved segment twice',
    { timeout: 120_000 },
    async () => {
      const expected = await referenceClaims();
      const costs = new Map(
        readLines(path.join(parent, 'reference', 'out', 'paid-calls.log')).map((l) => [lineCost(l).segment, lineCost(l).usd]),
      );
      const totalUsd = [...costs.values()].reduce((a, b) => a + b, 0);
      const maxCallUsd = Math.max(...costs.values());
      const budgetUsd = Number((totalUsd * 0.5).toFixed(6));
      const job = newJob('budget', { segments: SEGMENTS, checkpointEvery: CHECKPOINT_EVERY, concurrency: CONCURRENCY, durability: 'item' });
      const startBudgeted = (env: Record<string, string> = {}): Child =>
        new Child(
          CLI,
          ['run', MODULE, '--store', job.store, '--input', JSON.stringify(job.input), '--budget', `usd=${budgetUsd}`, '--json'],
          {
            cwd: ROOT,
            env: { ...process.env, NO_COLOR: '1', MINING_CALL_MS: String(CALL_MS), ...env },
          },
        );

      // SIGTERM once a tenth of the segments is paid for: in-flight calls finish and are saved (slower calls: it lands before the budget)
      const stopped = startBudgeted({ MINING_CALL_MS: '10' });
      const deadline = Date.now() + 60_000;
      while (paidKeys(job).length < SEGMENTS / 10) {
        if (Date.now() > deadline)
          throw new Error(`waited 60 s for ${SEGMENTS / 10} paid calls before the SIGTERM; saw ${paidKeys(job).length}`);
        if (!stopped.isRunning) throw new Error(`the run exited before the SIGTERM: ${stopped.lines.join(' | ')} ${stopped.stderr}`);
        await new Promise((resolve) => setTimeout(resolve, 5));
      }
      stopped.kill('SIGTERM');
      await stopped.expectExit(143);
      expect(summaryOf(stopped)).toMatchObject({ status: 'interrupted' });
      const paidAtTerm = paidKeys(job);
      expect(new Set(paidAtTerm).size, 'SIGTERM: every paid call was saved, none repeated').toBe(paidAtTerm.length);

      // kill -9 at random moments until a process runs on to the budget and waits there (exit 3)
      const { kills, last } = await killByProgress({
        kills: 3,
        start: () => startBudgeted(),
        done: () => paidKeys(job).length,
        left: () => Math.max(1, SEGMENTS / 2 - new Set(paidKeys(job)).size),
      });
      await last.expectExit(3);
      const paused = summaryOf(last) as SummaryJson & { waitingFor?: string; spend?: { usd: number }; budget?: { usd: number } };
      expect(paused).toMatchObject({ status: 'waiting', waitingFor: 'budget', budget: { usd: budgetUsd } });
      // the budget was reached, and overshot by no more than the calls in flight when it was
      expect(paused.spend!.usd).toBeGreaterThanOrEqual(budgetUsd);
      expect(paused.spend!.usd - budgetUsd).toBeLessThanOrEqual(CONCURRENCY * maxCallUsd);
      const pausedDetails = await show(job, paused.id);
      const savedAtPause = pausedDetails.ledgers[0]!.done;
      // show --json projects what the whole call will cost at the spend per segment so far
      const projected = (pausedDetails.ledgers[0] as { projectedSpend?: { usd: number } }).projectedSpend;
      expect(projected?.usd).toBeGreaterThan(totalUsd * 0.8);
      expect(projected?.usd).toBeLessThan(totalUsd * 1.2);
      expect(savedAtPause).toBeLessThan(SEGMENTS);
      // what the run counts is what it saved: each saved segment's cost once
      const paidAtPause = paidKeys(job);
      expect(paused.spend!.usd).toBeLessThanOrEqual(paidAtPause.reduce((n, k) => n + costs.get(k.split('/').at(-1)!)!, 0) + 1e-9);

      // the same command again, with the same budget: nothing is paid, the run waits at once
      const again = startBudgeted();
      await again.expectExit(3);
      expect(summaryOf(again)).toMatchObject({ status: 'waiting', waitingFor: 'budget' });
      expect(paidKeys(job)).toHaveLength(paidAtPause.length);

      // raise it: the run completes; no segment saved before the pause is paid for again
      const raised = new Child(CLI, ['resume', paused.id, '--store', job.store, '--budget', 'usd=10', '--json'], {
        cwd: ROOT,
        env: { ...process.env, NO_COLOR: '1', MINING_CALL_MS: String(CALL_MS) },
      });
      await raised.expectExit(0);
      const done = summaryOf(raised) as SummaryJson & { spend?: { usd: number } };
      expect(done).toMatchObject({ status: 'completed', result: { segments: SEGMENTS } });
      expect(claimsOf(job)).toBe(expected);
      const paid = paidKeys(job);
      expect(paid.length - paidAtPause.length, 'calls after the raise: only the segments not saved at the pause').toBe(
        SEGMENTS - savedAtPause,
      );
      expect(new Set(paid).size).toBe(SEGMENTS);
      expect(paid.length - SEGMENTS, 'repeats: only calls in flight at a kill -9').toBeLessThanOrEqual(kills * CONCURRENCY);
      expect(done.spend!.usd).toBeCloseTo(totalUsd, 9);
      console.log(
        `[mining-job budget] budget usd ${budgetUsd} of ${totalUsd.toFixed(6)}: paused at usd ${paused.spend!.usd.toFixed(6)} with ${savedAtPause} segments saved, ` +
          `${kills} kills + 1 SIGTERM, ${paid.length - SEGMENTS} repeated calls; completed at usd ${done.spend!.usd.toFixed(6)}`,
      );
    },
  );
});
