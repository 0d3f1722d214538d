/**
 * `cairn run` and `cairn resume`, through the built binary (`node dist/src/cli/main.js`): stdout,
 * stderr, `--json`, `--quiet` and exit codes. Every test has its own temp dir as the working
 * directory and its store there (`--store file:<tmp>/store`); it is kept when the test fails.
 * The fixtures (test/cli/fixtures) append what they ran to $CAIRN_TEST_LOG, so that a test can
 * tell what ran again.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it, type TestContext } from 'vitest';
import { fileLog } from '../helpers.js';

const ROOT = path.resolve(import.meta.dirname, '..', '..');
const CLI = path.join(ROOT, 'dist', 'src', 'cli', 'main.js');
const FIXTURES = path.join(import.meta.dirname, 'fixtures');
const fixture = (name: string): string => path.join(FIXTURES, name);
const SCRIPT = ['/usr/bin/script', '/bin/script'].find((p) => fs.existsSync(p));
const VERSION = (JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;

interface CliResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

interface SpawnOptions {
  readonly env?: Record<string, string>;
  /** Called with the child once it is started (to send it a signal). */
  readonly onSpawn?: (kill: (signal: NodeJS.Signals) => void) => void;
}

interface Workspace {
  readonly dir: string;
  readonly store: string;
  readonly log: string;
  /** `cairn <args>` in the workspace; `run`/`resume` get `--store` appended. */
  cairn(args: readonly string[], options?: SpawnOptions): Promise<CliResult>;
  /** Lines the fixtures appended to the log. */
  logLines(): string[];
}

function environment(dir: string, extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    CAIRN_STORE: '',
    CAIRN_TEST_LOG: path.join(dir, 'effects.log'),
    NO_COLOR: '1',
    ...extra,
  };
  delete env.FORCE_COLOR;
  return env;
}

function spawnCli(args: readonly string[], cwd: string, env: NodeJS.ProcessEnv, onSpawn?: SpawnOptions['onSpawn']): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
    onSpawn?.((signal) => child.kill(signal));
  });
}

function workspace(ctx: TestContext): Workspace {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-cli-run-'));
  ctx.onTestFinished(({ task }) => {
    if (task.result?.state === 'fail') console.error(`${task.name}: kept ${dir}`);
    else fs.rmSync(dir, { recursive: true, force: true });
  });
  const store = path.join(dir, 'store');
  const log = path.join(dir, 'effects.log');
  return {
    dir,
    store,
    log,
    cairn: (args, options = {}) => {
      const withStore = args[0] === 'run' || args[0] === 'resume' ? [...args, '--store', `file:${store}`] : args;
      return spawnCli(withStore, dir, environment(dir, options.env), options.onSpawn);
    },
    logLines: () => (fs.existsSync(log) ? fs.readFileSync(log, 'utf8').split('\n').filter(Boolean) : []),
  };
}

