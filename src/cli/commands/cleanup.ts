/**
 * `cairn cleanup`: deletes old, completed or invalid runs (untrustworthy ones: damage a run recovered
 * from keeps it, see `../run-validation.ts`); never one a live process holds. Which
 * runs are old is the store's call, by its own clock (`listRuns({ olderThanMs })`: the database
 * server's for Postgres), so that a machine with a skewed clock deletes nothing too young.
 */
import type { Command } from 'commander';
import pc from 'picocolors';
import { isCairnError } from '../../core/errors.js';
import { parseDuration } from '../../core/duration.js';
import { displayStoreUrl } from '../../stores/open-store.js';
import type { RunRecord, Store } from '../../stores/store.js';
import { recoverStaleImports, type StaleImports } from '../../transfer/import-staging.js';
import { printJson, storeExists, usageError, withStore, type StoreFlag } from '../cli-context.js';
import { deleteRunUnlessHeld, describeHolder, holderOf, type Holder } from '../run-removal.js';
import { checkRun, describeProblem, nameProblems, type ProblemView } from '../run-validation.js';

/** How long a run is kept after its last update, by default. */
const DEFAULT_OLDER_THAN = '7d';

/**
 * The statuses cleanup deletes without `--status`: finished or abandoned runs (a `running` one no
 * live process holds crashed; one a live process holds is skipped whatever its status). A run
 * waiting for a person (`waiting`) or queued for workers (`pending`) is never deleted by age
 * alone: an approval may come after a week.
 */
const DEFAULT_STATUSES: ReadonlySet<string> = new Set(['completed', 'failed', 'cancelled', 'interrupted', 'running']);
const ALL_STATUSES = ['pending', 'running', 'waiting', 'completed', 'failed', 'interrupted', 'cancelled'];

interface CleanupFlags extends StoreFlag {
  readonly olderThan?: string;
  readonly status?: string;
  readonly completed?: boolean;
  readonly invalid?: boolean;
  readonly dryRun?: boolean;
  readonly json?: boolean;
}

interface RunLine {
  readonly id: string;
  /** null when the run record is damaged. */
  readonly status: string | null;
  readonly updatedAt: string | null;
  readonly reason: string;
  /** With --invalid: the untrustworthy problems that make the run invalid (what `cairn validate` lists). */
  readonly problems?: ProblemView[];
  /** With --invalid: damage the run recovered from (it does not make the run invalid). */
  readonly recovered?: ProblemView[];
}

/** The `--json` output. With `dryRun`, `deleted` lists what would be deleted. */
export interface CleanupReport {
  readonly dryRun: boolean;
  readonly olderThan: string | null;
  readonly cutoff: string | null;
  readonly completedOnly: boolean;
  readonly invalidOnly: boolean;
  /** The statuses considered (`--status`, else the default ones; null with --invalid alone: any). */
  readonly statuses: string[] | null;
  readonly deleted: RunLine[];
  readonly kept: RunLine[];
  readonly skipped: (RunLine & { readonly holder: Holder })[];
}

interface Criteria {
  /** `--older-than` in milliseconds. */
  readonly olderThanMs: number | undefined;
  readonly olderThan: string | undefined;
  readonly completed: boolean;
  readonly invalid: boolean;
  /** Statuses a run must have to be deleted; undefined: any. */
  readonly statuses: ReadonlySet<string> | undefined;
  /** `--store` as given (shown in the commands a problem suggests). */
  readonly storeFlag: string | undefined;
}

/** A rough age: `45s`, `12m`, `5h`, `9d`. */
function formatAge(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.round(s / 60)}m`;
  if (s < 172_800) return `${Math.round(s / 3600)}h`;
  return `${Math.round(s / 86_400)}d`;
}

/**
 * Why `run` is kept by the age and status filters, or undefined when it is a candidate. `old` holds
 * the ids the store found old enough (with --older-than); `now` only words the reasons.
 */
function keptBecause(
  run: RunRecord | undefined,
  criteria: Criteria,
  old: ReadonlySet<string> | undefined,
  now: number,
): string | undefined {
  if (criteria.completed && run?.status !== 'completed') {
    return run ? `status ${run.status}, not completed` : 'status unknown (damaged or missing run record)';
  }
  if (criteria.statuses && run && !criteria.statuses.has(run.status)) {
    const why = run.status === 'waiting' ? 'waiting for input (a person may still answer)' : `status ${run.status}`;
    return `${why}; \`--status ${run.status}\` deletes such runs`;
  }
  if (old === undefined) return undefined;
  if (!run) return 'age unknown (damaged or missing run record); `cairn cleanup --invalid` without --older-than removes it';
  if (!old.has(run.id)) return `updated ${formatAge(now - Date.parse(run.updatedAt))} ago, newer than ${criteria.olderThan}`;
  return undefined;
}

