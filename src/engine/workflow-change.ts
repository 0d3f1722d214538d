/**
 * A workflow's definition fingerprint, and what a run does when it resumes under a changed one.
 *
 * The fingerprint covers what can be identified of the graph: the workflow's `version`, its entry,
 * its initial state, which keys have reducers (and which reducer), and per node its `version` and
 * its edge (a target, END, or a function identified by its source text, whitespace ignored). Node
 * functions are not part of it, as stage functions are not part of a pipeline's: bump `version`.
 *
 * A change matters to a run when it touches where the run's steps went: a node it took a step in
 * (its version or edge changed, or it is gone), or anything every step depends on (version, entry,
 * initial state, reducers). Such a run starts over from its initial state (`onChange: 'rerun'`, the
 * default) or fails with `FINGERPRINT_CHANGED` (`'refuse'`); a change elsewhere (a node added, one
 * it never reached) lets it continue. Either way the change is recorded in the run's history.
 */
import { z } from 'zod';
import { CairnError } from '../core/errors.js';
import { canonicalHash, sha256Hex } from '../core/hash.js';
import { encodeValue } from '../core/serialize.js';
import { addHistory, type RunData } from './run-data.js';
import type { RunSession } from './run-session.js';
import { append, END, type Workflow } from './workflow.js';

type AnyWorkflow = Workflow<unknown, Record<string, unknown>, string>;

export interface WorkflowParts {
  readonly version: string;
  readonly stateVersion?: number;
  readonly entry: string;
  /** `data:<hash>` of a state given as data, `fn:<hash>` of a function's source. */
  readonly initial: string;
  /** Key → `append`, or `fn:<hash>` of the reducer's source. */
  readonly reducers: Readonly<Record<string, string>>;
  /** Node → its version and its edge: `to:<node>`, `to:__end__` (also for no edge) or `fn:<hash>`. */
  readonly nodes: Readonly<Record<string, { readonly version: string; readonly edge: string }>>;
}

/** What a run stores of its definition (`RunData.definition`). */
export interface StoredDefinition {
  readonly fingerprint: string;
  readonly parts: WorkflowParts;
}

const partsSchema = z.object({
  version: z.string(),
  stateVersion: z.number().optional(),
  entry: z.string(),
  initial: z.string(),
  reducers: z.record(z.string(), z.string()),
  nodes: z.record(z.string(), z.object({ version: z.string(), edge: z.string() })),
});

/** The definition's parts and fingerprint. */
export function definitionOf(def: AnyWorkflow): StoredDefinition {
  const nodes: Record<string, { version: string; edge: string }> = {};
  for (const node of def.nodes) {
    const edge = def.edges.get(node.name);
    nodes[node.name] = {
      version: node.options.version ?? '1',
      edge: typeof edge === 'function' ? `fn:${sourceHash(edge)}` : `to:${edge ?? END}`,
    };
  }
  const reducers: Record<string, string> = {};
  for (const [key, reducer] of Object.entries(def.options.reducers ?? {})) {
    if (typeof reducer === 'function') reducers[key] = reducer === append ? 'append' : `fn:${sourceHash(reducer)}`;
  }
  const { initial } = def.options;
  const parts: WorkflowParts = {
    version: def.options.version ?? '1',
    stateVersion: def.options.stateVersion ?? 1,
    entry: def.entryNode ?? def.nodes[0]?.name ?? '',
    initial: typeof initial === 'function' ? `fn:${sourceHash(initial)}` : `data:${valueHash(initial)}`,
    reducers,
    nodes,
  };
  return { fingerprint: canonicalHash(parts).slice(0, 32), parts };
}

/** True when the run was made by this definition, as far as the run knows (an earlier cairn stored none). */
export function isSameDefinition(def: AnyWorkflow, data: RunData): boolean {
  return data.definition === undefined || data.definition.fingerprint === definitionOf(def).fingerprint;
}

