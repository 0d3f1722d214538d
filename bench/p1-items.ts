/**
 * P1 durable items: N no-op items through `ctx.items` at default durability (file and SQLite
 * stores), against a bare loop appending what the disk must hold (one `{"k":…,"v":…}` line per item)
 * to a file with one fdatasync per 1,000 — the file store's goal row — and, beside it, the same loop
 * writing ledger lines of the file store's shape with a CRC-32 each; better-sqlite3 inserting the
 * records in transactions of 1,000 with synchronous=FULL; and, when a Postgres server is reachable,
 * the Postgres store against a bare `pg` loop (postgres-peers.ts).
 */
import fs from 'node:fs';
import path from 'node:path';
import { crc32 } from 'node:zlib';
import Database from 'better-sqlite3';
import { Cairn, pipeline } from '../src/index.js';
import { type BenchOptions, type Row, makeTempDir, median, now, removeDir, settle } from './lib/util.js';
import { postgresItemsRows } from './postgres-peers.js';

const BATCH = 1000;

/** A ledger line of the same shape and size as the file store's (`{"crc":…,"rec":{…}}`). */
export function ledgerLine(i: number, batch: number): string {
  const rec = JSON.stringify({ fv: 1, t: 'item', key: String(i), i, a: 1, b: batch, s: 'done', enc: 'json', zip: 0, data: i });
  return `{"crc":"${(crc32(rec) >>> 0).toString(16).padStart(8, '0')}","rec":${rec}}\n`;
}

/** ms for N items through ctx.items (the call itself, store already open). */
export async function cairnItems(storeUrl: string, n: number, label: string): Promise<number> {
  const list = Array.from({ length: n }, (_, i) => i);
  let elapsed = Number.NaN;
  const def = pipeline(`bench-items-${label}`, { version: '1' }).stage('items', async (ctx) => {
    const start = now();
    const results = await ctx.items('items', list, async (x) => x);
    elapsed = now() - start;
    return { count: results.length };
  });
  const cairn = new Cairn({ store: storeUrl, handleSignals: false });
  try {
    const run = await cairn.run(def, { n, label });
    if (run.status !== 'completed') throw new Error(`P1 run ended ${run.status}: ${run.error?.message ?? ''}`);
  } finally {
    await cairn.close();
  }
  return elapsed;
}

/** What the disk must hold for one done item and nothing more: its key and its value, one JSON line. */
export function bareLine(key: string, value: unknown): string {
  return `{"k":${JSON.stringify(key)},"v":${JSON.stringify(value)}}\n`;
}

/** ms to append N lines built by `line`, 1,000 per write(), fdatasync after each write. */
function appendLoop(file: string, n: number, line: (i: number) => string): number {
  const start = now();
  const fd = fs.openSync(file, 'a');
  try {
    let batch: string[] = [];
    for (let i = 0; i < n; i++) {
      batch.push(line(i));
      if (batch.length === BATCH || i === n - 1) {
        fs.writeSync(fd, batch.join(''));
        fs.fdatasyncSync(fd);
        batch = [];
      }
    }
  } finally {
    fs.closeSync(fd);
  }
  return now() - start;
}

/**
 * ms for the honest bare loop, the file store's peer: one `{"k":<key>,"v":<value>}` line per item
 * (the key ctx.items gives an item without a key option, its position, and the item's result),
 * 1,000 lines per write(), then fdatasync; no checksum, no framing.
 */
export function bareFileLoop(file: string, n: number): number {
  return appendLoop(file, n, (i) => bareLine(String(i), i));
}

/**
 * ms for the least an engine that awaits a function per item must do: the bare k/v loop, but each
 * value comes from awaiting the same `async (x) => x` as cairn's items, one at a time. Not a goal
 * peer: it shows how much of the gap to the bare loop is the await itself.
 */
export async function awaitLoop(file: string, n: number): Promise<number> {
  const fn = async (x: number): Promise<number> => x;
  const start = now();
  const fd = fs.openSync(file, 'a');
  try {
    let batch: string[] = [];
    for (let i = 0; i < n; i++) {
      batch.push(bareLine(String(i), await fn(i)));
      if (batch.length === BATCH || i === n - 1) {
        fs.writeSync(fd, batch.join(''));
        fs.fdatasyncSync(fd);
        batch = [];
      }
    }
  } finally {
    fs.closeSync(fd);
  }
  return now() - start;
}

/** ms for the bare loop writing ledger lines of the file store's shape, each with its CRC-32. */
export function bareFileLoopCrc(file: string, n: number): number {
  const batchId = Date.now() * 1000;
  return appendLoop(file, n, (i) => ledgerLine(i, batchId));
}

