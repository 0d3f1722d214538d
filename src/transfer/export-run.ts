/**
 * `exportRun`: writes a run into one self-contained export file (format: `export-format.ts`),
 * streaming: the store's records as they come, artifact files chunk by chunk. The file is written
 * under a temp name in the target folder, fsynced and renamed into place, so a crash never leaves a
 * half file under the final name.
 */
import { createHash, randomUUID } from 'node:crypto';
import { closeSync, read } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { CairnError, isCairnError } from '../core/errors.js';
import { syncDir, writeAll } from '../core/durable-fs.js';
import { assertRunId, resolveInside } from '../core/ids.js';
import { checkFolders, openRegularFile, type OpenedFile } from '../core/no-follow.js';
import { checkArtifactEntry, decodeArtifact, decodeCheckpoint, decodeItem, latestArtifacts } from '../stores/codec.js';
import type { ArtifactEntry, ExportRecord, Store } from '../stores/store.js';
import {
  cairnVersion,
  CHUNK_BYTES,
  EXPORT_FORMAT,
  EXPORT_VERSION,
  ExportDigest,
  exportKey,
  ITEMS_CHARS_PER_LINE,
  ITEMS_PER_LINE,
  type ExportHeader,
} from './export-format.js';
import { withStoreOf } from './store-of.js';

/** Options of {@link exportRun}. */
export interface ExportRunOptions {
  /**
   * Include the bytes of every artifact file in the manifest; a file missing or changed since it
   * was recorded then fails the export (`ARTIFACT_MISMATCH`). @defaultValue false
   */
  readonly withArtifacts?: boolean;
  /**
   * Sign the file with HMAC-SHA256 under this key (an empty string: do not sign).
   * @defaultValue the value of `CAIRN_EXPORT_KEY`, if set
   */
  readonly key?: string;
}

/** What `exportRun` wrote: also the `--json` output of `cairn export`. */
export interface ExportSummary {
  readonly runId: string;
  readonly file: string;
  readonly bytes: number;
  readonly sha256: string;
  readonly signed: boolean;
  readonly withArtifacts: boolean;
  readonly records: { checkpoints: number; ledgers: number; items: number; artifacts: number };
  /** Artifact files whose bytes are in the file (0 without --with-artifacts). */
  readonly artifactFiles: number;
  readonly artifactBytes: number;
  /** Problems of the run found before exporting (damaged records are left out of the file). */
  readonly warnings: string[];
}

/** Buffers lines into ~1 MiB writes and feeds every byte before the trailer to the digest. */
class LineWriter {
  readonly digest: ExportDigest;
  private pending: Buffer[] = [];
  private pendingBytes = 0;

  constructor(
    private readonly handle: fs.FileHandle,
    key: string | undefined,
  ) {
    this.digest = new ExportDigest(key);
  }

  async line(value: unknown, hashed = true): Promise<void> {
    const buffer = Buffer.from(`${JSON.stringify(value)}\n`, 'utf8');
    if (hashed) this.digest.update(buffer);
    this.pending.push(buffer);
    this.pendingBytes += buffer.length;
    if (this.pendingBytes >= 1024 * 1024) await this.flush();
  }

  async flush(): Promise<void> {
    if (this.pending.length === 0) return;
    const data = Buffer.concat(this.pending, this.pendingBytes);
    this.pending = [];
    this.pendingBytes = 0;
    await writeAll(this.handle, data);
  }
}

/**
 * Writes run `runId` into one self-contained export file: its run record, checkpoints, item
 * ledgers and artifact manifest (and, with `withArtifacts`, the artifact files' bytes), each record
 * sealed as the store keeps it, the whole file closed by a sha256 (and an HMAC with a key).
 * {@link importRun} loads it into any store. `file` is written under a temp name beside it and
 * renamed into place, so it is never seen half written; an existing file is replaced.
 *
 * `store` is an open {@link Store} (left open) or a store URL (opened and closed here). Damaged
 * records are left out of the file and named in `warnings`. Throws `INVALID_RUN_ID` before the store
 * is opened, `NOT_FOUND` for an unknown run, `ARTIFACT_MISMATCH` when an artifact file to include is
 * missing or changed; no file is left behind then.
 *
 * @example
 * ```ts
 * import { exportRun } from 'cairnjs';
 * const summary = await exportRun('file:./data/checkpoints', 'speech-3f2a', 'speech.cairn', { withArtifacts: true });
 * console.log(summary.bytes, summary.sha256); // copy speech.cairn anywhere, then importRun it
 * ```
 */
