/**
 * Rate limits of the file store, shared by the processes of one machine that use the store's root.
 * Each limit has a folder, `<root>/.limits/<name>/` (root entries starting with `.` are never runs),
 * with `lock-<g>` files (the highest number is the lock) and `log-<g>` files (the highest number is
 * the sliding log; the holder of lock g makes log g when it needs a new one).
 *
 * The log is a ring of the grants kept, in the order granted (so in time order), after a header of
 * counters, so that an acquire costs the same however many grants the window holds: it reads the
 * header, drops the grants that left the window (each read once, as it leaves), reads the one slot
 * that decides a request count, and writes the header and the new grant's slot in place. Grant
 * number `seq` is in slot `seq mod capacity`; a full ring is copied into a log twice its size. A charge
 * reads the slot this process noted for its grant (another process's grant is looked for from the
 * oldest on); only a process declaring a shorter window than another reads its window's slots.
 * Layout (little-endian; doubles unless said): header `cairnlim`, format u32, capacity u32, windowMs,
 * blockedUntil, head (number of the oldest grant kept), count, tokens, redo u32, redo slot, CRC-32 u32,
 * zeros to 128 bytes; then slots of 48 bytes: seq, at, tokens, the first 16 bytes of the id's SHA-256,
 * CRC-32 u32, zeros. A new grant's slot (free) is written before the header that counts it; a charge
 * writes the header first, carrying a copy of the slot it changes, then the slot, and the next holder
 * writes that copy again: a holder killed between two writes leaves no counter at odds with its
 * slots. A header or slot that fails its check (damaged from outside, torn by a power cut) counts as
 * a full window: nothing is granted for one window, then the log starts again.
 *
 * The lock: taking it is creating the next number's file exclusively (`O_CREAT | O_EXCL`), as run
 * leases are taken (`file-lease.ts`): of two processes, exactly one creates it, and nothing is removed
 * to take it. The file says who holds it (`{"pid":…,"host":…}`; read empty or damaged, it counts as
 * held until too old); its mtime is when it was taken; its holder gives it back by setting the mtime
 * to 0 through the descriptor it kept. The next number may be created over a lock given back, one
 * whose holder's pid is dead on this host, or one older than {@link STALE_LOCK_MS} (a holder keeps it
 * for a few system calls, never across an `await`). Whoever takes over a lock not given back first
 * copies the log into a log of its own number: a holder frozen (SIGSTOP) with the lock writes, once it
 * runs again, only into a log nobody reads any more, and cannot make one with a number as high. A
 * holder answers only once it has checked, after writing, that its lock file is still there and no next
 * number exists: then no takeover began before its writes, and the takeover's copy holds them.
 * Otherwise it tries again with the same grant id, and finds its grant if the copy holds it: a grant
 * is never missed, nor counted twice.
 *
 * Nothing is fsynced: the log only orders processes that are alive. Every path is opened without
 * following links (`safe-fs.ts`); a link in the way is `UNSAFE_PATH`.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { crc32Update } from '../../core/checksum.js';
import { CairnError, isCairnError } from '../../core/errors.js';
import { HOST, isProcessAlive } from '../common.js';
import type { LimitBackend, LimitRule, LimitTry } from '../store.js';
import { backoffDelay, fileSystemError, pause } from '../transient.js';
import { checkDirs, createFileExclusive, errnoOf, listDir, makeDir, readFileSafe, unsafePath, writeAllSync } from './safe-fs.js';

export const LIMITS_DIR = '.limits';
const ENTRY = /^(lock|log)-(\d{1,15})$/;
/** A lock held longer than this is taken over even when its holder looks alive (it holds it for microseconds). */
export const STALE_LOCK_MS = 10_000;
/** Temp files a process died before renaming or removing are removed after this. */
const STALE_TEMP_MS = 60_000;
const FORMAT = 1;
const MAGIC = Buffer.from('cairnlim');
const HEADER = 128;
const SLOT = 48;
const MIN_CAPACITY = 64;
/** The most slots read at once while going through the log. */
const CHUNK = 64;

