/**
 * examples/documents through the built `cairn` command, as its README runs it. The first run ends
 * failed (exit 1) with the flaky chunks failed and every other chunk completed (status.json and
 * `cairn show` agree); the next run (a hand-written orchestrator's `resumeProcessing`) calls only the failed chunks and
 * writes report.json. Then a run from scratch is SIGKILLed at random moments during `process` and
 * resumed until it completes: report.json must be byte-identical, no stage may start again once the
 * store says it completed, and every chunk ends done exactly once in the ledger.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { expect, it } from 'vitest';
import { Child, killByProgress } from '../e2e/child.js';
import { durableState, useParentDir, watchCompletedStages } from './example-helpers.js';

const ROOT = path.resolve(import.meta.dirname, '..', '..');
const CLI = path.join(ROOT, 'dist', 'src', 'cli', 'main.js');
const MODULE = 'examples/documents/index.ts';
const KILLS = process.env.CAIRN_TORTURE === '1' ? 50 : 6;
const CONCURRENCY = 4;
/** Chunks of about 200 words: 4 documents of 8,000 words (12,000 under torture) give some 160 (240) chunks. */
const INPUT = { documents: 4, words: process.env.CAIRN_TORTURE === '1' ? 12_000 : 8_000, chunkWords: 200, concurrency: CONCURRENCY };
const FLAKY_EVERY = 6;

const parent = useParentDir('documents');

interface Job {
  readonly store: string;
  readonly outDir: string;
  readonly input: Record<string, unknown>;
}

function newJob(name: string): Job {
  const dir = path.join(parent, name);
  const outDir = path.join(dir, 'out');
  return { store: `file:${path.join(dir, 'store')}`, outDir, input: { ...INPUT, outDir } };
}

function start(job: Job): Child {
  return new Child(CLI, ['run', MODULE, '--store', job.store, '--input', JSON.stringify(job.input), '--json'], {
    cwd: ROOT,
    env: { ...process.env, NO_COLOR: '1', DOCUMENTS_CHUNK_MS: '4', DOCUMENTS_FLAKY_EVERY: String(FLAKY_EVERY) },
  });
}

const readLines = (file: string): string[] => (fs.existsSync(file) ? fs.readFileSync(file, 'utf8').split('\n').slice(0, -1) : []);
/** `<chunk key> try=<n>` per call of the chunk processor. */
const calls = (job: Job): string[] => readLines(path.join(job.outDir, 'calls.log'));
const stageStarts = (job: Job): string[] => readLines(path.join(job.outDir, 'job.log')).map((l) => l.split(' ')[1]!);
/** The parts of the files and `--json` documents this test reads. */
interface SummaryJson {
  id: string;
  status: string;
  error?: { stage?: string; message: string };
}
interface StatusJson {
  state: string;
  chunks: { total: number; completed: number; failed: number; pending: number };
  perDocument: { document: string; failed: number }[];
  failures: { key: string }[];
  thisAttempt: { processed: number };
}
interface ReportJson {
  documents: { name: string; chunks: number; retriedChunks: number; words: number; keywords: Record<string, number> }[];
  totals: { documents: number; chunks: number; completed: number; retriedChunks: number; words: number };
}
const readJson = <T>(job: Job, name: string): T => JSON.parse(fs.readFileSync(path.join(job.outDir, name), 'utf8')) as T;
const summaryOf = (child: Child): SummaryJson => JSON.parse(child.lines.join('\n')) as SummaryJson;
const isFlaky = (key: string): boolean => createHash('sha256').update(key).digest().readUInt32BE(0) % FLAKY_EVERY === 0;

async function show(job: Job, id: string): Promise<{ ledgers: { done: number; failed: number; total: number }[] }> {
  const child = new Child(CLI, ['show', id, '--store', job.store, '--json'], { cwd: ROOT });
  await child.expectExit(0);
  return JSON.parse(child.lines.join('\n')) as { ledgers: { done: number; failed: number; total: number }[] };
}

let reference: Promise<{ report: string; chunks: string[] }> | undefined;

