/**
 * `cairn list --detailed` and `cairn show` name a run's input (shortened), so that runs of one
 * definition with hash ids can be told apart.
 */
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { Cairn, pipeline } from '../../src/index.js';
import { cairn, json, useTempDirs } from './store-ops-helpers.js';

describe('the input in list --detailed and show', () => {
  const tempDir = useTempDirs();

  it("shows each run's input, cut to fit", async () => {
    const url = `file:${path.join(tempDir(), 'store')}`;
    const app = new Cairn({ store: url, handleSignals: false });
    const def = pipeline('talk').stage('one', () => 1);
    const short = await app.run(def, { file: 'talk-1.wav' });
    const long = await app.run(def, { file: 'x'.repeat(100) });
    await app.close();

    const list = await cairn(['list', '--detailed', '--store', url]);
    expect(list.code, list.stderr).toBe(0);
    expect(list.stdout).toMatch(/INPUT/);
    expect(list.stdout).toContain('{"file":"talk-1.wav"}');
    expect(list.stdout).toMatch(/\{"file":"x{20,}…/);

    const show = await cairn(['show', short.id, '--store', url]);
    expect(show.stdout).toMatch(/^Input +\{"file":"talk-1\.wav"\}$/m);
    expect(json<{ input: unknown }>(await cairn(['show', long.id, '--json', '--store', url])).input).toEqual({ file: 'x'.repeat(100) });
  });
});
