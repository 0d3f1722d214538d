/**
 * Issue 16, reuse of unchanged items (`ctx.items(…, { reuse: 'content' })`), on every store: after
 * one paragraph of 2,000 is edited (in a stage's input file, or in an upstream stage's output),
 * exactly one item runs and the results are those of a fresh run; without `reuse` all of them run;
 * a version or config change runs all of them; index keys shift after an insert; a call stopped
 * after some reuse (an item failing, the store failing mid-way through the reused batches) goes on
 * without running a reused item again.
 */
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Cairn } from '../../src/engine/cairn.js';
import { pipeline } from '../../src/engine/pipeline.js';
import type { ItemsOptions } from '../../src/engine/types.js';
import { openStore } from '../../src/stores/open-store.js';
import { Counter, ledgerEntries, record, useCairns, withStore } from './engine-helpers.js';
import { ALL_STORES } from './store-matrix.js';

const inputDir = fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-reuse-inputs-'));
afterAll(() => fsp.rm(inputDir, { recursive: true, force: true }));
let inputCounter = 0;

interface Paragraph {
  readonly id: string;
  readonly text: string;
}

const COUNT = 2000;
const paragraphs = (count = COUNT): Paragraph[] => Array.from({ length: count }, (_, n) => ({ id: `p${n}`, text: `paragraph ${n}` }));

/** A document file of one paragraph a line (`id<TAB>text`). */
function writeDocument(file: string, list: readonly Paragraph[]): void {
  fs.writeFileSync(file, list.map((p) => `${p.id}\t${p.text}\n`).join(''));
}

function readDocument(file: string): Paragraph[] {
  return fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .filter((line) => line.length > 0)
    .map((line) => {
      const [id, text] = line.split('\t') as [string, string];
      return { id, text };
    });
}

function newDocument(list: readonly Paragraph[] = paragraphs()): string {
  const file = path.join(inputDir, `doc-${++inputCounter}.txt`);
  writeDocument(file, list);
  return file;
}

/** What the stand-in for a paid call returns for a paragraph (depends on the item and the stage's config only). */
const mine = (p: Paragraph, config: unknown): { id: string; claims: number; by: unknown } => ({
  id: p.id,
  claims: p.text.length,
  by: config,
});

interface Deploy {
  readonly version?: string;
  readonly config?: unknown;
  readonly reuse?: boolean;
  readonly key?: boolean;
  /** Items (ids) that throw, once each. */
  readonly failOn?: Set<string>;
}

/** `mining` runs one paid call per paragraph of the stage's own input file. */
function fileMining(file: string, calls: Counter, deploy: Deploy = {}) {
  const options: ItemsOptions<Paragraph> & { readonly onItemError?: 'fail' } = {
    ...((deploy.key ?? true) ? { key: (p: Paragraph) => p.id } : {}),
    ...((deploy.reuse ?? true) ? { reuse: 'content' as const } : {}),
    concurrency: 4,
  };
  return pipeline('reuse-file').stage(
    'mining',
    async (ctx) => {
      const claims = await ctx.items(
        'paragraphs',
        readDocument(file),
        (p) => {
          calls.hit(p.id);
          if (deploy.failOn?.delete(p.id)) throw new Error(`provider refused ${p.id}`);
          return mine(p, ctx.config);
        },
        options,
      );
      return { claims };
    },
    { inputs: [file], ...(deploy.version ? { version: deploy.version } : {}), ...(deploy.config ? { config: deploy.config } : {}) },
  );
}

/** `split` reads the document (its input file); `mining` runs one paid call per paragraph of split's output. */
function upstreamMining(file: string, calls: Counter, deploy: Deploy = {}) {
  return pipeline('reuse-upstream')
    .stage('split', () => ({ paragraphs: readDocument(file) }), { inputs: [file] })
    .stage(
      'mining',
      async (ctx) => ({
        claims: await ctx.items(
          'paragraphs',
          ctx.output('split').paragraphs,
          (p) => {
            calls.hit(p.id);
            return mine(p, ctx.config);
          },
          { key: (p) => p.id, reuse: 'content', concurrency: 4 },
        ),
      }),
      deploy.version ? { version: deploy.version } : {},
    );
}

