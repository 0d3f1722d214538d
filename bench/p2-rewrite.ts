/**
 * P2, against a rewrite loop: after every item, rewrite the whole JSON state file (all results so
 * far) and fsync it, as hand-written checkpoint loops do. That costs O(n²) over a run; cairn
 * appends to a ledger in batches.
 */
import fs from 'node:fs';
import path from 'node:path';
import { Cairn, pipeline } from '../src/index.js';
import { cairnItems } from './p1-items.js';
import { type BenchOptions, type Row, makeTempDir, median, now, removeDir, settle } from './lib/util.js';

interface RewriteResult {
  readonly ms: number;
  /** True when the peer ran out of its time budget and `ms` comes from a fitted curve. */
  readonly extrapolated: boolean;
  readonly itemsMeasured: number;
}

/**
 * The common hand-written checkpoint loop (`checkpoint_path.write_text(json.dumps(checkpoint))` in
 * Python, plus an fsync): state holds every result so far. Stops after `budgetMs` and extrapolates
 * with t(n) = b·n + c·n² fitted (least squares) to the cumulative times measured so far.
 */
function rewriteLoop(file: string, n: number, budgetMs: number): RewriteResult {
  const state: { stage: string; processed: number; results: Record<string, number> } = { stage: 'items', processed: 0, results: {} };
  const samples: [number, number][] = [];
  const start = now();
  for (let i = 0; i < n; i++) {
    state.results[String(i)] = i;
    state.processed = i + 1;
    const fd = fs.openSync(file, 'w');
    fs.writeSync(fd, JSON.stringify(state));
    fs.fdatasyncSync(fd);
    fs.closeSync(fd);
    if ((i + 1) % 100 === 0) {
      const elapsed = now() - start;
      samples.push([i + 1, elapsed]);
      if (elapsed > budgetMs && i + 1 < n) return { ms: extrapolate(samples, n), extrapolated: true, itemsMeasured: i + 1 };
    }
  }
  return { ms: now() - start, extrapolated: false, itemsMeasured: n };
}

/** Least squares of t = b·n + c·n² through the samples, evaluated at `n`. */
function extrapolate(samples: readonly [number, number][], n: number): number {
  let s11 = 0;
  let s12 = 0;
  let s22 = 0;
  let s1t = 0;
  let s2t = 0;
  for (const [x, t] of samples) {
    const x2 = x * x;
    s11 += x * x;
    s12 += x * x2;
    s22 += x2 * x2;
    s1t += x * t;
    s2t += x2 * t;
  }
  const det = s11 * s22 - s12 * s12;
  const b = (s1t * s22 - s12 * s2t) / det;
  const c = (s11 * s2t - s12 * s1t) / det;
  return b * n + c * n * n;
}

