/** `cairn import <file>`: verifies an export file completely, then loads the run into the store. */
import type { Command } from 'commander';
import { KEY_ENV } from '../../transfer/export-format.js';
import { importRun } from '../../transfer/import-run.js';
import { printJson, storeUrl, type StoreFlag } from '../cli-context.js';

interface ImportFlags extends StoreFlag {
  readonly overwrite?: boolean;
  readonly allowUnverified?: boolean;
  readonly json?: boolean;
}

const SIGNATURE_TEXT = {
  valid: `signature valid (${KEY_ENV})`,
  none: 'not signed',
  unchecked: `signature NOT checked (${KEY_ENV} is not set)`,
} as const;

export function registerImport(program: Command): void {
  program
    .command('import')
    .summary('load a run from an export file, verified before anything is written')
    .description(
      'load a run from a `cairn export` file into the store. Everything is verified before anything is written: format version, ' +
        "every record's checksum, artifact bytes against the manifest, the file's sha256 and its signature. " +
        `With ${KEY_ENV} set, a missing or wrong signature is refused; without it, a signed file is refused unless --allow-unverified. ` +
        'The run appears whole or not at all; an existing run is refused (ALREADY_EXISTS) unless --overwrite',
    )
    .argument('<file>', 'the export file')
    .option('--overwrite', 'replace an existing run with the same id (refused while a live process holds it)')
    .option('--allow-unverified', `import a signed file without ${KEY_ENV} (only its sha256 is checked)`)
    .option('--store <url>', 'store URL (default: $CAIRN_STORE or file:./data/checkpoints)')
    .option('--json', 'print what was imported as JSON (run id, name, status, store, signature, record counts, warnings)')
    .action(async (file: string, flags: ImportFlags) => {
      // a bad file is refused before the store is even opened; the key is CAIRN_EXPORT_KEY's
      const summary = await importRun(storeUrl(flags), file, {
        allowUnverified: flags.allowUnverified === true,
        overwrite: flags.overwrite === true,
      });
      if (flags.json) {
        printJson(summary);
        return;
      }
      const r = summary.records;
      process.stdout.write(
        `imported run ${summary.runId} (${summary.name}, ${summary.status}) into ${summary.store}${summary.overwritten ? ', replacing the run that was there' : ''}\n` +
          `  ${r.checkpoints} checkpoint${r.checkpoints === 1 ? '' : 's'}, ${r.items} item${r.items === 1 ? '' : 's'} in ${r.ledgers} ledger${r.ledgers === 1 ? '' : 's'}, ` +
          `${summary.artifactFiles} artifact file${summary.artifactFiles === 1 ? '' : 's'} (${summary.artifactBytes} bytes); ${SIGNATURE_TEXT[summary.signature]}\n`,
      );
      for (const warning of summary.warnings) process.stderr.write(`warning: ${warning}\n`);
    });
}
