/**
 * Every SQL statement of the Postgres store, built once per store. The schema name — checked
 * against `^[a-z_][a-z0-9_]{0,62}$` and double-quoted — is the only thing ever placed into SQL
 * text; every value (run ids, names, stages, statuses, lines, limits, seqs, paths) is a `$n`
 * parameter, and lists travel as arrays (`$n::text[]`, `unnest`).
 *
 * Fencing: a write made under a lease checks the lease in the same statement, through
 * `EXISTS (SELECT … FROM leases … FOR SHARE)`. The share lock orders the write against a takeover
 * (which updates that row): a write that got the lock first commits before the takeover can
 * proceed; one that waited re-reads the row after the takeover committed, sees another epoch, and
 * writes nothing. Lock order is lease row, then run row; a claim, which takes them the other way,
 * never waits for a lease row while it holds a run row (`SKIP LOCKED`), so the two cannot deadlock.
 */

import type { Lease } from '../store.js';

// Output columns cast to text (bigints) keep their names, so ORDER BY always names the table's column (`i.id`), never the text alias.

/** A timestamptz as ISO text with milliseconds, in UTC, whatever the session's settings. */
const iso = (column: string): string => `to_char(${column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')`;

/** A lease row as {@link LeaseRow}: epoch as text (bigint), times as ISO text. */
const leaseColumns = (t: string): string =>
  `${t}.run_id, ${t}.owner, ${t}.epoch::text AS epoch, ${t}.host, ${t}.pid, ${iso(`${t}.acquired_at`)} AS acquired_at, ${iso(`${t}.expires_at`)} AS expires_at`;

/** A run row's line and header columns, named as `RunRowColumns` (codec.ts). */
const runRow = (t: string): string =>
  `${t}.id, ${t}.name, ${t}.status, ${t}.version, ${iso(`${t}.created_at`)} AS "createdAt", ${iso(`${t}.updated_at`)} AS "updatedAt", ${t}.line`;

/** `$n` milliseconds as an interval. */
const ms = (param: string): string => `make_interval(secs => ${param}::float8 / 1000)`;

/** A lease that still holds, by the database clock. */
const LIVE = (t: string): string => `(NOT ${t}.released AND ${t}.expires_at > now())`;

/** The statuses a worker continues: a queued run in one of them is claimable when no live lease holds it. */
const CLAIMABLE_STATUSES = `('pending', 'interrupted', 'running')`;

export interface LeaseRow {
  readonly run_id: string;
  readonly owner: string;
  readonly epoch: string;
  readonly host: string;
  readonly pid: number;
  readonly acquired_at: string;
  readonly expires_at: string;
}

/** Where a run's record is, for messages: its row (`row "cairn".runs id=…`). */
export function runRowWhere(schema: string, runId: string): string {
  return `row "${schema}".runs id=${runId}`;
}

/** The statements, for one schema. */
export type PostgresSql = ReturnType<typeof buildSql>;