export async function runP2(opts: BenchOptions): Promise<Row[]> {
  const sizes = opts.quick ? [1_000, 5_000] : [1_000, 10_000, 50_000];
  // The quadratic peer would take many minutes at 50,000 on a slow disk: cap it and extrapolate.
  const budgetMs = opts.quick ? 15_000 : 240_000;
  const rows: Row[] = [];
  const cairnMs = new Map<number, number>();
  const cairnItemMs = new Map<number, number>();
  // warm-up, as in P1: the engine's item path JIT-compiled whether or not P1 ran first
  const warm = makeTempDir('p2-warm', opts.tmpRoot);
  try {
    await cairnItems(`file:${path.join(warm, 'store')}`, 5_000, 'p2-warm');
  } finally {
    removeDir(warm);
  }
  // cairn's figures first, for every size, so that the heap the quadratic peer leaves behind (gigabytes of
  // garbage strings) does not slow cairn's next size: the linearity figure compares like with like
  const cairnRuns = new Map<number, number[]>();
  for (const n of sizes) {
    const dir = makeTempDir('p2', opts.tmpRoot);
    try {
      // cairn's runs take milliseconds: the median of five, so that one GC, a cold JIT or a busy disk does not decide the linearity figure
      const runs: number[] = [];
      for (let rep = 0; rep < 5; rep++) runs.push(await cairnItems(`file:${path.join(dir, `store-${rep}`)}`, n, `p2-${n}-${rep}`));
      cairnRuns.set(n, runs);
      cairnMs.set(n, median(runs));
      opts.log(`  P2 cairn N=${n}: ${runs.map((ms) => ms.toFixed(1)).join(', ')} ms`);
      await settle();
      cairnItemMs.set(n, await cairnItemsDurable(path.join(dir, 'store-item'), n));
      await settle();
    } finally {
      removeDir(dir);
    }
  }
  for (const n of sizes) {
    const dir = makeTempDir('p2', opts.tmpRoot);
    try {
      const cairn = cairnMs.get(n)!;
      const perItem = cairnItemMs.get(n)!;
      const peer = rewriteLoop(path.join(dir, 'state.json'), n, budgetMs);
      opts.log(
        `  P2 N=${n}: cairn ${cairn.toFixed(0)} ms, cairn durability:item ${perItem.toFixed(0)} ms, rewrite ${peer.ms.toFixed(0)} ms${peer.extrapolated ? ` (extrapolated from ${peer.itemsMeasured} items)` : ''}`,
      );
      const isLast = n === sizes[sizes.length - 1];
      rows.push({
        bench: `P2 vs rewrite, N=${n.toLocaleString('en-US')}`,
        peer: 'rewrite loop: whole JSON + fsync per item',
        figure: 'ms total',
        value: peer.ms,
        ...(peer.extrapolated
          ? {
              note: `extrapolated (b·n + c·n² fit) after ${peer.itemsMeasured.toLocaleString('en-US')} items hit the ${budgetMs / 1000} s cap`,
            }
          : {}),
      });
      rows.push({
        bench: `P2 vs rewrite, N=${n.toLocaleString('en-US')}`,
        peer: 'cairn file store (default batch)',
        figure: 'ms total',
        value: cairn,
        samples: cairnRuns.get(n),
        ratioOf: 'rewrite ÷ cairn (speed-up)',
        ratio: peer.ms / cairn,
        ...(isLast && !opts.quick ? { goal: '≥ 300', met: peer.ms / cairn >= 300 } : {}),
      });
      rows.push({
        bench: `P2 vs rewrite, N=${n.toLocaleString('en-US')}`,
        peer: "cairn file store (durability: 'item')",
        figure: 'ms total',
        value: perItem,
        ratioOf: 'rewrite ÷ cairn (speed-up)',
        ratio: peer.ms / perItem,
        note: 'same per-item durability as the peer',
      });
    } finally {
      removeDir(dir);
    }
  }
  const big = sizes[sizes.length - 1]!;
  const mid = opts.quick ? 1_000 : 10_000;
  const growth = cairnMs.get(big)! / cairnMs.get(mid)!;
  const expected = big / mid;
  rows.push({
    bench: 'P2 cairn linearity',
    peer: 'cairn file store (default batch)',
    figure: `time(${big / 1000}k) ÷ time(${mid / 1000}k)`,
    value: growth,
    goal: `≤ ${(expected * 1.1).toFixed(1)}`,
    met: growth <= expected * 1.1,
  });
  return rows;
}

/** ms for N items with `durability: 'item'` (each result durable before the next item starts). */
async function cairnItemsDurable(storeDir: string, n: number): Promise<number> {
  const list = Array.from({ length: n }, (_, i) => i);
  let elapsed = Number.NaN;
  const def = pipeline('bench-items-durable', { version: '1' }).stage('items', async (ctx) => {
    const start = now();
    const results = await ctx.items('items', list, async (x) => x, { durability: 'item' });
    elapsed = now() - start;
    return { count: results.length };
  });
  const cairn = new Cairn({ store: `file:${storeDir}`, handleSignals: false });
  try {
    const run = await cairn.run(def, { n });
    if (run.status !== 'completed') throw new Error(`P2 run ended ${run.status}`);
  } finally {
    await cairn.close();
  }
  return elapsed;
}
