/**
 * P8 shared limiter: what `ctx.limit` adds per call when the limit is shared through the store (a
 * transaction per grant on SQLite, one round trip on Postgres, a lock file on the file store),
 * against the same stage calling the same trivial function without it. The limit is set high
 * enough never to make a call wait (1,000,000 requests per second), so the figure is the cost of
 * asking, not of waiting. 2,000 calls one after the other inside one stage, timed inside the stage
 * (the run's start and end are not counted); the runs with and without the limit alternate, median
 * of 5 (3 in --quick).
 */
import { Cairn, pipeline } from '../src/index.js';
import { type BenchOptions, type Row, makeTempDir, median, now, removeDir, settle } from './lib/util.js';
import { probeServer, shownUrl, skippedRow, withSchema } from './postgres-peers.js';

const BENCH = 'P8 shared limiter';
const LIMITS = { api: { requests: 1_000_000, per: '1s' } } as const;

/** ms the stage spends on `calls` calls, with or without `ctx.limit` around each. */
async function stageMs(cairn: Cairn, calls: number, limited: boolean, runId: string): Promise<number> {
  let ms = 0;
  const call = async (i: number): Promise<number> => i;
  const def = pipeline('bench-limits').stage('calls', async (ctx) => {
    const start = now();
    let sum = 0;
    for (let i = 0; i < calls; i++) sum += limited ? await ctx.limit('api', {}, () => call(i)) : await call(i);
    ms = now() - start;
    return sum;
  });
  const run = await cairn.run(def, { runId }, { runId });
  if (run.status !== 'completed') throw new Error(`P8 run ended ${run.status}: ${run.error?.message ?? ''}`);
  return ms;
}

async function storeRows(label: string, url: string, calls: number, reps: number, opts: BenchOptions, note?: string): Promise<Row[]> {
  const cairn = new Cairn({ store: url, handleSignals: false, limits: LIMITS });
  const plain: number[] = [];
  const limited: number[] = [];
  try {
    await stageMs(cairn, 200, true, 'warm'); // the store open, statements prepared, the limit's row made
    for (let rep = 0; rep < reps; rep++) {
      plain.push(await stageMs(cairn, calls, false, `plain-${rep}`));
      await settle();
      limited.push(await stageMs(cairn, calls, true, `limited-${rep}`));
      await settle();
    }
  } finally {
    await cairn.close();
  }
  const perCall = (ms: number[]): number => (median(ms) * 1000) / calls;
  const added = perCall(limited) - perCall(plain);
  opts.log(`  P8 ${label}: plain ${plain.map((t) => t.toFixed(1)).join('/')} ms, limited ${limited.map((t) => t.toFixed(1)).join('/')} ms`);
  return [
    { bench: BENCH, peer: `${label}, no limit (same stage)`, figure: 'µs/call', value: perCall(plain), samples: plain },
    {
      bench: BENCH,
      peer: `${label}, ctx.limit around each call`,
      figure: 'added µs/call',
      value: added,
      samples: limited,
      ...(note ? { note } : {}),
    },
  ];
}

export async function runP8(opts: BenchOptions): Promise<Row[]> {
  const calls = 2_000;
  const reps = opts.quick ? 3 : 5;
  const dir = makeTempDir('p8', opts.tmpRoot);
  const rows: Row[] = [];
  try {
    rows.push(...(await storeRows('SQLite store', `sqlite:${dir}/limits.db`, calls, reps, opts)));
    rows.push(...(await storeRows('file store', `file:${dir}/files`, calls, reps, opts)));
    rows.push(...(await storeRows('memory store (in-process)', 'memory:', calls, reps, opts)));
  } finally {
    removeDir(dir);
  }
  const server = await probeServer();
  if (!server.reachable) return [...rows, skippedRow(BENCH, server)];
  rows.push(
    ...(await withSchema('p8', async (client, _schema, url) => {
      // the floor of any shared acquire on this server: one round trip
      const bare: number[] = [];
      for (let rep = 0; rep < reps; rep++) {
        const start = now();
        for (let i = 0; i < calls; i++) await client.query('SELECT 1');
        bare.push(now() - start);
      }
      const floor: Row = {
        bench: BENCH,
        peer: 'bare pg round trip (SELECT 1)',
        figure: 'µs/call',
        value: (median(bare) * 1000) / calls,
        samples: bare,
      };
      return [floor, ...(await storeRows('Postgres store', url, calls, reps, opts, `${server.settings ?? ''}; ${shownUrl()}`))];
    })),
  );
  return rows;
}