/** Waits until `check` holds (polling), or fails after `timeoutMs`. */
async function until(check: () => boolean, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error('timed out waiting for a condition');
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** A run summary as `--json` prints it (the fields the tests read; the rest is checked with toMatchObject). */
interface Summary {
  readonly id: string;
  readonly stages: readonly { readonly name: string; readonly status: string; readonly items?: unknown }[];
  readonly attempts: readonly { readonly outcome?: string }[];
  readonly [key: string]: unknown;
}
const json = (out: CliResult): Summary => JSON.parse(out.stdout) as Summary;
const show = (out: CliResult): string => `exit ${out.code}\n--- stdout\n${out.stdout}\n--- stderr\n${out.stderr}`;
const SUMMARY_KEYS = ['id', 'name', 'kind', 'status', 'stages', 'attempts', 'history'];

describe.concurrent('cairn run: modules', () => {
  it('runs a .ts module through tsx (importing cairnjs) and prints progress and the result', async (ctx) => {
    const { expect } = ctx;
    const ws = workspace(ctx);
    const out = await ws.cairn(['run', fixture('counter.ts'), '--input', '{"n":3}']);
    expect(out.code, show(out)).toBe(0);
    expect(out.stdout).toMatch(/^Run counter-[0-9a-f]{16} completed \(.+\)\.\nResult: \{\n {2}"total": 14\n\}\n$/);
    for (const stage of ['prepare', 'square', 'total']) expect(out.stderr).toContain(`✓ ${stage}: completed`);
    expect(out.stderr).toContain('square numbers: 3/3 100%');
    expect(ws.logLines()).toEqual(['stage prepare', 'stage square', 'item 0', 'item 1', 'item 2', 'stage total']);
  });

  it('runs .mjs and .js modules', async (ctx) => {
    const { expect } = ctx;
    const ws = workspace(ctx);
    const [mjs, js] = await Promise.all([
      ws.cairn(['run', fixture('hello.mjs'), '--input', '{"name":"ada"}', '--quiet']),
      ws.cairn(['run', fixture('hello.js'), '--quiet']),
    ]);
    expect(mjs.code, show(mjs)).toBe(0);
    expect(JSON.parse(mjs.stdout)).toEqual({ greeting: 'hello ada from mjs' });
    expect(js.code, show(js)).toBe(0);
    expect(JSON.parse(js.stdout)).toEqual({ greeting: 'hello from js' });
  });

  it('--pipeline picks an export by its name, or by the definition name', async (ctx) => {
    const { expect } = ctx;
    const ws = workspace(ctx);
    const byExport = await ws.cairn(['run', fixture('counter.ts'), '--pipeline', 'shout', '--json']);
    expect(byExport.code, show(byExport)).toBe(0);
    expect(json(byExport)).toMatchObject({ name: 'shouter', status: 'completed', result: 'HELLO', source: { exportName: 'shout' } });
    const byName = await ws.cairn(['run', fixture('counter.ts'), '--pipeline', 'shouter', '--force-restart', '--quiet']);
    expect(byName.code, show(byName)).toBe(0);
    expect(byName.stdout).toBe('HELLO\n');
    expect(ws.logLines()).toEqual(['stage say', 'stage say']);
  });

  it('a module without a default definition, or without the named one: exit 2 listing its definitions', async (ctx) => {
    const { expect } = ctx;
    const ws = workspace(ctx);
    const [noDefault, noSuchName] = await Promise.all([
      ws.cairn(['run', fixture('no-default.mjs')]),
      ws.cairn(['run', fixture('counter.ts'), '--pipeline', 'nope']),
    ]);
    expect(noDefault.code, show(noDefault)).toBe(2);
    expect(noDefault.stdout).toBe('');
    expect(noDefault.stderr).toMatch(/^error INVALID_INPUT: Module .*no-default\.mjs has no default export/);
    expect(noDefault.stderr).toContain('first (pipeline first-pipeline), second (workflow second-workflow)');
    expect(noDefault.stderr).not.toContain('notADefinition');
    expect(noDefault.stderr.trim().split('\n')).toHaveLength(1);
    expect(noSuchName.code, show(noSuchName)).toBe(2);
    expect(noSuchName.stderr).toContain(
      'exports no definition named nope. It exports: default (pipeline counter), shout (pipeline shouter)',
    );
  });

  it('a missing module: exit 2', async (ctx) => {
    const { expect } = ctx;
    const ws = workspace(ctx);
    const out = await ws.cairn(['run', 'missing.ts']);
    expect(out.code, show(out)).toBe(2);
    expect(out.stderr).toBe(`error INVALID_INPUT: Module ${path.join(fs.realpathSync(ws.dir), 'missing.ts')} does not exist.\n`);
    expect(fs.existsSync(ws.store)).toBe(false);
  });
});

describe.concurrent('cairn run: a completed run, run ids and input', () => {
  it('a second run prints the cached result at once, no stage runs; --force-restart runs it all again', async (ctx) => {
    const { expect } = ctx;
    const ws = workspace(ctx);
    const first = await ws.cairn(['run', fixture('counter.ts'), '--json']);
    expect(first.code, show(first)).toBe(0);
    const ranOnce = ws.logLines();
    expect(ranOnce).toHaveLength(6);

    const again = await ws.cairn(['run', fixture('counter.ts')]);
    expect(again.code, show(again)).toBe(0);
    expect(again.stdout).toContain(`Run ${json(first).id} was already complete`);
    expect(again.stdout).toContain('"total": 14');
    expect(again.stderr).toBe(''); // no stage started, skipped or redrawn
    expect(ws.logLines()).toEqual(ranOnce);

    const restarted = await ws.cairn(['run', fixture('counter.ts'), '--force-restart', '--json']);
    expect(restarted.code, show(restarted)).toBe(0);
    expect(json(restarted)).toMatchObject({ id: json(first).id, status: 'completed', result: { total: 14 } });
    expect(json(restarted).attempts).toHaveLength(1);
    expect(ws.logLines()).toEqual([...ranOnce, ...ranOnce]);
  });

  it('--run-id overrides the derived id; the same id with another input is refused', async (ctx) => {
    const { expect } = ctx;
    const ws = workspace(ctx);
    const out = await ws.cairn(['run', fixture('counter.ts'), '--run-id', 'my-run.1', '--json']);
    expect(out.code, show(out)).toBe(0);
    expect(json(out).id).toBe('my-run.1');
    expect(fs.existsSync(fileLog(ws.store, 'my-run.1', 'run.jsonl'))).toBe(true);
    const other = await ws.cairn(['run', fixture('counter.ts'), '--run-id', 'my-run.1', '--input', '{"n":9}']);
    expect(other.code, show(other)).toBe(2);
    expect(other.stderr).toMatch(/^error INVALID_INPUT: .*my-run\.1/);
  });

  it('--input takes JSON or @file (relative to the working directory)', async (ctx) => {
    const { expect } = ctx;
    const ws = workspace(ctx);
    fs.writeFileSync(path.join(ws.dir, 'four.json'), '{ "n": 4 }\n');
    fs.writeFileSync(path.join(ws.dir, 'five.json'), '{"n":5}');
    const inline = await ws.cairn(['run', fixture('counter.ts'), '--input', '{"n":4}', '--json']);
    expect(inline.code, show(inline)).toBe(0);
    expect(json(inline).result).toEqual({ total: 30 });
    const sameFromFile = await ws.cairn(['run', fixture('counter.ts'), '--input', '@four.json', '--json']);
    expect(json(sameFromFile)).toMatchObject({ id: json(inline).id, result: { total: 30 } }); // same input, same run: cached
    const five = await ws.cairn(['run', fixture('counter.ts'), '--input', '@five.json', '--quiet']);
    expect(five.code, show(five)).toBe(0);
    expect(JSON.parse(five.stdout)).toEqual({ total: 55 });
    expect(ws.logLines().filter((l) => l === 'stage total')).toHaveLength(2);
  });

  it('malformed --input: exit 2, nothing runs', async (ctx) => {
    const { expect } = ctx;
    const ws = workspace(ctx);
    const outs = await Promise.all([
      ws.cairn(['run', fixture('counter.ts'), '--input', '{n:3']),
      ws.cairn(['run', fixture('counter.ts'), '--input', '@missing.json']),
      ws.cairn(['resume', 'counter-1', '--input', 'no-equals-sign']),
    ]);
    for (const out of outs) {
      expect(out.code, show(out)).toBe(2);
      expect(out.stderr).toMatch(/^error INVALID_INPUT: /);
      expect(out.stderr.trim().split('\n')).toHaveLength(1);
    }
    expect(outs[0]?.stderr).toContain('--input must be JSON');
    expect(outs[1]?.stderr).toContain('Cannot read the input file missing.json');
    expect(outs[2]?.stderr).toContain('--input expects name=value');
    expect(ws.logLines()).toEqual([]);
  });

  it('--input approval=true on run points to resume; a file that is not JSON is named, never echoed', async (ctx) => {
    const { expect } = ctx;
    const ws = workspace(ctx);
    const secret = path.join(ws.dir, 'secret.txt');
    fs.writeFileSync(secret, 'root:$6$very-secret-hash:19000:0:99999:7:::\n');
    const [answer, file] = await Promise.all([
      ws.cairn(['run', fixture('counter.ts'), '--input', 'approval=true']),
      ws.cairn(['run', fixture('counter.ts'), '--input', `@${secret}`]),
    ]);
    expect(answer.code, show(answer)).toBe(2);
    expect(answer.stderr).toContain('To answer a run waiting for approval, use: cairn resume <run-id> --input approval=true');
    expect(file.code, show(file)).toBe(2);
    expect(file.stderr).toBe(`error INVALID_INPUT: --input @file must hold JSON: ${secret} does not.\n`);
    expect(file.stderr).not.toContain('secret-hash');
  });

  it('a module that does not parse or throws while loading: exit 2, one line naming file:line:column; --verbose shows the user stack', async (ctx) => {
    const { expect } = ctx;
    const ws = workspace(ctx);
    const write = (name: string, text: string): string => {
      const file = path.join(ws.dir, name);
      fs.writeFileSync(file, text);
      return file;
    };
    write('package.json', '{ "type": "module" }\n'); // an ES module project, as cairnjs needs
    const broken = 'export const a = 1;\nconst x = ;\n';
    const throwing = 'export const a = 1;\nfunction boom() {\n  throw new Error("config missing");\n}\nboom();\n';
    const cases = [
      [write('syntax.ts', broken), /failed to load: syntax error: Unexpected ";" at \S+syntax\.ts:2:11\.$/],
      [write('syntax.mjs', broken), /failed to load: syntax error: Unexpected token ';' at \S+syntax\.mjs:2:11\.$/],
      [write('throws.ts', throwing), /failed to load: config missing at \S+throws\.ts:3:9\.$/],
      [write('throws.mjs', throwing), /failed to load: config missing at \S+throws\.mjs:3:9\.$/],
    ] as const;
    for (const [file, expected] of cases) {
      const out = await ws.cairn(['run', file]);
      expect(out.code, show(out)).toBe(2);
      expect(out.stderr.trim().split('\n'), show(out)).toHaveLength(1);
      expect(out.stderr.trim()).toMatch(expected);
    }
    const verbose = await ws.cairn(['run', path.join(ws.dir, 'throws.ts'), '--verbose']);
    const lines = verbose.stderr.trim().split('\n');
    expect(lines[1]).toBe('Error: config missing');
    expect(lines[2]).toMatch(/^ {4}at boom \(\S+throws\.ts:3:9\)$/);
    expect(ws.logLines()).toEqual([]);
  });

  it('a CommonJS project (no "type": "module") runs a .ts module and a .cjs one', async (ctx) => {
    const { expect } = ctx;
    const ws = workspace(ctx);
    const project = path.join(ws.dir, 'project');
    fs.mkdirSync(path.join(project, 'node_modules'), { recursive: true });
    fs.symlinkSync(ROOT, path.join(project, 'node_modules', 'cairnjs'));
    fs.writeFileSync(path.join(project, 'package.json'), '{ "name": "my-job", "version": "1.0.0" }\n'); // as `npm init -y` writes it
    fs.writeFileSync(
      path.join(project, 'job.ts'),
      "import { pipeline } from 'cairnjs';\nexport const other = pipeline('other').stage('s', () => 2);\nexport default pipeline('job').stage('s', () => 1);\n",
    );
    fs.writeFileSync(
      path.join(project, 'job.cjs'),
      "const { pipeline } = require('cairnjs');\nmodule.exports = pipeline('cjs-job').stage('s', () => 3);\n",
    );
    const store = `file:${ws.store}`;
    const outs = [
      await ws.cairn(['run', path.join(project, 'job.ts'), '--quiet', '--store', store]),
      await ws.cairn(['run', path.join(project, 'job.ts'), '--pipeline', 'other', '--quiet', '--store', store]),
      await ws.cairn(['run', path.join(project, 'job.cjs'), '--quiet', '--store', store]),
    ];
    expect(
      outs.map((out) => `${out.code} ${out.stdout.trim()}`),
      outs.map(show).join('\n'),
    ).toEqual(['0 1', '0 2', '0 3']);
  });

  it('input its schema refuses: exit 2 naming the problem, and no run is created (pipeline, workflow, submit)', async (ctx) => {
    const { expect } = ctx;
    const ws = workspace(ctx);
    const db = `sqlite:${path.join(ws.dir, 'queue.db')}`;
    const outs = [
      await ws.cairn(['run', fixture('validated.mjs'), '--input', '{"n":"three"}']),
      await ws.cairn(['run', fixture('validated.mjs'), '--pipeline', 'flow', '--input', '{"n":"three"}']),
      await ws.cairn(['submit', fixture('validated.mjs'), '--input', '{"n":"three"}', '--store', db]),
    ];
    for (const out of outs) {
      expect(out.code, show(out)).toBe(2);
      // (a first run on a store says, on a line before, that it makes the store)
      expect(out.stderr).toMatch(
        /^(New store: .*\n)?error INVALID_INPUT: Input of validated-(pipeline|flow) is invalid: n must be a number/,
      );
    }
    // a zod schema's refusal names each field and what is wrong with it, on the one error line
    const zodded = await ws.cairn(['run', fixture('validated.mjs'), '--pipeline', 'zodded', '--input', '{"cnt":5}']);
    expect(zodded.code, show(zodded)).toBe(2);
    expect(zodded.stderr).toMatch(
      /^error INVALID_INPUT: Input of validated-zod is invalid: count: .*expected number.*; seed: .*expected number/,
    );
    expect(zodded.stderr.trim().split('\n')).toHaveLength(1);
    for (const store of [`file:${ws.store}`, db]) {
      const list = await ws.cairn(['list', '--json', '--store', store]);
      expect(list.code, show(list)).toBe(0);
      expect(JSON.parse(list.stdout)).toEqual([]);
    }
    const good = await ws.cairn(['run', fixture('validated.mjs'), '--input', '{"n":3}', '--quiet']);
    expect(good.code, show(good)).toBe(0);
    expect(good.stdout.trim()).toBe('6');
  });
});

/**
 * `cairn <args>` with stdout a pipe nobody reads until the command is done (or a second has passed,
 * whichever comes first): the pipe fills at 64 KiB and the rest waits in the process.
 */
function slowReader(ws: Workspace, args: readonly string[]): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { cwd: ws.dir, env: environment(ws.dir), stdio: ['ignore', 'pipe', 'pipe'] });
    const chunks: Buffer[] = [];
    let stderr = '';
    child.stdout.pause();
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    let reading = false;
    const startReading = (): void => {
      if (reading) return;
      reading = true;
      child.stdout.on('data', (chunk: Buffer) => chunks.push(chunk)).resume();
    };
    const timer = setTimeout(startReading, 1000);
    child.on('exit', () => {
      clearTimeout(timer);
      startReading();
    });
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout: Buffer.concat(chunks).toString('utf8'), stderr }));
  });
}

