/** `cairn delete <run-id>`: deletes one run and everything under it, unless a live process holds it. */
import type { Command } from 'commander';
import { CairnError } from '../../core/errors.js';
import { assertRunId } from '../../core/ids.js';
import { printJson, withStore, type StoreFlag } from '../cli-context.js';
import { deleteRunUnlessHeld } from '../run-removal.js';

interface DeleteFlags extends StoreFlag {
  readonly json?: boolean;
}

export function registerDelete(program: Command): void {
  program
    .command('delete')
    .summary('delete one run and everything under it')
    .description(
      'delete a run: its record, checkpoints, item ledgers, artifact files and lock (refused with RUN_LOCKED, exit 1, while a live process holds it)',
    )
    .argument('<run-id>', 'the run to delete')
    .option('--store <url>', 'store URL (default: $CAIRN_STORE or file:./data/checkpoints)')
    .option('--json', 'print { id, deleted: true } as JSON')
    .action(async (runId: string, flags: DeleteFlags) => {
      assertRunId(runId); // before the store is opened: a hostile id creates nothing
      const deleted = await withStore(flags, async (store) => {
        if (await deleteRunUnlessHeld(store, runId)) return true;
        throw new CairnError('NOT_FOUND', `Run ${runId} not found in ${store.url}; nothing was deleted.`, { runId });
      });
      if (flags.json) printJson({ id: runId, deleted });
      else process.stdout.write(`deleted run ${runId}\n`);
    });
}
