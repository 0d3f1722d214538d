/**
 * Where an import keeps the artifact files until the run is in the store, and how a later import
 * or `cairn cleanup` finishes or removes what a killed import left.
 *
 * A staging folder lives in the store's artifact area, the folder that holds every run's artifact
 * folder: the root of a file store (beside the run folders), `<db>-artifacts` for SQLite, the
 * artifact root for Postgres. So it is inside the store's own area, on the file system of the run's
 * artifact folder (put in place with one rename), outside any run folder a store's import replaces,
 * and found again by whoever opens that store. Its name starts with a dot (no run id does, so no
 * store takes it for a run) and names its owner: `.cairn-import-<pid>-<host>-<uuid>`.
 *
 *     files/         the artifact files: each written under a temp name, fsynced, checked, renamed
 *     intent.json    written durably once every file is staged, before the store is touched: the
 *                    run id and the identity (version, updatedAt) of the run record being imported
 *     replaced-<id>/ the run's previous artifact folder, moved aside while files/ takes its place
 *
 * A staging folder is stale when its owner is a dead process on this host, or, whatever the owner
 * (another host, a reused pid), when nothing touched it for an hour: a live import touches it every
 * five minutes. A stale one is taken over with one rename (one process wins, and a taker killed in
 * turn leaves a folder named after itself, stale again), then:
 * - without a readable intent.json nothing outside it was changed: it is removed;
 * - with one, the records may be in the store: if the store's run record is the one the import
 *   wrote (same version and updatedAt; any later write changes them), the staged files are put in
 *   place under the run's lease, finishing the import; otherwise (the records never got in, or the
 *   run moved on since) it is removed.
 */
import { createHash, randomUUID } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { errnoOf, syncDir, writeAll } from '../core/durable-fs.js';
import { CairnError, isCairnError } from '../core/errors.js';
import { HOST, isProcessAlive } from '../stores/common.js';
import type { Lease, Store } from '../stores/store.js';
import type { RunIdentity } from './import-verify.js';

/** Every staging folder's name starts with this. */
export const STAGING_PREFIX = '.cairn-import-';
/** Untouched this long, a staging folder is stale whoever owns it. */
export const STALE_STAGING_MS = 60 * 60 * 1000;
const HEARTBEAT_MS = 5 * 60 * 1000;
const FILES = 'files';
const INTENT = 'intent.json';
/** A short, name-safe tag of this machine's host name. */
const HOST_TAG = createHash('sha256').update(HOST).digest('hex').slice(0, 12);
const OWNED_NAME = /^\.cairn-import-(\d+)-([0-9a-f]{12})-[0-9a-f-]{36}$/;

/** The points an import passes, in order; tests stop a process at each (see {@link ImportHooks}). */
export type ImportPoint = 'staging-created' | 'file-staged' | 'intent-written' | 'records-imported' | 'old-moved-aside' | 'files-placed';

/** Test hooks: called at each {@link ImportPoint}, awaited. */
export interface ImportHooks {
  readonly onPoint?: (point: ImportPoint) => void | Promise<void>;
}

const intentSchema = z.object({
  format: z.literal('cairn-import-staging'),
  version: z.literal(1),
  runId: z.string(),
  run: z.object({ version: z.number().int(), updatedAt: z.string() }),
  /** Artifact files staged (0: the run's artifact folder is only cleared). */
  files: z.number().int().min(0),
});
type Intent = z.infer<typeof intentSchema>;

/**
 * The store's artifact area: the deepest folder common to two runs' artifact folders (probed with
 * two ids, so that no store kind is named here).
 */
export function artifactArea(store: Store): string {
  const a = path.resolve(store.artifactDir('cairn-area-probe-a')).split(path.sep);
  const b = path.resolve(store.artifactDir('cairn-area-probe-b')).split(path.sep);
  let shared = 0;
  while (shared < a.length && shared < b.length && a[shared] === b[shared]) shared += 1;
  return a.slice(0, shared).join(path.sep) || path.sep;
}

function ownName(): string {
  return `${STAGING_PREFIX}${process.pid}-${HOST_TAG}-${randomUUID()}`;
}

/** One import's staging folder (see the module comment). */
export class ImportStaging {
  private heartbeat: NodeJS.Timeout | undefined;

