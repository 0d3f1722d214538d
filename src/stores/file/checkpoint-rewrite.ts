/**
 * Checkpoint deletion: `checkpoints.jsonl` is rewritten atomically (temp file, fsync, rename, folder
 * fsync) with each deleted record replaced by a small sealed tombstone, so its seq is never reused.
 * Runs under the run's mutex; a torn last line is dropped by the rewrite.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { syncDir, tempPathFor, writeAll } from './atomic-write.js';
import { encodeTombstone, toSeqSet, type CheckpointIndex } from './checkpoint-log.js';
import { readRawLineChunks } from './jsonl.js';

const NEWLINE = Buffer.from('\n');

/** Replaces the live checkpoints with these seqs by tombstones. Returns how many were deleted. */
export async function rewriteWithTombstones(
  file: string,
  handle: fs.FileHandle,
  index: CheckpointIndex,
  runId: string,
  seqs: readonly number[],
): Promise<number> {
  const wanted = toSeqSet(seqs);
  const replaced = new Map<number, Buffer>(); // line start → tombstone
  for (const slot of index.slots) {
    if (slot.seq === undefined || slot.tombstone || !wanted.has(slot.seq)) continue;
    wanted.delete(slot.seq); // each seq counts once
    replaced.set(slot.start, Buffer.from(encodeTombstone(runId, slot.seq), 'utf8'));
  }
  if (replaced.size === 0) return 0;
  const temp = tempPathFor(file);
  const out = await fs.open(temp, 'wx');
  try {
    for await (const chunk of readRawLineChunks(handle, { start: 0 })) {
      const parts: Buffer[] = [];
      for (const line of chunk) {
        if (line.end > index.size) break; // appended after the index was taken: cannot happen under the mutex
        parts.push(replaced.get(line.start) ?? line.data, NEWLINE);
      }
      await writeAll(out, Buffer.concat(parts));
    }
    await out.sync();
    await out.close();
    await fs.rename(temp, file);
  } catch (error) {
    await out.close().catch(() => undefined);
    await fs.rm(temp, { force: true });
    throw error;
  }
  await syncDir(path.dirname(file));
  return replaced.size;
}
