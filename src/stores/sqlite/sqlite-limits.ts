/**
 * Rate limits of the SQLite store, shared by every process using the database file: a sliding log
 * of grants per limit (`cairn_limit_grants`) and, per limit, its slow-down and the count and tokens
 * of its log (`cairn_limits`). An acquire is one `BEGIN IMMEDIATE` transaction: it takes the write
 * lock, reads the clock, drops the grants older than the window, and grants or says how long to
 * wait (the rule of `limit-window.ts`); no two processes interleave, and times are read in the
 * order grants are made. Its cost does not grow with the grants in the window: it reads the
 * limit's counters and deletes only the grants that left; the log's rows are read only to say how
 * long to wait, from the oldest, as far as the one that blocks.
 *
 * Limit writes skip the fsync of `synchronous=FULL` (the connection is `NORMAL` for their
 * transaction): a grant only orders processes that are alive, and the store's next durable commit
 * syncs it with everything before it; a power cut loses at most the last grants, whose window has
 * long passed by the time anything runs again.
 */
import { LongestWait } from '../limit-window.js';
import type { LimitBackend, LimitRule, LimitTry } from '../store.js';
import type { SqliteDatabase, SqliteStatement, SqliteSynchronous } from './sqlite-driver.js';

/** What the limits need of their store. */
export interface SqliteLimitsHost {
  readonly db: SqliteDatabase;
  readonly synchronous: SqliteSynchronous;
  /** Runs `fn` once the store is checked open; tried again while another process holds the lock; SQLite's errors made cairn's. */
  call<T>(fn: () => T): Promise<T>;
  /** Runs `fn` in one `BEGIN IMMEDIATE` transaction. */
  write<T>(fn: () => T): T;
}

interface LimitRow {
  readonly windowMs: number;
  readonly blockedUntil: number;
  readonly grants: number;
  readonly tokens: number;
}

type Statements = Record<
  | 'limit'
  | 'declare'
  | 'widen'
  | 'prune'
  | 'counters'
  | 'usage'
  | 'nth'
  | 'freeing'
  | 'grant'
  | 'grantTokens'
  | 'charge'
  | 'addTokens'
  | 'slow',
  SqliteStatement
>;

export class SqliteLimits implements LimitBackend {
  readonly sharedBy = 'store';
  private readonly s: Statements;

  constructor(private readonly host: SqliteLimitsHost) {
    const prepare = (sql: string): SqliteStatement => host.db.prepare(sql);
    this.s = {
      limit: prepare('SELECT window_ms AS windowMs, blocked_until AS blockedUntil, grants, tokens FROM cairn_limits WHERE name = ?'),
      declare: prepare(
        'INSERT INTO cairn_limits (name, window_ms) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET window_ms = max(window_ms, excluded.window_ms)',
      ),
      widen: prepare('UPDATE cairn_limits SET window_ms = ? WHERE name = ? AND window_ms < ?'),
      prune: prepare('DELETE FROM cairn_limit_grants WHERE name = ? AND at <= ? RETURNING tokens').pluck(),
      counters: prepare('UPDATE cairn_limits SET grants = ?, tokens = ? WHERE name = ?'),
      // only for a process that declared a shorter window than another one did
      usage: prepare('SELECT count(*) AS grants, total(tokens) AS tokens FROM cairn_limit_grants WHERE name = ? AND at > ?'),
      nth: prepare('SELECT at FROM cairn_limit_grants WHERE name = ? AND at > ? ORDER BY at, id LIMIT 1 OFFSET ?').pluck(),
      // the oldest grant whose leaving (with those before it) frees at least the excess tokens
      freeing: prepare(
        'SELECT at FROM (SELECT at, id, sum(tokens) OVER (ORDER BY at, id) AS freed FROM cairn_limit_grants WHERE name = ? AND at > ?) ' +
          'WHERE freed >= ? ORDER BY at, id LIMIT 1',
      ).pluck(),
      grant: prepare('INSERT INTO cairn_limit_grants (id, name, at, tokens) VALUES (?, ?, ?, ?)'),
      grantTokens: prepare('SELECT name, tokens FROM cairn_limit_grants WHERE id = ?'),
      charge: prepare('UPDATE cairn_limit_grants SET tokens = ? WHERE id = ?'),
      addTokens: prepare('UPDATE cairn_limits SET tokens = tokens + ? WHERE name = ?'),
      slow: prepare(
        'INSERT INTO cairn_limits (name, window_ms, blocked_until) VALUES (?, ?, ?) ' +
          'ON CONFLICT (name) DO UPDATE SET blocked_until = max(blocked_until, excluded.blocked_until)',
      ),
    };
  }

