/**
 * Short critical sections across processes on one machine, without flock: a run's `.mutex` file is
 * created atomically with a hard link (EEXIST = held). A mutex left by a dead process (same host,
 * pid gone) or older than {@link MUTEX_STALE_MS} is taken over through a `.mutex-takeover-<token>`
 * file that only one process can create, so exactly one process removes the stale mutex.
 * Within one store instance, operations on a run are also queued in memory ({@link KeyedQueue}) so
 * that the instance never contends with itself.
 *
 * A process that finds the mutex held keeps `.mutex-want` fresh while it waits (its mtime, rewritten
 * at every retry): a holder that keeps the mutex across back-to-back appends (the file store's
 * checkpoint fast path) checks it before each append and hands the mutex over.
 */
import { randomUUID } from 'node:crypto';
import fsSync from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { CairnError } from '../../core/errors.js';
import { HOST, isProcessAlive, notFound } from '../common.js';
import { errnoOf, isMissing } from './atomic-write.js';

/** A mutex older than this is taken over even if its holder looks alive (hung, or pid reused). */
export const MUTEX_STALE_MS = 60_000;
/** Takeover markers are kept this long, so that a slow process never takes over the same mutex twice. */
const TAKEOVER_KEEP_MS = 60 * 60 * 1000;
/** An unreadable mutex (a crash between link and data reaching the disk) counts as stale after this. */
const UNREADABLE_STALE_MS = 2_000;

export const MUTEX_FILE = '.mutex';
const TAKEOVER_PREFIX = '.mutex-takeover-';
/** Present and fresh while some process waits for the mutex. */
export const MUTEX_WANT_FILE = '.mutex-want';
/** A waiter rewrites `.mutex-want` at every retry (at most 20 ms apart): older than this, nobody waits any more. */
const WANT_FRESH_MS = 1000;

export interface MutexOptions {
  /** How long to wait for a held mutex before failing with `CONFLICT`. @defaultValue 10_000 */
  readonly waitMs?: number;
}

interface MutexContent {
  token: string;
  pid: number;
  host: string;
  at: string;
}

/**
 * Runs `fn` while holding the mutex of `dir` (a run folder). `NOT_FOUND` if the folder is gone,
 * `CONFLICT` naming the run if the mutex stays held for `waitMs`.
 */
export async function withFileMutex<T>(dir: string, runId: string, fn: () => Promise<T>, options: MutexOptions = {}): Promise<T> {
  const token = await acquireFileMutex(dir, runId, options);
  try {
    return await fn();
  } finally {
    await releaseFileMutex(dir, token);
  }
}

export async function acquireFileMutex(dir: string, runId: string, options: MutexOptions = {}): Promise<string> {
  const token = randomUUID();
  const mutex = path.join(dir, MUTEX_FILE);
  const temp = path.join(dir, `.mutex-${token}.tmp`);
  const content: MutexContent = { token, pid: process.pid, host: HOST, at: new Date().toISOString() };
  try {
    await fs.writeFile(temp, JSON.stringify(content), { flag: 'wx' });
  } catch (error) {
    if (isMissing(error)) throw notFound(runId);
    throw error;
  }
  let waited = false;
  try {
    const deadline = Date.now() + (options.waitMs ?? 10_000);
    for (let attempt = 0; ; attempt++) {
      try {
        await fs.link(temp, mutex);
        if (waited) await fs.rm(path.join(dir, MUTEX_WANT_FILE), { force: true });
        return token;
      } catch (error) {
        if (isMissing(error)) throw notFound(runId);
        if (errnoOf(error) !== 'EEXIST') throw error;
      }
      if (await takeOverIfStale(dir, mutex)) continue;
      if (Date.now() >= deadline) {
        if (waited) await fs.rm(path.join(dir, MUTEX_WANT_FILE), { force: true });
        const holder = await readMutex(mutex);
        throw new CairnError(
          'CONFLICT',
          `Run ${runId} is busy: another operation (${holder ? `pid ${holder.pid} on ${holder.host}` : 'unknown holder'}) holds ${mutex}. ` +
            'Try again; if no cairn process is running, delete that file.',
          { runId, ...(holder ? { pid: holder.pid, host: holder.host } : {}) },
        );
      }
      waited = await signalWaiting(dir);
      await sleep(Math.min(20, 1 + attempt * 2) * (0.5 + Math.random() / 2));
    }
  } finally {
    await fs.rm(temp, { force: true });
  }
}

/**
 * Takes the mutex of `dir` with synchronous calls if it is free right now, for hot paths; returns
 * undefined (having changed nothing) when it is held, so that the caller takes the async path,
 * which waits for it and takes over stale ones.
 */
export function tryAcquireFileMutexSync(dir: string, runId: string): string | undefined {
  const token = randomUUID();
  const mutex = path.join(dir, MUTEX_FILE);
  const temp = path.join(dir, `.mutex-${token}.tmp`);
  const content: MutexContent = { token, pid: process.pid, host: HOST, at: new Date().toISOString() };
  try {
    fsSync.writeFileSync(temp, JSON.stringify(content), { flag: 'wx' });
  } catch (error) {
    if (isMissing(error)) throw notFound(runId);
    throw error;
  }
  try {
    fsSync.linkSync(temp, mutex);
    return token;
  } catch (error) {
    if (isMissing(error)) throw notFound(runId);
    if (errnoOf(error) === 'EEXIST') return undefined;
    throw error;
  } finally {
    fsSync.rmSync(temp, { force: true });
  }
}