/** ms for better-sqlite3 inserting the same records in transactions of 1,000, WAL + synchronous=FULL. */
export function bareSqlite(file: string, n: number): number {
  const start = now();
  const db = new Database(file);
  try {
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = FULL');
    db.exec(
      'CREATE TABLE items (ledger TEXT NOT NULL, key TEXT NOT NULL, idx INTEGER NOT NULL, status TEXT NOT NULL, data TEXT, PRIMARY KEY (ledger, key))',
    );
    const insert = db.prepare('INSERT INTO items (ledger, key, idx, status, data) VALUES (?, ?, ?, ?, ?)');
    const insertBatch = db.transaction((from: number, to: number) => {
      for (let i = from; i < to; i++) insert.run('items', String(i), i, 'done', JSON.stringify(i));
    });
    for (let from = 0; from < n; from += BATCH) insertBatch(from, Math.min(n, from + BATCH));
  } finally {
    db.close();
  }
  return now() - start;
}

export async function runP1(opts: BenchOptions): Promise<Row[]> {
  const n = 100_000;
  const reps = opts.quick ? 1 : 3;
  const times = {
    file: [] as number[],
    sqlite: [] as number[],
    bareFile: [] as number[],
    bareFileCrc: [] as number[],
    awaitLoop: [] as number[],
    bareSqlite: [] as number[],
  };
  // warm-up: JIT the engine's item path and the bare loop on a small N
  {
    const dir = makeTempDir('p1-warm', opts.tmpRoot);
    try {
      await cairnItems(`file:${path.join(dir, 'store')}`, 5_000, 'warm');
      bareFileLoop(path.join(dir, 'bare.jsonl'), 5_000);
      bareFileLoopCrc(path.join(dir, 'bare-crc.jsonl'), 5_000);
      await awaitLoop(path.join(dir, 'await.jsonl'), 5_000);
    } finally {
      removeDir(dir);
    }
  }
  for (let rep = 0; rep < reps; rep++) {
    const dir = makeTempDir('p1', opts.tmpRoot);
    try {
      times.bareFile.push(bareFileLoop(path.join(dir, 'bare.jsonl'), n));
      await settle();
      times.bareFileCrc.push(bareFileLoopCrc(path.join(dir, 'bare-crc.jsonl'), n));
      await settle();
      times.awaitLoop.push(await awaitLoop(path.join(dir, 'await.jsonl'), n));
      await settle();
      times.file.push(await cairnItems(`file:${path.join(dir, 'store')}`, n, 'file'));
      await settle();
      times.bareSqlite.push(bareSqlite(path.join(dir, 'bare.db'), n));
      await settle();
      times.sqlite.push(await cairnItems(`sqlite:${path.join(dir, 'cairn.db')}`, n, 'sqlite'));
    } finally {
      removeDir(dir);
    }
    opts.log(`  P1 rep ${rep + 1}/${reps} done`);
  }
  const rate = (ms: number[]): number => n / (median(ms) / 1000);
  const bareFileRate = rate(times.bareFile);
  const bareFileCrcRate = rate(times.bareFileCrc);
  const awaitLoopRate = rate(times.awaitLoop);
  const bareSqliteRate = rate(times.bareSqlite);
  const fileRate = rate(times.file);
  const sqliteRate = rate(times.sqlite);
  return [
    {
      bench: 'P1 durable items',
      peer: 'bare file loop (k/v JSON lines, fdatasync / 1,000)',
      figure: 'items/s',
      value: bareFileRate,
      samples: times.bareFile,
    },
    {
      bench: 'P1 durable items',
      peer: 'bare file loop + CRC-32 per line',
      figure: 'items/s',
      value: bareFileCrcRate,
      samples: times.bareFileCrc,
      note: `ledger lines of the file store's shape, CRC-32 each, fdatasync / 1,000; ${(bareFileCrcRate / bareFileRate).toFixed(2)} × the k/v loop`,
    },
    {
      bench: 'P1 durable items',
      peer: 'bare k/v loop awaiting an async fn per item',
      figure: 'items/s',
      value: awaitLoopRate,
      samples: times.awaitLoop,
      note: `the k/v loop with the await an engine cannot avoid; ${(awaitLoopRate / bareFileRate).toFixed(2)} × the k/v loop`,
    },
    { bench: 'P1 durable items', peer: 'better-sqlite3 (txn / 1,000, FULL)', figure: 'items/s', value: bareSqliteRate },
    {
      bench: 'P1 durable items',
      peer: 'cairn file store',
      figure: 'items/s',
      value: fileRate,
      samples: times.file,
      ratioOf: 'cairn ÷ bare k/v file loop',
      ratio: fileRate / bareFileRate,
      goal: '≥ 0.8',
      met: fileRate / bareFileRate >= 0.8,
      note: `cairn file ÷ bare file loop + CRC-32 ${(fileRate / bareFileCrcRate).toFixed(3)}; ÷ the awaiting k/v loop ${(fileRate / awaitLoopRate).toFixed(3)}`,
    },
    {
      bench: 'P1 durable items',
      peer: 'cairn SQLite store',
      figure: 'items/s',
      value: sqliteRate,
      ratioOf: 'cairn ÷ better-sqlite3',
      ratio: sqliteRate / bareSqliteRate,
      goal: '≥ 0.5',
      met: sqliteRate / bareSqliteRate >= 0.5,
      note: `cairn SQLite ÷ bare file loop ${(sqliteRate / bareFileRate).toFixed(2)}`,
    },
    ...(await postgresItemsRows(opts, n, reps)),
  ];
}
