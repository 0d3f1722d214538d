/**
 * The conformance suite on the real Postgres server: every test gets a schema of its own
 * (`cairn_t_<random>`, dropped after it unless it failed) and an artifact folder of its own.
 * Raw damage goes through a separate `pg` client, as another process or a bad disk would.
 */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type pg from 'pg';
import { afterAll, afterEach, describe } from 'vitest';
import { openStore } from '../../src/stores/open-store.js';
import { POSTGRES, dropSchema, freshSchema, postgresUrl, schemaOf, withClient } from '../postgres.js';
import { removeRunRecord } from '../remove-run-record.js';
import type { StoreHarness } from './harness.js';
import { describeStoreConformance } from './store-spec.js';

/** One private parent for every artifact folder of this file, made with the first one. */
let parent = '';
const artifactsOf = (url: string): string => new URL(url).searchParams.get('artifacts') ?? '';

// The suite destroys each test's main URL; extra schemas (a second store in one test) are dropped
// here once every test passed, and kept with the failed ones otherwise.
const created: string[] = [];
let failed = false;
afterEach((context) => {
  if (context.task.result?.state === 'fail') failed = true;
});
afterAll(async () => {
  if (!failed) {
    for (const schema of created) await dropSchema(schema);
    if (parent) await fs.rm(parent, { recursive: true, force: true });
  }
});

/** Runs `fn` on a client whose search_path is the store's schema, in one transaction. */
function withSchema(url: string, fn: (client: pg.Client) => Promise<void>): Promise<void> {
  const schema = schemaOf(url);
  return withClient(async (client) => {
    await client.query('BEGIN');
    await client.query(`SET LOCAL search_path TO "${schema}"`);
    await fn(client);
    await client.query('COMMIT');
  });
}

async function mustChange(result: Promise<pg.QueryResult>, what: string): Promise<void> {
  if ((await result).rowCount !== 1) throw new Error(`tamper: no ${what}`);
}

const harness: StoreHarness = {
  name: 'postgres',
  freshUrl: async () => {
    const schema = freshSchema();
    created.push(schema);
    parent ||= await fs.mkdtemp(path.join(os.tmpdir(), 'cairn-pg-conformance-'));
    const dir = await fs.mkdtemp(path.join(parent, 'store-'));
    return postgresUrl(schema, { artifacts: path.join(dir, 'artifacts'), pool: '4' });
  },
  open: (url, options) => openStore(url, options),
  destroy: async (url) => {
    await dropSchema(schemaOf(url));
    await fs.rm(path.dirname(artifactsOf(url)), { recursive: true, force: true });
  },
  rootDir: artifactsOf,
  tamper: {
    mutateCheckpoint: (url, runId, seq, mutate) =>
      withSchema(url, async (db) => {
        const row = (await db.query<{ line: string }>('SELECT line FROM checkpoints WHERE run_id = $1 AND seq = $2', [runId, seq])).rows[0];
        if (!row) throw new Error(`tamper: no checkpoint ${seq}`);
        await mustChange(
          db.query('UPDATE checkpoints SET line = $1 WHERE run_id = $2 AND seq = $3', [mutate(row.line), runId, seq]),
          'checkpoint',
        );
      }),
    tearCheckpointTail: (url, runId, partial) =>
      withSchema(url, async (db) => {
        const row = (await db.query<{ next_seq: string }>('SELECT next_seq FROM runs WHERE id = $1', [runId])).rows[0];
        if (!row) throw new Error(`tamper: no run ${runId}`);
        const seq = Number(row.next_seq);
        await db.query("INSERT INTO checkpoints (run_id, seq, kind, line) VALUES ($1, $2, 'state', $3)", [runId, seq, partial]);
        await db.query('UPDATE runs SET next_seq = $1 WHERE id = $2', [seq + 1, runId]);
      }),
    mutateItem: (url, runId, stage, position, mutate) =>
      withSchema(url, async (db) => {
        const row = (
          await db.query<{ id: string; line: string }>(
            'SELECT i.id, i.line FROM items i JOIN ledgers l ON l.id = i.ledger_id WHERE l.run_id = $1 AND l.stage = $2 ORDER BY i.id LIMIT 1 OFFSET $3',
            [runId, stage, position],
          )
        ).rows[0];
        if (!row) throw new Error(`tamper: no item ${position} in ${stage}`);
        await mustChange(db.query('UPDATE items SET line = $1 WHERE id = $2', [mutate(row.line), row.id]), 'item');
      }),
    mutateRun: (url, runId, mutate) =>
      withSchema(url, async (db) => {
        const row = (await db.query<{ line: string }>('SELECT line FROM runs WHERE id = $1', [runId])).rows[0];
        if (!row) throw new Error(`tamper: no run ${runId}`);
        await mustChange(db.query('UPDATE runs SET line = $1 WHERE id = $2', [mutate(row.line), runId]), 'run');
      }),
    removeRunRecord,
  },
};

describe.skipIf(!POSTGRES.reachable)('postgres', () => {
  describeStoreConformance(harness);
});
