/**
 * `cairn init` through the built binary: what it writes into an empty folder, that it never changes
 * a file that exists, what it advises when the folder already is a project, and a folder that is a
 * file (exit 2, nothing written). The starter itself is run from the packed tarball in pack.test.ts.
 */
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { cairn, errorCode, json, useTempDirs } from './store-ops-helpers.js';

interface InitReport {
  folder: string;
  created: string[];
  kept: string[];
  next: string[];
}

describe('cairn init', () => {
  const tempDir = useTempDirs();

  it('writes a starter project, then leaves every file as it is when run again', async () => {
    const cwd = tempDir();
    const first = await cairn(['init', 'my job'], { cwd });
    expect(first.code, first.stderr).toBe(0);
    expect(first.stdout).toContain('Created package.json, job.ts, tsconfig.json, .gitignore');
    expect(first.stdout).toContain("cd 'my job'");
    expect(first.stdout).toContain('npx cairn run job.ts');
    const folder = path.join(cwd, 'my job');
    const pkg = JSON.parse(fs.readFileSync(path.join(folder, 'package.json'), 'utf8')) as Record<string, unknown>;
    expect(pkg).toMatchObject({ name: 'my-job', type: 'module', private: true, scripts: { start: 'cairn run job.ts' } });
    expect(fs.readFileSync(path.join(folder, '.gitignore'), 'utf8')).toContain('data/');
    const tsconfig = JSON.parse(fs.readFileSync(path.join(folder, 'tsconfig.json'), 'utf8')) as {
      compilerOptions: Record<string, unknown>;
    };
    expect(tsconfig.compilerOptions).toMatchObject({ module: 'NodeNext', strict: true });

    fs.writeFileSync(path.join(folder, 'job.ts'), '// mine\n');
    const before = new Map(fs.readdirSync(folder).map((f) => [f, fs.readFileSync(path.join(folder, f), 'utf8')]));
    const again = await cairn(['init', '--json'], { cwd: folder });
    expect(again.code, again.stderr).toBe(0);
    const report = json<InitReport>(again);
    expect(report.created).toEqual([]);
    expect(report.kept.sort()).toEqual(['.gitignore', 'job.ts', 'package.json', 'tsconfig.json']);
    expect(report.next).toEqual(['npm install', 'npx cairn run job.ts', 'npx cairn list']);
    const after = new Map(fs.readdirSync(folder).map((f) => [f, fs.readFileSync(path.join(folder, f), 'utf8')]));
    expect(after).toEqual(before);
  });

  it('in a project that does not depend on cairnjs yet, says to install it', async () => {
    const cwd = tempDir();
    fs.writeFileSync(path.join(cwd, 'package.json'), JSON.stringify({ name: 'app', dependencies: { zod: '^4' } }));
    const result = await cairn(['init', '--json'], { cwd });
    expect(result.code, result.stderr).toBe(0);
    const report = json<InitReport>(result);
    expect(report.kept).toEqual(['package.json']);
    expect(report.created.sort()).toEqual(['.gitignore', 'job.ts', 'tsconfig.json']);
    expect(report.next[0]).toBe('npm install cairnjs');
  });

  it('refuses a folder that is a file: exit 2, nothing written', async () => {
    const cwd = tempDir();
    fs.writeFileSync(path.join(cwd, 'taken'), 'x');
    const result = await cairn(['init', 'taken'], { cwd });
    expect(result.code).toBe(2);
    expect(errorCode(result)).toBe('INVALID_INPUT');
    expect(fs.readdirSync(cwd)).toEqual(['taken']);
  });
});
