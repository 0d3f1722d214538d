/**
 * The Postgres rows of P1 and P3: cairn's Postgres store against a bare `pg` loop doing the same
 * inserts on the same server in the same run — P1: the same ledger lines, 1,000 per multi-row
 * INSERT (each statement its own transaction); P3: one INSERT of a step-sized record per step.
 * Every run works in a fresh schema, dropped after. When the server cannot be reached the rows
 * say so and the rest of the benchmark goes on. Server: CAIRN_BENCH_POSTGRES_URL, else the local
 * test server (postgres://postgres@127.0.0.1:5432/test).
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { cairnItems, ledgerLine } from './p1-items.js';
import { type BenchOptions, type Row, median, now, settle } from './lib/util.js';

const BATCH = 1000;
export const POSTGRES_BENCH_URL = process.env.CAIRN_BENCH_POSTGRES_URL ?? 'postgres://postgres@127.0.0.1:5432/test';

interface Server {
  readonly reachable: boolean;
  readonly reason?: string;
  /** `fsync`, `synchronous_commit`, version: what a commit costs on this server. */
  readonly settings?: string;
}

let probed: Promise<Server> | undefined;

/** Connects once; unreachable within 3 s means skipped. */
export function probeServer(): Promise<Server> {
  probed ??= (async () => {
    const client = new pg.Client({ connectionString: POSTGRES_BENCH_URL, connectionTimeoutMillis: 3000 });
    try {
      await client.connect();
      const setting = async (name: string): Promise<string> =>
        String((await client.query<{ v: string }>(`SELECT current_setting('${name}') AS v`)).rows[0]?.v);
      const version = await setting('server_version');
      const settings = `Postgres ${version}, fsync=${await setting('fsync')}, synchronous_commit=${await setting('synchronous_commit')}, wal_sync_method=${await setting('wal_sync_method')}`;
      return { reachable: true, settings };
    } catch (error) {
      return { reachable: false, reason: (error as Error).message };
    } finally {
      await client.end().catch(() => undefined);
    }
  })();
  return probed;
}

/** The server's address without a password, for the notes. */
export function shownUrl(): string {
  const url = new URL(POSTGRES_BENCH_URL);
  url.password = '';
  return url.toString();
}

export function skippedRow(bench: string, server: Server): Row {
  return {
    bench,
    peer: 'Postgres: skipped',
    figure: '-',
    value: Number.NaN,
    note: `Postgres unreachable at ${shownUrl()} (${server.reason ?? 'unknown'}); set CAIRN_BENCH_POSTGRES_URL to include it`,
  };
}