describe.concurrent('cairn run / show / list: output through a slow pipe', () => {
  it('more than 1 MiB of --json and --quiet output arrives whole through a pipe read late', async (ctx) => {
    const { expect } = ctx;
    const ws = workspace(ctx);
    const store = `file:${ws.store}`;
    const run = await slowReader(ws, ['run', fixture('big-result.mjs'), '--json', '--store', store]);
    expect(run.code, show(run)).toBe(0);
    expect(run.stdout.length).toBeGreaterThan(1024 * 1024);
    const summary = JSON.parse(run.stdout) as { id: string; result: string[] };
    expect(summary.result).toHaveLength(3000);
    expect(summary.result.at(-1)).toMatch(/^002999 x{493}$/);

    const shown = await slowReader(ws, ['show', summary.id, '--json', '--store', store]);
    expect(shown.code, show(shown)).toBe(0);
    expect((JSON.parse(shown.stdout) as { result: string[] }).result).toHaveLength(3000);

    const quiet = await slowReader(ws, ['run', fixture('big-result.mjs'), '--quiet', '--store', store]);
    expect(quiet.code, show(quiet)).toBe(0);
    expect(JSON.parse(quiet.stdout)).toHaveLength(3000);

    // the report cuts a long result and says how to see all of it, with the run's real id and store
    const report = await slowReader(ws, ['run', fixture('big-result.mjs'), '--store', store]);
    expect(report.stdout).toMatch(/characters; cairn show big-result-[0-9a-f]{16} --json --store file:\S+ for all\)\n$/);
  });
});

