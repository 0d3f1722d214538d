/**
 * Named rate limits: declared once (`new Cairn({ limits: { llm: { requests: 60, per: '1m', tokens:
 * 90_000 } } })`), used around any call with `ctx.limit('llm', { tokens }, call)` and by
 * `ctx.items(…, { limit })`. The {@link Limiter} asks the store's {@link LimitBackend} for grants
 * (a sliding log shared by every process using a SQLite or Postgres store, by the processes of one
 * machine on the file store) and waits, without spinning, as long as the store says. Within one
 * process the requests of a limit are asked for in order (first come, first granted), so a crowd
 * of waiting items costs the store one try per grant, not one per item. See docs/rate-limits.md.
 */
import { randomUUID } from 'node:crypto';
import { CairnError } from '../core/errors.js';
import { MemoryLimits } from '../stores/memory/memory-limits.js';
import type { LimitBackend, LimitRule, Store } from '../stores/store.js';
import { retryAfterOf } from './retry.js';

/** A named rate limit, as declared in `new Cairn({ limits })`. Give `requests`, `tokens` or both. */
export interface LimitSpec {
  /** At most this many requests start in any window of `per`. */
  readonly requests?: number;
  /** At most this many tokens in any window of `per`: those asked for at the start, and those charged after the call. */
  readonly tokens?: number;
  /** The window: one second, minute or hour, or a number of milliseconds. */
  readonly per: '1s' | '1m' | '1h' | number;
}

/** What a request asks of a limit. */
export interface LimitOptions {
  /** Tokens the call will use, counted from its start (more may be charged after it: {@link LimitGrant.charge}). @defaultValue 0 */
  readonly tokens?: number;
}

export interface LimitAcquireOptions extends LimitOptions {
  /** Stops the wait: the acquire rejects with the signal's reason. */
  readonly signal?: AbortSignal;
}

/** A request let through by a limit. */
export interface LimitGrant {
  /** The limit's name. */
  readonly limit: string;
  /** When it was granted: ms since 1970 by the store's clock (the database server's on Postgres). */
  readonly at: number;
  /** Tokens counted for it so far. */
  readonly tokens: number;
  /**
   * Counts `tokens` more for this grant, in the window of its own time: what the call turned out to
   * use. It may take the window over the limit; later requests then wait until it has passed.
   * @example await grant.charge(response.usage.total_tokens - 500); // 500 were asked for at the start
   */
  charge(tokens: number): Promise<void>;
}

const WINDOWS: Readonly<Record<string, number>> = { '1s': 1000, '1m': 60_000, '1h': 3_600_000 };
const NAME = /^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$/;
const FIELDS = new Set(['requests', 'tokens', 'per']);
/** The longest slow-down one error can ask for (as `retryAfterOf` caps it). */
const MAX_SLOW_DOWN_MS = 6 * 60 * 60 * 1000;

/**
 * Checks `new Cairn({ limits })` and resolves each limit's window to milliseconds; `INVALID_INPUT`
 * naming the limit and the field otherwise.
 */
export function resolveLimits(limits: unknown): ReadonlyMap<string, LimitRule> {
  const rules = new Map<string, LimitRule>();
  if (limits === undefined) return rules;
  if (typeof limits !== 'object' || limits === null || Array.isArray(limits)) {
    throw new CairnError('INVALID_INPUT', `limits must be an object of named limits, as { llm: { requests: 60, per: '1m' } }.`);
  }
  for (const [name, spec] of Object.entries(limits)) {
    const bad = (field: string, what: string): CairnError =>
      new CairnError('INVALID_INPUT', `Limit ${name}: ${field} ${what}.`, { limit: name, field });
    if (!NAME.test(name)) {
      throw new CairnError(
        'INVALID_INPUT',
        `Limit name ${JSON.stringify(name)} is not valid: use 1 to 64 letters, digits, '.', '_' and '-', not starting with '.'.`,
        { limit: name },
      );
    }
    if (typeof spec !== 'object' || spec === null) throw bad('its declaration', `must be an object, as { requests: 60, per: '1m' }`);
    const fields = spec as Record<string, unknown>;
    const { requests, tokens, per } = fields;
    const unknown = Object.keys(fields).filter((key) => !FIELDS.has(key));
    if (unknown.length > 0) throw bad(unknown[0]!, 'is not a field of a limit (its fields: requests, tokens, per)');
    const perMs = typeof per === 'string' ? WINDOWS[per] : typeof per === 'number' && per > 0 && Number.isFinite(per) ? per : undefined;
    if (perMs === undefined) throw bad('per', `must be '1s', '1m', '1h' or a positive number of milliseconds (got ${shown(per)})`);
    if (requests !== undefined && !(Number.isSafeInteger(requests) && (requests as number) > 0)) {
      throw bad('requests', `must be a positive whole number (got ${shown(requests)})`);
    }
    if (tokens !== undefined && !(typeof tokens === 'number' && tokens > 0 && Number.isFinite(tokens))) {
      throw bad('tokens', `must be a positive number (got ${shown(tokens)})`);
    }
    if (requests === undefined && tokens === undefined) throw bad('requests or tokens', 'must be given (or both)');
    rules.set(
      name,
      Object.freeze({
        perMs,
        ...(requests === undefined ? {} : { requests: requests as number }),
        ...(tokens === undefined ? {} : { tokens }),
      }),
    );
  }
  return rules;
}

