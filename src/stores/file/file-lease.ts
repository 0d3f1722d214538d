/**
 * Run leases of the file store: one file per epoch, `<run>/lease/<epoch>.json`. Taking the lease
 * is creating the next epoch's file exclusively (a complete temp file linked into place): of two
 * processes that want it, exactly one creates it, with no mutex and nothing to take over. The
 * current lease is the file with the highest epoch; its holder renews and releases it by atomic
 * replace. A holder that was taken over finds a higher epoch there, which is how every write of
 * the file store checks, after it is durable, that it still counts (see `run-writer.ts`).
 *
 * Lease files are written without fsync: they only order processes that are alive. After a power
 * loss nobody from before it is alive, and the log segments (see `segments.ts`), which are
 * fsynced, decide what is trusted. A takeover fsyncs its lease file, because it names a segment.
 */
import fs from 'node:fs';
import path from 'node:path';
import { HOST, isLeaseStale, runLockedError } from '../common.js';
import type { Lease } from '../store.js';
import { createFileExclusive, listDir, readFileSafe, replaceFile, syncDir, makeDir } from './safe-fs.js';

export const LEASE_DIR = 'lease';
/** The lease file of the format before segments (cairn ≤ 0.1): its epoch is where counting goes on. */
export const LEGACY_LOCK_FILE = 'lock.json';
const LEASE_FILE = /^(\d{1,15})\.json$/;

/** What a lease file holds. */
export interface StoredLease extends Lease {
  readonly ttlMs: number;
  /** Given back by its holder. */
  readonly released?: boolean;
  /** Given back after every write of its holder completed whole: the next holder may go on in the same segment. */
  readonly clean?: boolean;
}

/** The epochs that have a lease file, highest first. */
export function listEpochs(runDir: string): number[] {
  const epochs: number[] = [];
  for (const entry of listDir(path.join(runDir, LEASE_DIR))) {
    const match = LEASE_FILE.exec(entry.name);
    if (match?.[1] && entry.isFile()) epochs.push(Number(match[1]));
  }
  return epochs.sort((a, b) => b - a);
}

/** The highest epoch with a lease file (0 when none). */
export function currentEpoch(runDir: string): number {
  return listEpochs(runDir)[0] ?? 0;
}

/**
 * Reads a lease file: undefined when absent; a damaged one reads as an expired lease that was not
 * given back (so it is taken over into a new segment: safe whatever its holder does).
 */
export function readLeaseFile(root: string, file: string, runId: string, epoch: number): StoredLease | undefined {
  let text: string | undefined;
  try {
    text = readFileSafe(root, file);
  } catch {
    text = '';
  }
  if (text === undefined) return undefined;
  try {
    const v = JSON.parse(text) as Partial<StoredLease> | null;
    if (
      v &&
      typeof v.owner === 'string' &&
      typeof v.epoch === 'number' &&
      typeof v.host === 'string' &&
      typeof v.pid === 'number' &&
      typeof v.acquiredAt === 'string' &&
      typeof v.expiresAt === 'string'
    ) {
      return {
        runId,
        owner: v.owner,
        epoch,
        host: v.host,
        pid: v.pid,
        acquiredAt: v.acquiredAt,
        expiresAt: v.expiresAt,
        ttlMs: typeof v.ttlMs === 'number' ? v.ttlMs : 0,
        released: v.released === true,
        clean: v.clean === true,
      };
    }
  } catch {
    // damaged: below
  }
  return { runId, owner: '(unreadable lease)', epoch, host: '', pid: 0, acquiredAt: '', expiresAt: new Date(0).toISOString(), ttlMs: 0 };
}

export function leaseFile(runDir: string, epoch: number): string {
  return path.join(runDir, LEASE_DIR, `${epoch}.json`);
}