describe.concurrent('cairn run: what stages print, and results JSON cannot hold as they are', () => {
  it("--json and --quiet keep stdout to the one document (a stage's console.log goes to stderr); a circular result prints", async (ctx) => {
    const { expect } = ctx;
    const ws = workspace(ctx);
    const asJson = await ws.cairn(['run', fixture('chatty.mjs'), '--json']);
    expect(asJson.code, show(asJson)).toBe(0);
    expect(asJson.stderr).toContain('hello from the stage');
    expect(json(asJson).result).toEqual({ name: 'root', counts: { a: 1 }, big: '12345678901234567890', self: '[Circular]' });

    const quiet = await ws.cairn(['run', fixture('chatty.mjs'), '--quiet']);
    expect(JSON.parse(quiet.stdout)).toMatchObject({ name: 'root', self: '[Circular]' });
    const list = await ws.cairn(['list', '--json', '--store', `file:${ws.store}`]);
    expect(list.code, show(list)).toBe(0);
    expect(JSON.parse(list.stdout)).toHaveLength(1);

    const report = await ws.cairn(['run', fixture('chatty.mjs')]);
    expect(report.stdout).toContain('"self": "[Circular]"');
    expect(report.stdout).not.toContain('[object Object]');
  });

  it('SIGTERM during a run: exit 143, as the README says', async (ctx) => {
    const { expect } = ctx;
    const ws = workspace(ctx);
    const out = await ws.cairn(['run', fixture('slow-items.mjs')], {
      env: { CAIRN_TEST_ITEM_MS: '60' },
      onSpawn: (kill) => void until(() => ws.logLines().length >= 2).then(() => kill('SIGTERM')),
    });
    expect(out.code, show(out)).toBe(143);
    expect(out.stdout).toMatch(/was interrupted during stage work/);
  });
});