/** {@link releaseFileMutex} with synchronous calls. */
export function releaseFileMutexSync(dir: string, token: string): void {
  const mutex = path.join(dir, MUTEX_FILE);
  let holder: Partial<MutexContent> | null = null;
  try {
    holder = JSON.parse(fsSync.readFileSync(mutex, 'utf8')) as Partial<MutexContent> | null;
  } catch {
    return;
  }
  if (holder?.token === token) fsSync.rmSync(mutex, { force: true });
}

/** Releases the mutex if it still holds `token` (it may have been taken over meanwhile). */
export async function releaseFileMutex(dir: string, token: string): Promise<void> {
  const mutex = path.join(dir, MUTEX_FILE);
  const holder = await readMutex(mutex);
  if (holder?.token !== token) return;
  await fs.rm(mutex, { force: true });
}

/** Marks (again) that a process waits for the mutex of `dir`: `.mutex-want` gets a new mtime. True once written. */
async function signalWaiting(dir: string): Promise<boolean> {
  try {
    await fs.writeFile(path.join(dir, MUTEX_WANT_FILE), `${process.pid}@${HOST}\n`);
    return true;
  } catch {
    return false; // the folder is gone: the next link says NOT_FOUND
  }
}

/** True while some process waits for the mutex of `dir` (`.mutex-want` rewritten within the last second). */
export function hasWaiterSync(dir: string): boolean {
  const stat = fsSync.statSync(path.join(dir, MUTEX_WANT_FILE), { throwIfNoEntry: false });
  return stat !== undefined && Date.now() - stat.mtimeMs < WANT_FRESH_MS;
}

/**
 * Lets waiting processes in first: resolves once nobody has waited for the mutex of `dir` for a
 * while, or after `maxMs`. A holder that just handed the mutex over calls it before taking it again,
 * so that a waiter polling every few milliseconds is not beaten by the next append microseconds later.
 */
export async function yieldToWaiters(dir: string, maxMs = 2000): Promise<void> {
  const until = Date.now() + maxMs;
  while (hasWaiterSync(dir) && Date.now() < until) await sleep(2);
}

async function readMutex(mutex: string): Promise<MutexContent | undefined> {
  try {
    const parsed = JSON.parse(await fs.readFile(mutex, 'utf8')) as Partial<MutexContent> | null;
    if (
      parsed &&
      typeof parsed.token === 'string' &&
      typeof parsed.pid === 'number' &&
      typeof parsed.host === 'string' &&
      typeof parsed.at === 'string'
    ) {
      return parsed as MutexContent;
    }
    return undefined;
  } catch {
    return undefined;
  }
}

/** Removes the held mutex if it is stale and this process won the takeover. True if it did. */
async function takeOverIfStale(dir: string, mutex: string): Promise<boolean> {
  let holder = await readMutex(mutex);
  let staleToken: string;
  if (holder) {
    const stale = (holder.host === HOST && !isProcessAlive(holder.pid)) || Date.now() - Date.parse(holder.at) > MUTEX_STALE_MS;
    if (!stale) return false;
    staleToken = holder.token;
  } else {
    // released meanwhile (retry at once), or written by a crash that lost its content
    let stat;
    try {
      stat = await fs.stat(mutex);
    } catch (error) {
      if (isMissing(error)) return true;
      throw error;
    }
    if (Date.now() - stat.mtimeMs < UNREADABLE_STALE_MS) return false;
    staleToken = `unreadable-${stat.ino}-${Math.trunc(stat.mtimeMs)}`;
  }
  const marker = path.join(dir, `${TAKEOVER_PREFIX}${staleToken}`);
  try {
    await fs.writeFile(marker, `${process.pid}@${HOST}`, { flag: 'wx' });
  } catch (error) {
    if (errnoOf(error) === 'EEXIST') return false; // another process is taking it over
    if (isMissing(error)) return true;
    throw error;
  }
  // only the creator of the marker gets here; check the mutex is still the stale one
  holder = await readMutex(mutex);
  if (holder === undefined ? !staleToken.startsWith('unreadable-') : holder.token !== staleToken) return true;
  await fs.rm(mutex, { force: true });
  await removeOldMarkers(dir);
  return true;
}

/** Deletes takeover markers and mutex temp files older than an hour (left by crashes). */
async function removeOldMarkers(dir: string): Promise<void> {
  try {
    const now = Date.now();
    for (const name of await fs.readdir(dir)) {
      if (!name.startsWith(TAKEOVER_PREFIX) && !(name.startsWith('.mutex-') && name.endsWith('.tmp'))) continue;
      const file = path.join(dir, name);
      const stat = await fs.stat(file).catch(() => undefined);
      if (stat && now - stat.mtimeMs > TAKEOVER_KEEP_MS) await fs.rm(file, { force: true });
    }
  } catch {
    // housekeeping only
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Runs tasks one at a time per key (a run id), in call order; different keys run in parallel. */
export class KeyedQueue {
  private readonly tails = new Map<string, Promise<unknown>>();

  run<T>(key: string, task: () => Promise<T>): Promise<T> {
    const previous = this.tails.get(key) ?? Promise.resolve();
    const result = previous.then(task, task);
    const tail = result.then(
      () => undefined,
      () => undefined,
    );
    this.tails.set(key, tail);
    void tail.then(() => {
      if (this.tails.get(key) === tail) this.tails.delete(key);
    });
    return result;
  }

  /** Resolves when every queued task has settled. */
  async drain(): Promise<void> {
    while (this.tails.size > 0) await Promise.all([...this.tails.values()]);
  }
}
