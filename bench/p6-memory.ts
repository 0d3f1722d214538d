/**
 * P6 memory: peak RSS over an N-item stage, each run in a fresh child process, against a bare loop
 * keeping the same results. Growth per item beyond the results = the slope of (cairn − bare) peak
 * RSS between N/5 and N items: flat means it does not grow with N.
 */
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { type BenchOptions, type Row, formatBytes, makeTempDir, removeDir } from './lib/util.js';

interface ChildReport {
  readonly mode: 'cairn' | 'bare';
  readonly n: number;
  readonly baseline: number;
  readonly peak: number;
  readonly kept: number;
}

const CHILD = path.join(path.dirname(fileURLToPath(import.meta.url)), 'p6-child.js');

function runChild(mode: 'cairn' | 'bare', n: number, tmpRoot: string): ChildReport {
  const dir = makeTempDir('p6', tmpRoot);
  try {
    const out = execFileSync(process.execPath, [CHILD, mode, String(n), dir], { encoding: 'utf8', maxBuffer: 1024 * 1024 });
    const report = JSON.parse(out.trim().split('\n').pop() ?? '{}') as ChildReport;
    if (report.kept !== n) throw new Error(`P6 ${mode} child kept ${report.kept} results, expected ${n}`);
    return report;
  } finally {
    removeDir(dir);
  }
}

/** Bytes per item allowed beyond the results kept, to call peak RSS flat (GC heap sizing is noisy). */
const FLAT_BYTES_PER_ITEM = 32;

export function runP6(opts: BenchOptions): Row[] {
  const big = opts.quick ? 200_000 : 1_000_000;
  const small = big / 5;
  const cairnBig = runChild('cairn', big, opts.tmpRoot);
  const bareBig = runChild('bare', big, opts.tmpRoot);
  const cairnSmall = runChild('cairn', small, opts.tmpRoot);
  const bareSmall = runChild('bare', small, opts.tmpRoot);
  opts.log(
    `  P6 peaks: cairn ${formatBytes(cairnBig.peak)} / ${formatBytes(cairnSmall.peak)}, bare ${formatBytes(bareBig.peak)} / ${formatBytes(bareSmall.peak)}`,
  );
  const extraBig = cairnBig.peak - bareBig.peak;
  const extraSmall = cairnSmall.peak - bareSmall.peak;
  const slope = (extraBig - extraSmall) / (big - small);
  const bench = `P6 memory (${big.toLocaleString('en-US')} items)`;
  const fmtN = (n: number): string => n.toLocaleString('en-US');
  return [
    {
      bench,
      peer: `bare loop keeping the results, N=${fmtN(big)}`,
      figure: 'peak RSS bytes',
      value: bareBig.peak,
      note: `${formatBytes(bareBig.peak)}; N=${fmtN(small)}: ${formatBytes(bareSmall.peak)}`,
    },
    {
      bench,
      peer: `cairn file store, N=${fmtN(big)}`,
      figure: 'peak RSS bytes',
      value: cairnBig.peak,
      ratioOf: 'cairn ÷ bare peak',
      ratio: cairnBig.peak / bareBig.peak,
      note: `${formatBytes(cairnBig.peak)}; N=${fmtN(small)}: ${formatBytes(cairnSmall.peak)}; start ${formatBytes(cairnBig.baseline)}`,
    },
    {
      bench,
      peer: 'cairn growth per item beyond the results',
      figure: 'bytes/item',
      value: slope,
      goal: `flat (≤ ${FLAT_BYTES_PER_ITEM} B/item)`,
      met: slope <= FLAT_BYTES_PER_ITEM,
      note: `slope of (cairn − bare) peak between N=${fmtN(small)} (${formatBytes(extraSmall)}) and N=${fmtN(big)} (${formatBytes(extraBig)})`,
    },
  ];
}
