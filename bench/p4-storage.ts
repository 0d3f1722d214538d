/**
 * P4 storage: 1,000 steps, each appending a 1 KiB item to a list in the state (append reducer),
 * every step kept for fork. Bytes on disk against the final state's size, bytes a resume reads,
 * and LangGraph's SQLite checkpointer for the same graph.
 */
import fs from 'node:fs';
import path from 'node:path';
import { Annotation, END as LG_END, START, StateGraph } from '@langchain/langgraph';
import { SqliteSaver } from '@langchain/langgraph-checkpoint-sqlite';
import { Cairn, END, append, workflow } from '../src/index.js';
import { type BenchOptions, type Row, bytesReadSoFar, dirBytes, formatBytes, makeTempDir, removeDir } from './lib/util.js';

const STEPS = 1_000;
const KIB = 1024;

/** A 1 KiB string, different per step (so nothing dedupes it). */
function payload(step: number): string {
  const head = `item ${step} `;
  return head + 'x'.repeat(KIB - head.length);
}

/** `steps` appends, then a node that waits for `go` (so that the run can be resumed and measured). */
function definition(steps: number, onHold: () => void = () => undefined) {
  return workflow('bench-storage', { initial: { n: 0, items: [] as string[] }, reducers: { items: append }, maxSteps: steps + 10 })
    .node('step', async (s) => ({ n: s.n + 1, items: [payload(s.n)] }))
    .node('hold', async (_s, ctx) => {
      onHold();
      return { released: await ctx.waitFor<boolean>('go') };
    })
    .edge('step', (s) => (s.n >= steps ? 'hold' : 'step'))
    .edge('hold', () => END)
    .entry('step');
}

async function langGraphBytes(dir: string, steps: number): Promise<number> {
  const State = Annotation.Root({
    n: Annotation<number>({ reducer: (_a: number, b: number) => b, default: () => 0 }),
    items: Annotation<string[]>({ reducer: (a: string[], b: string[]) => a.concat(b), default: () => [] }),
  });
  const graph = new StateGraph(State)
    .addNode('step', (s: typeof State.State) => ({ n: s.n + 1, items: [payload(s.n)] }))
    .addEdge(START, 'step')
    .addConditionalEdges('step', (s) => (s.n >= steps ? LG_END : 'step'));
  const file = path.join(dir, 'langgraph.db');
  const saver = SqliteSaver.fromConnString(file);
  try {
    await graph.compile({ checkpointer: saver }).invoke({}, { recursionLimit: steps + 10, configurable: { thread_id: 'storage' } });
  } finally {
    saver.db.close(); // checkpoints the WAL into the database file
  }
  return fs
    .readdirSync(dir)
    .filter((f) => f.startsWith('langgraph.db'))
    .reduce((sum, f) => sum + fs.statSync(path.join(dir, f)).size, 0);
}

export async function runP4(opts: BenchOptions): Promise<Row[]> {
  const dir = makeTempDir('p4', opts.tmpRoot);
  const storeDir = path.join(dir, 'store');
  const def = definition(STEPS);
  try {
    const first = new Cairn({ store: `file:${storeDir}`, handleSignals: false });
    let runId: string;
    try {
      const run = await first.run(def, { bench: 'storage' });
      if (run.status !== 'waiting') throw new Error(`P4 run ended ${run.status}: ${run.error?.message ?? ''}`);
      runId = run.id;
    } finally {
      await first.close();
    }
    const onDisk = dirBytes(path.join(storeDir, runId));
    const finalState = { n: STEPS, items: Array.from({ length: STEPS }, (_, i) => payload(i)) };
    const stateBytes = Buffer.byteLength(JSON.stringify(finalState));

    // Resume from a fresh Cairn: bytes read from opening it to the start of the waiting node.
    let readAtNode: number | undefined;
    const resumeDef = definition(STEPS, () => {
      readAtNode ??= bytesReadSoFar();
    });
    const readBefore = bytesReadSoFar();
    const second = new Cairn({ store: `file:${storeDir}`, handleSignals: false });
    let resumedItems = -1;
    try {
      const done = await second.resume(runId, { inputs: { go: true }, definition: resumeDef });
      if (done.status !== 'completed') throw new Error(`P4 resume ended ${done.status}: ${done.error?.message ?? ''}`);
      resumedItems = (done.result as { items: string[] }).items.length;
      // every step is still there to fork from
      const fork = await second.fork(runId, { fromSeq: Math.floor(STEPS / 2) });
      if (!fork.id) throw new Error('P4 fork returned no run');
    } finally {
      await second.close();
    }
    if (resumedItems !== STEPS) throw new Error(`P4 resumed state holds ${resumedItems} items, expected ${STEPS}`);
    const resumeRead = readBefore !== undefined && readAtNode !== undefined ? readAtNode - readBefore : Number.NaN;

    const lgDir = path.join(dir, 'lg');
    fs.mkdirSync(lgDir);
    const lgBytes = await langGraphBytes(lgDir, STEPS);

    const storageGoal = 2 * stateBytes + 64 * KIB;
    const bench = 'P4 storage (1,000 × 1 KiB appends)';
    return [
      { bench, peer: 'final state, serialized (JSON)', figure: 'bytes', value: stateBytes, note: formatBytes(stateBytes) },
      {
        bench,
        peer: 'cairn file store, on disk',
        figure: 'bytes',
        value: onDisk,
        ratioOf: 'on disk ÷ final state',
        ratio: onDisk / stateBytes,
        goal: '≤ 2 × state + 64 KiB',
        met: onDisk <= storageGoal,
        note: `${formatBytes(onDisk)}; limit ${formatBytes(storageGoal)}; fork from step ${STEPS / 2} ok`,
      },
      {
        bench,
        peer: 'cairn file store, read on resume',
        figure: 'bytes',
        value: resumeRead,
        ratioOf: 'read ÷ final state',
        ratio: resumeRead / stateBytes,
        goal: '≤ 2 × state + 64 KiB',
        met: resumeRead <= storageGoal,
        note: `${formatBytes(resumeRead)} (rchar of /proc/self/io from new Cairn to the next node's start)`,
      },
      {
        bench,
        peer: 'LangGraph SqliteSaver (default), on disk',
        figure: 'bytes',
        value: lgBytes,
        ratioOf: 'on disk ÷ final state',
        ratio: lgBytes / stateBytes,
        note: formatBytes(lgBytes),
      },
    ];
  } finally {
    removeDir(dir);
  }
}
