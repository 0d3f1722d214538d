/**
 * The package works when installed elsewhere: `npm pack`, install the tarball into an empty
 * folder, then import it as ESM from JavaScript, type-check a TypeScript file against it, and run
 * the README's getting-started pipeline with the installed `cairn` command, and the starter project
 * `cairn init` writes (the same pipeline, with a tsconfig that type-checks it).
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, expect, it } from 'vitest';

const root = path.resolve(import.meta.dirname, '..', '..');
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-pack-'));
const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';
const quiet = {
  cwd: dir,
  stdio: 'pipe',
  encoding: 'utf8',
  env: { ...process.env, npm_config_loglevel: 'error', npm_config_fund: 'false', npm_config_audit: 'false' },
} as const;

afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

it('installs from its tarball and imports with types', { timeout: 180_000 }, () => {
  // --ignore-scripts: dist/ is already built by `npm test`'s pretest step
  const out = execFileSync(npm, ['pack', root, '--ignore-scripts', '--json', '--pack-destination', dir], quiet);
  const [{ filename, files }] = JSON.parse(out) as [{ filename: string; files: { path: string }[] }];
  const shipped = files.map((f) => f.path);
  expect(shipped).toContain('dist/src/index.js');
  expect(shipped).toContain('dist/src/index.d.ts');
  expect(shipped.some((f) => f.startsWith('test/') || f.startsWith('src/'))).toBe(false);

  fs.writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ name: 'consumer', private: true, type: 'module' }));
  execFileSync(npm, ['install', path.join(dir, filename), '--prefer-offline', '--no-package-lock'], quiet);

  const bin = path.join(dir, 'node_modules', '.bin', 'cairn');
  expect(execFileSync(bin, ['--version'], quiet).trim()).toBe(
    (JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')) as { version: string }).version,
  );

  fs.writeFileSync(
    path.join(dir, 'use.mjs'),
    `import { CheckpointManager } from 'cairnjs';
const cm = new CheckpointManager({ store: 'file:./cp' });
const ref = await cm.create('wf-1', { when: new Date(0), tags: new Set(['a']) }, { stage: 'merge' });
const back = await cm.load(ref.id);
console.log(JSON.stringify({ id: ref.id, when: back.state.when.toISOString(), tags: [...back.state.tags] }));
await cm.close();
`,
  );
  const printed = execFileSync(process.execPath, ['use.mjs'], quiet);
  expect(JSON.parse(printed)).toEqual({ id: 'wf-1:1', when: '1970-01-01T00:00:00.000Z', tags: ['a'] });

  fs.writeFileSync(
    path.join(dir, 'use.ts'),
    `import { CheckpointManager, type CheckpointRef, isCairnError } from 'cairnjs';
const cm = new CheckpointManager({ store: 'memory:' });
const ref: CheckpointRef = await cm.create('wf-1', { step: 1 });
const seq: number = ref.seq;
// @ts-expect-error workflowId is a string, not a number
const wrong: number = ref.workflowId;
export { seq, wrong, isCairnError };
`,
  );
  typeCheck('use.ts');

  // the README's first pipeline, as a user copies it, run by the installed command: it completes,
  // and type-checks under the tsconfig the README describes
  const readme = fs.readFileSync(path.join(root, 'README.md'), 'utf8');
  const job = /<!-- getting-started: job\.ts[^>]*-->\s*```ts\n([\s\S]*?)```/.exec(readme)?.[1];
  expect(job, 'the README has the getting-started job.ts block').toBeDefined();
  fs.writeFileSync(path.join(dir, 'job.ts'), job!);
  const result = execFileSync(bin, ['run', 'job.ts', '--quiet'], { ...quiet, env: { ...quiet.env, CAIRN_STORE: '' } });
  expect(result.trim()).toBe('ALPHA (0), BETA (1), GAMMA (2), DELTA (3), EPSILON (4)'); // --quiet prints a text result as it is
  typeCheck('job.ts');

  // `cairn init` writes that same pipeline with a tsconfig that type-checks it; run where it was written
  // (cairnjs resolves from the consumer's node_modules, one folder up)
  const init = JSON.parse(execFileSync(bin, ['init', 'starter', '--json'], quiet)) as { created: string[]; next: string[] };
  expect(init.created.sort()).toEqual(['.gitignore', 'job.ts', 'package.json', 'tsconfig.json']);
  const starter = path.join(dir, 'starter');
  expect(fs.readFileSync(path.join(starter, 'job.ts'), 'utf8')).toBe(job);
  const inStarter = { ...quiet, cwd: starter, env: { ...quiet.env, CAIRN_STORE: '' } };
  expect(execFileSync(bin, ['run', 'job.ts', '--quiet'], inStarter).trim()).toBe('ALPHA (0), BETA (1), GAMMA (2), DELTA (3), EPSILON (4)');
  execFileSync(process.execPath, [path.join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.json'], inStarter);
  expect(JSON.parse(fs.readFileSync(path.join(starter, 'package.json'), 'utf8'))).toMatchObject({
    type: 'module',
    dependencies: { cairnjs: expect.stringMatching(/^\^\d/) as unknown },
  });
});

/** Type-checks `file` in the consumer folder under the tsconfig the README describes; throws with the diagnostics. */
function typeCheck(file: string): void {
  const compilerOptions = {
    module: 'NodeNext',
    moduleResolution: 'NodeNext',
    target: 'ES2022',
    strict: true,
    noEmit: true,
    skipLibCheck: true,
  };
  fs.writeFileSync(path.join(dir, 'tsconfig.json'), JSON.stringify({ compilerOptions, files: [file] }));
  execFileSync(process.execPath, [path.join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.json'], quiet);
}