interface LogHeader {
  capacity: number;
  /** The longest window any process declared: grants older than it are dropped. */
  windowMs: number;
  /** ms since 1970 before which nothing starts (a 429's slow-down). */
  blockedUntil: number;
  /** The number of the oldest grant kept; grants kept are head … head + count − 1. */
  head: number;
  count: number;
  /** Their tokens. */
  tokens: number;
}

interface Slot {
  readonly seq: number;
  readonly at: number;
  tokens: number;
  readonly id: Buffer;
}

interface HeldLock {
  readonly gen: number;
  readonly fd: number;
  /** Taken over from a holder that did not give it back (dead, or frozen too long). */
  readonly tookOver: boolean;
  /** The log numbers there once the lock was taken, highest first. */
  readonly logs: number[];
}

/** Bytes that are not what this code writes; `windowMs` is the longest window known (0 when the header is damaged). */
class DamagedLog extends Error {
  constructor(readonly windowMs: number) {
    super('damaged rate limit log');
  }
}

/** This attempt lost the lock, or met a file it did not expect: try again. */
class LostLock extends Error {}

export class FileLimits implements LimitBackend {
  readonly sharedBy = 'machine';
  /** This process's grants by limit and id, with their numbers, in the order granted. */
  private readonly placed = new Map<string, Map<string, number>>();
  /** The lock number this process last took, by limit folder: most often still the highest one. */
  private readonly lastGen = new Map<string, number>();

  constructor(
    private readonly root: string,
    private readonly ensureOpen: () => void,
  ) {}

  async tryAcquire(name: string, rule: LimitRule, grantId: string, tokens: number): Promise<LimitTry> {
    const result = await this.locked(name, rule.perMs, (log, now): LimitTry => {
      const h = log.header;
      h.windowMs = Math.max(h.windowMs, rule.perMs);
      log.prune(now - h.windowMs);
      // already granted by a try that then found it had lost the lock
      const landed = this.findGrant(log, name, grantId, false);
      const answer = landed ? { granted: true as const, at: landed.at } : waitToFit(log, rule, tokens, now);
      if (answer) {
        log.save(); // the grants that left the window
        return answer;
      }
      this.noted(name, h.head).set(grantId, log.append(grantId, tokens, now));
      return { granted: true, at: now };
    });
    return result!; // an acquire makes the log when there is none
  }

  async charge(name: string, grantId: string, totalTokens: number): Promise<void> {
    await this.locked(name, 0, (log) => {
      const slot = this.findGrant(log, name, grantId, true);
      if (!slot || totalTokens <= slot.tokens) return; // left the window, or nothing more to count
      log.header.tokens += totalTokens - slot.tokens;
      slot.tokens = totalTokens;
      log.save(slot);
    });
  }

  async slowDown(name: string, rule: LimitRule, ms: number): Promise<void> {
    await this.locked(name, rule.perMs, (log, now) => {
      log.header.blockedUntil = Math.max(log.header.blockedUntil, now + ms);
      log.save();
    });
  }

  /** Grant `grantId`'s slot, where this process noted it, or else (with `search`) looked for from the oldest grant on. */
  private findGrant(log: LimitLog, name: string, grantId: string, search: boolean): Slot | undefined {
    const h = log.header;
    const id = idHash(grantId);
    const seq = this.noted(name, h.head).get(grantId);
    const noted = seq !== undefined && seq < h.head + h.count ? log.slot(seq) : undefined;
    if (noted?.id.equals(id)) return noted;
    return search ? log.scan(h.head, (slot) => slot.id.equals(id)) : undefined;
  }

  /** This process's grants of limit `name` still kept (those before `head` are dropped: they left the window). */
  private noted(name: string, head: number): Map<string, number> {
    let noted = this.placed.get(name);
    if (!noted) this.placed.set(name, (noted = new Map<string, number>()));
    for (const [id, seq] of noted) {
      if (seq >= head) break;
      noted.delete(id);
    }
    return noted;
  }

