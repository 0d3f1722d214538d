/**
 * Named rate limits in the engine: the `limits` option and its errors, the sliding-window rule on
 * a clock moved by hand (no timing windows), the Limiter's waits, order and aborts, and
 * `ctx.limit` in a run (a grant, a call under a grant, a 429 slowing the whole limit down).
 * Waits are checked from below only (a grant never comes earlier than the rule allows), so the
 * tests hold on a busy machine; each wait that could hang has a deadline of its own.
 */
import { describe, expect, it } from 'vitest';
import { Cairn } from '../../src/engine/cairn.js';
import { Limiter, resolveLimits, type LimitGrant } from '../../src/engine/limits.js';
import { pipeline } from '../../src/engine/pipeline.js';
import { MemoryLimits } from '../../src/stores/memory/memory-limits.js';
import { MemoryStore } from '../../src/stores/memory/memory-store.js';
import type { LimitRule, LimitTry } from '../../src/stores/store.js';
import { codeOf } from '../helpers.js';
import { deferred, useCairns } from './engine-helpers.js';

/** The error `fn` throws (synchronously or as a rejection). */
async function errorOf(fn: () => unknown): Promise<{ code?: string; name: string; message: string; context?: Record<string, unknown> }> {
  try {
    await fn();
  } catch (error) {
    return error as { code?: string; name: string; message: string };
  }
  throw new Error('expected an error');
}

/** A clock moved by hand. */
function manualClock(start = 1_000_000): { now: () => number; set: (t: number) => void } {
  let t = start;
  return { now: () => t, set: (next) => (t = next) };
}

/** Grant times of `count` requests arriving at `arrivals`, each retried after the wait the backend names (no real time passes). */
async function simulate(backend: MemoryLimits, clock: ReturnType<typeof manualClock>, rule: LimitRule, arrivals: number[], tokens = 0) {
  const granted: number[] = [];
  for (const [i, arrival] of arrivals.entries()) {
    let t = Math.max(arrival, granted.at(-1) ?? 0); // one after the other, as the Limiter asks within a process
    for (;;) {
      clock.set(t);
      const result: LimitTry = await backend.tryAcquire('api', rule, `g${i}`, tokens);
      if (result.granted) break;
      expect(result.waitMs).toBeGreaterThan(0);
      t += Math.ceil(result.waitMs);
    }
    granted.push(t);
  }
  return granted;
}

describe('the limits option', () => {
  it('resolves windows to milliseconds and keeps only the bounds given', () => {
    const rules = resolveLimits({
      llm: { requests: 60, per: '1m', tokens: 90_000 },
      search: { requests: 5, per: '1s' },
      big: { tokens: 10, per: 250 },
    });
    expect(Object.fromEntries(rules)).toEqual({
      llm: { perMs: 60_000, requests: 60, tokens: 90_000 },
      search: { perMs: 1000, requests: 5 },
      big: { perMs: 250, tokens: 10 },
    });
    expect(resolveLimits(undefined).size).toBe(0);
    expect(resolveLimits({ h: { requests: 1, per: '1h' } }).get('h')?.perMs).toBe(3_600_000);
  });

  it.each([
    [{ llm: { requests: 60 } }, 'Limit llm: per must be', 'per'],
    [{ llm: { requests: 60, per: '2m' } }, `(got "2m")`, 'per'],
    [{ llm: { requests: 60, per: 0 } }, 'per must be', 'per'],
    [{ llm: { requests: 0, per: '1s' } }, 'Limit llm: requests must be a positive whole number (got 0)', 'requests'],
    [{ llm: { requests: 1.5, per: '1s' } }, 'requests must be a positive whole number', 'requests'],
    [{ llm: { tokens: -1, per: '1s' } }, 'Limit llm: tokens must be a positive number (got -1)', 'tokens'],
    [{ llm: { tokens: Number.POSITIVE_INFINITY, per: '1s' } }, 'tokens must be a positive number', 'tokens'],
    [{ llm: { per: '1s' } }, 'Limit llm: requests or tokens must be given', 'requests or tokens'],
    [{ llm: { reqests: 5, per: '1s' } }, 'Limit llm: reqests is not a field of a limit', 'reqests'],
    [{ llm: 5 }, 'Limit llm: its declaration must be an object', 'its declaration'],
  ])('refuses %j with INVALID_INPUT naming the limit and the field', async (limits, message, field) => {
    const error = await errorOf(() => new Cairn({ store: 'memory:', limits: limits as never, handleSignals: false }));
    expect(error.code).toBe('INVALID_INPUT');
    expect(error.message).toContain(message);
    expect(error.context).toMatchObject({ limit: 'llm', field });
  });

  it('refuses a limit name that cannot be a file name, and a limits value that is not an object', async () => {
    for (const name of ['', '.hidden', 'a/b', '../x', 'x'.repeat(65)]) {
      const error = await errorOf(() => resolveLimits({ [name]: { requests: 1, per: '1s' } }));
      expect(error.code, name).toBe('INVALID_INPUT');
      expect(error.message).toContain('is not valid');
    }
    expect((await errorOf(() => resolveLimits([]))).message).toContain('limits must be an object');
  });
});

