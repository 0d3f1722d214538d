/**
 * P5 resume: a stage with N items done and one left (the ledger built by the engine). Time from
 * opening the run (new Cairn + cairn.run of the same input) to the start of the remaining item,
 * against reading and parsing the same ledger file bare (readFile + split + JSON.parse per line).
 */
import fs from 'node:fs';
import path from 'node:path';
import { Cairn, pipeline } from '../src/index.js';
import { type BenchOptions, type Row, listFiles, makeTempDir, median, now, removeDir, settle } from './lib/util.js';

function bareParse(file: string): number {
  const start = now();
  const lines = fs.readFileSync(file, 'utf8').split('\n');
  let parsed = 0;
  for (const line of lines) {
    if (line.length === 0) continue;
    JSON.parse(line);
    parsed++;
  }
  const ms = now() - start;
  if (parsed === 0) throw new Error('P5: the ledger is empty');
  return ms;
}

export async function runP5(opts: BenchOptions): Promise<Row[]> {
  const done = opts.quick ? 100_000 : 1_000_000;
  const reps = 3;
  const list = Array.from({ length: done + 1 }, (_, i) => i);
  const lastKey = String(done);
  // The last item fails while `failLast` holds, so the run stops with every other item done.
  let failLast = true;
  let reachedLast = Number.NaN;
  const def = pipeline('bench-resume', { version: '1' }).stage('items', async (ctx) => {
    const results = await ctx.items('items', list, async (x, info) => {
      if (info.key === lastKey) {
        reachedLast = now();
        if (failLast) throw new Error('left for the resume benchmark');
      }
      return x;
    });
    return { count: results.length };
  });
  const dir = makeTempDir('p5', opts.tmpRoot);
  const storeUrl = `file:${path.join(dir, 'store')}`;
  try {
    const buildStart = now();
    const builder = new Cairn({ store: storeUrl, handleSignals: false });
    try {
      const run = await builder.run(def, { done });
      if (run.status !== 'failed') throw new Error(`P5 build ended ${run.status}, expected failed on the last item`);
    } finally {
      await builder.close();
    }
    opts.log(`  P5 ledger of ${done.toLocaleString('en-US')} items built in ${((now() - buildStart) / 1000).toFixed(1)} s`);
    const ledgers = listFiles(path.join(dir, 'store')).filter((f) => f.includes(`${path.sep}items${path.sep}`) && f.endsWith('.jsonl'));
    if (ledgers.length !== 1) throw new Error(`P5: expected one ledger file, found ${ledgers.length}`);
    const ledger = ledgers[0]!;
    const ledgerBytes = fs.statSync(ledger).size;

    const cairnMs: number[] = [];
    const bareMs: number[] = [];
    for (let rep = 0; rep < reps; rep++) {
      failLast = rep < reps - 1; // the last repetition lets the item succeed and the run complete
      bareMs.push(bareParse(ledger));
      await settle(200);
      reachedLast = Number.NaN;
      const start = now();
      const cairn = new Cairn({ store: storeUrl, handleSignals: false });
      try {
        const run = await cairn.run(def, { done });
        const expected = failLast ? 'failed' : 'completed';
        if (run.status !== expected) throw new Error(`P5 resume ended ${run.status}, expected ${expected}`);
      } finally {
        await cairn.close();
      }
      if (Number.isNaN(reachedLast)) throw new Error('P5: the remaining item never started');
      cairnMs.push(reachedLast - start);
      await settle(200);
    }
    const cairn = median(cairnMs);
    const bare = median(bareMs);
    const bench = `P5 resume (${done.toLocaleString('en-US')} done, 1 left)`;
    return [
      {
        bench,
        peer: 'bare: readFile + split + JSON.parse',
        figure: 'ms',
        value: bare,
        samples: bareMs,
        note: `ledger ${(ledgerBytes / 1024 / 1024).toFixed(1)} MiB`,
      },
      {
        bench,
        peer: 'cairn file store: open run → item starts',
        figure: 'ms',
        value: cairn,
        samples: cairnMs,
        ratioOf: 'cairn ÷ bare',
        ratio: cairn / bare,
        goal: '≤ 2',
        met: cairn / bare <= 2,
      },
    ];
  } finally {
    removeDir(dir);
  }
}