/** What {@link reviewDefinition} decided. `restart`: start over at step `from` (no step number is used twice). */
export type DefinitionReview =
  | { readonly action: 'same' | 'recorded' }
  | { readonly action: 'restart'; readonly from: number }
  | { readonly action: 'refuse'; readonly node: string; readonly error: CairnError };

/**
 * Compares the run's stored definition with `def` before the run goes on from `position`, and
 * records `def` as the run's definition (unless refused). On `restart`, values given for waits and
 * not read yet are dropped: they answered a question of the run before it started over.
 */
export async function reviewDefinition(
  session: RunSession,
  def: AnyWorkflow,
  position: { readonly step: number; readonly next: string; readonly from: number; readonly state: Readonly<Record<string, unknown>> },
): Promise<DefinitionReview> {
  const { data, runId, store } = session;
  const now = definitionOf(def);
  const stored = data.definition;
  if (stored?.fingerprint === now.fingerprint) return { action: 'same' };
  if (stored === undefined) {
    if (data.attempts.length > 1 || position.step > 0) {
      addHistory(
        data,
        'definition:recorded',
        `This run was started by an earlier cairn, which kept no fingerprint of workflow ${def.name}; changes to it are detected from now on.`,
      );
    }
    data.definition = now;
    return { action: 'recorded' };
  }
  const before = partsSchema.safeParse(stored.parts);
  const changes = before.success
    ? describeWorkflowChange(before.data, now.parts, new Set(Object.keys(position.state)))
    : { text: 'its fingerprint changed', global: true, nodes: [] };

  // the nodes the run's steps went through since it (re)started, from the step records
  const visited = new Set<string>();
  let lastStep = position.step;
  let unreadable = false;
  for (const entry of await store.listCheckpoints(runId)) {
    if (!entry.valid) {
      unreadable = true;
      continue;
    }
    const step = entry.ref.meta?.step;
    if (typeof step === 'number' && step > lastStep) lastStep = step;
    if (entry.ref.kind === 'step' && entry.ref.stage !== undefined && typeof step === 'number' && step > position.from)
      visited.add(entry.ref.stage);
  }
  const touched = changes.nodes.filter((node) => unreadable || visited.has(node) || (node === position.next && !def.getNode(node)));
  const matters = changes.global || touched.length > 0;
  const what = `Workflow ${def.name} changed since this run last ran (${changes.text})`;
  if (!matters) {
    addHistory(data, 'definition:changed', `${what}; no step the run took went through the change, so it continues.`);
    data.definition = now;
    return { action: 'recorded' };
  }
  const why = changes.global ? 'every step depends on it' : `its steps went through ${touched.join(', ')}`;
  if ((def.options.onChange ?? 'rerun') === 'refuse') {
    const node =
      touched[0] ??
      (position.next !== END && def.getNode(position.next) ? position.next : (def.entryNode ?? def.nodes[0]?.name ?? def.name));
    const error = new CairnError(
      'FINGERPRINT_CHANGED',
      `${what}, and ${why}; the workflow says onChange: 'refuse'. ` +
        'Restore the old definition to continue the run, or start it over: run(…, { forceRestart: true }) (cairn run … --force-restart).',
      { runId, stage: node },
    );
    return { action: 'refuse', node, error };
  }
  const from = lastStep;
  const message = `${what}, and ${why}: the run starts over from its initial state (onChange: 'rerun'; its earlier steps stay in its history).`;
  addHistory(data, 'definition:changed', message);
  session.emit('warning', { runId, code: 'FINGERPRINT_CHANGED', message });
  dropUnreadAnswers(data);
  data.definition = now;
  return { action: 'restart', from };
}

interface WorkflowChange {
  /** What changed, for people. */
  readonly text: string;
  /** Something every step depends on changed (version, entry, initial state, reducers). */
  readonly global: boolean;
  /** Nodes whose change matters to a run that took a step in them. */
  readonly nodes: readonly string[];
}

