import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll } from 'vitest';
import { unsealLine } from '../../src/core/record.js';
import { openStore } from '../../src/stores/open-store.js';
import type { StoreHarness } from './harness.js';
import { describeStoreConformance } from './store-spec.js';

// every store folder of this file lives in one private parent, so "nothing created outside the
// root" is checked against a folder no other test file writes to
const parent = await fs.mkdtemp(path.join(os.tmpdir(), 'cairn-file-conformance-'));
afterAll(() => fs.rm(parent, { recursive: true, force: true }));

const rootOf = (url: string): string => url.slice('file:'.length);

async function readLines(file: string): Promise<string[]> {
  const text = await fs.readFile(file, 'utf8');
  const lines = text.split('\n');
  lines.pop(); // after the last "\n"
  return lines;
}

async function writeLines(file: string, lines: readonly string[]): Promise<void> {
  await fs.writeFile(file, lines.map((line) => `${line}\n`).join(''));
}

function seqOf(line: string): number | undefined {
  const opened = unsealLine(line);
  if (opened.ok) return typeof opened.body.seq === 'number' ? opened.body.seq : undefined;
  const match = /"seq":(\d+)/.exec(line);
  return match ? Number(match[1]) : undefined;
}

const harness: StoreHarness = {
  name: 'file',
  freshUrl: async () => `file:${await fs.mkdtemp(path.join(parent, 'store-'))}`,
  open: (url, options) => openStore(url, options),
  destroy: (url) => fs.rm(rootOf(url), { recursive: true, force: true }),
  rootDir: rootOf,
  tamper: {
    async mutateCheckpoint(url, runId, seq, mutate) {
      const file = path.join(rootOf(url), runId, 'checkpoints.jsonl');
      const lines = await readLines(file);
      const at = lines.findIndex((line) => seqOf(line) === seq && !line.includes('"t":"cp-del"'));
      const line = lines[at];
      if (line === undefined) throw new Error(`no checkpoint ${seq} in ${file}`);
      lines[at] = mutate(line);
      await writeLines(file, lines);
    },
    async tearCheckpointTail(url, runId, partial) {
      await fs.appendFile(path.join(rootOf(url), runId, 'checkpoints.jsonl'), partial);
    },
    async mutateItem(url, runId, stage, position, mutate) {
      const file = path.join(rootOf(url), runId, 'items', `${stage}.jsonl`);
      const lines = await readLines(file);
      const line = lines[position];
      if (line === undefined) throw new Error(`no item ${position} in ${file}`);
      lines[position] = mutate(line);
      await writeLines(file, lines);
    },
    async mutateRun(url, runId, mutate) {
      const file = path.join(rootOf(url), runId, 'run.json');
      const [line] = await readLines(file);
      if (line === undefined) throw new Error(`no run record in ${file}`);
      await fs.writeFile(file, `${mutate(line)}\n`);
    },
  },
};

describeStoreConformance(harness);
