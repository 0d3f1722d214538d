/**
 * `workflow(name, { initial })`: a graph of nodes over a state. Each node returns a partial update,
 * merged into the state key by key (through a reducer where one is declared); edges, static or
 * conditional, pick the next node; loops are allowed and bounded by `maxSteps`.
 */
import { CairnError } from '../core/errors.js';
import { assertName } from '../core/ids.js';
import { isPipeline, type InputSchema, type OnChange, type Pipeline } from './pipeline.js';
import { resolveLimits, type LimitSpec } from './limits.js';
import type { NodeContext, RetryPolicy } from './types.js';

/** Like `PIPELINE_BRAND`: definitions are recognised by a brand, not `instanceof`. */
export const WORKFLOW_BRAND = Symbol.for('cairnjs.workflow');

export function isWorkflow(value: unknown): value is Workflow<unknown, Record<string, unknown>, string> {
  return typeof value === 'object' && value !== null && (value as { [WORKFLOW_BRAND]?: unknown })[WORKFLOW_BRAND] === true;
}

/** True for anything made with `pipeline()` or `workflow()`. */
export function isDefinition(
  value: unknown,
): value is Pipeline<unknown, Record<string, unknown>, unknown> | Workflow<unknown, Record<string, unknown>, string> {
  return isPipeline(value) || isWorkflow(value);
}

/** The edge target that ends the run. */
export const END = '__end__';
export type End = typeof END;

/** Merges a node's update for one key into the current value. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any -- reducers are declared per key with any value type
export type Reducer<V = any, U = any> = (current: V, update: U) => V;

/**
 * The list reducer: appends the update (one element or an array of them) to the current list.
 * @example workflow('review', { initial: { notes: [] as string[] }, reducers: { notes: append } })
 */
export function append<T>(current: readonly T[] | undefined, update: T | readonly T[]): T[] {
  const base = Array.isArray(current) ? (current as T[]) : [];
  return Array.isArray(update) ? [...base, ...(update as T[])] : [...base, update as T];
}

/** What a node may return: any subset of the state (list keys also take elements, for `append`), plus new keys. */
export type StateUpdate<S> = {
  [K in keyof S]?: S[K] | (S[K] extends readonly (infer E)[] ? E | readonly E[] : never);
} & { readonly [key: string]: unknown };

export interface WorkflowOptions<S, I> {
  /** The state before the first node, or a function of the run's input. */
  readonly initial: S | ((input: I) => S);
  /**
   * Rate limits this definition's `ctx.limit` and `ctx.items(…, { limit })` use, declared with it so
   * that `cairn run` (which makes its own `Cairn`) knows them: `{ llm: { requests: 60, per: '1m' } }`.
   * A limit of the same name in `new Cairn({ limits })` wins. Not part of any fingerprint: changing a
   * rate reruns nothing. See docs/rate-limits.md.
   */
  readonly limits?: Readonly<Record<string, LimitSpec>>;

  /**
   * Part of the definition's fingerprint: bump it when the workflow's code changes in a way its
   * graph does not show, and runs started before should start over. @defaultValue '1'
   */
  readonly version?: string;
  /**
   * What a run does when it resumes under a definition that changed where its steps went (a node it
   * visited changed its version or its edge, or the entry, initial state, reducers or version
   * changed): `'rerun'` starts it over from its initial state, `'refuse'` fails it with
   * `FINGERPRINT_CHANGED`. Either way the change is explained in the run's history.
   * @defaultValue 'rerun'
   */
  readonly onChange?: OnChange;
  /** Per-key reducers; keys without one are replaced by the update. */
  readonly reducers?: { readonly [K in keyof S]?: Reducer };
  /** Steps after which the run fails with `MAX_STEPS_EXCEEDED` (a runaway loop). @defaultValue 10_000 */
  readonly maxSteps?: number;
  /** Version of the state's shape; stored with every checkpoint. @defaultValue 1 */
  readonly stateVersion?: number;
  /** Upgrades a state saved under an older `stateVersion` when a run resumes. */
  readonly migrate?: (old: unknown, fromVersion: number) => S;
  /** Validates (and types) the input of `cairn.run`. */
  readonly input?: InputSchema<I>;
}

export interface NodeOptions {
  /** Bump when the node's code changes meaningfully: runs whose steps went through it start over. @defaultValue '1' */
  readonly version?: string;
  readonly retries?: RetryPolicy;
  /** A try running longer than this fails with `STAGE_TIMEOUT` (and may be retried). */
  readonly timeoutMs?: number;
}

export type NodeFn<S, I, U> = (state: S, ctx: NodeContext<I>) => U | Promise<U>;

export interface NodeDef {
  readonly name: string;
  readonly fn: NodeFn<unknown, unknown, unknown>;
  readonly options: NodeOptions;
}

export type EdgeTarget<S> = string | ((state: S) => string | Promise<string>);

