/** Workflow nodes record artifacts and item counts the way pipeline stages do. */
import fs from 'node:fs';
import { beforeEach, describe, expect, it } from 'vitest';
import { workflow } from '../../src/index.js';
import { useCairns } from './engine-helpers.js';
import { ENGINE_STORES } from './store-matrix.js';

describe.each(ENGINE_STORES)('workflow artifacts on the $name store', (kind) => {
  const cairns = useCairns();
  let url: string;
  beforeEach(async () => {
    url = await kind.freshUrl();
  });

  it('records a node artifact with size and sha256, and the node summary has its item counts', async () => {
    const wf = workflow('art-wf', { initial: { file: '' } })
      .node('write', async (_s, ctx) => {
        const squares = await ctx.items('sq', [1, 2, 3], (n) => n * n);
        const file = ctx.artifactPath('out/squares.txt');
        fs.writeFileSync(file, squares.join('\n'));
        return { file: ctx.artifact(file).name };
      })
      .node('done', () => undefined)
      .edge('write', 'done');
    const cairn = cairns(url);
    const run = await cairn.run(wf, {});
    expect(run.status).toBe('completed');
    expect(run.result).toEqual({ file: 'out/squares.txt' });
    const store = await cairn.store();
    const artifacts = await store.listArtifacts(run.id);
    expect(artifacts).toEqual([expect.objectContaining({ path: 'out/squares.txt', size: '1\n4\n9'.length, stage: 'write' })]);
    expect(await store.validateRun(run.id)).toEqual([]);
    expect(run.stages.find((s) => s.name === 'write')?.items).toEqual({ sq: { done: 3, failed: 0, total: 3 } });
  });
});
