import path from 'node:path';
import { CairnError } from '../core/errors.js';
import type { StoreOptions } from './common.js';
import { MemoryStore } from './memory/memory-store.js';
import type { Store } from './store.js';

/** The store used when none is given: a folder of human-readable files under the working directory. */
export const DEFAULT_STORE_URL = 'file:./data/checkpoints';

/**
 * Opens a store by URL: `memory:`, `memory:<name>`, `file:<dir>`, `sqlite:<path>`.
 * Drivers are loaded only when their store is opened.
 * @example const store = await openStore('sqlite:./data/cairn.db');
 */
export async function openStore(url: string = DEFAULT_STORE_URL, options: StoreOptions = {}): Promise<Store> {
  if (typeof url !== 'string' || url.length === 0) throw badUrl(String(url));
  const colon = url.indexOf(':');
  const scheme = colon < 0 ? '' : url.slice(0, colon);
  const rest = colon < 0 ? url : url.slice(colon + 1);
  switch (scheme) {
    case 'memory':
      return new MemoryStore(rest || undefined, options);
    case 'file': {
      if (!rest) throw badUrl(url);
      const { FileStore } = await import('./file/file-store.js');
      return FileStore.open(path.resolve(stripSlashes(rest)), options);
    }
    case 'sqlite': {
      if (!rest) throw badUrl(url);
      const { SqliteStore } = await import('./sqlite/sqlite-store.js');
      return SqliteStore.open(rest === ':memory:' ? ':memory:' : path.resolve(stripSlashes(rest)), options);
    }
    default:
      throw badUrl(url);
  }
}

/** `file:///abs/dir` and `file://./rel` are accepted as well as `file:./rel`. */
function stripSlashes(rest: string): string {
  return rest.startsWith('//') ? rest.slice(2) : rest;
}

function badUrl(url: string): CairnError {
  return new CairnError(
    'INVALID_STORE_URL',
    `Unknown store URL ${JSON.stringify(url)}. Use memory:, file:<dir>, or sqlite:<path> (for example file:./data/checkpoints).`,
    { url },
  );
}
