/**
 * Stage fingerprints: a hash of what a stage's result depends on — the pipeline's and the stage's
 * version, its config, the content of its declared input files and the fingerprints of the stages
 * it depends on. The parts are stored too, so that a change can be explained ("config changed").
 */
import { createHash, randomUUID } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { CairnError, isCairnError } from '../core/errors.js';
import { canonicalHash, sha256Hex } from '../core/hash.js';
import { encodeValue } from '../core/serialize.js';
import type { RunData } from './run-data.js';

export interface FingerprintParts {
  readonly pipelineVersion: string;
  readonly version: string;
  /** Hash of the stage's config. */
  readonly config: string;
  /** Absolute input file path → sha256 of its content. */
  readonly inputs: Readonly<Record<string, string>>;
  /** Dependency stage → its fingerprint (or `skipped`). */
  readonly deps: Readonly<Record<string, string>>;
}

export function fingerprintOf(parts: FingerprintParts): string {
  return canonicalHash(parts).slice(0, 32);
}

export function configHash(config: unknown, stage: string): string {
  try {
    return canonicalHash(config ?? null).slice(0, 32);
  } catch (error) {
    throw new CairnError(
      'INVALID_DEFINITION',
      `The config of stage ${stage} cannot be fingerprinted: use plain data (objects, arrays, strings, numbers, dates).`,
      { stage },
      { cause: error },
    );
  }
}

/**
 * The basis of a stage's item ledgers: its own fingerprint (its upstream stages' versions left out) and the content of the upstream outputs it
 * reads (a sha256 of each output as it is stored). An upstream stage that reruns to the same output
 * leaves the basis as it was, so the finished items of this stage are kept; any other output
 * changes it, and the items run again.
 */
export function ledgerBasis(
  parts: FingerprintParts,
  dependsOn: readonly string[],
  outputs: ReadonlyMap<string, unknown>,
  recordName: (stage: string) => string = (stage) => stage,
): string {
  const upstream: Record<string, string> = {};
  // an upstream stage is known by the name its records are kept under: renaming it changes nothing here
  for (const dep of dependsOn) if (outputs.has(dep)) upstream[recordName(dep)] = outputDigest(outputs.get(dep));
  // the stage's own parts only: an upstream stage's new version that gives the same output changes
  // nothing its items computed from (its output's content stands for it here)
  const own = fingerprintOf({ ...parts, deps: {} });
  return `c${canonicalHash({ fingerprint: own, upstream }).slice(0, 16)}`;
}

/**
 * The basis earlier cairn versions stored: the fingerprint and the checkpoint seqs of the upstream
 * completions. Equal seqs mean the same upstream records, so a ledger with this basis is still
 * good; a rerun upstream (a new seq) never matches it, whatever its output.
 */
export function seqLedgerBasis(fingerprint: string, depSeqs: Readonly<Record<string, number>>): string {
  return canonicalHash({ fingerprint, depSeqs }).slice(0, 16);
}

// outputs are hashed once per object: a stage read by several dependents is encoded once
const digests = new WeakMap<object, string>();

/** sha256 of a value as it is stored (its encoding and text); a value that cannot be stored never matches anything. */
function outputDigest(value: unknown): string {
  const cached = typeof value === 'object' && value !== null ? digests.get(value) : undefined;
  if (cached !== undefined) return cached;
  let digest: string;
  try {
    const { enc, text } = encodeValue(value);
    digest = sha256Hex(`${enc}:${text}`);
  } catch {
    digest = `unstorable:${randomUUID()}`;
  }
  if (typeof value === 'object' && value !== null) digests.set(value, digest);
  return digest;
}

/**
 * What says how a stage processes each item: the pipeline's and the stage's version and its config.
 * Its input files and upstream outputs are left out: they change the list, not what is done to an
 * item. `reuse: 'content'` salts item hashes with it, so a result is only ever taken for the same
 * item processed the same way.
 */
export function processingKey(parts: FingerprintParts): string {
  return canonicalHash({ pipelineVersion: parts.pipelineVersion, version: parts.version, config: parts.config }).slice(0, 32);
}

/** Says what differs between two fingerprints' parts, for the run history. */
export function describeChange(before: FingerprintParts | undefined, now: FingerprintParts): string {
  if (!before) return 'its fingerprint changed';
  const changes: string[] = [];
  if (before.pipelineVersion !== now.pipelineVersion) changes.push(`pipeline version ${before.pipelineVersion} → ${now.pipelineVersion}`);
  if (before.version !== now.version) changes.push(`version ${before.version} → ${now.version}`);
  if (before.config !== now.config) changes.push('config changed');
  for (const file of new Set([...Object.keys(before.inputs), ...Object.keys(now.inputs)])) {
    if (before.inputs[file] !== now.inputs[file])
      changes.push(`input file ${file} ${now.inputs[file] ? (before.inputs[file] ? 'changed' : 'added') : 'removed'}`);
  }
  for (const dep of new Set([...Object.keys(before.deps), ...Object.keys(now.deps)])) {
    if (before.deps[dep] !== now.deps[dep]) changes.push(`upstream stage ${dep} changed`);
  }
  return changes.length > 0 ? changes.join(', ') : 'its fingerprint changed';
}

/**
 * Hashes the declared input files. A file whose size and mtime match the cached entry is not read
 * again (like make and Snakemake, cairn trusts mtime for unchanged files).
 */
export function hashInputFiles(files: readonly string[], data: RunData, stage: string): Record<string, string> {
  const out: Record<string, string> = {};
  const cache = (data.fileHashes ??= {});
  for (const file of files) {
    if (typeof file !== 'string' || file.length === 0) {
      throw new CairnError('INVALID_DEFINITION', `Stage ${stage}: every entry of inputs must be a file path.`, { stage });
    }
    const abs = path.resolve(file);
    let stat: fs.Stats;
    try {
      stat = fs.statSync(abs);
    } catch {
      throw new CairnError('INVALID_INPUT', `Input file ${abs} of stage ${stage} does not exist.`, { stage, file: abs });
    }
    const cached = cache[abs];
    if (cached && cached.size === stat.size && cached.mtimeMs === stat.mtimeMs) {
      out[abs] = cached.sha256;
      continue;
    }
    const sha256 = hashFileSync(abs).sha256;
    cache[abs] = { size: stat.size, mtimeMs: stat.mtimeMs, sha256 };
    out[abs] = sha256;
  }
  return out;
}

/** Size and sha256 of a file, read synchronously in 1 MiB chunks. */
export function hashFileSync(file: string): { size: number; sha256: string } {
  const hash = createHash('sha256');
  const buffer = Buffer.allocUnsafe(1024 * 1024);
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch (error) {
    throw new CairnError('NOT_FOUND', `File ${file} cannot be read: ${(error as Error).message}`, { file });
  }
  let size = 0;
  try {
    for (;;) {
      const n = fs.readSync(fd, buffer, 0, buffer.length, null);
      if (n === 0) break;
      hash.update(buffer.subarray(0, n));
      size += n;
    }
  } finally {
    fs.closeSync(fd);
  }
  return { size, sha256: hash.digest('hex') };
}

export function isUsageError(error: unknown): boolean {
  return isCairnError(error, 'INVALID_DEFINITION') || isCairnError(error, 'INVALID_INPUT');
}
