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
    if (ext === '.ts' || ext === '.mts' || ext === '.cts' || ext === '.tsx') {
      const { tsImport } = await import('tsx/esm/api');
      return (await tsImport(pathToFileURL(file).href, import.meta.url)) as Record<string, unknown>;
    }
    return (await import(pathToFileURL(file).href)) as Record<string, unknown>;
  } catch (error) {
    throw new CairnError('INVALID_INPUT', `Module ${file} failed to load: ${(error as Error).message}`, { module: file }, { cause: error });
  }
}