describe.concurrent('cairn run / resume: failed and waiting runs', () => {
  it('a failing stage: exit 1 and a report naming the stage and code; resume after the fix runs only what is left', async (ctx) => {
    const { expect } = ctx;
    const ws = workspace(ctx);
    const failed = await ws.cairn(['run', fixture('flaky.mjs')]);
    expect(failed.code, show(failed)).toBe(1);
    const [line, hint] = failed.stdout.split('\n');
    // the place in the user's code is named (the throw in fixtures/flaky.mjs, line 15)
    expect(line).toMatch(
      /^Run flaky-[0-9a-f]{16} failed in stage second: E_FLAKY: the service is down \(at \S+\/fixtures\/flaky\.mjs:15:\d+\)$/,
    );
    const id = /^Run (\S+) failed/.exec(line ?? '')?.[1] ?? '';
    // hints carry the --store the command was given, so they can be pasted as they are
    const store = `--store file:${ws.store}`;
    expect(hint).toBe(`Saved: 1 of 3 stage(s). Fix the cause, then: cairn resume ${id} ${store}   (details: cairn show ${id} ${store})`);
    expect(failed.stderr).toContain('✗ second: E_FLAKY: the service is down');
    expect(failed.stderr).not.toMatch(/^error/m); // a failed run is a result, not a CLI error
    expect(failed.stderr).not.toContain('    at '); // no stack trace

    const asJson = await ws.cairn(['resume', id, '--json']); // still broken: fails again
    expect(asJson.code, show(asJson)).toBe(1);
    const summary = json(asJson);
    for (const key of [...SUMMARY_KEYS, 'error']) expect(summary).toHaveProperty(key);
    expect(summary).toMatchObject({ id, status: 'failed', error: { code: 'E_FLAKY', stage: 'second' } });
    expect(summary).not.toHaveProperty('result');

    const fixed = await ws.cairn(['resume', id], { env: { CAIRN_TEST_FIXED: '1' } });
    expect(fixed.code, show(fixed)).toBe(0);
    expect(fixed.stdout).toContain(`Run ${id} completed`);
    expect(fixed.stdout).toContain('"value": 42');
    expect(fixed.stderr).toContain('↷ first: skipped (completed earlier');
    expect(ws.logLines()).toEqual(['stage first', 'stage second', 'stage second', 'stage second', 'stage third']);
  });

  it('a waiting workflow: exit 3 with the resume hint; approval=true and approval=false take their edges', async (ctx) => {
    const { expect } = ctx;
    const ws = workspace(ctx);
    const [a, b] = await Promise.all([
      ws.cairn(['run', fixture('approval.mjs'), '--input', '{"ticket":"A"}']),
      ws.cairn(['run', fixture('approval.mjs'), '--input', '{"ticket":"B"}', '--json']),
    ]);
    expect(a.code, show(a)).toBe(3);
    const idA = /^Run (\S+) is waiting for input "approval"/.exec(a.stdout)?.[1] ?? '';
    expect(idA).toMatch(/^review-[0-9a-f]{16}$/);
    expect(a.stdout).toContain(`Answer with: cairn resume ${idA} --input approval=<value>`);
    expect(b.code, show(b)).toBe(3);
    const waiting = json(b);
    for (const key of [...SUMMARY_KEYS, 'waitingFor']) expect(waiting).toHaveProperty(key);
    expect(waiting).toMatchObject({ kind: 'workflow', status: 'waiting', waitingFor: 'approval' });

    const [approved, rejected] = await Promise.all([
      ws.cairn(['resume', idA, '--input', 'approval=true', '--json']),
      ws.cairn(['resume', waiting.id, '--input', 'approval=false', '--quiet']),
    ]);
    expect(approved.code, show(approved)).toBe(0);
    expect(json(approved)).toMatchObject({ status: 'completed', result: { approved: true, visits: ['fetch', 'confirm', 'report'] } });
    expect(rejected.code, show(rejected)).toBe(0);
    expect(JSON.parse(rejected.stdout)).toMatchObject({ approved: false, outcome: 'rejected B', visits: ['fetch', 'confirm', 'rejected'] });
  });

  it('resume --input values are JSON when they parse (n=5 is a number), text otherwise; an unknown run is exit 2', async (ctx) => {
    const { expect } = ctx;
    const ws = workspace(ctx);
    const waiting = await ws.cairn(['run', fixture('approval.mjs'), '--pipeline', 'typed', '--json']);
    expect(waiting.code, show(waiting)).toBe(3);
    expect(json(waiting)).toMatchObject({ name: 'typed-inputs', waitingFor: 'n' });
    const id = json(waiting).id;
    // values for waits the run is not on yet are refused: it waits for one name at a time
    const ahead = await ws.cairn(['resume', id, '--input', 'n=5', '--input', 'name=bob']);
    expect(ahead.code, show(ahead)).toBe(2);
    expect(ahead.stderr).toMatch(/waits for n, not for name/);
    const n = await ws.cairn(['resume', id, '--input', 'n=5', '--json']);
    expect(n.code, show(n)).toBe(3);
    expect(json(n)).toMatchObject({ waitingFor: 'name' });
    const name = await ws.cairn(['resume', id, '--input', 'name=bob', '--json']);
    expect(json(name)).toMatchObject({ waitingFor: 'flag' });
    const done = await ws.cairn(['resume', id, '--input', 'flag=true', '--quiet']);
    expect(done.code, show(done)).toBe(0);
    expect(JSON.parse(done.stdout)).toEqual({ n: 5, name: 'bob', flag: true });

    const unknown = await ws.cairn(['resume', 'no-such-run']);
    expect(unknown.code, show(unknown)).toBe(2);
    expect(unknown.stderr).toMatch(/^error NOT_FOUND: Run no-such-run not found/);
  });

  it('--json prints one parseable summary and no progress; --quiet prints only the result', async (ctx) => {
    const { expect } = ctx;
    const ws = workspace(ctx);
    const out = await ws.cairn(['run', fixture('counter.ts'), '--json']);
    expect(out.code, show(out)).toBe(0);
    expect(out.stderr).toBe('');
    const summary = json(out);
    for (const key of [...SUMMARY_KEYS, 'result']) expect(summary).toHaveProperty(key);
    expect(summary).toMatchObject({ name: 'counter', kind: 'pipeline', status: 'completed', result: { total: 14 } });
    expect(summary.stages.map((s) => `${s.name}:${s.status}`)).toEqual(['prepare:completed', 'square:completed', 'total:completed']);
    expect(summary.stages[1]?.items).toEqual({ numbers: { done: 3, failed: 0, total: 3 } });
    expect(summary).not.toHaveProperty('error');
    expect(summary).not.toHaveProperty('waitingFor');

    const quiet = await ws.cairn(['run', fixture('counter.ts'), '--input', '{"n":2}', '--quiet']);
    expect(quiet.code, show(quiet)).toBe(0);
    expect(quiet.stdout).toBe('{\n  "total": 5\n}\n');
    expect(quiet.stderr).toBe('');
  });
});