  /**
   * Runs `change` on the limit's log under its lock (undefined for a charge that finds no log). While
   * another process holds the lock (a few system calls), waits a moment and tries again.
   */
  private async locked<T>(name: string, perMs: number, change: (log: LimitLog, now: number) => T): Promise<T | undefined> {
    this.ensureOpen();
    const dir = path.join(this.root, LIMITS_DIR, name);
    for (let attempt = 0; ; attempt++) {
      const done = this.inDir(dir, () => {
        const held = takeLock(this.root, dir, this.lastGen.get(dir));
        if (!held) return undefined;
        this.lastGen.set(dir, held.gen);
        let log: LimitLog | undefined;
        try {
          let value: T | undefined;
          try {
            log = openLog(dir, held, perMs);
            value = log && change(log, Date.now());
          } catch (error) {
            if (!(error instanceof DamagedLog)) throw error;
            if (perMs === 0) return { value: undefined }; // a charge: the next acquire, knowing the window, starts again
            log?.close();
            const [windowMs, now] = [Math.max(perMs, error.windowMs), Date.now()];
            log = createLog(dir, held.gen, { ...emptyHeader(windowMs, now), blockedUntil: now + windowMs }, []);
            value = change(log, now);
          }
          if (log?.changed && !isCurrent(dir, held)) return undefined;
          for (const old of held.logs) if (log && old < log.gen) unlinkIfThere(logFile(dir, old));
          return { value };
        } catch (error) {
          if (error instanceof LostLock) return undefined;
          throw error;
        } finally {
          log?.close();
          releaseLock(held);
        }
      });
      if (done) return done.value;
      await pause(backoffDelay(attempt, 1, 20));
      this.ensureOpen();
    }
  }

  /** Runs `fn` with the limit's folder made (never through a link); file system errors become the store's. */
  private inDir<T>(dir: string, fn: () => T): T {
    try {
      if (!checkDirs(this.root, dir)) {
        makeDir(path.dirname(dir));
        makeDir(dir);
      }
      return fn();
    } catch (error) {
      if (isCairnError(error)) throw error;
      throw fileSystemError(error, dir);
    }
  }
}

/** How long until a request for `tokens` fits under `rule` at `now` (the rule of `limit-window.ts`), or undefined when it fits. */
function waitToFit(log: LimitLog, rule: LimitRule, tokens: number, now: number): LimitTry | undefined {
  const h = log.header;
  const end = h.head + h.count;
  // the log is this process's window, unless another process declared a longer one
  const first = rule.perMs < h.windowMs ? log.firstAfter(now - rule.perMs) : h.head;
  let used = h.tokens;
  if (first > h.head && rule.tokens !== undefined) used = log.slotsFrom(first).reduce((sum, slot) => sum + slot.tokens, 0);
  let waitMs = 0;
  let why: 'requests' | 'tokens' | 'slowed' = 'slowed';
  const later = (ms: number, reason: typeof why): void => {
    if (ms > waitMs) [waitMs, why] = [ms, reason];
  };
  if (h.blockedUntil > now) later(h.blockedUntil - now, 'slowed');
  // the count drops under `requests` once the grant `requests` back from the newest has left
  if (rule.requests !== undefined && end - first >= rule.requests) later(log.slot(end - rule.requests).at + rule.perMs - now, 'requests');
  const excess = rule.tokens === undefined ? 0 : used + tokens - rule.tokens;
  if (excess > 0) {
    // the oldest grants leave first: the one whose leaving frees `excess` tokens is the one to wait for
    let freed = 0;
    const blocking = log.scan(first, (slot) => (freed += slot.tokens) >= excess);
    later(blocking ? blocking.at + rule.perMs - now : rule.perMs, 'tokens');
  }
  return waitMs > 0 ? { granted: false, waitMs, why } : undefined;
}

/** The current log of one limit, open under its lock. */
class LimitLog {
  /** True once anything was written: the holder then checks it still holds the lock. */
  changed = false;
  private readonly asRead: Buffer;

  constructor(
    private fd: number,
    public gen: number,
    readonly header: LogHeader,
    private readonly dir: string,
    private readonly lockGen: number,
  ) {
    this.asRead = encodeHeader(header);
  }

