/**
 * Numbered schema migrations, run by `PostgresStore.open` in one transaction that first takes a
 * transaction-scoped advisory lock derived from the schema name: concurrent openers of a fresh
 * schema take turns, so each migration is applied exactly once (ten processes starting at once
 * included). Each migration's version row is inserted before its SQL, as graphile-worker does, so
 * a second migrator could never apply it again. A schema newer than this code is refused and left
 * untouched (`SCHEMA_TOO_NEW`).
 *
 * Records are stored as the codec's sealed lines (`line` columns: checksum and format version
 * travel with them); the other columns are copies made at write time, for queries only. Ids and
 * stage names are `COLLATE "C"`: they are ASCII by rule, and byte order is the order every other
 * store sorts them in. `created_at`/`updated_at`/`queued_at` and lease times are the database
 * server's clock; the records' own `createdAt`/`updatedAt` are the writer's.
 */
import { createHash } from 'node:crypto';
import { CairnError } from '../../core/errors.js';
import { inTransaction, type PgPool, type PgQueryable } from './postgres-driver.js';

export interface PgMigration {
  readonly version: number;
  /** What it does, for people reading `schema_migrations`. */
  readonly name: string;
  /** The statements, given the quoted schema name (`"cairn"`). */
  readonly sql: (schema: string) => string;
}

export const MIGRATIONS: readonly PgMigration[] = [
  {
    version: 1,
    name: 'runs, checkpoints, item ledgers, artifacts, leases, queue',
    sql: (s) => `
      CREATE TABLE ${s}.runs (
        id         text COLLATE "C" PRIMARY KEY,
        name       text NOT NULL,
        status     text NOT NULL,
        version    integer NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        next_seq   bigint NOT NULL DEFAULT 1, -- never goes back, so checkpoint numbers are never reused
        queued_at  timestamptz,               -- set by enqueue: the run is offered to workers
        line       text NOT NULL
      );
      CREATE INDEX runs_by_updated ON ${s}.runs (updated_at);
      -- queued runs a worker may continue, oldest first: finished runs leave it, however many there are
      CREATE INDEX runs_claimable ON ${s}.runs (queued_at, id)
        WHERE queued_at IS NOT NULL AND status IN ('pending', 'interrupted', 'running');

      CREATE TABLE ${s}.checkpoints (
        run_id     text COLLATE "C" NOT NULL REFERENCES ${s}.runs (id) ON DELETE CASCADE,
        seq        bigint NOT NULL,
        kind       text NOT NULL,
        stage      text,
        created_at timestamptz NOT NULL DEFAULT now(),
        epoch      bigint,                    -- the lease epoch it was written under; null without a lease
        line       text NOT NULL,
        PRIMARY KEY (run_id, seq)
      );

      CREATE TABLE ${s}.ledgers (
        id     bigserial PRIMARY KEY,
        run_id text COLLATE "C" NOT NULL REFERENCES ${s}.runs (id) ON DELETE CASCADE,
        stage  text COLLATE "C" NOT NULL,
        UNIQUE (run_id, stage)
      );

      -- append order is id order: one batch is one statement, its rows numbered in order
      CREATE TABLE ${s}.items (
        id        bigserial PRIMARY KEY,
        ledger_id bigint NOT NULL REFERENCES ${s}.ledgers (id) ON DELETE CASCADE,
        epoch     bigint,
        line      text NOT NULL
      );
      CREATE INDEX items_by_ledger ON ${s}.items (ledger_id, id);

      CREATE TABLE ${s}.artifacts (
        id     bigserial PRIMARY KEY,
        run_id text COLLATE "C" NOT NULL REFERENCES ${s}.runs (id) ON DELETE CASCADE,
        path   text NOT NULL,
        epoch  bigint,
        line   text NOT NULL
      );
      CREATE INDEX artifacts_by_path ON ${s}.artifacts (run_id, path);

      -- one row per run once it was first locked; a released lease keeps its row, so epochs keep growing
      CREATE TABLE ${s}.leases (
        run_id      text COLLATE "C" PRIMARY KEY REFERENCES ${s}.runs (id) ON DELETE CASCADE,
        owner       text NOT NULL,
        epoch       bigint NOT NULL,
        host        text NOT NULL,
        pid         integer NOT NULL,
        acquired_at timestamptz NOT NULL,
        expires_at  timestamptz NOT NULL,
        released    boolean NOT NULL DEFAULT false
      );
    `,
  },
  {
    version: 2,
    name: 'write tokens: a write whose reply was lost with its connection is recognized, never applied twice',
    // columns without a default: adding them changes no row (instant on any table size)
    sql: (s) => `
      ALTER TABLE ${s}.leases ADD COLUMN token text;       -- the take of the lease (acquire, claim) that wrote it
      ALTER TABLE ${s}.ledgers ADD COLUMN last_batch text; -- the last batch of items appended to the ledger
    `,
  },
];

