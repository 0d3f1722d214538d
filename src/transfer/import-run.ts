/**
 * `importRun`: loads a run from an export file into a store. The first pass (`import-verify.ts`)
 * verifies everything and writes nothing. The second writes the artifact files into a staging
 * folder in the store's artifact area (`import-staging.ts`) and the third streams the records into
 * `store.importRun` (all or nothing); each checks that the file still has the bytes the first one
 * verified. Only then is the staged folder put in place of the run's artifact folder, so a failed
 * import (even of an `overwrite`) leaves an existing run as it was, and a killed one leaves a
 * staging folder that the next import or `cairn cleanup` finishes or removes.
 */
import { randomUUID } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { writeAll } from '../core/durable-fs.js';
import { CairnError, isCairnError } from '../core/errors.js';
import { resolveInside } from '../core/ids.js';
import type { ArtifactEntry, ExportRecord, Lease, RunStatus, Store } from '../stores/store.js';
import { ExportFileReader, exportKey, invalidExport, KEY_ENV, type BodyLine } from './export-format.js';
import { ImportStaging, recoverStaleImports, type ImportHooks } from './import-staging.js';
import {
  endFile,
  startFile,
  takeChunk,
  verifyExportFile,
  type ImportFileOptions,
  type Incoming,
  type SignatureCheck,
  type VerifiedExport,
} from './import-verify.js';
import { withStoreOf } from './store-of.js';

export type { ImportFileOptions, SignatureCheck, VerifiedExport };
export { verifyExportFile };

/** Options of {@link importRun}. */
export interface ImportRunOptions {
  /**
   * Replace an existing run with the same id; refused (`RUN_LOCKED`) while a live process holds it.
   * @defaultValue false: an existing run is refused with `ALREADY_EXISTS`
   */
  readonly overwrite?: boolean;
  /** Without a key, import a signed file anyway, checked by its sha256 only. @defaultValue false */
  readonly allowUnverified?: boolean;
  /**
   * The key the file must be signed with (HMAC-SHA256); an unsigned or differently signed file is
   * then refused. An empty string: no key. @defaultValue the value of `CAIRN_EXPORT_KEY`, if set
   */
  readonly key?: string;
}

/** What `importRun` loaded: also the `--json` output of `cairn import`. */
export interface ImportSummary {
  readonly runId: string;
  readonly name: string;
  readonly status: RunStatus;
  readonly store: string;
  readonly file: string;
  readonly overwritten: boolean;
  readonly signature: SignatureCheck;
  readonly records: VerifiedExport['records'];
  readonly artifactFiles: number;
  readonly artifactBytes: number;
  readonly warnings: string[];
}

/**
 * Loads the run in export file `file` (written by `exportRun` or `cairn export`) into a
 * store. The whole file is verified before the store is even opened: format version, every
 * record's checksum, the artifact bytes against the manifest, the file's sha256 and, with a key,
 * its signature (`IMPORT_INVALID`, `FORMAT_TOO_NEW`; nothing is written). The run then appears
 * whole or not at all: a failure, or a process killed at any moment, leaves an existing run as it
 * was (or the new run whole); what a killed import left is finished or removed by the next import
 * into that store, or by `cairn cleanup`.
 *
 * `store` is an open {@link Store} (left open) or a store URL (opened and closed here). Refuses an
 * existing run with `ALREADY_EXISTS` unless `overwrite`.
 *
 * @example
 * ```ts
 * import { importRun } from 'cairnjs';
 * const summary = await importRun('sqlite:./runs.db', 'speech.cairn', { overwrite: true });
 * console.log(summary.runId, summary.status, summary.warnings); // then cairn.resume(summary.runId) there
 * ```
 */
export async function importRun(store: Store | string, file: string, options: ImportRunOptions = {}): Promise<ImportSummary> {
  const key = options.key ?? exportKey();
  const resolved: ImportFileOptions = {
    key: key ? key : undefined,
    allowUnverified: options.allowUnverified === true,
    overwrite: options.overwrite === true,
  };
  const verified = await verifyExportFile(file, resolved); // a bad file is refused before the store is opened
  return withStoreOf(store, (opened) => importExportFile(opened, file, resolved, verified));
}

