/**
 * Rate limits of the Postgres store, shared by every process on every machine using the schema: a
 * sliding log of grants per limit (`limit_grants`) and each limit's slow-down (`limits`). An acquire
 * is one call of the schema's `limit_acquire` function (migration 3), one round trip: it takes the
 * limit's advisory lock, reads the server's clock (`clock_timestamp()`, so machines with skewed
 * clocks agree), drops the grants older than the window, and grants or says how long to wait,
 * reading the limit's counters rather than its rows.
 *
 * A grant carries an id chosen here: after a reply lost with its connection, the grant is looked
 * for by that id before the call is sent again, so a lost reply never counts a request twice.
 * Charging (`limit_charge`, under the same lock) sets a grant's total, never lowering it, and a
 * slow-down only ever extends: both may be sent again safely.
 */
import { createHash } from 'node:crypto';
import type { LimitBackend, LimitRule, LimitTry } from '../store.js';
import { sqlState, UNIQUE_VIOLATION } from './postgres-driver.js';

/** What the limits need of their store. */
export interface PostgresLimitsHost {
  /** The schema name (checked, unquoted). */
  readonly schema: string;
  /** One statement's rows, sent again after a passing failure (reads, repeatable writes). */
  rows<R>(text: string, values: readonly unknown[]): Promise<R[]>;
  /** One statement's rows, one try. */
  rowsOnce<R>(text: string, values: readonly unknown[]): Promise<R[]>;
  /** A write that must land once: see `retryWrite` (postgres-retry.ts). */
  writeOnce<T>(send: () => Promise<T>, landed: () => Promise<{ value: T } | undefined>): Promise<T>;
  /** Runs `fn` once the store is checked open, with the driver's errors made cairn's. */
  call<T>(fn: () => Promise<T>): Promise<T>;
}

interface AcquireRow {
  readonly granted: boolean;
  readonly at_ms: number | null;
  readonly wait_ms: number | null;
  readonly why: 'requests' | 'tokens' | 'slowed' | null;
}

export class PostgresLimits implements LimitBackend {
  readonly sharedBy = 'store';
  private readonly sql: Record<'acquire' | 'grantAt' | 'charge' | 'slow', string>;
  private readonly lockKeys = new Map<string, string>();

  constructor(private readonly host: PostgresLimitsHost) {
    const s = `"${host.schema}"`;
    this.sql = {
      acquire: `SELECT granted, at_ms, wait_ms, why FROM ${s}.limit_acquire($1::text, $2::bigint, $3::text, $4::float8, $5::bigint, $6::float8, $7::float8)`,
      grantAt: `SELECT extract(epoch FROM at)::float8 * 1000 AS at_ms FROM ${s}.limit_grants WHERE id = $1`,
      charge: `SELECT ${s}.limit_charge($1::bigint, $2::text, $3::float8)`,
      slow:
        `INSERT INTO ${s}.limits AS l (name, window_ms, blocked_until) VALUES ($1, $2::float8, clock_timestamp() + make_interval(secs => $3::float8 / 1000)) ` +
        'ON CONFLICT (name) DO UPDATE SET blocked_until = greatest(l.blocked_until, excluded.blocked_until)',
    };
  }

  /** The advisory lock of limit `name` in this schema: a stable 64-bit key (the same in every process). */
  private lockKey(name: string): string {
    let key = this.lockKeys.get(name);
    if (key === undefined) {
      key = createHash('sha256').update(`cairn:limit:${this.host.schema}:${name}`).digest().readBigInt64BE(0).toString();
      this.lockKeys.set(name, key);
    }
    return key;
  }

  tryAcquire(name: string, rule: LimitRule, grantId: string, tokens: number): Promise<LimitTry> {
    const values = [name, this.lockKey(name), grantId, rule.perMs, rule.requests ?? null, rule.tokens ?? null, tokens];
    return this.host.call(() =>
      this.host.writeOnce(
        async (): Promise<LimitTry> => {
          let row: AcquireRow | undefined;
          try {
            row = (await this.host.rowsOnce<AcquireRow>(this.sql.acquire, values))[0];
          } catch (error) {
            // a first try cut off from its connection that committed after the lookup: that grant is this one
            const landed = sqlState(error) === UNIQUE_VIOLATION ? await this.grantOf(grantId) : undefined;
            if (landed) return landed;
            throw error;
          }
          if (row?.granted) return { granted: true, at: row.at_ms ?? 0 };
          return { granted: false, waitMs: Math.max(row?.wait_ms ?? rule.perMs, 0.001), why: row?.why ?? 'requests' };
        },
        async () => {
          const landed = await this.grantOf(grantId);
          return landed ? { value: landed } : undefined;
        },
      ),
    );
  }

  /** The grant with this id, if it landed. */
  private async grantOf(grantId: string): Promise<LimitTry | undefined> {
    const [found] = await this.host.rowsOnce<{ at_ms: number }>(this.sql.grantAt, [grantId]);
    return found ? { granted: true, at: found.at_ms } : undefined;
  }

  charge(name: string, grantId: string, totalTokens: number): Promise<void> {
    return this.host.call(async () => void (await this.host.rows(this.sql.charge, [this.lockKey(name), grantId, totalTokens])));
  }

  slowDown(name: string, rule: LimitRule, ms: number): Promise<void> {
    return this.host.call(async () => void (await this.host.rows(this.sql.slow, [name, rule.perMs, ms])));
  }
}
