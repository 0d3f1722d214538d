#!/usr/bin/env node
/**
 * The `cairn` command: run, resume, inspect, validate, clean up, export and import runs on any
 * store. Each command lives in `commands/<name>.ts`. Commands throw; this file turns an error into
 * one line (`error CODE: message`, the stack only with --verbose) and an exit code:
 * 0 completed/ok · 1 failed/invalid · 2 usage or bad input · 3 waiting (for input or a higher budget) · 130/143 interrupted.
 */
import { readFileSync } from 'node:fs';
import { Command, CommanderError } from 'commander';
import { CairnError, isCairnError } from '../core/errors.js';
import { displayStoreUrl } from '../stores/open-store.js';
import { EXIT, errorDocument, exitCodeForError, formatError, printJson } from './cli-context.js';
import { shellQuote } from './table.js';
const pkg = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string };

const program = new Command('cairn')
  .description('durable runs for long pipelines and workflows: resume after crashes, Ctrl-C and reboots')
  .version(pkg.version, '-v, --version')
  .option('--verbose', 'print stack traces with errors')
  .exitOverride()
  .showSuggestionAfterError()
  .addHelpText(
    'after',
    `
Store: --store URL, else $CAIRN_STORE, else file:./data/checkpoints (also sqlite:<path>, postgres://…, memory:).
Exit codes: 0 completed/ok, 1 failed/invalid, 2 usage or bad input, 3 waiting (for input, or for a higher budget), 130/143 interrupted (SIGINT/SIGTERM).`,
  );

// Each command's module (and what it needs: the engine, a store, tsx) is loaded only when that
// command runs: `cairn --version` loads none, `cairn list` only list's. Help and unknown commands
// load them all (to list them, or to suggest one).
const COMMANDS: Readonly<Record<string, () => Promise<(program: Command) => void>>> = {
  run: async () => (await import('./commands/run.js')).registerRun,
  resume: async () => (await import('./commands/resume.js')).registerResume,
  list: async () => (await import('./commands/list.js')).registerList,
  show: async () => (await import('./commands/show.js')).registerShow,
  validate: async () => (await import('./commands/validate.js')).registerValidate,
  cleanup: async () => (await import('./commands/cleanup.js')).registerCleanup,
  delete: async () => (await import('./commands/delete.js')).registerDelete,
  export: async () => (await import('./commands/export.js')).registerExport,
  import: async () => (await import('./commands/import.js')).registerImport,
  fork: async () => (await import('./commands/fork.js')).registerFork,
  cancel: async () => (await import('./commands/cancel.js')).registerCancel,
  submit: async () => (await import('./commands/submit.js')).registerSubmit,
  worker: async () => (await import('./commands/worker.js')).registerWorker,
  init: async () => {
    const { registerInit } = await import('./commands/init.js');
    return (program) => registerInit(program, pkg.version);
  },
};
const args = process.argv.slice(2);
const commandName = args.find((arg) => !arg.startsWith('-'));
const versionOnly = commandName === undefined && args.some((arg) => arg === '-v' || arg === '--version');
const needed = commandName !== undefined && Object.hasOwn(COMMANDS, commandName) ? [commandName] : versionOnly ? [] : Object.keys(COMMANDS);
for (const name of needed) (await COMMANDS[name]!())(program);

// `cairn run … | head` closes the pipe early: keep running (and saving) rather than die on EPIPE
for (const stream of [process.stdout, process.stderr]) {
  stream.on('error', (error: NodeJS.ErrnoException) => {
    if (error.code !== 'EPIPE') throw error;
  });
}

const verbose = process.argv.includes('--verbose');
const wantsJson = args.includes('--json');
try {
  await program.parseAsync(process.argv);
} catch (error) {
  if (error instanceof CommanderError) {
    // help and version exit 0; every other parse error (unknown option, missing argument) is usage
    const ok = error.code === 'commander.helpDisplayed' || error.code === 'commander.version';
    process.exitCode = ok ? EXIT.ok : EXIT.usage;
    if (!ok && wantsJson) printJson(errorDocument(new CairnError('INVALID_INPUT', error.message.replace(/^error: /, '')), EXIT.usage));
  } else {
    process.stderr.write(`${formatError(error, verbose)}${notFoundHint(error)}\n`);
    process.exitCode = exitCodeForError(error);
    if (wantsJson) printJson(errorDocument(error, process.exitCode)); // a script reading stdout learns why, not just nothing
  }
}
// User code may leave timers behind (a stage abandoned after Ctrl-C): the command is done, so exit,
// but only once stdout and stderr are drained. A pipe takes 64 KiB at once and Node queues the rest;
// exiting before the reader has taken it would cut `--json` output short with exit 0.
await Promise.all([drained(process.stdout), drained(process.stderr)]);
process.exit(process.exitCode ?? EXIT.ok);

/** Resolves once everything written to `stream` so far has been handed to the OS (or the reader is gone). */
function drained(stream: NodeJS.WriteStream): Promise<void> {
  if (stream.writableLength === 0 || stream.destroyed) return Promise.resolve();
  return new Promise((resolve) => {
    stream.write('', () => resolve()); // called after the writes queued before it, or with the error that ended them
    stream.once('close', () => resolve());
  });
}

/** After "run X not found": where to see the runs there are (on the store the command was given). */
function notFoundHint(error: unknown): string {
  if (!isCairnError(error, 'NOT_FOUND') || typeof error.context.runId !== 'string' || verbose) return '';
  const at = args.indexOf('--store');
  const given = at >= 0 ? args[at + 1] : args.find((a) => a.startsWith('--store='))?.slice('--store='.length);
  return ` (cairn list${given === undefined ? '' : ` --store ${shellQuote(displayStoreUrl(given))}`} shows the runs there)`;
}
