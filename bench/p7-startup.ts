/**
 * P7 CLI start-up: how long the `cairn` command takes before it does anything, against Node's own
 * start (`node -e 0`), measured side by side (interleaved, same run): `cairn --version`, which
 * loads no command, and `cairn list` on a file store of 1,000 runs, which loads one command and
 * reads the store. Goals: ≤ 2 × and ≤ 4 × `node -e 0`.
 */
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { openStore } from '../src/index.js';
import { type BenchOptions, type Row, makeTempDir, median, now, removeDir } from './lib/util.js';

const CLI = path.resolve(import.meta.dirname, '..', 'src', 'cli', 'main.js'); // dist/bench → dist/src/cli/main.js

function timeOf(args: readonly string[]): number {
  const start = now();
  execFileSync(process.execPath, args, { stdio: 'ignore', env: { ...process.env, CAIRN_STORE: '' } });
  return now() - start;
}

export async function runP7(opts: BenchOptions): Promise<Row[]> {
  const dir = makeTempDir('p7', opts.tmpRoot);
  const url = `file:${path.join(dir, 'store')}`;
  try {
    const store = await openStore(url);
    try {
      for (let i = 0; i < 1000; i++) {
        await store.createRun({ id: `run-${String(i).padStart(4, '0')}`, name: 'startup', status: 'completed', data: { n: i } });
      }
    } finally {
      await store.close();
    }
    const reps = opts.quick ? 7 : 21;
    const t = { node: [] as number[], version: [] as number[], list: [] as number[] };
    timeOf([CLI, 'list', '--store', url]); // warm the page cache and Node's compile cache, as a second invocation would
    for (let rep = 0; rep < reps; rep++) {
      t.node.push(timeOf(['-e', '0']));
      t.version.push(timeOf([CLI, '--version']));
      t.list.push(timeOf([CLI, 'list', '--store', url]));
    }
    const node = median(t.node);
    const bench = 'P7 CLI start-up';
    const row = (peer: string, samples: number[], goal: number): Row => ({
      bench,
      peer,
      figure: 'ms (median)',
      value: median(samples),
      samples,
      ratioOf: 'cairn ÷ node -e 0',
      ratio: median(samples) / node,
      goal: `≤ ${goal}`,
      met: median(samples) / node <= goal,
    });
    return [
      { bench, peer: 'node -e 0', figure: 'ms (median)', value: node, samples: t.node },
      row('cairn --version', t.version, 2),
      row('cairn list (file store, 1,000 runs)', t.list, 4),
    ];
  } finally {
    removeDir(dir);
  }
}
