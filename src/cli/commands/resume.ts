/** `cairn resume <run-id>`: continues a run, with values for `waitFor` given as --input name=value. */
import fs from 'node:fs';
import type { Command } from 'commander';
import { CairnError } from '../../core/errors.js';
import { assertRunId } from '../../core/ids.js';
import { readRunData, toSummary as summaryOf } from '../../engine/run-data.js';
import { parseBudget } from '../../engine/spend.js';
import { parseNamedInputs, withStore } from '../cli-context.js';
import { loadAllDefinitions, loadDefinition } from '../load-module.js';
import { restartCommand } from '../run-details.js';
import { executeWithProgress, storeSuffix, type OutputFlags } from '../run-output.js';
import { stageNamesOf } from './run.js';

interface ResumeFlags extends OutputFlags {
  readonly input?: string[];
  readonly module?: string;
  readonly budget?: string[];
}

export function registerResume(program: Command): void {
  program
    .command('resume')
    .description('continue a run (failed, interrupted or waiting); values for waitFor as --input name=value (JSON when it parses)')
    .argument('<run-id>', 'the run to continue')
    .option('--input <name=value...>', 'a value for ctx.waitFor(name); repeat for several')
    .option('--module <file>', 'the module with the definition, if the run was not started by `cairn run`')
    .option(
      '--budget <unit=amount...>',
      'a new spend limit for the run, e.g. usd=10: a run waiting for its budget continues below it (repeat or comma-separate units): no item starts past it',
    )
    .option('--store <url>', 'store URL (default: $CAIRN_STORE or file:./data/checkpoints)')
    .option('--json', 'print the run summary as JSON, no progress')
    .option('--quiet', 'print only the result')
    .action(async (runId: string, flags: ResumeFlags) => {
      assertRunId(runId);
      const inputs = parseNamedInputs(flags.input);
      const budget = flags.budget ? parseBudget(flags.budget) : undefined;
      const { summary, input } = await withStore(flags, async (store) => {
        const record = await store.getRun(runId);
        if (!record) throw new CairnError('NOT_FOUND', `Run ${runId} not found in ${store.url}.`, { runId });
        return { summary: summaryOf(record), input: readRunData(record)?.input };
      });
      const problem = summary.problem;
      if (problem && !problem.rebuilt) throw new CairnError(problem.code, problem.message, { runId, where: problem.where }); // damaged or too new: the engine would refuse it too
      if (summary.status === 'cancelled') {
        throw new CairnError(
          'INVALID_INPUT',
          `Run ${runId} was cancelled; start it over with ${restartCommand(summary, input, storeSuffix(flags))}.`,
          { runId },
        );
      }
      const modulePath = flags.module ?? summary.source?.module;
      if (!modulePath) {
        throw new CairnError(
          'INVALID_INPUT',
          `Run ${runId} was not started by \`cairn run\`; say where its definition is with --module <file>.`,
          { runId },
        );
      }
      if (!flags.module && !fs.existsSync(modulePath)) {
        throw new CairnError(
          'INVALID_INPUT',
          `Run ${runId} was started from ${modulePath}, which does not exist any more (moved, or another folder or machine). ` +
            `Say where its definition is now: cairn resume ${runId} --module <file>.`,
          { runId, module: modulePath },
        );
      }
      // --module: the run's definition is found by its name among the module's exports (no --pipeline needed)
      const all = flags.module
        ? await loadAllDefinitions(flags.module)
        : await loadDefinition(modulePath, summary.source?.exportName === 'default' ? undefined : summary.source?.exportName).then((l) => [
            l.definition,
            ...l.all,
          ]);
      const definition = all.find((d) => d.name === summary.name) ?? (flags.module ? undefined : all[0]);
      if (!definition) {
        throw new CairnError(
          'INVALID_INPUT',
          `Module ${modulePath} exports no definition named ${summary.name}, the definition of run ${runId}; it exports ${all.map((d) => d.name).join(', ')}.`,
          { runId, module: modulePath },
        );
      }
      process.exitCode = await executeWithProgress(flags, all, stageNamesOf(definition), (cairn) =>
        cairn.resume(runId, { inputs, definition, ...(budget ? { budget } : {}) }),
      );
    });
}
