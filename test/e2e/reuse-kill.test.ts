/**
 * Reuse of unchanged items under a real kill -9 (fixtures/reuse-job.mjs): after one paragraph of
 * 2,000 is edited, the rerun is SIGKILLed in the middle of writing the reused results; the next run
 * keeps what was written, looks up the rest, and pays only for the edited paragraph. Nothing is
 * written twice, and the output is that of an uninterrupted run.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { openStore } from '../../src/index.js';
import type { ItemEntry } from '../../src/stores/store.js';
import { Child, killAll } from './child.js';

const REUSE_JOB = path.join(import.meta.dirname, 'fixtures', 'reuse-job.mjs');
const COUNT = 2000;

let dirs: string[] = [];
afterEach((context) => {
  killAll();
  if (context.task.result?.state === 'fail') console.error(`kept for a look: ${dirs.join(' ')}`);
  else for (const dir of dirs) fs.rmSync(dir, { recursive: true, force: true });
  dirs = [];
});

const paragraphs = (edited?: number): string[] =>
  Array.from({ length: COUNT }, (_, n) => `p${n}\tparagraph ${n}${n === edited ? ', edited at length' : ''}`);

const callsOf = (work: string): string[] => fs.readFileSync(path.join(work, 'calls.log'), 'utf8').split('\n').slice(0, -1);

async function entriesOf(url: string, ledger: string): Promise<ItemEntry[]> {
  const store = await openStore(url);
  try {
    const [runId] = (await store.listRuns()).map((r) => r.id);
    const out: ItemEntry[] = [];
    for await (const entry of store.readItems(runId!, ledger)) out.push(entry);
    return out;
  } finally {
    await store.close();
  }
}

describe.each([
  ['file', (dir: string) => `file:${dir}/checkpoints`],
  ['sqlite', (dir: string) => `sqlite:${dir}/cairn.db`],
] as const)('reuse under kill -9 on %s', (_kind, urlFor) => {
  it('a kill while the reused results are written: the next run keeps them and pays only for the edited paragraph', async () => {
    const work = fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-reuse-kill-'));
    dirs.push(work);
    const url = urlFor(work);
    const document = path.join(work, 'document.txt');
    fs.writeFileSync(document, `${paragraphs().join('\n')}\n`);

    const first = new Child(REUSE_JOB, [url, work, document]);
    await first.expectExit(0);
    expect(callsOf(work)).toHaveLength(COUNT);

    fs.writeFileSync(document, `${paragraphs(1500).join('\n')}\n`);
    const killed = new Child(REUSE_JOB, [url, work, document, '--pause-at=3']);
    await killed.waitForLine('flushed 3');
    killed.kill('SIGKILL');
    expect((await killed.exit).signal).toBe('SIGKILL');
    expect(callsOf(work)).toHaveLength(COUNT); // the reused results are written before any item runs
    const written = await entriesOf(url, 'mine.paragraphs.g1');
    expect(written).toHaveLength(300); // three batches of checkpointEvery
    expect(written.every((e) => e.reusedFrom === 'mine.paragraphs' && e.hash !== undefined)).toBe(true);

    const last = new Child(REUSE_JOB, [url, work, document]);
    await last.expectExit(0);
    expect(await last.json('summary')).toEqual({
      status: 'completed',
      items: { paragraphs: { done: COUNT, failed: 0, total: COUNT, reused: COUNT - 1 } },
    });
    expect(callsOf(work).slice(COUNT)).toEqual(['call p1500']);
    const entries = await entriesOf(url, 'mine.paragraphs.g1');
    expect(entries).toHaveLength(COUNT);
    expect(new Set(entries.map((e) => e.key)).size).toBe(COUNT);
    const expected = paragraphs(1500).map((line) => {
      const [id, text] = line.split('\t') as [string, string];
      return { id, length: text.length };
    });
    expect(JSON.parse(fs.readFileSync(path.join(work, 'output.json'), 'utf8'))).toEqual({ claims: expected });
  });
});