/** The newest schema version this code knows. */
export const LATEST_SCHEMA_VERSION = MIGRATIONS.reduce((max, m) => Math.max(max, m.version), 0);

export interface MigrationResult {
  /** Schema version found (0 for a new schema). */
  readonly from: number;
  readonly to: number;
}

/** A stable 64-bit advisory lock key for migrating `schema` (the same in every process and version). */
export function migrationLockKey(schema: string): string {
  return createHash('sha256').update(`cairn:migrate:${schema}`).digest().readBigInt64BE(0).toString();
}

/**
 * Brings `schema` up to date, creating it if needed, or throws `SCHEMA_TOO_NEW` without changing
 * anything. An up-to-date schema costs one query and no lock (and no CREATE privilege).
 * `migrations` is a parameter for tests; they must be in increasing version order.
 */
export async function migrate(pool: PgPool, schema: string, migrations: readonly PgMigration[] = MIGRATIONS): Promise<MigrationResult> {
  const latest = migrations.reduce((max, m) => Math.max(max, m.version), 0);
  const quoted = `"${schema}"`;
  const found = await currentVersion(pool, schema);
  if (found !== undefined) {
    checkNotTooNew(found, latest, schema);
    if (found === latest) return { from: found, to: found };
  }
  return inTransaction(pool, async (client) => {
    await client.query('SELECT pg_advisory_xact_lock($1::bigint)', [migrationLockKey(schema)]);
    await client.query(`CREATE SCHEMA IF NOT EXISTS ${quoted}`);
    await client.query(
      `CREATE TABLE IF NOT EXISTS ${quoted}.schema_migrations (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())`,
    );
    const current = (await currentVersion(client, schema)) ?? 0;
    checkNotTooNew(current, latest, schema);
    for (const migration of migrations) {
      if (migration.version <= current) continue;
      await client.query(`INSERT INTO ${quoted}.schema_migrations (version, name) VALUES ($1, $2)`, [migration.version, migration.name]);
      await client.query(migration.sql(quoted));
    }
    return { from: current, to: Math.max(current, latest) };
  });
}

/** The schema's version, or undefined when it has no migrations table yet. */
async function currentVersion(db: PgQueryable, schema: string): Promise<number | undefined> {
  const exists = await db.query('SELECT to_regclass($1) IS NOT NULL AS present', [`"${schema}".schema_migrations`]);
  if (!(exists.rows[0] as { present: boolean }).present) return undefined;
  const result = await db.query(`SELECT coalesce(max(version), 0)::int AS version FROM "${schema}".schema_migrations`);
  return (result.rows[0] as { version: number }).version;
}

function checkNotTooNew(current: number, latest: number, schema: string): void {
  if (current <= latest) return;
  throw new CairnError(
    'SCHEMA_TOO_NEW',
    `The Postgres schema ${schema} has version ${current}, but this cairnjs knows versions up to ${latest}: ` +
      'it was written by a newer cairnjs. Upgrade cairnjs to open it; nothing was changed.',
    { schema, schemaVersion: current, supportedVersion: latest },
  );
}