/** Imports a verified export (see {@link importRun}): artifact files staged, records through `store.importRun`, files put in place. */
export async function importExportFile(
  store: Store,
  file: string,
  options: ImportFileOptions,
  /** The result of {@link verifyExportFile} on this file, if the caller already ran it. */
  verifiedBefore?: VerifiedExport,
  hooks: ImportHooks = {},
): Promise<ImportSummary> {
  const verified = verifiedBefore ?? (await verifyExportFile(file, options));
  const { runId } = verified;
  const stale = await recoverStaleImports(store); // what killed imports into this store left
  const exists = await store.getRun(runId).then(
    (run) => run !== undefined,
    (error: unknown) => isCairnError(error, 'CHECKPOINT_CORRUPT'), // a damaged run is still there
  );
  if (exists && !options.overwrite) {
    throw new CairnError(
      'ALREADY_EXISTS',
      `Run ${runId} already exists in ${store.url}; nothing was written. Pass --overwrite to replace it.`,
      {
        runId,
      },
    );
  }
  // never replace a run a live process is working on
  const lease: Lease | undefined = exists ? await store.acquireLock(runId, { owner: `cairn import (pid ${process.pid})` }) : undefined;
  let staging: ImportStaging | undefined;
  let imported = false;
  try {
    // pass two: the artifact files go to the staging folder, checked against the manifest, before
    // the run is touched; pass three streams the records into importRun (all or nothing). A
    // failure in either leaves an existing run exactly as it was.
    staging = await ImportStaging.create(store, hooks);
    await stageArtifacts(file, staging.files, verified, hooks);
    await staging.writeIntent(runId, verified.run, verified.artifactFiles);
    await importRecords(store, file, verified, options.overwrite === true); // over a run, or over leftover records of the id
    imported = true;
    await hooks.onPoint?.('records-imported');
    await staging.place(store.artifactDir(runId), verified.artifactFiles > 0);
  } catch (error) {
    // the artifact folder cannot be put in place: a new run goes again, a replaced one keeps its
    // new records (validate reports the artifact files missing; a resume reruns their stages)
    if (imported && !exists) await store.deleteRun(runId).catch(() => undefined);
    throw error;
  } finally {
    await staging?.remove().catch(() => undefined);
    if (lease) await store.releaseLock(lease).catch(() => undefined);
  }
  const warnings: string[] = [...stale.warnings];
  if (!verified.header.withArtifacts && verified.manifest.length > 0) {
    warnings.push(
      `the export has no artifact bytes: the ${verified.manifest.length} artifact file(s) of its manifest must be copied into ${store.artifactDir(runId)} (cairn validate reports them missing; a resume reruns their stages)`,
    );
  }
  if (verified.signature === 'unchecked') warnings.push(`the signature was not checked (${KEY_ENV} is not set)`);
  return {
    runId,
    name: verified.name,
    status: verified.status,
    store: store.url,
    file: path.resolve(file),
    overwritten: exists,
    signature: verified.signature,
    records: verified.records,
    artifactFiles: verified.artifactFiles,
    artifactBytes: verified.artifactBytes,
    warnings,
  };
}

/** Writes the export's artifact files under `dir` (which exists), checking every byte against the verified file. */
async function stageArtifacts(file: string, dir: string, verified: VerifiedExport, hooks: ImportHooks): Promise<void> {
  if (verified.artifactFiles === 0) return;
  const reader = new ExportFileReader(file, undefined); // the signature was checked in pass one; the sha256 is compared below
  const body = reader.body()[Symbol.asyncIterator]();
  try {
    let next = await body.next();
    while (!next.done && next.value.type === 'record') next = await body.next();
    await writeArtifacts(dir, verified.manifest, next.done ? undefined : next.value, body, hooks);
    if (reader.computed?.sha256 !== verified.sha256) throw changed(file);
  } finally {
    await body.return?.(undefined);
  }
}

/** Streams the export's records into `store.importRun`, which writes nothing unless every record is good. */
async function importRecords(store: Store, file: string, verified: VerifiedExport, overwrite: boolean): Promise<void> {
  const reader = new ExportFileReader(file, undefined);
  const body = reader.body()[Symbol.asyncIterator]();
  async function* records(): AsyncGenerator<ExportRecord> {
    for (let next = await body.next(); !next.done; next = await body.next()) {
      if (next.value.type !== 'record') break;
      yield next.value.record;
    }
    if (reader.recordsEnd?.sha256 !== verified.recordsSha256) throw changed(file); // importRun has written nothing yet
  }
  try {
    await store.importRun(records(), { overwrite });
  } finally {
    await body.return?.(undefined);
  }
}

function changed(file: string): CairnError {
  return invalidExport(`${file} changed while it was being imported`);
}

/** Pass two's artifact lines: each file is written under a temp name, checked, then renamed into place. */
async function writeArtifacts(
  dir: string,
  manifest: readonly ArtifactEntry[],
  first: BodyLine | undefined,
  body: AsyncIterator<BodyLine>,
  hooks: ImportHooks,
): Promise<void> {
  const byPath = new Map(manifest.map((e) => [e.path, e]));
  const seen = new Set<string>();
  let current: (Incoming & { handle: fs.FileHandle; temp: string; target: string }) | undefined;
  const finish = async (): Promise<void> => {
    if (!current) return;
    const { handle, temp, target } = current;
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
    endFile(current);
    await fs.rename(temp, target);
    current = undefined;
    await hooks.onPoint?.('file-staged');
  };
  try {
    for (let line = first; line; line = (await body.next()).value as BodyLine | undefined) {
      if (line.type === 'record') throw invalidExport(`line ${line.lineNo}: a record after the artifact files`);
      if (line.type === 'file') {
        await finish();
        const incoming = startFile(line, byPath, seen);
        const target = resolveInside(dir, ...line.path.split('/'));
        await fs.mkdir(path.dirname(target), { recursive: true });
        const temp = `${target}.${randomUUID()}.import`;
        current = { ...incoming, handle: await fs.open(temp, 'wx'), temp, target };
      } else {
        const bytes = takeChunk(line, current);
        await writeAll(current!.handle, bytes);
      }
    }
    await finish();
  } catch (error) {
    if (current) {
      await current.handle.close().catch(() => undefined);
      await fs.rm(current.temp, { force: true });
    }
    throw error;
  }
}
