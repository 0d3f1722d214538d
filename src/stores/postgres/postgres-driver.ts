/**
 * The subset of the `pg` driver this store needs, declared structurally (as kysely does) so that
 * cairn has no dependency on the driver's types and loads it only when a `postgres://` store
 * opens. `pg` is an optional peer dependency: users of other stores never install it.
 * Also here: the store URL (schema, pool size, artifact folder), transactions, and driver errors
 * turned into cairn's codes.
 */
import path from 'node:path';
import { CairnError } from '../../core/errors.js';
import { optionalDriverLoader } from '../optional-driver.js';

/** What a query resolves to. Rows come back as `unknown`; callers narrow them to their row shape. */
export interface PgResult {
  readonly rows: unknown[];
  readonly rowCount: number | null;
}

/** Anything that runs one parameterised statement: the pool, or a client checked out of it. */
export interface PgQueryable {
  query(text: string, values?: readonly unknown[]): Promise<PgResult>;
}

export interface PgPoolClient extends PgQueryable {
  /** Returns the client to the pool; with an error, the pool discards it instead. */
  release(error?: Error | boolean): void;
  /** A checked-out client whose backend dies between queries emits `error`: unheard, it would end the process. */
  on?(event: 'error', listener: (error: Error) => void): unknown;
  removeListener?(event: 'error', listener: (error: Error) => void): unknown;
}

export interface PgPool extends PgQueryable {
  connect(): Promise<PgPoolClient>;
  end(): Promise<void>;
  on(event: 'error', listener: (error: Error) => void): unknown;
  on(event: 'connect', listener: (client: PgPoolClient) => void): unknown;
}

export interface PgPoolConfig {
  readonly connectionString: string;
  readonly max: number;
  readonly application_name?: string;
}

export type PgPoolConstructor = new (config: PgPoolConfig) => PgPool;

/** The driver module as this store uses it. Tests pass their own (a pool whose clients record every query). */
export interface PgDriver {
  readonly Pool: PgPoolConstructor;
}

/** The package users install for the `postgres://` store. */
export const PG_DRIVER_PACKAGE = 'pg';

/**
 * Loads the driver, once per module name. `moduleName` exists for tests.
 * Throws `DRIVER_MISSING` (with the import error as `cause`) when the package is not installed.
 */
export const loadPgDriver = optionalDriverLoader<PgDriver>({
  store: 'postgres://',
  packageName: PG_DRIVER_PACKAGE,
  needs: 'a Pool class',
  pick: (mod) => {
    // pg is CommonJS: its classes sit on `default` (and, from 8.11, as named exports too)
    for (const candidate of [(mod as { default?: unknown }).default, mod]) {
      const Pool = (candidate as { Pool?: unknown } | undefined)?.Pool;
      if (typeof Pool === 'function') return { Pool: Pool as PgPoolConstructor };
    }
    return undefined;
  },
});

// The URL

/** Postgres schema names cairn accepts: the only value ever placed into SQL text, always double-quoted. */
const SCHEMA_PATTERN = /^[a-z_][a-z0-9_]{0,62}$/;

export const DEFAULT_SCHEMA = 'cairn';
export const DEFAULT_POOL_SIZE = 10;
const MAX_POOL_SIZE = 1000;

/** Query parameters cairn reads itself and removes before the URL reaches the driver. */
const CAIRN_PARAMS = ['schema', 'pool', 'artifacts'] as const;

export interface PostgresLocation {
  /** The URL handed to the driver: the given one without cairn's parameters. */
  readonly connectionString: string;
  /** The URL as shown to people (`store.url`, hints, errors): any password removed, cairn's parameters kept. */
  readonly displayUrl: string;
  readonly schema: string;
  /** From `?pool=N`, when given. */
  readonly poolSize?: number;
  /** From `?artifacts=<dir>`, when given (absolute). */
  readonly artifactRoot?: string;
}

/**
 * Reads a `postgres://` or `postgresql://` URL: `?schema=name` (default `cairn`), `?pool=N`,
 * `?artifacts=<dir>`; everything else (host, user, database, `sslmode`…) goes to the driver.
 * `INVALID_STORE_URL` on anything malformed, with the password never repeated.
 */
export function parsePostgresUrl(url: string): PostgresLocation {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw badPostgresUrl(redactPostgresUrl(url), 'it is not a valid URL');
  }
  if (parsed.protocol !== 'postgres:' && parsed.protocol !== 'postgresql:') throw badPostgresUrl(redactPostgresUrl(url), 'wrong scheme');
  const displayUrl = redactPostgresUrl(url);
  const params = parsed.searchParams;
  const schema = params.get('schema') ?? DEFAULT_SCHEMA;
  if (!SCHEMA_PATTERN.test(schema)) {
    throw badPostgresUrl(displayUrl, `schema ${JSON.stringify(schema)} must be 1 to 63 of a-z, 0-9 and _, not starting with a digit`);
  }
  let poolSize: number | undefined;
  const pool = params.get('pool');
  if (pool !== null) {
    poolSize = Number(pool);
    if (!/^\d+$/.test(pool) || poolSize < 1 || poolSize > MAX_POOL_SIZE) {
      throw badPostgresUrl(displayUrl, `pool must be a whole number from 1 to ${MAX_POOL_SIZE}`);
    }
  }
  const artifacts = params.get('artifacts');
  if (artifacts === '') throw badPostgresUrl(displayUrl, 'artifacts must name a folder');
  for (const name of CAIRN_PARAMS) params.delete(name);
  return {
    connectionString: parsed.toString(),
    displayUrl,
    schema,
    ...(poolSize === undefined ? {} : { poolSize }),
    ...(artifacts === null ? {} : { artifactRoot: path.resolve(artifacts) }),
  };
}

