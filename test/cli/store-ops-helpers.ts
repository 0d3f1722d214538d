/**
 * Helpers for the CLI suites of export/import/validate/cleanup/delete: the built binary run as a
 * child process, per-test temp folders (kept when a test fails), runs made with the engine API
 * (an item stage and an artifact, so that exports are realistic), and field-by-field reads of a
 * run for cross-store comparisons.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach } from 'vitest';
import { Cairn, openStore, pipeline } from '../../src/index.js';
import type { Store } from '../../src/stores/store.js';

const ROOT = path.resolve(import.meta.dirname, '..', '..');
export const CLI = path.join(ROOT, 'dist', 'src', 'cli', 'main.js');

export interface CliResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs `cairn <args>` (the built binary) in `cwd`; `CAIRN_STORE` and `CAIRN_EXPORT_KEY` are cleared unless given. */
export function cairn(args: readonly string[], options: { cwd?: string; env?: Record<string, string> } = {}): Promise<CliResult> {
  const env: NodeJS.ProcessEnv = { ...process.env, CAIRN_STORE: '', CAIRN_EXPORT_KEY: '', NO_COLOR: '1', ...options.env };
  delete env.FORCE_COLOR;
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [CLI, ...args],
      { cwd: options.cwd ?? os.tmpdir(), env, maxBuffer: 64 * 1024 * 1024 },
      (error, stdout, stderr) => {
        const code = error ? (typeof error.code === 'number' ? error.code : null) : 0;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

/** The JSON document a `--json` command printed. */
export function json<T>(result: CliResult): T {
  try {
    return JSON.parse(result.stdout) as T;
  } catch {
    throw new Error(`not JSON (exit ${result.code}): ${result.stdout}\n${result.stderr}`);
  }
}

/** The `CODE` of `error CODE: message` on stderr. */
export function errorCode(result: CliResult): string | undefined {
  return /^error ([A-Z_]+):/m.exec(result.stderr)?.[1];
}

/** Call in a describe: `tempDir()` makes a fresh folder, removed after the test unless it failed. */
export function useTempDirs(): () => string {
  let dirs: string[] = [];
  afterEach((context) => {
    if (context.task.result?.state === 'fail') process.stderr.write(`kept for inspection: ${dirs.join(', ')}\n`);
    else for (const dir of dirs) fs.rmSync(dir, { recursive: true, force: true });
    dirs = [];
  });
  return () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-cli-ops-'));
    dirs.push(dir);
    return dir;
  };
}

/** Every entry under `dir` (relative paths), or undefined when `dir` does not exist. */
export function listTree(dir: string): string[] | undefined {
  if (!fs.existsSync(dir)) return undefined;
  return (fs.readdirSync(dir, { recursive: true }) as string[]).sort();
}

/**
 * Runs a three-stage pipeline to completion in `url`: `split` makes `items` items, `process`
 * handles them with ctx.items (one ledger), `report` writes `out/report.txt` as an artifact.
 */
export async function makeRun(url: string, runId: string, items = 40): Promise<void> {
  const definition = pipeline('report-job', { version: '1' })
    .stage('split', () => Array.from({ length: items }, (_, i) => ({ id: `seg-${i}`, text: `segment ${i} ${'·'.repeat(i % 7)}` })))
    .stage('process', (ctx) =>
      ctx.items('segments', ctx.output('split'), (seg) => ({ upper: seg.text.toUpperCase(), at: new Date(0) }), {
        key: (seg) => seg.id,
        checkpointEvery: 16,
      }),
    )
    .stage('report', (ctx) => {
      const file = ctx.artifactPath('out/report.txt');
      fs.writeFileSync(
        file,
        ctx
          .output('process')
          .map((r) => r.upper)
          .join('\n'),
      );
      const bin = ctx.artifactPath('raw.bin');
      fs.writeFileSync(bin, Buffer.from(Array.from({ length: 300_000 }, (_, i) => (i * 31) % 256)));
      return { report: ctx.artifact(file), raw: ctx.artifact(bin) };
    });
  const engine = new Cairn({ store: url, handleSignals: false });
  try {
    const run = await engine.run(definition, { items }, { runId });
    if (run.status !== 'completed') throw new Error(`run ${runId} ended ${run.status}`);
  } finally {
    await engine.close();
  }
}

/** Opens `url`, runs `fn`, closes the store. */
export async function withStore<T>(url: string, fn: (store: Store) => Promise<T>): Promise<T> {
  const store = await openStore(url);
  try {
    return await fn(store);
  } finally {
    await store.close();
  }
}

/** Everything a run holds, read through the store interface, for field-by-field comparison. */
export async function snapshotRun(store: Store, runId: string): Promise<Record<string, unknown>> {
  const run = await store.getRun(runId);
  const checkpoints = [];
  for (const entry of await store.listCheckpoints(runId)) {
    if (!entry.valid) throw new Error(`damaged checkpoint in ${runId}`);
    checkpoints.push(await store.getCheckpoint(runId, entry.ref.seq));
  }
  const ledgers: Record<string, unknown[]> = {};
  for (const stage of await store.listLedgers(runId)) {
    const entries: unknown[] = [];
    for await (const entry of store.readItems(runId, stage)) entries.push(entry);
    ledgers[stage] = entries;
  }
  const artifacts = await store.listArtifacts(runId);
  const files: Record<string, Buffer> = {};
  for (const entry of artifacts) files[entry.path] = fs.readFileSync(path.join(store.artifactDir(runId), ...entry.path.split('/')));
  return { run, checkpoints, ledgers, artifacts, files, problems: await store.validateRun(runId) };
}
