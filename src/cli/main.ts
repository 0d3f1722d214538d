#!/usr/bin/env node
/**
 * The `cairn` command. This first version prints its version and the commands that are coming;
 * the full CLI (run, resume, list, show, validate, cleanup, export/import…) is the next milestone.
 */
import { readFileSync } from 'node:fs';

const pkg = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string };

const COMMANDS = [
  ['run <module>', 'run a pipeline or workflow, resuming it if it ran before'],
  ['resume <run-id>', 'continue a run, optionally with --input key=value'],
  ['list', 'list runs (--status, --json)'],
  ['show <run-id>', 'stages, items, attempts, artifacts and the last error'],
  ['validate <run-id|--all>', 'verify checksums, ledgers and artifacts'],
  ['cleanup', 'delete old runs (--older-than 7d, --dry-run)'],
  ['export / import', 'move a run between stores as one file'],
] as const;

const args = process.argv.slice(2);
if (args.includes('--version') || args.includes('-v')) {
  console.log(pkg.version);
} else {
  console.log(`cairn ${pkg.version} — durable checkpoints for long pipelines\n`);
  console.log('The command line is under construction. Coming commands:');
  for (const [name, what] of COMMANDS) console.log(`  cairn ${name.padEnd(26)} ${what}`);
  console.log("\nToday, use the library: import { CheckpointManager, openStore } from 'cairnjs'.");
  if (args.length > 0 && !args.includes('--help') && !args.includes('-h')) process.exitCode = 2;
}
