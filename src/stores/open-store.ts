import fs from 'node:fs';
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
      const where = checkKind(url, storeLocation(url)!, 'folder');
      const { FileStore } = await import('./file/file-store.js');
      return FileStore.open(where.path, options);
    }
    case 'sqlite': {
      if (rest === ':memory:') return (await import('./sqlite/sqlite-store.js')).SqliteStore.open(':memory:', options);
      const where = checkKind(url, storeLocation(url)!, 'file');
      const { SqliteStore } = await import('./sqlite/sqlite-store.js');
      return SqliteStore.open(where.query ? `${where.path}?${where.query}` : where.path, options);
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

/** Where a `file:` or `sqlite:` store lives: its folder or database file (absolute), and a SQLite URL's option. */
export interface StoreLocation {
  readonly kind: 'file' | 'sqlite';
  readonly path: string;
  /** `synchronous=FULL|NORMAL`, the one option of a `sqlite:` URL. */
  readonly query?: string;
}

/** Longest path component and path most filesystems take (bytes). */
const NAME_MAX = 255;
const PATH_MAX = 4095;

/**
 * The location of a `file:` or `sqlite:` store, undefined for the others (memory, Postgres,
 * `sqlite::memory:`). `INVALID_STORE_URL` for a URL no store can live at: an empty path, a path
 * too long for the filesystem, an option a SQLite URL does not take.
 */
export function storeLocation(url: string): StoreLocation | undefined {
  const colon = url.indexOf(':');
  const scheme = colon < 0 ? '' : url.slice(0, colon);
  let rest = colon < 0 ? url : url.slice(colon + 1);
  if (scheme !== 'file' && scheme !== 'sqlite') return undefined;
  if (scheme === 'sqlite' && rest === ':memory:') return undefined;
  let query: string | undefined;
  if (scheme === 'sqlite' && rest.includes('?')) {
    query = rest.slice(rest.indexOf('?') + 1);
    rest = rest.slice(0, rest.indexOf('?'));
    if (!/^synchronous=(full|normal)$/i.test(query)) {
      throw new CairnError(
        'INVALID_STORE_URL',
        `Store URL ${JSON.stringify(url)} has an option SQLite stores do not take (${JSON.stringify(query)}): the only one is ?synchronous=FULL (the default) or ?synchronous=NORMAL.`,
        { url },
      );
    }
  }
  if (!rest || rest.includes('\0')) throw badUrl(url);
  const full = path.resolve(stripSlashes(rest));
  const long = full.split(path.sep).find((part) => Buffer.byteLength(part) > NAME_MAX);
  if (long !== undefined || Buffer.byteLength(full) > PATH_MAX) {
    throw new CairnError(
      'INVALID_STORE_URL',
      long !== undefined
        ? `Store URL ${JSON.stringify(url)}: the name ${JSON.stringify(`${long.slice(0, 40)}…`)} is ${Buffer.byteLength(long)} bytes; a file or folder name takes at most ${NAME_MAX}.`
        : `Store URL ${JSON.stringify(url)}: the path is ${Buffer.byteLength(full)} bytes; at most ${PATH_MAX}.`,
      { url },
    );
  }
  return { kind: scheme, path: full, ...(query === undefined ? {} : { query }) };
}

/** `INVALID_STORE_URL` when something other than the store's kind of file is at its path (`file:/dev/null`). */
function checkKind(url: string, where: StoreLocation, kind: 'folder' | 'file'): StoreLocation {
  let stat: fs.Stats;
  try {
    stat = fs.statSync(where.path);
  } catch {
    return where; // nothing there yet: the store creates it
  }
  if (kind === 'folder' ? stat.isDirectory() : stat.isFile()) return where;
  throw new CairnError(
    'INVALID_STORE_URL',
    `Store URL ${JSON.stringify(url)}: ${where.path} is ${stat.isDirectory() ? 'a folder' : stat.isFile() ? 'a file' : 'a device or special file'}, not the ${kind === 'folder' ? 'folder of a file store' : 'database file of a SQLite store'}.`,
    { url, path: where.path },
  );
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
