/** Small helpers shared by the test suites. */
import fs from 'node:fs';
import path from 'node:path';
import type { ItemEntry } from '../src/stores/store.js';

/** The `code` of the error a promise (or function) fails with, or undefined if it succeeds. */
export async function codeOf(promise: Promise<unknown> | (() => unknown)): Promise<string | undefined> {
  try {
    await (typeof promise === 'function' ? promise() : promise);
    return undefined;
  } catch (error) {
    return (error as { code?: string }).code ?? `uncoded: ${(error as Error).message}`;
  }
}

export async function collect<T>(iterable: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const value of iterable) out.push(value);
  return out;
}

/** A `done` ledger entry. */
export const done = (key: string, index: number, result: unknown, attempt = 1): ItemEntry => ({
  key,
  index,
  status: 'done',
  attempt,
  result,
});

/**
 * A file-store run's segment folders that count (those with a seal), oldest first; the run folder
 * itself for a run of the format before segments. For tests that look at or damage raw files.
 */
export function fileSegments(root: string, runId: string): string[] {
  const dir = path.join(root, runId);
  const segments = fs
    .readdirSync(dir)
    .filter((name) => /^seg-\d+$/.test(name) && fs.existsSync(path.join(dir, name, 'seal.json')))
    .sort((a, b) => Number(a.slice(4)) - Number(b.slice(4)))
    .map((name) => path.join(dir, name));
  return segments.length > 0 ? segments : [dir];
}

/** Every existing copy of log `rel` (e.g. `checkpoints.jsonl`, `items/s.jsonl`) of a file-store run, oldest segment first. */
export function fileLogs(root: string, runId: string, rel: string): string[] {
  return fileSegments(root, runId)
    .map((segment) => path.join(segment, rel))
    .filter((file) => fs.existsSync(file));
}

/** Log `rel` of a file-store run in its newest segment (where its run record and new lines are). */
export function fileLog(root: string, runId: string, rel: string): string {
  return path.join(fileSegments(root, runId).at(-1)!, rel);
}

/**
 * Replaces, in raw storage, the first line of log `rel` of a file-store run (across its segments)
 * for which `match` is true with `mutate(line)`. Throws when no line matches.
 */
export function mutateFileLine(
  root: string,
  runId: string,
  rel: string,
  match: (line: string, index: number) => boolean,
  mutate: (line: string) => string,
): void {
  for (const file of fileLogs(root, runId, rel)) {
    const lines = fs.readFileSync(file, 'utf8').split('\n');
    const at = lines.findIndex((line, i) => line.length > 0 && match(line, i));
    if (at < 0) continue;
    lines[at] = mutate(lines[at]!);
    fs.writeFileSync(file, lines.join('\n'));
    return;
  }
  throw new Error(`no matching line in ${rel} of run ${runId} under ${root}`);
}

/** Replaces the run record in force of a file-store run (the last line of its newest run log). */
export function mutateFileRun(root: string, runId: string, mutate: (line: string) => string): void {
  const file = fileLog(root, runId, 'run.jsonl');
  const lines = fs.readFileSync(file, 'utf8').split('\n');
  const at = lines.length - 2; // the text ends with "\n"
  lines[at] = mutate(lines[at]!);
  fs.writeFileSync(file, lines.join('\n'));
}
