/**
 * P6's child process: runs one N-item stage (cairn) or the bare loop with the same results kept,
 * then prints its peak RSS (VmHWM, and RSS sampled every 20 ms) and its RSS before the work started.
 * Usage: node dist/bench/p6-child.js <cairn|bare> <N> <dir>
 */
import fs from 'node:fs';
import path from 'node:path';
import { Cairn, pipeline } from '../src/index.js';
import { bareFileLoopCrc } from './p1-items.js';

/** Peak RSS of this process in bytes (VmHWM of /proc/self/status), or undefined off Linux. */
function highWaterRss(): number | undefined {
  try {
    const match = /^VmHWM:\s*(\d+)\s*kB/m.exec(fs.readFileSync('/proc/self/status', 'utf8'));
    return match ? Number(match[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}

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
    // the results a caller keeps, and the same durable appends as P1's bare loop with CRC-32 (as before
    // P1's peer became the k/v loop, so P6's figures stay comparable)
    const results: number[] = [];
    for (const x of list) results.push(await Promise.resolve(x));
    kept = results.length;
    fs.mkdirSync(dir, { recursive: true });
    bareFileLoopCrc(path.join(dir, 'bare.jsonl'), n);
  }
  clearInterval(sampler);
  // VmHWM is this process image's own high-water mark; getrusage's maxRSS is not: Linux carries the
  // parent's RSS over fork + exec into it.
  const peak = Math.max(highWaterRss() ?? 0, sampledPeak);
  process.stdout.write(`${JSON.stringify({ mode, n, baseline, peak, kept })}\n`);
}

main().catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
