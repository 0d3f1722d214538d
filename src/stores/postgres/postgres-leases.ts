/**
 * Run leases on Postgres. The database server's clock decides what expired (`now()` in every
 * statement), never this machine's: machines with skewed clocks still agree on who holds a run.
 * A lease row stays after release (marked `released`), so epochs keep growing; taking a lease is
 * one conditional upsert on that row, which is also where `claim` takes it (see postgres-queue.ts):
 * under the row lock, only a released or expired lease is replaced, so exactly one taker wins.
 */
import { randomUUID } from 'node:crypto';
import { CairnError } from '../../core/errors.js';
import { HOST, isProcessAlive, leaseLostError, notFound, runLockedError } from '../common.js';
import type { Lease, LockOptions } from '../store.js';
import { checkText, checkTtl, storeBusy } from './postgres-driver.js';
import { leaseOf, type LeaseRow, type PostgresSql } from './postgres-sql.js';

/** What lease operations need from the store. */
export interface LeaseHost {
  readonly sql: PostgresSql;
  readonly url: string;
  readonly lockTtlMs: number;
  /** One statement's rows, after checking the store is open; sent again after a passing failure (reads, repeatable writes). */
  rows<R>(text: string, values: readonly unknown[]): Promise<R[]>;
  /** One statement's rows, one try. */
  rowsOnce<R>(text: string, values: readonly unknown[]): Promise<R[]>;
  /** A write that must land once: see `retryWrite` (postgres-retry.ts). */
  writeOnce<T>(send: () => Promise<T>, landed: () => Promise<{ value: T } | undefined>): Promise<T>;
}

type LeaseStateRow = { readonly run_id_found: string; readonly expired: boolean | null } & { [K in keyof LeaseRow]: LeaseRow[K] | null };

/** Takes the run's lease (epoch + 1), or throws `RUN_LOCKED` naming the holder, or `NOT_FOUND`. */
export async function acquireLease(host: LeaseHost, runId: string, options: LockOptions): Promise<Lease> {
  if (typeof options.owner !== 'string') throw new CairnError('INVALID_INPUT', 'Lock owner must be a string.', { runId });
  checkText(options.owner, 'Lock owner', runId);
  const ttl = checkTtl(options.ttlMs ?? host.lockTtlMs, runId);
  let takeOverEpoch: string | null = null;
  let held: Lease | undefined;
  // the take is marked with a token of its own: after a reply lost with its connection, the lease
  // found with it is this take's (it committed), and it is never taken a second time
  const token = randomUUID();
  const mine = async (): Promise<{ value: LeaseRow } | undefined> => {
    const [row] = await host.rowsOnce<LeaseRow>(host.sql.leaseByToken, [[runId], token]);
    return row && { value: row };
  };
  for (let attempt = 0; attempt < 3; attempt++) {
    const values = [runId, options.owner, HOST, process.pid, ttl, takeOverEpoch, token];
    const taken = await host.writeOnce(async () => (await host.rowsOnce<LeaseRow>(host.sql.acquireLease, values))[0], mine);
    if (taken) return leaseOf(taken);
    const state = await leaseState(host, runId);
    if (!state) throw notFound(runId);
    if (state.lease === undefined || state.expired) continue; // released or expired just now: try again
    // a first try still running on the server when its connection was cut may have taken it since
    if (state.lease.owner === options.owner && state.lease.host === HOST && state.lease.pid === process.pid) {
      const [found] = await host.rows<LeaseRow>(host.sql.leaseByToken, [[runId], token]);
      if (found) return leaseOf(found);
    }
    held = state.lease;
    // a lease left by a dead process of this machine is taken over at once, as the file and SQLite stores do
    if (takeOverEpoch === null && held.host === HOST && !isProcessAlive(held.pid)) {
      takeOverEpoch = String(held.epoch);
      continue;
    }
    break;
  }
  if (held) throw runLockedError(held);
  throw storeBusy(host.url, `the lease of run ${runId} kept changing hands`);
}

/** Extends a held lease from now (database clock); `LEASE_LOST` if it was taken over or released. */
export async function renewLease(host: LeaseHost, lease: Lease, ttlMs?: number): Promise<Lease> {
  const ttl = checkTtl(ttlMs ?? host.lockTtlMs, lease.runId);
  const [row] = await host.rows<LeaseRow>(host.sql.renewLease, [lease.runId, lease.epoch, lease.owner, ttl]);
  if (row) return leaseOf(row);
  if ((await host.rows(host.sql.runLine, [lease.runId])).length === 0) throw notFound(lease.runId);
  throw leaseLostError(lease);
}

/** Releases a held lease; a no-op if it is no longer this epoch and owner. */
export async function releaseLease(host: LeaseHost, lease: Lease): Promise<void> {
  await host.rows(host.sql.releaseLease, [lease.runId, lease.epoch, lease.owner]);
}

/** The run's lease if one holds now (not released, not expired, its holder not a dead process of this machine). */
export async function liveLease(host: LeaseHost, runId: string): Promise<Lease | undefined> {
  const state = await leaseState(host, runId);
  const lease = state?.lease;
  if (!lease || state.expired) return undefined;
  return lease.host === HOST && !isProcessAlive(lease.pid) ? undefined : lease;
}

/** The run's unreleased lease and whether it expired by the database clock; undefined when the run is unknown. */
async function leaseState(host: LeaseHost, runId: string): Promise<{ lease?: Lease; expired: boolean } | undefined> {
  const [row] = await host.rows<LeaseStateRow>(host.sql.leaseState, [runId]);
  if (!row) return undefined;
  if (row.run_id === null) return { expired: false };
  return { lease: leaseOf(row as LeaseRow), expired: row.expired === true };
}