const total = (calls: Counter, list: readonly Paragraph[]): number => list.reduce((sum, p) => sum + calls.of(p.id), 0);

/** What a fresh run over `list` returns. */
const freshResult = (list: readonly Paragraph[], config?: unknown): { claims: unknown[] } => ({ claims: list.map((p) => mine(p, config)) });

/** The paragraphs with paragraph `n` edited. */
const edited = (list: readonly Paragraph[], n: number): Paragraph[] =>
  list.map((p, i) => (i === n ? { ...p, text: `${p.text}, edited at length` } : p));

describe.each(ALL_STORES)('reuse of unchanged items on $name', (kind) => {
  const open = useCairns();

  it('editing 1 paragraph of 2,000 upstream runs exactly 1 item, with the results of a fresh run', async () => {
    const url = await kind.freshUrl();
    const file = newDocument();
    const calls = new Counter();
    const first = await open(url).run(upstreamMining(file, calls), {});
    expect(first.status).toBe('completed');
    expect(total(calls, paragraphs())).toBe(COUNT);

    const changed = edited(paragraphs(), 1234);
    writeDocument(file, changed);
    calls.reset();
    const cairn = open(url);
    const progress = record(cairn, 'items:progress');
    const again = await cairn.run(upstreamMining(file, calls), {});
    expect(again.status).toBe('completed');
    expect(total(calls, changed)).toBe(1);
    expect(calls.of('p1234')).toBe(1);

    // what a fresh run on the edited document gives
    const fresh = await open(url).run(upstreamMining(file, new Counter()), {}, { runId: 'fresh' });
    expect(again.result).toEqual(fresh.result);
    expect(again.result).toEqual(freshResult(changed));

    const mining = again.stages.find((s) => s.name === 'mining');
    expect(mining?.items).toEqual({ paragraphs: { done: COUNT, failed: 0, total: COUNT, reused: COUNT - 1 } });
    expect(progress.at(-1)).toMatchObject({ done: COUNT, total: COUNT, reused: COUNT - 1 });
    expect(again.history.map((h) => h.message)).toContain(
      `Stage mining reused ${COUNT - 1} of ${COUNT} items of paragraphs from mining.paragraphs (their content was unchanged).`,
    );
    // the new generation's ledger: every item once, the reused ones marked, each with its hash
    const entries = await ledgerEntries(url, again.id, 'mining.paragraphs.g1');
    expect(entries).toHaveLength(COUNT);
    expect(entries.filter((e) => e.reusedFrom === 'mining.paragraphs')).toHaveLength(COUNT - 1);
    expect(entries.find((e) => e.key === 'p1234')).toMatchObject({ status: 'done' });
    expect(entries.find((e) => e.key === 'p1234')?.reusedFrom).toBeUndefined();
    expect(entries.every((e) => typeof e.hash === 'string' && e.hash.length === 32)).toBe(true);
    expect(entries.some((e) => e.spend !== undefined)).toBe(false);
  });

  it("editing 1 paragraph of the stage's own input file runs 1 item; without reuse all of them run", async () => {
    const url = await kind.freshUrl();
    const file = newDocument();
    const calls = new Counter();
    expect((await open(url).run(fileMining(file, calls), {})).status).toBe('completed');
    writeDocument(file, edited(paragraphs(), 7));
    calls.reset();
    const reused = await open(url).run(fileMining(file, calls), {});
    expect(reused.status).toBe('completed');
    expect(total(calls, paragraphs())).toBe(1);
    expect(calls.of('p7')).toBe(1);

    // the same edit again without reuse: today's behaviour, every item is paid again
    expect(reused.result).toEqual(freshResult(edited(paragraphs(), 7)));

    // the same edit again without reuse: today's behaviour, every item is paid again
    const twice = edited(edited(paragraphs(), 7), 8);
    writeDocument(file, twice);
    calls.reset();
    const all = await open(url).run(fileMining(file, calls, { reuse: false }), {});
    expect(all.status).toBe('completed');
    expect(total(calls, paragraphs())).toBe(COUNT);
    expect(all.stages[0]?.items?.paragraphs?.reused).toBeUndefined();
    expect(all.result).toEqual(freshResult(twice));
  });

  it('a version bump or a config change runs all of them', async () => {
    const url = await kind.freshUrl();
    const list = paragraphs(300);
    const file = newDocument(list);
    const calls = new Counter();
    expect((await open(url).run(fileMining(file, calls), {})).status).toBe('completed');

    const v1 = edited(list, 3);
    writeDocument(file, v1);
    calls.reset();
    const bumped = await open(url).run(fileMining(file, calls, { version: '2' }), {});
    expect(bumped.status).toBe('completed');
    expect(total(calls, list)).toBe(list.length);
    expect(bumped.stages[0]?.items?.paragraphs).toMatchObject({ done: list.length, reused: 0 });
    expect(bumped.history.some((h) => h.event === 'items:reused')).toBe(false);

    const v2 = edited(v1, 4);
    writeDocument(file, v2);
    calls.reset();
    const configured = await open(url).run(fileMining(file, calls, { version: '2', config: { model: 'large' } }), {});
    expect(configured.status).toBe('completed');
    expect(total(calls, list)).toBe(list.length);
    expect((configured.result as { claims: { by: unknown }[] }).claims.every((c) => (c.by as { model: string }).model === 'large')).toBe(
      true,
    );

    // back to reuse once the processing is unchanged: only the edited paragraph runs
    const v3 = edited(v2, 5);
    writeDocument(file, v3);
    calls.reset();
    const edit = await open(url).run(fileMining(file, calls, { version: '2', config: { model: 'large' } }), {});
    expect(total(calls, list)).toBe(1);
    expect(calls.of('p5')).toBe(1);
    expect(edit.result).toEqual(freshResult(v3, { model: 'large' }));
  });

  it('an insert: with key only the new item runs; with index keys every item after it runs', async () => {
    const list = paragraphs(100);
    const inserted = [...list.slice(0, 60), { id: 'new', text: 'a new paragraph' }, ...list.slice(60)];
    const url = await kind.freshUrl();
    for (const key of [true, false]) {
      const runId = key ? 'with-key' : 'index-keys';
      const file = newDocument(list);
      const calls = new Counter();
      expect((await open(url).run(fileMining(file, calls, { key }), {}, { runId })).status).toBe('completed');
      writeDocument(file, inserted);
      calls.reset();
      const again = await open(url).run(fileMining(file, calls, { key }), {}, { runId });
      expect(again.status).toBe('completed');
      // index keys: items 0–59 keep key and content; 60 on have another item under their key (and 100 is new)
      expect(total(calls, inserted)).toBe(key ? 1 : 41);
      expect(again.result).toEqual(freshResult(inserted));
    }
  });

  it('an item that fails after the reuse: the resume runs only it, never a reused item', async () => {
    const url = await kind.freshUrl();
    const list = paragraphs(400);
    const file = newDocument(list);
    const calls = new Counter();
    expect((await open(url).run(fileMining(file, calls), {})).status).toBe('completed');

    const changed = edited(edited(list, 50), 350);
    writeDocument(file, changed);
    calls.reset();
    const failed = await open(url).run(fileMining(file, calls, { failOn: new Set(['p350']) }), {});
    expect(failed.status).toBe('failed');
    expect(total(calls, changed)).toBe(2); // p50 done, p350 failed: nothing else ran

    calls.reset();
    const resumed = await open(url).run(fileMining(file, calls), {});
    expect(resumed.status).toBe('completed');
    expect(total(calls, changed)).toBe(1);
    expect(calls.of('p350')).toBe(1);
    expect(resumed.result).toEqual(freshResult(changed));
    // each reused item was written once, in the first attempt
    const entries = await ledgerEntries(url, resumed.id, 'mining.paragraphs.g1');
    expect(entries.filter((e) => e.reusedFrom !== undefined)).toHaveLength(398);
    expect(new Set(entries.filter((e) => e.reusedFrom !== undefined).map((e) => e.key)).size).toBe(398);
    expect(resumed.stages[0]?.items?.paragraphs).toEqual({ done: 400, failed: 0, total: 400, reused: 398 });
  });

  it('the store failing part-way through the reused batches: the run goes on from what was written, paying for no reused item', async () => {
    const url = await kind.freshUrl();
    const list = paragraphs(500);
    const file = newDocument(list);
    const calls = new Counter();
    const small = (deploy: Deploy = {}) => fileMining(file, calls, deploy);
    expect((await open(url).run(small(), {})).status).toBe('completed');

    writeDocument(file, edited(list, 499));
    calls.reset();
    // the reuse pass writes batches of checkpointEvery (here 1000 > 500: all of it in one or two
    // batches); the store takes the first write of the new ledger and refuses the rest
    const inner = await openStore(url);
    let writes = 0;
    const failing = new Proxy(inner, {
      get(target, prop, receiver) {
        if (prop === 'appendItems') {
          return async (runId: string, ledger: string, entries: readonly unknown[], options: unknown) => {
            if (ledger === 'mining.paragraphs.g1' && ++writes > 1) throw new Error('disk gone');
            return target.appendItems(runId, ledger, entries as never, options as never);
          };
        }
        const value: unknown = Reflect.get(target, prop, receiver);
        return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
      },
    });
    const cairn = new Cairn({ store: failing, handleSignals: false });
    let stopped;
    try {
      stopped = await cairn.run(
        pipeline('reuse-file').stage(
          'mining',
          async (ctx) => ({
            claims: await ctx.items(
              'paragraphs',
              readDocument(file),
              (p) => {
                calls.hit(p.id);
                return mine(p, ctx.config);
              },
              { key: (p) => p.id, reuse: 'content', checkpointEvery: 100 },
            ),
          }),
          { inputs: [file] },
        ),
        {},
      );
    } finally {
      await cairn.close();
      await inner.close();
    }
    expect(stopped.status).not.toBe('completed');
    const written = await ledgerEntries(url, stopped.id, 'mining.paragraphs.g1');
    expect(written.length).toBeGreaterThan(0);
    expect(written.length).toBeLessThan(500);
    expect(written.every((e) => e.reusedFrom === 'mining.paragraphs')).toBe(true);
    expect(total(calls, list)).toBe(0); // the pass comes before any item runs

    const resumed = await open(url).run(small(), {});
    expect(resumed.status).toBe('completed');
    expect(total(calls, list)).toBe(1);
    expect(calls.of('p499')).toBe(1);
    const entries = await ledgerEntries(url, resumed.id, 'mining.paragraphs.g1');
    expect(new Set(entries.map((e) => e.key)).size).toBe(500);
    expect(entries).toHaveLength(500); // nothing written twice
    expect(resumed.result).toEqual(freshResult(edited(list, 499)));
  });
});

describe('reuse: what it refuses', () => {
  const open = useCairns();

  it('a reuse it does not know, and an item it cannot hash', async () => {
    const url = `memory:reuse-refusals-${process.pid}`;
    const bad = pipeline('reuse-bad').stage('s', (ctx) => ctx.items('xs', [1], (x) => x, { reuse: 'everything' as 'content' }));
    const run = await open(url).run(bad, {});
    expect(run.status).toBe('failed');
    expect(run.error?.message).toContain("reuse must be 'content'");

    class Opaque {}
    const unhashable = pipeline('reuse-unhashable').stage('s', (ctx) => ctx.items('xs', [new Opaque()], () => 1, { reuse: 'content' }));
    const second = await open(url).run(unhashable, {});
    expect(second.status).toBe('failed');
    expect(second.error?.message).toContain("ctx.items(xs) with reuse: 'content': item 0 cannot be hashed");
    await withStore(url, async (store) => expect(await store.listLedgers(second.id)).toEqual([]));
  });
});
