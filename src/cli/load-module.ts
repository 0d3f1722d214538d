/**
 * Loads the module behind `cairn run <module>`: `.js`/`.mjs` through Node, `.ts`/`.mts` through
 * tsx (no build step). The definition is the default export, or `--pipeline NAME`: the export
 * named NAME, else the exported definition whose own name is NAME.
 */
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { CairnError } from '../core/errors.js';
import type { Definition } from '../engine/cairn.js';
import { isDefinition as isEngineDefinition } from '../engine/workflow.js';
import { syntaxErrorPlace, userFrame } from './user-location.js';

export interface LoadedDefinition {
  readonly definition: Definition;
  /** Absolute path of the module. */
  readonly module: string;
  /** The export it came from. */
  readonly exportName: string;
  /** Every definition the module exports (so `resume` finds any of them). */
  readonly all: readonly Definition[];
}

const isDefinition = (value: unknown): value is Definition => isEngineDefinition(value);

/** Imports the module and picks its definition. `INVALID_INPUT` when there is none to pick. */
export async function loadDefinition(modulePath: string, name?: string): Promise<LoadedDefinition> {
  const file = path.resolve(modulePath);
  if (!fs.existsSync(file)) throw new CairnError('INVALID_INPUT', `Module ${file} does not exist.`, { module: file });
  const exports = await importModule(file);
  const all = Object.values(exports).filter(isDefinition);
  if (name !== undefined) {
    const byExport = exports[name];
    if (isDefinition(byExport)) return { definition: byExport, module: file, exportName: name, all };
    const entry = Object.entries(exports).find(([, v]) => isDefinition(v) && v.name === name);
    if (entry) return { definition: entry[1] as Definition, module: file, exportName: entry[0], all };
    throw new CairnError(
      'INVALID_INPUT',
      `Module ${file} exports no definition named ${name}. It exports: ${describe(exports) || 'no pipeline or workflow'}.`,
      { module: file },
    );
  }
  const def = exports.default;
  if (isDefinition(def)) return { definition: def, module: file, exportName: 'default', all };
  throw new CairnError(
    'INVALID_INPUT',
    `Module ${file} has no default export made with pipeline() or workflow(). ` +
      (all.length > 0 ? `Pick one with --pipeline: ${describe(exports)}.` : 'Export one: export default pipeline(...).'),
    { module: file },
  );
}

/** Every definition a module exports (for `cairn worker`). `INVALID_INPUT` when it exports none. */
export async function loadAllDefinitions(modulePath: string): Promise<readonly Definition[]> {
  const file = path.resolve(modulePath);
  if (!fs.existsSync(file)) throw new CairnError('INVALID_INPUT', `Module ${file} does not exist.`, { module: file });
  const all = [...new Set(Object.values(await importModule(file)).filter(isDefinition))];
  if (all.length === 0) {
    throw new CairnError('INVALID_INPUT', `Module ${file} exports no pipeline or workflow.`, { module: file });
  }
  return all;
}

function describe(exports: Record<string, unknown>): string {
  return Object.entries(exports)
    .filter(([, v]) => isDefinition(v))
    .map(([k, v]) => `${k} (${(v as Definition).kind} ${(v as Definition).name})`)
    .join(', ');
}

async function importModule(file: string): Promise<Record<string, unknown>> {
  const ext = path.extname(file);
  try {
    const namespace =
      ext === '.ts' || ext === '.mts' || ext === '.cts' || ext === '.tsx'
        ? ((await (await import('tsx/esm/api')).tsImport(pathToFileURL(file).href, import.meta.url)) as Record<string, unknown>)
        : ((await import(pathToFileURL(file).href)) as Record<string, unknown>);
    return commonJsExports(namespace);
  } catch (error) {
    throw loadError(file, ext, error);
  }
}

/**
 * The exports of a module compiled to CommonJS (a `.ts` file in a project without `"type":
 * "module"`): imported from an ES module, its `exports` object is the default export, and
 * `export default` sits at `default.default`.
 */
function commonJsExports(namespace: Record<string, unknown>): Record<string, unknown> {
  const inner = namespace.default;
  if (isDefinition(inner) || typeof inner !== 'object' || inner === null) return namespace;
  const exports = inner as Record<string, unknown>;
  return exports.__esModule === true && Object.values(exports).some(isDefinition) ? exports : namespace;
}

/**
 * One line that says what went wrong and where in the user's code: esbuild's place for a
 * TypeScript syntax error, `node --check`'s for a JavaScript one, the first frame of the user's
 * code for a module that throws while it loads. The user's own stack stays as the cause.
 */
function loadError(file: string, ext: string, error: unknown): CairnError {
  const located = (what: string, where: string | undefined): CairnError =>
    new CairnError(
      'INVALID_INPUT',
      `Module ${file} failed to load: ${what}${where ? ` at ${where}` : ''}.`,
      { module: file, ...(where ? { at: where } : {}) },
      { cause: error },
    );
  // tsx's TransformError (esbuild): "Transform failed with 1 error:\n<file>:<line>:<column from 0>: ERROR: <text>"
  const esbuild = /^(.+):(\d+):(\d+): ERROR: (.+)$/m.exec(error instanceof Error && error.name === 'TransformError' ? error.message : '');
  if (esbuild) {
    const [, at = '', row = '', column = '', text = ''] = esbuild;
    return located(`syntax error: ${text}`, `${path.resolve(at)}:${row}:${Number(column) + 1}`);
  }
  const message = (error instanceof Error ? error.message : String(error)).split('\n')[0] ?? '';
  const code = (error as { code?: unknown }).code;
  if (code === 'ERR_REQUIRE_ESM' || code === 'ERR_REQUIRE_ASYNC_MODULE') {
    // Node before 20.19 cannot require() an ES module: a CommonJS module (or a .ts file compiled to one) cannot load cairnjs
    return located(
      `${message} cairnjs is an ES module: make the project one ("type": "module" in package.json), name the file .mts/.mjs, or use Node 20.19 or later`,
      undefined,
    );
  }
  if (error instanceof SyntaxError && !userFrame(error.stack) && ext !== '.ts' && ext !== '.mts' && ext !== '.cts' && ext !== '.tsx') {
    return located(`syntax error: ${message}`, syntaxErrorPlace(file));
  }
  return located(message, userFrame(error instanceof Error ? error.stack : undefined));
}
