/** `cairn validate <run-id | --all>`: checks every record, ledger and artifact file of runs. */
import type { Command } from 'commander';
import pc from 'picocolors';
import { CairnError } from '../../core/errors.js';
import { assertRunId } from '../../core/ids.js';
import type { Store, StoreProblem } from '../../stores/store.js';
import { EXIT, printJson, usageError, withStore, type StoreFlag } from '../cli-context.js';

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
export async function validateOne(store: Store, runId: string): Promise<RunValidation> {
  const problems = await store.validateRun(runId);
  if (problems.some((p) => p.code === 'NOT_FOUND' && p.where === 'run')) {
    throw new CairnError('NOT_FOUND', `Run ${runId} not found in ${store.url}.`, { runId });
  }
  return { id: runId, valid: problems.length === 0, problems: problems.map(toProblemView) };
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
      const runs = await withStore(flags, async (store) => {
        if (runId !== undefined) return [await validateOne(store, runId)];
        const out: RunValidation[] = [];
        for (const id of await store.listRunIds()) {
          const problems = await store.validateRun(id);
          if (problems.some((p) => p.code === 'NOT_FOUND' && p.where === 'run')) continue; // deleted meanwhile
          out.push({ id, valid: problems.length === 0, problems: problems.map(toProblemView) });
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
    for (const problem of run.problems) lines.push(`    ${describeProblem(problem)}`);
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
