import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, afterEach } from 'vitest';
import { openStore } from '../../src/stores/open-store.js';
import { removeRunRecord } from '../remove-run-record.js';
import type { StoreHarness } from './harness.js';
import { describeStoreConformance } from './store-spec.js';

const DB_FILE = 'cairn.db';

const dirOf = (url: string): string => path.dirname(url.slice('sqlite:'.length));

/** Damages raw rows through a separate connection, as another process or a bad disk would. */
function withDatabase(url: string, fn: (db: Database.Database) => void): Promise<void> {
  const db = new Database(url.slice('sqlite:'.length));
  try {
    db.transaction(() => fn(db)).immediate();
  } finally {
    db.close();
  }
  return Promise.resolve();
}

function mustChange(changes: number, what: string): void {
  if (changes !== 1) throw new Error(`tamper: no ${what}`);
}

// The suite destroys each test's main URL; extra fresh URLs (a second store in one test) are removed
// here once every test passed, and kept with the failed ones otherwise.
const created: string[] = [];
let failed = false;
afterEach((context) => {
  if (context.task.result?.state === 'fail') failed = true;
});
afterAll(async () => {
  if (!failed) for (const dir of created) await fs.rm(dir, { recursive: true, force: true });
});

const harness: StoreHarness = {
  name: 'sqlite',
  freshUrl: async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'cairn-sqlite-'));
    created.push(dir);
    return `sqlite:${path.join(dir, DB_FILE)}`;
  },
  open: (url, options) => openStore(url, options),
  destroy: (url) => fs.rm(dirOf(url), { recursive: true, force: true }),
  rootDir: dirOf,
  tamper: {
    mutateCheckpoint: (url, runId, seq, mutate) =>
      withDatabase(url, (db) => {
        const line = db.prepare('SELECT line FROM cairn_checkpoints WHERE run_id = ? AND seq = ?').pluck().get(runId, seq) as
          string | undefined;
        if (line === undefined) throw new Error(`tamper: no checkpoint ${seq}`);
        db.prepare('UPDATE cairn_checkpoints SET line = ? WHERE run_id = ? AND seq = ?').run(mutate(line), runId, seq);
      }),
    tearCheckpointTail: (url, runId, partial) =>
      withDatabase(url, (db) => {
        const seq = db.prepare('SELECT next_seq FROM cairn_runs WHERE id = ?').pluck().get(runId) as number | undefined;
        if (seq === undefined) throw new Error(`tamper: no run ${runId}`);
        db.prepare("INSERT INTO cairn_checkpoints (run_id, seq, created_at, kind, line) VALUES (?, ?, ?, 'state', ?)").run(
          runId,
          seq,
          new Date().toISOString(),
          partial,
        );
        db.prepare('UPDATE cairn_runs SET next_seq = ? WHERE id = ?').run(seq + 1, runId);
      }),
    mutateItem: (url, runId, stage, position, mutate) =>
      withDatabase(url, (db) => {
        const row = db
          .prepare(
            'SELECT i.id, i.line FROM cairn_items i JOIN cairn_ledgers l ON l.id = i.ledger_id WHERE l.run_id = ? AND l.stage = ? ORDER BY i.id LIMIT 1 OFFSET ?',
          )
          .get(runId, stage, position) as { id: number; line: string } | undefined;
        if (!row) throw new Error(`tamper: no item ${position} in ${stage}`);
        mustChange(db.prepare('UPDATE cairn_items SET line = ? WHERE id = ?').run(mutate(row.line), row.id).changes, 'item');
      }),
    mutateRun: (url, runId, mutate) =>
      withDatabase(url, (db) => {
        const line = db.prepare('SELECT line FROM cairn_runs WHERE id = ?').pluck().get(runId) as string | undefined;
        if (line === undefined) throw new Error(`tamper: no run ${runId}`);
        mustChange(db.prepare('UPDATE cairn_runs SET line = ? WHERE id = ?').run(mutate(line), runId).changes, 'run');
      }),
    removeRunRecord,
  },
};

describeStoreConformance(harness);
