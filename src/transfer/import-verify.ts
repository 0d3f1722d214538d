/**
 * Pass one of an import: reads an export file end to end and checks everything — header and
 * format version, every record (checksum, format, run id), artifact bytes against the manifest,
 * the trailer's counts and sha256, and the signature — without writing anything.
 */
import { createHash, timingSafeEqual, type Hash } from 'node:crypto';
import { CairnError, isCairnError } from '../core/errors.js';
import { assertName } from '../core/ids.js';
import { checkArtifactEntry, decodeArtifact, decodeCheckpoint, decodeItem, decodeRun, latestArtifacts } from '../stores/codec.js';
import type { ArtifactEntry, ExportRecord, RunStatus } from '../stores/store.js';
import { ExportFileReader, invalidExport, KEY_ENV, type BodyLine, type ExportHeader } from './export-format.js';

/** An import's options, resolved: the key is given (or undefined), never read from the environment here. */
export interface ImportFileOptions {
  /** A signature is then required and checked. */
  readonly key: string | undefined;
  /** Without a key, import a signed file anyway (its sha256 is still checked). */
  readonly allowUnverified?: boolean;
  /** Replace an existing run with the same id. */
  readonly overwrite?: boolean;
}

/** `valid`: checked with the key · `none`: the file is not signed (no key set) · `unchecked`: signed, no key, --allow-unverified. */
export type SignatureCheck = 'valid' | 'none' | 'unchecked';

/** The run record's identity: its version and last update, unchanged by an import. */
export interface RunIdentity {
  readonly version: number;
  readonly updatedAt: string;
}

export interface VerifiedExport {
  readonly header: ExportHeader;
  readonly runId: string;
  readonly name: string;
  readonly status: RunStatus;
  readonly run: RunIdentity;
  readonly records: { checkpoints: number; ledgers: number; items: number; artifacts: number };
  /** The artifact manifest (latest entry per path). */
  readonly manifest: readonly ArtifactEntry[];
  readonly artifactFiles: number;
  readonly artifactBytes: number;
  readonly sha256: string;
  readonly recordsSha256: string;
  readonly signature: SignatureCheck;
}

/** A store error about a record (bad checksum, wrong run…) becomes `IMPORT_INVALID` naming the line. */
function checked<T>(lineNo: number, fn: () => T): T {
  try {
    return fn();
  } catch (error) {
    if (isCairnError(error) && (error.code === 'IMPORT_INVALID' || error.code === 'FORMAT_TOO_NEW')) throw error;
    throw invalidExport(`line ${lineNo}: ${(error as Error).message.replace(/\.$/, '')}`, {}, error);
  }
}

/** An artifact file being read from the export: its manifest entry and what arrived so far. */
export interface Incoming {
  readonly entry: ArtifactEntry;
  readonly hash: Hash;
  received: number;
}

/** Checks a `file` line against the manifest and the files already seen. */
export function startFile(line: BodyLine & { type: 'file' }, manifest: ReadonlyMap<string, ArtifactEntry>, seen: Set<string>): Incoming {
  const entry = manifest.get(line.path);
  if (!entry) throw invalidExport(`line ${line.lineNo}: artifact file ${JSON.stringify(line.path)} is not in the run's manifest`);
  if (seen.has(line.path)) throw invalidExport(`line ${line.lineNo}: artifact file ${line.path} appears twice`);
  if (line.size !== entry.size || line.sha256 !== entry.sha256) {
    throw invalidExport(`line ${line.lineNo}: artifact file ${line.path} does not match the manifest's size and sha256`);
  }
  seen.add(line.path);
  return { entry, hash: createHash('sha256'), received: 0 };
}

/** Checks a `chunk` line follows on from the file's previous bytes; returns its bytes. */
export function takeChunk(line: BodyLine & { type: 'chunk' }, current: Incoming | undefined): Buffer {
  if (!current || current.entry.path !== line.path) throw invalidExport(`line ${line.lineNo}: a chunk of ${line.path} outside its file`);
  if (line.offset !== current.received)
    throw invalidExport(`line ${line.lineNo}: chunk of ${line.path} at offset ${line.offset}, expected ${current.received}`);
  const bytes = Buffer.from(line.data, 'base64');
  current.received += bytes.length;
  if (current.received > current.entry.size) throw invalidExport(`line ${line.lineNo}: artifact ${line.path} has more bytes than recorded`);
  current.hash.update(bytes);
  return bytes;
}

export function endFile(current: Incoming | undefined): void {
  if (!current) return;
  const { entry } = current;
  if (current.received !== entry.size || current.hash.digest('hex') !== entry.sha256) {
    throw invalidExport(`the bytes of artifact ${entry.path} do not match its size and sha256 in the manifest`);
  }
}

function sameHex(a: string, b: string): boolean {
  return a.length === b.length && timingSafeEqual(Buffer.from(a, 'hex'), Buffer.from(b, 'hex'));
}