export async function exportRun(
  store: Store | string,
  runId: string,
  file: string,
  options: ExportRunOptions = {},
): Promise<ExportSummary> {
  assertRunId(runId); // a hostile id opens nothing
  const key = options.key ?? exportKey();
  const resolved = { withArtifacts: options.withArtifacts === true, key: key ? key : undefined, cairnVersion: cairnVersion() };
  return withStoreOf(store, (opened) => writeExportFile(opened, runId, file, resolved));
}

interface ResolvedExportOptions {
  readonly withArtifacts: boolean;
  readonly key: string | undefined;
  readonly cairnVersion: string;
}

/** Exports run `runId` of `store` into `file` (see {@link exportRun}). */
async function writeExportFile(store: Store, runId: string, file: string, options: ResolvedExportOptions): Promise<ExportSummary> {
  const warnings = await checkRun(store, runId, options.withArtifacts);
  const records = store.exportRun(runId)[Symbol.asyncIterator]();
  const first = await records.next(); // CHECKPOINT_CORRUPT (a damaged run record) before any file is created
  if (first.done || first.value.type !== 'run') throw new CairnError('NOT_FOUND', `Run ${runId} not found in ${store.url}.`, { runId });
  const target = path.resolve(file);
  const temp = path.join(path.dirname(target), `.${path.basename(target)}.${randomUUID()}.tmp`);
  let handle: fs.FileHandle;
  try {
    handle = await fs.open(temp, 'wx');
  } catch (error) {
    throw new CairnError('INVALID_INPUT', `Cannot write ${target}: ${(error as Error).message}`, { runId }, { cause: error });
  }
  try {
    const writer = new LineWriter(handle, options.key);
    const header: ExportHeader = {
      format: EXPORT_FORMAT,
      version: EXPORT_VERSION,
      type: 'header',
      runId,
      createdAt: new Date().toISOString(),
      cairnVersion: options.cairnVersion,
      sourceStore: store.kind,
      withArtifacts: options.withArtifacts,
    };
    await writer.line(header);
    const counts = { checkpoints: 0, ledgers: 0, items: 0, artifacts: 0 };
    const manifest: ArtifactEntry[] = [];
    const ledgers = new Set<string>();
    await writer.line(first.value);
    // damaged records (reported by validateRun above) are never exported, so that the file always imports
    for (let next = await records.next(); !next.done; next = await records.next()) {
      const record: ExportRecord = next.value;
      if (record.type === 'items') {
        const lines = record.lines.filter((line) => isIntact(() => decodeItem(line, { runId, stage: record.stage })));
        ledgers.add(record.stage);
        counts.items += lines.length;
        await writeItems(writer, record.stage, lines);
        continue;
      }
      if (record.type === 'checkpoint') {
        if (!isIntact(() => checkCheckpoint(record.line, runId))) continue;
        counts.checkpoints += 1;
      } else if (record.type === 'artifact') {
        let entry: ArtifactEntry | undefined;
        if (!isIntact(() => checkArtifactEntry((entry = decodeArtifact(record.line, { runId })), runId))) continue;
        counts.artifacts += 1;
        manifest.push(entry!);
      }
      await writer.line(record);
    }
    counts.ledgers = ledgers.size;
    let artifactFiles = 0;
    let artifactBytes = 0;
    if (options.withArtifacts) {
      for (const entry of latestArtifacts(manifest)) {
        await writeArtifact(writer, store, runId, entry);
        artifactFiles += 1;
        artifactBytes += entry.size;
      }
    }
    const digest = writer.digest.finish();
    await writer.line(
      {
        type: 'end',
        runId,
        lines: digest.lines,
        bytes: digest.bytes,
        sha256: digest.sha256,
        ...(digest.hmacSha256 === undefined ? {} : { hmacSha256: digest.hmacSha256 }),
      },
      false,
    );
    await writer.flush();
    await handle.sync();
    const { size } = await handle.stat();
    await handle.close();
    await fs.rename(temp, target);
    await syncDir(path.dirname(target));
    return {
      runId,
      file: target,
      bytes: size,
      sha256: digest.sha256,
      signed: digest.hmacSha256 !== undefined,
      withArtifacts: options.withArtifacts,
      records: counts,
      artifactFiles,
      artifactBytes,
      warnings,
    };
  } catch (error) {
    await handle.close().catch(() => undefined);
    await fs.rm(temp, { force: true });
    await records.return?.(undefined);
    throw error;
  }
}

/**
 * Validates the run before anything is written: with artifacts to include, a missing or changed
 * one fails the export (`ARTIFACT_MISMATCH`); other problems become warnings (damaged records are
 * left out of the file; without --with-artifacts, artifact problems travel with the run).
 */
