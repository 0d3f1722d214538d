/**
 * Removes only a run's run record, the way a user with a database shell (or a crash of a tool
 * that bypassed the store) could: the run's checkpoints, ledgers, artifact entries and lease stay
 * behind as leftovers. SQL stores delete the row with foreign keys bypassed (the `sqlite3` shell's
 * default is foreign keys off; Postgres needs `session_replication_role = replica`), so no cascade
 * runs. Shared by the conformance harnesses and the engine and CLI tests.
 */
import fs from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { fileSegments } from './helpers.js';
import { MemoryStore } from '../src/stores/memory/memory-store.js';

export async function removeRunRecord(url: string, runId: string): Promise<void> {
  if (url.startsWith('memory:')) {
    const data = new MemoryStore(url.slice('memory:'.length)).space.get(runId);
    if (data?.runLine === undefined) throw new Error(`tamper: no run ${runId} in ${url}`);
    delete data.runLine;
    return;
  }
  if (url.startsWith('sqlite:')) {
    const db = new Database(url.slice('sqlite:'.length).replace(/\?synchronous=\w+$/i, ''));
    try {
      db.pragma('foreign_keys = OFF'); // outside a transaction: inside one it would be ignored
      if (db.prepare('DELETE FROM cairn_runs WHERE id = ?').run(runId).changes !== 1) throw new Error(`tamper: no run ${runId} in ${url}`);
    } finally {
      db.close();
    }
    return;
  }
  if (/^postgres(ql)?:/.test(url)) {
    // loaded here: it probes the server when loaded, which tests of other stores must not depend on
    const { schemaOf, withClient } = await import('./postgres.js');
    const schema = schemaOf(url);
    await withClient(async (client) => {
      await client.query('BEGIN');
      await client.query('SET LOCAL session_replication_role = replica'); // no foreign-key triggers: no cascade
      const deleted = await client.query(`DELETE FROM "${schema}".runs WHERE id = $1`, [runId]);
      if (deleted.rowCount !== 1) throw new Error(`tamper: no run ${runId} in ${url}`);
      await client.query('COMMIT');
    });
    return;
  }
  if (url.startsWith('file:')) {
    // what makes a folder a run: its segments' seals and run logs (checkpoints, ledgers, artifacts and lease stay)
    const root = url.slice('file:'.length);
    const segments = fileSegments(root, runId);
    if (!fs.existsSync(path.join(segments.at(-1)!, 'run.jsonl'))) throw new Error(`tamper: no run ${runId} in ${url}`);
    for (const segment of segments) {
      fs.rmSync(path.join(segment, 'seal.json'), { force: true });
      fs.rmSync(path.join(segment, 'run.jsonl'), { force: true });
    }
    return;
  }
  throw new Error(`tamper: removeRunRecord does not support ${url}`);
}