describe('cairn run: Ctrl-C and the terminal', () => {
  it('SIGINT during an items stage: exit 130 saying what was saved; the next run resumes with no item redone', async (ctx) => {
    const { expect } = ctx;
    const ws = workspace(ctx);
    const interrupted = await ws.cairn(['run', fixture('slow-items.mjs')], {
      env: { CAIRN_TEST_ITEM_MS: '60' },
      onSpawn: (kill) => void until(() => ws.logLines().length >= 6).then(() => kill('SIGINT')),
    });
    expect(interrupted.code, show(interrupted)).toBe(130);
    const saved = ws.logLines();
    expect(saved.length).toBeGreaterThanOrEqual(6);
    expect(saved.length).toBeLessThan(40);
    const [line, hint] = interrupted.stdout.split('\n');
    expect(line).toMatch(
      /^Run slow-items-[0-9a-f]{16} was interrupted during stage work\. Saved: 1 of 2 stage\(s\) and \d+ item result\(s\)\.$/,
    );
    expect(Number(/and (\d+) item/.exec(line ?? '')?.[1])).toBe(saved.length); // every finished item was saved
    const id = /^Run (\S+)/.exec(line ?? '')?.[1] ?? '';
    expect(hint).toBe(`Resume with: cairn resume ${id} --store file:${ws.store}   (or run the same command again)`);

    const resumed = await ws.cairn(['run', fixture('slow-items.mjs'), '--json'], { env: { CAIRN_TEST_ITEM_MS: '1' } });
    expect(resumed.code, show(resumed)).toBe(0);
    expect(json(resumed)).toMatchObject({ id, status: 'completed', result: { count: 40, last: 'K39' } });
    expect(json(resumed).attempts.map((a) => a.outcome)).toEqual(['interrupted', 'completed']);
    const lines = ws.logLines();
    expect(lines.slice(0, saved.length)).toEqual(saved);
    expect(lines).toHaveLength(40);
    expect(new Set(lines).size).toBe(40); // no item ran twice
  });

  it.skipIf(!SCRIPT)('on a TTY (util-linux `script`), the items stage shows a live bar with ETA', async (ctx) => {
    const { expect } = ctx;
    const ws = workspace(ctx);
    const typescript = path.join(ws.dir, 'tty.log');
    const quote = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;
    const command = [process.execPath, CLI, 'run', fixture('slow-items.mjs'), '--store', `file:${ws.store}`].map(quote).join(' ');
    const out = await new Promise<{ code: number | null; stderr: string }>((resolve, reject) => {
      const child = spawn(SCRIPT ?? 'script', ['-q', '-e', '-c', command, typescript], {
        cwd: ws.dir,
        env: environment(ws.dir, { CAIRN_TEST_ITEM_MS: '25', TERM: 'xterm' }),
        stdio: ['ignore', 'ignore', 'pipe'],
      });
      let stderr = '';
      child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
      child.on('error', reject);
      child.on('close', (code) => resolve({ code, stderr }));
    });
    const screen = fs.readFileSync(typescript, 'utf8');
    expect(out.code, `${out.stderr}\n${screen}`).toBe(0);
    expect(screen).toMatch(/keys .*█+.*░+.* \d+\/40 \d+% [\d.]+\/s ETA /);
    expect(screen).toContain('✓'); // the stage list
    expect(screen).toContain('completed');
  });
});
if (!SCRIPT) console.warn('run.test.ts: util-linux `script` not found; the TTY progress test is skipped');