  private constructor(
    /** The staging folder. */
    readonly dir: string,
    private readonly hooks: ImportHooks,
  ) {}

  /** Where the artifact files go, by their manifest paths. */
  get files(): string {
    return path.join(this.dir, FILES);
  }

  /** Creates an empty staging folder in `store`'s artifact area (and the area, if needed). */
  static async create(store: Store, hooks: ImportHooks = {}): Promise<ImportStaging> {
    const area = artifactArea(store);
    const staging = new ImportStaging(path.join(area, ownName()), hooks);
    try {
      await fs.mkdir(staging.dir);
    } catch (error) {
      if (errnoOf(error) !== 'ENOENT') throw error;
      await fs.mkdir(area, { recursive: true }); // a store that holds no artifact yet
      await fs.mkdir(staging.dir);
    }
    staging.heartbeat = setInterval(() => void touch(staging.dir), HEARTBEAT_MS).unref();
    await fs.mkdir(staging.files);
    await hooks.onPoint?.('staging-created');
    return staging;
  }

  /**
   * Makes the staged files' folders durable and records what the import is about to write. From
   * here on a stale copy of this folder is finished rather than dropped.
   */
  async writeIntent(runId: string, run: RunIdentity, files: number): Promise<void> {
    await syncTree(this.files);
    const intent: Intent = {
      format: 'cairn-import-staging',
      version: 1,
      runId,
      run: { version: run.version, updatedAt: run.updatedAt },
      files,
    };
    const handle = await fs.open(path.join(this.dir, INTENT), 'wx');
    try {
      await writeAll(handle, Buffer.from(`${JSON.stringify(intent)}\n`, 'utf8'));
      await handle.sync();
    } finally {
      await handle.close();
    }
    await syncDir(this.dir);
    await this.hooks.onPoint?.('intent-written');
  }

  /**
   * Puts the staged files in place of `target` (the run's artifact folder, whose parent exists):
   * the old folder is moved into the staging folder first and goes when it is removed. Safe to
   * repeat after a crash at any step.
   */
  async place(target: string, hasFiles: boolean): Promise<void> {
    await checkRealDirs(path.dirname(this.dir), path.dirname(target));
    try {
      await fs.rename(target, path.join(this.dir, `replaced-${randomUUID()}`));
      await this.hooks.onPoint?.('old-moved-aside');
    } catch (error) {
      if (errnoOf(error) !== 'ENOENT') throw error;
    }
    if (hasFiles) await fs.rename(this.files, target);
    await syncDir(path.dirname(target));
    await this.hooks.onPoint?.('files-placed');
  }

  /** Removes the staging folder and everything in it. */
  async remove(): Promise<void> {
    clearInterval(this.heartbeat);
    await fs.rm(this.dir, { recursive: true, force: true });
  }

  /** Takes over a stale staging folder by renaming it to a name of this process; undefined if another process took it first. */
  static async takeOver(dir: string): Promise<ImportStaging | undefined> {
    const claimed = path.join(path.dirname(dir), ownName());
    try {
      await fs.rename(dir, claimed);
    } catch {
      return undefined;
    }
    return new ImportStaging(claimed, {});
  }

  /** The intent, or undefined when none was written completely. */
  async readIntent(): Promise<Intent | undefined> {
    try {
      const parsed = intentSchema.safeParse(JSON.parse(await fs.readFile(path.join(this.dir, INTENT), 'utf8')));
      return parsed.success ? parsed.data : undefined;
    } catch {
      return undefined;
    }
  }
}

/** What {@link recoverStaleImports} did. */
export interface StaleImports {
  /** Stale staging folders removed (finished ones included). */
  readonly removed: number;
  /** Runs whose killed import was finished by putting its staged artifact files in place. */
  readonly finished: string[];
  /** Staging folders that could not be handled, and why (they are tried again by a later process). */
  readonly warnings: string[];
}

/**
 * Finishes or removes the staging folders that killed imports left in `store`'s artifact area
 * (see the module comment). Housekeeping: a folder that cannot be handled becomes a warning.
 */
