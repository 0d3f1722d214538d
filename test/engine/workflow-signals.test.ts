/**
 * Ctrl-C and SIGTERM for real: a child process runs 200 slow items, gets the signal mid-run, must
 * finish and save its in-flight items and exit on its own with 130/143; a new process resumes and
 * redoes no item (each item's side effect, a line in a log file, appears exactly once).
 * Needs `npm run build` (the `pretest` script) — the fixture imports `dist/`.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { beforeEach, describe, expect, it } from 'vitest';
import { openStore } from '../../src/index.js';
import { ENGINE_STORES } from './store-matrix.js';

const FIXTURE = path.join(import.meta.dirname, 'fixtures', 'workflow-signal.mjs');
const DIST = path.join(import.meta.dirname, '..', '..', 'dist', 'src', 'index.js');
const ITEMS = 200;

interface ChildResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs the fixture; with `signal`, sends it once `signalAfter` side effects are in the log. */
function runFixture(url: string, kind: string, log: string, signal?: NodeJS.Signals, signalAfter = 40): Promise<ChildResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [FIXTURE, url, kind, log], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    let poll: NodeJS.Timeout | undefined;
    if (signal) {
      poll = setInterval(() => {
        if (logLines(log).length >= signalAfter) {
          clearInterval(poll);
          child.kill(signal);
        }
      }, 5);
    }
    child.on('error', reject);
    child.on('exit', (code, sig) => {
      clearInterval(poll);
      resolve({ code, signal: sig, stdout, stderr });
    });
  });
}

function logLines(log: string): string[] {
  try {
    return fs.readFileSync(log, 'utf8').split('\n').filter(Boolean);
  } catch {
    return [];
  }
}

function summaryOf(result: ChildResult): { id: string; status: string; result: unknown } {
  const line = result.stdout.trim().split('\n').at(-1) ?? '';
  try {
    return JSON.parse(line) as { id: string; status: string; result: unknown };
  } catch {
    throw new Error(`no summary from the child (exit ${result.code}/${result.signal}): ${result.stdout}\n${result.stderr}`);
  }
}

/** Keys recorded done in every ledger of the run. */
async function doneKeys(url: string, runId: string): Promise<string[]> {
  const store = await openStore(url);
  try {
    const keys: string[] = [];
    for (const ledger of await store.listLedgers(runId)) {
      for await (const entry of store.readItems(runId, ledger)) if (entry.status === 'done') keys.push(entry.key);
    }
    return keys;
  } finally {
    await store.close();
  }
}

const CASES = [
  { signal: 'SIGINT', code: 130, kind: 'workflow', store: 'file' },
  { signal: 'SIGTERM', code: 143, kind: 'pipeline', store: 'sqlite' },
  { signal: 'SIGTERM', code: 143, kind: 'workflow', store: 'sqlite' },
] as const;

describe('signals in a real process', () => {
  beforeEach(() => {
    if (!fs.existsSync(DIST)) throw new Error(`${DIST} is missing: run \`npm run build\` first (npm test does it).`);
  });

  it.each(CASES)('$signal on a $kind ($store store): exits $code, saved what it did, and the resume redoes nothing', async (c) => {
    const url = await ENGINE_STORES.find((k) => k.name === c.store)!.freshUrl();
    // next to the store, in the store matrix's temp folder (removed after the file)
    const log = path.join(fs.mkdtempSync(path.join(path.dirname(url.slice(url.indexOf(':') + 1)), 'signal-log-')), 'side-effects.log');

    const first = await runFixture(url, c.kind, log, c.signal);
    expect(first.signal, first.stderr).toBeNull(); // it exited by itself, not killed by the signal
    expect(first.code, first.stderr).toBe(c.code);
    const interrupted = summaryOf(first);
    expect(interrupted.status).toBe('interrupted');

    const effects = logLines(log);
    expect(effects.length).toBeGreaterThan(0);
    expect(effects.length).toBeLessThan(ITEMS);
    // items in flight at the signal finished their work before the process exited
    expect(new Set(logLines(`${log}.started`))).toEqual(new Set(effects));
    // every item whose side effect happened was saved as done (in-flight items finished), and only those
    const saved = await doneKeys(url, interrupted.id);
    expect(saved.length).toBe(effects.length);
    expect(new Set(saved)).toEqual(new Set(effects));

    const second = await runFixture(url, c.kind, log);
    expect(second.code, second.stderr).toBe(0);
    const done = summaryOf(second);
    expect(done.id).toBe(interrupted.id);
    expect(done.status).toBe('completed');
    const expectedTotal = Array.from({ length: ITEMS }, (_, i) => `item-${i}`.length).reduce((a, b) => a + b, 0);
    expect(done.result).toEqual({ total: expectedTotal });

    const all = logLines(log);
    expect(all).toHaveLength(ITEMS); // no item redone
    expect(new Set(all).size).toBe(ITEMS);
    expect((await doneKeys(url, done.id)).length).toBe(ITEMS);
  });
});