/**
 * A Postgres URL without its password (in the user part or as `?password=`), for anything
 * printed or stored. Other URLs, and text that is not a URL, come back unchanged.
 * @example redactPostgresUrl('postgres://app:s3cret@db/prod') // 'postgres://app@db/prod'
 */
export function redactPostgresUrl(url: string): string {
  if (!/^postgres(ql)?:/i.test(url)) return url;
  try {
    const parsed = new URL(url);
    if (parsed.password === '' && !parsed.searchParams.has('password')) return url;
    parsed.password = '';
    if (parsed.searchParams.has('password')) parsed.searchParams.delete('password'); // re-encodes the query: only when needed
    return parsed.toString();
  } catch {
    // not parseable: drop whatever sits between "//user:" and "@"
    return url.replace(/^(postgres(?:ql)?:\/\/[^:/@]*):[^@]*@/i, '$1@');
  }
}

function badPostgresUrl(shown: string, why: string): CairnError {
  return new CairnError(
    'INVALID_STORE_URL',
    `Invalid Postgres store URL ${JSON.stringify(shown)}: ${why}. ` +
      'Use postgres://user@host:5432/database?schema=name (schema default cairn; optional pool=N and artifacts=<dir>).',
    { url: shown },
  );
}

// Transactions and errors

/** Runs `fn` inside `BEGIN … COMMIT` on one pooled client; rolled back (and rethrown) on any throw. */
export async function inTransaction<T>(pool: PgPool, fn: (client: PgQueryable) => Promise<T>): Promise<T> {
  const client = await pool.connect();
  // a backend killed while this client is checked out (between two statements) makes it emit
  // `error`; heard here, the statement in flight or the next one fails instead, and the caller retries
  let broken: Error | undefined;
  const onError = (error: Error): void => {
    broken = error;
  };
  client.on?.('error', onError);
  try {
    await client.query('BEGIN');
    const result = await fn(client);
    await client.query('COMMIT');
    client.removeListener?.('error', onError);
    client.release();
    return result;
  } catch (error) {
    try {
      if (broken) throw broken;
      await client.query('ROLLBACK');
      client.removeListener?.('error', onError);
      client.release();
    } catch {
      client.release(true); // a broken connection is discarded, not reused (its listener stays: it may still emit)
    }
    throw error;
  }
}

/** The SQLSTATE of a driver error, if it has one. */
export function sqlState(error: unknown): string | undefined {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code) ? code : undefined;
}

export const UNIQUE_VIOLATION = '23505';
export const FOREIGN_KEY_VIOLATION = '23503';

/**
 * Errors at open time, named with the URL without its password: a server that does not answer or
 * cannot take connections now is `STORE_UNAVAILABLE` (try again later: exit 1); a wrong password,
 * user, database or host name is `INVALID_STORE_URL` (fix the URL: exit 2).
 */
export function connectError(error: unknown, displayUrl: string): unknown {
  const state = sqlState(error);
  const network = (error as { code?: unknown } | null)?.code;
  const message = error instanceof Error ? error.message : String(error);
  const down =
    state === '57P03' || // cannot_connect_now: starting up or shutting down
    state === '53300' || // too_many_connections
    (typeof network === 'string' && ['ECONNREFUSED', 'ETIMEDOUT', 'ECONNRESET', 'EHOSTUNREACH', 'ENETUNREACH'].includes(network));
  if (down) {
    return new CairnError(
      'STORE_UNAVAILABLE',
      `Cannot reach the Postgres store ${displayUrl}: ${message}. Check that the server runs and takes connections, then try again.`,
      { url: displayUrl },
      { cause: error },
    );
  }
  const wrong =
    state === '28P01' || // invalid_password
    state === '28000' || // invalid_authorization_specification
    state === '3D000' || // invalid_catalog_name: no such database
    (typeof network === 'string' && ['ENOTFOUND', 'EAI_AGAIN'].includes(network));
  if (!wrong) return error;
  return new CairnError(
    'INVALID_STORE_URL',
    `Cannot open the Postgres store ${displayUrl}: ${message}. Check that host, port, user, password and database are right.`,
    { url: displayUrl },
    { cause: error },
  );
}

// Values Postgres cannot take, and a busy store

/** Postgres text cannot hold NUL: refused up front (`INVALID_INPUT`, nothing written) rather than failing in the driver. */
export function checkText(value: string, what: string, runId?: string): void {
  if (typeof value === 'string' && value.includes('\0')) {
    throw new CairnError(
      'INVALID_INPUT',
      `${what} contains a NUL character, which the Postgres store cannot keep.`,
      runId === undefined ? {} : { runId },
    );
  }
}

/** A lease length: a positive, finite number of milliseconds. */
export function checkTtl(ttl: unknown, runId?: string): number {
  if (!(typeof ttl === 'number' && ttl > 0 && Number.isFinite(ttl))) {
    throw new CairnError('INVALID_INPUT', 'Lease ttlMs must be a positive number of milliseconds.', runId === undefined ? {} : { runId });
  }
  return ttl;
}

/** A write that kept losing races it could win by retrying: nothing was written. */
export function storeBusy(url: string, what: string): CairnError {
  return new CairnError('STORE_BUSY', `${url}: ${what}; nothing was written. Retry.`);
}
