/**
 * `cairn init [folder]`: writes a starter project a newcomer can run at once: `job.ts` (the
 * README's first pipeline), a `tsconfig.json` that type-checks it, a `package.json` when the folder
 * has none, and a `.gitignore` that keeps the default store out of git. A file that exists is never
 * touched: it is named as kept, with what to check in it.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { CairnError } from '../../core/errors.js';
import { printJson } from '../cli-context.js';
import { shellQuote } from '../table.js';

interface InitFlags {
  readonly json?: boolean;
}

/** The `--json` output. */
export interface InitReport {
  readonly folder: string;
  readonly created: string[];
  readonly kept: string[];
  /** Commands to run next, in order. */
  readonly next: string[];
}

/** The starter pipeline: the same as the README's first pipeline (a test checks they agree). */
export const STARTER_JOB = `import { pipeline } from 'cairnjs';

export default pipeline('shout')
  .stage('load', () => ['alpha', 'beta', 'gamma', 'delta', 'epsilon'])
  .stage('call', (ctx) =>
    // one durable result per item: after a crash or Ctrl-C, finished items are not run (or paid) again
    ctx.items('words', ctx.output('load'), async (word, item) => {
      await new Promise((resolve) => setTimeout(resolve, 300)); // a slow, paid API call; give it item.signal
      return \`\${word.toUpperCase()} (\${item.key})\`;
    }),
  )
  .stage('join', (ctx) => ctx.output('call').join(', '));
`;

const TSCONFIG = {
  compilerOptions: {
    target: 'ES2022',
    module: 'NodeNext',
    moduleResolution: 'NodeNext',
    strict: true,
    noEmit: true,
    skipLibCheck: true,
  },
  include: ['*.ts'],
};

const GITIGNORE = `node_modules/
# cairn's default store (file:./data/checkpoints)
data/
`;

export function registerInit(program: Command, version: string): void {
  program
    .command('init')
    .summary('write a starter pipeline (job.ts), tsconfig.json and package.json into a folder')
    .description(
      'write a starter project into a folder (default: the current one): job.ts, a first durable pipeline; tsconfig.json; ' +
        'package.json when there is none (an ES module package depending on cairnjs); .gitignore keeping the store out of git. ' +
        'Existing files are never changed',
    )
    .argument('[folder]', 'where to write the files (made if missing)', '.')
    .option('--json', 'print { folder, created, kept, next }')
    .action((folder: string, flags: InitFlags) => {
      const report = init(path.resolve(folder), version);
      if (flags.json) {
        printJson(report);
        return;
      }
      const lines: string[] = [];
      const where = path.relative(process.cwd(), report.folder) || 'this folder';
      if (report.created.length > 0) lines.push(`Created ${report.created.join(', ')} in ${where}.`);
      if (report.kept.length > 0) lines.push(`Kept ${report.kept.join(', ')} as they are.`);
      lines.push('', 'Next:', ...report.next.map((command) => `  ${command}`));
      lines.push('', 'Ctrl-C the run halfway and start it again: it resumes, and finished items are not run again.');
      process.stdout.write(`${lines.join('\n')}\n`);
    });
}

function init(folder: string, version: string): InitReport {
  try {
    fs.mkdirSync(folder, { recursive: true });
  } catch (error) {
    throw new CairnError('INVALID_INPUT', `Cannot make the folder ${folder}: ${(error as Error).message}.`, {}, { cause: error });
  }
  if (!fs.statSync(folder).isDirectory()) throw new CairnError('INVALID_INPUT', `${folder} is not a folder.`);
  const created: string[] = [];
  const kept: string[] = [];
  const write = (name: string, text: string): void => {
    try {
      fs.writeFileSync(path.join(folder, name), text, { flag: 'wx' }); // never over an existing file
      created.push(name);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      kept.push(name);
    }
  };
  const hadPackage = fs.existsSync(path.join(folder, 'package.json'));
  const name = packageName(path.basename(folder));
  write(
    'package.json',
    `${JSON.stringify(
      {
        name,
        version: '0.1.0',
        private: true,
        type: 'module',
        scripts: { start: 'cairn run job.ts' },
        dependencies: { cairnjs: `^${version}` },
      },
      null,
      2,
    )}\n`,
  );
  write('job.ts', STARTER_JOB);
  write('tsconfig.json', `${JSON.stringify(TSCONFIG, null, 2)}\n`);
  write('.gitignore', GITIGNORE);
  const next: string[] = [];
  if (path.resolve(folder) !== process.cwd()) next.push(`cd ${shellQuote(path.relative(process.cwd(), folder))}`);
  next.push(hadPackage && !dependsOnCairn(folder) ? 'npm install cairnjs' : 'npm install');
  next.push('npx cairn run job.ts', 'npx cairn list');
  return { folder, created, kept, next };
}

function dependsOnCairn(folder: string): boolean {
  try {
    const pkg = JSON.parse(fs.readFileSync(path.join(folder, 'package.json'), 'utf8')) as Record<
      string,
      Record<string, unknown> | undefined
    >;
    return ['dependencies', 'devDependencies'].some((field) => pkg[field]?.cairnjs !== undefined);
  } catch {
    return false; // unreadable: installing cairnjs is the safe advice
  }
}

/** An npm package name from a folder name: lower case, only the characters npm allows. */
function packageName(base: string): string {
  const name = base
    .toLowerCase()
    .replace(/[^a-z0-9._-]+/g, '-')
    .replace(/^[._-]+|-+$/g, '');
  return name.length > 0 ? name.slice(0, 214) : 'cairn-job';
}
