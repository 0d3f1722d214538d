/** The parts of a stage's or node's context that both executors share. */
import { CairnError } from '../core/errors.js';
import { artifactPath, describeArtifact } from './artifacts.js';
import { runItems, type ItemsScope } from './items.js';
import { limitCall, type LimitGrant, type LimitOptions } from './limits.js';
import { WaitSignal } from './retry.js';
import { answersOf, addHistory } from './run-data.js';
import type { RunSession } from './run-session.js';
import { BUDGET_WAIT, checkSpend } from './spend.js';
import type { ArtifactRef, BaseContext, ItemCounts, ItemsFn, WaitForOptions } from './types.js';

export interface ContextScope {
  readonly session: RunSession;
  readonly stage: string;
  readonly attempt: number;
  readonly signal: AbortSignal;
  /** Ledger name for an items call (stage, generation or step included). */
  ledgerName(name: string): string;
  /** The wait this try's `waitFor` calls answer: `<stage>#<generation>#<basis>` or `<node>@<step>`. */
  readonly waitKey: string;
  /** Artifacts recorded by this try, by name. */
  readonly artifacts: Map<string, ArtifactRef>;
  /** Item counts by items name. */
  readonly counts: Map<string, ItemCounts>;
  /** The `ctx.items` and `ctx.waitFor` calls of this try (see {@link checkCallsAwaited}). */
  readonly calls: TrackedCall[];
}

/**
 * The promise `ctx.items` and `ctx.waitFor` return. It is a real promise; it only notes whether
 * anyone used it (`await`, `.then`, `.catch`, `Promise.all` all call `then` on a promise of a
 * subclass) and whether it settled, so that a stage that returns without awaiting one (`if
 * (ctx.waitFor('ok'))`, `void ctx.items(…)`, `return { r: ctx.items(…) }`) fails with a clear error
 * instead of completing with work still running or a question never asked.
 */
class TrackedPromise<T> extends Promise<T> {
  static override get [Symbol.species](): PromiseConstructor {
    return Promise; // what `then` returns is a plain promise
  }

  used = false;
  settled = false;

  override then<A = T, B = never>(
    onFulfilled?: ((value: T) => A | PromiseLike<A>) | null,
    onRejected?: ((reason: unknown) => B | PromiseLike<B>) | null,
  ): Promise<A | B> {
    this.used = true;
    return super.then(onFulfilled, onRejected);
  }
}

interface TrackedCall {
  readonly what: string;
  readonly promise: TrackedPromise<unknown>;
}

function track<T>(scope: ContextScope, what: string, work: Promise<T>): Promise<T> {
  const promise = new TrackedPromise<T>((resolve, reject) => {
    work.then(resolve, reject);
  });
  // settling is watched through the base `then`, which does not count as a use; a rejection no one
  // awaits is reported by checkCallsAwaited, not as an unhandled rejection that kills the process
  const markSettled = (): void => void (promise.settled = true);
  void Promise.prototype.then.call(promise, markSettled, markSettled);
  scope.calls.push({ what, promise });
  return promise;
}

/**
 * A validator's refusal on one line: a schema's issues (zod and the like) by where and what
 * (`count: expected number, received undefined`), else the message.
 */
export function refusalText(error: unknown): string {
  const issues = (error as { issues?: unknown }).issues;
  const text = Array.isArray(issues) ? issues.map(issueText).join('; ') : error instanceof Error ? error.message : String(error);
  const line = text.replace(/\s+/g, ' ').trim();
  return line.length > 300 ? `${line.slice(0, 300)}…` : line;
}

function issueText(issue: unknown): string {
  const { message, path } = (issue ?? {}) as { message?: unknown; path?: unknown };
  const where = Array.isArray(path) && path.length > 0 ? `${path.map(String).join('.')}: ` : '';
  return `${where}${String(message ?? issue)}`;
}

/** Forgets the values the waits of a completed stage or step read (`waitKey`, and its later waits of a name). */
export function forgetReadAnswers(scope: ContextScope): void {
  const read = scope.session.data.readAnswers;
  if (!read) return;
  for (const readKey of Object.keys(read)) {
    const key = readKey.slice(readKey.indexOf(' @ ') + 3);
    if (key === scope.waitKey || key.startsWith(`${scope.waitKey}#`)) delete read[readKey];
  }
}

/**
 * After a stage or node returned: `INVALID_DEFINITION` if one of its `ctx.items` / `ctx.waitFor`
 * calls was never awaited or was still running, naming the call and saying what to write.
 */
