/**
 * `cairn cancel <run-id>`: stops a run for good. A run held by a live process is asked to stop (it
 * does at its next lease renewal, finishing in-flight work within its grace period); any other
 * unfinished run (waiting, interrupted, failed, queued) is marked `cancelled` at once. A completed
 * run stays completed. `cairn run … --force-restart` starts a cancelled run over.
 */
import type { Command } from 'commander';
import { assertRunId } from '../../core/ids.js';
import { Cairn } from '../../engine/cairn.js';
import { existingStoreUrl, printJson, type StoreFlag } from '../cli-context.js';

interface CancelFlags extends StoreFlag {
  readonly json?: boolean;
}

export function registerCancel(program: Command): void {
  program
    .command('cancel')
    .summary('stop a run for good')
    .description(
      'cancel a run: a run held by a live process stops at its next lease renewal (in-flight work gets its grace period); ' +
        'a waiting, interrupted, failed or queued run is marked cancelled at once; a completed run stays completed',
    )
    .argument('<run-id>', 'the run to cancel')
    .option('--store <url>', 'store URL (default: $CAIRN_STORE or file:./data/checkpoints)')
    .option('--json', 'print the run summary as JSON')
    .action(async (runId: string, flags: CancelFlags) => {
      assertRunId(runId); // before the store is opened: a hostile id creates nothing
      const cairn = new Cairn({ store: existingStoreUrl(flags), handleSignals: false });
      try {
        const summary = await cairn.cancel(runId);
        if (flags.json) {
          printJson(summary);
          return;
        }
        const requested = summary.status !== 'cancelled' && summary.history.at(-1)?.event === 'run:cancel-requested';
        const line =
          summary.status === 'cancelled'
            ? `Cancelled run ${runId}.`
            : requested
              ? `Asked the process holding run ${runId} to stop: ${summary.history.at(-1)?.message ?? ''}`
              : `Run ${runId} is ${summary.status}; there is nothing to cancel.`;
        process.stdout.write(`${line}\n`);
      } finally {
        await cairn.close();
      }
    });
}
