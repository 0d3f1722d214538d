/**
 * The run lease in `<run>/lock.json`: the {@link Lease} fields plus `ttlMs` and, once released,
 * `released: true` (the epoch is kept so that the next holder continues counting). Every change is
 * an atomic replace done under the run's mutex by the caller; reads need no mutex because the
 * file is always whole.
 */
import fsSync from 'node:fs';
import fs from 'node:fs/promises';
import { HOST, isLeaseStale, leaseLostError, runLockedError } from '../common.js';
import type { Lease } from '../store.js';
import { isMissing, replaceFileAtomically, replaceFileAtomicallySync } from './atomic-write.js';

export const LOCK_FILE = 'lock.json';

/** What lock.json holds. */
export interface StoredLease extends Lease {
  readonly ttlMs: number;
  readonly released?: boolean;
}

/** Reads lock.json; undefined when absent. An unreadable file counts as a released lease of epoch 0. */
export async function readStoredLease(file: string): Promise<StoredLease | undefined> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (error) {
    if (isMissing(error)) return undefined;
    throw error;
  }
  return parseStoredLease(text);
}

/** {@link readStoredLease} with a synchronous read, for the item-ledger hot path (no thread-pool round trips). */
export function readStoredLeaseSync(file: string): StoredLease | undefined {
  let text: string;
  try {
    text = fsSync.readFileSync(file, 'utf8');
  } catch (error) {
    if (isMissing(error)) return undefined;
    throw error;
  }
  return parseStoredLease(text);
}

function parseStoredLease(text: string): StoredLease {
  try {
    const v = JSON.parse(text) as Partial<StoredLease> | null;
    if (
      v &&
      typeof v.runId === 'string' &&
      typeof v.owner === 'string' &&
      typeof v.epoch === 'number' &&
      Number.isSafeInteger(v.epoch) &&
      typeof v.host === 'string' &&
      typeof v.pid === 'number' &&
      typeof v.acquiredAt === 'string' &&
      typeof v.expiresAt === 'string'
    ) {
      return { ...(v as StoredLease), ttlMs: typeof v.ttlMs === 'number' ? v.ttlMs : 0, released: v.released === true };
    }
  } catch {
    // fall through: damaged
  }
  return {
    runId: '',
    owner: '',
    epoch: 0,
    host: '',
    pid: 0,
    acquiredAt: '',
    expiresAt: new Date(0).toISOString(),
    ttlMs: 0,
    released: true,
  };
}

/** The public part of a stored lease. */
export function toLease(stored: StoredLease): Lease {
  const { runId, owner, epoch, host, pid, acquiredAt, expiresAt } = stored;
  return { runId, owner, epoch, host, pid, acquiredAt, expiresAt };
}

/** The lease currently held (not released, not stale), if any. */
export async function readLiveLease(file: string): Promise<Lease | undefined> {
  const stored = await readStoredLease(file);
  return stored && !stored.released && !isLeaseStale(stored) ? toLease(stored) : undefined;
}

/** The lease taken over `previous` (caller holds the run's mutex): `RUN_LOCKED` if a live one is held. */
function takenLease(previous: StoredLease | undefined, runId: string, owner: string, ttlMs: number): Lease {
  if (previous && !previous.released && !isLeaseStale(previous)) throw runLockedError(toLease(previous));
  const now = Date.now();
  return {
    runId,
    owner,
    epoch: (previous?.epoch ?? 0) + 1,
    host: HOST,
    pid: process.pid,
    acquiredAt: new Date(now).toISOString(),
    expiresAt: new Date(now + ttlMs).toISOString(),
  };
}

/** `lease` extended by `ttlMs` from now: `LEASE_LOST` if it is no longer the current one. */
function extendedLease(current: StoredLease | undefined, lease: Lease, ttlMs: number): Lease {
  if (!isSameLease(current, lease)) throw leaseLostError(lease);
  return { ...toLease(current), expiresAt: new Date(Date.now() + ttlMs).toISOString() };
}

/** Takes the lease (caller holds the run's mutex): `RUN_LOCKED` if a live one is held. */
export async function takeLease(file: string, runId: string, owner: string, ttlMs: number): Promise<Lease> {
  const lease = takenLease(await readStoredLease(file), runId, owner, ttlMs);
  await writeStoredLease(file, { ...lease, ttlMs });
  return lease;
}

/** {@link takeLease} with synchronous calls. */
export function takeLeaseSync(file: string, runId: string, owner: string, ttlMs: number): Lease {
  const lease = takenLease(readStoredLeaseSync(file), runId, owner, ttlMs);
  replaceFileAtomicallySync(file, leaseText({ ...lease, ttlMs }));
  return lease;
}

/** Extends a held lease (caller holds the run's mutex): `LEASE_LOST` if it is no longer current. */
export async function extendLease(file: string, lease: Lease, ttlMs: number): Promise<Lease> {
  const renewed = extendedLease(await readStoredLease(file), lease, ttlMs);
  await writeStoredLease(file, { ...renewed, ttlMs });
  return renewed;
}

/** {@link extendLease} with synchronous calls. */
export function extendLeaseSync(file: string, lease: Lease, ttlMs: number): Lease {
  const renewed = extendedLease(readStoredLeaseSync(file), lease, ttlMs);
  replaceFileAtomicallySync(file, leaseText({ ...renewed, ttlMs }));
  return renewed;
}

/** Marks a lease released if it is still current (caller holds the run's mutex). */
export async function giveUpLease(file: string, lease: Lease): Promise<void> {
  const current = await readStoredLease(file);
  if (!isSameLease(current, lease)) return;
  await writeStoredLease(file, { ...current, released: true });
}

/** {@link giveUpLease} with synchronous calls. */
export function giveUpLeaseSync(file: string, lease: Lease): void {
  const current = readStoredLeaseSync(file);
  if (!isSameLease(current, lease)) return;
  replaceFileAtomicallySync(file, leaseText({ ...current, released: true }));
}

/** `LEASE_LOST` unless `lease` is the current, unreleased lease in lock.json. */
export async function checkLeaseCurrent(file: string, lease: Lease): Promise<void> {
  if (!isSameLease(await readStoredLease(file), lease)) throw leaseLostError(lease);
}

/** {@link checkLeaseCurrent} with a synchronous read. */
export function checkLeaseCurrentSync(file: string, lease: Lease): void {
  if (!isSameLease(readStoredLeaseSync(file), lease)) throw leaseLostError(lease);
}

function isSameLease(current: StoredLease | undefined, lease: Lease): current is StoredLease {
  return current !== undefined && !current.released && current.epoch === lease.epoch && current.owner === lease.owner;
}

export async function writeStoredLease(file: string, stored: StoredLease): Promise<void> {
  await replaceFileAtomically(file, leaseText(stored));
}

function leaseText(stored: StoredLease): string {
  return `${JSON.stringify(stored)}\n`;
}