export async function recoverStaleImports(store: Store): Promise<StaleImports> {
  const area = artifactArea(store);
  const result = { removed: 0, finished: [] as string[], warnings: [] as string[] };
  let names: string[];
  try {
    names = await fs.readdir(area);
  } catch {
    return result; // no area yet: nothing was ever staged here
  }
  for (const name of names) {
    if (!name.startsWith(STAGING_PREFIX)) continue;
    const entry = path.join(area, name);
    try {
      const stat = await fs.lstat(entry).catch(() => undefined);
      if (!stat || !isStale(name, stat.mtimeMs)) continue;
      if (!stat.isDirectory()) {
        await fs.rm(entry, { force: true }); // never followed: a link or file of that name is only removed
        result.removed += 1;
        continue;
      }
      const staging = await ImportStaging.takeOver(entry);
      if (!staging) continue; // another process took it
      // a failure leaves the folder, named after this process: stale again once it exits
      const finished = await finishImport(store, staging);
      if (finished) result.finished.push(finished);
      await staging.remove();
      result.removed += 1;
    } catch (error) {
      result.warnings.push(`the staging folder ${entry} of an interrupted import could not be handled: ${(error as Error).message}`);
    }
  }
  return result;
}

function isStale(name: string, mtimeMs: number): boolean {
  const owner = OWNED_NAME.exec(name);
  if (owner && owner[2] === HOST_TAG && !isProcessAlive(Number(owner[1]))) return true;
  return Date.now() - mtimeMs > STALE_STAGING_MS;
}

/** Puts a taken-over staging folder's files in place if its records are in the store; returns the run id if so. */
async function finishImport(store: Store, staging: ImportStaging): Promise<string | undefined> {
  const intent = await staging.readIntent();
  if (!intent) return undefined; // killed before the store was touched
  const hasFiles = intent.files > 0;
  if (hasFiles && !(await exists(staging.files))) return undefined; // killed after the files were in place
  if (!(await holdsImportedRun(store, intent))) return undefined;
  let lease: Lease;
  try {
    lease = await store.acquireLock(intent.runId, { owner: `cairn import, finishing an interrupted import (pid ${process.pid})` });
  } catch (error) {
    if (isCairnError(error, 'RUN_LOCKED') || isCairnError(error, 'NOT_FOUND')) return undefined; // in use: its holder's view wins
    throw error;
  }
  try {
    if (!(await holdsImportedRun(store, intent))) return undefined;
    await staging.place(store.artifactDir(intent.runId), hasFiles);
    return intent.runId;
  } finally {
    await store.releaseLock(lease).catch(() => undefined);
  }
}

/** True when the store's run record is the one the import wrote (no write since). */
async function holdsImportedRun(store: Store, intent: Intent): Promise<boolean> {
  const run = await store.getRun(intent.runId).catch(() => undefined);
  return run !== undefined && run.version === intent.run.version && run.updatedAt === intent.run.updatedAt;
}

async function exists(file: string): Promise<boolean> {
  return fs.lstat(file).then(
    () => true,
    () => false,
  );
}

/**
 * Checks that every folder from `area` (exclusive) down to `dir` (inclusive) is a real folder, so
 * that no rename into the store goes through a link planted in it (`UNSAFE_PATH`).
 */
async function checkRealDirs(area: string, dir: string): Promise<void> {
  let current = area;
  for (const part of path.relative(area, dir).split(path.sep).filter(Boolean)) {
    current = path.join(current, part);
    const stat = await fs.lstat(current);
    if (!stat.isDirectory()) {
      throw new CairnError(
        'UNSAFE_PATH',
        `Refusing ${current}: it is ${stat.isSymbolicLink() ? 'a link' : 'not a folder'}. cairn never follows links inside a store; ` +
          'move it away and import again.',
        { path: current },
      );
    }
  }
}

/** Refreshes a live staging folder's mtime, so that no other process finds it stale. */
async function touch(dir: string): Promise<void> {
  const now = new Date();
  await fs.utimes(dir, now, now).catch(() => undefined);
}

/** fsyncs every folder under `dir` (and `dir`), so that the renames into them are durable. */
async function syncTree(dir: string): Promise<void> {
  for (const entry of await fs.readdir(dir, { withFileTypes: true })) {
    if (entry.isDirectory()) await syncTree(path.join(dir, entry.name));
  }
  await syncDir(dir);
}