/**
 * A workflow definition: `I` is the input, `S` the state, `N` the node names.
 *
 * @example
 * const review = workflow('review', { initial: { notes: [] as string[] }, reducers: { notes: append } })
 *   .node('draft', async () => ({ notes: 'drafted' }))
 *   .node('confirm', async (s, ctx) => ({ approved: await ctx.waitFor<boolean>('approval') }))
 *   .edge('draft', 'confirm')
 *   .edge('confirm', (s) => (s.approved ? END : 'draft'))
 *   .entry('draft');
 */
export class Workflow<I = unknown, S extends object = Record<string, unknown>, N extends string = never> {
  readonly kind = 'workflow' as const;
  readonly [WORKFLOW_BRAND] = true;
  declare readonly __types?: { input: I; state: S; nodes: N };

  constructor(
    readonly name: string,
    readonly options: WorkflowOptions<S, I>,
    readonly nodes: readonly NodeDef[],
    readonly edges: ReadonlyMap<string, EdgeTarget<S>>,
    readonly entryNode: string | undefined,
  ) {}

  /** Adds a node. Its return value (a partial state, or nothing) is merged into the state. */
  node<K extends string, U extends StateUpdate<S> | undefined | void>(
    name: K,
    fn: NodeFn<S, I, U>,
    options: NodeOptions = {},
  ): Workflow<I, S & Partial<Omit<NonNullable<U>, keyof S>>, N | K> {
    assertName(name, 'node name');
    if (name === END) throw new CairnError('INVALID_DEFINITION', `${END} is reserved for the end of a workflow.`);
    if (this.nodes.some((n) => n.name === name)) {
      throw new CairnError('INVALID_DEFINITION', `Workflow ${this.name} already has a node named ${name}.`, { stage: name });
    }
    if (typeof fn !== 'function') throw new CairnError('INVALID_DEFINITION', `Node ${name} needs a function.`, { stage: name });
    const def: NodeDef = { name, fn: fn as NodeDef['fn'], options };
    return new Workflow(this.name, this.options, [...this.nodes, def], this.edges, this.entryNode);
  }

  /** The edge out of `from`: a node name, `END`, or a function of the state returning one. */
  edge(from: N, to: N | End | ((state: S) => string | Promise<string>)): Workflow<I, S, N> {
    if (!this.nodes.some((n) => n.name === from)) {
      throw new CairnError('INVALID_DEFINITION', `Edge from ${String(from)}: no such node in workflow ${this.name}.`, { stage: from });
    }
    if (this.edges.has(from)) {
      throw new CairnError('INVALID_DEFINITION', `Node ${from} already has an edge; use a function to choose between targets.`, {
        stage: from,
      });
    }
    if (typeof to === 'string' && to !== END && !this.nodes.some((n) => n.name === to)) {
      throw new CairnError('INVALID_DEFINITION', `Edge ${from} → ${to}: no such node in workflow ${this.name}.`, { stage: from });
    }
    const edges = new Map(this.edges);
    edges.set(from, to);
    return new Workflow(this.name, this.options, this.nodes, edges, this.entryNode);
  }

  /** The first node. @defaultValue the first node declared */
  entry(name: N): Workflow<I, S, N> {
    if (!this.nodes.some((n) => n.name === name)) {
      throw new CairnError('INVALID_DEFINITION', `Entry ${String(name)}: no such node in workflow ${this.name}.`);
    }
    return new Workflow(this.name, this.options, this.nodes, this.edges, name);
  }

  getNode(name: string): NodeDef | undefined {
    return this.nodes.find((n) => n.name === name);
  }
}

/** The state a run starts from: `initial`, or `initial(input)`. */
export function initialState(def: Workflow<unknown, Record<string, unknown>, string>, input: unknown): unknown {
  const { initial } = def.options;
  return typeof initial === 'function' ? (initial as (input: unknown) => unknown)(input) : initial;
}

/**
 * Starts a workflow definition; the state type comes from `initial`, and grows with the keys that
 * nodes return.
 */
export function workflow<S extends object, I = unknown>(name: string, options: WorkflowOptions<S, I>): Workflow<I, S> {
  assertName(name, 'workflow name');
  if (typeof options !== 'object' || options === null || !('initial' in options)) {
    throw new CairnError('INVALID_DEFINITION', `Workflow ${name} needs an initial state: workflow(name, { initial: {...} }).`);
  }
  const maxSteps = options.maxSteps ?? 10_000;
  if (!Number.isInteger(maxSteps) || maxSteps < 1)
    throw new CairnError('INVALID_DEFINITION', `Workflow ${name}: maxSteps must be a positive integer.`);
  const stateVersion = options.stateVersion ?? 1;
  if (!Number.isInteger(stateVersion) || stateVersion < 1) {
    throw new CairnError('INVALID_DEFINITION', `Workflow ${name}: stateVersion must be a positive integer.`);
  }
  if (options.onChange !== undefined && options.onChange !== 'rerun' && options.onChange !== 'refuse') {
    throw new CairnError('INVALID_DEFINITION', `Workflow ${name}: onChange must be 'rerun' or 'refuse'.`);
  }
  if (options.limits !== undefined) resolveLimits(options.limits); // INVALID_INPUT naming the limit and field, at once
  return new Workflow<I, S>(name, options, [], new Map(), undefined);
}
