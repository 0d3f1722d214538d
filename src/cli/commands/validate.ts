/**
 * `cairn validate <run-id | --all>`: checks every record, ledger and artifact file of runs, and the
 * run summary the engine keeps in the run record (its format version and schema). A damaged run
 * record comes with the command that repairs the run or removes it.
 */
import type { Command } from 'commander';
import pc from 'picocolors';
import { CairnError } from '../../core/errors.js';
import { assertRunId } from '../../core/ids.js';
import { inspectRunData } from '../../engine/run-data.js';
import { displayStoreUrl } from '../../stores/open-store.js';
import type { Store, StoreProblem } from '../../stores/store.js';
import { EXIT, printJson, usageError, withStore, type StoreFlag } from '../cli-context.js';
import { unreadableProblem } from '../run-details.js';
import { shellQuote } from '../table.js';

interface ValidateFlags extends StoreFlag {
  readonly all?: boolean;
  readonly json?: boolean;
}

/** One problem as `--json` prints it; `position` is a seq or line number, null when unknown. */
export interface ProblemView {
  readonly code: StoreProblem['code'];
  readonly where: string;
  readonly position: number | null;
  readonly message: string;
  /** For a damaged run record or summary: the command that repairs the run, or removes it. */
  readonly command?: string;
}

export interface RunValidation {
  readonly id: string;
  readonly valid: boolean;
  readonly problems: ProblemView[];
}

/** The `--json` output. */
export interface ValidateReport {
  readonly valid: boolean;
  readonly runs: RunValidation[];
}

export function toProblemView(problem: StoreProblem): ProblemView {
  return { code: problem.code, where: problem.where, position: problem.position ?? null, message: problem.message };
}

/** Validates one run; `NOT_FOUND` when the store has no such run. */
export async function validateOne(store: Store, runId: string, storeFlag?: string): Promise<RunValidation> {
  const problems = await store.validateRun(runId);
  if (problems.some((p) => p.code === 'NOT_FOUND' && p.where === 'run')) {
    throw new CairnError('NOT_FOUND', `Run ${runId} not found in ${store.url}.`, { runId });
  }
  const views = await withRunChecks(store, runId, problems.map(toProblemView), storeFlag);
  return { id: runId, valid: views.length === 0, problems: views };
}

/**
 * Adds what the store cannot check, the run's summary (format version, owner, schema), and the
 * command that repairs (or removes) a run whose record or summary is damaged.
 */
async function withRunChecks(store: Store, runId: string, problems: ProblemView[], storeFlag?: string): Promise<ProblemView[]> {
  if (problems.some((p) => p.code === 'LEFTOVER_RECORDS')) return problems;
  const flag = storeFlag === undefined ? '' : ` --store ${shellQuote(storeFlag)}`;
  const rebuild = `cairn run <module> --input <json> --run-id ${runId}${flag}`;
  let command: string | undefined;
  try {
    const record = await store.getRun(runId);
    if (!record) return problems;
    const read = inspectRunData(record);
    if (read.owner === 'unknown') {
      command = read.error.code === 'FORMAT_TOO_NEW' ? undefined : rebuild;
      // a summary lost with its record is reported by the store already
      if (!record.rebuilt) problems.push({ code: read.problem.code, where: 'run', position: null, message: read.problem.message });
    } else if (record.rebuilt) {
      command = `cairn resume ${runId}${flag}`;
    }
  } catch (error) {
    if (!unreadableProblem(error)) throw error;
    command = `cairn delete ${runId}${flag}`;
  }
  if (command === undefined) return problems;
  return problems.map((p) => (p.where === 'run' && p.code !== 'FORMAT_TOO_NEW' ? { ...p, command } : p));
}

export function describeProblem(problem: ProblemView): string {
  const at = problem.position === null ? problem.where : `${problem.where} #${problem.position}`;
  return `${problem.code} at ${at}: ${problem.message}`;
}

export function registerValidate(program: Command): void {
  program
    .command('validate')
    .summary("check runs' records, ledgers and artifact files (exit 1 if any problem)")
    .description(
      "check runs as stored: every record's checksum and format version, the item ledgers, and each artifact file's size and sha256. " +
        'Exit 0 when all are valid, 1 when any problem is found (each one named: code, where, position, message)',
    )
    .argument('[run-id]', 'the run to check')
    .option('--all', 'check every run in the store (runs with a damaged run record, and records left without their run record, included)')
    .option('--store <url>', 'store URL (default: $CAIRN_STORE or file:./data/checkpoints)')
    .option('--json', 'print { valid, runs: [{ id, valid, problems: [{ code, where, position, message }] }] }')
    .action(async (runId: string | undefined, flags: ValidateFlags) => {
      if ((runId === undefined) === (flags.all !== true)) throw usageError('Give one run id, or --all to check every run.');
      if (runId !== undefined) assertRunId(runId);
      const storeFlag = flags.store === undefined ? undefined : displayStoreUrl(flags.store);
      const runs = await withStore(flags, async (store) => {
        if (runId !== undefined) return [await validateOne(store, runId, storeFlag)];
        const out: RunValidation[] = [];
        for (const id of await store.listRunIds()) {
          const problems = await store.validateRun(id);
          if (problems.some((p) => p.code === 'NOT_FOUND' && p.where === 'run')) continue; // deleted meanwhile
          const views = await withRunChecks(store, id, problems.map(toProblemView), storeFlag);
          out.push({ id, valid: views.length === 0, problems: views });
        }
        return out;
      });
      const valid = runs.every((r) => r.valid);
      if (flags.json) printJson({ valid, runs } satisfies ValidateReport);
      else printReport(runs);
      process.exitCode = valid ? EXIT.ok : EXIT.failed;
    });
}

function printReport(runs: readonly RunValidation[]): void {
  const lines: string[] = [];
  for (const run of runs) {
    if (run.valid) {
      lines.push(`${pc.green('✓')} ${run.id}  valid`);
      continue;
    }
    lines.push(`${pc.red('✗')} ${run.id}  ${run.problems.length} problem${run.problems.length === 1 ? '' : 's'}`);
    for (const problem of run.problems) {
      lines.push(`    ${describeProblem(problem)}`);
      if (problem.command) lines.push(`      next: ${pc.cyan(problem.command)}`);
    }
  }
  const invalid = runs.filter((r) => !r.valid).length;
  if (runs.length === 0) lines.push('no runs in the store');
  else lines.push(`${runs.length} run${runs.length === 1 ? '' : 's'} checked: ${runs.length - invalid} valid, ${invalid} invalid`);
  if (invalid > 0)
    lines.push(
      pc.dim(
        'Damaged records are never used: a resume falls back to the last valid checkpoint and redoes what is missing. `cairn cleanup --invalid` deletes invalid runs.',
      ),
    );
  process.stdout.write(`${lines.join('\n')}\n`);
}
