/**
 * `cairn fork <run-id> --from <seq>`: a new run holding the run's history up to checkpoint `seq`
 * (see `cairn show <run-id>` for the seqs). Resuming the fork replays what came after: a pipeline
 * reruns the stages completed later, a workflow continues from that step.
 */
import type { Command } from 'commander';
import { assertRunId } from '../../core/ids.js';
import { Cairn } from '../../engine/cairn.js';
import { existingStoreUrl, printJson, usageError, type StoreFlag } from '../cli-context.js';
import { storeSuffix } from '../run-output.js';

interface ForkFlags extends StoreFlag {
  readonly from: string;
  readonly runId?: string;
  readonly json?: boolean;
}

export function registerFork(program: Command): void {
  program
    .command('fork')
    .description('replay a run from an earlier point: a new run holding its checkpoints up to --from, which `cairn resume` continues')
    .argument('<run-id>', 'the run to fork (it is not changed)')
    .requiredOption('--from <seq>', 'checkpoint seq to fork at (listed by cairn show <run-id>)')
    .option('--run-id <id>', 'id of the new run (default: <run-id>-fork-<seq>)')
    .option('--store <url>', 'store URL (default: $CAIRN_STORE or file:./data/checkpoints)')
    .option('--json', 'print the new run summary as JSON')
    .action(async (runId: string, flags: ForkFlags) => {
      if (!/^[1-9]\d{0,15}$/.test(flags.from))
        throw usageError(`--from must be a checkpoint seq (a positive integer), not ${JSON.stringify(flags.from)}.`);
      assertRunId(runId); // before the store is looked at: a hostile id creates nothing
      const cairn = new Cairn({ store: existingStoreUrl(flags), handleSignals: false });
      try {
        const fork = await cairn.fork(runId, { fromSeq: Number(flags.from), ...(flags.runId === undefined ? {} : { runId: flags.runId }) });
        if (flags.json) {
          printJson(fork);
          return;
        }
        const store = storeSuffix(flags);
        const module = fork.source ? '' : ' --module <file>';
        process.stdout.write(`Forked ${runId} at checkpoint ${flags.from} into ${fork.id}: ${forkNote(fork.history.at(-1)?.message)}.\n`);
        process.stdout.write(`Replay it with: cairn resume ${fork.id}${store}${module}\n`);
      } finally {
        await cairn.close();
      }
    });
}

/** The part of the fork's history line after the colon: what was kept and what runs again. */
function forkNote(message: string | undefined): string {
  const at = message?.indexOf(': ') ?? -1;
  return message && at >= 0 ? message.slice(at + 2).replace(/\.$/, '') : 'history copied';
}
