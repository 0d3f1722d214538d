/**
 * The low-level pattern of hand-written checkpoint loops, with cairn's CheckpointManager: a loop over
 * stages that saves a checkpoint after each one and, when started again after Ctrl-C or a crash,
 * resumes after the last stage that finished. Run it with `npm run build && node
 * dist/examples/checkpoint-loop/index.js`; press Ctrl-C midway; run it again. `--fresh` starts over,
 * `--list` shows the saved checkpoints, `--keep <age>` (default 7d) is how long checkpoints other
 * than the newest are kept once the loop is done. (`npm start` runs the full pipeline demo, examples/text-report.)
 */
import { appendFileSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { CheckpointManager, isCairnError } from 'cairnjs';

/** Everything the loop has produced so far; this is what each checkpoint holds. */
interface DemoState {
  text?: string;
  sentences?: string[];
  counts?: Record<string, number>;
  summary?: { words: number; distinct: number; top: [string, number][]; longest: string };
  reportPath?: string;
}

interface Stage {
  name: string;
  what: string;
  run: (state: DemoState) => Promise<DemoState>;
}

const WORKFLOW_ID = 'demo-gettysburg';
const STORE = process.env.CAIRN_STORE || 'file:./data/checkpoints';
/** Each stage also waits this long, standing in for slow work, so there is time to press Ctrl-C. */
const SLOW_MS = Number(process.env.CAIRN_DEMO_SLOW_MS ?? 700);
/** How to run this example again, for the messages. */
const AGAIN = 'node dist/examples/checkpoint-loop/index.js';
/**
 * Checkpoints older than this, except the newest, are deleted once the loop is done: by default a
 * 7-day time to live, as checkpoint stores commonly default to.
 */
const KEEP = argValue('--keep') ?? '7d';

function argValue(flag: string): string | undefined {
  const i = process.argv.indexOf(flag);
  return i < 0 ? undefined : process.argv[i + 1];
}

/** With `CAIRN_DEMO_LOG` set, records each stage's start and acknowledged checkpoint (the crash tests read it). */
function logEvent(event: 'start' | 'ack', stage: string): void {
  if (process.env.CAIRN_DEMO_LOG) appendFileSync(process.env.CAIRN_DEMO_LOG, `${process.pid} ${event} ${stage}\n`);
}

const here = path.dirname(fileURLToPath(import.meta.url));
const sourceDir = here.replace(`${path.sep}dist${path.sep}examples${path.sep}`, `${path.sep}examples${path.sep}`);

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

const stages: Stage[] = [
  {
    name: 'load',
    what: 'read the Gettysburg Address',
    run: async () => ({ text: await readFile(path.join(sourceDir, 'gettysburg.txt'), 'utf8') }),
  },
  {
    name: 'split',
    what: 'split it into sentences',
    run: (s) =>
      Promise.resolve({
        ...s,
        sentences: (s.text ?? '')
          .replace(/\s+/g, ' ')
          .split(/(?<=[.!?])\s+/)
          .filter(Boolean),
      }),
  },
  {
    name: 'count',
    what: 'count the words',
    run: (s) => {
      const counts: Record<string, number> = {};
      for (const word of (s.text ?? '').toLowerCase().match(/[a-z]+/g) ?? []) counts[word] = (counts[word] ?? 0) + 1;
      return Promise.resolve({ ...s, counts });
    },
  },
  {
    name: 'summarize',
    what: 'find the most used words',
    run: (s) => {
      const entries = Object.entries(s.counts ?? {});
      const top = entries
        .filter(([w]) => w.length > 3)
        .sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))
        .slice(0, 5);
      const longest = (s.sentences ?? []).reduce((a, b) => (b.length > a.length ? b : a), '');
      const words = entries.reduce((n, [, c]) => n + c, 0);
      return Promise.resolve({ ...s, summary: { words, distinct: entries.length, top, longest } });
    },
  },
  {
    name: 'report',
    what: 'write the report',
    run: async (s) => {
      const sum = s.summary;
      if (!sum) throw new Error('summary missing');
      const reportPath = path.resolve('data', 'demo-report.txt');
      await mkdir(path.dirname(reportPath), { recursive: true });
      const lines = [
        `Gettysburg Address: ${sum.words} words, ${sum.distinct} distinct, ${(s.sentences ?? []).length} sentences.`,
        `Most used (longer than 3 letters): ${sum.top.map(([w, n]) => `${w} ×${n}`).join(', ')}.`,
        `Longest sentence (${sum.longest.length} characters): "${sum.longest}"`,
      ];
      await writeFile(reportPath, `${lines.join('\n')}\n`);
      return { ...s, reportPath };
    },
  },
];

