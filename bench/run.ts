/**
 * `npm run bench` (full) and `npm run bench -- --quick`: cairn side by side with its peers and the
 * disk's own limits (P1–P6 of issue 7; P1 and P3 also on Postgres, issue 8). Prints a table and
 * writes bench/results/<date>-<mode>.json plus bench/results/latest-<mode>.json. Options: --quick,
 * --only P1,P3.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { runP1 } from './p1-items.js';
import { runP2 } from './p2-rewrite.js';
import { runP3 } from './p3-steps.js';
import { runP4 } from './p4-storage.js';
import { runP5 } from './p5-resume.js';
import { runP6 } from './p6-memory.js';
import { runP7 } from './p7-startup.js';
import { runP8 } from './p8-limits.js';
import { type BenchOptions, type FsyncCost, type Row, filesystemOf, formatNumber, now } from './lib/util.js';

interface Machine {
  readonly cpu: string;
  readonly cores: number;
  readonly totalMemoryBytes: number;
  readonly node: string;
  readonly platform: string;
  readonly tmpDir: string;
  readonly tmpFilesystem: string;
  /** 1-minute load average when the run started: other work on the machine skews every figure. */
  readonly loadAverageAtStart: number;
}

function machine(tmpDir: string): Machine {
  const cpus = os.cpus();
  return {
    cpu: cpus[0]?.model ?? 'unknown',
    cores: cpus.length,
    totalMemoryBytes: os.totalmem(),
    node: process.version,
    platform: `${os.platform()} ${os.release()} ${os.arch()}`,
    tmpDir,
    tmpFilesystem: filesystemOf(tmpDir),
    loadAverageAtStart: os.loadavg()[0] ?? 0,
  };
}

