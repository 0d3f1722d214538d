/**
 * The subset of better-sqlite3 this store needs, declared structurally (as kysely does) so that
 * cairn has no dependency on the driver's types and loads it only when a `sqlite:` store opens.
 * better-sqlite3 is an optional peer dependency: users of other stores never install it.
 */
import fs from 'node:fs';
import path from 'node:path';
import { CairnError, isCairnError } from '../../core/errors.js';
import { optionalDriverLoader } from '../optional-driver.js';
import { freeBytes, storeFullError } from '../transient.js';

/** Bound values: numbers, strings, null, bigints, buffers; or one object for `@named` parameters. */
export type SqliteParam = string | number | bigint | null | Buffer | Readonly<Record<string, string | number | bigint | null | Buffer>>;

export interface SqliteRunResult {
  readonly changes: number;
  readonly lastInsertRowid: number | bigint;
}

/** A prepared statement. Rows come back as `unknown`; callers narrow them to their row shape. */
export interface SqliteStatement {
  run(...params: readonly SqliteParam[]): SqliteRunResult;
  get(...params: readonly SqliteParam[]): unknown;
  all(...params: readonly SqliteParam[]): unknown[];
  /** Steps lazily; the connection is busy until the iterator ends or `return()` is called. */
  iterate(...params: readonly SqliteParam[]): IterableIterator<unknown>;
  /** Return only the first column of each row. */
  pluck(toggle?: boolean): this;
}

/** A function wrapped by {@link SqliteDatabase.transaction}: `BEGIN … COMMIT`, rolled back on a throw. */
export interface SqliteTransaction<A extends unknown[], R> {
  (...args: A): R;
  /** Runs inside `BEGIN IMMEDIATE`: takes the write lock first, so read-then-write cannot go stale. */
  immediate(...args: A): R;
}

export interface SqliteDatabase {
  prepare(source: string): SqliteStatement;
  exec(source: string): unknown;
  pragma(source: string, options?: { readonly simple?: boolean }): unknown;
  transaction<A extends unknown[], R>(fn: (...args: A) => R): SqliteTransaction<A, R>;
  close(): unknown;
  readonly open: boolean;
  readonly inTransaction: boolean;
}

export interface SqliteDatabaseOptions {
  /** Milliseconds to wait for a lock held by another connection (`busy_timeout`). */
  readonly timeout?: number;
}

export type SqliteDatabaseConstructor = new (filename: string, options?: SqliteDatabaseOptions) => SqliteDatabase;

/** The package users install for the `sqlite:` store. */
export const SQLITE_DRIVER_PACKAGE = 'better-sqlite3';

/**
 * How long one try waits, blocking this process, for another connection's lock before SQLite
 * answers `SQLITE_BUSY`. Short on purpose: the store then backs off and tries again without
 * blocking (timers, lease renewals and other runs go on) for up to `transientRetryMs`.
 */
export const BUSY_TIMEOUT_MS = 100;

/**
 * Loads the driver's `Database` class, once per module name. `moduleName` exists for tests.
 * Throws `DRIVER_MISSING` (with the import error as `cause`) when the package is not installed.
 */
export const loadSqliteDriver = optionalDriverLoader<SqliteDatabaseConstructor>({
  store: 'sqlite:',
  packageName: SQLITE_DRIVER_PACKAGE,
  needs: 'a Database class',
  pick: (mod) => {
    const ctor = (mod as { default?: unknown }).default ?? mod;
    return typeof ctor === 'function' ? (ctor as SqliteDatabaseConstructor) : undefined;
  },
});

/** `FULL` syncs the WAL on every commit (survives power loss); `NORMAL` only at checkpoints (survives a crashed process). */
export type SqliteSynchronous = 'FULL' | 'NORMAL';

/**
 * Opens a connection and sets the pragmas every cairn connection uses: WAL (readers never block
 * the writer, one fsync per commit), `synchronous`, `busy_timeout`, `foreign_keys`.
 * The parent folder is created if needed, like the file store does for its root.
 */
export function openSqliteDatabase(Database: SqliteDatabaseConstructor, file: string, synchronous: SqliteSynchronous): SqliteDatabase {
  if (file !== ':memory:') fs.mkdirSync(path.dirname(file), { recursive: true });
  let db: SqliteDatabase;
  try {
    db = new Database(file, { timeout: BUSY_TIMEOUT_MS });
  } catch (error) {
    throw translateOpenError(error, file);
  }
  try {
    db.pragma(`busy_timeout = ${BUSY_TIMEOUT_MS}`);
    setJournalModeWal(db);
    db.pragma(synchronous === 'NORMAL' ? 'synchronous = NORMAL' : 'synchronous = FULL');
    db.pragma('foreign_keys = ON');
  } catch (error) {
    db.close();
    throw translateOpenError(error, file);
  }
  return db;
}

