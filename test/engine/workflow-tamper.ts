/**
 * Raw-storage damage for engine tests, per store: the same kinds of damage as the conformance
 * harnesses (`test/conformance/*.test.ts`), reached through a store URL.
 */
import Database from 'better-sqlite3';
import { unsealLine } from '../../src/core/record.js';
import { MemoryStore } from '../../src/stores/memory/memory-store.js';
import { mutateFileLine } from '../helpers.js';

/** Flips one character in the middle of a line (its checksum no longer matches). */
export function flipByte(line: string): string {
  const at = Math.floor(line.length * 0.6);
  const c = line[at] === 'x' ? 'y' : 'x';
  return line.slice(0, at) + c + line.slice(at + 1);
}

function seqOf(line: string): number | undefined {
  const opened = unsealLine(line);
  return opened.ok && typeof opened.body.seq === 'number' ? opened.body.seq : undefined;
}

/** Replaces the stored line of checkpoint `seq` of `runId` with `mutate(line)`, in raw storage. */
export async function mutateCheckpoint(url: string, runId: string, seq: number, mutate: (line: string) => string): Promise<void> {
  if (url.startsWith('file:')) {
    mutateFileLine(
      url.slice('file:'.length),
      runId,
      'checkpoints.jsonl',
      (line) => seqOf(line) === seq && !line.includes('"t":"cp-del"'),
      mutate,
    );
    return;
  }
  if (url.startsWith('sqlite:')) {
    const db = new Database(url.slice('sqlite:'.length));
    try {
      const line = db.prepare('SELECT line FROM cairn_checkpoints WHERE run_id = ? AND seq = ?').pluck().get(runId, seq) as
        string | undefined;
      if (line === undefined) throw new Error(`tamper: no checkpoint ${seq}`);
      db.prepare('UPDATE cairn_checkpoints SET line = ? WHERE run_id = ? AND seq = ?').run(mutate(line), runId, seq);
    } finally {
      db.close();
    }
    return;
  }
  if (url.startsWith('memory:')) {
    const data = new MemoryStore(url.slice('memory:'.length)).space.get(runId);
    const line = data?.checkpoints.get(seq);
    if (!data || line === undefined) throw new Error(`tamper: no checkpoint ${seq}`);
    data.checkpoints.set(seq, mutate(line));
    return;
  }
  throw new Error(`tamper: unsupported store ${url}`);
}
