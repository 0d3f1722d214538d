/**
 * `cairn validate <run-id | --all>`: checks every record, ledger and artifact file of runs, the
 * run summary the engine keeps in the run record (its format version and schema), and each item
 * ledger against the done counts the summary recorded (`LEDGER_SHORT`). Each problem is either
 * untrustworthy (the run is invalid: exit 1) or damage the run recovered from (listed; the run stays
 * valid): the rules are in `../run-validation.ts`. A damaged run record comes with the command that
 * repairs the run or removes it.
 */
import type { Command } from 'commander';
import pc from 'picocolors';
import { CairnError } from '../../core/errors.js';
import { assertRunId } from '../../core/ids.js';
import { displayStoreUrl } from '../../stores/open-store.js';
import type { Store } from '../../stores/store.js';
import { EXIT, printJson, usageError, withStore, type StoreFlag } from '../cli-context.js';
import { checkRun, describeProblem, type ProblemView, type RunValidation } from '../run-validation.js';

export type { ProblemView, RunValidation } from '../run-validation.js';

interface ValidateFlags extends StoreFlag {
  readonly all?: boolean;
  readonly json?: boolean;
}

/** The `--json` output. `valid`: no run has an untrustworthy problem. */
export interface ValidateReport {
  readonly valid: boolean;
  readonly runs: RunValidation[];
}

/** Validates one run; `NOT_FOUND` when the store has no such run. */
export async function validateOne(store: Store, runId: string, storeFlag?: string): Promise<RunValidation> {
  const result = await checkRun(store, runId, storeFlag);
  if (!result) throw new CairnError('NOT_FOUND', `Run ${runId} not found in ${store.url}.`, { runId });
  return result;
}

export function registerValidate(program: Command): void {
  program
    .command('validate')
    .summary("check runs' records, ledgers and artifact files (exit 1 if any run is untrustworthy)")
    .description(
      "check runs as stored: every record's checksum and format version, the item ledgers (and their done items against the run summary's counts), " +
        "and each artifact file's size and sha256. Each problem (code, where, position, message) is untrustworthy (what the run reads now is damaged, " +
        'missing or changed) or damaged and recovered (a later intact record or attempt took its place: nothing read now depends on it). ' +
        'Exit 0 when no problem is untrustworthy (recovered ones are listed), 1 otherwise',
    )
    .argument('[run-id]', 'the run to check')
    .option('--all', 'check every run in the store (runs with a damaged run record, and records left without their run record, included)')
    .option('--store <url>', 'store URL (default: $CAIRN_STORE or file:./data/checkpoints)')
    .option(
      '--json',
      'print { valid, runs: [{ id, valid, problems, recovered }] }: problems are the untrustworthy ones, recovered the others, ' +
        'each { code, where, position, message, recovered, recoveredBy? }',
    )
    .action(async (runId: string | undefined, flags: ValidateFlags) => {
      if ((runId === undefined) === (flags.all !== true)) throw usageError('Give one run id, or --all to check every run.');
      if (runId !== undefined) assertRunId(runId);
      const storeFlag = flags.store === undefined ? undefined : displayStoreUrl(flags.store);
      const runs = await withStore(flags, async (store) => {
        if (runId !== undefined) return [await validateOne(store, runId, storeFlag)];
        const out: RunValidation[] = [];
        for (const id of await store.listRunIds()) {
          const result = await checkRun(store, id, storeFlag);
          if (result) out.push(result); // else deleted meanwhile
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
  const count = (n: number, what = 'problem'): string => `${n} ${what}${n === 1 ? '' : 's'}`;
  for (const run of runs) {
    const recovered = run.recovered.length > 0 ? `${count(run.recovered.length)} damaged and recovered` : '';
    if (run.valid) lines.push(`${pc.green('✓')} ${run.id}  valid${recovered ? ` (${recovered})` : ''}`);
    else lines.push(`${pc.red('✗')} ${run.id}  ${count(run.problems.length)} (untrustworthy)${recovered ? `, ${recovered}` : ''}`);
    for (const problem of run.problems) {
      lines.push(`    ${describeProblem(problem)}`);
      if (problem.command) lines.push(`      next: ${pc.cyan(problem.command)}`);
    }
    for (const problem of run.recovered) lines.push(...describeRecovered(problem));
  }
  const invalid = runs.filter((r) => !r.valid).length;
  const recovering = runs.filter((r) => r.valid && r.recovered.length > 0).length;
  const withDamage = recovering > 0 ? ` (${recovering} of them damaged and recovered)` : '';
  if (runs.length === 0) lines.push('no runs in the store');
  else lines.push(`${count(runs.length, 'run')} checked: ${runs.length - invalid} valid${withDamage}, ${invalid} invalid`);
  if (invalid > 0)
    lines.push(
      pc.dim(
        'Untrustworthy: what the run reads now is damaged, missing or changed. Damaged records are never used: a resume falls back ' +
          'to the last valid checkpoint and redoes what is missing. `cairn cleanup --invalid` deletes invalid runs (never the valid ones ' +
          'whose damage was recovered).',
      ),
    );
  else if (recovering > 0)
    lines.push(
      pc.dim(
        "Every problem found was recovered from: a later intact record or attempt took the damaged record's place, and nothing read " +
          'now depends on it. The runs are valid (exit 0); `cairn cleanup --invalid` keeps them.',
      ),
    );
  process.stdout.write(`${lines.join('\n')}\n`);
}

function describeRecovered(problem: ProblemView): string[] {
  return [`    ${pc.dim('recovered')}  ${describeProblem(problem)}`, `      ${pc.dim(`why recovered: ${problem.recoveredBy ?? ''}`)}`];
}
