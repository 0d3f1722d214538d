/**
 * A rate limit shared by real processes: three `node` processes on one store (Postgres, SQLite, a
 * file store), each making 15 calls at once through `ctx.limit('api')` with a limit of 10 requests
 * per second, are never let through more than 10 in any one-second window, counted from the
 * provider's own log (one line per call, appended as the call reaches the provider).
 *
 * Two checks, and their tolerance:
 * - the grants, by the store's clock (the database server's on Postgres): exact, no tolerance.
 *   Any 11 grants span at least one second.
 * - the provider's log, by this machine's clock: a call reaches the provider some time d after its
 *   grant (the reply from the store, the process getting the CPU, the append). Only the spread of d
 *   can bring two calls closer than their grants were, so any 11 calls of the log span at least
 *   1000 − J ms, where J = max d − min d is measured in the same run (on Postgres d also holds the
 *   offset between the server's clock and this one; a constant offset cancels out of J). J itself
 *   must stay under 250 ms, so that the check says something (a few ms here; more on a busy machine).
 *
 * The three stores run at once (each takes about 4 s: 45 calls at 10 per second). Needs
 * `npm run build` (the `pretest` script): the children import `dist/`.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ALL_STORES } from '../engine/store-matrix.js';
import { Child } from './child.js';

const FIXTURE = path.join(import.meta.dirname, 'fixtures', 'limit-child.mjs');
const PROCESSES = 3;
const CALLS = 15;
const N = 10;
const PER_MS = 1000;
const MAX_SPREAD_MS = 250;

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-limit-procs-'));
afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

interface Call {
  readonly reached: number;
  readonly granted: number;
  readonly who: string;
}

/** The smallest span of any N + 1 consecutive times (sorted), and where it starts. */
function tightest(times: readonly number[]): { span: number; from: number } {
  const sorted = [...times].sort((a, b) => a - b);
  let best = { span: Number.POSITIVE_INFINITY, from: Number.NaN };
  for (let i = 0; i + N < sorted.length; i++) {
    const span = sorted[i + N]! - sorted[i]!;
    if (span < best.span) best = { span, from: sorted[i]! };
  }
  return best;
}

describe.concurrent('a limit of 10 requests per second shared by 3 processes', () => {
  for (const kind of ALL_STORES.filter((k) => k.name !== 'memory')) {
    it(`is never exceeded in any one-second window (${kind.name} store)`, { timeout: 60_000 }, async () => {
      const url = await kind.freshUrl();
      const dir = fs.mkdtempSync(path.join(work, `${kind.name}-`));
      const log = path.join(dir, 'provider.log');
      const go = path.join(dir, 'go');
      // the stores run at once: each test ends only its own children (never killAll)
      const children = Array.from({ length: PROCESSES }, (_, i) => new Child(FIXTURE, [url, log, go, String(CALLS), `p${i}`]));
      let results: string[];
      try {
        await Promise.all(children.map((c) => c.waitForLine('ready')));
        fs.writeFileSync(go, '');
        results = await Promise.all(children.map((c) => c.waitForLine('{')));
        for (const child of children) await child.expectExit(0);
      } finally {
        for (const child of children) child.kill('SIGKILL');
      }
      expect(results.map((line) => JSON.parse(line) as unknown)).toEqual(Array(PROCESSES).fill({ status: 'completed', result: CALLS }));

      const calls: Call[] = fs
        .readFileSync(log, 'utf8')
        .trim()
        .split('\n')
        .map((line) => {
          const [reached, granted, who] = line.split(' ');
          return { reached: Number(reached), granted: Number(granted), who: who! };
        });
      expect(calls).toHaveLength(PROCESSES * CALLS);
      expect(new Set(calls.map((c) => c.who)).size).toBe(PROCESSES * CALLS); // each call reached the provider once

      // the grants: exact
      const grants = tightest(calls.map((c) => c.granted));
      expect(grants.span, `${N + 1} grants from ${grants.from} within ${grants.span} ms`).toBeGreaterThanOrEqual(PER_MS);
      // the provider's log, with the tolerance measured in this run
      const delays = calls.map((c) => c.reached - c.granted);
      const spread = Math.max(...delays) - Math.min(...delays);
      expect(spread, 'spread of grant → provider delays (ms)').toBeLessThan(MAX_SPREAD_MS);
      const provider = tightest(calls.map((c) => c.reached));
      expect(
        provider.span,
        `${N + 1} calls in the provider's log from ${provider.from} within ${provider.span} ms (J = ${spread} ms)`,
      ).toBeGreaterThanOrEqual(PER_MS - spread);
      // it did have to wait, and not much longer than the limit makes it: 45 calls at 10 per second
      const granted = calls.map((c) => c.granted);
      const took = Math.max(...granted) - Math.min(...granted);
      expect(took).toBeGreaterThanOrEqual(((PROCESSES * CALLS) / N - 1) * PER_MS);
      expect(took).toBeLessThan(((PROCESSES * CALLS) / N + 3) * PER_MS);
      console.log(
        `${kind.name}: 45 calls over ${took.toFixed(0)} ms; tightest ${N + 1} grants ${grants.span.toFixed(1)} ms, provider log ${provider.span} ms, J = ${spread.toFixed(1)} ms`,
      );
    });
  }
});
