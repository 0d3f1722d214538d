/**
 * Whole-run reading and writing for the file store: validation (every record of a run), export
 * as sealed lines, and the staging folder an import is written into before it is renamed into place.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import type { CairnError } from '../../core/errors.js';
import { isValidRunId, resolveInside } from '../../core/ids.js';
import { corrupt, decodeArtifact, decodeCheckpoint, decodeRun, manifestOf } from '../codec.js';
import { checkArtifactFiles, type ImportBundle } from '../common.js';
import type { ArtifactEntry, ExportRecord, StoreProblem } from '../store.js';
import { syncDir, writeNewFileDurably } from './atomic-write.js';
import { CHECKPOINTS_FILE, isTombstone, seqOfHead } from './checkpoint-log.js';
import { ITEMS_DIR, LEDGER_SUFFIX, readLedgerChunks } from './item-ledger.js';
import { openIfExists, readTextLines, sliceBy, writeLinesFile } from './jsonl.js';

export const RUN_FILE = 'run.json';
export const ARTIFACTS_FILE = 'artifacts.jsonl';
/** Lines per `items` export record. */
const EXPORT_CHUNK = 10_000;

/** One run's folder, as the whole-run operations see it. */
export interface RunFolder {
  readonly runId: string;
  readonly dir: string;
  readonly artifactDir: string;
}

/** The stored run line (without its `\n`), or undefined when the run has no run.json. */
export async function readRunLine(dir: string): Promise<string | undefined> {
  const handle = await openIfExists(path.join(dir, RUN_FILE));
  if (!handle) return undefined;
  try {
    const text = await handle.readFile('utf8');
    return text.endsWith('\n') ? text.slice(0, -1) : text;
  } finally {
    await handle.close();
  }
}

/** Decodes a run line and checks it is the run of this folder. */
export function decodeRunOf(line: string, runId: string): ReturnType<typeof decodeRun> {
  const run = decodeRun(line, { runId });
  if (run.id !== runId) throw corrupt(`The run record in the folder of run ${runId} belongs to run ${run.id}.`, { runId });
  return run;
}

/** Stage names with a ledger file, sorted. */
export async function listLedgerNames(dir: string): Promise<string[]> {
  let names: string[];
  try {
    names = await fs.readdir(path.join(dir, ITEMS_DIR));
  } catch {
    return [];
  }
  return names
    .filter((name) => name.endsWith(LEDGER_SUFFIX))
    .map((name) => name.slice(0, -LEDGER_SUFFIX.length))
    .filter(isValidRunId)
    .sort();
}

/** The artifact manifest: the latest valid entry per path. */
export async function readArtifactManifest(folder: RunFolder): Promise<ArtifactEntry[]> {
  const lines: string[] = [];
  for await (const chunk of readTextLines(path.join(folder.dir, ARTIFACTS_FILE))) for (const { text } of chunk) lines.push(text);
  return manifestOf(lines, folder.runId);
}

/** Verifies a checkpoint line completely (payload included); throws as `decodeCheckpoint` does. */
function verifyCheckpointLine(line: string, runId: string): void {
  const seq = seqOfHead(line.slice(0, 320));
  const cp = decodeCheckpoint(line, { runId, ...(seq === undefined ? {} : { seq }) }, true);
  if (cp.runId !== runId) throw corrupt(`Checkpoint ${cp.seq} in run ${runId} belongs to run ${cp.runId}.`, { runId, seq: cp.seq });
}

function problemOf(error: unknown, runId: string, where: string, position: number | undefined): StoreProblem {
  const e = error as CairnError;
  if (e.code !== 'CHECKPOINT_CORRUPT' && e.code !== 'FORMAT_TOO_NEW') throw error;
  return { code: e.code, runId, where, ...(position === undefined ? {} : { position }), message: e.message };
}