describe('the sliding window (memory backend, a clock moved by hand)', () => {
  it('grants while fewer than `requests` grants are in (t − per, t], then waits exactly until the oldest leaves', async () => {
    const clock = manualClock(10_000);
    const limits = new MemoryLimits(clock.now);
    const rule = { perMs: 1000, requests: 3 };
    for (const [t, id] of [
      [10_000, 'a'],
      [10_100, 'b'],
      [10_200, 'c'],
    ] as const) {
      clock.set(t);
      expect(await limits.tryAcquire('api', rule, id, 0)).toEqual({ granted: true, at: t });
    }
    clock.set(10_300);
    expect(await limits.tryAcquire('api', rule, 'd', 0)).toEqual({ granted: false, waitMs: 700, why: 'requests' });
    clock.set(10_999);
    expect(await limits.tryAcquire('api', rule, 'd', 0)).toEqual({ granted: false, waitMs: 1, why: 'requests' });
    clock.set(11_000); // the grant of 10,000 is out of (10,000, 11,000]
    expect(await limits.tryAcquire('api', rule, 'd', 0)).toEqual({ granted: true, at: 11_000 });
    expect(await limits.tryAcquire('api', rule, 'e', 0)).toEqual({ granted: false, waitMs: 100, why: 'requests' });
    // another limit's log is its own
    expect(await limits.tryAcquire('other', rule, 'x', 0)).toMatchObject({ granted: true });
  });

  it('never lets more than N start in any window of `per` (a token bucket of N would let up to 2N through)', async () => {
    const clock = manualClock(0);
    const limits = new MemoryLimits(clock.now);
    const rule = { perMs: 1000, requests: 10 };
    // bursts, quiet stretches and a steady stream, from a fixed pseudo-random sequence
    let seed = 42;
    const random = (): number => (seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31) / 2 ** 31;
    const arrivals: number[] = [];
    for (let t = 0; arrivals.length < 400;) {
      t += random() < 0.2 ? Math.floor(random() * 3000) : Math.floor(random() * 40);
      arrivals.push(t);
    }
    const granted = await simulate(limits, clock, rule, arrivals);
    for (let i = 0; i + 10 < granted.length; i++)
      expect(granted[i + 10]! - granted[i]!, `grants ${i}..${i + 10}`).toBeGreaterThanOrEqual(1000);
    // and it waits no longer than needed: each grant that waited came when the 10th grant before it left
    for (const [i, t] of granted.entries()) {
      if (t > arrivals[i]! && t > (granted[i - 1] ?? 0)) expect(t, `grant ${i}`).toBe(granted[i - 10]! + 1000);
    }
  });

  it('counts tokens asked for and charged after the call from the grant’s time, and waits until enough have left', async () => {
    const clock = manualClock(0);
    const limits = new MemoryLimits(clock.now);
    const rule = { perMs: 1000, tokens: 100 };
    expect(await limits.tryAcquire('llm', rule, 'a', 60)).toMatchObject({ granted: true }); // t=0
    clock.set(100);
    expect(await limits.tryAcquire('llm', rule, 'b', 30)).toMatchObject({ granted: true });
    clock.set(200);
    expect(await limits.tryAcquire('llm', rule, 'c', 20)).toEqual({ granted: false, waitMs: 800, why: 'tokens' }); // 60 + 30 + 20 > 100
    expect(await limits.tryAcquire('llm', rule, 'c', 10)).toMatchObject({ granted: true }); // exactly 100
    // b reports it used 80, not 30: the window (t=200) now holds 60 + 80 + 10 = 150
    await limits.charge('llm', 'b', 80);
    clock.set(300);
    // a 0-token request waits until 50 tokens have left: a (60) leaves at 1,000
    expect(await limits.tryAcquire('llm', rule, 'd', 0)).toEqual({ granted: false, waitMs: 700, why: 'tokens' });
    // a charge never lowers what was counted, and a grant that left the window is not charged
    await limits.charge('llm', 'b', 50);
    expect(await limits.tryAcquire('llm', rule, 'd', 0)).toMatchObject({ why: 'tokens', waitMs: 700 });
    clock.set(1000);
    expect(await limits.tryAcquire('llm', rule, 'd', 10)).toMatchObject({ granted: true }); // 80 + 10 + 10
    clock.set(1100);
    await limits.charge('llm', 'b', 10_000); // b (granted at 100) left at 1,100
    expect(await limits.tryAcquire('llm', rule, 'e', 80)).toMatchObject({ granted: true }); // 10 + 10 + 80
  });

  it('a slow-down blocks every request until it ends, and a shorter one never shortens it', async () => {
    const clock = manualClock(0);
    const limits = new MemoryLimits(clock.now);
    const rule = { perMs: 1000, requests: 100 };
    await limits.slowDown('api', rule, 5000);
    await limits.slowDown('api', rule, 1000);
    clock.set(1000);
    expect(await limits.tryAcquire('api', rule, 'a', 0)).toEqual({ granted: false, waitMs: 4000, why: 'slowed' });
    clock.set(5000);
    expect(await limits.tryAcquire('api', rule, 'a', 0)).toMatchObject({ granted: true, at: 5000 });
  });

  it('keeps only the grants of the longest window declared (the log of a limit stays bounded)', async () => {
    const clock = manualClock(0);
    const limits = new MemoryLimits(clock.now);
    for (let t = 0; t < 10_000; t += 10) {
      clock.set(t);
      await limits.tryAcquire('api', { perMs: 100, requests: 1000 }, `g${t}`, 0);
    }
    const windows = (limits as unknown as { windows: Map<string, { grants: unknown[] }> }).windows;
    expect(windows.get('api')?.grants).toHaveLength(10); // (9,900, 9,990]
    // a process declaring a longer window keeps the grants it needs from then on
    await limits.tryAcquire('api', { perMs: 1000, requests: 1000 }, 'long', 0);
    for (let t = 10_000; t < 12_000; t += 10) {
      clock.set(t);
      await limits.tryAcquire('api', { perMs: 100, requests: 1000 }, `h${t}`, 0);
    }
    expect(windows.get('api')?.grants).toHaveLength(100);
  });
});

