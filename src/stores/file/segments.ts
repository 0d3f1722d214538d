/**
 * A run's logs live in segments, `<run>/seg-<epoch>/`, each written by one lease holder only:
 *
 *     seg-<epoch>/seal.json          what this segment trusts of the one before it (written first)
 *     seg-<epoch>/run.jsonl          the run record, one sealed line per update (the last one counts)
 *     seg-<epoch>/checkpoints.jsonl  checkpoints (and tombstones of deleted ones)
 *     seg-<epoch>/items/<stage>.jsonl item ledgers, in batches
 *     seg-<epoch>/artifacts.jsonl    the artifact manifest (latest line per path counts)
 *
 * `seg-0` is made with the run. A new holder goes on writing the current segment when the lease
 * before it was given back cleanly (its holder wrote nothing more after that, by construction);
 * after a takeover (the old holder may still be alive, stopped or slow) it starts its own segment
 * named after its epoch, and seals it first: `seal.json` records, for every file of the segment it
 * follows, how many bytes it trusts (after an fsync of them). Readers read each segment up to what
 * the next one sealed and the newest one whole, complete lines only. Whatever a stale holder writes
 * after the seal lands in its own segment, past the sealed length, and is never read: nothing it
 * does can change what readers trust, and no writer truncates or rewrites a log.
 *
 * Runs written before segments (cairn ≤ 0.1) keep their files at the top of the run folder: that
 * is their first segment ("legacy"), read as it is and never written again; their first new holder
 * seals it. That is the whole migration: nothing is rewritten.
 */
import fs from 'node:fs';
import path from 'node:path';
import { CairnError } from '../../core/errors.js';
import { q, RECORD_FORMAT_VERSION, sealBody, unsealLine } from '../../core/record.js';
import { checkDirs, createFileExclusive, isMissing, listDir, makeDir, openForRead, syncDir, unsafePath, writeNewFile } from './safe-fs.js';

export const SEAL_FILE = 'seal.json';
export const RUN_LOG = 'run.jsonl';
export const CHECKPOINTS_FILE = 'checkpoints.jsonl';
export const ARTIFACTS_FILE = 'artifacts.jsonl';
export const ITEMS_DIR = 'items';
export const LEDGER_SUFFIX = '.jsonl';
/** The run record of the format before segments, replaced atomically at the top of the run folder. */
export const LEGACY_RUN_FILE = 'run.json';

const SEGMENT_DIR = /^seg-(\d{1,15})$/;

export type SegmentId = number | 'legacy';

/** One segment of a run's chain, oldest first; `limits` is what the next segment trusts of it (undefined: the newest, read whole). */
export interface Segment {
  readonly id: SegmentId;
  readonly dir: string;
  readonly limits: ReadonlyMap<string, number> | undefined;
}

interface Seal {
  readonly seg: number;
  readonly prev: SegmentId | null;
  readonly trusted: ReadonlyMap<string, number>;
}

export function segmentDir(runDir: string, id: SegmentId): string {
  return id === 'legacy' ? runDir : path.join(runDir, `seg-${id}`);
}

/** The relative path of a stage's ledger in a segment. */
export function ledgerPath(stage: string): string {
  return `${ITEMS_DIR}/${stage}${LEDGER_SUFFIX}`;
}

/** How many bytes of `rel` in `segment` readers trust: its limit, or all of it for the newest segment. */
export function limitOf(segment: Segment, rel: string): number {
  if (!segment.limits) return Number.MAX_SAFE_INTEGER;
  return segment.limits.get(rel) ?? 0;
}

function encodeSeal(runId: string, seg: number, prev: SegmentId | null, trusted: ReadonlyMap<string, number>): string {
  const lengths = JSON.stringify(Object.fromEntries([...trusted].sort(([a], [b]) => (a < b ? -1 : 1))));
  const prevText = prev === null ? 'null' : typeof prev === 'number' ? String(prev) : q(prev);
  return sealBody(
    `{"fv":${RECORD_FORMAT_VERSION},"t":"seal","run":${q(runId)},"seg":${seg},"prev":${prevText},"trusted":${lengths},"at":${q(new Date().toISOString())}}`,
  );
}

/** Reads a segment's seal; undefined when it has none yet (its holder died before sealing) or it does not verify. */
function readSeal(root: string, dir: string, runId: string, seg: number): Seal | undefined {
  let fd: number | undefined;
  try {
    fd = openForRead(root, path.join(dir, SEAL_FILE));
  } catch (error) {
    if ((error as CairnError).code === 'UNSAFE_PATH') return undefined;
    throw error;
  }
  if (fd === undefined) return undefined;
  let text: string;
  try {
    text = fs.readFileSync(fd, 'utf8');
  } finally {
    fs.closeSync(fd);
  }
  const opened = unsealLine(text.trimEnd());
  if (!opened.ok) return undefined;
  const body = opened.body;
  if (body.t !== 'seal' || body.run !== runId || body.seg !== seg) return undefined;
  const prev = body.prev;
  if (!(prev === null || prev === 'legacy' || (typeof prev === 'number' && Number.isSafeInteger(prev) && prev >= 0 && prev < seg)))
    return undefined;
  const trusted = new Map<string, number>();
  if (typeof body.trusted !== 'object' || body.trusted === null) return undefined;
  for (const [rel, bytes] of Object.entries(body.trusted as Record<string, unknown>)) {
    if (typeof bytes === 'number' && Number.isSafeInteger(bytes) && bytes >= 0) trusted.set(rel, bytes);
  }
  return { seg, prev, trusted };
}

