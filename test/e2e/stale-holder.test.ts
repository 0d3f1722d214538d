/**
 * The stale holder, with real processes, on the file, SQLite and Postgres stores (DESIGN.md §3,
 * guarantee 5): a process that lost its lease while stopped can never change what readers or the
 * new holder trust, whatever moment it wakes up at.
 *
 * A child (fixtures/stale-holder.mjs, the public API from dist) runs a workflow of many short
 * durable steps, or a pipeline with ctx.items over a few thousand items, with a short lease. The
 * test SIGSTOPs it after a random number of its commits, each of the three stops of a run in
 * another way: as soon as the commit line is read, a random 1-5 ms later, or at the next moment the
 * child says it is busy before its next write (so that it continues right into a write). The stop
 * lands anywhere on the write path: mid-write, between a write and its fsync, between the fsync
 * and the lease check, before the ack, just before the next write. The test waits until the store
 * reports the lease expired, starts another child that takes the run over (a new epoch) and lets
 * it commit more, reads what the store trusts at that moment, then SIGCONTs the stopped one: it
 * must stop with LEASE_LOST. The taker is then stopped the same way and taken over in turn, three
 * times per run; the last holder completes the run.
 *
 * Then: every record a process acknowledged is there, written by that process (0 acknowledged
 * records lost); what the store trusted when a stopped process was taken over is a prefix of the
 * final logs, and everything after it was written by later holders (0 records of a stale epoch
 * trusted after the takeover); every step ran once and every item has exactly one result; the run
 * and the store validate clean (`validateRun` and `cairn validate --all`); the result equals an
 * uninterrupted run's byte for byte; on Postgres, rows never go back to an older epoch.
 *
 * Each run logs how its stops went: after how many commits and how; which write or renewal was
 * refused first when the stopped process continued; records the store trusted that the stopped
 * process never acknowledged (a stop between a write landing and the lease check or ack); and on
 * the file store the bytes the stopped process appended after its takeover (past the new holder's
 * seal: never read).
 *
 * On SQLite a stop that lands inside a write transaction holds the database's write lock: nobody
 * can take over until the process continues (SQLite serializes writers; the taker would wait and
 * get STORE_BUSY). Such a stop is moved: the process continues for a few milliseconds and is
 * stopped again, until it is stopped outside a transaction (counted as "moved" in the log).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { Cairn, openStore, type Store } from '../../src/index.js';
import { Child, killAll } from './child.js';
import { POSTGRES, dropSchema, freshSchema, postgresUrl, schemaOf, withClient } from '../postgres.js';

const ROOT = path.resolve(import.meta.dirname, '../..');
const CLI = path.join(ROOT, 'dist/src/cli/main.js');
const FIXTURE = path.join(ROOT, 'test/e2e/fixtures/stale-holder.mjs');
/** The children's lease (renewed every third of it). */
const TTL_MS = 1200;
/** Takeovers of a stopped holder per run. */
const STOPS = 3;
/** What the fixture runs (kept in step with its STEPS and ITEMS). */
const STEPS = 600;
const ITEMS = 3000;

interface Scenario {
  readonly name: 'steps' | 'items';
  /** A holder is stopped after 1..maxStop of its commits (steps, or item batches). */
  readonly maxStop: number;
  /** Commits the taker makes before the stopped holder continues. */
  readonly takerCommits: number;
}

const SCENARIOS: readonly Scenario[] = [
  { name: 'steps', maxStop: 100, takerCommits: 30 },
  { name: 'items', maxStop: 25, takerCommits: 5 },
];

interface Location {
  readonly url: string;
  /** Whether a stopped process holds the store's write lock (SQLite only): then nobody can take over yet. */
  writeLockHeld?(): boolean;
  /** Bytes in the run's log segments older than epoch `below` (file store only): what stale holders wrote, trusted or not. */
  segmentBytes?(runId: string, below: number): number;
  close(): Promise<void>;
}

