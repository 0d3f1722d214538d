import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { MemoryStore, type MemoryRunData } from '../../src/stores/memory/memory-store.js';
import { openStore } from '../../src/stores/open-store.js';
import { removeRunRecord } from '../remove-run-record.js';
import type { StoreHarness } from './harness.js';
import { describeStoreConformance } from './store-spec.js';

function runData(url: string, runId: string): MemoryRunData {
  const data = new MemoryStore(url.slice('memory:'.length)).space.get(runId);
  if (!data) throw new Error(`no run ${runId} in ${url}`);
  return data;
}

const harness: StoreHarness = {
  name: 'memory',
  freshUrl: () => Promise.resolve(`memory:conformance-${randomUUID()}`),
  open: (url, options) => openStore(url, options),
  destroy: (url) => {
    new MemoryStore(url.slice('memory:'.length)).space.clear();
    return Promise.resolve();
  },
  tamper: {
    mutateCheckpoint(url, runId, seq, mutate) {
      const data = runData(url, runId);
      const line = data.checkpoints.get(seq);
      if (line === undefined) throw new Error(`no checkpoint ${seq}`);
      data.checkpoints.set(seq, mutate(line));
      return Promise.resolve();
    },
    tearCheckpointTail(url, runId, partial) {
      const data = runData(url, runId);
      data.checkpoints.set(data.nextSeq, partial);
      data.nextSeq += 1;
      return Promise.resolve();
    },
    mutateItem(url, runId, stage, position, mutate) {
      const lines = runData(url, runId).ledgers.get(stage);
      const line = lines?.[position];
      if (!lines || line === undefined) throw new Error(`no item ${position} in ${stage}`);
      lines[position] = mutate(line);
      return Promise.resolve();
    },
    mutateRun(url, runId, mutate) {
      const data = runData(url, runId);
      if (data.runLine === undefined) throw new Error(`no run record of ${runId}`);
      data.runLine = mutate(data.runLine);
      return Promise.resolve();
    },
    removeRunRecord,
  },
};

describeStoreConformance(harness);

describe('memory store', () => {
  it('removes a private store’s artifact folder when it closes', async () => {
    const store = new MemoryStore();
    const dir = store.artifactDir('r1');
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, 'out.txt'), 'x');
    await store.close();
    expect(fs.existsSync(dir)).toBe(false);
  });
});
