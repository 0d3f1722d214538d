/**
 * Where in the user's code an error comes from: the first frame of its stack that is neither
 * Node's own, nor a dependency's, nor cairn's; and, for a syntax error Node reports without a place
 * (an ES module that does not parse), the place `node --check` finds.
 */
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** cairn's own code (`dist/src`, or `src` under tsx): frames there are not the user's. */
const OWN_CODE = [path.resolve(import.meta.dirname, '..'), path.resolve(import.meta.dirname, '..', '..', '..', 'src')];

const FRAME = /^\s*at (?:.*? \()?(.+?):(\d+):(\d+)\)?$/;

/** `file:line:column` of the first stack frame in the user's code, or undefined. */
export function userFrame(stack: string | undefined): string | undefined {
  for (const line of (stack ?? '').split('\n')) {
    const match = FRAME.exec(line);
    if (!match) continue;
    const [, where = '', row, column] = match;
    if (where.startsWith('node:') || where.startsWith('internal/')) continue;
    let file = where;
    if (file.startsWith('file://')) {
      try {
        file = fileURLToPath(file);
      } catch {
        continue;
      }
    }
    if (!path.isAbsolute(file) || file.split(path.sep).includes('node_modules')) continue;
    if (OWN_CODE.some((dir) => file === dir || file.startsWith(dir + path.sep))) continue;
    return `${file}:${row}:${column}`;
  }
  return undefined;
}

/**
 * `file:line:column` of the syntax error in a JavaScript module, from `node --check` (Node's own
 * error for an ES module that does not parse names no place). Undefined when the file parses.
 */
export function syntaxErrorPlace(file: string): string | undefined {
  try {
    execFileSync(process.execPath, ['--check', file], { stdio: ['ignore', 'ignore', 'pipe'], timeout: 10_000 });
    return undefined;
  } catch (error) {
    const output = (error as { stderr?: Buffer | string }).stderr;
    const stderr = typeof output === 'string' ? output : (output?.toString('utf8') ?? '');
    // `<file>:<line>\n<source line>\n<spaces>^^^\n\nSyntaxError: …`
    const lines = stderr.split('\n');
    const head = /^(.*):(\d+)$/.exec(lines[0] ?? '');
    if (!head) return undefined;
    const caret = lines.findIndex((l) => /^\s*\^+\s*$/.test(l));
    const column = caret > 0 ? (lines[caret]?.indexOf('^') ?? -1) + 1 : 0;
    return `${head[1]}:${head[2]}${column > 0 ? `:${column}` : ''}`;
  }
}