interface StoreKind {
  readonly name: string;
  readonly available: boolean;
  /** A fresh, empty location of this kind. */
  location(): Location;
}

const tempDirs: string[] = [];
function tempDir(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-stale-'));
  tempDirs.push(dir);
  return dir;
}

const schemas: string[] = [];
const KINDS: readonly StoreKind[] = [
  {
    name: 'file',
    available: true,
    location: () => {
      const root = path.join(tempDir(), 'store');
      return {
        url: `file:${root}`,
        segmentBytes: (runId, below) => segmentBytes(path.join(root, runId), below),
        close: () => Promise.resolve(),
      };
    },
  },
  {
    name: 'SQLite',
    available: true,
    location: () => {
      const file = path.join(tempDir(), 'cairn.db');
      let db: Database.Database | undefined;
      return {
        url: `sqlite:${file}`,
        writeLockHeld: () => {
          db ??= new Database(file, { timeout: 0 });
          try {
            db.exec('BEGIN IMMEDIATE');
          } catch (error) {
            if ((error as { code?: string }).code?.startsWith('SQLITE_BUSY')) return true;
            throw error;
          }
          db.exec('ROLLBACK');
          return false;
        },
        close: () => {
          db?.close();
          return Promise.resolve();
        },
      };
    },
  },
  {
    name: 'Postgres',
    available: POSTGRES.reachable,
    location: () => {
      const schema = freshSchema('cairn_stale');
      schemas.push(schema);
      return { url: postgresUrl(schema, { artifacts: path.join(tempDir(), 'artifacts') }), close: () => Promise.resolve() };
    },
  },
];

afterEach(killAll);
afterAll(async () => {
  for (const schema of schemas) await dropSchema(schema);
  for (const dir of tempDirs) fs.rmSync(dir, { recursive: true, force: true });
});

/** The size of every file in the segments `seg-<n>` of a file-store run folder with n < `below`. */
function segmentBytes(runDir: string, below: number): number {
  let bytes = 0;
  const sizes = (dir: string): void => {
    for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
      const file = path.join(dir, entry.name);
      if (entry.isDirectory()) sizes(file);
      else bytes += fs.statSync(file).size;
    }
  };
  for (const entry of fs.readdirSync(runDir, { withFileTypes: true })) {
    const match = /^seg-(\d+)$/.exec(entry.name);
    if (match && entry.isDirectory() && Number(match[1]) < below) sizes(path.join(runDir, entry.name));
  }
  return bytes;
}

const random = (n: number): number => Math.floor(Math.random() * n);
const pause = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `check` until it holds; fails after `timeoutMs`, saying what it waited for. */
async function until(what: string, timeoutMs: number, check: () => boolean | Promise<boolean>): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await pause(10);
  }
}

/** `promise`, or a failure after `timeoutMs` saying what it waited for. */
async function within<T>(promise: Promise<T>, timeoutMs: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)), timeoutMs);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** True once every thread of `pid` is stopped (Linux `/proc`; elsewhere assumed at once). */
function isStopped(pid: number): boolean {
  const tasks = `/proc/${pid}/task`;
  if (!fs.existsSync(tasks)) return true;
  return fs.readdirSync(tasks).every((tid) => {
    try {
      const stat = fs.readFileSync(path.join(tasks, tid, 'stat'), 'utf8');
      return /^[Tt]$/.test(stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3));
    } catch {
      return true; // the thread ended
    }
  });
}

type StopMode = 'ack' | 'delay' | 'busy';
/** One stop of each kind per run, in a random order. */
const stopModes = (): StopMode[] =>
  (['ack', 'delay', 'busy'] as const)
    .map((m) => [Math.random(), m] as const)
    .sort(([a], [b]) => a - b)
    .map(([, m]) => m);

