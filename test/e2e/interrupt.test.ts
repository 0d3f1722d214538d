/**
 * Interrupts on the user's path (issue 14, items 2 and 3), with real processes and real signals:
 * Ctrl-C gives in-flight items their whole grace period before `item.signal` aborts, so calls in
 * flight finish, are saved and are not paid again on resume; a second Ctrl-C exits at once and says
 * so; the drain (on a signal or at a stage's end) never waits out `flushIntervalMs`, and the
 * interrupt message says what the store holds.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Child, killAll } from './child.js';

const JOB = path.join(import.meta.dirname, 'fixtures', 'interrupt-job.mjs');
const dirs: string[] = [];
afterEach(() => {
  killAll();
  for (const dir of dirs.splice(0)) fs.rmSync(dir, { recursive: true, force: true });
});

function workDir(): { dir: string; url: string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-interrupt-'));
  dirs.push(dir);
  return { dir, url: `file:${path.join(dir, 'store')}` };
}

/** How many times each key's call started (calls.log). */
function starts(dir: string): Map<string, number> {
  const file = path.join(dir, 'calls.log');
  const counts = new Map<string, number>();
  if (!fs.existsSync(file)) return counts;
  for (const line of fs.readFileSync(file, 'utf8').split('\n').filter(Boolean)) {
    const key = line.slice('start '.length);
    counts.set(key, (counts.get(key) ?? 0) + 1);
  }
  return counts;
}

const keysOf = (child: Child, prefix: string): string[] =>
  child.lines.filter((l) => l.startsWith(prefix)).map((l) => l.slice(prefix.length));

async function summaryOf(child: Child): Promise<{ status: string; history: { event: string; message: string }[]; result?: string[] }> {
  return (await child.json('summary')) as never;
}

describe('interrupts', () => {
  it(
    'Ctrl-C lets the calls in flight finish within the grace period: they are saved and not paid again',
    { timeout: 120_000 },
    async () => {
      const { dir, url } = workDir();
      const first = new Child(JOB, [url, dir, '--item-ms=1500', '--grace-ms=60000']);
      for (let i = 0; i < 4; i++) await first.line(i); // four calls in flight (concurrency 4)
      expect(first.lines.every((l) => l.startsWith('started '))).toBe(true);
      first.kill('SIGINT');
      await first.expectExit(130);
      const inFlight = keysOf(first, 'started ');
      expect(inFlight.length).toBeGreaterThanOrEqual(4);
      // every call that started finished: none was cut off by item.signal
      expect(keysOf(first, 'done ').sort()).toEqual([...inFlight].sort());
      const stopped = await summaryOf(first);
      expect(stopped.status).toBe('interrupted');
      expect(stopped.history.at(-1)?.message).toMatch(
        new RegExp(`interrupted by SIGINT\\. Saved: 0 of 1 stage\\(s\\), ${inFlight.length} of 40 items of call/calls`),
      );

      const second = new Child(JOB, [url, dir, '--item-ms=1']);
      await second.expectExit(0);
      expect((await summaryOf(second)).status).toBe('completed');
      const counts = starts(dir);
      expect(counts.size).toBe(40);
      for (const key of inFlight) expect(counts.get(key), `${key} was paid again`).toBe(1);
      expect([...counts.values()].every((n) => n === 1)).toBe(true);
    },
  );

  it('a second Ctrl-C exits at once and says so', { timeout: 120_000 }, async () => {
    const { dir, url } = workDir();
    const child = new Child(JOB, [url, dir, '--item-ms=600000', '--grace-ms=600000']);
    await child.waitForLine('started ');
    child.kill('SIGINT');
    await child.waitForLine('got SIGINT');
    child.kill('SIGINT');
    const exit = await child.exit;
    expect(exit, child.stderr).toEqual({ code: 130, signal: null });
    expect(child.stderr).toMatch(/SIGINT again: exiting now without waiting for in-flight work/);
  });

  it(
    'SIGTERM with a long flushIntervalMs flushes at once: everything done is saved, and the process does not hang',
    { timeout: 120_000 },
    async () => {
      const { dir, url } = workDir();
      // a flush interval of 10 minutes: without an immediate drain, the exit would wait that long
      const first = new Child(JOB, [url, dir, '--item-ms=30', '--flush-interval-ms=600000']);
      for (let i = 0; ; i++) {
        const line = await first.line(i);
        if (keysOf(first, 'done ').length >= 12) break;
        void line;
      }
      first.kill('SIGTERM');
      await first.expectExit(143);
      const done = keysOf(first, 'done ');
      const stopped = await summaryOf(first);
      expect(stopped.status).toBe('interrupted');
      expect(stopped.history.at(-1)?.message).toContain(`${done.length} of 40 items of call/calls`);

      const second = new Child(JOB, [url, dir, '--item-ms=1', '--flush-interval-ms=600000']);
      await second.expectExit(0); // and the stage's end does not wait the interval either
      expect((await summaryOf(second)).result).toHaveLength(40);
      const counts = starts(dir);
      for (const key of done) expect(counts.get(key), `${key} was done before SIGTERM but ran again`).toBe(1);
    },
  );
});