/** The commit measured, and the files changed on top of it (the benchmark builds the working tree). */
function gitState(root: string): { commit: string; changedFiles: string[] } | undefined {
  try {
    const git = (...args: string[]): string =>
      execFileSync('git', args, { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    const changed = git('status', '--porcelain', '--untracked-files=no')
      .split('\n')
      .filter((l) => l.trim().length > 0)
      .map((l) => l.slice(3));
    return { commit: git('rev-parse', 'HEAD').trim(), changedFiles: changed };
  } catch {
    return undefined;
  }
}

/** The repository root: the nearest folder above this file holding package.json. */
function repoRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  while (!fs.existsSync(path.join(dir, 'package.json'))) {
    const parent = path.dirname(dir);
    if (parent === dir) return process.cwd();
    dir = parent;
  }
  return dir;
}

function renderTable(rows: readonly Row[]): string {
  const header = ['benchmark', 'peer', 'figure', 'value', 'ratio', 'goal', 'met'];
  const body = rows.map((r) => [
    r.bench,
    r.peer,
    r.figure,
    Number.isNaN(r.value) ? 'skipped' : formatNumber(r.value),
    r.ratio === undefined ? '' : `${formatNumber(r.ratio)} (${r.ratioOf ?? ''})`,
    r.goal ?? '',
    r.met === undefined ? '' : r.met ? 'yes' : 'NO',
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((cells) => cells[i]!.length)));
  const line = (cells: readonly string[]): string => `| ${cells.map((c, i) => c.padEnd(widths[i]!)).join(' | ')} |`;
  return [line(header), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...body.map(line)].join('\n');
}

function renderNotes(rows: readonly Row[]): string {
  return rows
    .filter((r) => r.note)
    .map((r) => `- ${r.bench} / ${r.peer}: ${r.note}`)
    .join('\n');
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const quick = args.includes('--quick');
  const onlyArg = args.find((a) => a.startsWith('--only'));
  const onlyValue = onlyArg?.includes('=') ? onlyArg.split('=')[1] : onlyArg ? args[args.indexOf(onlyArg) + 1] : undefined;
  const only = onlyValue ? new Set(onlyValue.toUpperCase().split(',')) : undefined;
  const tmpRoot = os.tmpdir();
  const opts: BenchOptions = { quick, tmpRoot, log: (l) => process.stderr.write(`${l}\n`) };
  const info = machine(tmpRoot);
  const mode = quick ? 'quick' : 'full';
  opts.log(`cairn bench (${mode}) on ${info.cpu}, ${info.cores} cores, Node ${info.node}, ${info.tmpFilesystem} at ${tmpRoot}`);

  const rows: Row[] = [];
  const errors: { bench: string; error: string }[] = [];
  let fsync: FsyncCost | undefined;
  const timings: Record<string, number> = {};
  const benches: [string, () => Promise<Row[]> | Row[]][] = [
    ['P1', () => runP1(opts)],
    ['P2', () => runP2(opts)],
    [
      'P3',
      async () => {
        const r = await runP3(opts);
        fsync = r.fsync;
        return r.rows;
      },
    ],
    ['P4', () => runP4(opts)],
    ['P5', () => runP5(opts)],
    ['P6', () => runP6(opts)],
    ['P7', () => runP7(opts)],
    ['P8', () => runP8(opts)],
  ];
  const started = now();
  for (const [id, bench] of benches) {
    if (only && !only.has(id)) continue;
    opts.log(`${id}…`);
    const t0 = now();
    try {
      rows.push(...(await bench()));
    } catch (error) {
      const message = error instanceof Error ? (error.stack ?? error.message) : String(error);
      errors.push({ bench: id, error: message });
      opts.log(`${id} failed: ${message}`);
    }
    timings[id] = (now() - t0) / 1000;
    opts.log(`${id} took ${timings[id].toFixed(1)} s`);
  }
  const totalSeconds = (now() - started) / 1000;

  const goals = rows.filter((r) => r.met !== undefined);
  const met = goals.filter((r) => r.met).length;
  process.stdout.write(`\ncairn bench (${mode}), ${new Date().toISOString()}\n`);
  process.stdout.write(
    `machine: ${info.cpu}, ${info.cores} cores, ${(info.totalMemoryBytes / 2 ** 30).toFixed(1)} GiB, Node ${info.node}, ${info.tmpFilesystem} (${tmpRoot}), load average ${info.loadAverageAtStart.toFixed(2)} at start, ${(os.loadavg()[0] ?? 0).toFixed(2)} at end\n`,
  );
  if (fsync)
    process.stdout.write(
      `one fsync (write 1 KiB + fdatasync): median ${fsync.medianMs.toFixed(3)} ms, mean ${fsync.meanMs.toFixed(3)} ms\n`,
    );
  process.stdout.write(`\n${renderTable(rows)}\n\nNotes:\n${renderNotes(rows)}\n`);
  process.stdout.write(`\ngoals met: ${met} of ${goals.length}; took ${totalSeconds.toFixed(0)} s\n`);
  for (const e of errors) process.stdout.write(`ERROR in ${e.bench}: ${e.error.split('\n')[0]}\n`);

  const resultsDir = path.join(repoRoot(), 'bench', 'results');
  fs.mkdirSync(resultsDir, { recursive: true });
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const document = {
    mode,
    date: new Date().toISOString(),
    git: gitState(repoRoot()),
    machine: info,
    loadAverageAtEnd: os.loadavg()[0] ?? 0,
    fsync,
    totalSeconds,
    secondsPerBenchmark: timings,
    goals: { met, total: goals.length },
    rows,
    errors,
  };
  const text = `${JSON.stringify(document, null, 2)}\n`;
  const only_ = only ? `-only-${[...only].join('-')}` : '';
  fs.writeFileSync(path.join(resultsDir, `${stamp}-${mode}${only_}.json`), text);
  if (!only) fs.writeFileSync(path.join(resultsDir, `latest-${mode}.json`), text);
  process.stdout.write(
    `results: ${path.join('bench', 'results', `${stamp}-${mode}${only_}.json`)}${only ? '' : ` and bench/results/latest-${mode}.json`}\n`,
  );
  if (errors.length > 0) process.exitCode = 1;
}

main().catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
