/**
 * Kill -9 for real: a child process appends checkpoints and item batches through the public API and
 * prints an ack after each write resolved; we SIGKILL it at random moments, then check that every
 * acknowledged checkpoint loads with a valid checksum, that nothing damaged is ever listed, and
 * that every item batch is there whole or not at all.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, describe, expect, it } from 'vitest';
import { CheckpointManager } from '../../src/index.js';

const FIXTURE = path.join(import.meta.dirname, 'fixtures', 'append-loop.mjs');
const KILLS = Number(process.env.CAIRN_CRASH_KILLS ?? (process.env.CAIRN_TORTURE === '1' ? 100 : 12));
const sha = (text: string): string => createHash('sha256').update(text).digest('hex');

interface Acks {
  checkpoints: Map<string, string>;
  batches: Set<string>;
}

/** Runs the writer until it has acked at least one write, then kills it after a random delay. */
function runAndKill(url: string, workflowId: string, acks: Acks): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [FIXTURE, url, workflowId], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    let armed = false;
    createInterface({ input: child.stdout }).on('line', (line) => {
      const [kind, id, value] = line.split(' ');
      if (kind === 'ack' && id && value) acks.checkpoints.set(id, value);
      if (kind === 'items' && id) acks.batches.add(id);
      if (kind === 'ack' && !armed) {
        armed = true;
        setTimeout(() => child.kill('SIGKILL'), Math.floor(Math.random() * 250));
      }
    });
    child.on('error', reject);
    child.on('exit', (code, signal) => {
      if (signal === 'SIGKILL') resolve();
      else reject(new Error(`writer exited with ${code}/${signal}: ${stderr}`));
    });
  });
}

async function verify(url: string, workflowId: string, acks: Acks): Promise<void> {
  const cm = new CheckpointManager({ store: url });
  try {
    const store = await cm.store();
    const entries = await store.listCheckpoints(workflowId);
    // a torn last line is ignored or cut on the next append; a damaged record is never listed as valid
    const invalid = entries.filter((e) => !e.valid);
    expect(invalid, JSON.stringify(invalid)).toEqual([]);
    for (const [id, digest] of acks.checkpoints) {
      const cp = await cm.load<{ blob: string; digest: string }>(id);
      expect(cp.state.digest).toBe(digest);
      expect(sha(cp.state.blob)).toBe(digest);
    }
    const latest = await cm.getMostRecent<{ blob: string; digest: string }>(workflowId);
    expect(latest && sha(latest.state.blob)).toBe(latest?.state.digest);
    const perBatch = new Map<string, number>();
    for await (const item of store.readItems(workflowId, 'batches')) {
      const batch = item.key.slice(0, item.key.lastIndexOf('-'));
      perBatch.set(batch, (perBatch.get(batch) ?? 0) + 1);
    }
    for (const [batch, count] of perBatch) expect(count, `batch ${batch}`).toBe(50);
    for (const batch of acks.batches) expect(perBatch.get(batch), `acked batch ${batch}`).toBe(50);
  } finally {
    await cm.close();
  }
}

const dirs: string[] = [];
afterAll(() => {
  for (const dir of dirs) fs.rmSync(dir, { recursive: true, force: true });
});

describe.each([
  ['file', (dir: string) => `file:${dir}/checkpoints`],
  ['sqlite', (dir: string) => `sqlite:${dir}/cairn.db`],
])('kill -9 while appending: %s store', (_name, urlFor) => {
  it(`keeps every acknowledged checkpoint across ${KILLS} kills`, { timeout: 60_000 + KILLS * 4_000 }, async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-crash-'));
    const url = urlFor(dir);
    const acks: Acks = { checkpoints: new Map(), batches: new Set() };
    for (let kill = 0; kill < KILLS; kill++) {
      await runAndKill(url, 'crashy', acks);
      await verify(url, 'crashy', acks);
    }
    expect(acks.checkpoints.size).toBeGreaterThan(KILLS);
    dirs.push(dir); // kept when the test fails
  });
});
