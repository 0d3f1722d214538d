import path from 'node:path';
import { CairnError } from '../core/errors.js';
import type { StoreOptions } from './common.js';
import { redactPostgresUrl } from './postgres/postgres-driver.js';
import type { PostgresStoreOptions } from './postgres/postgres-store.js';
import type { Store } from './store.js';

/** The store used when none is given: a folder of human-readable files under the working directory. */
export const DEFAULT_STORE_URL = 'file:./data/checkpoints';

/** Options for {@link openStore}: every store's, and the Postgres store's own (ignored by the others). */
export type OpenStoreOptions = StoreOptions & Pick<PostgresStoreOptions, 'poolSize' | 'artifactRoot'>;

/**
 * Opens a store by URL: `memory:`, `memory:<name>`, `file:<dir>`, `sqlite:<path>`,
 * `postgres://user@host:5432/db?schema=name` (or `postgresql://`; `?pool=N`, `?artifacts=<dir>`).
 * Drivers (`better-sqlite3`, `pg`) are loaded only when their store is opened.
 * @example const store = await openStore('sqlite:./data/cairn.db');
 */
export async function openStore(url: string = DEFAULT_STORE_URL, options: OpenStoreOptions = {}): Promise<Store> {
  if (typeof url !== 'string' || url.length === 0) throw badUrl(String(url));
  const colon = url.indexOf(':');
  const scheme = colon < 0 ? '' : url.slice(0, colon);
  const rest = colon < 0 ? url : url.slice(colon + 1);
  switch (scheme) {
    case 'memory': {
      const { MemoryStore } = await import('./memory/memory-store.js');
      return new MemoryStore(rest || undefined, options);
    }
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
    case 'postgres':
    case 'postgresql': {
      const { PostgresStore } = await import('./postgres/postgres-store.js');
      return PostgresStore.open(url, options);
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
  const shown = redactPostgresUrl(url);
  return new CairnError(
    'INVALID_STORE_URL',
    `Unknown store URL ${JSON.stringify(shown)}. Use memory:, file:<dir>, sqlite:<path> or postgres://user@host/db?schema=name ` +
      '(for example file:./data/checkpoints).',
    { url: shown },
  );
}

/**
 * A store URL as it may be printed: a Postgres URL loses its password; others are unchanged.
 * @example displayStoreUrl('postgres://app:s3cret@db/jobs') // 'postgres://app@db/jobs'
 */
export function displayStoreUrl(url: string): string {
  return redactPostgresUrl(url);
}
