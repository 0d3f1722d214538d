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
  {
    version: 3,
    name: 'rate limits: a sliding log of grants per named limit, granted by limit_acquire under an advisory lock',
    sql: (s) => `
      CREATE TABLE ${s}.limits (
        name          text COLLATE "C" PRIMARY KEY,
        window_ms     float8 NOT NULL,           -- the longest window any process declared: older grants are dropped
        blocked_until timestamptz,               -- a 429 asked that nothing start before it (server clock)
        grants        bigint NOT NULL DEFAULT 0, -- how many rows the limit has in limit_grants
        tokens        float8 NOT NULL DEFAULT 0  -- and their tokens: an acquire reads these, not the rows
      );
      CREATE TABLE ${s}.limit_grants (
        id     text COLLATE "C" PRIMARY KEY, -- chosen by the caller: a grant whose reply was lost is found, not made twice
        name   text COLLATE "C" NOT NULL,
        at     timestamptz NOT NULL,         -- clock_timestamp() of the server, read under the limit's lock
        tokens float8 NOT NULL
      );
      CREATE INDEX limit_grants_by_time ON ${s}.limit_grants (name, at);
      ${limitFunctions(s)}
    `,
  },
];

/**
 * An acquire in one round trip: `limit_acquire` takes the limit's advisory lock (held to the end
 * of the transaction, so acquires of one limit take turns on every machine), reads the server's
 * clock after it, drops the grants older than the window, and grants or says how long to wait (the
 * rule of `limit-window.ts`). It reads the limit's counters, not its rows: the rows are read only
 * to say how long to wait, from the oldest, as far as the one that blocks. `limit_charge` adds
 * tokens to a grant under the same lock. Their commits do not wait for the WAL flush: a grant only
 * orders live processes. Each statement of a volatile function sees what committed before it
 * started, the previous holder's grant included.
 */
function limitFunctions(s: string): string {
  return `
      CREATE FUNCTION ${s}.limit_acquire(
        p_name text, p_lock bigint, p_id text, p_per_ms float8, p_requests bigint, p_max_tokens float8, p_tokens float8
      ) RETURNS TABLE (granted boolean, at_ms float8, wait_ms float8, why text)
      LANGUAGE plpgsql VOLATILE AS $fn$
      DECLARE
        v_now timestamptz;
        v_per interval := make_interval(secs => p_per_ms / 1000);
        v_since timestamptz;
        v_window float8;
        v_blocked timestamptz;
        v_grants bigint;
        v_tokens float8;
        v_gone bigint;
        v_gone_tokens float8;
        v_count bigint;
        v_used float8;
        v_at timestamptz;
        v_wait float8 := 0;
        v_why text := 'slowed';
        v_ms float8;
      BEGIN
        PERFORM set_config('synchronous_commit', 'off', true);
        PERFORM pg_advisory_xact_lock(p_lock);
        v_now := clock_timestamp();
        v_since := v_now - v_per;
        SELECT l.window_ms, l.blocked_until, l.grants, l.tokens INTO v_window, v_blocked, v_grants, v_tokens
          FROM ${s}.limits l WHERE l.name = p_name;
        IF NOT FOUND THEN
          INSERT INTO ${s}.limits AS l (name, window_ms) VALUES (p_name, p_per_ms)
            ON CONFLICT (name) DO UPDATE SET window_ms = greatest(l.window_ms, excluded.window_ms)
            RETURNING l.window_ms, l.blocked_until, l.grants, l.tokens INTO v_window, v_blocked, v_grants, v_tokens;
        ELSIF v_window < p_per_ms THEN
          UPDATE ${s}.limits l SET window_ms = p_per_ms WHERE l.name = p_name;
          v_window := p_per_ms;
        END IF;
        WITH gone AS (
          DELETE FROM ${s}.limit_grants g WHERE g.name = p_name AND g.at <= v_now - make_interval(secs => v_window / 1000)
          RETURNING g.tokens
        ) SELECT count(*), coalesce(sum(gone.tokens), 0) INTO v_gone, v_gone_tokens FROM gone;
        v_grants := v_grants - v_gone;
        v_tokens := CASE WHEN v_grants = 0 THEN 0 ELSE v_tokens - v_gone_tokens END;
        v_count := v_grants;
        v_used := v_tokens;
        IF p_per_ms < v_window THEN
          -- another process declared a longer window: count this one's
          SELECT count(*), coalesce(sum(g.tokens), 0) INTO v_count, v_used FROM ${s}.limit_grants g
            WHERE g.name = p_name AND g.at > v_since;
        END IF;
        IF v_blocked > v_now THEN
          v_wait := extract(epoch FROM v_blocked - v_now) * 1000;
        END IF;
        IF p_requests IS NOT NULL AND v_count >= p_requests THEN
          SELECT g.at INTO v_at FROM ${s}.limit_grants g WHERE g.name = p_name AND g.at > v_since
            ORDER BY g.at, g.id OFFSET v_count - p_requests LIMIT 1;
          v_ms := CASE WHEN FOUND THEN extract(epoch FROM v_at + v_per - v_now) * 1000 ELSE p_per_ms END;
          IF v_ms > v_wait THEN v_wait := v_ms; v_why := 'requests'; END IF;
        END IF;
        IF p_max_tokens IS NOT NULL AND v_used + p_tokens > p_max_tokens THEN
          SELECT w.at INTO v_at FROM (
            SELECT g.at, g.id, sum(g.tokens) OVER (ORDER BY g.at, g.id) AS freed
            FROM ${s}.limit_grants g WHERE g.name = p_name AND g.at > v_since
          ) w WHERE w.freed >= v_used + p_tokens - p_max_tokens ORDER BY w.at, w.id LIMIT 1;
          v_ms := CASE WHEN FOUND THEN extract(epoch FROM v_at + v_per - v_now) * 1000 ELSE p_per_ms END;
          IF v_ms > v_wait THEN v_wait := v_ms; v_why := 'tokens'; END IF;
        END IF;
        IF v_wait > 0 THEN
          IF v_gone > 0 THEN
            UPDATE ${s}.limits l SET grants = v_grants, tokens = v_tokens WHERE l.name = p_name;
          END IF;
          RETURN QUERY SELECT false, NULL::float8, v_wait, v_why;
          RETURN;
        END IF;
        INSERT INTO ${s}.limit_grants (id, name, at, tokens) VALUES (p_id, p_name, v_now, p_tokens);
        UPDATE ${s}.limits l SET grants = v_grants + 1, tokens = v_tokens + p_tokens WHERE l.name = p_name;
        RETURN QUERY SELECT true, extract(epoch FROM v_now)::float8 * 1000, 0::float8, NULL::text;
      END
      $fn$;

      CREATE FUNCTION ${s}.limit_charge(p_lock bigint, p_id text, p_total float8) RETURNS void
      LANGUAGE plpgsql VOLATILE AS $fn$
      DECLARE
        v_name text;
        v_tokens float8;
      BEGIN
        PERFORM set_config('synchronous_commit', 'off', true);
        PERFORM pg_advisory_xact_lock(p_lock);
        SELECT g.name, g.tokens INTO v_name, v_tokens FROM ${s}.limit_grants g WHERE g.id = p_id;
        IF NOT FOUND OR p_total <= v_tokens THEN
          RETURN; -- left the window, or nothing more to count (a charge sent again)
        END IF;
        UPDATE ${s}.limit_grants g SET tokens = p_total WHERE g.id = p_id;
        UPDATE ${s}.limits l SET tokens = l.tokens + (p_total - v_tokens) WHERE l.name = v_name;
      END
      $fn$;`;
}

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