  slot(seq: number): Slot {
    return this.decode(this.bytes(seq, 1), 0, seq);
  }

  /** Visits the grants from number `from` on, oldest first (2 slots a read, then twice as many up to `CHUNK`); the one `stop` chose. */
  scan(from: number, stop: (slot: Slot) => boolean): Slot | undefined {
    const end = this.header.head + this.header.count;
    for (let seq = from, chunk = 2; seq < end; chunk = Math.min(2 * chunk, CHUNK)) {
      const n = Math.min(chunk, end - seq);
      const buf = this.bytes(seq, n);
      for (let i = 0; i < n; i++, seq++) {
        const slot = this.decode(buf, i * SLOT, seq);
        if (stop(slot)) return slot;
      }
    }
    return undefined;
  }

  /** The grants from number `from` on. */
  slotsFrom(from: number): Slot[] {
    const slots: Slot[] = [];
    this.scan(from, (slot) => {
      slots.push(slot);
      return false;
    });
    return slots;
  }

  /** The number of the oldest grant made after `since` (the end when none): a binary search, grants being in time order. */
  firstAfter(since: number): number {
    let [lo, hi] = [this.header.head, this.header.head + this.header.count];
    while (lo < hi) {
      const mid = Math.floor((lo + hi) / 2);
      if (this.slot(mid).at > since) hi = mid;
      else lo = mid + 1;
    }
    return lo;
  }

  /** Drops the grants made at or before `keepAfter`, each read once as it leaves. */
  prune(keepAfter: number): void {
    const h = this.header;
    const kept = this.scan(h.head, (slot) => {
      if (slot.at > keepAfter) return true;
      h.tokens = Math.max(0, h.tokens - slot.tokens);
      return false;
    });
    const head = kept?.seq ?? h.head + h.count;
    [h.count, h.head] = [h.count - (head - h.head), head];
    if (h.count === 0) h.tokens = 0; // no rounding left over
  }

  /** Adds a grant, its slot (free) written before the header that counts it, in a log twice as big when the ring is full; its number. */
  append(id: string, tokens: number, at: number): number {
    const h = this.header;
    if (h.count >= h.capacity) this.moveTo(h.capacity * 2);
    const slot: Slot = { seq: h.head + h.count, at, tokens, id: idHash(id) };
    this.put(slot);
    [h.count, h.tokens] = [h.count + 1, h.tokens + tokens];
    this.save();
    return slot.seq;
  }

  /** Copies the grants kept into a log of this lock's number with room for `capacity`, their tokens counted again. */
  moveTo(capacity: number): void {
    const slots = this.slotsFrom(this.header.head);
    Object.assign(this.header, { capacity, tokens: slots.reduce((sum, slot) => sum + slot.tokens, 0) });
    const next = createLog(this.dir, this.lockGen, this.header, slots);
    fs.closeSync(this.fd);
    [this.fd, this.gen, this.changed, next.fd] = [next.fd, this.lockGen, true, -1];
  }

  /** Writes the header (when it changed), then `slot` (a counted grant's): the header carries a copy, written again by the next holder. */
  save(slot?: Slot): void {
    const header = encodeHeader(this.header, slot);
    if (!slot && header.equals(this.asRead)) return;
    this.changed = true;
    fs.writeSync(this.fd, header, 0, HEADER, 0);
    if (slot) this.put(slot);
  }

  put(slot: Slot): void {
    this.changed = true;
    fs.writeSync(this.fd, encodeSlot(slot), 0, SLOT, HEADER + (slot.seq % this.header.capacity) * SLOT);
  }

  close(): void {
    if (this.fd >= 0) fs.closeSync(this.fd);
    this.fd = -1;
  }

  /** `n` slots from grant `seq` on, as bytes (the ring wraps at most once). */
  private bytes(seq: number, n: number): Buffer {
    const buf = Buffer.alloc(n * SLOT);
    const pos = seq % this.header.capacity;
    const first = Math.min(n, this.header.capacity - pos);
    let got = fs.readSync(this.fd, buf, 0, first * SLOT, HEADER + pos * SLOT);
    if (first < n) got += fs.readSync(this.fd, buf, first * SLOT, (n - first) * SLOT, HEADER);
    if (got < buf.length) throw new DamagedLog(this.header.windowMs); // cut short
    return buf;
  }

