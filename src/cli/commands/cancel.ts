/**
 * `cairn cancel <run-id>`: stops a run for good. A run held by a live process is asked to stop (it
 * looks for the request every second and stops, finishing in-flight work within its grace period),
 * and the command waits until it has (`--no-wait` returns at once; exit 1 if it did not stop within
 * `--timeout`); any other
 * unfinished run (waiting, interrupted, failed, queued) is marked `cancelled` at once. A completed
 * run stays completed. `cairn run … --force-restart` starts a cancelled run over.
 */
import type { Command } from 'commander';
import { assertRunId } from '../../core/ids.js';
import { Cairn } from '../../engine/cairn.js';
import { CairnError } from '../../core/errors.js';
import type { RunSummary } from '../../engine/types.js';
import { EXIT, existingStoreUrl, printJson, usageError, type StoreFlag } from '../cli-context.js';

interface CancelFlags extends StoreFlag {
  readonly json?: boolean;
  readonly wait: boolean;
  readonly timeout: string;
}

/** How often the command looks whether the holder has stopped the run. */
const POLL_MS = 200;

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
    .option('--no-wait', 'return once the holder is asked, without waiting for it to stop')
    .option('--timeout <seconds>', 'how long to wait for the holder to stop (it finishes in-flight items within its grace period)', '30')
    .action(async (runId: string, flags: CancelFlags) => {
      assertRunId(runId); // before the store is opened: a hostile id creates nothing
      const timeoutMs = Number(flags.timeout) * 1000;
      if (!(timeoutMs >= 0)) throw usageError(`--timeout takes a number of seconds, not ${JSON.stringify(flags.timeout)}.`);
      const cairn = new Cairn({ store: existingStoreUrl(flags), handleSignals: false });
      try {
        let summary = await cairn.cancel(runId);
        const asked = summary.status !== 'cancelled' && summary.history.at(-1)?.event === 'run:cancel-requested';
        let stopped = false;
        if (asked && flags.wait) {
          if (!flags.json)
            process.stderr.write(`Asked the process holding run ${runId} to stop; waiting for it (up to ${flags.timeout} s)…\n`);
          const deadline = Date.now() + timeoutMs;
          while (Date.now() < deadline) {
            await new Promise((resolve) => setTimeout(resolve, POLL_MS));
            const now = await cairn.get(runId);
            if (!now) throw new CairnError('NOT_FOUND', `Run ${runId} was deleted meanwhile.`, { runId });
            if (now.status !== 'running') {
              summary = now;
              stopped = true;
              break;
            }
          }
        }
        if (flags.json) {
          printJson(summary);
        } else {
          process.stdout.write(`${describe(runId, summary, asked, stopped, flags.wait)}\n`);
        }
        // asked and waited for, but still running: the holder did not stop in time
        if (asked && flags.wait && !stopped) process.exitCode = EXIT.failed;
      } finally {
        await cairn.close();
      }
    });
}

function describe(runId: string, summary: RunSummary, asked: boolean, stopped: boolean, waited: boolean): string {
  if (summary.status === 'cancelled') return `Cancelled run ${runId}.`;
  if (stopped) return `Run ${runId} stopped as ${summary.status} before the cancel took effect.`;
  if (!asked) return `Run ${runId} is ${summary.status}; there is nothing to cancel.`;
  const holder = summary.history.at(-1)?.message ?? '';
  if (!waited) return `Asked the process holding run ${runId} to stop: ${holder}`;
  return (
    `Run ${runId} is still running: its holder did not stop within the timeout (${holder}). ` +
    `It stops at its next look for a cancel request unless it is stuck; \`cairn show ${runId}\` tells its host and pid.`
  );
}
