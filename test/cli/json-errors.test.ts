/**
 * A command given `--json` that fails before it could print its own document prints
 * `{ error: { code, message, exitCode } }` on stdout (the `error CODE:` line still goes to
 * stderr), so that a script parsing stdout learns why instead of reading nothing.
 */
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { cairn, errorCode, json, useTempDirs } from './store-ops-helpers.js';

const ROOT = path.resolve(import.meta.dirname, '..', '..');

interface ErrorDocument {
  error: { code: string; message: string; exitCode: number; context?: Record<string, unknown> };
}

describe('--json on failure', () => {
  const tempDir = useTempDirs();

  it('prints the error as JSON: an unknown run, a missing module, a missing store, an unknown option', async () => {
    const dir = tempDir();
    const cases: [string[], string, number][] = [
      [['show', 'nope', '--json', '--store', `file:${dir}/store`], 'NOT_FOUND', 2],
      [['run', path.join(dir, 'missing.ts'), '--json', '--store', `file:${dir}/store`], 'INVALID_INPUT', 2],
      [['list', '--json', '--store', `sqlite:${dir}/no/such.db`], 'NOT_FOUND', 2],
      [['list', '--json', '--bogus'], 'INVALID_INPUT', 2],
    ];
    for (const [args, code, exitCode] of cases) {
      const result = await cairn(args, { cwd: dir });
      expect(result.code, args.join(' ')).toBe(exitCode);
      const doc = json<ErrorDocument>(result);
      expect(doc.error).toMatchObject({ code, exitCode });
      expect(doc.error.message.length).toBeGreaterThan(0);
      if (code !== 'INVALID_INPUT' || args[0] !== 'list') expect(errorCode(result)).toBe(code); // the stderr line stays
    }
    // an unknown run: the error line says where to see the runs there are
    fs.mkdirSync(path.join(dir, 'store')); // an empty file store
    const unknown = await cairn(['show', 'nope', '--store', `file:${dir}/store`], { cwd: dir });
    expect(unknown.stderr).toBe(
      `error NOT_FOUND: Run nope not found in file:${dir}/store. (cairn list --store file:${dir}/store shows the runs there)\n`,
    );
  });

  it('a command that printed its own document prints no second one: a failed run prints its summary only', async () => {
    const dir = tempDir();
    fs.writeFileSync(
      path.join(dir, 'fail.ts'),
      `import { pipeline } from ${JSON.stringify(path.join(ROOT, 'dist', 'src', 'index.js'))};\n` +
        `export default pipeline('fails').stage('a', () => { throw new Error('boom'); });\n`,
    );
    const result = await cairn(['run', 'fail.ts', '--json', '--store', `file:${dir}/store`], { cwd: dir });
    expect(result.code).toBe(1);
    expect(json<{ status: string; error: { message: string } }>(result)).toMatchObject({ status: 'failed', error: { message: 'boom' } });
    const plain = await cairn(['show', 'nope', '--store', `file:${dir}/store`], { cwd: dir });
    expect([plain.code, plain.stdout]).toEqual([2, '']); // without --json, stdout stays empty
  });
});