  private decode(buf: Buffer, offset: number, seq: number): Slot {
    const slot = decodeSlot(buf.subarray(offset, offset + SLOT));
    if (slot?.seq !== seq) throw new DamagedLog(this.header.windowMs);
    return slot;
  }
}

/** Opens the current log (the highest number), made when there is none (except for a charge), and copied after a takeover. */
function openLog(dir: string, held: HeldLock, perMs: number): LimitLog | undefined {
  const gen = held.logs[0];
  if (gen === undefined) return perMs > 0 ? createLog(dir, held.gen, emptyHeader(perMs, Date.now()), []) : undefined;
  const file = logFile(dir, gen);
  const fd = openInPlace(file);
  if (fd === undefined) throw new LostLock(); // removed since the listing: only by a process further on
  let log: LimitLog | undefined;
  try {
    const buf = Buffer.alloc(HEADER);
    const { header, redo } = decodeHeader(buf.subarray(0, fs.readSync(fd, buf, 0, HEADER, 0)), file);
    log = new LimitLog(fd, gen, header, dir, held.gen);
    if (redo) log.put(redo); // its holder may have died before writing the slot
    if (held.tookOver) log.moveTo(Math.max(header.capacity, fit(header.count)));
    return log;
  } catch (error) {
    if (log) log.close();
    else fs.closeSync(fd);
    throw error;
  }
}

/** An empty log; grant numbers never go back when a log starts again (a grant takes more than a microsecond). */
function emptyHeader(windowMs: number, now: number): LogHeader {
  return { capacity: MIN_CAPACITY, windowMs, blockedUntil: 0, head: now * 1000, count: 0, tokens: 0 };
}

/** Makes `log-<lockGen>`, whole before its name appears, and opens it. */
function createLog(dir: string, lockGen: number, header: LogHeader, slots: readonly Slot[]): LimitLog {
  const bytes = Buffer.alloc(HEADER + header.capacity * SLOT);
  encodeHeader(header).copy(bytes);
  for (const slot of slots) encodeSlot(slot).copy(bytes, HEADER + (slot.seq % header.capacity) * SLOT);
  const file = logFile(dir, lockGen);
  const fd = createFileExclusive(file, bytes, false) ? openInPlace(file) : undefined;
  if (fd === undefined) throw new LostLock();
  const log = new LimitLog(fd, lockGen, { ...header }, dir, lockGen);
  log.changed = true;
  return log;
}

/** Opens a log to read and write in place, never through a link; undefined when it is not there. */
function openInPlace(file: string): number | undefined {
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_NOFOLLOW);
  } catch (error) {
    const code = errnoOf(error);
    if (code === 'ENOENT') return undefined;
    throw code === 'ELOOP' ? unsafePath(file, 'it is a link') : code === 'EISDIR' ? unsafePath(file, 'it is not a regular file') : error;
  }
  if (fs.fstatSync(fd).isFile()) return fd;
  fs.closeSync(fd);
  throw unsafePath(file, 'it is not a regular file');
}

function encodeHeader(h: LogHeader, redo?: Slot): Buffer {
  const buf = Buffer.alloc(HEADER);
  MAGIC.copy(buf);
  buf.writeUInt32LE(FORMAT, 8);
  buf.writeUInt32LE(h.capacity, 12);
  [h.windowMs, h.blockedUntil, h.head, h.count, h.tokens].forEach((value, i) => buf.writeDoubleLE(value, 16 + 8 * i));
  if (redo) buf.writeUInt32LE(1, 56);
  if (redo) encodeSlot(redo).copy(buf, 60);
  buf.writeUInt32LE(crc32Update(buf.subarray(0, 108)), 108);
  return buf;
}

