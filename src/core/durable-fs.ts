/**
 * Durable file steps for code outside the stores (export and import files): write a whole buffer,
 * make a folder's entries durable. The file store keeps its own, tuned to its logs.
 */
import fs from 'node:fs/promises';

/** Writes every byte of `data` through `handle` (a single write for all but huge buffers). */
export async function writeAll(handle: fs.FileHandle, data: Buffer): Promise<void> {
  let offset = 0;
  while (offset < data.length) {
    const { bytesWritten } = await handle.write(data, offset, data.length - offset, null);
    offset += bytesWritten;
  }
}

/** Makes a folder's entries (created, renamed, removed files) durable. */
export async function syncDir(dir: string): Promise<void> {
  const handle = await fs.open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** The errno code of a file system error, if any. */
export function errnoOf(error: unknown): string | undefined {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}
