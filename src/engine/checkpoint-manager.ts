import { CairnError } from '../core/errors.js';
import { parseDuration } from '../core/duration.js';
import { assertRunId } from '../core/ids.js';
import type { StoreOptions } from '../stores/common.js';
import { DEFAULT_STORE_URL, openStore } from '../stores/open-store.js';
import { checkpointManagerData } from './run-data.js';
import type { CheckpointRef as StoreCheckpointRef, RunStatus, Store } from '../stores/store.js';

/** A saved checkpoint's identity: `id` is `<workflowId>:<seq>`. */
export interface CheckpointRef {
  readonly id: string;
  readonly workflowId: string;
  readonly seq: number;
  readonly createdAt: string;
  /** Metadata given to {@link CheckpointManager.create}. */
  readonly meta: Readonly<Record<string, unknown>>;
}

export interface LoadedCheckpoint<S = unknown> extends CheckpointRef {
  readonly state: S;
}

export interface CheckpointManagerOptions extends StoreOptions {
  /** A store URL (`file:…`, `sqlite:…`, `memory:`) or an open {@link Store}. @defaultValue 'file:./data/checkpoints' */
  readonly store?: string | Store;
}

export interface CleanupOptions {
  /** Delete checkpoints created longer ago than this (`'7d'`, `'24h'`, milliseconds). */
  readonly olderThan: string | number;
  /** Only this workflow. @defaultValue every workflow */
  readonly workflowId?: string;
  /** Keep each workflow's newest checkpoint, however old, so it can still resume. @defaultValue false */
  readonly keepLatest?: boolean;
  /** Report what would be deleted without deleting. @defaultValue false */
  readonly dryRun?: boolean;
}

export interface CleanupResult {
  readonly deletedCheckpoints: number;
  /** Workflows left without checkpoints, removed entirely. */
  readonly deletedWorkflows: readonly string[];
  /** Workflows skipped because a live process holds their lock. */
  readonly skippedLocked: readonly string[];
}

/**
 * The low-level API, for code that drives its own loop: save a checkpoint after each stage, load the
 * newest valid one on restart. Every checkpoint is durable when `create` resolves, checksummed, and
 * never returned if damaged.
 *
 * @example
 * const cm = new CheckpointManager({ store: 'file:./data/checkpoints' });
 * const last = await cm.getMostRecent('wf-1');
 * const state = last?.state ?? { step: 0 };
 * await cm.create('wf-1', { ...state, step: 1 }, { stage: 'fetch' });
 * await cm.close();
 */
export class CheckpointManager {
  private readonly storePromise: Promise<Store>;
  private readonly ownsStore: boolean;

  constructor(options: CheckpointManagerOptions = {}) {
    const store = options.store ?? DEFAULT_STORE_URL;
    this.ownsStore = typeof store === 'string';
    this.storePromise = typeof store === 'string' ? openStore(store, options) : Promise.resolve(store);
    this.storePromise.catch(() => undefined); // surfaced by the first call
  }

  /** The underlying store (opened on first use). */
  store(): Promise<Store> {
    return this.storePromise;
  }

  /** Saves `state` as the workflow's next checkpoint, durably. Creates the workflow on first use. */
  async create(workflowId: string, state: unknown, meta: Readonly<Record<string, unknown>> = {}): Promise<CheckpointRef> {
    assertRunId(workflowId, 'workflow id');
    const store = await this.storePromise;
    if (!(await store.getRun(workflowId))) {
      try {
        await store.createRun({ id: workflowId, name: workflowId, status: 'running', data: checkpointManagerData() });
      } catch (error) {
        if ((error as CairnError).code !== 'ALREADY_EXISTS') throw error; // another process created it first
      }
    }
    const stage = typeof meta.stage === 'string' ? meta.stage : undefined;
    const ref = await store.appendCheckpoint(workflowId, { kind: 'state', state, meta, ...(stage === undefined ? {} : { stage }) });
    return toRef(ref);
  }

  /** Loads one checkpoint by id. Throws `NOT_FOUND`, `CHECKPOINT_CORRUPT` or `FORMAT_TOO_NEW`. */
  async load<S = unknown>(id: string): Promise<LoadedCheckpoint<S>> {
    const { workflowId, seq } = parseCheckpointId(id);
    const cp = await (await this.storePromise).getCheckpoint(workflowId, seq);
    return { ...toRef(cp), state: cp.state as S };
  }

  /** The newest checkpoint of the workflow that reads back intact, or undefined. */
  async getMostRecent<S = unknown>(workflowId: string): Promise<LoadedCheckpoint<S> | undefined> {
    assertRunId(workflowId, 'workflow id');
    const cp = await (await this.storePromise).latestCheckpoint(workflowId);
    return cp ? { ...toRef(cp), state: cp.state as S } : undefined;
  }

  /** The workflow's intact checkpoints, oldest first. */
  async list(workflowId: string): Promise<CheckpointRef[]> {
    assertRunId(workflowId, 'workflow id');
    const entries = await (await this.storePromise).listCheckpoints(workflowId);
    return entries.flatMap((e) => (e.valid ? [toRef(e.ref)] : []));
  }

