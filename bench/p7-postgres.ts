/**
 * P7 Postgres (issue 8): P1's durable items and P3's durable steps on the Postgres store, each
 * against a bare `pg` loop doing the same writes in the same run: item results inserted 1,000 per
 * multi-row INSERT (one round trip, one commit, as cairn's batch), and one INSERT per step of a
 * checkpoint-sized line. Both sides commit with the server's default `synchronous_commit = on`.
 * The server is `CAIRN_BENCH_POSTGRES_URL`, else `CAIRN_TEST_POSTGRES_URL`, else the local test
 * database; each repetition works in a fresh schema, dropped after. Skipped (with a line saying
 * why) when no server answers.
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { cairnItems, ledgerLine } from './p1-items.js';
import { cairnSteps } from './p3-steps.js';
import { type BenchOptions, type Row, median, now, settle } from './lib/util.js';

const SERVER = process.env.CAIRN_BENCH_POSTGRES_URL ?? process.env.CAIRN_TEST_POSTGRES_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
const BATCH = 1000;

function storeUrl(schema: string): string {
  const url = new URL(SERVER);
  url.searchParams.set('schema', schema);
  return url.toString();
}

async function withClient<T>(fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: SERVER, connectionTimeoutMillis: 5000 });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

/** Runs `fn` with a fresh schema name, dropping the schema afterwards. */
async function inSchema<T>(fn: (schema: string) => Promise<T>): Promise<T> {
  const schema = `cairn_bench_${randomBytes(4).toString('hex')}`;
  try {
    return await fn(schema);
  } finally {
    await withClient((c) => c.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`));
  }
}

/** ms for the bare loop: N ledger lines, 1,000 per multi-row INSERT (each its own commit). */
async function bareItems(n: number): Promise<number> {
  return inSchema((schema) =>
    withClient(async (c) => {
      await c.query(`CREATE SCHEMA "${schema}"`);
      await c.query(
        `CREATE TABLE "${schema}".items (id bigserial PRIMARY KEY, ledger_id bigint NOT NULL, epoch bigint, line text NOT NULL)`,
      );
      const insert = `INSERT INTO "${schema}".items (ledger_id, epoch, line) SELECT 1, 1, unnest($1::text[])`;
      const start = now();
      const batchId = Date.now() * 1000;
      for (let from = 0; from < n; from += BATCH) {
        const lines: string[] = [];
        for (let i = from; i < Math.min(n, from + BATCH); i++) lines.push(ledgerLine(i, batchId).slice(0, -1));
        await c.query(insert, [lines]);
      }
      return now() - start;
    }),
  );
}

/** ms for the bare loop: one INSERT (one commit) per step of a checkpoint line of cairn's size. */
async function bareSteps(steps: number): Promise<number> {
  return inSchema((schema) =>
    withClient(async (c) => {
      await c.query(`CREATE SCHEMA "${schema}"`);
      await c.query(
        `CREATE TABLE "${schema}".checkpoints (run_id text NOT NULL, seq bigint NOT NULL, kind text NOT NULL, epoch bigint, line text NOT NULL, PRIMARY KEY (run_id, seq))`,
      );
      const insert = `INSERT INTO "${schema}".checkpoints (run_id, seq, kind, epoch, line) VALUES ($1, $2, 'step', 1, $3)`;
      const start = now();
      for (let seq = 1; seq <= steps; seq++) {
        const rec = JSON.stringify({
          fv: 1,
          t: 'cp',
          seq,
          kind: 'step',
          stage: 'step',
          meta: { step: seq, next: 'step' },
          data: { v: 1, step: seq, node: 'step', update: { n: seq }, next: 'step' },
        });
        await c.query(insert, ['bench', seq, `{"crc":"00000000","rec":${rec}}`]);
      }
      return now() - start;
    }),
  );
}

async function reachable(): Promise<string | undefined> {
  try {
    await withClient((c) => c.query('SELECT 1'));
    return undefined;
  } catch (error) {
    return error instanceof Error ? error.message : String(error);
  }
}

export async function runP7(opts: BenchOptions): Promise<Row[]> {
  const why = await reachable();
  const server = new URL(SERVER);
  server.password = '';
  if (why !== undefined) {
    opts.log(`  P7 skipped: Postgres unreachable at ${server.toString()} (${why}); set CAIRN_BENCH_POSTGRES_URL`);
    return [];
  }
  const n = opts.quick ? 20_000 : 100_000;
  const steps = opts.quick ? 300 : 1_000;
  const reps = opts.quick ? 1 : 3;
  const t = { bareItems: [] as number[], items: [] as number[], bareSteps: [] as number[], steps: [] as number[], plain: [] as number[] };
  // warm-up: JIT, connection setup, the server's caches
  await inSchema((schema) => cairnItems(storeUrl(schema), 2_000, 'pg-warm'));
  await bareItems(2_000);
  for (let rep = 0; rep < reps; rep++) {
    t.bareItems.push(await bareItems(n));
    await settle();
    t.items.push(await inSchema((schema) => cairnItems(storeUrl(schema), n, `pg-${rep}`)));
    await settle();
    t.bareSteps.push(await bareSteps(steps));
    await settle();
    t.steps.push(await inSchema((schema) => cairnSteps(storeUrl(schema), steps, `pg-${rep}`)));
    t.plain.push(await cairnSteps('memory:', steps, `pg-plain-${rep}`));
    opts.log(`  P7 rep ${rep + 1}/${reps} done`);
  }
  const rate = (ms: number[], count: number): number => count / (median(ms) / 1000);
  const bareRate = rate(t.bareItems, n);
  const itemRate = rate(t.items, n);
  const bareStep = median(t.bareSteps) / steps;
  // cairn's whole step minus the same workflow on the memory store: what Postgres adds per step
  const cairnStep = median(t.steps) / steps;
  const added = cairnStep - median(t.plain) / steps;
  const items = `P7 Postgres durable items (${n.toLocaleString('en-US')})`;
  const stepsBench = `P7 Postgres durable steps (${steps.toLocaleString('en-US')})`;
  return [
    { bench: items, peer: 'bare pg loop (1,000 rows per INSERT)', figure: 'items/s', value: bareRate, samples: t.bareItems },
    {
      bench: items,
      peer: 'cairn Postgres store',
      figure: 'items/s',
      value: itemRate,
      ratioOf: 'cairn ÷ bare pg',
      ratio: itemRate / bareRate,
      goal: '≥ 0.5',
      met: itemRate / bareRate >= 0.5,
      samples: t.items,
    },
    { bench: stepsBench, peer: 'bare pg loop (1 INSERT per step)', figure: 'ms/step', value: bareStep, samples: t.bareSteps },
    {
      bench: stepsBench,
      peer: 'cairn Postgres store',
      figure: 'added ms/step',
      value: added,
      ratioOf: 'cairn ÷ bare pg',
      ratio: added / bareStep,
      goal: '≤ 1.5',
      met: added / bareStep <= 1.5,
      samples: t.steps,
      note: `whole step ${cairnStep.toFixed(3)} ms; the memory store's step (engine only) subtracted`,
    },
  ];
}
