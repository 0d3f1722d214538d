/**
 * What the kill -9 tests of the examples share: a parent temp folder kept when a test fails, the
 * store's view of a job's run, and the check that no stage the store held as completed started again.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach } from 'vitest';
import { Cairn } from '../../src/index.js';
import { killAll } from '../e2e/child.js';

/** Call at the top of a test file: a temp folder for its jobs, removed after it unless a test failed; children are killed after each test. */
export function useParentDir(label: string): string {
  const parent = fs.mkdtempSync(path.join(os.tmpdir(), `cairn-${label}-`));
  let failed = false;
  afterEach((context) => {
    killAll();
    if (context.task.result?.state === 'fail') failed = true;
  });
  afterAll(() => {
    if (failed) console.error(`${label} example test failed: kept ${parent}`);
    else fs.rmSync(parent, { recursive: true, force: true });
  });
  return parent;
}

/** The run of the job's store and the stages the store says are completed. */
export async function durableState(store: string): Promise<{ id?: string; completed: Set<string> }> {
  const cairn = new Cairn({ store });
  try {
    const [run] = await cairn.list();
    if (!run) return { completed: new Set() };
    return { id: run.id, completed: new Set(run.stages.filter((s) => s.status === 'completed').map((s) => s.name)) };
  } finally {
    await cairn.close();
  }
}

/**
 * A `watch` for `killByProgress`: before each process it reads which stages the store holds as
 * completed; after it, any of them the process started again (from the job's own log of stage
 * starts) is added to `reruns`.
 */
export function watchCompletedStages(store: string, stageStarts: () => string[]): { watch: () => Promise<() => void>; reruns: string[] } {
  const reruns: string[] = [];
  let processes = 0;
  const watch = async (): Promise<() => void> => {
    const { completed } = await durableState(store);
    const startsBefore = stageStarts().length;
    const process = ++processes;
    return () => {
      for (const stage of stageStarts().slice(startsBefore)) if (completed.has(stage)) reruns.push(`${stage} (process ${process})`);
    };
  };
  return { watch, reruns };
}
