/**
 * The sliding log of one rate limit, for the stores that keep it as a list (memory, files): the
 * grants of the window, each with its time and tokens, and the end of a slow-down. The SQL stores
 * apply the same rule in SQL (`sqlite-limits.ts`, `postgres-limits.ts`).
 *
 * The rule: a request for `tokens` is granted at `now` only while the grants in (now − per, now]
 * number fewer than `requests` and their tokens plus `tokens` stay within the limit's `tokens`.
 * Otherwise it waits until the grant that blocks it leaves the window: the one whose leaving brings
 * the count under `requests`, and the one whose leaving frees enough tokens, whichever is later
 * (a grant made at `at` counts until `at + per`, exclusive). A sliding log is exact where a token
 * bucket is not: a bucket of N admits up to 2N in some window of `per`.
 */
import type { LimitRule, LimitTry } from './store.js';

export interface WindowGrant {
  readonly id: string;
  /** ms since 1970 (the store's clock). */
  readonly at: number;
  tokens: number;
}

export interface WindowState {
  /** The longest window any process declared for this limit: grants older than it are dropped. */
  windowMs: number;
  /** ms since 1970 before which nothing starts (a 429's slow-down); 0 when none. */
  blockedUntil: number;
  /** In the order granted. */
  grants: WindowGrant[];
}

export function emptyWindow(windowMs: number): WindowState {
  return { windowMs, blockedUntil: 0, grants: [] };
}

/**
 * Drops the grants no window needs any more, then grants `tokens` under `rule` at `now` (the grant
 * is appended to `state`) or returns how long to wait. Mutates `state`.
 */
export function tryGrant(state: WindowState, rule: LimitRule, id: string, tokens: number, now: number): LimitTry {
  state.windowMs = Math.max(state.windowMs, rule.perMs);
  const keepAfter = now - state.windowMs;
  // grants are kept in the order granted, which is time order (one clock, read under the lock)
  let gone = 0;
  while (gone < state.grants.length && state.grants[gone]!.at <= keepAfter) gone++;
  if (gone > 0) state.grants.splice(0, gone);
  const wait = waitToFit(state, rule, tokens, now);
  if (wait) return wait;
  state.grants.push({ id, at: now, tokens });
  return { granted: true, at: now };
}

/** How long until a request for `tokens` fits under `rule` at `now`, or undefined when it fits now. */
export function waitToFit(state: WindowState, rule: LimitRule, tokens: number, now: number): LimitTry | undefined {
  const since = now - rule.perMs;
  let count = 0;
  let used = 0;
  for (const grant of state.grants) {
    if (grant.at <= since) continue;
    count++;
    used += grant.tokens;
  }
  const full = rule.requests !== undefined && count >= rule.requests;
  const excess = rule.tokens === undefined ? 0 : used + tokens - rule.tokens;
  if (!full && excess <= 0 && state.blockedUntil <= now) return undefined;
  const wait = new LongestWait();
  const later = wait.add;
  if (state.blockedUntil > now) later(state.blockedUntil - now, 'slowed');
  const inWindow = state.grants.filter((g) => g.at > since).sort((a, b) => a.at - b.at);
  if (rule.requests !== undefined && full) {
    // the count drops under `requests` once the oldest (count − requests + 1) grants have left
    const blocking = inWindow[inWindow.length - rule.requests]!;
    later(blocking.at + rule.perMs - now, 'requests');
  }
  if (excess > 0) {
    // the oldest grants leave first: the one whose leaving frees `excess` tokens is the one to wait for
    let freed = 0;
    let blocking: WindowGrant | undefined;
    for (const grant of inWindow) {
      freed += grant.tokens;
      if (freed >= excess) {
        blocking = grant;
        break;
      }
    }
    // never reached for a request within the limit (the limiter checks): a whole window, then look again
    later(blocking ? blocking.at + rule.perMs - now : rule.perMs, 'tokens');
  }
  return { granted: false, waitMs: wait.ms, why: wait.why };
}

/** The longest of the waits a request is held by (it may start once every one is over), and which it is. */
export class LongestWait {
  ms = 0;
  why: 'requests' | 'tokens' | 'slowed' = 'slowed';

  readonly add = (ms: number, reason: 'requests' | 'tokens' | 'slowed'): void => {
    if (ms > this.ms) {
      this.ms = ms;
      this.why = reason;
    }
  };
}

/** Sets the tokens of grant `id` to `total` (never lower); false when the grant left the window. */
export function chargeGrant(state: WindowState, id: string, total: number): boolean {
  const grant = state.grants.find((g) => g.id === id);
  if (!grant) return false;
  grant.tokens = Math.max(grant.tokens, total);
  return true;
}

/** Lets nothing start before `until` (never shortens a longer slow-down). */
export function slowWindow(state: WindowState, until: number): void {
  state.blockedUntil = Math.max(state.blockedUntil, until);
}
