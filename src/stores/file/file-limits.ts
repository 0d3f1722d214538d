/**
 * Rate limits of the file store, shared by the processes of one machine that use the store's
 * root. Each limit has a folder, `<root>/.limits/<name>/` (root entries starting with `.` are never
 * runs):
 *
 *     state.json      the sliding log: `{"v":1,"windowMs":…,"blockedUntil":…,"grants":[[id, at, tokens], …]}`
 *     lock-<gen>      the lock: the file with the highest number is the current one
 *
 * Taking the lock is creating the next number's file exclusively (`O_CREAT | O_EXCL`), as run
 * leases are taken (`file-lease.ts`): of two processes that want it, exactly one creates it, and
 * nothing is ever removed to take it, so no process can remove a lock another just took. A process
 * then checks that no higher number exists (one that raced with a takeover further on lost, and
 * withdraws). The file says who holds it (`{"pid":…,"host":…}`, written right after it is created:
 * a lock read empty or damaged counts as held, until it is too old). Its mtime is when it was taken; its
 * holder gives it back by setting the mtime to 0 through the descriptor it kept (never by path).
 * The next number may be created over a lock that was given back, whose holder's pid is dead on
 * this host, or that is older than {@link STALE_LOCK_MS}: a holder keeps it for a few system calls
 * and never across an `await`, so only a process frozen (SIGSTOP) inside them that long loses it.
 * Such a process, once it runs again, finds the higher number before it writes, and writes nothing.
 *
 * Nothing here is fsynced: the state only orders processes that are alive. Every path is opened
 * without following links (`safe-fs.ts`); a link in the way is `UNSAFE_PATH`. A `state.json` that
 * cannot be read (damaged from outside) is taken as a full window: nothing is granted for one
 * `per`, then the log starts again, so the limit is never exceeded because of it.
 */
import fs from 'node:fs';
import path from 'node:path';
import { CairnError, isCairnError } from '../../core/errors.js';
import { HOST, isProcessAlive } from '../common.js';
import { chargeGrant, emptyWindow, slowWindow, tryGrant, type WindowGrant, type WindowState } from '../limit-window.js';
import type { LimitBackend, LimitRule, LimitTry } from '../store.js';
import { backoffDelay, fileSystemError, pause } from '../transient.js';
import { checkDirs, errnoOf, listDir, makeDir, openForRead, readFileSafe, replaceFile, writeAllSync } from './safe-fs.js';

export const LIMITS_DIR = '.limits';
const STATE_FILE = 'state.json';
const LOCK_FILE = /^lock-(\d{1,15})$/;
/** A lock held longer than this is taken over even when its holder looks alive (it holds it for microseconds). */
export const STALE_LOCK_MS = 10_000;
/** Temp files a process died before renaming or removing are removed after this. */
const STALE_TEMP_MS = 60_000;
const FORMAT = 1;

interface HeldLock {
  readonly gen: number;
  readonly fd: number;
}

export class FileLimits implements LimitBackend {
  readonly sharedBy = 'machine';

  constructor(
    private readonly root: string,
    private readonly ensureOpen: () => void,
  ) {}

  tryAcquire(name: string, rule: LimitRule, grantId: string, tokens: number): Promise<LimitTry> {
    return this.locked(name, rule.perMs, (state, now) => tryGrant(state, rule, grantId, tokens, now));
  }

  async charge(name: string, grantId: string, totalTokens: number): Promise<void> {
    await this.locked(name, 0, (state) => chargeGrant(state, grantId, totalTokens));
  }

  async slowDown(name: string, rule: LimitRule, ms: number): Promise<void> {
    await this.locked(name, rule.perMs, (state, now) => slowWindow(state, now + ms));
  }