async function cleanup(
  store: Store,
  criteria: Criteria,
  dryRun: boolean,
): Promise<Omit<CleanupReport, 'olderThan' | 'cutoff' | 'completedOnly' | 'invalidOnly' | 'statuses' | 'dryRun'>> {
  const now = Date.now();
  const records = new Map((await store.listRuns()).map((r) => [r.id, r]));
  const old =
    criteria.olderThanMs === undefined
      ? undefined
      : new Set((await store.listRuns({ olderThanMs: criteria.olderThanMs })).map((r) => r.id));
  const report = { deleted: [] as RunLine[], kept: [] as RunLine[], skipped: [] as (RunLine & { holder: Holder })[] };
  for (const id of await store.listRunIds()) {
    const run = records.get(id);
    const base = { id, status: run?.status ?? null, updatedAt: run?.updatedAt ?? null };
    const kept = keptBecause(run, criteria, old, now);
    if (kept !== undefined) {
      report.kept.push({ ...base, reason: kept });
      continue;
    }
    const reasons: string[] = [];
    if (run) reasons.push(`${run.status}, updated ${formatAge(now - Date.parse(run.updatedAt))} ago`);
    let found: Pick<RunLine, 'problems' | 'recovered'> = {};
    if (criteria.invalid) {
      // only untrustworthy problems make a run invalid: damage it recovered from keeps it (see run-validation.ts)
      const checked = await checkRun(store, id, criteria.storeFlag);
      if (!checked) continue; // deleted meanwhile
      const { problems, recovered } = checked;
      const also = recovered.length > 0 ? { recovered } : {};
      if (checked.valid) {
        const why =
          recovered.length > 0
            ? ` (${recovered.length} problem${recovered.length === 1 ? '' : 's'} damaged and recovered: ${nameProblems(recovered)})`
            : '';
        report.kept.push({ ...base, reason: `valid${why}`, ...also });
        continue;
      }
      reasons.push(`invalid: ${problems.length} problem${problems.length === 1 ? '' : 's'} (${nameProblems(problems)})`);
      found = { problems, ...also };
    }
    const reason = reasons.join('; ');
    const lease = await store.getLock(id).catch(() => undefined); // live by the store's clock, or undefined
    if (lease) {
      const holder = { owner: lease.owner, pid: lease.pid, host: lease.host, expiresAt: lease.expiresAt };
      report.skipped.push({ ...base, reason: describeHolder(holder), ...found, holder });
      continue;
    }
    if (!dryRun) {
      try {
        if (!(await deleteRunUnlessHeld(store, id))) continue; // deleted by someone else meanwhile
      } catch (error) {
        if (!isCairnError(error, 'RUN_LOCKED')) throw error;
        const holder = holderOf(error);
        report.skipped.push({ ...base, reason: describeHolder(holder), ...found, holder });
        continue;
      }
    }
    report.deleted.push({ ...base, reason, ...found });
  }
  return report;
}