export function checkCallsAwaited(scope: ContextScope): void {
  for (const { what, promise } of scope.calls) {
    if (promise.used && promise.settled) continue;
    const problem = promise.used ? 'was still running when it returned' : 'was never awaited';
    throw new CairnError(
      'INVALID_DEFINITION',
      `${scope.stage}: ${what} ${problem}. Write \`await ${what}\`: its result (or the wait) only counts once awaited.`,
      { stage: scope.stage },
    );
  }
}

export function baseContext<I>(scope: ContextScope, input: I): BaseContext<I> {
  const { session } = scope;
  const used = new Set<string>();
  const waitsByName = new Map<string, number>();
  const itemsScope: ItemsScope = {
    session,
    stage: scope.stage,
    signal: scope.signal,
    ledgerName: (name) => {
      if (used.has(name)) {
        throw new CairnError(
          'INVALID_DEFINITION',
          `ctx.items(${name}) was already called in ${scope.stage}; give each call its own name.`,
          { stage: scope.stage },
        );
      }
      used.add(name);
      return scope.ledgerName(name);
    },
    onCounts: (name, counts) => scope.counts.set(name, counts),
  };
  const items = ((name: string, list: readonly unknown[], fn: never, options?: never) =>
    track(scope, `ctx.items('${name}', …)`, runItems(itemsScope, name, list, fn, options))) as ItemsFn;
  return {
    runId: session.runId,
    input,
    attempt: scope.attempt,
    signal: scope.signal,
    items,
    artifactPath: (name) => artifactPath(session.store, session.runId, name),
    artifact: (file) => {
      const ref = describeArtifact(session.store, session.runId, file);
      scope.artifacts.set(ref.name, ref);
      return ref;
    },
    waitFor: <V>(name: string, options?: WaitForOptions<V>): Promise<V> => {
      // the n-th wait of a name in this try is a wait of its own: one answer never answers two
      const nth = waitsByName.get(name) ?? 0;
      waitsByName.set(name, nth + 1);
      const key = nth === 0 ? scope.waitKey : `${scope.waitKey}#${nth}`;
      return track(scope, `ctx.waitFor('${name}')`, answerFor<V>(scope, name, key, options));
    },
    limit: ((name: string, options?: LimitOptions, call?: (grant: LimitGrant) => unknown) =>
      limitCall(session.config.limiter, scope.signal, name, options, call)) as BaseContext<I>['limit'],
    spend: (units) => {
      session.addSpend(scope.stage, undefined, checkSpend(units, `ctx.spend in ${scope.stage}`, { stage: scope.stage }));
    },
  };
}

/**
 * The value that answers this wait: the one bound to it already (the same stage generation or
 * node step, run again after a crash), or the latest value not read yet, bound to it (saved before
 * it is used). Anything else waits (`WaitSignal`): a value read by an earlier wait never answers a
 * later one.
 */
async function answerFor<V>(scope: ContextScope, name: string, key: string, options: WaitForOptions<V> | undefined): Promise<V> {
  if (typeof name !== 'string' || name.length === 0)
    throw new CairnError('INVALID_INPUT', 'ctx.waitFor needs a name.', { stage: scope.stage });
  if (name === BUDGET_WAIT) {
    throw new CairnError(
      'INVALID_DEFINITION',
      `ctx.waitFor('${BUDGET_WAIT}') in ${scope.stage}: that name is cairn's own (a run that reached its budget waits for it); choose another.`,
      { stage: scope.stage },
    );
  }
  const { session } = scope;
  const data = session.data;
  const answers = answersOf(data);
  const readKey = `${name} @ ${key}`;
  data.readAnswers ??= {};
  const answer = Object.hasOwn(data.readAnswers, readKey)
    ? { value: data.readAnswers[readKey], for: key }
    : answers[name]?.for === undefined
      ? answers[name]
      : undefined;
  if (!answer) throw new WaitSignal(name);
  let value = answer.value as V;
  if (options?.validate) {
    try {
      const check = options.validate;
      value = typeof check === 'function' ? check(answer.value) : check.parse(answer.value);
    } catch (error) {
      const why = refusalText(error);
      delete answers[name];
      data.waitRefused = `The value given for ${name} was refused by ${scope.stage}: ${why}`;
      addHistory(data, 'wait:refused', data.waitRefused, scope.stage);
      throw new WaitSignal(name);
    }
  }
  if (answer.for === undefined) {
    answer.for = key;
    data.readAnswers[readKey] = answer.value;
    addHistory(data, 'wait:answered', `${scope.stage} read the value given for ${name}.`, scope.stage);
    await session.save('running'); // bound before it is used: a crash after this gives the same wait the same value
  }
  return value;
}