function shown(value: unknown): string {
  if (value === undefined) return 'nothing';
  if (typeof value === 'number' || typeof value === 'boolean' || typeof value === 'bigint') return String(value);
  try {
    return JSON.stringify(value) ?? typeof value;
  } catch {
    return typeof value;
  }
}

/** The in-process limits of each store that keeps none of its own. */
const inProcess = new WeakMap<Store, LimitBackend>();

/** A signal that never aborts, for waits nobody can stop. */
const NEVER = new AbortController().signal;

/**
 * Grants requests under the named limits, through the store's shared state (`Store.limits`), or
 * within this process for a store that keeps none. Made by `Cairn` from its `limits` option.
 */
export class Limiter {
  /** Per limit, the request last in line in this process: the next one waits for it first. */
  private readonly lines = new Map<string, Promise<void>>();

  constructor(
    private readonly rules: ReadonlyMap<string, LimitRule>,
    private readonly backend: LimitBackend,
  ) {}

  /** A limiter for `rules` on `store`'s shared state (for a store that keeps none, one in the process, the same for every limiter of that store). */
  static forStore(rules: ReadonlyMap<string, LimitRule>, store: Store): Limiter {
    let backend = store.limits ?? inProcess.get(store);
    if (!backend) inProcess.set(store, (backend = new MemoryLimits()));
    return new Limiter(rules, backend);
  }

  /** The declared limits' names. */
  get names(): string[] {
    return [...this.rules.keys()];
  }

  /** Who shares the limits: this process, the processes of this machine, or every process using the store. */
  get sharedBy(): LimitBackend['sharedBy'] {
    return this.backend.sharedBy;
  }

  /**
   * Waits until limit `name` lets one more request start (and `tokens` fit), and records it.
   * Rejects with `signal.reason` once `signal` aborts; `INVALID_DEFINITION` for a limit not declared.
   */
  async acquire(name: string, options: LimitAcquireOptions = {}): Promise<LimitGrant> {
    const rule = this.ruleOf(name);
    const tokens = options.tokens ?? 0;
    if (!(typeof tokens === 'number' && tokens >= 0 && Number.isFinite(tokens))) {
      throw new CairnError('INVALID_INPUT', `Limit ${name}: tokens asked for must be a number ≥ 0 (got ${shown(tokens)}).`, {
        limit: name,
      });
    }
    if (rule.tokens !== undefined && tokens > rule.tokens) {
      throw new CairnError(
        'INVALID_INPUT',
        `Limit ${name}: a request for ${tokens} tokens could never start: the limit allows ${rule.tokens} per window. Ask for fewer, and charge the rest after the call (grant.charge).`,
        { limit: name },
      );
    }
    const signal = options.signal ?? NEVER;
    signal.throwIfAborted();
    // in line behind this process's earlier requests of the limit (an abort leaves the line at once)
    const ahead = this.lines.get(name);
    let leave!: () => void;
    const turn = new Promise<void>((resolve) => (leave = resolve));
    const last = ahead ? ahead.then(() => turn) : turn;
    this.lines.set(name, last);
    try {
      if (ahead) await waitUnlessAborted(signal, ahead);
      for (;;) {
        signal.throwIfAborted();
        const id = randomUUID();
        const result = await this.backend.tryAcquire(name, rule, id, tokens);
        // granted while the caller stopped: the slot stays counted (never one too many), and no call starts under it
        if (result.granted) signal.throwIfAborted();
        if (result.granted) return new Grant(this.backend, name, id, result.at, tokens);
        await waitUnlessAborted(signal, undefined, Math.max(1, Math.ceil(result.waitMs)));
      }
    } finally {
      leave();
      if (this.lines.get(name) === last) this.lines.delete(name);
    }
  }

  /**
   * Lets nothing start under limit `name`, in any process sharing it, for `ms` from now (what a 429's
   * `Retry-After` asks); a longer slow-down already asked for stays.
   */
  async slowDown(name: string, ms: number): Promise<void> {
    const rule = this.ruleOf(name);
    if (!(typeof ms === 'number' && ms >= 0 && !Number.isNaN(ms))) {
      throw new CairnError('INVALID_INPUT', `Limit ${name}: a slow-down must be a number of milliseconds ≥ 0 (got ${shown(ms)}).`, {
        limit: name,
      });
    }
    if (ms > 0) await this.backend.slowDown(name, rule, Math.min(ms, MAX_SLOW_DOWN_MS));
  }