describe('Limiter', () => {
  const rules = resolveLimits({ api: { requests: 2, per: 300 }, llm: { tokens: 100, per: '1h' }, once: { requests: 1, per: '1h' } });

  it('names the declared limits when asked for another one (INVALID_DEFINITION)', async () => {
    const limiter = new Limiter(rules, new MemoryLimits());
    const error = await errorOf(() => limiter.acquire('ap1'));
    expect(error.code).toBe('INVALID_DEFINITION');
    expect(error.message).toBe('No rate limit named "ap1": the limits declared are api, llm, once (new Cairn({ limits })).');
    expect((await errorOf(() => limiter.slowDown('nope', 10))).code).toBe('INVALID_DEFINITION');
    const none = await errorOf(() => new Limiter(new Map(), new MemoryLimits()).acquire('llm'));
    expect(none.message).toContain("none is declared. Declare it once: new Cairn({ limits: { llm: { requests: 60, per: '1m' } } })");
  });

  it('refuses a request that could never fit, and bad token counts', async () => {
    const limiter = new Limiter(rules, new MemoryLimits());
    const error = await errorOf(() => limiter.acquire('llm', { tokens: 101 }));
    expect(error.code).toBe('INVALID_INPUT');
    expect(error.message).toContain('a request for 101 tokens could never start: the limit allows 100 per window');
    expect(await codeOf(limiter.acquire('llm', { tokens: -1 }))).toBe('INVALID_INPUT');
    expect(await codeOf(limiter.acquire('llm', { tokens: Number.NaN }))).toBe('INVALID_INPUT');
    const grant = await limiter.acquire('llm', { tokens: 10 });
    expect(await codeOf(grant.charge(-5))).toBe('INVALID_INPUT');
    await grant.charge(15);
    expect(grant.tokens).toBe(25);
    expect(await codeOf(limiter.slowDown('llm', Number.NaN))).toBe('INVALID_INPUT');
  });

  it('waits (without spinning) until the oldest grant leaves the window, in the order asked', async () => {
    const backend = new MemoryLimits();
    let tries = 0;
    const counting = Object.assign(Object.create(backend) as MemoryLimits, {
      tryAcquire: (...args: Parameters<MemoryLimits['tryAcquire']>) => {
        tries++;
        return backend.tryAcquire(...args);
      },
    });
    const limiter = new Limiter(rules, counting);
    const order: number[] = [];
    const grants = await Promise.all(
      Array.from({ length: 6 }, (_, i) =>
        limiter.acquire('api').then((grant) => {
          order.push(i);
          return grant;
        }),
      ),
    );
    expect(order).toEqual([0, 1, 2, 3, 4, 5]);
    const at = grants.map((g) => g.at);
    for (let i = 0; i + 2 < at.length; i++) expect(at[i + 2]! - at[i]!).toBeGreaterThanOrEqual(300);
    // one try per grant, plus about one per wait (a timer can fire a millisecond early): not one per item per wait
    expect(tries).toBeLessThanOrEqual(6 + 2 * 4);
  });

  it('stops a wait when its signal aborts, rejecting with the signal’s reason, and lets the next in line go on', async () => {
    const limiter = new Limiter(rules, new MemoryLimits());
    await limiter.acquire('once');
    const controller = new AbortController();
    const waiting = limiter.acquire('once', { signal: controller.signal });
    const behind = limiter.acquire('once', { signal: AbortSignal.timeout(50) });
    const reason = new Error('stop');
    setTimeout(() => controller.abort(reason), 20);
    const started = Date.now();
    await expect(waiting).rejects.toBe(reason);
    expect((await errorOf(() => behind)).name).toBe('TimeoutError');
    expect(Date.now() - started).toBeLessThan(10_000); // not the hour the limit would make it wait
    const aborted = new AbortController();
    aborted.abort(reason);
    await expect(limiter.acquire('once', { signal: aborted.signal })).rejects.toBe(reason);
  });

  it('falls back to limits within the process for a store that keeps none, shared by every limiter of that store', async () => {
    const store = new MemoryStore();
    const bare = Object.assign(Object.create(store) as MemoryStore, { limits: undefined });
    const [a, b] = [Limiter.forStore(rules, bare), Limiter.forStore(rules, bare)];
    expect(a.sharedBy).toBe('process');
    await a.acquire('once');
    await expect(b.acquire('once', { signal: AbortSignal.timeout(50) })).rejects.toMatchObject({ name: 'TimeoutError' });
    const other = Object.assign(Object.create(store) as MemoryStore, { limits: undefined });
    expect((await Limiter.forStore(rules, other).acquire('once')).limit).toBe('once'); // another store: its own
  });
});