async function checkRun(store: Store, runId: string, withArtifacts: boolean): Promise<string[]> {
  const problems = await store.validateRun(runId);
  if (problems.some((p) => p.code === 'NOT_FOUND' && p.where === 'run')) {
    throw new CairnError('NOT_FOUND', `Run ${runId} not found in ${store.url}.`, { runId });
  }
  const artifact = withArtifacts ? problems.find((p) => p.code === 'ARTIFACT_MISMATCH') : undefined;
  if (artifact) {
    throw new CairnError(
      'ARTIFACT_MISMATCH',
      `${artifact.message} Nothing was exported: run \`cairn validate ${runId}\`, or export without --with-artifacts.`,
      { runId, where: artifact.where },
    );
  }
  if (problems.length === 0) return [];
  const named = problems.slice(0, 5).map((p) => `${p.code} at ${p.where}${p.position === undefined ? '' : ` #${p.position}`}`);
  return [
    `run ${runId} has ${problems.length} problem${problems.length === 1 ? '' : 's'} (${named.join(', ')}${problems.length > 5 ? ', …' : ''}); ` +
      `damaged records are left out of the export, and \`cairn validate ${runId}\` shows the details`,
  ];
}

/**
 * Runs a decoder; false when the record is damaged. A record of a newer format is not skipped:
 * `FORMAT_TOO_NEW` stops the export (upgrade cairn to export it).
 */
function isIntact(decode: () => unknown): boolean {
  try {
    decode();
    return true;
  } catch (error) {
    if (isCairnError(error, 'FORMAT_TOO_NEW')) throw error;
    return false;
  }
}

function checkCheckpoint(line: string, runId: string): void {
  const ref = decodeCheckpoint(line, { runId }, false); // the CRC covers the payload's bytes
  if (ref.runId !== runId) throw new CairnError('CHECKPOINT_CORRUPT', `Checkpoint ${ref.seq} belongs to run ${ref.runId}.`, { runId });
}

/** A ledger's lines in `items` lines of at most 1,000 entries (and about 4 MiB). */
async function writeItems(writer: LineWriter, stage: string, lines: readonly string[]): Promise<void> {
  let start = 0;
  if (lines.length === 0) {
    await writer.line({ type: 'items', stage, lines: [] });
    return;
  }
  while (start < lines.length) {
    let end = start;
    let chars = 0;
    while (
      end < lines.length &&
      end - start < ITEMS_PER_LINE &&
      (end === start || chars + (lines[end]?.length ?? 0) <= ITEMS_CHARS_PER_LINE)
    ) {
      chars += lines[end]?.length ?? 0;
      end += 1;
    }
    await writer.line({ type: 'items', stage, lines: lines.slice(start, end) });
    start = end;
  }
}

const readAt = promisify(read);

/** One artifact file: a `file` line, then its bytes in base64 `chunk` lines, checked against the manifest. */
async function writeArtifact(writer: LineWriter, store: Store, runId: string, entry: ArtifactEntry): Promise<void> {
  const dir = path.resolve(store.artifactDir(runId));
  const source = resolveInside(dir, ...entry.path.split('/'));
  const mismatch = (what: string): CairnError =>
    new CairnError(
      'ARTIFACT_MISMATCH',
      `Artifact ${entry.path} of run ${runId} ${what}; nothing was exported. Run \`cairn validate ${runId}\`, or export without --with-artifacts.`,
      { runId, path: entry.path },
    );
  const opened: OpenedFile = checkFolders(dir, path.dirname(source)) ? openRegularFile(source) : { problem: 'missing' };
  if (opened.fd === undefined) {
    throw mismatch(
      opened.problem === 'missing' ? `is missing (${source})` : `is ${opened.problem} at ${source} (cairn never follows links in a store)`,
    );
  }
  const hash = createHash('sha256');
  let offset = 0;
  try {
    if (opened.size !== entry.size) throw mismatch(`has ${opened.size} bytes, ${entry.size} were recorded`);
    await writer.line({ type: 'file', path: entry.path, size: entry.size, sha256: entry.sha256 });
    for (;;) {
      const { bytesRead, buffer } = await readAt(opened.fd, Buffer.allocUnsafe(CHUNK_BYTES), 0, CHUNK_BYTES, offset);
      if (bytesRead === 0) break;
      const chunk = buffer.subarray(0, bytesRead);
      hash.update(chunk);
      await writer.line({ type: 'chunk', path: entry.path, offset, data: chunk.toString('base64') });
      offset += chunk.length;
    }
  } finally {
    closeSync(opened.fd);
  }
  if (offset !== entry.size || hash.digest('hex') !== entry.sha256) throw mismatch('changed since it was recorded (sha256 differs)');
}