  private ruleOf(name: string): LimitRule {
    const rule = typeof name === 'string' ? this.rules.get(name) : undefined;
    if (rule) return rule;
    const declared = this.names;
    throw new CairnError(
      'INVALID_DEFINITION',
      declared.length === 0
        ? `No rate limit named ${shown(name)}: none is declared. Declare it once: new Cairn({ limits: { ${typeof name === 'string' ? name : 'llm'}: { requests: 60, per: '1m' } } }).`
        : `No rate limit named ${shown(name)}: the limits declared are ${declared.join(', ')} (new Cairn({ limits })).`,
      { limit: typeof name === 'string' ? name : undefined, declared },
    );
  }
}

/**
 * The waits on each signal, behind one listener of its own: fifty calls waiting on a stage's signal
 * add one listener to it, not fifty (no listener-leak warning, and nothing to set on the signal).
 */
const waitsOn = new WeakMap<AbortSignal, Set<() => void>>();

function whenAborted(signal: AbortSignal, fn: () => void): () => void {
  let waits = waitsOn.get(signal);
  if (!waits) {
    const all = (waits = new Set());
    waitsOn.set(signal, all);
    signal.addEventListener(
      'abort',
      () => {
        waitsOn.delete(signal);
        for (const wait of all) wait();
      },
      { once: true },
    );
  }
  waits.add(fn);
  return () => void waitsOn.get(signal)?.delete(fn);
}

/** Resolves when `promise` settles, or after `ms` when `promise` is undefined; rejects with the signal's reason if it aborts first. */
function waitUnlessAborted(signal: AbortSignal, promise: Promise<unknown> | undefined, ms = 0): Promise<void> {
  if (signal.aborted) return Promise.reject(signal.reason as Error);
  return new Promise((resolve, reject) => {
    let timer: NodeJS.Timeout | undefined;
    const stop =
      signal === NEVER
        ? () => undefined
        : whenAborted(signal, () => {
            clearTimeout(timer);
            reject(signal.reason as Error);
          });
    const done = (): void => {
      stop();
      resolve();
    };
    if (promise) void promise.then(done);
    else timer = setTimeout(done, ms);
  });
}

class Grant implements LimitGrant {
  private charged: Promise<void> = Promise.resolve();
  private total: number;

  constructor(
    private readonly backend: LimitBackend,
    readonly limit: string,
    private readonly id: string,
    readonly at: number,
    tokens: number,
  ) {
    this.total = tokens;
  }

  get tokens(): number {
    return this.total;
  }

  charge(tokens: number): Promise<void> {
    if (!(typeof tokens === 'number' && tokens >= 0 && Number.isFinite(tokens))) {
      return Promise.reject(
        new CairnError('INVALID_INPUT', `Limit ${this.limit}: tokens charged must be a number ≥ 0 (got ${shown(tokens)}).`, {
          limit: this.limit,
        }),
      );
    }
    if (tokens === 0) return Promise.resolve();
    this.total += tokens;
    const total = this.total;
    // each charge sets the grant's running total, in order: sending one again never counts it twice, and
    // one that failed (the store out of reach) is made good by the next
    const next = this.charged.catch(() => undefined).then(() => this.backend.charge(this.limit, this.id, total));
    this.charged = next;
    return next;
  }
}

/**
 * `ctx.limit(name, options?, call?)`: waits for a grant under `signal`; with `call`, runs it under
 * the grant, and when it throws an error that asks to wait (`retryAfterMs`, a `Retry-After`
 * header: a 429), slows the whole limit down for that long before rethrowing.
 */
export async function limitCall<R>(
  limiter: Limiter | undefined,
  signal: AbortSignal,
  name: string,
  options: LimitOptions | undefined,
  call: ((grant: LimitGrant) => R | PromiseLike<R>) | undefined,
): Promise<LimitGrant | Awaited<R>> {
  const grant = await (limiter ?? NO_LIMITS).acquire(name, {
    ...(options?.tokens === undefined ? {} : { tokens: options.tokens }),
    signal,
  });
  if (call === undefined) return grant;
  try {
    return await call(grant);
  } catch (error) {
    const ms = retryAfterOf(error);
    if (ms !== undefined && ms > 0) await (limiter ?? NO_LIMITS).slowDown(name, ms).catch(() => undefined);
    throw error;
  }
}

/** What a run without a limiter (none declared) asks: every name is unknown. */
const NO_LIMITS = new Limiter(new Map(), new MemoryLimits());
