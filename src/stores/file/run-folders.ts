/**
 * Moving whole run folders: creating them, trashing them (delete), and renaming a complete import
 * staging folder into place. Renames within the root are atomic, so a run is there whole or not at all.
 */
import { randomUUID } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { CairnError } from '../../core/errors.js';
import { resolveInside } from '../../core/ids.js';
import { notFound } from '../common.js';
import { errnoOf, syncDir } from './atomic-write.js';
import { LOCK_FILE, readStoredLease, writeStoredLease } from './file-lease.js';
import { acquireFileMutex, releaseFileMutex } from './file-mutex.js';
import { ITEMS_DIR } from './item-ledger.js';
import { readRunLine, RUN_FILE } from './run-transfer.js';

/** Import staging folders older than this are leftovers of a crash and are removed at open. */
const STALE_STAGING_MS = 60 * 60 * 1000;

/** Creates `<run>/items` if needed; never recursive, so that a deleted run is not brought back. */
export async function makeItemsDir(runId: string, dir: string): Promise<void> {
  try {
    await fs.mkdir(path.join(dir, ITEMS_DIR));
    await syncDir(dir);
  } catch (error) {
    const code = errnoOf(error);
    if (code === 'EEXIST') return;
    if (code === 'ENOENT') throw notFound(runId);
    throw error;
  }
}

/**
 * Deletes a run folder under its mutex: renamed to `<root>/.trash-<uuid>` (atomic), then removed.
 * Returns whether a run (a run.json) was there.
 */
export async function trashRunFolder(root: string, runId: string, dir: string): Promise<boolean> {
  let token: string;
  try {
    token = await acquireFileMutex(dir, runId);
  } catch (error) {
    if ((error as CairnError).code === 'NOT_FOUND') return false;
    throw error;
  }
  const existed = await fs.access(path.join(dir, RUN_FILE)).then(
    () => true,
    () => false,
  );
  const trash = resolveInside(root, `.trash-${randomUUID()}`);
  try {
    await fs.rename(dir, trash); // the mutex goes with it: waiters find the run gone
  } catch (error) {
    await releaseFileMutex(dir, token);
    throw error;
  }
  await syncDir(root);
  await fs.rm(trash, { recursive: true, force: true });
  return existed;
}

/**
 * Renames a complete import staging folder into place. An existing run is refused
 * (`ALREADY_EXISTS`) unless `overwrite`, then moved to the trash under its mutex; its lease epoch is
 * carried over (released) so that epochs keep growing. A folder without run.json counts as absent.
 */
export async function placeImportFolder(root: string, runId: string, dir: string, staging: string, overwrite: boolean): Promise<void> {
  let token: string;
  try {
    token = await acquireFileMutex(dir, runId);
  } catch (error) {
    if ((error as CairnError).code !== 'NOT_FOUND') throw error;
    await renameIntoPlace(staging, dir, runId); // no folder: nothing to replace
    await syncDir(root);
    return;
  }
  const trash = resolveInside(root, `.trash-${randomUUID()}`);
  try {
    if ((await readRunLine(dir)) !== undefined && !overwrite) {
      throw new CairnError('ALREADY_EXISTS', `Run ${runId} already exists; pass overwrite to replace it.`, { runId });
    }
    const previous = await readStoredLease(path.join(dir, LOCK_FILE));
    if (previous) await writeStoredLease(path.join(staging, LOCK_FILE), { ...previous, released: true });
    await fs.rename(dir, trash);
  } catch (error) {
    await releaseFileMutex(dir, token);
    throw error;
  }
  await renameIntoPlace(staging, dir, runId);
  await syncDir(root);
  await fs.rm(trash, { recursive: true, force: true });
}

async function renameIntoPlace(staging: string, dir: string, runId: string): Promise<void> {
  try {
    await fs.rename(staging, dir);
  } catch (error) {
    const code = errnoOf(error);
    if (code === 'ENOTEMPTY' || code === 'EEXIST') {
      throw new CairnError(
        'ALREADY_EXISTS',
        `Run ${runId} was created by another process during the import; import again with overwrite to replace it.`,
        {
          runId,
        },
      );
    }
    throw error;
  }
}

/** Removes trash left by an interrupted delete and import staging folders abandoned by a crash. */
export async function removeLeftovers(root: string): Promise<void> {
  try {
    for (const name of await fs.readdir(root)) {
      const target = path.join(root, name);
      if (name.startsWith('.trash-')) {
        await fs.rm(target, { recursive: true, force: true });
      } else if (name.startsWith('.import-')) {
        const stat = await fs.stat(target).catch(() => undefined);
        if (stat && Date.now() - stat.mtimeMs > STALE_STAGING_MS) await fs.rm(target, { recursive: true, force: true });
      }
    }
  } catch {
    // housekeeping only
  }
}
