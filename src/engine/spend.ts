/**
 * Spend and budgets. Items report what a call cost (`item.spend({ usd, tokens })`), stages what
 * they paid outside items (`ctx.spend`); a run's budget (`{ usd: 5 }`) is checked before each item
 * starts, and a run that reached it waits (`waitingFor: 'budget'`) until it is raised.
 *
 * Where spend is kept, so that it is counted once whatever crashes:
 * - an item's spend is written with its ledger entry (its result or its failure); a ledger read at
 *   the start of an items call gives that ledger's spend, which replaces what the run summary said
 *   for it (`open`, by ledger): a crash between a flush and a save of the summary counts nothing twice;
 * - a workflow step's ledgers are never read again once the step completed: their spend moves into
 *   the node's settled total (`settled`), so that a long loop does not grow the summary by a ledger a step;
 * - `ctx.spend` adds to the stage's settled total, saved with the summary.
 */
import { CairnError } from '../core/errors.js';
import { spendProblem } from '../stores/codec.js';
import type { RunSession } from './run-session.js';

/** Amounts by unit: `{ usd: 0.0021, tokens: 812 }`. Units are names of your choosing. */
export type Spend = Readonly<Record<string, number>>;

/** What a run summary keeps about spend (see the module comment). */
export interface StoredSpend {
  /** Spend of ledgers that may be read again, by ledger name: set from the ledger each time it is read. */
  open?: Record<string, { stage: string; spend: Record<string, number> }>;
  /** Spend that no ledger read will restate, by stage or node: `ctx.spend`, and completed workflow steps' ledgers. */
  settled?: Record<string, Record<string, number>>;
}

/** The unit name waits may not use: a run that reached its budget waits for `budget`. */
export const BUDGET_WAIT = 'budget';

/** Adds `units` into `into` (own properties only: a unit named `constructor` is a unit like any other). */
export function addInto(into: Record<string, number>, units: Spend): void {
  for (const unit of Object.keys(units)) into[unit] = tidy((Object.hasOwn(into, unit) ? into[unit]! : 0) + units[unit]!);
}

/** A sum without the noise of binary fractions (0.1 + 0.2 is 0.3, not 0.30000000000000004): 12 significant digits. */
export function tidy(value: number): number {
  return Number(value.toPrecision(12));
}

/** The sum of several spends, or undefined when there is nothing. */
export function sumSpend(spends: Iterable<Spend>): Record<string, number> | undefined {
  let total: Record<string, number> | undefined;
  for (const spend of spends) {
    if (Object.keys(spend).length === 0) continue;
    total ??= {};
    addInto(total, spend);
  }
  return total;
}

/** The run's spend so far, by unit, or undefined when nothing was reported. */
export function runSpend(stored: StoredSpend | undefined): Record<string, number> | undefined {
  if (!stored) return undefined;
  return sumSpend([...Object.values(stored.open ?? {}).map((o) => o.spend), ...Object.values(stored.settled ?? {})]);
}

/** One stage's (or node's) spend so far, or undefined. */
export function stageSpend(stored: StoredSpend | undefined, stage: string): Record<string, number> | undefined {
  if (!stored) return undefined;
  const open = Object.values(stored.open ?? {})
    .filter((o) => o.stage === stage)
    .map((o) => o.spend);
  const settled = stored.settled && Object.hasOwn(stored.settled, stage) ? [stored.settled[stage]!] : [];
  return sumSpend([...open, ...settled]);
}

/** Moves the spend of a completed workflow step's ledgers (`<node>.s<step>.…`) into the node's settled total. */
export function settleStep(stored: StoredSpend | undefined, node: string, ledgerPrefix: string): void {
  if (!stored?.open) return;
  for (const [ledger, { stage, spend }] of Object.entries(stored.open)) {
    if (stage !== node || !ledger.startsWith(ledgerPrefix)) continue;
    stored.settled ??= {};
    const into = Object.hasOwn(stored.settled, node) ? stored.settled[node]! : (stored.settled[node] = {});
    addInto(into, spend);
    delete stored.open[ledger];
  }
}