function decodeHeader(buf: Buffer, file: string): { header: LogHeader; redo?: Slot } {
  if (buf.length < HEADER || !buf.subarray(0, 8).equals(MAGIC)) throw new DamagedLog(0);
  const format = buf.readUInt32LE(8);
  if (format > FORMAT) {
    throw new CairnError(
      'FORMAT_TOO_NEW',
      `The rate limit log ${file} has format ${format}, written by a newer cairnjs (this one reads ${FORMAT}). Upgrade cairnjs.`,
      { path: file },
    );
  }
  const at = (offset: number): number => buf.readDoubleLE(offset);
  const h: LogHeader = {
    capacity: buf.readUInt32LE(12),
    windowMs: at(16),
    blockedUntil: at(24),
    head: at(32),
    count: at(40),
    tokens: at(48),
  };
  const redo = buf.readUInt32LE(56) === 1 ? decodeSlot(buf.subarray(60, 60 + SLOT)) : undefined;
  const valid =
    format === FORMAT &&
    buf.readUInt32LE(108) === crc32Update(buf.subarray(0, 108)) &&
    [h.windowMs, h.blockedUntil, h.tokens].every(isTime) &&
    Number.isSafeInteger(h.head) &&
    Number.isInteger(h.count) &&
    h.count >= 0 &&
    h.count <= h.capacity &&
    h.capacity > 0 &&
    (buf.readUInt32LE(56) === 0 || redo !== undefined);
  if (!valid) throw new DamagedLog(0);
  return { header: h, ...(redo ? { redo } : {}) };
}

function encodeSlot(slot: Slot): Buffer {
  const buf = Buffer.alloc(SLOT);
  [slot.seq, slot.at, slot.tokens].forEach((value, i) => buf.writeDoubleLE(value, 8 * i));
  slot.id.copy(buf, 24, 0, 16);
  buf.writeUInt32LE(crc32Update(buf.subarray(0, 40)), 40);
  return buf;
}

/** The slot in `bytes` when its check and values hold. */
function decodeSlot(bytes: Buffer): Slot | undefined {
  const slot = { seq: bytes.readDoubleLE(0), at: bytes.readDoubleLE(8), tokens: bytes.readDoubleLE(16), id: bytes.subarray(24, 40) };
  const valid = bytes.readUInt32LE(40) === crc32Update(bytes.subarray(0, 40)) && Number.isSafeInteger(slot.seq);
  return valid && isTime(slot.at) && isTime(slot.tokens) ? slot : undefined;
}

function idHash(id: string): Buffer {
  return createHash('sha256').update(id).digest().subarray(0, 16);
}

/** The capacity (doubling from the least) with room for more than `count` grants. */
function fit(count: number): number {
  let capacity = MIN_CAPACITY;
  while (capacity <= count) capacity *= 2;
  return capacity;
}

function isTime(value: number): boolean {
  return Number.isFinite(value) && value >= 0;
}

/** The lock and log numbers in `dir`, highest first (a link counts as its number, and is refused when read); old temp files go. */
function listLimitDir(dir: string): { locks: number[]; logs: number[] } {
  const found = { locks: [] as number[], logs: [] as number[] };
  const now = Date.now();
  for (const entry of listDir(dir)) {
    const match = ENTRY.exec(entry.name);
    if (match?.[2]) found[match[1] === 'lock' ? 'locks' : 'logs'].push(Number(match[2]));
    else if (entry.name.startsWith('.') && entry.name.endsWith('.tmp')) {
      const stat = fs.lstatSync(path.join(dir, entry.name), { throwIfNoEntry: false });
      if (stat && now - stat.mtimeMs > STALE_TEMP_MS) fs.rmSync(path.join(dir, entry.name), { force: true });
    }
  }
  found.locks.sort((a, b) => b - a);
  found.logs.sort((a, b) => b - a);
  return found;
}

function lockFile(dir: string, gen: number): string {
  return path.join(dir, `lock-${gen}`);
}

function logFile(dir: string, gen: number): string {
  return path.join(dir, `log-${gen}`);
}

/**
 * Whether lock `gen` is held, given back (mtime 0) or abandoned (its holder is a dead process of
 * this host, or it is older than {@link STALE_LOCK_MS}); undefined when its file is gone (a newer
 * one was taken meanwhile: look again).
 */