/** One child process of the sequence, and what it reported. */
class Holder {
  readonly child: Child;
  /** Its lease's epoch, once it printed it. */
  epoch: number | undefined;
  /** Its commits: steps, or item batches. */
  commits = 0;
  /** Checkpoint appends that resolved in it. */
  readonly acks: { seq: number; kind: string }[] = [];
  /** Item keys whose batch resolved in it. */
  readonly keys: string[] = [];
  /** Stopped once `commits` reaches this: as soon as the commit is read, a random delay later, or at the next `busy` line. */
  stopAt = Infinity;
  stopMode: StopMode = 'ack';
  /** `commits` when the stop was decided. */
  stoppedAfter: number | undefined;
  stopped = false;

  constructor(
    readonly tag: string,
    readonly index: number,
    url: string,
    scenario: Scenario,
    runId: string,
  ) {
    this.child = new Child(FIXTURE, [url, scenario.name, runId, tag, String(TTL_MS)], { onLine: (line) => this.onLine(line) });
  }

  private onLine(line: string): void {
    const [what, a, b] = line.split(' ');
    if (what === 'ack') {
      this.acks.push({ seq: Number(a), kind: b! });
      if (b === 'step') this.commits++;
    } else if (what === 'items') {
      this.keys.push(...b!.split(','));
      this.commits++;
    } else if (what === 'lease') {
      this.epoch = a === 'none' ? 0 : Number(a); // none: it found no lease of its own (fails the epoch check)
    }
    if (this.stoppedAfter !== undefined || this.commits < this.stopAt) return;
    if (this.stopMode === 'busy') {
      // right after an acknowledged write, while the process is busy before its next one
      if (what !== 'busy') return;
      this.stoppedAfter = this.commits;
      this.stop();
      return;
    }
    this.stoppedAfter = this.commits;
    // as soon as the commit is read, or a few milliseconds later: anywhere on the write path
    const delay = this.stopMode === 'ack' ? 0 : 1 + random(5);
    if (delay === 0) this.stop();
    else setTimeout(() => this.stop(), delay);
  }

  stop(): void {
    this.child.kill('SIGSTOP');
    this.stopped = true;
  }

  /** Throws if the process ended (a wait on it would never end). */
  alive(doing: string): true {
    if (!this.child.isRunning) {
      throw new Error(`${this.tag} exited while ${doing}: ${this.child.lines.slice(-6).join(' | ')}\n${this.child.stderr}`);
    }
    return true;
  }

  /** The JSON of its `error` line. */
  errorOf(): { code?: string; message?: string } | undefined {
    const line = this.child.lines.find((l) => l.startsWith('error '));
    return line === undefined ? undefined : (JSON.parse(line.slice('error '.length)) as { code?: string });
  }

  /** The operations its LEASE_LOST warnings name. */
  refusals(): string[] {
    return this.child.lines.filter((l) => l.startsWith('warning LEASE_LOST')).map((l) => l.split(' ')[2]!);
  }
}

/** A checkpoint as trusted, with the tag of the step that wrote it (steps only). */
interface CheckpointView {
  readonly seq: number;
  readonly kind: string;
  readonly createdAt: string;
  readonly bytes: number;
  readonly step?: number;
  readonly by?: string;
}

interface ItemView {
  readonly ledger: string;
  readonly key: string;
  readonly status: string;
  readonly by?: string;
}

/** What the store trusts of the run now: its checkpoints (all valid) and its item ledgers, in order. */
interface Trusted {
  readonly checkpoints: CheckpointView[];
  readonly items: ItemView[];
}