/** The first unit whose spend reached the budget, or undefined while every unit is below it. */
export function budgetReached(
  budget: Spend | undefined,
  spent: Spend | undefined,
): { unit: string; spent: number; budget: number } | undefined {
  if (!budget) return undefined;
  for (const unit of Object.keys(budget)) {
    const used = spent && Object.hasOwn(spent, unit) ? spent[unit]! : 0;
    if (used >= budget[unit]!) return { unit, spent: used, budget: budget[unit]! };
  }
  return undefined;
}

/** Checks spend or a budget given by a caller: `INVALID_INPUT` naming `what` and the problem. */
export function checkSpend(units: unknown, what: string, context: Record<string, unknown> = {}): Spend {
  const problem = spendProblem(units);
  if (problem !== undefined) throw new CairnError('INVALID_INPUT', `${what}: ${problem}.`, context);
  return units as Spend;
}

/** A budget as given on a command line: `usd=5`, `usd=5,tokens=2e6` (several flags merge). */
export function parseBudget(texts: readonly string[]): Spend {
  const budget: Record<string, number> = {};
  for (const text of texts) {
    for (const part of text.split(',')) {
      const match = /^\s*([^=\s]+)\s*=\s*(\S+)\s*$/.exec(part);
      const amount = match ? Number(match[2]) : Number.NaN;
      if (!match || !Number.isFinite(amount) || amount < 0)
        throw new CairnError('INVALID_INPUT', `--budget ${JSON.stringify(part)}: write <unit>=<amount>, such as usd=5 or tokens=2000000.`);
      budget[match[1]!] = amount;
    }
  }
  return checkSpend(budget, '--budget');
}

/** `usd 1.23, tokens 45,600`: amounts as people read them (up to 4 significant decimals below 1). */
export function formatSpend(spend: Spend | undefined): string {
  if (!spend) return 'nothing';
  const parts = Object.keys(spend).map((unit) => `${unit} ${formatAmount(spend[unit]!)}`);
  return parts.length === 0 ? 'nothing' : parts.join(', ');
}

export function formatAmount(value: number): string {
  if (value === 0) return '0';
  if (Math.abs(value) >= 1000) return Math.round(value).toLocaleString('en-US');
  return String(Number(value.toPrecision(4))); // 0.2004, 1.234, 12.35: a single call's price still shows
}

/** For a run waiting for its budget: `spent usd 5.02 of 5`, and the `--budget` to raise it with (twice the budget of that unit). */
export function budgetWaitText(summary: { readonly spend?: Spend; readonly budget?: Spend }): { spent: string; raise: string } {
  const reached = budgetReached(summary.budget, summary.spend);
  if (!reached) return { spent: 'its budget is not reached any more', raise: '--budget <unit>=<amount>' };
  return {
    spent: `spent ${reached.unit} ${formatAmount(reached.spent)} of ${formatAmount(reached.budget)}`,
    // twice the budget (a budget of 0, or one long overshot: half as much again as was spent)
    raise:
      Math.max(reached.budget, reached.spent) > 0
        ? `--budget ${reached.unit}=${formatAmount(Math.max(reached.budget * 2, reached.spent * 1.5)).replaceAll(',', '')}`
        : `--budget ${reached.unit}=<amount>`,
  };
}

/** Why a run waits, for its stage summary, history and attempt: an input by name, or its budget (what was spent of what). */
export function waitReason(session: RunSession, name: string): string {
  if (name !== BUDGET_WAIT) return `waiting for input ${name}`;
  const reached = session.budgetReached();
  const what = reached ? `: spent ${reached.unit} ${formatAmount(reached.spent)} of ${formatAmount(reached.budget)}` : '';
  return `waiting for a higher budget${what}`;
}