export function buildSql(schema: string) {
  const s = `"${schema}"`;
  const runs = `${s}.runs`;
  const checkpoints = `${s}.checkpoints`;
  const ledgers = `${s}.ledgers`;
  const items = `${s}.items`;
  const artifacts = `${s}.artifacts`;
  const leases = `${s}.leases`;
  /** True without a lease ($epoch null); with one, true only while it is the run's current, unreleased lease (and share-locks it). */
  const fence = (run: string, epoch: string, owner: string): string =>
    `(${epoch}::bigint IS NULL OR EXISTS (SELECT 1 FROM ${leases} f WHERE f.run_id = ${run} AND f.epoch = ${epoch}::bigint ` +
    `AND f.owner = ${owner}::text AND NOT f.released FOR SHARE))`;

  return Object.freeze({
    // Runs
    runLine: `SELECT line FROM ${runs} WHERE id = $1`,
    /** The run row as `RunRowColumns`: the line and the header columns (what a damaged line is read back from). */
    runRow: `SELECT ${runRow('r')} FROM ${runs} r WHERE r.id = $1`,
    /** The run with what a fenced compare-and-set needs: its line and header columns, its row identity, and its lease. */
    runForUpdate:
      `SELECT ${runRow('r')}, r.created_at::text AS created, l.epoch::text AS lease_epoch, l.owner AS lease_owner, l.released AS lease_released ` +
      `FROM ${runs} r LEFT JOIN ${leases} l ON l.run_id = r.id WHERE r.id = $1`,
    /**
     * Inserts the run unless the id is taken or rows of an earlier run with that id are left
     * without a run row (`leftovers` says which); no row inserted in either case.
     */
    insertRun:
      `INSERT INTO ${runs} (id, name, status, version, line) SELECT $1::text, $2::text, $3::text, $4::integer, $5::text ` +
      `WHERE NOT EXISTS (SELECT 1 FROM ${checkpoints} WHERE run_id = $1) AND NOT EXISTS (SELECT 1 FROM ${ledgers} WHERE run_id = $1) ` +
      `AND NOT EXISTS (SELECT 1 FROM ${artifacts} WHERE run_id = $1) AND NOT EXISTS (SELECT 1 FROM ${leases} WHERE run_id = $1) ` +
      `ON CONFLICT (id) DO NOTHING`,
    /** Compare-and-set on version and row identity (a run deleted and created again is another row), fenced. */
    updateRun:
      `UPDATE ${runs} SET status = $3, version = $4, line = $5, updated_at = now() ` +
      `WHERE id = $1 AND version = $2 AND created_at = $6::timestamptz AND ${fence('$1', '$7', '$8')}`,
    deleteRun: `DELETE FROM ${runs} WHERE id = $1`,
    /** Runs newest first; `$3` (olderThanMs) is measured by the database clock; `$4` null = no limit. */
    listRuns:
      `SELECT ${runRow(runs)} FROM ${runs} WHERE ($1::text IS NULL OR name = $1) AND ($2::text[] IS NULL OR status = ANY ($2::text[])) ` +
      `AND ($3::float8 IS NULL OR updated_at <= now() - ${ms('$3')}) ORDER BY updated_at DESC, id LIMIT $4 OFFSET $5`,
    /**
     * Every id with a run row or with rows left without one. Checkpoint ids are found by a loose
     * index scan (one probe per distinct run id), not by reading every checkpoint row.
     */
    runIds:
      `WITH RECURSIVE cp (id) AS ((SELECT run_id FROM ${checkpoints} ORDER BY run_id LIMIT 1) ` +
      `UNION ALL SELECT (SELECT c.run_id FROM ${checkpoints} c WHERE c.run_id > cp.id ORDER BY c.run_id LIMIT 1) FROM cp WHERE cp.id IS NOT NULL) ` +
      `SELECT id FROM ${runs} UNION SELECT id FROM cp WHERE id IS NOT NULL UNION SELECT run_id FROM ${ledgers} ` +
      `UNION SELECT run_id FROM ${artifacts} UNION SELECT run_id FROM ${leases} ORDER BY 1`,
    /** The rows of run `$1` under the run row: leftovers, when there is no run row. */
    leftovers:
      `SELECT (SELECT count(*) FROM ${checkpoints} WHERE run_id = $1)::int AS checkpoints, ` +
      `(SELECT count(*) FROM ${ledgers} WHERE run_id = $1)::int AS ledgers, ` +
      `(SELECT count(*) FROM ${items} i JOIN ${ledgers} l ON l.id = i.ledger_id WHERE l.run_id = $1)::int AS items, ` +
      `(SELECT count(*) FROM ${artifacts} WHERE run_id = $1)::int AS artifacts, ` +
      `(SELECT count(*) FROM ${leases} WHERE run_id = $1)::int AS leases`,
    /**
     * Deletes the rows of run `$1` left without a run row (never a run's own rows: none while its
     * row exists), in one statement; ledgers take their items along (cascade). Returns how many
     * rows went and the epoch of a lease row among them.
     */
    deleteLeftovers:
      `WITH gone AS (SELECT NOT EXISTS (SELECT 1 FROM ${runs} WHERE id = $1) AS ok), ` +
      `c AS (DELETE FROM ${checkpoints} WHERE run_id = $1 AND (SELECT ok FROM gone) RETURNING 1), ` +
      `l AS (DELETE FROM ${ledgers} WHERE run_id = $1 AND (SELECT ok FROM gone) RETURNING 1), ` +
      `a AS (DELETE FROM ${artifacts} WHERE run_id = $1 AND (SELECT ok FROM gone) RETURNING 1), ` +
      `k AS (DELETE FROM ${leases} WHERE run_id = $1 AND (SELECT ok FROM gone) RETURNING epoch) ` +
      `SELECT ((SELECT count(*) FROM c) + (SELECT count(*) FROM l) + (SELECT count(*) FROM a) + (SELECT count(*) FROM k))::int AS removed, ` +
      `(SELECT max(epoch) FROM k)::text AS epoch`,

    // Checkpoints
    nextSeq:
      `SELECT r.next_seq::text AS next_seq, (SELECT max(c.seq) FROM ${checkpoints} c WHERE c.run_id = r.id)::text AS max_seq ` +
      `FROM ${runs} r WHERE r.id = $1`,
    /** Raises next_seq past a stored seq (only after damage: a row the counter did not see). */
    repairNextSeq: `UPDATE ${runs} SET next_seq = greatest(next_seq, $2::bigint) WHERE id = $1`,
    /**
     * Takes seq `$2` (only if it is still the run's next) and inserts the checkpoint, fenced, in one
     * statement. The run row lock serializes appends to one run; no row means the seq was taken,
     * the run is gone, or the lease was lost.
     */
    appendCheckpoint:
      `WITH taken AS (UPDATE ${runs} SET next_seq = $2::bigint + 1 WHERE id = $1 AND next_seq = $2::bigint AND ${fence('$1', '$3', '$4')} RETURNING id) ` +
      `INSERT INTO ${checkpoints} (run_id, seq, kind, stage, epoch, line) SELECT id, $2, $5, $6, $3, $7 FROM taken`,
    checkpointLine: `SELECT line FROM ${checkpoints} WHERE run_id = $1 AND seq = $2`,
    checkpointBounds: `SELECT min(c.seq)::text AS first, max(c.seq)::text AS last FROM ${checkpoints} c WHERE c.run_id = $1`,
    /** One page: seqs in ($2, $3], at most $4 rows (see `postgres-transfer.ts` for why both bounds). */
    checkpointsBetween:
      `SELECT c.seq::text AS seq, c.line FROM ${checkpoints} c WHERE c.run_id = $1 AND c.seq > $2 AND c.seq <= $3 ` +
      `ORDER BY c.seq LIMIT $4`,
    /** Newest first below seq `$2`, optionally of one kind (the decoded record is checked again). */
    checkpointsBefore:
      `SELECT c.seq::text AS seq, c.line FROM ${checkpoints} c WHERE c.run_id = $1 AND c.seq < $2 AND ($3::text IS NULL OR c.kind = $3) ` +
      `ORDER BY c.seq DESC LIMIT $4`,
    deleteCheckpoints: `DELETE FROM ${checkpoints} WHERE run_id = $1 AND seq = ANY ($2::bigint[])`,

    // Item ledgers
    /** The ledger with the first and last row ids of its items (null when empty). */
    ledger:
      `SELECT l.id::text AS id, (SELECT min(i.id) FROM ${items} i WHERE i.ledger_id = l.id)::text AS first, ` +
      `(SELECT max(i.id) FROM ${items} i WHERE i.ledger_id = l.id)::text AS last FROM ${ledgers} l WHERE l.run_id = $1 AND l.stage = $2`,
    ledgerNames: `SELECT stage FROM ${ledgers} WHERE run_id = $1 ORDER BY stage`,
    ledgersInOrder:
      `SELECT l.id::text AS id, l.stage, (SELECT min(i.id) FROM ${items} i WHERE i.ledger_id = l.id)::text AS first, ` +
      `(SELECT max(i.id) FROM ${items} i WHERE i.ledger_id = l.id)::text AS last FROM ${ledgers} l WHERE l.run_id = $1 ORDER BY l.id`,
    /**
     * A whole batch in one statement and one round trip: the fence, the ledger (created if new,
     * marked with the batch's token `$6`), and every line, numbered in batch order. `ok` is false
     * when nothing was written (run gone, lease lost). `written` is false when the ledger's last
     * batch already is this one: a try whose reply was lost landed, and this one adds nothing (the
     * ledger row's lock orders two tries of one batch: the second sees the first's token).
     */
    appendItems:
      `WITH allowed AS MATERIALIZED (SELECT r.id FROM ${runs} r WHERE r.id = $1 AND ${fence('r.id', '$3', '$4')}), ` +
      `ledger AS (INSERT INTO ${ledgers} AS l (run_id, stage, last_batch) SELECT id, $2, $6 FROM allowed ` +
      `ON CONFLICT (run_id, stage) DO UPDATE SET last_batch = excluded.last_batch WHERE l.last_batch IS DISTINCT FROM excluded.last_batch RETURNING l.id), ` +
      `inserted AS (INSERT INTO ${items} (ledger_id, epoch, line) SELECT (SELECT id FROM ledger), $3, u.line ` +
      `FROM unnest($5::text[]) WITH ORDINALITY AS u (line, n) WHERE EXISTS (SELECT 1 FROM ledger) ORDER BY u.n RETURNING 1) ` +
      `SELECT EXISTS (SELECT 1 FROM allowed) AS ok, EXISTS (SELECT 1 FROM ledger) AS written, (SELECT count(*) FROM inserted)::int AS inserted`,
    /** One page: row ids in ($2, $3], at most $4 rows (see `postgres-transfer.ts` for why both bounds). */
    itemsBetween: `SELECT i.id::text AS id, i.line FROM ${items} i WHERE i.ledger_id = $1 AND i.id > $2 AND i.id <= $3 ORDER BY i.id LIMIT $4`,
    insertLedger: `INSERT INTO ${ledgers} (run_id, stage) VALUES ($1, $2) RETURNING id::text AS id`,
    insertItems: `INSERT INTO ${items} (ledger_id, line) SELECT $1, u.line FROM unnest($2::text[]) WITH ORDINALITY AS u (line, n) ORDER BY u.n`,

    // Artifacts
    /** Replaces the manifest lines of these paths, fenced, in one statement; `ok` false when nothing was written. */
    recordArtifacts:
      `WITH allowed AS MATERIALIZED (SELECT r.id FROM ${runs} r WHERE r.id = $1 AND ${fence('r.id', '$2', '$3')}), ` +
      `replaced AS (DELETE FROM ${artifacts} a USING allowed WHERE a.run_id = allowed.id AND a.path = ANY ($4::text[])), ` +
      `inserted AS (INSERT INTO ${artifacts} (run_id, path, epoch, line) SELECT a.id, u.path, $2, u.line FROM allowed a, ` +
      `unnest($4::text[], $5::text[]) WITH ORDINALITY AS u (path, line, n) ORDER BY u.n RETURNING 1) ` +
      `SELECT EXISTS (SELECT 1 FROM allowed) AS ok, (SELECT count(*) FROM inserted)::int AS inserted`,
    artifactLines: `SELECT line FROM ${artifacts} WHERE run_id = $1 ORDER BY id`,
    insertArtifacts: `INSERT INTO ${artifacts} (run_id, path, line) SELECT $1, u.path, u.line FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS u (path, line, n) ORDER BY u.n`,

    // Leases (times from the database clock)
    /**
     * Takes the lease in one statement: a new row at epoch 1, or the existing row at epoch + 1 if it
     * is released, expired, or the epoch `$6` (a dead process's on this host), marked with the
     * take's token `$7`. The row lock of `ON CONFLICT DO UPDATE` is where acquireLock and claim
     * meet: exactly one of them wins.
     */
    acquireLease:
      `INSERT INTO ${leases} AS l (run_id, owner, epoch, host, pid, acquired_at, expires_at, released, token) ` +
      `SELECT r.id, $2, 1, $3, $4, now(), now() + ${ms('$5')}, false, $7 FROM ${runs} r WHERE r.id = $1 ` +
      `ON CONFLICT (run_id) DO UPDATE SET owner = excluded.owner, epoch = l.epoch + 1, host = excluded.host, pid = excluded.pid, ` +
      `acquired_at = excluded.acquired_at, expires_at = excluded.expires_at, released = false, token = excluded.token ` +
      `WHERE l.released OR l.expires_at <= now() OR l.epoch = $6::bigint ` +
      `RETURNING ${leaseColumns('l')}`,
    /** The run (if any) and its unreleased lease with `expired` by the database clock. */
    leaseState:
      `SELECT r.id AS run_id_found, ${leaseColumns('l')}, (l.expires_at <= now()) AS expired ` +
      `FROM ${runs} r LEFT JOIN ${leases} l ON l.run_id = r.id AND NOT l.released WHERE r.id = $1`,
    renewLease:
      `UPDATE ${leases} l SET expires_at = now() + ${ms('$4')} WHERE run_id = $1 AND epoch = $2 AND owner = $3 AND NOT released ` +
      `RETURNING ${leaseColumns('l')}`,
    releaseLease: `UPDATE ${leases} SET released = true WHERE run_id = $1 AND epoch = $2 AND owner = $3 AND NOT released`,
    /** Keeps an overwritten run's epoch (import): writes under a lease from before stay refused. */
    insertReleasedLease:
      `INSERT INTO ${leases} (run_id, owner, epoch, host, pid, acquired_at, expires_at, released) ` +
      `VALUES ($1, '', $2, '', 0, now(), now(), true)`,

    // Queue
    enqueue: `UPDATE ${runs} SET queued_at = coalesce(queued_at, now()) WHERE id = $1 RETURNING 1`,
    /** The longest-queued claimable run of these names, locked; runs locked by another claimer are skipped. */
    claimCandidate:
      `SELECT r.id, r.status, r.line FROM ${runs} r WHERE r.queued_at IS NOT NULL AND r.name = ANY ($1::text[]) ` +
      `AND r.status IN ${CLAIMABLE_STATUSES} AND NOT (r.id = ANY ($2::text[])) ` +
      `AND NOT EXISTS (SELECT 1 FROM ${leases} l WHERE l.run_id = r.id AND ${LIVE('l')}) ` +
      `ORDER BY r.queued_at, r.id LIMIT 1 FOR NO KEY UPDATE OF r SKIP LOCKED`,
    /** The candidate's lease row, unless someone holds its row lock right now (a writer, a renewal, a takeover). */
    claimLeaseRow: `SELECT ${LIVE('l')} AS live FROM ${leases} l WHERE l.run_id = $1 FOR UPDATE SKIP LOCKED`,
    claimTakeOver:
      `UPDATE ${leases} l SET owner = $2, epoch = l.epoch + 1, host = $3, pid = $4, acquired_at = now(), expires_at = now() + ${ms('$5')}, ` +
      `released = false, token = $6 WHERE l.run_id = $1 RETURNING ${leaseColumns('l')}`,
    claimInsert:
      `INSERT INTO ${leases} AS l (run_id, owner, epoch, host, pid, acquired_at, expires_at, released, token) ` +
      `VALUES ($1, $2, 1, $3, $4, now(), now() + ${ms('$5')}, false, $6) ON CONFLICT (run_id) DO NOTHING RETURNING ${leaseColumns('l')}`,
    /** A claimed run's status and line (read back after a claim whose reply was lost). */
    claimedRun: `SELECT id, status, line FROM ${runs} WHERE id = $1`,
    /** The unreleased lease of one of runs `$1` taken with token `$2`: a take whose reply was lost, found. */
    leaseByToken: `SELECT ${leaseColumns('l')} FROM ${leases} l WHERE l.run_id = ANY ($1::text[]) AND l.token = $2 AND NOT l.released`,
    pending:
      `SELECT count(*)::int AS count FROM ${runs} r WHERE r.queued_at IS NOT NULL AND ($1::text[] IS NULL OR r.name = ANY ($1::text[])) ` +
      `AND r.status IN ${CLAIMABLE_STATUSES} AND NOT EXISTS (SELECT 1 FROM ${leases} l WHERE l.run_id = r.id AND ${LIVE('l')})`,

    // Import
    importHead: `SELECT l.epoch::text AS epoch FROM ${runs} r LEFT JOIN ${leases} l ON l.run_id = r.id WHERE r.id = $1 FOR NO KEY UPDATE OF r`,
    importRun: `INSERT INTO ${runs} (id, name, status, version, next_seq, line) VALUES ($1, $2, $3, $4, $5, $6)`,
    importCheckpoints:
      `INSERT INTO ${checkpoints} (run_id, seq, kind, stage, line) ` +
      `SELECT $1, u.seq, u.kind, u.stage, u.line FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[]) AS u (seq, kind, stage, line)`,
  });
}

/** A lease row as the store's {@link Lease}. */
export function leaseOf(row: LeaseRow): Lease {
  return {
    runId: row.run_id,
    owner: row.owner,
    epoch: Number(row.epoch),
    host: row.host,
    pid: row.pid,
    acquiredAt: row.acquired_at,
    expiresAt: row.expires_at,
  };
}
