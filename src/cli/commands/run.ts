/** `cairn run <module>`: runs a module's definition, resuming it if it ran before. */
import type { Command } from 'commander';
import { assertRunId } from '../../core/ids.js';
import type { Definition } from '../../engine/cairn.js';
import { isPipeline } from '../../engine/pipeline.js';
import type { Workflow } from '../../engine/workflow.js';
import { parseBudget } from '../../engine/spend.js';
import { parseInputFlag } from '../cli-context.js';
import { loadDefinition } from '../load-module.js';
import { executeWithProgress, type OutputFlags } from '../run-output.js';

interface RunFlags extends OutputFlags {
  readonly input?: string;
  readonly runId?: string;
  readonly forceRestart?: boolean;
  readonly pipeline?: string;
  readonly budget?: string[];
}

export function stageNamesOf(def: Definition): string[] {
  return isPipeline(def) ? def.stages.map((s) => s.name) : (def as Workflow).nodes.map((n) => n.name);
}

export function registerRun(program: Command): void {
  program
    .command('run')
    .description(
      'run a pipeline or workflow module (.ts, .js, .mjs); a run started before is resumed, a completed one prints its cached result',
    )
    .argument('<module>', 'file whose default export (or --pipeline NAME) is a definition')
    .option('--input <json|@file>', 'the run input, as JSON or @file.json', undefined)
    .option('--run-id <id>', 'use this run id instead of <name>-<hash of the input>')
    .option('--force-restart', 'delete the run history and start over')
    .option('--pipeline <name>', 'the export (or definition name) to run instead of the default export')
    .option(
      '--budget <unit=amount...>',
      'spend limit kept with the run, e.g. usd=5 (repeat or comma-separate units): no item starts past it',
    )
    .option('--store <url>', 'store URL (default: $CAIRN_STORE or file:./data/checkpoints)')
    .option('--json', 'print the run summary as JSON, no progress')
    .option('--quiet', 'print only the result')
    .action(async (modulePath: string, flags: RunFlags) => {
      // before any user code runs or the store is opened: a hostile id must create nothing
      if (flags.runId !== undefined) assertRunId(flags.runId);
      const input = await parseInputFlag(flags.input);
      const budget = flags.budget ? parseBudget(flags.budget) : undefined;
      const loaded = await loadDefinition(modulePath, flags.pipeline);
      process.exitCode = await executeWithProgress(
        flags,
        loaded.all.length > 0 ? loaded.all : [loaded.definition],
        stageNamesOf(loaded.definition),
        (cairn) =>
          cairn.run(loaded.definition, input, {
            ...(flags.runId === undefined ? {} : { runId: flags.runId }),
            ...(flags.forceRestart ? { forceRestart: true } : {}),
            ...(budget ? { budget } : {}),
            source: { module: loaded.module, exportName: loaded.exportName },
          }),
      );
    });
}