  /** Every workflow in the store with its intact checkpoints, oldest first. */
  async listAll(): Promise<{ workflowId: string; status: RunStatus; checkpoints: CheckpointRef[] }[]> {
    const store = await this.storePromise;
    const runs = await store.listRuns();
    const out = [];
    for (const run of runs) out.push({ workflowId: run.id, status: run.status, checkpoints: await this.list(run.id) });
    return out;
  }

  /**
   * Deletes one checkpoint (`'wf-1:3'`) or, given a bare workflow id (`'wf-1'`), the whole workflow.
   * Returns false if there was nothing to delete.
   */
  async delete(id: string): Promise<boolean> {
    const store = await this.storePromise;
    if (!id.includes(':')) {
      assertRunId(id, 'workflow id');
      return store.deleteRun(id);
    }
    const { workflowId, seq } = parseCheckpointId(id);
    return (await store.deleteCheckpoints(workflowId, [seq])) > 0;
  }

  /** Marks a workflow finished (`completed` by default), so listings and cleanup can tell. */
  async finish(workflowId: string, status: RunStatus = 'completed'): Promise<void> {
    assertRunId(workflowId, 'workflow id');
    const store = await this.storePromise;
    for (;;) {
      const run = await store.getRun(workflowId);
      if (!run) throw new CairnError('NOT_FOUND', `Workflow ${workflowId} not found.`, { runId: workflowId });
      try {
        await store.updateRun(workflowId, run.version, { status });
        return;
      } catch (error) {
        if ((error as CairnError).code !== 'CONFLICT') throw error;
      }
    }
  }

  /**
   * Deletes checkpoints older than `olderThan` (no default: `'7d'`, a 7-day time to live, is a common
   * choice); a workflow left with none is removed entirely. Workflows whose lock is held by a live
   * process are skipped.
   */
  async cleanup(options: CleanupOptions): Promise<CleanupResult> {
    const age = parseDuration(options.olderThan);
    const cutoff = Date.now() - age;
    const store = await this.storePromise;
    const ids = options.workflowId === undefined ? (await store.listRuns()).map((r) => r.id) : [options.workflowId];
    // whether a workflow as a whole is old is the store's call, by its clock (the database server's for Postgres)
    const oldRuns = new Set((await store.listRuns({ olderThanMs: age })).map((r) => r.id));
    let deletedCheckpoints = 0;
    const deletedWorkflows: string[] = [];
    const skippedLocked: string[] = [];
    for (const workflowId of ids) {
      assertRunId(workflowId, 'workflow id');
      if (await store.getLock(workflowId)) {
        skippedLocked.push(workflowId);
        continue;
      }
      const entries = await store.listCheckpoints(workflowId);
      const valid = entries.flatMap((e) => (e.valid ? [e.ref] : []));
      const newest = valid.at(-1)?.seq;
      const old = valid
        .filter((ref) => Date.parse(ref.createdAt) < cutoff && !(options.keepLatest && ref.seq === newest))
        .map((ref) => ref.seq);
      const run = await store.getRun(workflowId).catch(() => undefined);
      const runIsOld = run === undefined || oldRuns.has(workflowId);
      if (old.length === valid.length && runIsOld && !options.keepLatest) {
        deletedCheckpoints += entries.length;
        deletedWorkflows.push(workflowId);
        if (!options.dryRun) await store.deleteRun(workflowId);
      } else if (old.length > 0) {
        deletedCheckpoints += old.length;
        if (!options.dryRun) await store.deleteCheckpoints(workflowId, old);
      }
    }
    return { deletedCheckpoints, deletedWorkflows, skippedLocked };
  }

  /** Closes the store if this manager opened it from a URL. */
  async close(): Promise<void> {
    if (this.ownsStore) await (await this.storePromise).close();
  }
}

function toRef(ref: StoreCheckpointRef): CheckpointRef {
  return { id: `${ref.runId}:${ref.seq}`, workflowId: ref.runId, seq: ref.seq, createdAt: ref.createdAt, meta: ref.meta ?? {} };
}

/** Splits `<workflowId>:<seq>`; throws `INVALID_INPUT` / `INVALID_RUN_ID` on anything else. */
export function parseCheckpointId(id: string): { workflowId: string; seq: number } {
  const colon = typeof id === 'string' ? id.lastIndexOf(':') : -1;
  const seqText = colon < 0 ? '' : id.slice(colon + 1);
  if (colon < 0 || !/^[1-9]\d{0,15}$/.test(seqText)) {
    throw new CairnError(
      'INVALID_INPUT',
      `Invalid checkpoint id ${JSON.stringify(id)}: expected <workflow-id>:<seq>, as returned by create().`,
    );
  }
  const workflowId = id.slice(0, colon);
  assertRunId(workflowId, 'workflow id');
  return { workflowId, seq: Number(seqText) };
}
