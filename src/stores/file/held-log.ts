/**
 * The checkpoint fast path: a run's mutex kept across back-to-back appends, with the log open for
 * writing. While it is held nobody else (no process that honours the mutex) can change the log,
 * the run record or the lease, so an append is one write and one fdatasync with no checks around
 * it: a workflow step costs about one fsync instead of a mutex cycle (temp file, link, unlink,
 * unlink) plus reads of run.json, lock.json and the log's tail. A busy hold also writes zeros
 * ahead of its appends (made durable once), so that each append's fdatasync changes no file size
 * and needs no journal commit; they are cut off when the mutex is given back.
 *
 * The mutex is given back at the next turn of the event loop (so only appends that follow each
 * other without leaving the microtask queue share it), before any other operation of the store on
 * the run, as soon as another process waits for it (`.mutex-want`), and after {@link HOLD_MAX_MS}.
 */
import fsSync from 'node:fs';
import path from 'node:path';
import { isMissing } from './atomic-write.js';
import { indexAppendedLine, indexMatchesFdSync, CHECKPOINTS_FILE, type CheckpointIndex } from './checkpoint-log.js';
import { checkLeaseCurrentSync, LOCK_FILE } from './file-lease.js';
import { hasWaiterSync, MUTEX_STALE_MS, releaseFileMutexSync, tryAcquireFileMutexSync } from './file-mutex.js';
import { notFound } from '../common.js';
import type { CheckpointRef, WriteOptions } from '../store.js';
import { RUN_FILE } from './run-transfer.js';

/** A held mutex is taken afresh after this long, far within the {@link MUTEX_STALE_MS} others wait before taking it over. */
const HOLD_MAX_MS = Math.min(5000, MUTEX_STALE_MS / 10);
/** While holding, `.mutex-want` is looked at at most this often (waiters retry every 1–20 ms). */
const WAITER_CHECK_MS = 2;
/** After this many appends in one hold, the log is extended with zeros ahead of the appends. */
const PREALLOCATE_AFTER = 8;
const PREALLOCATE_MIN = 64 * 1024;
const PREALLOCATE_MAX = 1024 * 1024;
const ZEROS = Buffer.alloc(PREALLOCATE_MIN);

interface HeldLog {
  readonly dir: string;
  readonly token: string;
  /** checkpoints.jsonl, open for writing at `end` (and reading). */
  readonly fd: number;
  /** Where the next line goes: the end of the last line (the index's size). */
  end: number;
  /** The file's size: past `end` only zeros, written ahead (see {@link HeldLogs.tryAppend}). */
  allocated: number;
  /** Zeros written ahead the last time (the next time twice as many, up to 1 MiB). */
  aheadChunk: number;
  appends: number;
  readonly since: number;
  /** When `.mutex-want` was last looked at. */
  checkedAt: number;
  /** The lease verified when the hold began (appends under another one read lock.json again). */
  lease: { readonly epoch: number; readonly owner: string } | undefined;
}

/** The runs whose mutex one store instance holds, by run id. */
export class HeldLogs {
  private readonly held = new Map<string, HeldLog>();

  /**
   * Appends the line `encode` makes for seq `index.maxSeq + 1`, durably, under the held mutex
   * (taken first if it is free and the log is exactly what `index` describes). Undefined, having
   * written nothing and holding nothing, when the caller must take the async path. A failed write
   * throws and gives the mutex back; the log may then end with a torn line, so the caller drops `index`.
   */
  tryAppend(
    runId: string,
    dir: string,
    index: CheckpointIndex,
    options: WriteOptions | undefined,
    encode: (seq: number) => { line: string; ref: CheckpointRef },
  ): CheckpointRef | undefined {
    const now = Date.now();
    let hold = this.held.get(runId);
    if (!hold || now - hold.checkedAt >= WAITER_CHECK_MS) {
      if (hasWaiterSync(dir)) {
        this.release(runId); // another process waits: hand the mutex over
        return undefined;
      }
      if (hold) hold.checkedAt = now;
    }
    if (hold && now - hold.since >= HOLD_MAX_MS) {
      this.release(runId);
      hold = undefined;
    }
    hold ??= this.hold(runId, dir, index, options);
    if (!hold) return undefined;
    try {
      const lease = options?.lease;
      if (lease && (hold.lease?.epoch !== lease.epoch || hold.lease.owner !== lease.owner)) {
        checkLeaseCurrentSync(path.join(dir, LOCK_FILE), lease);
        hold.lease = { epoch: lease.epoch, owner: lease.owner };
      }
      const seq = index.maxSeq + 1;
      const { line, ref } = encode(seq);
      const data = Buffer.from(`${line}\n`, 'utf8');
      hold.appends += 1;
      // small lines of a busy hold go over zeros written ahead; a big one (a snapshot) simply grows the file
      if (hold.appends > PREALLOCATE_AFTER && data.length <= PREALLOCATE_MIN && hold.end + data.length > hold.allocated) preallocate(hold);
      writeAt(hold.fd, data, hold.end);
      fsSync.fdatasyncSync(hold.fd);
      hold.end += data.length;
      hold.allocated = Math.max(hold.allocated, hold.end);
      indexAppendedLine(index, seq, data);
      return ref;
    } catch (error) {
      this.release(runId);
      throw error;
    }
  }