/**
 * Says what differs between two definitions' parts. A new initial state or reducer matters to a
 * run only while its state still depends on it: not once `stateVersion` changed (`migrate` carries
 * the state over), and a reducer not for a key the run's state does not hold yet.
 */
export function describeWorkflowChange(before: WorkflowParts, now: WorkflowParts, stateKeys: ReadonlySet<string>): WorkflowChange {
  const global: string[] = [];
  const local: string[] = [];
  const migrated = (before.stateVersion ?? 1) !== (now.stateVersion ?? 1);
  if (before.version !== now.version) global.push(`version ${before.version} → ${now.version}`);
  if (migrated) local.push(`stateVersion ${before.stateVersion ?? 1} → ${now.stateVersion ?? 1}`);
  if (before.entry !== now.entry) global.push(`entry ${before.entry} → ${now.entry}`);
  if (before.initial !== now.initial) (migrated ? local : global).push('initial state changed');
  for (const key of union(before.reducers, now.reducers)) {
    const [was, is] = [before.reducers[key], now.reducers[key]];
    if (was === is) continue;
    (migrated || !stateKeys.has(key) ? local : global).push(
      `reducer of ${key} ${was === undefined ? 'added' : is === undefined ? 'removed' : 'changed'}`,
    );
  }
  const nodes: string[] = [];
  for (const name of union(before.nodes, now.nodes)) {
    const [was, is] = [before.nodes[name], now.nodes[name]];
    if (was === undefined || is === undefined) {
      local.push(`node ${name} ${was === undefined ? 'added' : 'removed'}`);
      if (is === undefined) nodes.push(name);
      continue;
    }
    const parts: string[] = [];
    if (was.version !== is.version) parts.push(`node ${name} version ${was.version} → ${is.version}`);
    if (was.edge !== is.edge) {
      const both = was.edge.startsWith('fn:') && is.edge.startsWith('fn:');
      parts.push(`edge out of ${name}: ${both ? 'its function changed' : `${edgeText(was.edge)} → ${edgeText(is.edge)}`}`);
    }
    if (parts.length > 0) {
      local.push(...parts);
      nodes.push(name);
    }
  }
  const all = [...global, ...local];
  return { text: all.length > 0 ? all.join(', ') : 'its fingerprint changed', global: global.length > 0, nodes };
}

function edgeText(edge: string): string {
  if (edge === `to:${END}`) return 'END';
  if (edge.startsWith('to:')) return edge.slice(3);
  return 'a function';
}

/** Values given for waits and not read yet belong to the run before it started over. */
function dropUnreadAnswers(data: RunData): void {
  const dropped: string[] = [];
  for (const [name, answer] of Object.entries(data.answers ?? {})) {
    if (answer.for !== undefined) continue;
    delete data.answers![name];
    dropped.push(name);
  }
  for (const name of Object.keys(data.inputs)) dropped.push(name); // given to an earlier cairn, not read yet
  data.inputs = {};
  if (dropped.length > 0) {
    addHistory(
      data,
      'wait:dropped',
      `The value(s) given for ${dropped.join(', ')} were not used: the run started over and will ask again.`,
    );
  }
}

function union(a: Readonly<Record<string, unknown>>, b: Readonly<Record<string, unknown>>): string[] {
  return [...new Set([...Object.keys(a), ...Object.keys(b)])];
}

/** A function is identified by its source text, whitespace ignored (a reformat is no change). */
function sourceHash(fn: (...args: never[]) => unknown): string {
  return sha256Hex(Function.prototype.toString.call(fn).replace(/\s+/g, '')).slice(0, 16);
}

function valueHash(value: unknown): string {
  try {
    return canonicalHash(value ?? null).slice(0, 16);
  } catch {
    try {
      return sha256Hex(encodeValue(value).text).slice(0, 16); // a cycle, a class instance…: hashed as stored
    } catch {
      return 'unhashable';
    }
  }
}
