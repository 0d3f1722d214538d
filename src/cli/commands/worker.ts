/**
 * `cairn worker <module...>`: claims queued runs of the modules' definitions (and runs stranded by
 * a dead worker) from a shared store and runs them, `--concurrency` at a time, until stopped.
 * SIGTERM or Ctrl-C: claim nothing more, let in-flight items finish within the grace period, save,
 * and hand the runs back to the queue; a second signal exits at once.
 */
import type { Command } from 'commander';
import { CairnError } from '../../core/errors.js';
import { Cairn, type Definition } from '../../engine/cairn.js';
import { EXIT, storeUrl, type StoreFlag } from '../cli-context.js';
import { loadAllDefinitions } from '../load-module.js';

interface WorkerFlags extends StoreFlag {
  readonly concurrency: string;
  readonly pollMs: string;
  readonly lockTtlMs?: string;
  readonly exitWhenIdle?: boolean;
  readonly maxRuns?: string;
  readonly json?: boolean;
}

export function registerWorker(program: Command): void {
  program
    .command('worker')
    .description('claim and run queued runs of these modules from a shared store (Postgres, SQLite) until stopped')
    .argument('<module...>', 'files whose exported definitions this worker runs')
    .option('--concurrency <n>', 'runs held at once', '1')
    .option('--poll-ms <ms>', 'pause between claims while the queue is empty', '1000')
    .option('--lock-ttl-ms <ms>', 'lease length; renewed every third of it (default 30000)')
    .option('--exit-when-idle', 'return once nothing is claimable and nothing runs')
    .option('--max-runs <n>', 'claim at most this many runs, then finish them and return')
    .option('--store <url>', 'store URL (default: $CAIRN_STORE); needs a store with a work queue')
    .option('--json', 'one JSON object per line per event, and the report at the end')
    .action(async (modules: string[], flags: WorkerFlags) => {
      const concurrency = positive(flags.concurrency, '--concurrency');
      const pollMs = positive(flags.pollMs, '--poll-ms', true);
      const lockTtlMs = flags.lockTtlMs === undefined ? undefined : positive(flags.lockTtlMs, '--lock-ttl-ms');
      const maxRuns = flags.maxRuns === undefined ? undefined : positive(flags.maxRuns, '--max-runs');
      const definitions: Definition[] = [];
      for (const file of modules) definitions.push(...(await loadAllDefinitions(file)));
      const cairn = new Cairn({ store: storeUrl(flags), definitions, ...(lockTtlMs === undefined ? {} : { lockTtlMs }) });
      const line = (event: string, fields: Record<string, unknown>, text: string): void => {
        process.stdout.write(flags.json ? `${JSON.stringify({ event, time: new Date().toISOString(), ...fields })}\n` : `${text}\n`);
      };
      cairn.on('run:claimed', (e) => line('claimed', e, `claimed ${e.runId} (${e.reason}, epoch ${e.epoch})`));
      cairn.on('run:end', (e) =>
        line(
          'ended',
          { runId: e.runId, status: e.status, ...(e.summary.error ? { error: e.summary.error.message } : {}) },
          `${e.status} ${e.runId}`,
        ),
      );
      cairn.on('warning', (e) => line('warning', e, `warning ${e.code} ${e.runId}: ${e.message}`));

      const stop = new AbortController();
      const onSignal = (signal: NodeJS.Signals): void => {
        if (!flags.json) process.stderr.write(`${signal}: claiming nothing more; saving and handing back the runs held\n`);
        stop.abort(signal);
      };
      process.once('SIGTERM', onSignal);
      process.once('SIGINT', onSignal);
      const names = definitions.map((d) => d.name).join(', ');
      if (!flags.json)
        process.stderr.write(`worker ${process.pid}: ${names} on ${(await cairn.store()).url}, concurrency ${concurrency}\n`);
      try {
        const report = await cairn.work({
          concurrency,
          pollMs,
          signal: stop.signal,
          ...(flags.exitWhenIdle ? { exitWhenIdle: true } : {}),
          ...(maxRuns === undefined ? {} : { maxRuns }),
        });
        line(
          'report',
          { ...report },
          `worker done: ${report.claimed} claimed, ${report.completed} completed, ${report.failed} failed, ` +
            `${report.waiting} waiting, ${report.interrupted} handed back, ${report.lost} lost to another worker, ${report.errors} errors`,
        );
        // a graceful stop is a success: the runs it held are saved and queued again
        process.exitCode = report.errors > 0 ? EXIT.failed : EXIT.ok;
      } finally {
        process.off('SIGTERM', onSignal);
        process.off('SIGINT', onSignal);
        await cairn.close();
      }
    });
}

function positive(value: string, flag: string, zeroOk = false): number {
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < (zeroOk ? 0 : 1)) {
    throw new CairnError(
      'INVALID_INPUT',
      `${flag} must be a ${zeroOk ? 'non-negative' : 'positive'} integer, got ${JSON.stringify(value)}.`,
    );
  }
  return n;
}