function lockState(root: string, dir: string, gen: number): 'held' | 'given back' | 'abandoned' | undefined {
  const file = lockFile(dir, gen);
  const stat = fs.lstatSync(file, { throwIfNoEntry: false });
  if (!stat) return undefined;
  if (!stat.isFile()) throw unsafePath(file, stat.isSymbolicLink() ? 'it is a link' : 'it is not a regular file');
  if (stat.mtimeMs <= 0) return 'given back';
  if (Date.now() - stat.mtimeMs >= STALE_LOCK_MS) return 'abandoned';
  const text = readFileSafe(root, file);
  if (text === undefined) return undefined;
  const holder = parseHolder(text); // unreadable (just made, or damaged from outside): held until it is too old
  const isDead = holder?.host === HOST && typeof holder.pid === 'number' && !isProcessAlive(holder.pid);
  return isDead ? 'abandoned' : 'held';
}

function parseHolder(text: string): { pid?: unknown; host?: unknown } | undefined {
  try {
    const value = JSON.parse(text) as unknown;
    return typeof value === 'object' && value !== null ? value : undefined;
  } catch {
    return undefined;
  }
}

/** Takes the limit's lock, or undefined while a live process holds it. */
function takeLock(root: string, dir: string, lastGen?: number): HeldLock | undefined {
  for (let guess = lastGen; ; guess = undefined) {
    const top = guess ?? listLimitDir(dir).locks[0] ?? 0;
    const state = top > 0 ? lockState(root, dir, top) : 'given back';
    if (state === undefined) continue;
    if (state === 'held') {
      if (guess === undefined) return undefined;
      continue;
    }
    const gen = top + 1;
    const fd = createLockFile(lockFile(dir, gen));
    if (fd === undefined) continue; // another process took this number first: look again
    const { locks, logs } = listLimitDir(dir);
    if (locks[0] !== gen) {
      // this number's earlier file was already removed by a process further on: this one lost
      unlinkIfThere(lockFile(dir, gen));
      fs.closeSync(fd);
      continue;
    }
    // older numbers are history; oldest first, so that one who finds number n gone finds every lower one gone
    for (const old of locks.reverse()) if (old < gen) unlinkIfThere(lockFile(dir, old));
    return { gen, fd, tookOver: state === 'abandoned', logs };
  }
}

/** Removes a file (never what a link points to), if it is there. */
function unlinkIfThere(file: string): void {
  try {
    fs.unlinkSync(file);
  } catch (error) {
    if (errnoOf(error) !== 'ENOENT') throw error;
  }
}

/** Creates a lock file exclusively, says who holds it, and returns its descriptor; undefined if the name exists. */
function createLockFile(file: string): number | undefined {
  const { O_WRONLY, O_CREAT, O_EXCL, O_NOFOLLOW } = fs.constants;
  let fd: number;
  try {
    fd = fs.openSync(file, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o644);
  } catch (error) {
    if (errnoOf(error) === 'EEXIST') return undefined;
    throw error;
  }
  try {
    writeAllSync(fd, HOLDER);
    return fd;
  } catch (error) {
    fs.closeSync(fd);
    unlinkIfThere(file); // nobody could take it for a live one's: it said nothing yet
    throw error;
  }
}

const HOLDER = Buffer.from(`${JSON.stringify({ pid: process.pid, host: HOST })}\n`, 'utf8');

/** True while lock `gen` was not taken over: its file is still there (a taker removes lower numbers) and no next number exists. */
function isCurrent(dir: string, held: HeldLock): boolean {
  return fs.fstatSync(held.fd).nlink > 0 && fs.lstatSync(lockFile(dir, held.gen + 1), { throwIfNoEntry: false }) === undefined;
}

/** Gives the lock back through its descriptor (mtime 0), never by its path. */
function releaseLock(held: HeldLock): void {
  try {
    fs.futimesSync(held.fd, 0, 0);
  } finally {
    fs.closeSync(held.fd);
  }
}