describe.concurrent('cairn run / resume: hostile run ids and usage', () => {
  // A NUL byte cannot reach the command at all: argv entries are C strings (Node's spawn refuses
  // them with ERR_INVALID_ARG_VALUE), so the percent-encoded and escaped forms stand in for it.
  const hostile = ['../../etc', '/abs/path', '..', 'a/b', 'a%00b', 'a\\0b', `${'x'.repeat(200)}`, ''];

  it('run --run-id and resume refuse hostile ids with INVALID_RUN_ID (exit 2) and create nothing', async (ctx) => {
    const { expect } = ctx;
    const ws = workspace(ctx);
    const outs = await Promise.all(
      hostile.flatMap((id) => [ws.cairn(['run', fixture('counter.ts'), '--run-id', id]), ws.cairn(['resume', id])]),
    );
    for (const out of outs) {
      expect(out.code, show(out)).toBe(2);
      expect(out.stdout).toBe('');
      expect(out.stderr).toMatch(/^error INVALID_RUN_ID: Invalid run id /);
      expect(out.stderr.trim().split('\n')).toHaveLength(1);
    }
    expect(fs.readdirSync(ws.dir)).toEqual([]); // no store, no log: no stage ran
    expect(fs.existsSync(path.resolve(ws.store, '..', '..', 'etc', 'run.json'))).toBe(false);
  });

  it('--help, run --help and --version exit 0; an unknown command or option exits 2', async (ctx) => {
    const { expect } = ctx;
    const ws = workspace(ctx);
    const [help, runHelp, resumeHelp, version, unknownCommand, unknownOption, missingModule] = await Promise.all([
      ws.cairn(['--help']),
      ws.cairn(['run', '--help']),
      ws.cairn(['resume', '--help']),
      ws.cairn(['--version']),
      ws.cairn(['frobnicate']),
      ws.cairn(['run', fixture('counter.ts'), '--no-such-flag']),
      ws.cairn(['run']),
    ]);
    expect(help.code, show(help)).toBe(0);
    expect(help.stdout).toContain('Usage: cairn');
    expect(help.stdout).toMatch(/run \[options\] <module>/);
    expect(help.stdout).toContain(
      'Exit codes: 0 completed/ok, 1 failed/invalid, 2 usage or bad input, 3 waiting (for input, or for a higher budget), 130/143 interrupted (SIGINT/SIGTERM)',
    );
    expect(runHelp.code, show(runHelp)).toBe(0);
    for (const flag of ['--input', '--run-id', '--force-restart', '--store', '--pipeline', '--json', '--quiet']) {
      expect(runHelp.stdout).toContain(flag);
    }
    expect(resumeHelp.code, show(resumeHelp)).toBe(0);
    expect(resumeHelp.stdout).toContain('--input <name=value...>');
    expect(version.code, show(version)).toBe(0);
    expect(version.stdout).toBe(`${VERSION}\n`);
    expect(unknownCommand.code, show(unknownCommand)).toBe(2);
    expect(unknownCommand.stderr).toContain("unknown command 'frobnicate'");
    expect(unknownOption.code, show(unknownOption)).toBe(2);
    expect(unknownOption.stderr).toContain("unknown option '--no-such-flag'");
    expect(missingModule.code, show(missingModule)).toBe(2);
    expect(missingModule.stderr).toContain("missing required argument 'module'");
    expect(ws.logLines()).toEqual([]);
  });
});
