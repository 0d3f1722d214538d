/**
 * Issue 14, item 11, through the built binary: after a failed attempt, the resumed run's first
 * progress line for an items stage shows the earlier attempt's rate and an ETA (plain lines, off a
 * terminal), never `–/s ETA ?` until an item finishes.
 */
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { cairn, useTempDirs } from './store-ops-helpers.js';

const FIXTURE = path.join(import.meta.dirname, 'fixtures', 'eta-items.mjs');

describe('cairn run: progress of a resumed items stage', () => {
  const tempDir = useTempDirs();

  it('shows the earlier rate and an ETA from its first line', async () => {
    const dir = tempDir();
    const store = `file:${path.join(dir, 'store')}`;
    const failed = await cairn(['run', FIXTURE, '--store', store], { cwd: dir, env: { CAIRN_TEST_FAIL_AT: '15' } });
    expect(failed.code, failed.stderr).toBe(1);
    expect(failed.stderr).toMatch(/^ {2}work rows: 0\/30 0% –\/s ETA \?$/m); // a first attempt has nothing to go by

    const resumed = await cairn(['run', FIXTURE, '--store', store], { cwd: dir });
    expect(resumed.code, resumed.stderr).toBe(0);
    const lines = resumed.stderr.split('\n').filter((line) => line.startsWith('  work rows:'));
    expect(lines[0]).toMatch(/^ {2}work rows: 15\/30 50% [\d.]+\/s ETA \d+(ms|\.\ds|s)$/);
    expect(resumed.stderr).not.toContain('ETA ?');
  });
});
