/**
 * P3 step overhead: a 1,000-step workflow, each step durable, against LangGraph.js with its SQLite
 * checkpointer (default settings, and synchronous=FULL) and the same graph with no checkpointer;
 * plus the disk's own cost of one durable 1 KiB append (write + fdatasync), and, when a Postgres
 * server is reachable, the Postgres store against one bare `pg` INSERT per step (postgres-peers.ts).
 */
import path from 'node:path';
import { Annotation, END as LG_END, START, StateGraph } from '@langchain/langgraph';
import { SqliteSaver } from '@langchain/langgraph-checkpoint-sqlite';
import { Cairn, END, workflow } from '../src/index.js';
import { type BenchOptions, type FsyncCost, type Row, makeTempDir, measureFsync, median, now, removeDir, settle } from './lib/util.js';
import { postgresStepsRows } from './postgres-peers.js';

// a type alias, not an interface: a node's update must be indexable
type Counter = { n: number };

/** The node every peer runs: one increment. */
function stepNode(state: Counter): Counter {
  return { n: state.n + 1 };
}

export async function cairnSteps(storeUrl: string, steps: number, label: string): Promise<number> {
  const def = workflow(`bench-steps-${label}`, { initial: { n: 0 }, maxSteps: steps + 10 })
    .node('step', async (s) => stepNode(s))
    .edge('step', (s) => (s.n >= steps ? END : 'step'));
  const cairn = new Cairn({ store: storeUrl, handleSignals: false });
  try {
    const start = now();
    const run = await cairn.run(def, { steps, label });
    const ms = now() - start;
    if (run.status !== 'completed') throw new Error(`P3 run ended ${run.status}: ${run.error?.message ?? ''}`);
    return ms;
  } finally {
    await cairn.close();
  }
}

/** The same loop with no engine at all: what any workflow must spend on the node functions. */
async function plainSteps(steps: number): Promise<number> {
  const start = now();
  let state: Counter = { n: 0 };
  while (state.n < steps) state = await Promise.resolve(stepNode(state));
  return now() - start;
}

type LangGraphMode = 'none' | 'default' | 'full';

export function langGraphCounter() {
  const State = Annotation.Root({ n: Annotation<number>({ reducer: (_a: number, b: number) => b, default: () => 0 }) });
  return new StateGraph(State).addNode('step', (s: typeof State.State) => stepNode(s)).addEdge(START, 'step');
}

async function langGraphSteps(dbFile: string, mode: LangGraphMode, steps: number): Promise<{ ms: number; synchronous?: number }> {
  const graph = langGraphCounter().addConditionalEdges('step', (s) => (s.n >= steps ? LG_END : 'step'));
  let saver: SqliteSaver | undefined;
  let synchronous: number | undefined;
  if (mode !== 'none') {
    saver = SqliteSaver.fromConnString(dbFile);
    if (mode === 'full') saver.db.pragma('synchronous = FULL');
  }
  const app = graph.compile(saver ? { checkpointer: saver } : {});
  try {
    const start = now();
    const result = await app.invoke({ n: 0 }, { recursionLimit: steps + 10, configurable: { thread_id: `bench-${mode}` } });
    const ms = now() - start;
    // read after the run: the saver switches to WAL on first use, which changes the default
    if (saver) synchronous = saver.db.pragma('synchronous', { simple: true }) as number;
    if (result.n !== steps) throw new Error(`LangGraph ran ${result.n} steps, expected ${steps}`);
    return synchronous === undefined ? { ms } : { ms, synchronous };
  } finally {
    saver?.db.close();
  }
}