/**
 * Switching a fresh file to WAL needs an exclusive lock for a moment; when several processes open
 * the same new file at once, SQLite may answer `SQLITE_BUSY` without calling the busy handler,
 * so this retries for up to the busy timeout.
 */
function setJournalModeWal(db: SqliteDatabase): void {
  const deadline = Date.now() + BUSY_TIMEOUT_MS;
  for (let attempt = 0; ; attempt++) {
    try {
      db.pragma('journal_mode = WAL');
      return;
    } catch (error) {
      if (!isBusy(error) || Date.now() > deadline) throw error;
      sleepSync(Math.min(5 * 2 ** attempt, 100));
    }
  }
}

/** True for SQLite's answers that another connection holds a lock (or is recovering the log): worth trying again. */
export function isBusy(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'string' && (code.startsWith('SQLITE_BUSY') || code.startsWith('SQLITE_LOCKED') || code === 'SQLITE_PROTOCOL');
}

/**
 * A SQLite error as a cairn error naming the database file, with what to do next; cairn errors
 * and errors that are not SQLite's come back unchanged. `SQLITE_FULL` (and an I/O error on a disk
 * with no space left) is `STORE_FULL`; a damaged file `CHECKPOINT_CORRUPT`; anything else the
 * database cannot do now `STORE_UNAVAILABLE`. Busy answers are the caller's (it retries them).
 */
export function sqliteError(error: unknown, file: string): unknown {
  const code = (error as { code?: unknown } | null)?.code;
  if (isCairnError(error) || typeof code !== 'string' || !code.startsWith('SQLITE_')) return error;
  const text = error instanceof Error ? error.message : String(error);
  const context = { file, sqliteCode: code };
  const full =
    code === 'SQLITE_FULL' || (code.startsWith('SQLITE_IOERR') && file !== ':memory:' && (freeBytes(path.dirname(file)) ?? 1) === 0);
  if (full) return storeFullError(file, error, context, code);
  if (code.startsWith('SQLITE_CORRUPT') || code === 'SQLITE_NOTADB') {
    return new CairnError(
      'CHECKPOINT_CORRUPT',
      `The SQLite database ${file} is damaged (${code}: ${text}). Restore it from a backup, or recover what is left with the sqlite3 shell's .recover.`,
      context,
      { cause: error },
    );
  }
  const why = code.startsWith('SQLITE_IOERR')
    ? 'an I/O error (a failing disk, or a file system that went away)'
    : code.startsWith('SQLITE_READONLY')
      ? 'it cannot be written (a read-only file or file system, or it was replaced while open)'
      : code === 'SQLITE_CANTOPEN'
        ? 'a file of it cannot be opened (its folder was removed, or permissions changed)'
        : `an unexpected error (${text})`;
  return new CairnError(
    'STORE_UNAVAILABLE',
    `The SQLite database ${file} cannot be used: ${why} [${code}]. Put it right, then resume the run (cairn resume <run-id>); everything saved before is kept.`,
    context,
    { cause: error },
  );
}

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/** Turns driver errors at open time into errors that say what to do. */
function translateOpenError(error: unknown, file: string): unknown {
  const { code, message } = error as { code?: unknown; message?: unknown };
  const text = typeof message === 'string' ? message : String(error);
  if (code === 'ERR_DLOPEN_FAILED' || /NODE_MODULE_VERSION|bindings file|better_sqlite3\.node/.test(text)) {
    return new CairnError(
      'DRIVER_MISSING',
      `The ${SQLITE_DRIVER_PACKAGE} package is installed but its native module could not be loaded (${text}). Rebuild it for this Node.js: npm rebuild ${SQLITE_DRIVER_PACKAGE}`,
      { driver: SQLITE_DRIVER_PACKAGE },
      { cause: error },
    );
  }
  if (code === 'SQLITE_NOTADB' || code === 'SQLITE_CANTOPEN') {
    return new CairnError(
      'INVALID_STORE_URL',
      `Cannot open ${file} as a SQLite database (${text}). Point sqlite: at a new file or at a cairn database.`,
      { file },
      { cause: error },
    );
  }
  return error;
}
