/**
 * The work queue of the Postgres store: runs are offered to workers (`enqueue`), claimed with
 * `FOR NO KEY UPDATE SKIP LOCKED` together with their lease (`claim`), and counted (`pending`).
 * Whether a lease still holds is decided by the database clock.
 *
 * A claim and `acquireLock` meet on the run's lease row: both take it under its row lock and only
 * when it is released or expired, so exactly one of them wins. A claim never waits for a lease
 * row while it holds a run row (`SKIP LOCKED` there too): a run whose lease row is busy (its holder
 * writing or renewing at that moment) is simply not claimable now.
 */
import { randomUUID } from 'node:crypto';
import { CairnError } from '../../core/errors.js';
import { assertRunId } from '../../core/ids.js';
import { decodeRunRow } from '../codec.js';
import { claimReason, HOST, notFound } from '../common.js';
import type { Claim, ClaimOptions, Lease, RunQueue, RunRecord, RunStatus } from '../store.js';
import { checkText, checkTtl, type PgQueryable } from './postgres-driver.js';
import { leaseOf, type LeaseRow, type PostgresSql } from './postgres-sql.js';

/** Candidates one claim looks at before it gives up for now (each skipped one was taken by someone else meanwhile, or is damaged). */
const MAX_CANDIDATES = 16;

/** What the queue needs from its store. */
export interface QueueHost {
  readonly sql: PostgresSql;
  readonly lockTtlMs: number;
  /** One statement's rows, after checking the store is open; sent again after a passing failure (reads, repeatable writes). */
  rows<R>(text: string, values: readonly unknown[]): Promise<R[]>;
  /** One statement's rows, one try. */
  rowsOnce<R>(text: string, values: readonly unknown[]): Promise<R[]>;
  /** `fn` inside one transaction, after checking the store is open; one try. */
  transaction<T>(fn: (client: PgQueryable) => Promise<T>): Promise<T>;
  /** A write that must land once: see `retryWrite` (postgres-retry.ts). */
  writeOnce<T>(send: () => Promise<T>, landed: () => Promise<{ value: T } | undefined>): Promise<T>;
}

export class PostgresQueue implements RunQueue {
  constructor(private readonly host: QueueHost) {}

  async enqueue(runId: string): Promise<void> {
    assertRunId(runId);
    const rows = await this.host.rows(this.host.sql.enqueue, [runId]);
    if (rows.length === 0) throw notFound(runId);
  }

  async claim(options: ClaimOptions): Promise<Claim | undefined> {
    const names = checkNames(options.names);
    if (typeof options.owner !== 'string') throw new CairnError('INVALID_INPUT', 'Claim owner must be a string.');
    checkText(options.owner, 'Claim owner');
    const ttl = checkTtl(options.ttlMs ?? this.host.lockTtlMs);
    if (names.length === 0) return undefined;
    const { sql } = this.host;
    // The claim's lease is marked with a token of its own. After a reply lost with its connection
    // (the transaction may have committed), a lease with that token on a run this claim tried is
    // this claim's: it is returned, never taken a second time. (A first try still running on the
    // server when its connection was cut, that commits after this check, leaves a lease nobody
    // uses: it expires, and the run is claimed again as stranded.)
    const token = randomUUID();
    const tried: string[] = [];
    const landed = async (): Promise<{ value: Claim | undefined } | undefined> => {
      if (tried.length === 0) return undefined;
      const [row] = await this.host.rowsOnce<LeaseRow>(sql.leaseByToken, [tried, token]);
      if (!row) return undefined;
      const [held] = await this.host.rowsOnce<{ id: string; status: RunStatus; line: string }>(sql.claimedRun, [row.run_id]);
      const reason = held && claimReason(held.status);
      return held && reason ? { value: { run: decodeRunRow(held.line, held.id), lease: leaseOf(row), reason } } : undefined;
    };
    const exclude = [...(options.exclude ?? [])];
    return this.host.writeOnce(() => this.claimOnce(names, options.owner, ttl, token, tried, exclude), landed);
  }

  private claimOnce(
    names: string[],
    owner: string,
    ttl: number,
    token: string,
    tried: string[],
    exclude: readonly string[],
  ): Promise<Claim | undefined> {
    const { sql } = this.host;
    return this.host.transaction(async (client) => {
      const skipped: string[] = [...exclude];
      for (let i = 0; i < MAX_CANDIDATES + exclude.length; i++) {
        const candidate = (await client.query(sql.claimCandidate, [names, skipped])).rows[0] as
          { id: string; status: RunStatus; line: string } | undefined;
        if (!candidate) return undefined;
        const reason = claimReason(candidate.status);
        let run: RunRecord;
        try {
          run = decodeRunRow(candidate.line, candidate.id);
        } catch {
          // a damaged run record cannot be run: it stays queued, and `cairn validate` reports it
          skipped.push(candidate.id);
          continue;
        }
        if (reason) tried.push(candidate.id);
        const lease = reason && (await takeLease(client, sql, candidate.id, owner, ttl, token));
        if (!reason || !lease) {
          skipped.push(candidate.id);
          continue;
        }
        return { run, lease, reason };
      }
      return undefined;
    });
  }

  async pending(names?: readonly string[]): Promise<number> {
    const list = names === undefined ? null : checkNames(names);
    if (list !== null && list.length === 0) return 0;
    const [row] = await this.host.rows<{ count: number }>(this.host.sql.pending, [list]);
    return row?.count ?? 0;
  }
}

/**
 * Takes the candidate's lease inside the claim's transaction: epoch + 1 over a released or
 * expired lease row, or epoch 1 when the run never had one. Undefined when the row is locked by
 * someone else right now, or holds a live lease again.
 */
async function takeLease(
  client: PgQueryable,
  sql: PostgresSql,
  runId: string,
  owner: string,
  ttl: number,
  token: string,
): Promise<Lease | undefined> {
  const values = [runId, owner, HOST, process.pid, ttl, token];
  const current = (await client.query(sql.claimLeaseRow, [runId])).rows[0] as { live: boolean } | undefined;
  if (current) {
    if (current.live) return undefined;
    const row = (await client.query(sql.claimTakeOver, values)).rows[0] as LeaseRow | undefined;
    return row && leaseOf(row);
  }
  // no row, or a row locked by someone else: inserting does nothing in the second case
  const row = (await client.query(sql.claimInsert, values)).rows[0] as LeaseRow | undefined;
  return row && leaseOf(row);
}

/** Definition names as a list for `= ANY($1)`; names holding NUL cannot exist, so they are dropped. */
function checkNames(names: unknown): string[] {
  if (!Array.isArray(names) || names.some((name) => typeof name !== 'string')) {
    throw new CairnError('INVALID_INPUT', 'Queue names must be a list of definition names.');
  }
  return [...new Set(names as string[])].filter((name) => !name.includes('\0'));
}