/** The segment folders of a run (real folders only), newest first. */
function listSegmentIds(runDir: string): number[] {
  const ids: number[] = [];
  for (const entry of listDir(runDir)) {
    const match = SEGMENT_DIR.exec(entry.name);
    if (match?.[1] && entry.isDirectory()) ids.push(Number(match[1]));
  }
  return ids.sort((a, b) => b - a);
}

/**
 * The run's segments, oldest first, each with what readers trust of it; undefined when the folder
 * holds no run (no sealed segment and no run record of the old format). A chain that breaks (a
 * sealed segment names one that is gone) ends there: what is left is still read.
 */
export function resolveChain(root: string, runDir: string, runId: string): Segment[] | undefined {
  if (!checkDirs(root, runDir)) return undefined;
  let head: Seal | undefined;
  for (const id of listSegmentIds(runDir)) {
    head = readSeal(root, segmentDir(runDir, id), runId, id);
    if (head) break;
  }
  if (!head) {
    return hasLegacyRun(root, runDir) ? [{ id: 'legacy', dir: runDir, limits: undefined }] : undefined;
  }
  const chain: Segment[] = [{ id: head.seg, dir: segmentDir(runDir, head.seg), limits: undefined }];
  let seal: Seal | undefined = head;
  while (seal && seal.prev !== null) {
    const prev: SegmentId = seal.prev;
    chain.push({ id: prev, dir: segmentDir(runDir, prev), limits: seal.trusted });
    seal = prev === 'legacy' ? undefined : readSeal(root, segmentDir(runDir, prev), runId, prev);
  }
  return chain.reverse();
}

function hasLegacyRun(root: string, runDir: string): boolean {
  try {
    const fd = openForRead(root, path.join(runDir, LEGACY_RUN_FILE));
    if (fd === undefined) return false;
    fs.closeSync(fd);
    return true;
  } catch {
    return false;
  }
}

/**
 * The log files of a segment (relative paths), as they are now. A log that is a link (or not a
 * regular file) is refused with `UNSAFE_PATH`: a seal must never leave out a log it cannot read,
 * or what it holds would be lost for good once the link is put right.
 */
export function segmentFiles(segment: Segment): string[] {
  const files: string[] = [];
  const take = (entry: fs.Dirent, rel: string): void => {
    if (!entry.name.endsWith('.jsonl')) return;
    if (!entry.isFile())
      throw unsafePath(path.join(segment.dir, rel), entry.isSymbolicLink() ? 'it is a link' : 'it is not a regular file');
    files.push(rel);
  };
  for (const entry of listDir(segment.dir)) take(entry, entry.name);
  for (const entry of listDir(path.join(segment.dir, ITEMS_DIR))) take(entry, `${ITEMS_DIR}/${entry.name}`);
  return files;
}

/**
 * Starts segment `seg` after a takeover (the caller holds lease `seg`, fsynced): fsyncs and
 * measures every log file of the current head, then writes the new segment's first run line
 * (`runLine`, the head's current run record) and its seal. From the seal on, what the old holder
 * writes to the head is not read any more.
 */
export function startSegment(root: string, runDir: string, runId: string, seg: number, head: Segment, runLine: string): Segment {
  const trusted = new Map<string, number>();
  for (const rel of segmentFiles(head)) {
    const file = path.join(head.dir, rel);
    const fd = openForRead(root, file);
    if (fd === undefined) continue;
    try {
      fs.fdatasyncSync(fd); // what the old holder wrote is durable before it is trusted
      trusted.set(rel, Math.min(fs.fstatSync(fd).size, limitOf(head, rel)));
    } finally {
      fs.closeSync(fd);
    }
  }
  const dir = segmentDir(runDir, seg);
  if (!makeDir(dir)) {
    throw new CairnError('CONFLICT', `Segment ${dir} already exists; another process is taking over run ${runId}.`, { runId });
  }
  let sealed = false;
  try {
    writeNewFile(path.join(dir, RUN_LOG), `${runLine}\n`);
    sealed = createFileExclusive(path.join(dir, SEAL_FILE), `${encodeSeal(runId, seg, head.id, trusted)}\n`);
    syncDir(dir);
    syncDir(runDir);
  } catch (error) {
    // (a full disk) a segment without its seal is read by nobody, and only this holder, whose epoch
    // names it, ever writes there: it goes, rather than stay behind as a half-made folder
    if (!sealed) fs.rmSync(dir, { recursive: true, force: true });
    throw error;
  }
  return { id: seg, dir, limits: undefined };
}

/** Writes the first segment of a new run into `runDir` (a staging folder): its seal, its run line, and the given log files. */
export function writeFirstSegment(runDir: string, runId: string, runLine: string, files: ReadonlyMap<string, string> = new Map()): void {
  const dir = segmentDir(runDir, 0);
  fs.mkdirSync(dir);
  writeNewFile(path.join(dir, RUN_LOG), `${runLine}\n`);
  for (const [rel, text] of files) {
    if (rel.includes('/')) makeDir(path.join(dir, path.dirname(rel)));
    writeNewFile(path.join(dir, rel), text);
  }
  if (files.size > 0 && [...files.keys()].some((rel) => rel.startsWith(`${ITEMS_DIR}/`))) syncDir(path.join(dir, ITEMS_DIR));
  createFileExclusive(path.join(dir, SEAL_FILE), `${encodeSeal(runId, 0, null, new Map())}\n`);
  syncDir(dir);
}

/** True when the run folder exists and holds anything at all (a run, or leftovers of one). */
export function hasAnything(runDir: string): boolean {
  try {
    return fs.readdirSync(runDir).length > 0;
  } catch (error) {
    if (isMissing(error)) return false;
    throw error;
  }
}
