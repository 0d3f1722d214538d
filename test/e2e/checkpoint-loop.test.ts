/**
 * The low-level CheckpointManager example (examples/checkpoint-loop) as a person uses it: run it,
 * press Ctrl-C (SIGINT) after two stages, run it again and see it resume, then once more and get
 * the cached result. The report must be byte-identical to an uninterrupted run's.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, expect, it } from 'vitest';

const DEMO = path.resolve(import.meta.dirname, '..', '..', 'dist', 'examples', 'checkpoint-loop', 'index.js');
const dirs: string[] = [];
afterAll(() => dirs.forEach((d) => fs.rmSync(d, { recursive: true, force: true })));

interface Outcome {
  code: number | null;
  out: string;
}

function runDemo(cwd: string, slowMs: number, interruptAfter?: string): Promise<Outcome> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [DEMO], {
      cwd,
      env: { ...process.env, CAIRN_DEMO_SLOW_MS: String(slowMs), CAIRN_STORE: '' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let sent = false;
    const onData = (chunk: Buffer): void => {
      out += chunk.toString();
      if (interruptAfter && !sent && out.includes(interruptAfter)) {
        sent = true;
        child.kill('SIGINT');
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('error', reject);
    child.on('exit', (code) => resolve({ code, out }));
  });
}

function tempDir(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-checkpoint-loop-'));
  dirs.push(dir);
  return dir;
}

it('resumes after Ctrl-C and returns the cached result once complete', { timeout: 60_000 }, async () => {
  const reference = tempDir();
  const clean = await runDemo(reference, 10);
  expect(clean.code, clean.out).toBe(0);
  const expected = fs.readFileSync(path.join(reference, 'data', 'demo-report.txt'));

  const cwd = tempDir();
  const first = await runDemo(cwd, 300, 'checkpoint demo-gettysburg:2');
  expect(first.code, first.out).toBe(130);
  expect(first.out).toContain('Interrupted during "count"');
  expect(fs.existsSync(path.join(cwd, 'data', 'demo-report.txt'))).toBe(false);

  const second = await runDemo(cwd, 10);
  expect(second.code, second.out).toBe(0);
  expect(second.out).toContain('Resuming from checkpoint demo-gettysburg:2');
  expect(second.out.match(/skipped: done before/g)).toHaveLength(2);
  expect(second.out).toContain('checkpoint demo-gettysburg:3');
  expect(fs.readFileSync(path.join(cwd, 'data', 'demo-report.txt'))).toEqual(expected);

  const third = await runDemo(cwd, 10);
  expect(third.code, third.out).toBe(0);
  expect(third.out).toContain('Already complete');
  expect(third.out).not.toContain('→ checkpoint');
});
