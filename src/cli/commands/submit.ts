/** `cairn submit <module>`: queues a run for workers on a shared store and returns at once. */
import type { Command } from 'commander';
import { assertRunId } from '../../core/ids.js';
import { Cairn } from '../../engine/cairn.js';
import { parseBudget } from '../../engine/spend.js';
import { parseInputFlag, parseNamedInputs, printJson, storeUrl, type StoreFlag } from '../cli-context.js';
import { loadDefinition } from '../load-module.js';
import { storeSuffix } from '../run-output.js';

interface SubmitFlags extends StoreFlag {
  readonly input?: string;
  readonly runId?: string;
  readonly pipeline?: string;
  readonly set?: string[];
  readonly json?: boolean;
  readonly budget?: string[];
}

export function registerSubmit(program: Command): void {
  program
    .command('submit')
    .description('queue a run of a module for workers (Postgres or SQLite store); prints its id and returns at once')
    .argument('<module>', 'file whose default export (or --pipeline NAME) is a definition')
    .option('--input <json|@file>', 'the run input, as JSON or @file.json', undefined)
    .option('--run-id <id>', 'use this run id instead of <name>-<hash of the input>')
    .option('--pipeline <name>', 'the export (or definition name) to submit instead of the default export')
    .option('--set <name=value...>', 'a value for ctx.waitFor(name): a waiting run given it is queued again')
    .option(
      '--budget <unit=amount...>',
      'spend limit kept with the run, e.g. usd=5 (repeat or comma-separate units): no item starts past it; a run waiting for its budget is queued again',
    )
    .option('--store <url>', 'store URL (default: $CAIRN_STORE); needs a store with a work queue')
    .option('--json', 'print the run summary as JSON')
    .action(async (modulePath: string, flags: SubmitFlags) => {
      if (flags.runId !== undefined) assertRunId(flags.runId);
      const input = await parseInputFlag(flags.input);
      const inputs = flags.set ? parseNamedInputs(flags.set) : undefined;
      const budget = flags.budget ? parseBudget(flags.budget) : undefined;
      const loaded = await loadDefinition(modulePath, flags.pipeline);
      const cairn = new Cairn({ store: storeUrl(flags), handleSignals: false });
      try {
        const summary = await cairn.submit(loaded.definition, input, {
          ...(flags.runId === undefined ? {} : { runId: flags.runId }),
          ...(inputs ? { inputs } : {}),
          ...(budget ? { budget } : {}),
          source: { module: loaded.module, exportName: loaded.exportName },
        });
        if (flags.json) printJson(summary);
        else
          process.stdout.write(
            summary.status === 'pending' || summary.status === 'interrupted' || summary.status === 'running'
              ? `queued ${summary.id} (${summary.status}); a worker runs it: cairn worker ${modulePath}${storeSuffix(flags)}\n`
              : `${summary.id} is ${summary.status}: nothing to queue\n`,
          );
      } finally {
        await cairn.close();
      }
    });
}
