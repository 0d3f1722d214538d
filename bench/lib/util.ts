/** Shared helpers for the benchmarks: temp folders, timing, the disk's own fsync cost, sizes. */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

/** One line of the report: a figure of one peer in one benchmark, with its ratio and goal. */
export interface Row {
  readonly bench: string;
  readonly peer: string;
  /** What `value` is, with its unit ("items/s", "ms/step", "bytes"). */
  readonly figure: string;
  readonly value: number;
  /** What the ratio compares (e.g. "cairn ÷ bare"); absent when the row is a peer's figure only. */
  readonly ratioOf?: string;
  readonly ratio?: number;
  readonly goal?: string;
  readonly met?: boolean;
  readonly note?: string;
  /** Raw measurements behind `value` (ms per repetition, …), for the JSON file. */
  readonly samples?: readonly number[];
}

export interface BenchOptions {
  readonly quick: boolean;
  /** Where temp folders go (os.tmpdir()); the bare peers write there too, so they share one filesystem. */
  readonly tmpRoot: string;
  readonly log: (line: string) => void;
}

/** Milliseconds since an arbitrary origin, sub-millisecond precision. */
export function now(): number {
  return performance.now();
}

export function median(values: readonly number[]): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

export function percentile(values: readonly number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? Number.NaN;
}

/** A fresh folder under the OS temp dir; remove it with `removeDir`. */
export function makeTempDir(label: string, root = os.tmpdir()): string {
  return fs.mkdtempSync(path.join(root, `cairn-bench-${label}-`));
}

export function removeDir(dir: string): void {
  fs.rmSync(dir, { recursive: true, force: true });
}

/** Sum of the sizes of every file under `dir` (apparent size, as `du --apparent-size -b`). */
export function dirBytes(dir: string): number {
  let total = 0;
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) total += dirBytes(full);
    else if (entry.isFile()) total += fs.statSync(full).size;
  }
  return total;
}

/** Every file under `dir`, recursively. */
export function listFiles(dir: string): string[] {
  const out: string[] = [];
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) out.push(...listFiles(full));
    else if (entry.isFile()) out.push(full);
  }
  return out;
}

/**
 * Bytes this process has read through read(2)-like calls so far (`rchar` of /proc/self/io), page
 * cache hits included; undefined where /proc is not available.
 */
export function bytesReadSoFar(): number | undefined {
  try {
    const match = /^rchar:\s*(\d+)/m.exec(fs.readFileSync('/proc/self/io', 'utf8'));
    return match ? Number(match[1]) : undefined;
  } catch {
    return undefined;
  }
}

export interface FsyncCost {
  readonly medianMs: number;
  readonly meanMs: number;
  readonly p10Ms: number;
  readonly p90Ms: number;
  readonly samples: number;
}

/** One durable 1 KiB append on this disk: write 1 KiB + fdatasync, sync calls, many times. */
export function measureFsync(dir: string, samples: number): FsyncCost {
  const file = path.join(dir, 'fsync-probe.bin');
  const fd = fs.openSync(file, 'w');
  const block = Buffer.alloc(1024, 0x61);
  const times: number[] = [];
  try {
    for (let i = 0; i < samples + 10; i++) {
      const start = now();
      fs.writeSync(fd, block);
      fs.fdatasyncSync(fd);
      if (i >= 10) times.push(now() - start); // the first few allocate the file's first blocks
    }
  } finally {
    fs.closeSync(fd);
    fs.rmSync(file, { force: true });
  }
  return {
    medianMs: median(times),
    meanMs: times.reduce((a, b) => a + b, 0) / times.length,
    p10Ms: percentile(times, 10),
    p90Ms: percentile(times, 90),
    samples: times.length,
  };
}

/** The filesystem type of `dir` (`df -T`), or 'unknown'. */
export function filesystemOf(dir: string): string {
  try {
    const out = execFileSync('df', ['-T', dir], { encoding: 'utf8' });
    const fields = out.trim().split('\n')[1]?.trim().split(/\s+/);
    if (fields?.[1]) return `${fields[1]} (${fields[0]})`;
  } catch {
    // not Linux coreutils: try stat -f below
  }
  try {
    return execFileSync('stat', ['-f', '-c', '%T', dir], { encoding: 'utf8' }).trim();
  } catch {
    return 'unknown';
  }
}

export function formatNumber(value: number): string {
  if (!Number.isFinite(value)) return String(value);
  const abs = Math.abs(value);
  if (abs >= 100) return Math.round(value).toLocaleString('en-US');
  if (abs >= 1) return value.toFixed(2);
  if (abs >= 0.01) return value.toFixed(3);
  return value.toPrecision(3);
}

export function formatBytes(bytes: number): string {
  if (bytes >= 1024 * 1024) return `${(bytes / (1024 * 1024)).toFixed(2)} MiB`;
  if (bytes >= 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${bytes} B`;
}

/** Lets timers and I/O callbacks run between phases, so that one benchmark's leftovers do not bleed into the next. */
export function settle(ms = 50): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