async function main(): Promise<void> {
  const fresh = process.argv.includes('--fresh');
  const cm = new CheckpointManager({ store: STORE });
  console.log(`cairn demo: ${stages.length} stages, a checkpoint after each (store ${STORE}, workflow ${WORKFLOW_ID}).`);
  if (fresh && (await cm.delete(WORKFLOW_ID))) console.log('--fresh: deleted the previous checkpoints.');
  if (process.argv.includes('--list')) {
    await listCheckpoints(cm);
    await cm.close();
    return;
  }

  const last = await cm.getMostRecent<DemoState>(WORKFLOW_ID);
  const doneCount = typeof last?.meta.stageIndex === 'number' ? last.meta.stageIndex + 1 : 0;
  let state: DemoState = last?.state ?? {};

  if (doneCount >= stages.length) {
    console.log(`Already complete (checkpoint ${last?.id}, saved ${last?.createdAt}). Cached result, no stage rerun:\n`);
    console.log((await readFile(state.reportPath ?? '', 'utf8').catch(() => '(report file missing)\n')).trimEnd());
    console.log(`\nRun \`${AGAIN} --fresh\` to start over.`);
    await cleanup(cm);
    await cm.close();
    return;
  }
  if (last) console.log(`Resuming from checkpoint ${last.id}: stage "${String(last.meta.stage)}" and those before it are done.\n`);
  else console.log(`Starting from the beginning. Press Ctrl-C at any time, then run \`${AGAIN}\` again to resume.\n`);

  let current = '';
  process.once('SIGINT', () => {
    const saved = doneCount > 0 || current !== stages[0]?.name ? 'every finished stage is saved' : 'nothing was finished yet';
    console.log(`\nInterrupted during "${current}": ${saved}. Run \`${AGAIN}\` to resume.`);
    process.exit(130);
  });

  for (const [index, stage] of stages.entries()) {
    if (index < doneCount) {
      console.log(`  ✓ ${stage.name.padEnd(10)} skipped: done before`);
      continue;
    }
    current = stage.name;
    logEvent('start', stage.name);
    if (process.stdout.isTTY) process.stdout.write(`  … ${stage.name.padEnd(10)} ${stage.what}`); // replaced in place below
    const started = Date.now();
    await sleep(SLOW_MS);
    state = await stage.run(state);
    const ref = await cm.create(WORKFLOW_ID, state, { stage: stage.name, stageIndex: index });
    logEvent('ack', stage.name);
    console.log(
      `${process.stdout.isTTY ? '\r' : ''}  ✓ ${stage.name.padEnd(10)} ${stage.what} (${Date.now() - started} ms) → checkpoint ${ref.id}`,
    );
  }
  await cm.finish(WORKFLOW_ID);
  console.log(`\nDone. Report written to ${path.relative(process.cwd(), state.reportPath ?? '')}:\n`);
  console.log((await readFile(state.reportPath ?? '', 'utf8')).trimEnd());
  console.log(`\nRun \`${AGAIN}\` again: it returns the cached result at once. Inspect the files under data/checkpoints/${WORKFLOW_ID}/.`);
  await cleanup(cm);
  await cm.close();
}

/** `--list`: every saved checkpoint (cm.list), each read back in full (cm.load) to show what it holds. */
async function listCheckpoints(cm: CheckpointManager): Promise<void> {
  const refs = await cm.list(WORKFLOW_ID);
  if (refs.length === 0) console.log(`No checkpoints for ${WORKFLOW_ID} yet.`);
  for (const ref of refs) {
    const cp = await cm.load<DemoState>(ref.id);
    const keys = Object.keys(cp.state).join(', ');
    console.log(`  ${cp.id.padEnd(20)} ${String(cp.meta.stage).padEnd(10)} ${cp.createdAt}  state: ${keys}`);
  }
}

/** Once the loop is done: delete this workflow's checkpoints older than --keep, keeping the newest (the cached result). */
async function cleanup(cm: CheckpointManager): Promise<void> {
  const result = await cm.cleanup({ workflowId: WORKFLOW_ID, olderThan: KEEP, keepLatest: true });
  if (result.deletedCheckpoints > 0) {
    console.log(`Cleanup: deleted ${result.deletedCheckpoints} checkpoint(s) older than ${KEEP}; kept the newest.`);
  }
}

main().catch((error: unknown) => {
  console.error(isCairnError(error) ? `${error.code}: ${error.message}` : error);
  process.exit(1);
});