async function readTrusted(store: Store, runId: string): Promise<Trusted> {
  const checkpoints: CheckpointView[] = [];
  for (const entry of await store.listCheckpoints(runId)) {
    expect(entry.valid, `a damaged checkpoint is listed: ${JSON.stringify(entry)}`).toBe(true);
    if (!entry.valid) continue;
    const { seq, kind, createdAt, bytes } = entry.ref;
    const state = (await store.getCheckpoint(runId, seq)).state as { step?: number; update?: { by?: string } };
    checkpoints.push({
      seq,
      kind,
      createdAt,
      bytes,
      ...(kind === 'step' ? { step: state.step, by: state.update?.by } : {}),
    });
  }
  const items: ItemView[] = [];
  for (const ledger of await store.listLedgers(runId)) {
    const problems: string[] = [];
    for await (const entry of store.readItems(runId, ledger, { onProblem: (p) => problems.push(p.message) })) {
      const by = entry.status === 'done' ? (entry.result as { by?: string }).by : undefined;
      items.push({ ledger, key: entry.key, status: entry.status, ...(by === undefined ? {} : { by }) });
    }
    expect(problems, `damaged item records in ledger ${ledger}`).toEqual([]);
  }
  return { checkpoints, items };
}

/** Postgres rows written after a row of a newer epoch (a stale write that landed), and rows written without a lease. */
function epochRegressions(schema: string, runId: string): Promise<Record<string, number>> {
  return withClient(async (pg) => {
    const count = async (sql: string): Promise<number> => Number((await pg.query<{ n: string }>(sql, [runId])).rows[0]!.n);
    return {
      checkpoints: await count(
        `SELECT count(*) AS n FROM (SELECT epoch, lag(epoch) OVER (ORDER BY seq) AS before FROM "${schema}".checkpoints WHERE run_id = $1) c WHERE epoch < before`,
      ),
      items: await count(
        `SELECT count(*) AS n FROM (SELECT i.epoch, lag(i.epoch) OVER (PARTITION BY i.ledger_id ORDER BY i.id) AS before FROM "${schema}".items i ` +
          `JOIN "${schema}".ledgers l ON l.id = i.ledger_id WHERE l.run_id = $1) i WHERE epoch < before`,
      ),
      unfenced: await count(
        `SELECT (SELECT count(*) FROM "${schema}".checkpoints WHERE run_id = $1 AND epoch IS NULL) + ` +
          `(SELECT count(*) FROM "${schema}".items i JOIN "${schema}".ledgers l ON l.id = i.ledger_id WHERE l.run_id = $1 AND i.epoch IS NULL) AS n`,
      ),
    };
  });
}

/** `cairn validate --all --json` on a store: exit 0 and every run valid. */
async function validateAll(url: string): Promise<number> {
  const cli = new Child(CLI, ['validate', '--all', '--store', url, '--json']);
  const exit = await within(cli.exit, 30_000, `cairn validate --all on ${url}`);
  const report = JSON.parse(cli.lines.join('\n') || '{}') as { valid?: boolean; runs?: { id: string; valid: boolean }[] };
  expect({ exit, report }, cli.stderr).toMatchObject({ exit: { code: 0, signal: null }, report: { valid: true } });
  return report.runs?.length ?? 0;
}

const summaryLine = (holder: { lines: readonly string[] }): string | undefined => holder.lines.find((l) => l.startsWith('summary '));

/** The index of the holder that wrote a record (`end`: the finishing step, by the last holder). */
function writerIndex(by: string | undefined, holders: readonly Holder[]): number {
  if (by === 'end') return holders.length - 1;
  const index = holders.findIndex((h) => h.tag === by);
  expect(index, `a record tagged ${String(by)}, written by no process of this run`).toBeGreaterThanOrEqual(0);
  return index;
}

/** Per record of the final logs (checkpoints, then items), the holder that wrote it, where known. */
function writers(final: Trusted, holders: readonly Holder[]): { checkpoints: (number | undefined)[]; items: number[] } {
  return {
    checkpoints: final.checkpoints.map((c) => (c.kind === 'step' ? writerIndex(c.by, holders) : undefined)),
    items: final.items.map((i) => writerIndex(i.by, holders)),
  };
}