export function registerCleanup(program: Command): void {
  program
    .command('cleanup')
    .summary('delete old, completed or invalid runs (never one in use)')
    .description(
      'delete runs last updated longer ago than --older-than (default 7d) that are completed, failed, cancelled or interrupted ' +
        '(never a waiting or queued one unless --status names it), only completed ones with --completed, ' +
        'only invalid ones with --invalid (then of any age unless --older-than is given). A run held by a live process is never deleted: it is reported as skipped. ' +
        'Also finishes or removes what killed imports left (their staging folders, once their process is gone)',
    )
    .option('--older-than <duration>', 'age since the last update, e.g. 24h, 7d, 2w (default: 7d; none with --invalid)')
    .option('--completed', 'only completed runs')
    .option('--status <statuses>', `only runs with these statuses, comma-separated (${ALL_STATUSES.join(', ')})`)
    .option(
      '--invalid',
      'only runs `cairn validate` finds untrustworthy (damaged records in force, changed or missing artifacts, lost item results); ' +
        'runs whose damage was recovered are kept',
    )
    .option('--dry-run', 'list what would be deleted; delete nothing')
    .option('--store <url>', 'store URL (default: $CAIRN_STORE or file:./data/checkpoints)')
    .option(
      '--json',
      'print { dryRun, olderThan, cutoff, completedOnly, invalidOnly, deleted, kept, skipped } as JSON ' +
        '(with --invalid, each run has the problems that make it invalid, and those it recovered from)',
    )
    .action(async (flags: CleanupFlags) => {
      const olderThan = flags.olderThan ?? (flags.invalid ? undefined : DEFAULT_OLDER_THAN);
      const ms = olderThan === undefined ? undefined : parseDuration(olderThan); // INVALID_INPUT before the store is opened
      const statuses = flags.status === undefined ? undefined : parseStatuses(flags.status);
      const criteria: Criteria = {
        olderThanMs: ms,
        olderThan,
        completed: flags.completed === true,
        invalid: flags.invalid === true,
        statuses: statuses ?? (flags.invalid ? undefined : DEFAULT_STATUSES),
        storeFlag: flags.store === undefined ? undefined : displayStoreUrl(flags.store),
      };
      const dryRun = flags.dryRun === true;
      let stale: StaleImports | undefined;
      // no store there (an import killed before it made one): nothing to clean, and none is created
      const absent = { deleted: [], kept: [], skipped: [] };
      const result = storeExists(flags)
        ? await withStore(flags, async (store) => {
            // what killed imports left (a dry run leaves it too)
            if (!dryRun) stale = await recoverStaleImports(store);
            return cleanup(store, criteria, dryRun);
          })
        : absent;
      const report: CleanupReport = {
        dryRun,
        olderThan: olderThan ?? null,
        // for people reading the report: by this machine's clock, while the store decided by its own
        cutoff: ms === undefined ? null : new Date(Date.now() - ms).toISOString(),
        completedOnly: criteria.completed,
        invalidOnly: criteria.invalid,
        statuses: criteria.statuses ? [...criteria.statuses] : null,
        ...result,
      };
      if (flags.json) printJson(report);
      else printReport(report);
      if (stale && stale.removed > 0 && !flags.json) {
        const finished = stale.finished.length > 0 ? ` (finished the import of ${stale.finished.join(', ')})` : '';
        process.stdout.write(
          `removed ${stale.removed} staging folder${stale.removed === 1 ? '' : 's'} of interrupted imports${finished}\n`,
        );
      }
      for (const warning of stale?.warnings ?? []) process.stderr.write(`warning: ${warning}\n`);
    });
}

/** `--status a,b`: INVALID_INPUT for a status that does not exist. */
function parseStatuses(value: string): ReadonlySet<string> {
  const statuses = value
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  const unknown = statuses.filter((s) => !ALL_STATUSES.includes(s));
  if (statuses.length === 0 || unknown.length > 0) {
    throw usageError(`--status takes statuses among ${ALL_STATUSES.join(', ')}, comma-separated; not ${JSON.stringify(value)}.`);
  }
  return new Set(statuses);
}

function printReport(report: CleanupReport): void {
  const lines: string[] = [];
  const deleted = report.dryRun ? 'would delete' : 'deleted';
  const width = report.dryRun ? 12 : 7;
  // each run deleted (or in use) for being invalid, with the problems that make it so
  const problemLines = (run: RunLine): string[] => (run.problems ?? []).map((p) => `${' '.repeat(width + 4)}${pc.dim(describeProblem(p))}`);
  for (const run of report.deleted) lines.push(`${pc.red(deleted.padEnd(width))}  ${run.id}  ${pc.dim(run.reason)}`, ...problemLines(run));
  for (const run of report.skipped)
    lines.push(`${pc.yellow('skipped'.padEnd(width))}  ${run.id}  ${pc.dim(run.reason)}`, ...problemLines(run));
  for (const run of report.kept) lines.push(`${'kept'.padEnd(width)}  ${run.id}  ${pc.dim(run.reason)}`);
  const filters = [
    report.olderThan === null ? undefined : `older than ${report.olderThan}`,
    report.completedOnly ? 'completed' : undefined,
    report.statuses && !report.completedOnly ? `status ${report.statuses.join('/')}` : undefined,
    report.invalidOnly ? 'invalid' : undefined,
  ].filter(Boolean);
  lines.push(
    `${report.deleted.length} ${deleted}, ${report.skipped.length} skipped (in use), ${report.kept.length} kept` +
      ` — runs ${filters.join(', ')}${report.dryRun ? ' (dry run: nothing was deleted)' : ''}`,
  );
  process.stdout.write(`${lines.join('\n')}\n`);
}
