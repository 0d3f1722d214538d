/**
 * The Postgres server the tests use: `CAIRN_TEST_POSTGRES_URL`, else the local one (trust auth,
 * database `test`). Reachability is checked once, when this module loads. Unreachable: test
 * files skip their Postgres suites (`describe.skipIf(!POSTGRES.reachable)`) with a warning saying
 * why — except under `CI=true`, where loading this module fails the test file loudly.
 * Every test file works in schemas of its own (`freshSchema()`), dropped when it is done.
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { redactPostgresUrl } from '../src/stores/postgres/postgres-driver.js';

export const POSTGRES_URL = process.env.CAIRN_TEST_POSTGRES_URL ?? 'postgres://postgres@127.0.0.1:5432/test';

export interface PostgresAvailability {
  readonly url: string;
  readonly reachable: boolean;
  /** Why not, when unreachable. */
  readonly reason?: string;
}

async function probe(): Promise<PostgresAvailability> {
  const client = new pg.Client({ connectionString: POSTGRES_URL, connectionTimeoutMillis: 5000 });
  try {
    await client.connect();
    await client.query('SELECT 1');
    return { url: POSTGRES_URL, reachable: true };
  } catch (error) {
    return { url: POSTGRES_URL, reachable: false, reason: (error as Error).message };
  } finally {
    await client.end().catch(() => undefined);
  }
}

export const POSTGRES: PostgresAvailability = await probe();

if (!POSTGRES.reachable) {
  const message = `Postgres unreachable at ${redactPostgresUrl(POSTGRES_URL)} (${POSTGRES.reason ?? 'unknown'})`;
  if (process.env.CI === 'true') throw new Error(`${message}: the Postgres tests must run under CI=true. Set CAIRN_TEST_POSTGRES_URL.`);
  console.warn(`${message}: skipping the Postgres tests (set CAIRN_TEST_POSTGRES_URL; under CI=true this fails).`);
}

const SCHEMA = /^[a-z_][a-z0-9_]{0,62}$/;

/** A new schema name, `<prefix>_<random>`, for one test file or test. */
export function freshSchema(prefix = 'cairn_t'): string {
  return `${prefix}_${randomBytes(5).toString('hex')}`;
}

/** The store URL for `schema` on the test server, with extra query parameters (e.g. `artifacts`). */
export function postgresUrl(schema: string, params: Record<string, string> = {}): string {
  const url = new URL(POSTGRES_URL);
  url.searchParams.set('schema', schema);
  for (const [key, value] of Object.entries(params)) url.searchParams.set(key, value);
  return url.toString();
}

/** The schema named in a store URL made by {@link postgresUrl}. */
export function schemaOf(url: string): string {
  const schema = new URL(url).searchParams.get('schema');
  if (schema === null || !SCHEMA.test(schema)) throw new Error(`no schema in ${url}`);
  return schema;
}

/** Runs `fn` with a client of its own on the test server (for raw SQL: tampering, checks). */
export async function withClient<T>(fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: POSTGRES_URL });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

/** Drops `schema` and everything in it (no error if it does not exist). */
export async function dropSchema(schema: string): Promise<void> {
  if (!SCHEMA.test(schema)) throw new Error(`refusing to drop ${JSON.stringify(schema)}`);
  await withClient((client) => client.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`));
}
