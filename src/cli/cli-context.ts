/**
 * What every command shares: the store URL (`--store`, else `CAIRN_STORE`, else the default),
 * exit codes, one-line errors, and JSON output. Commands throw; `main.ts` turns errors into a
 * line and an exit code.
 */
import fs from 'node:fs';
import { CairnError, isCairnError, type ErrorCode } from '../core/errors.js';
import { DEFAULT_STORE_URL, displayStoreUrl, openStore, storeLocation } from '../stores/open-store.js';
import type { RunStatus, Store } from '../stores/store.js';

/** Exit codes, documented in the README and `cairn --help`. */
export const EXIT = Object.freeze({ ok: 0, failed: 1, usage: 2, waiting: 3, interrupted: 130 });

/** Errors that mean "the command was given something wrong": exit 2. */
const USAGE_CODES: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  'INVALID_RUN_ID',
  'INVALID_INPUT',
  'INVALID_STORE_URL',
  'INVALID_DEFINITION',
  'NOT_FOUND',
  'ALREADY_EXISTS',
  'IMPORT_INVALID',
  'FORMAT_TOO_NEW',
  'SCHEMA_TOO_NEW',
  'STATE_TOO_NEW',
  'DRIVER_MISSING',
  'FINGERPRINT_CHANGED',
  'NOT_SUPPORTED',
]);

/**
 * Exit 2 for usage errors, 1 for every other error, store outages included (`STORE_FULL`,
 * `STORE_BUSY`, `STORE_UNAVAILABLE`: the command could not finish). A run such an outage stopped
 * after its store recorded it is `interrupted` and exits 130, like any interrupted run.
 */
export function exitCodeForError(error: unknown): number {
  return isCairnError(error) && USAGE_CODES.has(error.code) ? EXIT.usage : EXIT.failed;
}

export function exitCodeForStatus(status: RunStatus): number {
  switch (status) {
    case 'completed':
      return EXIT.ok;
    case 'waiting':
      return EXIT.waiting;
    case 'interrupted':
      return EXIT.interrupted;
    default:
      return EXIT.failed;
  }
}

export interface StoreFlag {
  readonly store?: string;
}

/** The store URL a command uses: `--store`, else `CAIRN_STORE`, else `file:./data/checkpoints`. */
export function storeUrl(options: StoreFlag): string {
  return options.store ?? (process.env.CAIRN_STORE || DEFAULT_STORE_URL);
}

/** False when the command's `file:` or `sqlite:` store is not there (other stores always are). */
export function storeExists(options: StoreFlag): boolean {
  const where = storeLocation(storeUrl(options));
  return !where || fs.existsSync(where.path);
}

/**
 * The store URL of a command that only works on what is stored (list, show, validate, export, …):
 * `NOT_FOUND` when a `file:` or `sqlite:` store is not there, rather than creating an empty one.
 */
export function existingStoreUrl(options: StoreFlag): string {
  const url = storeUrl(options);
  const where = storeLocation(url);
  if (where && !storeExists(options)) {
    throw new CairnError(
      'NOT_FOUND',
      `No store at ${where.path} (${url}): nothing was created. Check --store or $CAIRN_STORE` +
        (options.store === undefined && !process.env.CAIRN_STORE
          ? ' (the default store is ./data/checkpoints in the working directory).'
          : '.'),
      { url },
    );
  }
  return url;
}

/**
 * ` --store <url>` when the command was given one, so that printed commands find the run. A
 * Postgres password is never printed: the hint carries the URL without it (the server then takes
 * it from PGPASSWORD or ~/.pgpass, or asks for none).
 */
export function storeSuffix(flags: StoreFlag): string {
  return flags.store === undefined ? '' : ` --store ${shellQuote(displayStoreUrl(flags.store))}`;
}

/** Opens the command's store (which must exist, see {@link existingStoreUrl}), runs `fn`, and closes the store whatever happens. */
export async function withStore<T>(options: StoreFlag, fn: (store: Store) => Promise<T>): Promise<T> {
  const store = await openStore(existingStoreUrl(options));
  try {
    return await fn(store);
  } finally {
    await store.close();
  }
}