/** The current lease (highest epoch), if any; for a run of the old format, its lock.json. */
export function readCurrentLease(root: string, runDir: string, runId: string): StoredLease | undefined {
  for (;;) {
    const epoch = currentEpoch(runDir);
    if (epoch === 0) break;
    const stored = readLeaseFile(root, leaseFile(runDir, epoch), runId, epoch);
    if (stored) return stored;
    // removed between the listing and the read: a newer epoch was taken meanwhile, look again
  }
  const legacy = readLeaseFile(root, path.join(runDir, LEGACY_LOCK_FILE), runId, 0);
  if (!legacy) return undefined;
  const epochText = /"epoch":(\d{1,15})/.exec(readFileSafe(root, path.join(runDir, LEGACY_LOCK_FILE)) ?? '')?.[1];
  // the old format's leases have no `clean`: a new holder always starts a new segment after them
  return { ...legacy, epoch: Number(epochText ?? 0), clean: false };
}

export function isLive(stored: StoredLease): boolean {
  return !stored.released && !isLeaseStale(stored);
}

/** The public part of a stored lease. */
export function toLease(stored: StoredLease): Lease {
  const { runId, owner, epoch, host, pid, acquiredAt, expiresAt } = stored;
  return { runId, owner, epoch, host, pid, acquiredAt, expiresAt };
}

function leaseText(stored: StoredLease): string {
  const { runId: _runId, ...rest } = stored;
  return `${JSON.stringify(rest)}\n`;
}

/**
 * Takes the run's lease: `RUN_LOCKED` if a live one is held. Returns the new lease and the one it
 * follows (undefined for a run never leased). Creating the file is the whole decision: a process
 * that loses the race to create the same epoch sees the winner's lease.
 */
export function takeLease(
  root: string,
  runDir: string,
  runId: string,
  owner: string,
  ttlMs: number,
): { lease: StoredLease; previous: StoredLease | undefined } {
  makeDir(path.join(runDir, LEASE_DIR));
  for (;;) {
    const previous = readCurrentLease(root, runDir, runId);
    if (previous && isLive(previous)) throw runLockedError(toLease(previous));
    const now = Date.now();
    const lease: StoredLease = {
      runId,
      owner,
      epoch: (previous?.epoch ?? 0) + 1,
      host: HOST,
      pid: process.pid,
      acquiredAt: new Date(now).toISOString(),
      expiresAt: new Date(now + ttlMs).toISOString(),
      ttlMs,
    };
    if (createFileExclusive(leaseFile(runDir, lease.epoch), leaseText(lease), false)) {
      // the epoch's file of a process that took it and moved on may have been removed already:
      // a newer epoch then exists, and this one lost the race (its file goes, nobody trusts it)
      if (currentEpoch(runDir) !== lease.epoch) {
        fs.rmSync(leaseFile(runDir, lease.epoch), { force: true });
        continue;
      }
      removeOldLeases(runDir, lease.epoch);
      return { lease, previous };
    }
    // another process created this epoch first: look again (it is probably live: RUN_LOCKED)
  }
}

/** Makes the lease file of a takeover durable: the segment it starts is named after its epoch. */
export function syncLeaseDir(runDir: string): void {
  syncDir(path.join(runDir, LEASE_DIR));
}

/** Lease files of older epochs are history nobody reads (a stale holder that looks finds a higher epoch either way). */
function removeOldLeases(runDir: string, epoch: number): void {
  for (const old of listEpochs(runDir)) {
    if (old < epoch) fs.rmSync(leaseFile(runDir, old), { force: true });
  }
}

/** True while `epoch` is the highest epoch of the run: the check every write makes once it is durable. */
export function isCurrentEpoch(runDir: string, epoch: number): boolean {
  return currentEpoch(runDir) === epoch;
}

/** Rewrites the holder's own lease file (renewal, release). */
export function writeLeaseFile(runDir: string, stored: StoredLease): void {
  replaceFile(leaseFile(runDir, stored.epoch), leaseText(stored), false);
}
