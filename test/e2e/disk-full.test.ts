/**
 * A full disk, for real: a small tmpfs is mounted (this needs root), a filler file leaves it a
 * little space, and a pipeline whose items write more than that runs on a file store and on a
 * SQLite store there. The run must stop with `STORE_FULL` naming the path, be recorded as
 * `interrupted` (not failed, not left `running`), and leave nothing but the store's own data on
 * the disk. Then the filler goes (space freed) and the run is resumed: it completes with the
 * result of an uninterrupted run, and no item whose result the store had acknowledged runs again.
 *
 * Skipped, saying why, when not root or when the mount fails (a container without CAP_SYS_ADMIN).
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { Cairn } from '../../src/engine/cairn.js';
import { pipeline } from '../../src/engine/pipeline.js';
import type { RunSummary } from '../../src/engine/types.js';
import { openStore } from '../../src/stores/open-store.js';
import { collect } from '../helpers.js';

/** Room for the whole run once the filler is gone (SQLite holds its pages twice for a while: log and database). */
const DISK_BYTES = 8 * 1024 * 1024;
/** What the filler leaves free: less than the items write (about 2.4 MB), more than the store needs to start. */
const LEFT_FREE = 1.5 * 1024 * 1024;
const ITEMS = 600;
const ITEM_BYTES = 4000;

/** Item `key`'s result: incompressible text, the same on every run. */
function payload(key: string): string {
  let text = '';
  for (let i = 0; text.length < ITEM_BYTES; i++) text += createHash('sha256').update(`${key}:${i}`).digest('hex');
  return text.slice(0, ITEM_BYTES);
}

const keys = Array.from({ length: ITEMS }, (_, i) => `k${String(i).padStart(4, '0')}`);
/** Item executions, per key, across attempts. */
const executed = new Map<string, number>();

const job = pipeline('fill', { version: '1' })
  .stage('produce', async (ctx) => {
    const results = await ctx.items(
      'chunks',
      keys,
      (key) => {
        executed.set(key, (executed.get(key) ?? 0) + 1);
        return payload(key);
      },
      { key: (key) => key, checkpointEvery: 40 },
    );
    return { count: results.length, digest: createHash('sha256').update(results.join('\n')).digest('hex') };
  })
  .stage('report', (ctx) => ({ ...ctx.output('produce'), reported: true }));