/** Reads every record of a run and returns each problem found; `[]` when all is intact. */
export async function validateRunFolder(folder: RunFolder): Promise<StoreProblem[]> {
  const { runId, dir } = folder;
  const runLine = await readRunLine(dir);
  if (runLine === undefined) return [{ code: 'NOT_FOUND', runId, where: 'run', message: `Run ${runId} not found.` }];
  const problems: StoreProblem[] = [];
  try {
    decodeRunOf(runLine, runId);
  } catch (error) {
    problems.push(problemOf(error, runId, 'run', undefined));
  }
  for await (const chunk of readTextLines(path.join(dir, CHECKPOINTS_FILE))) {
    for (const { text, no } of chunk) {
      if (text.length === 0 || isTombstone(text)) continue;
      try {
        verifyCheckpointLine(text, runId);
      } catch (error) {
        problems.push(problemOf(error, runId, 'checkpoints', seqOfHead(text.slice(0, 320)) ?? no));
      }
    }
  }
  for (const stage of await listLedgerNames(dir)) {
    const handle = await openIfExists(path.join(dir, ITEMS_DIR, `${stage}${LEDGER_SUFFIX}`));
    if (!handle) continue;
    try {
      for await (const chunk of readLedgerChunks(handle, runId, stage, (p) => problems.push(p))) void chunk;
    } finally {
      await handle.close();
    }
  }
  for await (const chunk of readTextLines(path.join(dir, ARTIFACTS_FILE))) {
    for (const { text, no } of chunk) {
      if (text.length === 0) continue;
      try {
        decodeArtifact(text, { runId });
      } catch (error) {
        problems.push(problemOf(error, runId, 'artifacts', no));
      }
    }
  }
  problems.push(...(await checkArtifactFiles(runId, folder.artifactDir, await readArtifactManifest(folder))));
  return problems;
}

/**
 * Streams a run's records after its run line: checkpoints in seq order (only lines that verify,
 * no tombstones), each ledger's lines of complete batches in records of at most 10,000 lines,
 * then the artifact lines that verify.
 */
export async function* exportRunFolder(folder: RunFolder): AsyncGenerator<ExportRecord> {
  const { runId, dir } = folder;
  for await (const chunk of readTextLines(path.join(dir, CHECKPOINTS_FILE))) {
    for (const { text } of chunk) {
      if (text.length === 0 || isTombstone(text)) continue;
      try {
        verifyCheckpointLine(text, runId);
      } catch {
        continue; // damaged: reported by validateRun, never exported
      }
      yield { type: 'checkpoint', line: text };
    }
  }
  for (const stage of await listLedgerNames(dir)) {
    const handle = await openIfExists(path.join(dir, ITEMS_DIR, `${stage}${LEDGER_SUFFIX}`));
    if (!handle) continue;
    try {
      let lines: string[] = [];
      let sent = false;
      for await (const chunk of readLedgerChunks(handle, runId, stage, undefined)) {
        for (const { line } of chunk) {
          lines.push(line);
          if (lines.length === EXPORT_CHUNK) {
            yield { type: 'items', stage, lines };
            lines = [];
            sent = true;
          }
        }
      }
      if (lines.length > 0 || !sent) yield { type: 'items', stage, lines };
    } finally {
      await handle.close();
    }
  }
  for await (const chunk of readTextLines(path.join(dir, ARTIFACTS_FILE))) {
    for (const { text } of chunk) {
      if (text.length === 0) continue;
      try {
        decodeArtifact(text, { runId });
      } catch {
        continue;
      }
      yield { type: 'artifact', line: text };
    }
  }
}

/** Writes a verified import into an empty staging folder, every file and folder fsynced. */
export async function writeImportFolder(staging: string, bundle: ImportBundle): Promise<void> {
  await writeNewFileDurably(path.join(staging, RUN_FILE), `${bundle.runLine}\n`);
  if (bundle.checkpoints.length > 0) {
    await writeLinesFile(
      path.join(staging, CHECKPOINTS_FILE),
      sliceBy(
        bundle.checkpoints.map((c) => c.line),
        EXPORT_CHUNK,
      ),
    );
  }
  if (bundle.ledgers.size > 0) {
    const items = path.join(staging, ITEMS_DIR);
    await fs.mkdir(items);
    for (const [stage, lines] of bundle.ledgers) {
      await writeLinesFile(resolveInside(items, `${stage}${LEDGER_SUFFIX}`), sliceBy(lines, EXPORT_CHUNK));
    }
    await syncDir(items);
  }
  if (bundle.artifacts.length > 0) await writeLinesFile(path.join(staging, ARTIFACTS_FILE), sliceBy(bundle.artifacts, EXPORT_CHUNK));
  await syncDir(staging);
}
