/**
 * A rate limit shared by `cairn worker` processes: three runs submitted to one store (SQLite,
 * Postgres), three workers that take one run each, each run's 15 items going through
 * `ctx.items(…, { limit: 'api' })` with the limit declared by the pipeline (10 requests per second).
 * Counted from the provider's own log (one line per item as it reaches the provider), no more than
 * 10 calls start in any one-second window, with a tolerance of {@link TOLERANCE_MS}: an item reaches
 * the provider a moment after its grant (the store's reply, the process getting the CPU, the append),
 * and only the spread of that moment can bring two calls closer than their grants were (the grants
 * themselves are checked exactly, by the store's clock, in limits-processes.test.ts). Without the
 * sharing, the three workers would let 30 calls a second through: 11 calls within about 350 ms.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ALL_STORES } from '../engine/store-matrix.js';
import { Child } from './child.js';

const ROOT = path.resolve(import.meta.dirname, '..', '..');
const CLI = path.join(ROOT, 'dist', 'src', 'cli', 'main.js');
const JOB = path.join(import.meta.dirname, 'fixtures', 'limit-items-job.mjs');
const WORKERS = 3;
const CALLS = 15;
const N = 10;
const PER_MS = 1000;
/** Scheduling between a grant and the provider's log line, tolerated on a busy machine. */
const TOLERANCE_MS = 300;

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-limit-workers-'));
afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

describe.concurrent('a limit declared by a pipeline, shared by 3 cairn workers', () => {
  for (const kind of ALL_STORES.filter((k) => k.name === 'sqlite' || k.name === 'postgres')) {
    it(`lets no more than 10 items a second reach the provider (${kind.name} store)`, { timeout: 90_000 }, async () => {
      const url = await kind.freshUrl();
      const dir = fs.mkdtempSync(path.join(work, `${kind.name}-`));
      const log = path.join(dir, 'provider.log');
      for (let w = 0; w < WORKERS; w++) {
        const submit = new Child(CLI, ['submit', JOB, '--store', url, '--input', JSON.stringify({ calls: CALLS, log, tag: `r${w}` })]);
        await submit.expectExit(0);
      }
      const workers = Array.from(
        { length: WORKERS },
        () => new Child(CLI, ['worker', JOB, '--store', url, '--max-runs', '1', '--poll-ms', '50']),
      );
      try {
        for (const worker of workers) await worker.expectExit(0);
      } finally {
        for (const worker of workers) worker.kill('SIGKILL');
      }
      const lines = fs.readFileSync(log, 'utf8').trim().split('\n');
      expect(lines).toHaveLength(WORKERS * CALLS);
      expect(new Set(lines.map((l) => l.split(' ')[1])).size).toBe(WORKERS * CALLS); // each item reached the provider once
      expect(new Set(lines.map((l) => l.split(' ')[2])).size, 'the runs ran in three worker processes').toBe(WORKERS);
      const times = lines.map((l) => Number(l.split(' ')[0])).sort((a, b) => a - b);
      let tightest = Number.POSITIVE_INFINITY;
      for (let i = 0; i + N < times.length; i++) tightest = Math.min(tightest, times[i + N]! - times[i]!);
      expect(tightest, `the tightest ${N + 1} calls span ${tightest} ms`).toBeGreaterThanOrEqual(PER_MS - TOLERANCE_MS);
      const took = times.at(-1)! - times[0]!;
      expect(took).toBeGreaterThanOrEqual(((WORKERS * CALLS) / N - 1) * PER_MS - TOLERANCE_MS);
      console.log(`${kind.name}: ${WORKERS * CALLS} items over ${took} ms in ${WORKERS} workers; tightest ${N + 1} calls ${tightest} ms`);
    });
  }
});