async function staleHolderSequence(kind: StoreKind, scenario: Scenario): Promise<void> {
  const started = Date.now();
  const main = kind.location();
  const ref = kind.location();
  const runId = `stale-${scenario.name}`;
  const store = await openStore(main.url); // before any child: it creates the store
  const reference = new Child(FIXTURE, [ref.url, scenario.name, `reference-${scenario.name}`, 'ref', String(TTL_MS)]);
  const holders: Holder[] = [];
  const newHolder = (): Holder => {
    const holder = new Holder(`p${holders.length + 1}`, holders.length, main.url, scenario, runId);
    holders.push(holder);
    return holder;
  };
  /** What the store trusted when each stopped holder had been taken over (while it was still stopped). */
  const atTakeover = new Map<Holder, Trusted>();
  const epochs: number[] = [];
  let moved = 0;
  /** File store: bytes each stopped holder appended to its segment after it was taken over (never to be trusted). */
  const staleBytes: number[] = [];
  try {
    const modes = stopModes();
    let holder = newHolder();
    holder.stopAt = 1 + random(scenario.maxStop);
    holder.stopMode = modes[0]!;
    for (let stop = 0; stop < STOPS; stop++) {
      const stale = holder;
      await until(`${stale.tag} to be stopped after ${stale.stopAt} commits`, 30_000, () => stale.alive('running') && stale.stopped);
      await until(`${stale.tag} (pid ${stale.child.pid}) to be stopped by SIGSTOP`, 5_000, () => isStopped(stale.child.pid));
      // SQLite: a stop inside a write transaction holds the write lock; move it a few milliseconds on
      while (main.writeLockHeld?.()) {
        if (++moved > 500) throw new Error(`${stale.tag} was stopped inside a SQLite write transaction 500 times in a row`);
        stale.child.kill('SIGCONT');
        await pause(1 + random(4));
        stale.child.kill('SIGSTOP');
        await until(`${stale.tag} to be stopped again`, 5_000, () => isStopped(stale.child.pid));
      }
      const lease = await store.getLock(runId);
      const staleEpoch = stale.epoch ?? lease?.epoch;
      expect(staleEpoch, `the epoch of ${stale.tag}`).toBeDefined();
      if (lease) expect(lease.pid, `the live lease is ${stale.tag}'s`).toBe(stale.child.pid);
      // wait past the lease: the store itself must report it gone (no live lease) before a taker starts
      await until(`the lease of ${stale.tag} (epoch ${staleEpoch}) to expire`, TTL_MS + 5_000, async () => !(await store.getLock(runId)));

      const taker = newHolder();
      await until(`${taker.tag} to take run ${runId} over (its lease line)`, 20_000, () => taker.alive('taking over') && !!taker.epoch);
      expect(taker.epoch, `${taker.tag} took over with a newer epoch`).toBeGreaterThan(staleEpoch!);
      epochs.push(staleEpoch!);
      await until(
        `${taker.tag} to commit ${scenario.takerCommits} records after taking over`,
        20_000,
        () => taker.alive('committing after the takeover') && taker.commits >= scenario.takerCommits,
      );
      expect(isStopped(stale.child.pid), `${stale.tag} is still stopped`).toBe(true);
      atTakeover.set(stale, await readTrusted(store, runId));
      const bytesAtTakeover = main.segmentBytes?.(runId, taker.epoch!);
      if (stop < STOPS - 1) {
        taker.stopAt = taker.commits + 1 + random(scenario.maxStop);
        taker.stopMode = modes[stop + 1]!;
      }

      const linesAtStop = stale.child.lines.length;
      stale.child.kill('SIGCONT');
      // a SQLite writer woken while the taker writes may wait out busy locks (stores retry them for
      // up to transientRetryMs, 30 s) before its write is refused: the deadline is above that bound
      const exit = await within(stale.child.exit, 45_000, `${stale.tag} to exit with LEASE_LOST after SIGCONT`);
      // woken past its lease, it starts no new item (no paid call) before a renewal tells it the run
      // is gone. A worker stopped between its lease check and its call (a check-then-act no code can
      // make atomic against SIGSTOP; on a loaded CPU a preemption there is not rare) makes that one
      // call on waking: at most one per worker (the fixture's concurrency, 2), and its result is
      // fenced out like any stale write. Without the check, the woken process would go on for hundreds.
      const callsAfterWake = stale.child.lines.slice(linesAtStop).filter((l) => l.startsWith('call '));
      expect(callsAfterWake.length, `${stale.tag} started items after it woke: ${callsAfterWake.join(', ')}`).toBeLessThanOrEqual(2);
      expect(exit, `${stale.tag}: ${stale.child.lines.slice(-4).join(' | ')}\n${stale.child.stderr}`).toEqual({ code: 2, signal: null });
      expect(stale.errorOf()?.code, `${stale.tag} stopped with LEASE_LOST`).toBe('LEASE_LOST');
      expect(summaryLine(stale.child), `${stale.tag} reported no end of the run`).toBeUndefined();
      if (bytesAtTakeover !== undefined) staleBytes.push(main.segmentBytes!(runId, taker.epoch!) - bytesAtTakeover);
      holder = taker;
    }

    const last = holder;
    await within(last.child.exit, 60_000, `${last.tag}, the last holder, to complete run ${runId}`);
    await last.child.expectExit(0);
    epochs.push(last.epoch!);
    await within(reference.exit, 60_000, 'the uninterrupted reference run to complete');
    await reference.expectExit(0);

    // the result: byte for byte an uninterrupted run's (what the last holder printed, and what the store holds)
    const expected = summaryLine(reference);
    expect(expected).toMatch(/^summary \{"status":"completed","result":/);
    expect(summaryLine(last.child)).toBe(expected);
    const cairn = new Cairn({ store, handleSignals: false });
    const run = await cairn.get(runId);
    expect(`summary ${JSON.stringify({ status: run?.status, result: run?.result })}`).toBe(expected);
    // every stopped attempt was found crashed by its taker; the last one completed
    expect(run?.attempts.map((a) => [a.pid, a.outcome])).toEqual(
      holders.map((h, i) => [h.child.pid, i === holders.length - 1 ? 'completed' : 'crashed']),
    );

    const final = await readTrusted(store, runId);
    const by = writers(final, holders);

    // the logs are whole: checkpoints 1..n, every step once and in order, every item exactly once
    expect(final.checkpoints.map((c) => c.seq)).toEqual(final.checkpoints.map((_, i) => i + 1));
    if (scenario.name === 'steps') {
      const steps = final.checkpoints.filter((c) => c.kind === 'step').map((c) => c.step);
      expect(steps).toEqual(Array.from({ length: STEPS + 1 }, (_, i) => i + 1));
      expect(final.items).toEqual([]);
    } else {
      expect(final.checkpoints.map((c) => c.kind)).toEqual(['stage', 'stage', 'stage']);
      expect(final.items.filter((i) => i.status !== 'done')).toEqual([]);
      const keys = final.items.map((i) => i.key);
      expect(new Set(keys).size, 'one result per key').toBe(keys.length);
      expect(keys.length).toBe(ITEMS);
    }

    // 0 acknowledged records lost: every ack is there, written by the process that acknowledged it
    const bySeq = new Map(final.checkpoints.map((c, i) => [c.seq, { ...c, writer: by.checkpoints[i] }]));
    const byKey = new Map(final.items.map((item, i) => [item.key, by.items[i]]));
    for (const h of holders) {
      for (const ack of h.acks) {
        const record = bySeq.get(ack.seq);
        expect(record, `checkpoint ${ack.seq} acknowledged by ${h.tag} is lost`).toBeDefined();
        expect(record?.kind, `checkpoint ${ack.seq} acknowledged by ${h.tag}`).toBe(ack.kind);
        if (ack.kind === 'step') expect(record?.writer, `checkpoint ${ack.seq} acknowledged by ${h.tag} has another writer`).toBe(h.index);
      }
      const lost = h.keys.filter((key) => byKey.get(key) !== h.index);
      expect(lost, `items acknowledged by ${h.tag} lost or written by another process`).toEqual([]);
    }

    // 0 records of a stale epoch trusted after the takeover: what was trusted then is a prefix of
    // the final logs, and every record after it was written by a later holder
    for (const [stale, trusted] of atTakeover) {
      expect(final.checkpoints.slice(0, trusted.checkpoints.length), `checkpoints trusted when ${stale.tag} was taken over`).toEqual(
        trusted.checkpoints,
      );
      expect(final.items.slice(0, trusted.items.length), `items trusted when ${stale.tag} was taken over`).toEqual(trusted.items);
      const staleAfter = [
        ...by.checkpoints.slice(trusted.checkpoints.length).filter((w) => w !== undefined && w <= stale.index),
        ...by.items.slice(trusted.items.length).filter((w) => w <= stale.index),
      ];
      expect(staleAfter, `records written by ${stale.tag} or before it, trusted after its takeover`).toEqual([]);
    }
    // and writers only move forward along the logs
    for (const order of [by.checkpoints.filter((w) => w !== undefined), by.items]) {
      expect(
        order.every((w, i) => i === 0 || w >= order[i - 1]!),
        'a record of an older holder after one of a newer holder',
      ).toBe(true);
    }
    if (kind.name === 'Postgres')
      expect(await epochRegressions(schemaOf(main.url), runId)).toEqual({ checkpoints: 0, items: 0, unfenced: 0 });

    // validate: the run, and the whole store through the CLI
    expect(await store.validateRun(runId)).toEqual([]);
    await cairn.close();
    expect(await validateAll(main.url)).toBe(1);
    expect(await validateAll(ref.url)).toBe(1);

    const trustedUnacked = holders.slice(0, -1).map((h) => {
      const mine = atTakeover.get(h)!;
      const records = mine.checkpoints.filter((c) => c.by === h.tag).length + mine.items.filter((item) => item.by === h.tag).length;
      const acked = h.acks.filter((a) => a.kind === 'step').length + h.keys.length;
      return records - acked;
    });
    console.log(
      `[${kind.name} · ${scenario.name}] ${STOPS} stops after ${holders
        .slice(0, -1)
        .map((h) => `${h.stoppedAfter} (${h.stopMode})`)
        .join(', ')} commits; epochs ${epochs.join(' → ')}; refused: ${holders
        .slice(0, -1)
        .map((h) => h.refusals().join('+'))
        .join(', ')}; records trusted but never acked by the stopped one: ${trustedUnacked.join(', ')}` +
        `${main.writeLockHeld ? `; stops moved out of a write transaction: ${moved}` : ''}` +
        `${main.segmentBytes ? `; bytes appended by the stopped one after its takeover: ${staleBytes.join(', ')}` : ''}; ` +
        `${final.checkpoints.length} checkpoints, ${final.items.length} items; ${((Date.now() - started) / 1000).toFixed(1)} s`,
    );
  } finally {
    await store.close();
    await main.close();
    await ref.close();
  }
}

for (const kind of KINDS) {
  describe.skipIf(!kind.available)(`a stale lease holder on the ${kind.name} store (SIGSTOP, takeover, SIGCONT)`, () => {
    for (const scenario of SCENARIOS) {
      const what = scenario.name === 'steps' ? `a workflow of ${STEPS} durable steps` : `ctx.items over ${ITEMS} items`;
      it(`${what}: ${STOPS} takeovers, no acknowledged record lost, nothing stale trusted`, { timeout: 240_000 }, () =>
        staleHolderSequence(kind, scenario),
      );
    }
  });
}