/** Pass one: reads and checks the whole file; writes nothing. */
export async function verifyExportFile(file: string, options: ImportFileOptions): Promise<VerifiedExport> {
  const reader = new ExportFileReader(file, options.key);
  let run: VerifiedRun | undefined;
  const records = { checkpoints: 0, ledgers: 0, items: 0, artifacts: 0 };
  const ledgers = new Set<string>();
  const entries: ArtifactEntry[] = [];
  let manifest: Map<string, ArtifactEntry> | undefined;
  const seen = new Set<string>();
  let current: Incoming | undefined;
  let artifactBytes = 0;
  try {
    for await (const line of reader.body()) {
      const header = reader.header!;
      if (line.type === 'record') {
        if (manifest) throw invalidExport(`line ${line.lineNo}: a ${line.record.type} record after the artifact files`);
        run = verifyRecord(line.record, line.lineNo, header, run, records, ledgers, entries);
        continue;
      }
      if (!header.withArtifacts) throw invalidExport(`line ${line.lineNo}: artifact bytes in an export whose header says it has none`);
      manifest ??= new Map(latestArtifacts(entries).map((e) => [e.path, e]));
      if (line.type === 'file') {
        endFile(current);
        current = startFile(line, manifest, seen);
        artifactBytes += line.size;
      } else takeChunk(line, current);
    }
  } catch (error) {
    if (!isCairnError(error) && typeof (error as NodeJS.ErrnoException).syscall === 'string') {
      throw new CairnError('INVALID_INPUT', `Cannot read ${file}: ${(error as Error).message}`, {}, { cause: error });
    }
    throw error;
  }
  endFile(current);
  const header = reader.header!;
  const trailer = reader.trailer!;
  const computed = reader.computed!;
  if (!run) throw invalidExport('the file holds no run record');
  const latest = latestArtifacts(entries);
  if (header.withArtifacts) {
    const missing = latest.find((e) => !seen.has(e.path));
    if (missing) throw invalidExport(`the bytes of artifact ${missing.path} are missing although the header says artifacts are included`);
  }
  if (trailer.runId !== header.runId) throw invalidExport(`the trailer belongs to run ${trailer.runId}, the header to run ${header.runId}`);
  if (trailer.lines !== computed.lines || trailer.bytes !== computed.bytes || !sameHex(trailer.sha256, computed.sha256)) {
    throw invalidExport('the content does not match the sha256 in its trailer (the file is damaged or was altered)', { reason: 'digest' });
  }
  const signature = checkSignature(trailer.hmacSha256, computed.hmacSha256, options);
  return {
    header,
    runId: run.id,
    name: run.name,
    status: run.status,
    run: { version: run.version, updatedAt: run.updatedAt },
    records: { ...records, ledgers: ledgers.size },
    manifest: latest,
    artifactFiles: seen.size,
    artifactBytes,
    sha256: computed.sha256,
    recordsSha256: reader.recordsEnd!.sha256,
    signature,
  };
}

type VerifiedRun = RunIdentity & { readonly id: string; readonly name: string; readonly status: RunStatus };

function verifyRecord(
  record: ExportRecord,
  lineNo: number,
  header: ExportHeader,
  run: VerifiedRun | undefined,
  records: { checkpoints: number; items: number; artifacts: number },
  ledgers: Set<string>,
  entries: ArtifactEntry[],
): VerifiedRun {
  if (record.type === 'run') {
    if (run) throw invalidExport(`line ${lineNo}: a second run record`);
    const decoded = checked(lineNo, () => decodeRun(record.line));
    if (decoded.id !== header.runId)
      throw invalidExport(`line ${lineNo}: the header names run ${header.runId}, the run record is of run ${decoded.id}`);
    return { id: decoded.id, name: decoded.name, status: decoded.status, version: decoded.version, updatedAt: decoded.updatedAt };
  }
  if (!run) throw invalidExport(`line ${lineNo}: the first record must be the run record`);
  const runId = run.id;
  if (record.type === 'checkpoint') {
    const cp = checked(lineNo, () => decodeCheckpoint(record.line, { runId }, true));
    if (cp.runId !== runId) throw invalidExport(`line ${lineNo}: checkpoint ${cp.seq} belongs to run ${cp.runId}`);
    records.checkpoints += 1;
  } else if (record.type === 'items') {
    checked(lineNo, () => assertName(record.stage, 'stage name'));
    for (const text of record.lines) checked(lineNo, () => decodeItem(text, { runId, stage: record.stage }));
    ledgers.add(record.stage);
    records.items += record.lines.length;
  } else {
    const entry = checked(lineNo, () => decodeArtifact(record.line, { runId }));
    checked(lineNo, () => checkArtifactEntry(entry, runId));
    entries.push(entry);
    records.artifacts += 1;
  }
  return run;
}

/** The signing rule: with a key, a valid signature is required; without one, a signed file needs --allow-unverified. */
function checkSignature(stored: string | undefined, computed: string | undefined, options: ImportFileOptions): SignatureCheck {
  if (options.key !== undefined) {
    if (stored === undefined) {
      throw invalidExport(`the file is not signed, but ${KEY_ENV} is set (only signed exports are accepted with a key)`, {
        reason: 'signature-missing',
      });
    }
    if (computed === undefined || !sameHex(stored, computed)) {
      throw invalidExport(`the signature does not match (a different ${KEY_ENV}, or the file was altered)`, { reason: 'signature-wrong' });
    }
    return 'valid';
  }
  if (stored === undefined) return 'none';
  if (options.allowUnverified) return 'unchecked';
  throw invalidExport(
    `the file is signed but ${KEY_ENV} is not set, so its signature cannot be checked; set ${KEY_ENV}, or pass --allow-unverified to import it checked by its sha256 only`,
    { reason: 'signature-unchecked' },
  );
}