  /**
   * Runs `change` on the limit's state under its lock, and writes the state back if it changed.
   * While another process holds the lock (a few system calls), waits a moment and tries again.
   */
  private async locked<T>(name: string, perMs: number, change: (state: WindowState, now: number) => T): Promise<T> {
    this.ensureOpen();
    const dir = path.join(this.root, LIMITS_DIR, name);
    for (let attempt = 0; ; attempt++) {
      const done = this.inDir(dir, () => {
        const held = takeLock(this.root, dir);
        if (!held) return undefined;
        try {
          const file = path.join(dir, STATE_FILE);
          const text = readFileSafe(this.root, file);
          const now = Date.now();
          const state = parseState(text, file, perMs, now);
          const value = change(state, now);
          const next = stateText(state);
          if (next === text) return { value };
          // a holder frozen past STALE_LOCK_MS was taken over: it writes nothing, and tries again
          if (!isCurrent(dir, held.gen)) return undefined;
          replaceFile(file, next, false);
          return { value };
        } finally {
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

/** The lock numbers present in `dir`, highest first; a link counts as its number (and is refused when read). */
function lockGens(dir: string): number[] {
  const gens: number[] = [];
  const now = Date.now();
  for (const entry of listDir(dir)) {
    const match = LOCK_FILE.exec(entry.name);
    if (match?.[1]) gens.push(Number(match[1]));
    else if (entry.name.startsWith('.') && entry.name.endsWith('.tmp')) removeIfOld(path.join(dir, entry.name), now);
  }
  return gens.sort((a, b) => b - a);
}

function removeIfOld(file: string, now: number): void {
  const stat = fs.lstatSync(file, { throwIfNoEntry: false });
  if (stat && now - stat.mtimeMs > STALE_TEMP_MS) fs.rmSync(file, { force: true });
}

function lockFile(dir: string, gen: number): string {
  return path.join(dir, `lock-${gen}`);
}

/**
 * Whether the lock of number `gen` still holds: undefined when its file is gone (a newer one was
 * taken meanwhile: look again). It holds unless given back (mtime 0), its holder is a dead process
 * of this host, or it is older than {@link STALE_LOCK_MS}.
 */
function isLockHeld(root: string, dir: string, gen: number): boolean | undefined {
  const file = lockFile(dir, gen);
  const fd = openForRead(root, file);
  if (fd === undefined) return undefined;
  let mtimeMs: number;
  let text: string;
  try {
    mtimeMs = fs.fstatSync(fd).mtimeMs;
    text = fs.readFileSync(fd, 'utf8');
  } finally {
    fs.closeSync(fd);
  }
  if (mtimeMs <= 0 || Date.now() - mtimeMs >= STALE_LOCK_MS) return false;
  const holder = parseHolder(text);
  if (!holder) return true; // unreadable (damaged from outside): it goes stale by its age
  return !(holder.host === HOST && typeof holder.pid === 'number' && !isProcessAlive(holder.pid));
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
function takeLock(root: string, dir: string): HeldLock | undefined {
  for (;;) {
    const top = lockGens(dir)[0] ?? 0;
    if (top > 0) {
      const held = isLockHeld(root, dir, top);
      if (held === undefined) continue;
      if (held) return undefined;
    }
    const gen = top + 1;
    const fd = createLockFile(lockFile(dir, gen));
    if (fd === undefined) continue; // another process took this number first: look again
    const gens = lockGens(dir);
    if (gens[0] !== gen) {
      // this number's earlier file was already removed by a process further on: this one lost
      unlinkIfThere(lockFile(dir, gen));
      fs.closeSync(fd);
      continue;
    }
    // older numbers are history; oldest first, so that one who finds number n gone finds every lower one gone
    for (const old of gens.reverse()) if (old < gen) unlinkIfThere(lockFile(dir, old));
    return { gen, fd };
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

/** True while no higher number than `gen` was taken (this holder was not taken over). */
function isCurrent(dir: string, gen: number): boolean {
  return fs.lstatSync(lockFile(dir, gen + 1), { throwIfNoEntry: false }) === undefined;
}

/** Gives the lock back through its descriptor (mtime 0), never by its path. */
function releaseLock(held: HeldLock): void {
  try {
    fs.futimesSync(held.fd, 0, 0);
  } finally {
    fs.closeSync(held.fd);
  }
}

function parseState(text: string | undefined, file: string, perMs: number, now: number): WindowState {
  if (text === undefined) return emptyWindow(perMs);
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    value = undefined;
  }
  const v = value as { v?: unknown; windowMs?: unknown; blockedUntil?: unknown; grants?: unknown } | undefined;
  if (typeof v?.v === 'number' && v.v > FORMAT) {
    throw new CairnError(
      'FORMAT_TOO_NEW',
      `The rate limit state ${file} has format ${v.v}, written by a newer cairnjs (this one reads ${FORMAT}). Upgrade cairnjs.`,
      { path: file },
    );
  }
  const grants = Array.isArray(v?.grants) ? v.grants.map(grantOf) : undefined;
  if (v?.v !== FORMAT || !isTime(v.windowMs) || !isTime(v.blockedUntil) || !grants || grants.some((g) => g === undefined)) {
    return { ...emptyWindow(perMs), blockedUntil: now + perMs }; // damaged: a full window (see the module comment)
  }
  return { windowMs: v.windowMs, blockedUntil: v.blockedUntil, grants: grants as WindowGrant[] };
}

function grantOf(entry: unknown): WindowGrant | undefined {
  if (!Array.isArray(entry) || entry.length !== 3) return undefined;
  const [id, at, tokens] = entry as unknown[];
  return typeof id === 'string' && isTime(at) && isTime(tokens) ? { id, at, tokens } : undefined;
}

function isTime(value: unknown): value is number {
  return typeof value === 'number' && Number.isFinite(value) && value >= 0;
}

function stateText(state: WindowState): string {
  const grants = state.grants.map((g) => [g.id, g.at, g.tokens]);
  return `${JSON.stringify({ v: FORMAT, windowMs: state.windowMs, blockedUntil: state.blockedUntil, grants })}\n`;
}