  /** True while the run's mutex is held and young enough to rely on (see {@link HOLD_MAX_MS}). */
  isFresh(runId: string): boolean {
    const hold = this.held.get(runId);
    return hold !== undefined && Date.now() - hold.since < HOLD_MAX_MS;
  }

  /**
   * Gives back the run's mutex if it is held. Never throws: zeros that could not be cut are a torn
   * tail (readers skip it, the next append cuts it), and a mutex that could not be removed is taken
   * over in time like one left by a crash.
   */
  release(runId: string): void {
    const hold = this.held.get(runId);
    if (!hold) return;
    this.held.delete(runId);
    // the zeros written ahead go, not durably: after a crash they are such a torn tail
    if (hold.allocated > hold.end) ignoreErrors(() => fsSync.ftruncateSync(hold.fd, hold.end));
    ignoreErrors(() => fsSync.closeSync(hold.fd));
    ignoreErrors(() => releaseFileMutexSync(hold.dir, hold.token));
  }

  releaseAll(): void {
    for (const runId of [...this.held.keys()]) this.release(runId);
  }

  /**
   * Takes the run's mutex if it is free, checks the run, the lease and that the log is exactly what
   * `index` describes, and opens the log for appending. Undefined (nothing held) otherwise.
   */
  private hold(runId: string, dir: string, index: CheckpointIndex, options: WriteOptions | undefined): HeldLog | undefined {
    const token = tryAcquireFileMutexSync(dir, runId);
    if (token === undefined) return undefined;
    let fd: number | undefined;
    try {
      try {
        fsSync.accessSync(path.join(dir, RUN_FILE));
      } catch (error) {
        if (isMissing(error)) throw notFound(runId);
        throw error;
      }
      if (options?.lease) checkLeaseCurrentSync(path.join(dir, LOCK_FILE), options.lease);
      fd = openForWriteSync(path.join(dir, CHECKPOINTS_FILE));
      // the same file, ending where the index ends: after a complete line, so no torn tail either
      if (fd === undefined || !indexMatchesFdSync(fd, index)) return undefined;
      const now = Date.now();
      const lease = options?.lease && { epoch: options.lease.epoch, owner: options.lease.owner };
      const hold: HeldLog = {
        dir,
        token,
        fd,
        end: index.size,
        allocated: index.size,
        aheadChunk: 0,
        appends: 0,
        since: now,
        checkedAt: now,
        lease,
      };
      this.held.set(runId, hold);
      fd = undefined;
      setImmediate(() => {
        if (this.held.get(runId) === hold) this.release(runId);
      });
      return hold;
    } finally {
      if (fd !== undefined) fsSync.closeSync(fd);
      if (this.held.get(runId)?.token !== token) releaseFileMutexSync(dir, token);
    }
  }
}

/** Opens an existing file for writing at given offsets (and reading); undefined when it does not exist. */
function openForWriteSync(file: string): number | undefined {
  try {
    return fsSync.openSync(file, fsSync.constants.O_RDWR);
  } catch (error) {
    if (isMissing(error)) return undefined;
    throw error;
  }
}

function writeAt(fd: number, data: Buffer, position: number): void {
  let offset = 0;
  while (offset < data.length) offset += fsSync.writeSync(fd, data, offset, data.length - offset, position + offset);
}

/**
 * Extends the log with durable zeros ahead of the appends of a busy hold: an fdatasync of a line
 * written over them changes no file size, so it flushes the data without a journal commit (on ext4
 * here about 0.10 ms instead of 0.15). Up to 1 MiB at a time, doubling.
 */
function preallocate(hold: HeldLog): void {
  const size = Math.min(PREALLOCATE_MAX, Math.max(PREALLOCATE_MIN, 2 * hold.aheadChunk));
  hold.aheadChunk = size;
  for (let done = 0; done < size; done += ZEROS.length) writeAt(hold.fd, ZEROS, hold.allocated + done);
  fsSync.fdatasyncSync(hold.fd);
  hold.allocated += size;
}

function ignoreErrors(fn: () => void): void {
  try {
    fn();
  } catch {
    // see the caller
  }
}
