/**
 * Writes of `run.json` and of the run's folder: the compare-and-set update and the creation of a
 * run, both as the async path does them and with synchronous calls (the same calls in the same
 * order, without a thread-pool round trip between each), for when the run's mutex can be had at
 * once. A run's start and end are a few of these; done asynchronously they took ~2.5 ms each here.
 */
import fsSync from 'node:fs';
import path from 'node:path';
import { CairnError } from '../../core/errors.js';
import type { PayloadLimits } from '../../core/record.js';
import { decodeRun, encodeRun } from '../codec.js';
import { nextRunRecord, notFound } from '../common.js';
import type { RunPatch, RunRecord, WriteOptions } from '../store.js';
import { errnoOf, isMissing, replaceFileAtomicallySync, syncDirSync, tempPathFor } from './atomic-write.js';
import { checkLeaseCurrentSync, LOCK_FILE } from './file-lease.js';
import { decodeRunOf, RUN_FILE } from './run-transfer.js';

/** The run record after `patch` if `current` is at `expectedVersion` (else `CONFLICT`): its line and the record as stored. */
export function patchedRun(
  runId: string,
  current: RunRecord,
  expectedVersion: number,
  patch: RunPatch,
  limits: PayloadLimits,
): { line: string; stored: RunRecord } {
  if (current.version !== expectedVersion) {
    throw new CairnError(
      'CONFLICT',
      `Run ${runId} changed meanwhile (version ${current.version}, expected ${expectedVersion}). Reload it and try again.`,
      { runId, version: current.version, expectedVersion },
    );
  }
  const line = encodeRun(nextRunRecord(current, patch), limits);
  return { line, stored: decodeRun(line, { runId }) };
}

/** The run line of `dir`, synchronously; undefined when there is no run.json. */
function readRunLineSync(dir: string): string | undefined {
  let text: string;
  try {
    text = fsSync.readFileSync(path.join(dir, RUN_FILE), 'utf8');
  } catch (error) {
    if (isMissing(error)) return undefined;
    throw error;
  }
  return text.endsWith('\n') ? text.slice(0, -1) : text;
}

/** The compare-and-set update of run.json with synchronous calls; the caller holds the run's mutex. */
export function updateRunSync(
  dir: string,
  runId: string,
  expectedVersion: number,
  patch: RunPatch,
  options: WriteOptions | undefined,
  limits: PayloadLimits,
): RunRecord {
  const line = readRunLineSync(dir);
  if (line === undefined) throw notFound(runId);
  const current = decodeRunOf(line, runId);
  if (options?.lease) checkLeaseCurrentSync(path.join(dir, LOCK_FILE), options.lease);
  const next = patchedRun(runId, current, expectedVersion, patch, limits);
  replaceFileAtomicallySync(path.join(dir, RUN_FILE), `${next.line}\n`);
  return next.stored;
}

/** `NOT_FOUND` unless the run's folder holds a run.json. */
export function mustExistSync(runId: string, dir: string): void {
  try {
    fsSync.accessSync(path.join(dir, RUN_FILE));
  } catch (error) {
    if (isMissing(error)) throw notFound(runId);
    throw error;
  }
}

/**
 * Creates the run's folder (it may exist, left by a crash during create) and its run.json with
 * synchronous calls: complete before its name appears (temp file, fsync, link), then the folder
 * and the root are fsynced. False if the run already exists.
 */
export function createRunSync(root: string, dir: string, line: string): boolean {
  try {
    fsSync.mkdirSync(dir);
  } catch (error) {
    const code = errnoOf(error);
    if (code === 'ENOENT') {
      fsSync.mkdirSync(root, { recursive: true }); // the root was removed under us
      fsSync.mkdirSync(dir, { recursive: true });
    } else if (code !== 'EEXIST') throw error;
  }
  const file = path.join(dir, RUN_FILE);
  const temp = tempPathFor(file);
  try {
    const fd = fsSync.openSync(temp, 'wx');
    try {
      const data = Buffer.from(`${line}\n`, 'utf8');
      let offset = 0;
      while (offset < data.length) offset += fsSync.writeSync(fd, data, offset, data.length - offset);
      fsSync.fsyncSync(fd);
    } finally {
      fsSync.closeSync(fd);
    }
    fsSync.linkSync(temp, file);
  } catch (error) {
    if (errnoOf(error) === 'EEXIST') return false;
    throw error;
  } finally {
    fsSync.rmSync(temp, { force: true });
  }
  syncDirSync(dir);
  syncDirSync(root);
  return true;
}
