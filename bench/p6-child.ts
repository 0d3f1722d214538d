/**
 * P6's child process: runs one N-item stage (cairn) or the bare loop with the same results kept,
 * then prints its peak RSS (getrusage maxRSS) and the RSS sampled before the work started.
 * Usage: node dist/bench/p6-child.js <cairn|bare> <N> <dir>
 */
import fs from 'node:fs';
import path from 'node:path';
import { Cairn, pipeline } from '../src/index.js';
import { bareFileLoop } from './p1-items.js';

async function main(): Promise<void> {
  const [mode, nText, dir] = process.argv.slice(2);
  const n = Number(nText);
  if ((mode !== 'cairn' && mode !== 'bare') || !Number.isInteger(n) || !dir) throw new Error('usage: p6-child <cairn|bare> <N> <dir>');
  const list = Array.from({ length: n }, (_, i) => i);
  let sampledPeak = process.memoryUsage().rss;
  const sampler = setInterval(() => {
    sampledPeak = Math.max(sampledPeak, process.memoryUsage().rss);
  }, 20);
  const baseline = process.memoryUsage().rss;
  let kept = 0;
  if (mode === 'cairn') {
    const def = pipeline('bench-memory', { version: '1' }).stage('items', async (ctx) => {
      const results = await ctx.items('items', list, async (x) => x);
      kept = results.length;
      return { count: results.length };
    });
    const cairn = new Cairn({ store: `file:${path.join(dir, 'store')}`, handleSignals: false });
    try {
      const run = await cairn.run(def, { n });
      if (run.status !== 'completed') throw new Error(`P6 run ended ${run.status}`);
    } finally {
      await cairn.close();
    }
  } else {
    // the results a caller keeps, and the same durable appends as P1's bare loop
    const results: number[] = [];
    for (const x of list) results.push(await Promise.resolve(x));
    kept = results.length;
    fs.mkdirSync(dir, { recursive: true });
    bareFileLoop(path.join(dir, 'bare.jsonl'), n);
  }
  clearInterval(sampler);
  const peak = Math.max(process.resourceUsage().maxRSS * 1024, sampledPeak);
  process.stdout.write(`${JSON.stringify({ mode, n, baseline, peak, kept })}\n`);
}

main().catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
