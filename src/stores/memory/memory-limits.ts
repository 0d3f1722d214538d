/**
 * Rate limits kept in this process: the `memory:` store's (shared by every store opened on the
 * same `memory:<name>`), and the engine's own for stores that keep none. Each call is one
 * synchronous step, so nothing interleaves with it.
 */
import { chargeGrant, emptyWindow, slowWindow, tryGrant, type WindowState } from '../limit-window.js';
import type { LimitBackend, LimitRule, LimitTry } from '../store.js';

/** The limits of each `memory:<name>` space. */
const namedLimits = new Map<string, MemoryLimits>();

export class MemoryLimits implements LimitBackend {
  readonly sharedBy = 'process';
  private readonly windows = new Map<string, WindowState>();

  /** `now` exists for tests that move the clock by hand. */
  constructor(private readonly now: () => number = Date.now) {}

  /** The limits every store opened on `memory:<name>` shares. */
  static named(name: string): MemoryLimits {
    let limits = namedLimits.get(name);
    if (!limits) namedLimits.set(name, (limits = new MemoryLimits()));
    return limits;
  }

  private window(name: string, perMs: number): WindowState {
    let state = this.windows.get(name);
    if (!state) this.windows.set(name, (state = emptyWindow(perMs)));
    return state;
  }

  tryAcquire(name: string, rule: LimitRule, grantId: string, tokens: number): Promise<LimitTry> {
    return Promise.resolve(tryGrant(this.window(name, rule.perMs), rule, grantId, tokens, this.now()));
  }

  charge(name: string, grantId: string, totalTokens: number): Promise<void> {
    const state = this.windows.get(name);
    if (state) chargeGrant(state, grantId, totalTokens);
    return Promise.resolve();
  }

  slowDown(name: string, rule: LimitRule, ms: number): Promise<void> {
    slowWindow(this.window(name, rule.perMs), this.now() + ms);
    return Promise.resolve();
  }
}