/** Mounts a tmpfs of `bytes` at a new folder, or says why it cannot. */
function mountTmpfs(bytes: number): { dir: string } | { skip: string } {
  if (process.getuid?.() !== 0) return { skip: 'not root: cannot mount a small tmpfs to fill' };
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-full-'));
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${bytes}`, 'tmpfs', dir], { stdio: 'pipe' });
    return { dir };
  } catch (error) {
    fs.rmSync(dir, { recursive: true, force: true });
    return { skip: `mount -t tmpfs failed (${String((error as { stderr?: unknown }).stderr ?? error).trim()})` };
  }
}

const realStatfs = fs.statfsSync.bind(fs) as (dir: string) => fs.StatsFs;

/** Every file and folder under `dir`, relative, sorted. */
function listTree(dir: string): string[] {
  return (fs.readdirSync(dir, { recursive: true }) as string[]).map((p) => p.split(path.sep).join('/')).sort();
}

/** What an uninterrupted run returns, on a disk with room. */
async function cleanResult(): Promise<unknown> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-full-clean-'));
  const cairn = new Cairn({ store: `file:${dir}`, handleSignals: false });
  try {
    const run = await cairn.run(job, {});
    expect(run.status).toBe('completed');
    return run.result;
  } finally {
    await cairn.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

interface DiskCase {
  readonly name: string;
  /**
   * The disk fills in the middle of a write (another process took the space between the file
   * store's free-space check and its write; the check is made blind here): the log is left with a
   * torn line, the writer writes nothing more, and the interruption itself cannot be recorded.
   */
  readonly tornWrite?: boolean;
  /** The store URL for a store in `dir`, and the path its STORE_FULL message must name. */
  url(dir: string): { url: string; path: string };
  /** Paths (relative to the mount) that are the store's own data. */
  isStoreData(rel: string): boolean;
}

const CASES: DiskCase[] = [
  {
    name: 'file store',
    url: (dir) => ({ url: `file:${path.join(dir, 'store')}`, path: path.join(dir, 'store') }),
    // the run folder's own files; never a dot-named temp file or staging folder, never a segment without its seal
    isStoreData: (rel) =>
      rel === 'store' ||
      /^store\/fill-[0-9a-f]{16}(\/(lease(\/\d+\.json)?|artifacts|seg-\d+(\/(seal\.json|run\.jsonl|checkpoints\.jsonl|artifacts\.jsonl|items(\/[A-Za-z0-9._-]+\.jsonl)?))?))?$/.test(
        rel,
      ),
  },
  {
    name: 'file store, the disk filled by someone else in the middle of a write',
    tornWrite: true,
    url: (dir) => ({ url: `file:${path.join(dir, 'store')}`, path: path.join(dir, 'store') }),
    isStoreData: (rel) =>
      rel === 'store' ||
      /^store\/fill-[0-9a-f]{16}(\/(lease(\/\d+\.json)?|artifacts|seg-\d+(\/(seal\.json|run\.jsonl|checkpoints\.jsonl|artifacts\.jsonl|items(\/[A-Za-z0-9._-]+\.jsonl)?))?))?$/.test(
        rel,
      ),
  },
  {
    name: 'SQLite store',
    url: (dir) => ({ url: `sqlite:${path.join(dir, 'cairn.db')}`, path: path.join(dir, 'cairn.db') }),
    isStoreData: (rel) => /^cairn\.db(-wal|-shm)?$/.test(rel),
  },
];

describe.each(CASES)('a full disk under a $name', (kind) => {
  let mount: { dir: string } | { skip: string } = { skip: 'not mounted yet' };
  let expected: unknown;

  beforeAll(async () => {
    mount = mountTmpfs(DISK_BYTES);
    if ('skip' in mount) console.warn(`disk-full test (${kind.name}) skipped: ${mount.skip}`);
    else expected = await cleanResult();
  });
  afterAll(() => {
    if (!('dir' in mount)) return;
    execFileSync('umount', [mount.dir]);
    fs.rmSync(mount.dir, { recursive: true, force: true });
  });

  it('stops the run as interrupted with STORE_FULL naming the path, leaves no temp files, and resumes once space is freed', async (ctx) => {
    if (!('dir' in mount)) return ctx.skip();
    const dir = mount.dir;
    const { url, path: storePath } = kind.url(dir);
    const free = fs.statfsSync(dir).bavail * fs.statfsSync(dir).bsize;
    const filler = path.join(dir, 'filler');
    fs.writeFileSync(filler, Buffer.alloc(free - LEFT_FREE, 1));
    executed.clear();

    const cairn = new Cairn({ store: url, handleSignals: false });
    const runId = cairn.runIdFor(job, {});
    let first: RunSummary | undefined;
    let rejected: { code?: string; message?: string } | undefined;
    const blind = kind.tornWrite ? vi.spyOn(fs, 'statfsSync').mockImplementation(() => ({ ...realStatfs(dir), bavail: 1e9 })) : undefined;
    try {
      first = await cairn.run(job, {});
    } catch (error) {
      rejected = error as { code?: string; message?: string };
    } finally {
      blind?.mockRestore();
      await cairn.close();
    }
    const error = kind.tornWrite ? rejected : first?.error;
    expect(error?.code, JSON.stringify(first ?? rejected)).toBe('STORE_FULL');
    expect(error?.message).toContain(storePath);
    expect(error?.message).toMatch(/Free space there, then resume the run/);
    if (!kind.tornWrite) expect(first?.status, JSON.stringify(first?.error)).toBe('interrupted');

    // what another process sees: the run is interrupted (resumable), and the attempt says why
    const store = await openStore(url);
    let acknowledged: Set<string>;
    try {
      const stored = await store.getRun(runId);
      const attempts = (stored?.data as { attempts: { outcome?: string }[] }).attempts;
      if (kind.tornWrite) {
        // nothing more could be written after the torn line, the end of the attempt included: the run
        // still says running, but its lease was made to expire (no space needed), so anyone resumes it at once
        expect(stored?.status).toBe('running');
        expect(await store.getLock(runId)).toBeUndefined();
      } else {
        expect(stored?.status).toBe('interrupted');
        expect(attempts.map((a) => a.outcome)).toEqual(['interrupted']);
      }
      const ledger = (await store.listLedgers(runId))[0]!;
      // the torn case did tear a line: the ledger's last bytes are a line cut short, left where they are (never truncated)
      if (kind.tornWrite) expect(fs.readFileSync(path.join(storePath, runId, 'seg-0', 'items', `${ledger}.jsonl`)).at(-1)).not.toBe(0x0a);
      acknowledged = new Set((await collect(store.readItems(runId, ledger))).filter((e) => e.status === 'done').map((e) => e.key));
    } finally {
      await store.close();
    }
    expect(acknowledged.size).toBeGreaterThan(0);
    expect(acknowledged.size).toBeLessThan(ITEMS);
    // nothing but the store's own data (and the filler) on the disk: no temp file, staging folder or half-made segment
    const leftovers = listTree(dir).filter((rel) => rel !== 'filler' && !kind.isStoreData(rel));
    expect(leftovers).toEqual([]);

    // free the space, resume
    fs.rmSync(filler);
    const before = new Map(executed);
    const again = new Cairn({ store: url, handleSignals: false });
    let second: RunSummary;
    try {
      second = await again.resume(runId, { definition: job });
    } finally {
      await again.close();
    }
    expect(second.status, JSON.stringify(second.error)).toBe('completed');
    expect(second.result).toEqual(expected);
    const redone = [...acknowledged].filter((key) => (executed.get(key) ?? 0) > (before.get(key) ?? 0));
    expect(redone).toEqual([]);
    expect(keys.filter((key) => !executed.has(key))).toEqual([]);
    console.log(
      `disk full on the ${kind.name}: ${acknowledged.size} of ${ITEMS} items acknowledged before the disk filled, ` +
        `${[...executed.values()].filter((n) => n > 1).length} unacknowledged ones ran again after resume`,
    );
  });
});