/** Prints one stable JSON document. */
export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(printable(value), null, 2)}\n`);
}

/** Nesting deeper than this prints as a marker (a result may be nested far deeper than JSON.stringify's stack allows). */
const PRINT_DEPTH = 500;

/**
 * What JSON can print of any value a run may hold (stored values keep far more, see the README):
 * BigInts as text, Maps as objects, Sets as arrays, a reference back to an enclosing object as
 * `"[Circular]"`, nesting past {@link PRINT_DEPTH} as `"[nested too deeply to print]"`.
 */
export function printable(value: unknown, ancestors = new Set<object>(), depth = 0): unknown {
  if (typeof value === 'bigint') return value.toString();
  if (value === null || typeof value !== 'object') return value;
  if (ancestors.has(value)) return '[Circular]';
  if (depth >= PRINT_DEPTH) return '[nested too deeply to print]';
  const inner = (v: unknown): unknown => printable(v, ancestors, depth + 1);
  ancestors.add(value);
  try {
    if (value instanceof Map) return Object.fromEntries([...value].map(([k, v]) => [String(k), inner(v)]));
    if (value instanceof Set) return [...value].map(inner);
    if (Array.isArray(value)) return value.map(inner);
    if (typeof (value as { toJSON?: unknown }).toJSON === 'function') return inner((value as { toJSON(): unknown }).toJSON());
    if (ArrayBuffer.isView(value)) return Array.from(value as unknown as ArrayLike<number>);
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, inner(v)]));
  } finally {
    ancestors.delete(value);
  }
}

/**
 * One line: `error CODE: message`. With `--verbose`, the stack: the user's own (the cause's) when
 * cairn's error wraps one, as for a module that failed to load, else the error's.
 */
export function formatError(error: unknown, verbose: boolean): string {
  const code = isCairnError(error) ? error.code : ((error as { code?: unknown })?.code as string | undefined);
  const message = error instanceof Error ? error.message : String(error);
  const line = `error${code ? ` ${code}` : ''}: ${message.split('\n')[0]}`;
  if (!verbose || !(error instanceof Error)) return line;
  const cause: unknown = error.cause;
  const stack = cause instanceof Error && cause.stack ? cause.stack : error.stack;
  return stack ? `${line}\n${stack}` : line;
}

/**
 * What a command given `--json` prints on stdout when it fails before it could print its own
 * document (the `error CODE: message` line still goes to stderr): `{ error: { code, message,
 * exitCode, context? } }`.
 */
export function errorDocument(error: unknown, exitCode: number): { error: Record<string, unknown> } {
  const code = isCairnError(error) ? error.code : ((error as { code?: unknown })?.code ?? 'INTERNAL');
  const message = error instanceof Error ? error.message : String(error);
  const context = isCairnError(error) && Object.keys(error.context).length > 0 ? { context: error.context } : {};
  return { error: { code, message, exitCode, ...context } };
}

/** A usage error raised by a command itself (bad flag value, missing argument). */
export function usageError(message: string): CairnError {
  return new CairnError('INVALID_INPUT', message);
}

/** Parses `--input`: JSON text, or `@file` holding JSON. */
export async function parseInputFlag(value: string | undefined): Promise<unknown> {
  if (value === undefined) return {};
  let text = value;
  if (value.startsWith('@')) {
    const fs = await import('node:fs/promises');
    try {
      text = await fs.readFile(value.slice(1), 'utf8');
    } catch (error) {
      throw usageError(`Cannot read the input file ${value.slice(1)}: ${(error as Error).message}`);
    }
  }
  try {
    return JSON.parse(text) as unknown;
  } catch {
    // never echo what a file holds (--input @/etc/shadow): name the file only
    if (value.startsWith('@')) throw usageError(`--input @file must hold JSON: ${value.slice(1)} does not.`);
    const answer = /^([A-Za-z_][\w.-]*)=/.exec(text);
    if (answer) {
      throw usageError(
        `--input of cairn run is the run's input, as JSON. To answer a run waiting for ${answer[1]}, use: cairn resume <run-id> --input ${text}`,
      );
    }
    throw usageError(`--input must be JSON (or @file with JSON): ${JSON.stringify(text.slice(0, 80))} is not.`);
  }
}

/** Parses `--input name=value` pairs; a value is JSON when it parses, text otherwise. */
export function parseNamedInputs(pairs: readonly string[] | undefined): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const pair of pairs ?? []) {
    const eq = pair.indexOf('=');
    if (eq <= 0) throw usageError(`--input expects name=value, got ${JSON.stringify(pair)}.`);
    const name = pair.slice(0, eq);
    const raw = pair.slice(eq + 1);
    if (name === '__proto__') throw usageError('--input name __proto__ is not allowed.');
    let value: unknown = raw;
    try {
      value = JSON.parse(raw);
    } catch {
      // plain text
    }
    out[name] = value;
  }
  return out;
}

/** Quotes a value for a shell command shown to the user, only when it needs it. */
export function shellQuote(value: string): string {
  return /^[\w@%+=:,./-]+$/.test(value) ? value : `'${value.replace(/'/g, `'\\''`)}'`;
}
