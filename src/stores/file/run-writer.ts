/**
 * The one writer of a run at a time: the holder of its lease. Every write of the file store goes
 * through a {@link RunWriter}: it appends to the files of its own segment (opened once, `O_APPEND`,
 * never through a link), makes the bytes durable, and only then checks that its epoch is still the
 * run's highest. That order is what makes a write that resolved count: a taker creates its lease
 * file before it measures what it trusts, so a write that found no newer epoch after its fdatasync
 * was complete before the taker measured, and is inside what the taker trusts. A write that finds
 * a newer epoch is refused with `LEASE_LOST`; what it wrote lies past the seal and is never read.
 *
 * No writer truncates, rewrites or replaces a log: a write that failed half-way (a full disk) leaves
 * its bytes where they are, the writer refuses any further write (its segment may end in a torn
 * line that must never fuse with the next one), and gives its lease back as not clean, so that the
 * next holder starts a segment of its own.
 */
import fs from 'node:fs';
import path from 'node:path';
import { CairnError } from '../../core/errors.js';
import { decodeRun, encodeRun, summaryRequiredError } from '../codec.js';
import { leaseLostError, nextRunRecord } from '../common.js';
import type { PayloadLimits } from '../../core/record.js';
import type { Lease, RunPatch, RunRecord } from '../store.js';
import {
  expireLeaseFile,
  extendLeaseFile,
  currentEpoch,
  isStillHeld,
  leaseFile,
  readLeaseFile,
  releaseLeaseFile,
  syncLeaseDir,
  takeLease,
  type StoredLease,
} from './file-lease.js';
import { readRunLine, readRunRecord } from './run-record.js';
import { FREE_SPACE_RESERVE_BYTES, fileSystemError, freeBytes, isDiskFull, storeFullError } from '../transient.js';
import { bytesWrittenOf, checkDirs, errnoOf, makeDir, openForAppend, syncDir, writeAllSync } from './safe-fs.js';
import { ITEMS_DIR, resolveChain, RUN_LOG, startSegment, type Segment } from './segments.js';

export { decodeRunOf, readRunLine } from './run-record.js';

export class RunWriter {
  private readonly fds = new Map<string, number>();
  private lost: CairnError | undefined;
  private broken: Error | undefined;
  private closed = false;
  private leaseClosed = false;
  /** The run record in force (this writer is the only one that changes it), read when first needed. */
  private record: RunRecord | undefined;
  /** The next checkpoint seq, set by the store from the logs when first needed. */
  nextSeq: number | undefined;

  private constructor(
    readonly root: string,
    readonly runDir: string,
    readonly runId: string,
    private stored: StoredLease,
    /** The lease file, open: its mtime is the expiry, and whether it is still linked tells a takeover. */
    private readonly leaseFd: number,
    private segmentNow: Segment,
    private readonly limits: PayloadLimits,
  ) {}

  get lease(): Lease {
    const { runId, owner, epoch, host, pid, acquiredAt, expiresAt } = this.stored;
    return { runId, owner, epoch, host, pid, acquiredAt, expiresAt };
  }

  /** The segment this writer appends to. */
  get segment(): Segment {
    return this.segmentNow;
  }

  get isOpen(): boolean {
    return !this.closed && !this.lost;
  }

  /**
   * Takes the run's lease (`RUN_LOCKED` if a live one is held) and returns its writer. After a
   * lease given back cleanly the writer goes on in the same segment; otherwise it starts and seals
   * its own. `NOT_FOUND` when the folder holds no run.
   */
  static acquire(root: string, runDir: string, runId: string, owner: string, ttlMs: number, limits: PayloadLimits): RunWriter {
    const chain = resolveChain(root, runDir, runId);
    const head = chain?.at(-1);
    if (!chain || !head) throw notFound(runId);
    const { lease, fd, previous } = takeLease(root, runDir, runId, owner, ttlMs);
    let segment = head;
    if (head.id === 'legacy' || (previous !== undefined && !(previous.released && previous.clean))) {
      try {
        syncLeaseDir(runDir);
        // what the holder before may have written after the chain was read is measured now, after our lease exists
        const current = resolveChain(root, runDir, runId)?.at(-1) ?? head;
        const line = readRunLine(root, current);
        if (line === undefined) throw notFound(runId);
        segment = startSegment(root, runDir, runId, lease.epoch, current, line);
      } catch (error) {
        try {
          releaseLeaseFile(runDir, lease, false);
        } catch {
          expireLeaseFile(fd); // a full disk: expired now, it is taken over as a lease not given back cleanly
        } finally {
          fs.closeSync(fd);
        }
        throw fileSystemError(error, runDir, { runId });
      }
    }
    const writer = new RunWriter(root, runDir, runId, lease, fd, segment, limits);
    writer.checkCurrent();
    return writer;
  }