/** The failed first pass, the resume that retries only the failed chunks, and the report they give. */
function referenceRun(): Promise<{ report: string; chunks: string[] }> {
  reference ??= (async () => {
    const job = newJob('reference');
    const first = start(job);
    await first.expectExit(1);
    const failedRun = summaryOf(first);
    expect(failedRun).toMatchObject({ status: 'failed', error: { stage: 'process' } });
    expect(failedRun.error?.message).toMatch(/^\d+ of \d+ chunks failed .*resuming retries only the failed ones$/);

    const chunks = calls(job).map((l) => l.split(' ')[0]!);
    expect(new Set(chunks).size).toBe(chunks.length); // every chunk tried once
    const flaky = chunks.filter(isFlaky);
    expect(flaky.length).toBeGreaterThan(0);
    expect(flaky.length).toBeLessThan(chunks.length / 2);

    // chunk states: completed / pending / failed, as a hand-written orchestrator keeps them, as status.json and cairn show report them
    const status = readJson<StatusJson>(job, 'status.json');
    expect(status).toMatchObject({
      state: 'partial',
      chunks: { total: chunks.length, completed: chunks.length - flaky.length, failed: flaky.length, pending: 0 },
    });
    expect(status.failures.map((f) => f.key).sort()).toEqual([...flaky].sort());
    expect(status.perDocument.reduce((n, d) => n + d.failed, 0)).toBe(flaky.length);
    expect(status.thisAttempt.processed).toBe(chunks.length - flaky.length);
    const [ledger] = (await show(job, failedRun.id)).ledgers;
    expect(ledger).toMatchObject({ done: chunks.length - flaky.length, failed: flaky.length, total: chunks.length });

    // resumeProcessing: only the failed chunks are called again, on their second try
    const resumed = start(job);
    await resumed.expectExit(0);
    expect(calls(job).slice(chunks.length).sort()).toEqual(flaky.map((k) => `${k} try=2`).sort());
    expect(stageStarts(job)).toEqual(['load', 'chunk', 'process', 'process', 'report']);
    expect(summaryOf(resumed)).toMatchObject({
      status: 'completed',
      result: { chunks: chunks.length, completed: chunks.length, failed: 0, pending: 0, retriedChunks: flaky.length },
    });
    expect(readJson<StatusJson>(job, 'status.json')).toMatchObject({ state: 'completed', chunks: { completed: chunks.length, failed: 0 } });

    const report = readJson<ReportJson>(job, 'report.json');
    expect(report.totals).toMatchObject({ documents: 4, chunks: chunks.length, completed: chunks.length, retriedChunks: flaky.length });
    for (const doc of report.documents) {
      const mine = chunks.filter((k) => k.startsWith(`${doc.name}#`));
      expect(doc).toMatchObject({ chunks: mine.length, retriedChunks: mine.filter(isFlaky).length });
      expect(doc.words).toBeGreaterThan(INPUT.words * 0.9);
      expect(Object.keys(doc.keywords)).toHaveLength(8);
    }
    expect(report.totals.words).toBe(report.documents.reduce((n, d) => n + d.words, 0));

    // complete: the cached result, nothing called
    const cached = start(job);
    await cached.expectExit(0);
    expect(calls(job)).toHaveLength(chunks.length + flaky.length);
    return { report: fs.readFileSync(path.join(job.outDir, 'report.json'), 'utf8'), chunks };
  })();
  return reference;
}

it('first run: flaky chunks failed, the rest completed; resume retries only the failed chunks', { timeout: 30_000 }, async () => {
  const { chunks } = await referenceRun();
  console.log(`[documents] ${chunks.length} chunks, ${chunks.filter(isFlaky).length} failed on their first try`);
});

it(
  `survives ${KILLS} SIGKILLs during process: same report.json, no completed stage rerun`,
  { timeout: 60_000 + KILLS * 2_000 },
  async () => {
    const expected = await referenceRun();
    const job = newJob('killed');
    const started = Date.now();
    const stages = watchCompletedStages(job.store, () => stageStarts(job));
    const {
      kills,
      passes: failedExits,
      last,
      processes,
    } = await killByProgress({
      kills: KILLS,
      start: () => start(job),
      done: () => calls(job).length,
      left: () => expected.chunks.length - new Set(calls(job).map((l) => l.split(' ')[0])).size,
      watch: stages.watch,
      // a pass that got to the end with flaky chunks failed: the next run retries them
      again: (exit, child) => {
        if (exit.code !== 1) return false;
        expect(summaryOf(child)).toMatchObject({ status: 'failed', error: { stage: 'process' } });
        return true;
      },
    });
    await last.expectExit(0);
    expect(kills).toBeGreaterThanOrEqual(KILLS);
    expect(stages.reruns, 'a stage started again after the store held it as completed').toEqual([]);
    expect(fs.readFileSync(path.join(job.outDir, 'report.json'), 'utf8')).toBe(expected.report);
    const { id } = await durableState(job.store);
    const [ledger] = (await show(job, id!)).ledgers;
    expect(ledger).toMatchObject({ done: expected.chunks.length, failed: 0, total: expected.chunks.length });
    const called = new Set(calls(job).map((l) => l.split(' ')[0]));
    expect(called.size).toBe(expected.chunks.length);
    console.log(
      `[documents] ${kills} kills, ${failedExits} failed pass(es), ${processes} processes, ${calls(job).length} chunk calls ` +
        `(uninterrupted: ${expected.chunks.length + expected.chunks.filter(isFlaky).length}), ${((Date.now() - started) / 1000).toFixed(1)}s`,
    );
  },
);
