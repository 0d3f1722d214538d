/**
 * `npm start` as a person uses it: the command of package.json's "start" script (the text-report
 * demo through the `cairn` CLI), run from the repository root as npm runs it, with the store in a
 * temp dir. A first run completes; a second prints the cached result without running a stage; a
 * run interrupted with Ctrl-C (SIGINT) during `analyze` exits 130, and the next one resumes it
 * without analyzing a finished chunk again and writes the same report.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { fileLogs } from '../helpers.js';

const ROOT = path.resolve(import.meta.dirname, '..', '..');
const parent = fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-demo-'));
let failed = false;
afterAll(() => {
  if (failed) console.error(`demo test failed: kept ${parent}`);
  else fs.rmSync(parent, { recursive: true, force: true });
});

/** package.json's "start" script, which must be `node <args>` so that the test can run the same command. */
function startCommand(): string[] {
  const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> };
  const [node, ...args] = (pkg.scripts.start ?? '').split(/\s+/);
  expect(node).toBe('node');
  expect(args.join(' ')).toContain('run examples/text-report/index.ts');
  return args;
}

interface Outcome {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `npm start`'s command; with `interruptAfter`, sends SIGINT once that many chunks are in the ledger. */
function runDemo(store: string, itemMs: number, interruptAfter?: number): Promise<Outcome> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, startCommand(), {
      cwd: ROOT,
      env: { ...process.env, CAIRN_STORE: `file:${store}`, CAIRN_DEMO_ITEM_MS: String(itemMs), NO_COLOR: '1', FORCE_COLOR: '' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    let armed = false;
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
      if (interruptAfter !== undefined && !armed && stderr.includes('▸ analyze: started')) {
        armed = true;
        const timer = setInterval(() => {
          if (ledgerKeys(store).length < interruptAfter) return;
          clearInterval(timer);
          child.kill('SIGINT');
        }, 20);
        child.on('close', () => clearInterval(timer));
      }
    });
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** The result the CLI printed after `Result:`. */
function resultOf(out: Outcome): { report: string; texts: number; chunks: number; words: number } {
  const at = out.stdout.indexOf('Result: ');
  expect(at, out.stdout).toBeGreaterThanOrEqual(0);
  return JSON.parse(out.stdout.slice(at + 'Result: '.length)) as { report: string; texts: number; chunks: number; words: number };
}

/** Keys of the analyze stage's item ledger, one line per recorded item (the file store's documented layout, ledger format 2). */
function ledgerKeys(store: string): string[] {
  const [runDir] = fs.existsSync(store) ? fs.readdirSync(store).filter((d) => d.startsWith('text-report-')) : [];
  if (runDir === undefined || !fs.existsSync(path.join(store, runDir))) return [];
  // complete lines only: the test also reads while the process is appending (every segment's ledger, in order)
  return fileLogs(store, runDir, 'items/analyze.chunks.jsonl')
    .flatMap((file) => fs.readFileSync(file, 'utf8').split('\n').slice(0, -1))
    .map((line) => JSON.parse(line) as { k?: string; i?: number; err?: unknown; t?: string })
    .filter((item) => item.t === undefined && item.err === undefined) // done items (format 2), not batch ends
    .map((item) => item.k ?? String(item.i));
}

it('completes, then prints the cached result without running a stage', { timeout: 60_000 }, async () => {
  try {
    const store = path.join(parent, 'complete');
    const first = await runDemo(store, 5);
    expect(first.code, first.stdout + first.stderr).toBe(0);
    expect(first.stdout).toMatch(/^Run text-report-[0-9a-f]{16} completed/);
    for (const stage of ['load', 'split', 'analyze', 'merge', 'report']) expect(first.stderr).toContain(`✓ ${stage}: completed`);
    const result = resultOf(first);
    expect(result).toMatchObject({ texts: 5, chunks: expect.any(Number), words: expect.any(Number) });
    expect(result.report.startsWith(store)).toBe(true);
    expect(fs.readFileSync(result.report, 'utf8')).toMatch(/^# Text report\n/);

    const cached = await runDemo(store, 5);
    expect(cached.code, cached.stdout + cached.stderr).toBe(0);
    expect(cached.stdout).toContain('was already complete');
    expect(cached.stdout).toContain('no stage ran');
    expect(cached.stderr).not.toContain('▸');
    expect(resultOf(cached)).toEqual(result);
  } catch (error) {
    failed = true;
    throw error;
  }
});

it('resumes after Ctrl-C without analyzing a finished chunk again', { timeout: 60_000 }, async () => {
  try {
    const reference = resultOf(await runDemo(path.join(parent, 'reference'), 1));
    const store = path.join(parent, 'interrupted');

    const first = await runDemo(store, 80, 6);
    expect(first.code, first.stdout + first.stderr).toBe(130);
    expect(first.stdout).toMatch(/interrupted during stage analyze\. Saved: 2 of 5 stage\(s\) and \d+ item result\(s\)\./);
    expect(first.stdout).toMatch(/Resume with: cairn resume text-report-[0-9a-f]{16}/);
    const saved = Number(/and (\d+) item result/.exec(first.stdout)?.[1]);
    const keysBefore = ledgerKeys(store);
    expect(keysBefore).toHaveLength(saved);
    expect(saved).toBeGreaterThan(0);
    expect(saved).toBeLessThan(reference.chunks);

    const second = await runDemo(store, 1);
    expect(second.code, second.stdout + second.stderr).toBe(0);
    expect(second.stderr).toContain('↷ load: skipped');
    expect(second.stderr).toContain('↷ split: skipped');
    expect(second.stderr).toContain(`analyze chunks: ${saved}/${reference.chunks}`);
    const keys = ledgerKeys(store);
    expect(keys.slice(0, saved)).toEqual(keysBefore);
    expect(keys).toHaveLength(reference.chunks);
    expect(new Set(keys).size).toBe(reference.chunks); // no chunk analyzed twice
    const result = resultOf(second);
    expect({ ...result, report: '' }).toEqual({ ...reference, report: '' });
    expect(fs.readFileSync(result.report, 'utf8')).toBe(fs.readFileSync(reference.report, 'utf8'));
  } catch (error) {
    failed = true;
    throw error;
  }
});
