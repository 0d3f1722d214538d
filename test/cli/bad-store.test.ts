/**
 * Store URLs and paths that cannot work are bad input (exit 2, `error CODE:`) and create nothing;
 * commands that only read what is stored never create a store.
 */
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { cairn, errorCode, useTempDirs } from './store-ops-helpers.js';

const FIXTURES = path.join(import.meta.dirname, 'fixtures');

/** Every path under `dir`, relative, sorted. */
function tree(dir: string): string[] {
  return (fs.readdirSync(dir, { recursive: true }) as string[]).sort();
}

describe('bad store URLs and paths', () => {
  const tempDir = useTempDirs();

  it('a device, an over-long name and an unknown SQLite option: exit 2 with INVALID_STORE_URL, nothing created', async () => {
    const dir = tempDir();
    const long = `file:${path.join(dir, 'x'.repeat(300))}`;
    const cases: [string[], RegExp][] = [
      [['list', '--store', 'file:/dev/null'], /\/dev\/null is a device or special file, not the folder of a file store/],
      [['run', path.join(FIXTURES, 'hello.mjs'), '--store', long], /is 300 bytes; a file or folder name takes at most 255/],
      [['list', '--store', 'sqlite:s.db?synchronous=BOGUS'], /an option SQLite stores do not take \("synchronous=BOGUS"\)/],
      [['run', path.join(FIXTURES, 'hello.mjs'), '--store', `sqlite:${path.join(dir, 'a.db')}?cache=shared`], /do not take/],
    ];
    for (const [args, message] of cases) {
      const out = await cairn(args, { cwd: dir });
      expect([out.code, errorCode(out)], out.stderr).toEqual([2, 'INVALID_STORE_URL']);
      expect(out.stderr).toMatch(message);
      expect(out.stderr.trim().split('\n')).toHaveLength(1);
    }
    expect(tree(dir)).toEqual([]);
  });

  it('run makes a store that is not there, and says so first (a mistyped --store is seen at once)', async () => {
    const dir = tempDir();
    for (const [url, where] of [
      [`sqlite:${path.join(dir, 'runz.db')}`, path.join(dir, 'runz.db')],
      [`file:${path.join(dir, 'store')}`, path.join(dir, 'store')],
    ] as const) {
      const first = await cairn(['run', path.join(FIXTURES, 'hello.mjs'), '--store', url], { cwd: dir });
      expect(first.code, first.stderr).toBe(0);
      expect(first.stderr.split('\n')[0]).toBe(`New store: ${where} did not exist; this run makes it.`);
      const again = await cairn(['run', path.join(FIXTURES, 'hello.mjs'), '--store', url], { cwd: dir });
      expect(again.code, again.stderr).toBe(0);
      expect(again.stderr).not.toContain('New store');
    }
    // --json and --quiet print their one document or result, nothing else
    const quiet = await cairn(['run', path.join(FIXTURES, 'hello.mjs'), '--json', '--store', `file:${path.join(dir, 'other')}`], {
      cwd: dir,
    });
    expect([quiet.code, quiet.stderr]).toEqual([0, '']);
  });

  it('list, show, validate, export, cancel and fork never create a store: NOT_FOUND naming the path', async () => {
    const dir = tempDir();
    const stores = [`file:${path.join(dir, 'none')}`, `sqlite:${path.join(dir, 'no', 'such', 'dir', 'x.db')}`];
    for (const store of stores) {
      for (const args of [
        ['list'],
        ['show', 'some-run'],
        ['validate', '--all'],
        ['export', 'some-run', path.join(dir, 'out.cairn')],
        ['cancel', 'some-run'],
        ['fork', 'some-run', '--from', '1'],
      ]) {
        const out = await cairn([...args, '--store', store], { cwd: dir });
        expect([out.code, errorCode(out)], `${args.join(' ')} ${store}: ${out.stderr}`).toEqual([2, 'NOT_FOUND']);
        expect(out.stderr).toMatch(/^error NOT_FOUND: No store at \S+ \(.+\): nothing was created\. Check --store or \$CAIRN_STORE\.$/m);
      }
    }
    expect(tree(dir)).toEqual([]);
  });

  it('?synchronous=NORMAL is the SQLite option it says it is: the database file has the plain name', async () => {
    const dir = tempDir();
    const out = await cairn(
      ['run', path.join(FIXTURES, 'hello.mjs'), '--store', `sqlite:${path.join(dir, 's.db')}?synchronous=NORMAL`, '--quiet'],
      {
        cwd: dir,
      },
    );
    expect(out.code, out.stderr).toBe(0);
    expect(tree(dir).filter((f) => !f.includes('artifacts'))).toEqual(expect.arrayContaining(['s.db']));
    expect(tree(dir).some((f) => f.includes('?'))).toBe(false);
  });
});
