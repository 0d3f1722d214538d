/**
 * Numbered schema migrations, run by `SqliteStore.open` under `BEGIN IMMEDIATE`: that write lock
 * is what makes concurrent openers of one file take turns, so a schema is migrated exactly once.
 * Each migration's version row is inserted before its SQL (as graphile-worker does), so two
 * migrators could never both apply it. A database newer than this code is refused, never touched.
 *
 * Tables are prefixed `cairn_` so that a `sqlite:` URL may point at a database shared with an app.
 * Records are stored as the codec's sealed lines (`line` columns: checksum + format version travel
 * with them); the other columns are copies made at write time, for queries only.
 */
import { CairnError } from '../../core/errors.js';
import type { SqliteDatabase } from './sqlite-driver.js';

export interface Migration {
  readonly version: number;
  /** What it does, for people reading `cairn_migrations` history. */
  readonly name: string;
  readonly sql: string;
}

export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: 'runs, checkpoints, item ledgers, artifacts, leases',
    sql: `
      CREATE TABLE cairn_runs (
        id         TEXT PRIMARY KEY,
        name       TEXT NOT NULL,
        status     TEXT NOT NULL,
        version    INTEGER NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        next_seq   INTEGER NOT NULL DEFAULT 1,  -- never goes back, so checkpoint numbers are never reused
        last_epoch INTEGER NOT NULL DEFAULT 0,  -- fencing token of the newest lease
        line       TEXT NOT NULL
      );
      CREATE INDEX cairn_runs_by_updated ON cairn_runs (updated_at);

      CREATE TABLE cairn_checkpoints (
        run_id     TEXT NOT NULL REFERENCES cairn_runs (id) ON DELETE CASCADE,
        seq        INTEGER NOT NULL,
        created_at TEXT NOT NULL,
        kind       TEXT NOT NULL,
        line       TEXT NOT NULL,
        PRIMARY KEY (run_id, seq)
      );

      CREATE TABLE cairn_ledgers (
        id     INTEGER PRIMARY KEY,
        run_id TEXT NOT NULL REFERENCES cairn_runs (id) ON DELETE CASCADE,
        stage  TEXT NOT NULL,
        UNIQUE (run_id, stage)
      );

      -- append order is rowid order: a new row always gets a rowid above every existing one
      CREATE TABLE cairn_items (
        id        INTEGER PRIMARY KEY,
        ledger_id INTEGER NOT NULL REFERENCES cairn_ledgers (id) ON DELETE CASCADE,
        line      TEXT NOT NULL
      );
      CREATE INDEX cairn_items_by_ledger ON cairn_items (ledger_id, id);

      CREATE TABLE cairn_artifacts (
        id     INTEGER PRIMARY KEY,
        run_id TEXT NOT NULL REFERENCES cairn_runs (id) ON DELETE CASCADE,
        path   TEXT NOT NULL,
        line   TEXT NOT NULL
      );
      CREATE INDEX cairn_artifacts_by_path ON cairn_artifacts (run_id, path);

      CREATE TABLE cairn_leases (
        run_id      TEXT PRIMARY KEY REFERENCES cairn_runs (id) ON DELETE CASCADE,
        owner       TEXT NOT NULL,
        epoch       INTEGER NOT NULL,
        host        TEXT NOT NULL,
        pid         INTEGER NOT NULL,
        acquired_at TEXT NOT NULL,
        expires_at  TEXT NOT NULL
      );
    `,
  },
  {
    version: 2,
    name: 'work queue',
    sql: `
      ALTER TABLE cairn_runs ADD COLUMN queued_at TEXT; -- set by enqueue: the run is offered to workers
      CREATE INDEX cairn_runs_queued ON cairn_runs (queued_at, id) WHERE queued_at IS NOT NULL;
    `,
  },
  {
    version: 3,
    name: 'rate limits: a sliding log of grants per named limit',
    sql: `
      CREATE TABLE cairn_limits (
        name          TEXT PRIMARY KEY,
        window_ms     REAL NOT NULL,              -- the longest window any process declared: older grants are dropped
        blocked_until REAL NOT NULL DEFAULT 0,    -- ms since 1970: a 429 asked that nothing start before it
        grants        INTEGER NOT NULL DEFAULT 0, -- how many rows the limit has in cairn_limit_grants
        tokens        REAL NOT NULL DEFAULT 0     -- and their tokens: an acquire reads these, not the rows
      );
      CREATE TABLE cairn_limit_grants (
        id     TEXT PRIMARY KEY,
        name   TEXT NOT NULL,
        at     REAL NOT NULL,                   -- ms since 1970, this machine's clock, read under the write lock
        tokens REAL NOT NULL
      );
      CREATE INDEX cairn_limit_grants_by_time ON cairn_limit_grants (name, at);
    `,
  },
];

/** The newest schema version this code knows. */
export const LATEST_SCHEMA_VERSION = MIGRATIONS.reduce((max, m) => Math.max(max, m.version), 0);

export interface MigrationResult {
  /** Schema version found when the lock was taken (0 for a new database). */
  readonly from: number;
  readonly to: number;
}

/** The schema version, read without a lock; undefined before the first migration made the table. */
function currentVersion(db: SqliteDatabase): number | undefined {
  try {
    return Number(db.prepare('SELECT coalesce(max(version), 0) FROM cairn_migrations').pluck().get());
  } catch {
    return undefined; // no table yet: the locked path below makes it
  }
}

/**
 * Brings the schema of `db` up to date, or throws `SCHEMA_TOO_NEW` without changing anything.
 * `migrations` is a parameter for tests; they must be in increasing version order.
 */
export function migrate(db: SqliteDatabase, file: string, migrations: readonly Migration[] = MIGRATIONS): MigrationResult {
  const latest = migrations.reduce((max, m) => Math.max(max, m.version), 0);
  // a schema that is up to date is seen with a read, which never waits for a writer (WAL): a
  // process that stops while it holds the write lock must not keep others from opening the store
  const seen = currentVersion(db);
  if (seen === latest) return { from: seen, to: seen };
  const run = db.transaction((): MigrationResult => {
    db.exec('CREATE TABLE IF NOT EXISTS cairn_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)');
    const current = Number(db.prepare('SELECT coalesce(max(version), 0) FROM cairn_migrations').pluck().get());
    if (current > latest) {
      throw new CairnError(
        'SCHEMA_TOO_NEW',
        `The SQLite database ${file} has schema version ${current}, but this cairnjs knows versions up to ${latest}: ` +
          'it was written by a newer cairnjs. Upgrade cairnjs to open it; nothing was changed.',
        { file, schemaVersion: current, supportedVersion: latest },
      );
    }
    const record = db.prepare('INSERT INTO cairn_migrations (version, applied_at) VALUES (?, ?)');
    for (const migration of migrations) {
      if (migration.version <= current) continue;
      record.run(migration.version, new Date().toISOString());
      db.exec(migration.sql);
    }
    return { from: current, to: Math.max(current, latest) };
  });
  return run.immediate();
}