/** Runs `fn` with a client and a fresh schema (and its store URL), dropping the schema after. */
export async function withSchema<T>(label: string, fn: (client: pg.Client, schema: string, storeUrl: string) => Promise<T>): Promise<T> {
  const schema = `cairn_bench_${label}_${randomBytes(4).toString('hex')}`;
  const url = new URL(POSTGRES_BENCH_URL);
  url.searchParams.set('schema', schema);
  const client = new pg.Client({ connectionString: POSTGRES_BENCH_URL });
  await client.connect();
  try {
    await client.query(`CREATE SCHEMA "${schema}"`);
    return await fn(client, schema, url.toString());
  } finally {
    await client.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`).catch(() => undefined);
    await client.end().catch(() => undefined);
  }
}

/** ms for the bare loop: P1's ledger lines, 1,000 per multi-row INSERT, each statement committed (WAL flushed) on its own. */
async function bareItems(client: pg.Client, schema: string, n: number): Promise<number> {
  await client.query(`CREATE TABLE "${schema}".bare_items (id bigserial PRIMARY KEY, ledger_id bigint NOT NULL, line text NOT NULL)`);
  await client.query(`CREATE INDEX ON "${schema}".bare_items (ledger_id, id)`);
  const batchId = Date.now() * 1000;
  const start = now();
  for (let from = 0; from < n; from += BATCH) {
    const to = Math.min(n, from + BATCH);
    const params: unknown[] = [1];
    const values: string[] = [];
    for (let i = from; i < to; i++) {
      params.push(ledgerLine(i, batchId).slice(0, -1));
      values.push(`($1, $${params.length})`);
    }
    await client.query(`INSERT INTO "${schema}".bare_items (ledger_id, line) VALUES ${values.join(', ')}`, params);
  }
  return now() - start;
}

/** A record of the size of one of P3's step checkpoints (~290 bytes). */
function stepLine(runId: string, seq: number): string {
  const rec = JSON.stringify({
    fv: 1,
    t: 'cp',
    run: runId,
    seq,
    at: new Date().toISOString(),
    kind: 'step',
    stage: 'step',
    meta: { step: seq, next: 'step' },
    bytes: 60,
    enc: 'json',
    zip: 0,
    data: { v: 1, step: seq, node: 'step', update: { n: seq }, next: 'step' },
  });
  return `{"crc":"00000000","rec":${rec}}`;
}

/** ms for the bare loop: one INSERT (its own transaction) per step. */
async function bareSteps(client: pg.Client, schema: string, steps: number): Promise<number> {
  await client.query(
    `CREATE TABLE "${schema}".bare_checkpoints (run_id text NOT NULL, seq bigint NOT NULL, line text NOT NULL, PRIMARY KEY (run_id, seq))`,
  );
  const runId = 'bench-steps-bare';
  const start = now();
  for (let seq = 1; seq <= steps; seq++) {
    await client.query(`INSERT INTO "${schema}".bare_checkpoints (run_id, seq, line) VALUES ($1, $2, $3)`, [
      runId,
      seq,
      stepLine(runId, seq),
    ]);
  }
  return now() - start;
}

/** P1's Postgres rows: 100,000 no-op items through ctx.items on the Postgres store, and the bare loop. */
export async function postgresItemsRows(opts: BenchOptions, n: number, reps: number): Promise<Row[]> {
  const bench = 'P1 durable items';
  const server = await probeServer();
  if (!server.reachable) return [skippedRow(bench, server)];
  const cairn: number[] = [];
  const bare: number[] = [];
  await withSchema('warm', (_client, _schema, url) => cairnItems(url, 5_000, 'pg-warm'));
  for (let rep = 0; rep < reps; rep++) {
    bare.push(await withSchema('p1bare', (client, schema) => bareItems(client, schema, n)));
    await settle();
    cairn.push(await withSchema('p1', (_client, _schema, url) => cairnItems(url, n, 'pg')));
    await settle();
  }
  opts.log(`  P1 Postgres: cairn ${cairn.map((t) => t.toFixed(0)).join('/')} ms, bare ${bare.map((t) => t.toFixed(0)).join('/')} ms`);
  const rate = (ms: number[]): number => n / (median(ms) / 1000);
  const bareRate = rate(bare);
  const cairnRate = rate(cairn);
  return [
    {
      bench,
      peer: 'bare pg (INSERT of 1,000 rows / txn)',
      figure: 'items/s',
      value: bareRate,
      samples: bare,
      note: `${server.settings ?? ''}; ${shownUrl()}`,
    },
    {
      bench,
      peer: 'cairn Postgres store',
      figure: 'items/s',
      value: cairnRate,
      samples: cairn,
      ratioOf: 'cairn ÷ bare pg',
      ratio: cairnRate / bareRate,
    },
  ];
}

/** P3's Postgres rows: the 1,000-step workflow on the Postgres store, and one bare INSERT per step. */
export async function postgresStepsRows(
  opts: BenchOptions,
  steps: number,
  reps: number,
  plainMsPerStep: number,
  cairnSteps: (storeUrl: string, steps: number, label: string) => Promise<number>,
): Promise<Row[]> {
  const bench = 'P3 step overhead (1,000 steps)';
  const server = await probeServer();
  if (!server.reachable) return [skippedRow(bench, server)];
  const cairn: number[] = [];
  const bare: number[] = [];
  await withSchema('warm', (_client, _schema, url) => cairnSteps(url, 100, 'pg-warm'));
  for (let rep = 0; rep < reps; rep++) {
    bare.push(await withSchema('p3bare', (client, schema) => bareSteps(client, schema, steps)));
    await settle();
    cairn.push(await withSchema('p3', (_client, _schema, url) => cairnSteps(url, steps, `pg-${rep}`)));
    await settle();
  }
  opts.log(`  P3 Postgres: cairn ${cairn.map((t) => t.toFixed(0)).join('/')} ms, bare ${bare.map((t) => t.toFixed(0)).join('/')} ms`);
  const bareMs = median(bare) / steps;
  const added = median(cairn) / steps - plainMsPerStep;
  return [
    {
      bench,
      peer: 'bare pg (one INSERT per step)',
      figure: 'ms/step',
      value: bareMs,
      samples: bare,
      note: `${server.settings ?? ''}; ${shownUrl()}`,
    },
    {
      bench,
      peer: 'cairn Postgres store',
      figure: 'added ms/step',
      value: added,
      samples: cairn,
      ratioOf: 'cairn ÷ bare pg INSERT',
      ratio: added / bareMs,
      note: `total ${(median(cairn) / steps).toFixed(3)} ms/step`,
    },
  ];
}