  /** The writer for a lease taken by another store instance of this process: `LEASE_LOST` unless it is the current one. */
  static attach(root: string, runDir: string, lease: Lease, limits: PayloadLimits): RunWriter {
    const file = leaseFile(runDir, lease.epoch);
    const stored = readLeaseFile(root, file, lease.runId, lease.epoch);
    if (!stored || stored.released || stored.owner !== lease.owner || currentEpoch(runDir) !== lease.epoch) throw leaseLostError(lease);
    const head = resolveChain(root, runDir, lease.runId)?.at(-1);
    if (!head || head.id === 'legacy') throw leaseLostError(lease);
    const fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
    const writer = new RunWriter(root, runDir, lease.runId, stored, fd, head, limits);
    writer.checkCurrent(); // the file opened is the one read, still current
    return writer;
  }

  /** `LEASE_LOST` once the run was taken over (or this lease was given back). */
  checkCurrent(): void {
    if (this.lost) throw this.lost;
    if (this.closed || !isStillHeld(this.runDir, this.stored.epoch, this.leaseFd)) {
      this.lost = leaseLostError(this.lease);
      this.closeFiles();
      this.closeLease();
      throw this.lost;
    }
  }

  private checkWritable(): void {
    if (this.lost) throw this.lost;
    if (this.closed) throw leaseLostError(this.lease);
    if (this.broken) {
      const why = `an earlier write to run ${this.runId} failed half-way, so this process writes nothing more to it (the next attempt starts a log segment of its own)`;
      if (isDiskFull(this.broken)) throw storeFullError(this.segment.dir, this.broken, { runId: this.runId }, why);
      throw new CairnError(
        'STORE_UNAVAILABLE',
        `An earlier write to run ${this.runId} failed (${this.broken.message}); this process writes nothing more to it. ` +
          'Put the store right, then resume the run: the next attempt starts a fresh log segment.',
        { runId: this.runId, path: this.segment.dir },
        { cause: this.broken },
      );
    }
  }

  /** The file `rel` of the segment, open for appending (its folder and the file created durably when new). */
  private fileFor(rel: string): number {
    let fd = this.fds.get(rel);
    if (fd !== undefined) return fd;
    const file = path.join(this.segment.dir, rel);
    const dir = path.dirname(file);
    if (dir !== this.segment.dir && !checkDirs(this.root, dir)) {
      if (!checkDirs(this.root, this.segment.dir)) throw notFound(this.runId);
      if (makeDir(dir)) syncDir(this.segment.dir);
    }
    let opened: { fd: number; created: boolean };
    try {
      opened = openForAppend(this.root, file);
    } catch (error) {
      if (errnoOf(error) === 'ENOENT') throw notFound(this.runId);
      throw error;
    }
    fd = opened.fd;
    if (opened.created) syncDir(dir);
    else if (!endsWithNewline(fd)) {
      // a torn line this writer did not write (a segment it goes on with): never fuse with it
      fs.closeSync(fd);
      if (this.segmentNow.id === this.stored.epoch)
        throw new CairnError('CHECKPOINT_CORRUPT', `${file} ends with a torn line.`, { runId: this.runId });
      this.startOwnSegment();
      return this.fileFor(rel);
    }
    this.fds.set(rel, fd);
    return fd;
  }

  /** Seals the segment this writer went on with and goes on in one of its own (named after its epoch). */
  private startOwnSegment(): void {
    const line = readRunLine(this.root, this.segmentNow);
    if (line === undefined) throw notFound(this.runId);
    this.closeFiles();
    this.segmentNow = startSegment(this.root, this.runDir, this.runId, this.stored.epoch, this.segmentNow, line);
    this.checkCurrent();
  }

  /**
   * Appends complete lines to `rel` durably, then checks the lease: resolved means trusted.
   *
   * A full disk: a write that would leave less than `reserve` bytes free is refused before a byte
   * is written (`STORE_FULL`), so that the records that end the attempt (the run record, which
   * passes `reserve` 0, and the lease given back) still fit, and the writer stays usable. A write
   * the disk refused with nothing written leaves the log as it was: usable too. A write cut short,
   * or an fdatasync that failed, may have left a torn line: nothing more is appended after it.
   */
  append(rel: string, text: string | Buffer, reserve = FREE_SPACE_RESERVE_BYTES): void {
    this.checkWritable();
    const fd = this.fileFor(rel);
    const data = typeof text === 'string' ? Buffer.from(text, 'utf8') : text;
    const file = path.join(this.segment.dir, rel);
    const free = this.freeSpace();
    if (free !== undefined && free < data.length + reserve) {
      const kept = reserve > 0 ? `, and the file store keeps ${formatBytes(reserve)} free to record the end of the run` : '';
      throw storeFullError(
        file,
        undefined,
        { runId: this.runId },
        `${formatBytes(free)} free; this write needs ${formatBytes(data.length)}${kept}`,
      );
    }
    try {
      writeAllSync(fd, data);
      this.writtenSinceStatfs += data.length;
    } catch (error) {
      if (bytesWrittenOf(error) > 0) this.broken = error as Error;
      throw fileSystemError(error, file, { runId: this.runId });
    }
    try {
      fs.fdatasyncSync(fd);
    } catch (error) {
      this.broken = error as Error;
      throw fileSystemError(error, file, { runId: this.runId });
    }
    this.checkCurrent();
  }