  tryAcquire(name: string, rule: LimitRule, grantId: string, tokens: number): Promise<LimitTry> {
    return this.host.call(() => this.relaxed(() => this.host.write(() => this.acquireLocked(name, rule, grantId, tokens))));
  }

  /** Inside the write lock: the clock is read after it was taken, so grant times are in grant order. */
  private acquireLocked(name: string, rule: LimitRule, grantId: string, tokens: number): LimitTry {
    const now = Date.now();
    let limit = this.s.limit.get(name) as LimitRow | undefined;
    if (!limit) {
      this.s.declare.run(name, rule.perMs);
      limit = this.s.limit.get(name) as LimitRow;
    } else if (limit.windowMs < rule.perMs) {
      this.s.widen.run(rule.perMs, name, rule.perMs);
      limit = { ...limit, windowMs: rule.perMs };
    }
    const gone = this.s.prune.all(name, now - limit.windowMs) as number[];
    const logGrants = limit.grants - gone.length;
    const logTokens = logGrants === 0 ? 0 : limit.tokens - gone.reduce((sum, t) => sum + t, 0);
    const since = now - rule.perMs;
    // the log is the window, unless another process declared a longer one
    const usage = rule.perMs < limit.windowMs ? (this.s.usage.get(name, since) as Pick<LimitRow, 'grants' | 'tokens'>) : undefined;
    const inWindow = usage?.grants ?? logGrants;
    const used = usage?.tokens ?? logTokens;
    const wait = new LongestWait();
    const later = wait.add;
    if (limit.blockedUntil > now) later(limit.blockedUntil - now, 'slowed');
    if (rule.requests !== undefined && inWindow >= rule.requests) {
      const at = this.s.nth.get(name, since, inWindow - rule.requests) as number | undefined;
      later(at === undefined ? rule.perMs : at + rule.perMs - now, 'requests');
    }
    const excess = rule.tokens === undefined ? 0 : used + tokens - rule.tokens;
    if (excess > 0) {
      const at = this.s.freeing.get(name, since, excess) as number | undefined;
      later(at === undefined ? rule.perMs : at + rule.perMs - now, 'tokens');
    }
    if (wait.ms > 0) {
      if (gone.length > 0) this.s.counters.run(logGrants, logTokens, name);
      return { granted: false, waitMs: wait.ms, why: wait.why };
    }
    this.s.grant.run(grantId, name, now, tokens);
    this.s.counters.run(logGrants + 1, logTokens + tokens, name);
    return { granted: true, at: now };
  }

  charge(_name: string, grantId: string, totalTokens: number): Promise<void> {
    return this.host.call(() =>
      this.relaxed(() =>
        this.host.write(() => {
          const grant = this.s.grantTokens.get(grantId) as { name: string; tokens: number } | undefined;
          if (!grant || totalTokens <= grant.tokens) return; // left the window, or nothing more to count
          this.s.charge.run(totalTokens, grantId);
          this.s.addTokens.run(totalTokens - grant.tokens, grant.name);
        }),
      ),
    );
  }

  slowDown(name: string, rule: LimitRule, ms: number): Promise<void> {
    return this.host.call(() => void this.relaxed(() => this.s.slow.run(name, rule.perMs, Date.now() + ms)));
  }

  /** Runs `fn` (synchronous, so nothing else uses the connection meanwhile) with commits that skip the fsync. */
  private relaxed<T>(fn: () => T): T {
    if (this.host.synchronous !== 'FULL') return fn();
    this.host.db.pragma('synchronous = NORMAL');
    try {
      return fn();
    } finally {
      this.host.db.pragma('synchronous = FULL');
    }
  }
}
