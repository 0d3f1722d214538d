/** `cairn export <run-id> <file>`: writes a run into one self-contained, checksummed (optionally signed) file. */
import type { Command } from 'commander';
import { assertRunId } from '../../core/ids.js';
import { KEY_ENV } from '../../transfer/export-format.js';
import { exportRun } from '../../transfer/export-run.js';
import { existingStoreUrl, printJson, type StoreFlag } from '../cli-context.js';

interface ExportFlags extends StoreFlag {
  readonly withArtifacts?: boolean;
  readonly json?: boolean;
}

export function registerExport(program: Command): void {
  program
    .command('export')
    .summary('write a run into one self-contained, checksummed file')
    .description(
      'write a run (record, checkpoints, item ledgers, artifact manifest and, with --with-artifacts, the artifact files) into one file ' +
        `that \`cairn import\` loads into any store. The file ends with a sha256 of its content; with ${KEY_ENV} set it is also signed (HMAC-SHA256). ` +
        'Damaged records are left out, with a warning. The file is written under a temp name and renamed into place',
    )
    .argument('<run-id>', 'the run to export')
    .argument('<file>', 'the file to write (replaced if it exists)')
    .option(
      '--with-artifacts',
      "include the bytes of the run's artifact files (a file missing or changed since it was recorded fails the export)",
    )
    .option('--store <url>', 'store URL (default: $CAIRN_STORE or file:./data/checkpoints)')
    .option('--json', 'print what was written as JSON (run id, file, bytes, sha256, signed, record counts, warnings)')
    .action(async (runId: string, file: string, flags: ExportFlags) => {
      // the run id is checked before the store is looked at (a hostile id creates nothing); the key is CAIRN_EXPORT_KEY's
      assertRunId(runId);
      const summary = await exportRun(existingStoreUrl(flags), runId, file, { withArtifacts: flags.withArtifacts === true });
      if (flags.json) {
        printJson(summary);
        return;
      }
      const { records: r } = summary;
      const artifacts = summary.withArtifacts
        ? `${summary.artifactFiles} artifact file${summary.artifactFiles === 1 ? '' : 's'} included (${summary.artifactBytes} bytes)`
        : `${r.artifacts} artifact record${r.artifacts === 1 ? '' : 's'}, files not included`;
      process.stdout.write(
        `exported run ${runId} to ${summary.file}\n` +
          `  ${r.checkpoints} checkpoint${r.checkpoints === 1 ? '' : 's'}, ${r.items} item${r.items === 1 ? '' : 's'} in ${r.ledgers} ledger${r.ledgers === 1 ? '' : 's'}, ${artifacts}\n` +
          `  ${summary.bytes} bytes, sha256 ${summary.sha256}, ${summary.signed ? `signed with ${KEY_ENV}` : `not signed (set ${KEY_ENV} to sign)`}\n`,
      );
      for (const warning of summary.warnings) process.stderr.write(`warning: ${warning}\n`);
    });
}