describe('ctx.limit', () => {
  const open = useCairns();
  const limits = { api: { requests: 2, per: 200 }, slow: { requests: 1, per: '1h' } } as const;

  it('returns a grant, or runs a call under one; calls are let through at no more than the limit', async () => {
    const cairn = open('memory:ctx-limit-calls', { limits });
    const grants: LimitGrant[] = [];
    const def = pipeline('limited').stage('calls', async (ctx) => {
      grants.push(await ctx.limit('api'));
      const results = await Promise.all(
        [1, 2, 3].map((n) =>
          ctx.limit('api', { tokens: 0 }, async (grant) => {
            grants.push(grant);
            return n * 10;
          }),
        ),
      );
      return results;
    });
    const run = await cairn.run(def, {});
    expect(run.status).toBe('completed');
    expect(run.result).toEqual([10, 20, 30]);
    expect(grants.map((g) => g.limit)).toEqual(['api', 'api', 'api', 'api']);
    expect(grants[2]!.at - grants[0]!.at).toBeGreaterThanOrEqual(200);
    expect(grants[3]!.at - grants[1]!.at).toBeGreaterThanOrEqual(200);
  });

  it('a call that fails with a retry-after (a 429) slows the whole limit down, then the error goes on', async () => {
    const url = 'memory:ctx-limit-429';
    const cairn = open(url, { limits });
    const tooMany = Object.assign(new Error('429 Too Many Requests'), { status: 429, headers: { 'Retry-After': '3600' } });
    const def = pipeline('rate-limited').stage('call', (ctx) =>
      ctx.limit('api', {}, () => {
        throw tooMany;
      }),
    );
    const run = await cairn.run(def, {});
    expect(run.status).toBe('failed');
    expect(run.error?.message).toBe('429 Too Many Requests');
    // every store on memory:ctx-limit-429 sees the slow-down: nothing starts for an hour
    const other = new MemoryStore('ctx-limit-429');
    const next = await other.limits.tryAcquire('api', { perMs: 200, requests: 2 }, 'probe', 0);
    expect(next).toMatchObject({ granted: false, why: 'slowed' });
    expect((next as { waitMs: number }).waitMs).toBeGreaterThan(3_590_000);
    // a plain error changes nothing
    const cairn2 = open('memory:ctx-limit-plain', { limits });
    const plain = pipeline('plain-fail').stage('call', (ctx) =>
      ctx.limit('api', {}, () => {
        throw new Error('boom');
      }),
    );
    expect((await cairn2.run(plain, {})).status).toBe('failed');
    expect(await new MemoryStore('ctx-limit-plain').limits.tryAcquire('api', { perMs: 200, requests: 2 }, 'p', 0)).toMatchObject({
      granted: true,
    });
  });

  it('an undeclared name fails the stage with INVALID_DEFINITION naming the limits declared', async () => {
    const cairn = open('memory:ctx-limit-unknown', { limits });
    const run = await cairn.run(
      pipeline('unknown-limit').stage('call', (ctx) => ctx.limit('llm')),
      {},
    );
    expect(run.status).toBe('failed');
    expect(run.error).toMatchObject({
      code: 'INVALID_DEFINITION',
      message: 'No rate limit named "llm": the limits declared are api, slow (new Cairn({ limits })).',
    });
  });

  it('a run waiting on a limit stops at once when it is cancelled', async () => {
    const cairn = open('memory:ctx-limit-cancel', { limits });
    const granted = deferred();
    const def = pipeline('cancel-wait').stage('call', async (ctx) => {
      await ctx.limit('slow');
      granted.resolve();
      await ctx.limit('slow'); // an hour away
      return 'never';
    });
    const running = cairn.run(def, {});
    await granted.promise;
    const started = Date.now();
    await cairn.cancel(cairn.runIdFor(def, {}));
    const run = await running;
    expect(run.status).toBe('cancelled');
    expect(Date.now() - started).toBeLessThan(10_000);
  });

  it('the limiter of a Cairn is reachable outside runs, on the store’s shared state', async () => {
    const cairn = open('memory:ctx-limit-outside', { limits });
    const limiter = await cairn.limiter();
    expect(limiter.names).toEqual(['api', 'slow']);
    expect(limiter.sharedBy).toBe('process');
    await limiter.acquire('slow');
    // the grant taken outside counts: the run's call waits for it (an hour), until it is cancelled
    const reached = deferred();
    const def = pipeline('outside').stage('call', (ctx) => {
      reached.resolve();
      return ctx.limit('slow', {}, () => 'ran');
    });
    const running = cairn.run(def, {});
    await reached.promise;
    await new Promise((resolve) => setTimeout(resolve, 300)); // time enough to complete, had the call been let through
    await cairn.cancel(cairn.runIdFor(def, {}));
    expect((await running).status).toBe('cancelled');
  });
});