  /**
   * Free bytes where this writer appends. With plenty of room (more than 64 × the reserve) the
   * last measure, less what was written since, stands for up to a second: a durable step then pays
   * no `statfs` of its own. Close to full, every write measures again.
   */
  private freeSpace(): number | undefined {
    const now = Date.now();
    const known = this.freeMeasured;
    if (known && now - known.at < 1000) {
      const left = known.bytes - this.writtenSinceStatfs;
      if (left > 64 * FREE_SPACE_RESERVE_BYTES) return left;
    }
    const bytes = freeBytes(this.segment.dir);
    this.freeMeasured = bytes === undefined ? undefined : { bytes, at: now };
    this.writtenSinceStatfs = 0;
    return bytes;
  }

  private freeMeasured: { bytes: number; at: number } | undefined;
  private writtenSinceStatfs = 0;

  /** The run record in force (read back from an earlier intact line when the last one is damaged). */
  currentRecord(): RunRecord {
    if (!this.record) {
      const chain = resolveChain(this.root, this.runDir, this.runId);
      const read = readRunRecord(this.root, chain?.at(-1)?.dir === this.segment.dir ? chain : [this.segment], this.runId);
      if (!read) throw notFound(this.runId);
      this.record = read.record;
    }
    return this.record;
  }

  /** Compare-and-set of the run record: `CONFLICT` unless it is at `expectedVersion`. */
  updateRun(expectedVersion: number, patch: RunPatch): RunRecord {
    this.checkWritable();
    const current = this.currentRecord();
    if (current.version !== expectedVersion) {
      throw new CairnError(
        'CONFLICT',
        `Run ${this.runId} changed meanwhile (version ${current.version}, expected ${expectedVersion}). Reload it and try again.`,
        { runId: this.runId, version: current.version, expectedVersion },
      );
    }
    if (current.rebuilt?.dataLost && patch.data === undefined) throw summaryRequiredError(current);
    const line = encodeRun(nextRunRecord(current, patch), this.limits);
    const stored = decodeRun(line, { runId: this.runId });
    this.record = undefined; // unknown until the write resolves
    this.append(RUN_LOG, `${line}\n`, 0); // the records that end an attempt use the space the other logs leave
    this.record = stored;
    return stored;
  }

  /** Extends the lease by `ttlMs` from now: `LEASE_LOST` if it was taken over. */
  renew(ttlMs: number): Lease {
    this.checkWritable();
    this.checkCurrent();
    const expiresAt = new Date(Date.now() + ttlMs);
    extendLeaseFile(this.leaseFd, expiresAt);
    this.stored = { ...this.stored, ttlMs, expiresAt: expiresAt.toISOString() };
    this.checkCurrent();
    return this.lease;
  }

  /**
   * Gives the lease back (a no-op when it was taken over): clean unless a write failed half-way.
   * When the file that says so cannot be written (a full disk), the lease is made to expire now
   * instead, through its open descriptor (that needs no space): the next holder takes the run over
   * at once, into a segment of its own, as after a lease not given back cleanly.
   */
  release(): void {
    if (this.closed) return;
    const held = !this.lost && isStillHeld(this.runDir, this.stored.epoch, this.leaseFd);
    this.closeFiles();
    this.closed = true;
    try {
      if (held) releaseLeaseFile(this.runDir, this.stored, this.broken === undefined);
    } catch (error) {
      if (errnoOf(error) === 'ENOENT') return; // the run was deleted meanwhile
      try {
        expireLeaseFile(this.leaseFd);
      } catch {
        throw fileSystemError(error, leaseFile(this.runDir, this.stored.epoch), { runId: this.runId });
      }
    } finally {
      this.closeLease();
    }
  }

  private closeLease(): void {
    if (this.leaseClosed) return;
    this.leaseClosed = true;
    fs.closeSync(this.leaseFd);
  }

  private closeFiles(): void {
    for (const fd of this.fds.values()) {
      try {
        fs.closeSync(fd);
      } catch {
        // closing only
      }
    }
    this.fds.clear();
  }

  /** Folders of the segment, for callers that make them (the items folder). */
  get itemsDir(): string {
    return path.join(this.segment.dir, ITEMS_DIR);
  }
}

function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}

function endsWithNewline(fd: number): boolean {
  const { size } = fs.fstatSync(fd);
  if (size === 0) return true;
  const byte = Buffer.alloc(1);
  fs.readSync(fd, byte, 0, 1, size - 1);
  return byte[0] === 0x0a;
}

function notFound(runId: string): CairnError {
  return new CairnError('NOT_FOUND', `Run ${runId} not found.`, { runId });
}
