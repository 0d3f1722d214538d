/**
 * Run leases of the file store: one file per epoch, `<run>/lease/<epoch>.json`. Taking the lease
 * is creating the next epoch's file exclusively (a complete temp file linked into place): of two
 * processes that want it, exactly one creates it, with no mutex and nothing to take over. The
 * current lease is the file with the highest epoch. Its holder keeps it open: the lease expires at
 * the file's mtime, which a renewal moves on through that descriptor (never by path, so a stale
 * holder cannot bring back a file a taker removed); giving it back replaces the file with one that
 * says so. Every write of the file store checks, after it is durable, that its lease still counts
 * ({@link isStillHeld}): no file of the next epoch, and its own file still linked.
 *
 * Lease files are written without fsync: they only order processes that are alive. After a power
 * loss nobody from before it is alive, and the log segments (see `segments.ts`), which are
 * fsynced, decide what is trusted. A takeover fsyncs its lease file, because it names a segment.
 */
import fs from 'node:fs';
import path from 'node:path';
import { HOST, isLeaseStale, runLockedError } from '../common.js';
import type { Lease } from '../store.js';
import { errnoOf, listDir, makeDir, openForRead, readFileSafe, replaceFile, syncDir, tempName, writeAllSync } from './safe-fs.js';

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
    // a link counts as its epoch (read as a damaged lease, never followed): numbering never goes back past it
    if (match?.[1] && !entry.isDirectory()) epochs.push(Number(match[1]));
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
  let text = '';
  let mtimeMs = 0;
  try {
    const fd = openForRead(root, file);
    if (fd === undefined) return undefined;
    try {
      mtimeMs = fs.fstatSync(fd).mtimeMs;
      text = fs.readFileSync(fd, 'utf8');
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    // unreadable: damaged, below
  }
  try {
    const v = JSON.parse(text) as Partial<StoredLease> | null;
    if (v && typeof v.owner === 'string' && typeof v.host === 'string' && typeof v.pid === 'number' && typeof v.acquiredAt === 'string') {
      return {
        runId,
        owner: v.owner,
        epoch,
        host: v.host,
        pid: v.pid,
        acquiredAt: v.acquiredAt,
        // format 2 keeps the expiry in the file's mtime; the old lock.json in its text
        expiresAt: typeof v.expiresAt === 'string' ? v.expiresAt : new Date(mtimeMs).toISOString(),
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

/** What a lease file says: who holds it and since when (its expiry is the file's mtime). */
function leaseText(stored: StoredLease): string {
  const { runId: _runId, expiresAt: _expiresAt, ...rest } = stored;
  return `${JSON.stringify(rest)}\n`;
}

/**
 * Takes the run's lease: `RUN_LOCKED` if a live one is held. Returns the new lease, the descriptor
 * of its file (kept open by the holder), and the lease it follows (undefined for a run never
 * leased). Creating the file is the whole decision: a process that loses the race to create the
 * same epoch sees the winner's lease.
 */
export function takeLease(
  root: string,
  runDir: string,
  runId: string,
  owner: string,
  ttlMs: number,
): { lease: StoredLease; fd: number; previous: StoredLease | undefined } {
  const dir = path.join(runDir, LEASE_DIR);
  makeDir(dir);
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
    const fd = createLeaseFile(leaseFile(runDir, lease.epoch), leaseText(lease), new Date(now + ttlMs));
    if (fd === undefined) continue; // another process created this epoch first: look again (probably RUN_LOCKED)
    // the epoch's file of a process that took it and moved on may have been removed already:
    // a newer epoch then exists, and this one lost the race (its file goes, nobody trusts it)
    if (currentEpoch(runDir) !== lease.epoch) {
      fs.rmSync(leaseFile(runDir, lease.epoch), { force: true });
      fs.closeSync(fd);
      continue;
    }
    removeOldLeases(runDir, lease.epoch);
    return { lease, fd, previous };
  }
}

/** Creates a lease file whole (temp file, mtime = expiry, link) and returns its descriptor; undefined if it exists. */
function createLeaseFile(file: string, text: string, expiresAt: Date): number | undefined {
  const temp = tempName(path.dirname(file), path.basename(file));
  const fd = fs.openSync(temp, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW, 0o644);
  try {
    writeAllSync(fd, Buffer.from(text, 'utf8'));
    fs.futimesSync(fd, expiresAt, expiresAt);
    fs.linkSync(temp, file);
    return fd;
  } catch (error) {
    fs.closeSync(fd);
    if (errnoOf(error) === 'EEXIST') return undefined;
    throw error;
  } finally {
    fs.rmSync(temp, { force: true });
  }
}

/** Moves the expiry of the lease whose file is open as `fd` (its mtime). */
export function extendLeaseFile(fd: number, expiresAt: Date): void {
  fs.futimesSync(fd, expiresAt, expiresAt);
}

/** Makes the lease whose file is open as `fd` expire now (no space needed): it is then taken over as one not given back cleanly. */
export function expireLeaseFile(fd: number): void {
  const past = new Date(0);
  fs.futimesSync(fd, past, past);
}

/** Makes the lease file of a takeover durable: the segment it starts is named after its epoch. */
export function syncLeaseDir(runDir: string): void {
  syncDir(path.join(runDir, LEASE_DIR));
}

/**
 * Lease files of older epochs are history nobody reads. They go oldest first, so that whoever
 * finds the file of epoch e + 1 gone also finds the file of e gone (see {@link isStillHeld}).
 */
function removeOldLeases(runDir: string, epoch: number): void {
  for (const old of listEpochs(runDir).reverse()) {
    if (old < epoch) fs.rmSync(leaseFile(runDir, old), { force: true });
  }
}

/**
 * True while the lease of `epoch`, whose file its holder has open as `fd`, is still the run's:
 * the check every write makes once it is durable. Two system calls, in this order: no file of
 * epoch + 1 (a taker creates it before it measures what it trusts), then the holder's own file
 * still linked (a taker removes it, and it goes before the file of epoch + 1 ever does).
 */
export function isStillHeld(runDir: string, epoch: number, fd: number): boolean {
  if (fs.lstatSync(leaseFile(runDir, epoch + 1), { throwIfNoEntry: false }) !== undefined) return false;
  return fs.fstatSync(fd).nlink > 0;
}

/** Gives a lease back: its file is replaced by one that says so (`clean`: the next holder may go on in the same segment). */
export function releaseLeaseFile(runDir: string, stored: StoredLease, clean: boolean): void {
  replaceFile(leaseFile(runDir, stored.epoch), leaseText({ ...stored, released: true, clean }), false);
}

/** A cancel request for the attempt holding a run (`{"epoch":N,…}`): the only file a process that does not hold the run writes. */
export const CANCEL_REQUEST_FILE = 'cancel-request.json';

/** True when a cancel request names the attempt that holds the run now (a request for an earlier one asks nothing). */
export function isCancelRequested(root: string, runDir: string, runId: string): boolean {
  let epoch: unknown;
  const file = path.join(runDir, CANCEL_REQUEST_FILE);
  if (!fs.existsSync(file)) return false; // the usual case, without the cost of a failed open's error (listing runs asks for each)
  try {
    const text = readFileSafe(root, file);
    if (text === undefined) return false;
    epoch = (JSON.parse(text) as { epoch?: unknown } | null)?.epoch;
  } catch {
    return false; // a damaged request, or a link in its place (never followed), asks nothing
  }
  const current = readCurrentLease(root, runDir, runId);
  return current !== undefined && isLive(current) && current.epoch === epoch;
}

/** Asks the attempt holding the run to stop (nothing when no live lease is held: the caller cancels the run itself). */
export function writeCancelRequest(root: string, runDir: string, runId: string): void {
  const current = readCurrentLease(root, runDir, runId);
  if (!current || !isLive(current)) return;
  replaceFile(
    path.join(runDir, CANCEL_REQUEST_FILE),
    `${JSON.stringify({ epoch: current.epoch, at: new Date().toISOString(), pid: process.pid })}\n`,
    true,
  );
}