export async function runP3(opts: BenchOptions): Promise<{ rows: Row[]; fsync: FsyncCost }> {
  const steps = 1_000;
  const reps = opts.quick ? 1 : 3;
  const t = {
    plain: [] as number[],
    memory: [] as number[],
    file: [] as number[],
    sqlite: [] as number[],
    lgNone: [] as number[],
    lgDefault: [] as number[],
    lgFull: [] as number[],
  };
  let lgDefaultSync: number | undefined;
  const warm = makeTempDir('p3-warm', opts.tmpRoot);
  try {
    await plainSteps(100);
    await cairnSteps('memory:', 100, 'warm-mem');
    await cairnSteps(`file:${path.join(warm, 'store')}`, 100, 'warm');
    await langGraphSteps(path.join(warm, 'lg.db'), 'none', 100);
    await langGraphSteps(path.join(warm, 'lg2.db'), 'full', 100);
  } finally {
    removeDir(warm);
  }
  const fsyncDir = makeTempDir('p3-fsync', opts.tmpRoot);
  let fsync: FsyncCost;
  try {
    fsync = measureFsync(fsyncDir, opts.quick ? 300 : 1_000);
  } finally {
    removeDir(fsyncDir);
  }
  for (let rep = 0; rep < reps; rep++) {
    const dir = makeTempDir('p3', opts.tmpRoot);
    try {
      t.plain.push(await plainSteps(steps));
      t.memory.push(await cairnSteps('memory:', steps, `mem-${rep}`));
      await settle();
      t.file.push(await cairnSteps(`file:${path.join(dir, 'store')}`, steps, `file-${rep}`));
      await settle();
      t.sqlite.push(await cairnSteps(`sqlite:${path.join(dir, 'cairn.db')}`, steps, `sqlite-${rep}`));
      await settle();
      t.lgNone.push((await langGraphSteps(path.join(dir, 'none.db'), 'none', steps)).ms);
      await settle();
      const lgDefault = await langGraphSteps(path.join(dir, 'default.db'), 'default', steps);
      t.lgDefault.push(lgDefault.ms);
      lgDefaultSync = lgDefault.synchronous;
      await settle();
      t.lgFull.push((await langGraphSteps(path.join(dir, 'full.db'), 'full', steps)).ms);
    } finally {
      removeDir(dir);
    }
    opts.log(`  P3 rep ${rep + 1}/${reps} done`);
  }
  const per = (ms: number[]): number => median(ms) / steps;
  const plain = per(t.plain);
  const lgNone = per(t.lgNone);
  const lgFullAdded = per(t.lgFull) - lgNone;
  const lgDefaultAdded = per(t.lgDefault) - lgNone;
  const bench = 'P3 step overhead (1,000 steps)';
  const cairnRow = (peer: string, ms: number[], withGoal: boolean): Row => {
    const added = per(ms) - plain;
    const vsLg = added / lgFullAdded;
    const vsFsync = added / fsync.meanMs;
    return {
      bench,
      peer,
      figure: 'added ms/step',
      value: added,
      samples: ms,
      ratioOf: 'cairn ÷ LangGraph FULL added',
      ratio: vsLg,
      ...(withGoal ? { goal: '≤ 0.2', met: vsLg <= 0.2 } : {}),
      note: `${vsFsync.toFixed(2)} fsyncs per step (× one fsync); total ${per(ms).toFixed(3)} ms/step`,
    };
  };
  /**
   * cairn's added time per step on the file store in units of one measured fsync (write 1 KiB +
   * fdatasync) of this run. The unit is the mean: a run of N steps pays N fsyncs, tail included,
   * so its time compares with N × the mean (the median leaves out the slow fsyncs every run pays).
   */
  const fileAdded = per(t.file) - plain;
  const fsyncsPerStep: Row = {
    bench,
    peer: 'cairn file store ÷ one fsync (this run)',
    figure: 'fsyncs per step',
    value: fileAdded / fsync.meanMs,
    goal: '≤ 1.3',
    met: fileAdded / fsync.meanMs <= 1.3,
    note: `added ${fileAdded.toFixed(3)} ms/step ÷ one fsync (write 1 KiB + fdatasync, mean) ${fsync.meanMs.toFixed(3)} ms; ÷ the median ${fsync.medianMs.toFixed(3)} ms: ${(fileAdded / fsync.medianMs).toFixed(2)}`,
  };
  const rows: Row[] = [
    {
      bench,
      peer: 'disk: write 1 KiB + fdatasync',
      figure: 'ms (median)',
      value: fsync.medianMs,
      note: `mean ${fsync.meanMs.toFixed(3)}, p10 ${fsync.p10Ms.toFixed(3)}, p90 ${fsync.p90Ms.toFixed(3)} ms over ${fsync.samples}`,
    },
    { bench, peer: 'plain loop, no engine (cairn baseline)', figure: 'ms/step', value: plain, samples: t.plain },
    { bench, peer: 'LangGraph, no checkpointer (its baseline)', figure: 'ms/step', value: lgNone, samples: t.lgNone },
    {
      bench,
      peer: `LangGraph SqliteSaver default (synchronous=${lgDefaultSync === 1 ? 'NORMAL' : lgDefaultSync === 2 ? 'FULL' : (lgDefaultSync ?? '?')})`,
      figure: 'added ms/step',
      value: lgDefaultAdded,
      samples: t.lgDefault,
      note: `total ${per(t.lgDefault).toFixed(3)} ms/step`,
    },
    {
      bench,
      peer: 'LangGraph SqliteSaver synchronous=FULL',
      figure: 'added ms/step',
      value: lgFullAdded,
      samples: t.lgFull,
      note: `total ${per(t.lgFull).toFixed(3)} ms/step`,
    },
    cairnRow('cairn file store', t.file, true),
    fsyncsPerStep,
    cairnRow('cairn SQLite store', t.sqlite, false),
    cairnRow('cairn memory store (engine only, not durable)', t.memory, false),
    ...(await postgresStepsRows(opts, steps, reps, plain, cairnSteps)),
  ];
  return { rows, fsync };
}
