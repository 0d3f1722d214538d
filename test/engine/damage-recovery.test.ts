/**
 * The rules of `cairn validate` (src/cli/run-validation.ts) that the CLI tests do not reach, on every
 * engine store, in this process: a workflow's damaged step checkpoint is recovered once a newer
 * intact snapshot exists (a resume starts from there), and a damaged ledger of an earlier generation
 * of a pipeline stage is recovered once the stage works in a later one (no run reads it again).
 */
import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { checkRun } from '../../src/cli/run-validation.js';
import { END, pipeline, workflow } from '../../src/index.js';
import { MemoryStore } from '../../src/stores/memory/memory-store.js';
import { flipByte } from '../conformance/store-spec.js';
import { mutateFileLine } from '../helpers.js';
import { damageCheckpoint, useCairns, withStore } from './engine-helpers.js';
import { ENGINE_STORES, type EngineStoreKind } from './store-matrix.js';

/** Damages the first record of ledger `ledger` in raw storage (a format 2 batch on files, a row or entry elsewhere). */
function damageFirstItem(kind: EngineStoreKind['name'], url: string, runId: string, ledger: string): void {
  const rest = url.slice(url.indexOf(':') + 1);
  if (kind === 'file') return mutateFileLine(rest, runId, `items/${ledger}.jsonl`, () => true, flipByte);
  if (kind === 'memory') {
    const lines = new MemoryStore(rest).space.get(runId)?.ledgers.get(ledger);
    if (!lines?.[0]) throw new Error(`no ledger ${ledger} of ${runId}`);
    lines[0] = flipByte(lines[0]);
    return;
  }
  const db = new Database(rest);
  try {
    const row = db
      .prepare(
        'SELECT i.id, i.line FROM cairn_items i JOIN cairn_ledgers l ON l.id = i.ledger_id WHERE l.run_id = ? AND l.stage = ? ORDER BY i.id LIMIT 1',
      )
      .get(runId, ledger) as { id: number; line: string };
    db.prepare('UPDATE cairn_items SET line = ? WHERE id = ?').run(flipByte(row.line), row.id);
  } finally {
    db.close();
  }
}

describe.each(ENGINE_STORES)('damage a run recovered from, on $name', (kind) => {
  const open = useCairns();

  it('a damaged workflow step: untrustworthy, then recovered once a newer intact snapshot is written', async () => {
    const url = await kind.freshUrl();
    const crash = { atStep: 6 };
    const make = () =>
      workflow('steps', { initial: { n: 1, count: 0 } })
        .node('mix', (s, ctx) => {
          if (ctx.step + 1 === crash.atStep) {
            crash.atStep = -1;
            throw new Error('interrupted at step 6');
          }
          return { n: (s.n * 31 + 7) % 1009, count: s.count + 1 };
        })
        .edge('mix', (s) => (s.count < 10 ? 'mix' : END));
    const failed = await open(url).run(make(), {});
    expect(failed.status).toBe('failed');
    const step3 = await withStore(url, async (s) =>
      (await s.listCheckpoints(failed.id)).find((e) => e.valid && e.ref.kind === 'step' && e.ref.meta?.step === 3),
    );
    const seq = step3?.valid ? step3.ref.seq : -1;
    await damageCheckpoint(kind.name, url, failed.id, seq);

    const before = await withStore(url, (s) => checkRun(s, failed.id));
    expect(before?.problems.map((p) => [p.code, p.where, p.position])).toEqual([['CHECKPOINT_CORRUPT', 'checkpoints', seq]]);

    const done = await open(url).run(make(), {});
    expect(done.status).toBe('completed');
    const after = await withStore(url, (s) => checkRun(s, failed.id));
    expect(after).toMatchObject({ valid: true, problems: [] });
    expect(after?.recovered.map((p) => [p.code, p.where, p.position])).toEqual([['CHECKPOINT_CORRUPT', 'checkpoints', seq]]);
    expect(after?.recovered[0]?.recoveredBy).toMatch(/^snapshot \d+ is intact and newer/);
  });

  it('a damaged ledger of an earlier stage generation: recovered once the stage reran in a new one', async () => {
    const url = await kind.freshUrl();
    const make = (version: string) =>
      pipeline('gens', { version })
        .stage('list', () => [1, 2, 3, 4])
        .stage('square', (ctx) => ctx.items('nums', ctx.output('list'), (x) => x * x));
    const first = await open(url).run(make('1'), {}, { runId: 'gens' });
    expect(first.status).toBe('completed');
    damageFirstItem(kind.name, url, 'gens', 'square.nums');
    const damaged = await withStore(url, (s) => checkRun(s, 'gens'));
    expect(damaged?.problems.map((p) => [p.code, p.where])).toEqual([
      ['CHECKPOINT_CORRUPT', 'items/square.nums'],
      ['LEDGER_SHORT', 'items/square.nums'],
    ]);

    // a new pipeline version: every stage runs again, in generation 1 with ledgers of its own
    const again = await open(url).run(make('2'), {}, { runId: 'gens' });
    expect(again.status).toBe('completed');
    const after = await withStore(url, (s) => checkRun(s, 'gens'));
    expect(after).toMatchObject({ valid: true, problems: [] });
    expect(after?.recovered.map((p) => [p.code, p.where])).toEqual([['CHECKPOINT_CORRUPT', 'items/square.nums']]);
    expect(after?.recovered[0]?.recoveredBy).toContain('generation 0 of stage square, which now works in generation 1');
  });
});
