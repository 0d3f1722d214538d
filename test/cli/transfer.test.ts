/**
 * `cairn export` / `cairn import` through the built binary: cross-store round trips compared field
 * by field (files → SQLite → files, and into memory), signing with CAIRN_EXPORT_KEY, refusal of
 * tampered, truncated, spliced and hostile files (exit 2, nothing written), overwrite rules, and
 * the atomic write of the export file.
 */
import { createHash, createHmac } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import type { ValidateReport } from '../../src/cli/commands/validate.js';
import type { ExportSummary } from '../../src/transfer/export-run.js';
import { importExportFile, verifyExportFile, type ImportSummary } from '../../src/transfer/import-run.js';
import { sealBody, unsealLine } from '../../src/core/record.js';
import { MemoryStore } from '../../src/stores/memory/memory-store.js';
import { flipByte } from '../conformance/store-spec.js';
import { POSTGRES, dropSchema, freshSchema, postgresUrl } from '../postgres.js';
import { cairn, errorCode, json, listTree, makeRun, snapshotRun, useTempDirs, withStore } from './store-ops-helpers.js';
import { mutateFileLine } from '../helpers.js';
import { removeRunRecord } from '../remove-run-record.js';

const KEY = 'correct horse battery staple';

/** The lines of an export file (without the empty string after the last newline). */
function readLines(file: string): string[] {
  const lines = fs.readFileSync(file, 'utf8').split('\n');
  expect(lines.pop()).toBe('');
  return lines;
}

/**
 * Writes `lines` as an export file whose trailer is recomputed (sha256, counts and, with a key,
 * the signature) — what someone who can edit the file but lacks the key can do.
 */
function writeResealed(file: string, lines: string[], key?: string): void {
  const body = lines
    .slice(0, -1)
    .map((l) => `${l}\n`)
    .join('');
  const trailer = JSON.parse(lines.at(-1)!) as Record<string, unknown>;
  const bytes = Buffer.from(body, 'utf8');
  trailer.sha256 = createHash('sha256').update(bytes).digest('hex');
  trailer.bytes = bytes.length;
  trailer.lines = lines.length - 1;
  if (key) trailer.hmacSha256 = createHmac('sha256', key).update(bytes).digest('hex');
  else delete trailer.hmacSha256;
  fs.writeFileSync(file, `${body}${JSON.stringify(trailer)}\n`);
}

function writeLines(file: string, lines: string[]): void {
  fs.writeFileSync(file, lines.map((l) => `${l}\n`).join(''));
}

/** Flips one letter or digit inside the sealed record of line `index` (still valid JSON). */
function flipInRecord(lines: string[], index: number): string[] {
  const line = lines[index]!;
  const at = line.indexOf('"data\\":') + 12;
  const c = line[at]!;
  const swapped = /[0-9]/.test(c) ? String((Number(c) + 1) % 10) : c === 'x' ? 'y' : /[a-zA-Z]/.test(c) ? 'x' : null;
  if (swapped === null) throw new Error(`no letter to flip at ${at} in ${line.slice(at - 20, at + 20)}`);
  const out = [...lines];
  out[index] = line.slice(0, at) + swapped + line.slice(at + 1);
  return out;
}

/** Reseals the body of a sealed record after `edit`, so its CRC is right again. */
function resealRecord(line: string, edit: (body: string) => string): string {
  const opened = unsealLine(line);
  if (!opened.ok) throw new Error(opened.reason);
  return sealBody(edit(opened.bodyText));
}

const indexOfType = (lines: string[], type: string): number => lines.findIndex((l) => (JSON.parse(l) as { type: string }).type === type);

describe('cairn export / import', () => {
  const tempDir = useTempDirs();

  /** A completed run `job` in a file store, exported with artifacts to `<dir>/job.cairn`. */
  async function exported(options: { key?: string; withArtifacts?: boolean; runId?: string } = {}) {
    const dir = tempDir();
    const source = `file:${dir}/source`;
    const runId = options.runId ?? 'job';
    await makeRun(source, runId);
    const file = path.join(dir, `${runId}.cairn`);
    const args = ['export', runId, file, '--store', source, '--json', ...(options.withArtifacts === false ? [] : ['--with-artifacts'])];
    const result = await cairn(args, { env: options.key ? { CAIRN_EXPORT_KEY: options.key } : {} });
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    return { dir, source, file, runId, summary: json<ExportSummary>(result) };
  }

  it('moves a run from files to SQLite and back, and into memory, field by field', async () => {
    const { dir, source, file, summary } = await exported();
    expect(summary).toMatchObject({
      runId: 'job',
      file,
      signed: false,
      withArtifacts: true,
      records: { checkpoints: expect.any(Number), ledgers: 1, items: 40, artifacts: 2 },
      artifactFiles: 2,
    });
    expect(summary.artifactBytes).toBeGreaterThan(300_000);
    expect(summary.bytes).toBe(fs.statSync(file).size);

    const sqlite = `sqlite:${dir}/copy.db`;
    const imported = await cairn(['import', file, '--store', sqlite, '--json']);
    expect(imported.code).toBe(0);
    expect(json<ImportSummary>(imported)).toMatchObject({
      runId: 'job',
      name: 'report-job',
      status: 'completed',
      overwritten: false,
      signature: 'none',
      records: summary.records,
      artifactFiles: 2,
      warnings: [],
    });
    const again = path.join(dir, 'again.cairn');
    expect((await cairn(['export', 'job', again, '--with-artifacts', '--store', sqlite])).code).toBe(0);
    const back = `file:${dir}/back`;
    const text = await cairn(['import', again, '--store', back]);
    expect(text.code).toBe(0);
    expect(text.stdout).toContain(`imported run job (report-job, completed) into file:${dir}/back`);
    expect(text.stdout).toContain('40 items in 1 ledger, 2 artifact files');

    // the stores hold the same sealed records: both exports agree on every line but header and trailer
    const first = readLines(file);
    const second = readLines(again);
    expect(second.slice(1, -1)).toEqual(first.slice(1, -1));
    expect(JSON.parse(second[0]!)).toMatchObject({ format: 'cairn-export', version: 1, runId: 'job', sourceStore: 'sqlite' });

    const memory = new MemoryStore();
    try {
      const viaMemory = await importExportFile(memory, file, { key: undefined });
      expect(viaMemory).toMatchObject({ runId: 'job', artifactFiles: 2 });
      const original = await withStore(source, (s) => snapshotRun(s, 'job'));
      expect(original.problems).toEqual([]);
      expect((original.checkpoints as unknown[]).length).toBe(summary.records.checkpoints);
      expect(Object.keys(original.files as object).sort()).toEqual(['out/report.txt', 'raw.bin']);
      expect(await withStore(sqlite, (s) => snapshotRun(s, 'job'))).toEqual(original);
      expect(await withStore(back, (s) => snapshotRun(s, 'job'))).toEqual(original);
      expect(await snapshotRun(memory, 'job')).toEqual(original);
    } finally {
      await fs.promises.rm(path.dirname(memory.artifactDir('job')), { recursive: true, force: true });
      await memory.close();
    }
    // the memory store of the CLI process keeps its artifact files under the temp folder: the test's own
    const viaCli = await cairn(['import', file, '--store', 'memory:', '--json'], { env: { TMPDIR: dir } });
    expect([viaCli.code, json<ImportSummary>(viaCli).store]).toEqual([0, 'memory:']);
  });

  it.skipIf(!POSTGRES.reachable)('moves a run from files to Postgres, on to SQLite and back to files, field by field', async () => {
    const { dir, source, file } = await exported();
    const schema = freshSchema('cairn_transfer');
    const postgres = postgresUrl(schema, { artifacts: path.join(dir, 'pg-artifacts') });
    try {
      const intoPostgres = await cairn(['import', file, '--store', postgres, '--json']);
      expect(intoPostgres.code, intoPostgres.stderr).toBe(0);
      expect(json<ImportSummary>(intoPostgres)).toMatchObject({ runId: 'job', status: 'completed', artifactFiles: 2 });
      const fromPostgres = path.join(dir, 'from-postgres.cairn');
      expect((await cairn(['export', 'job', fromPostgres, '--with-artifacts', '--store', postgres])).code).toBe(0);
      const sqlite = `sqlite:${dir}/via-postgres.db`;
      expect((await cairn(['import', fromPostgres, '--store', sqlite])).code).toBe(0);
      const fromSqlite = path.join(dir, 'from-sqlite.cairn');
      expect((await cairn(['export', 'job', fromSqlite, '--with-artifacts', '--store', sqlite])).code).toBe(0);
      const back = `file:${dir}/back-from-postgres`;
      expect((await cairn(['import', fromSqlite, '--store', back])).code).toBe(0);

      // the sealed records pass through Postgres unchanged, checksums and all
      const lines = readLines(file).slice(1, -1);
      expect(readLines(fromPostgres).slice(1, -1)).toEqual(lines);
      expect(readLines(fromSqlite).slice(1, -1)).toEqual(lines);
      expect(JSON.parse(readLines(fromPostgres)[0]!)).toMatchObject({ sourceStore: 'postgres' });
      const original = await withStore(source, (s) => snapshotRun(s, 'job'));
      expect(original.problems).toEqual([]);
      expect(await withStore(postgres, (s) => snapshotRun(s, 'job'))).toEqual(original);
      expect(await withStore(sqlite, (s) => snapshotRun(s, 'job'))).toEqual(original);
      expect(await withStore(back, (s) => snapshotRun(s, 'job'))).toEqual(original);
    } finally {
      await dropSchema(schema);
    }
  });

  it('writes the documented format: header, sealed records, artifact chunks, trailer with sha256 and HMAC', async () => {
    const { file } = await exported({ key: KEY });
    const lines = readLines(file);
    const header = JSON.parse(lines[0]!);
    expect(header).toEqual({
      format: 'cairn-export',
      version: 1,
      type: 'header',
      runId: 'job',
      createdAt: expect.any(String),
      cairnVersion: expect.stringMatching(/^\d+\.\d+\.\d+/),
      sourceStore: 'file',
      withArtifacts: true,
    });
    const types = lines.slice(1, -1).map((l) => (JSON.parse(l) as { type: string }).type);
    expect(types[0]).toBe('run');
    expect(types.join(' ')).toMatch(/^run( checkpoint)+( items)+( artifact)+( file( chunk)+)+$/);
    const trailer = JSON.parse(lines.at(-1)!);
    const bytes = Buffer.from(
      lines
        .slice(0, -1)
        .map((l) => `${l}\n`)
        .join(''),
      'utf8',
    );
    expect(trailer).toEqual({
      type: 'end',
      runId: 'job',
      lines: lines.length - 1,
      bytes: bytes.length,
      sha256: createHash('sha256').update(bytes).digest('hex'),
      hmacSha256: createHmac('sha256', KEY).update(bytes).digest('hex'),
    });
    const raw = lines
      .filter((l) => l.includes('"path":"raw.bin"') && l.includes('"type":"chunk"'))
      .map((l) => JSON.parse(l) as { offset: number });
    expect(raw.length).toBeGreaterThan(1); // 300 kB in 192 KiB chunks
    expect(raw.map((c) => c.offset)).toEqual([0, 192 * 1024]);
  });

  it('checks signatures: the right key imports, a wrong or missing one is refused, a signed file needs the key or --allow-unverified', async () => {
    const signed = await exported({ key: KEY });
    const unsigned = await exported();
    const target = (name: string): string => path.join(signed.dir, name);
    const stripped = target('stripped.cairn');
    const lines = readLines(signed.file);
    const trailer = JSON.parse(lines.at(-1)!);
    delete trailer.hmacSha256;
    writeLines(stripped, [...lines.slice(0, -1), JSON.stringify(trailer)]);

    const refused = await Promise.all([
      cairn(['import', signed.file, '--store', `file:${target('wrong-key')}`], { env: { CAIRN_EXPORT_KEY: 'not the key' } }),
      cairn(['import', stripped, '--store', `file:${target('stripped')}`], { env: { CAIRN_EXPORT_KEY: KEY } }),
      cairn(['import', unsigned.file, '--store', `file:${target('unsigned')}`], { env: { CAIRN_EXPORT_KEY: KEY } }),
      cairn(['import', signed.file, '--store', `file:${target('no-key')}`]),
    ]);
    for (const [i, result] of refused.entries()) {
      expect({ i, code: result.code, error: errorCode(result) }).toEqual({ i, code: 2, error: 'IMPORT_INVALID' });
    }
    expect(refused[0].stderr).toContain('signature does not match');
    expect(refused[1].stderr).toContain('not signed');
    expect(refused[3].stderr).toContain('--allow-unverified');
    for (const name of ['wrong-key', 'stripped', 'unsigned', 'no-key']) expect(listTree(target(name))).toBeUndefined();

    const ok = await cairn(['import', signed.file, '--store', `file:${target('ok')}`, '--json'], { env: { CAIRN_EXPORT_KEY: KEY } });
    expect(ok.code).toBe(0);
    expect(json<ImportSummary>(ok).signature).toBe('valid');
    const unchecked = await cairn(['import', signed.file, '--store', `file:${target('unchecked')}`, '--allow-unverified']);
    expect(unchecked.code).toBe(0);
    expect(unchecked.stdout).toContain('signature NOT checked');
    expect(unchecked.stderr).toContain('warning: the signature was not checked');
  });

  it('refuses damaged, truncated, spliced and foreign files with exit 2 and writes nothing', async () => {
    const { dir, file } = await exported();
    const other = await exported({ runId: 'other-job' });
    const lines = readLines(file);
    const checkpoint = indexOfType(lines, 'checkpoint');
    const chunk = indexOfType(lines, 'chunk');
    const flipChunk = (): string[] => {
      const out = [...lines];
      const value = JSON.parse(out[chunk]!);
      const bytes = Buffer.from(value.data, 'base64');
      bytes[Math.floor(bytes.length / 2)]! ^= 0x01;
      value.data = bytes.toString('base64');
      out[chunk] = JSON.stringify(value);
      return out;
    };
    const withHeader = (edit: (h: Record<string, unknown>) => void): string[] => {
      const header = JSON.parse(lines[0]!);
      edit(header);
      return [JSON.stringify(header), ...lines.slice(1)];
    };
    const bytes = fs.readFileSync(file);
    fs.mkdirSync(path.join(dir, 'bad'));
    const at = (name: string): string => path.join(dir, 'bad', `${name}.cairn`);
    /** [what, file name, how the file is made, expected error code] */
    const cases: [string, string, (file: string) => void, string][] = [
      ['flipped record byte', 'flipped-record', (f) => writeLines(f, flipInRecord(lines, checkpoint)), 'IMPORT_INVALID'],
      [
        'flipped record byte, trailer recomputed',
        'flipped-record-resealed',
        (f) => writeResealed(f, flipInRecord(lines, checkpoint)),
        'IMPORT_INVALID',
      ],
      ['flipped artifact byte', 'flipped-artifact', (f) => writeLines(f, flipChunk()), 'IMPORT_INVALID'],
      ['flipped artifact byte, trailer recomputed', 'flipped-artifact-resealed', (f) => writeResealed(f, flipChunk()), 'IMPORT_INVALID'],
      [
        'truncated mid-line',
        'truncated-mid',
        (f) => fs.writeFileSync(f, bytes.subarray(0, Math.floor(bytes.length / 2))),
        'IMPORT_INVALID',
      ],
      ['trailer cut off', 'no-trailer', (f) => writeLines(f, lines.slice(0, -1)), 'IMPORT_INVALID'],
      [
        'artifact file cut off, trailer recomputed',
        'no-artifact',
        (f) =>
          writeResealed(
            f,
            lines.filter((_, i) => i < chunk - 1 || i === lines.length - 1),
          ),
        'IMPORT_INVALID',
      ],
      ['header of another run', 'other-header', (f) => writeLines(f, [readLines(other.file)[0]!, ...lines.slice(1)]), 'IMPORT_INVALID'],
      [
        'trailer of another run',
        'other-trailer',
        (f) => writeLines(f, [...lines.slice(0, -1), readLines(other.file).at(-1)!]),
        'IMPORT_INVALID',
      ],
      ['a line after the trailer', 'appended', (f) => writeLines(f, [...lines, lines[1]!]), 'IMPORT_INVALID'],
      [
        'newer format',
        'newer',
        (f) =>
          writeLines(
            f,
            withHeader((h) => (h.version = 2)),
          ),
        'FORMAT_TOO_NEW',
      ],
      ['not an export', 'foreign', (f) => fs.writeFileSync(f, '{"hello":"world"}\n'), 'IMPORT_INVALID'],
      ['binary garbage', 'garbage', (f) => fs.writeFileSync(f, Buffer.from([0, 159, 146, 150, 10, 255])), 'IMPORT_INVALID'],
      ['empty file', 'empty', (f) => fs.writeFileSync(f, ''), 'IMPORT_INVALID'],
      [
        'hostile run id in the header',
        'hostile-header',
        (f) =>
          writeResealed(
            f,
            withHeader((h) => (h.runId = '../../etc')),
          ),
        'INVALID_RUN_ID',
      ],
      [
        'NUL in the run id',
        'nul-header',
        (f) =>
          writeResealed(
            f,
            withHeader((h) => (h.runId = 'job\0x')),
          ),
        'INVALID_RUN_ID',
      ],
      [
        'artifact path escaping the run folder, trailer recomputed',
        'escape',
        (f) => {
          const out = [...lines];
          const index = indexOfType(out, 'artifact');
          const value = JSON.parse(out[index]!);
          value.line = resealRecord(value.line, (body) => body.replace(/"path":"[^"]+"/, '"path":"../../escaped.txt"'));
          out[index] = JSON.stringify(value);
          writeResealed(f, out);
        },
        'IMPORT_INVALID',
      ],
      ['missing file', 'does-not-exist', () => undefined, 'INVALID_INPUT'],
    ];
    for (const [, name, write] of cases) write(at(name));
    // the CLI takes most files; the rest go through the same first pass in this process (faster)
    const inProcess = new Set(['flipped-artifact', 'no-artifact', 'appended', 'garbage', 'empty', 'does-not-exist']);
    const results = await Promise.all(
      cases.map(async ([, name]) => {
        if (!inProcess.has(name)) return cairn(['import', at(name), '--store', `file:${path.join(dir, 'stores', name)}`, '--json']);
        const error = await verifyExportFile(at(name), { key: undefined }).then(
          () => undefined,
          (e: unknown) => e as { code: string; message: string },
        );
        const stdout = error ? JSON.stringify({ error: { code: error.code } }) : '';
        return { code: error ? 2 : 0, stdout, stderr: error ? `error ${error.code}: ${error.message}\n` : '' };
      }),
    );
    const byName = new Map(cases.map(([, name], i) => [name, results[i]!]));
    for (const [i, [name, , , code]] of cases.entries()) {
      const result = results[i]!;
      // --json: stdout holds the error document and nothing else
      const document = JSON.parse(result.stdout) as { error: { code: string } };
      expect({ name, exit: result.code, code: errorCode(result), json: document.error.code }).toEqual({ name, exit: 2, code, json: code });
      expect(result.stderr.split('\n').filter(Boolean)).toHaveLength(1); // one line, no stack
    }
    expect(byName.get('flipped-record-resealed')!.stderr).toContain('checksum mismatch'); // the record's CRC catches what the trailer no longer does
    expect(byName.get('flipped-artifact-resealed')!.stderr).toContain('the bytes of artifact');
    expect(byName.get('no-trailer')!.stderr).toContain('truncated');
    expect(byName.get('newer')!.stderr).toContain('Upgrade cairnjs');
    expect(listTree(path.join(dir, 'stores'))).toBeUndefined();
    expect(fs.existsSync(path.join(dir, 'escaped.txt'))).toBe(false);
  });

  it('refuses an existing run unless --overwrite, and never replaces a run a live process holds', async () => {
    const { dir, source, file } = await exported();
    const target = `file:${dir}/target`;
    await makeRun(target, 'job', 5);
    const before = await withStore(target, (s) => snapshotRun(s, 'job'));
    const exists = await cairn(['import', file, '--store', target]);
    expect([exists.code, errorCode(exists)]).toEqual([2, 'ALREADY_EXISTS']);
    expect(exists.stderr).toContain('--overwrite');
    expect(await withStore(target, (s) => snapshotRun(s, 'job'))).toEqual(before);

    const store = await (await import('../../src/stores/open-store.js')).openStore(target);
    try {
      const lease = await store.acquireLock('job', { owner: 'test holder' });
      const locked = await cairn(['import', file, '--store', target, '--overwrite']);
      expect([locked.code, errorCode(locked)]).toEqual([1, 'RUN_LOCKED']);
      expect(locked.stderr).toContain('test holder');
      await store.releaseLock(lease);
    } finally {
      await store.close();
    }
    expect(await withStore(target, (s) => snapshotRun(s, 'job'))).toEqual(before);

    const replaced = await cairn(['import', file, '--store', target, '--overwrite', '--json']);
    expect(replaced.code).toBe(0);
    expect(json<ImportSummary>(replaced).overwritten).toBe(true);
    expect(await withStore(target, (s) => snapshotRun(s, 'job'))).toEqual(await withStore(source, (s) => snapshotRun(s, 'job')));
  });

  it('over leftover records (a run record removed by hand) imports only with --overwrite, which removes them', async () => {
    const { dir, source, file } = await exported();
    for (const target of [`file:${dir}/target`, `sqlite:${dir}/target.db`]) {
      await makeRun(target, 'job', 5);
      await removeRunRecord(target, 'job');
      const refused = await cairn(['import', file, '--store', target]);
      expect([refused.code, errorCode(refused)], refused.stderr).toEqual([1, 'LEFTOVER_RECORDS']);
      const replaced = await cairn(['import', file, '--store', target, '--overwrite', '--json']);
      expect(replaced.code, replaced.stderr).toBe(0);
      expect(await withStore(target, (s) => snapshotRun(s, 'job'))).toEqual(await withStore(source, (s) => snapshotRun(s, 'job')));
      const validated = await cairn(['validate', 'job', '--store', target, '--json']);
      expect(validated.code, validated.stdout).toBe(0);
    }
  });

  it('imports an export without artifact bytes and says the files must be copied', async () => {
    const { dir, file } = await exported({ withArtifacts: false });
    expect(readLines(file).some((l) => l.includes('"type":"chunk"'))).toBe(false);
    const sqlite = `sqlite:${dir}/copy.db`;
    const result = await cairn(['import', file, '--store', sqlite, '--json']);
    expect(result.code).toBe(0);
    expect(json<ImportSummary>(result).warnings).toEqual([expect.stringContaining('no artifact bytes')]);
    const check = await cairn(['validate', 'job', '--store', sqlite, '--json']);
    expect(check.code).toBe(1);
    expect(
      json<ValidateReport>(check)
        .runs[0]!.problems.map((p) => [p.code, p.where])
        .sort(),
    ).toEqual([
      ['ARTIFACT_MISMATCH', 'artifact:out/report.txt'],
      ['ARTIFACT_MISMATCH', 'artifact:raw.bin'],
    ]);
  });

  it.each(['file', 'sqlite'] as const)(
    'exports a damaged %s run without its damaged records, with a warning, and the file imports',
    async (kind) => {
      const dir = tempDir();
      const url = kind === 'file' ? `file:${dir}/source` : `sqlite:${dir}/source.db`;
      await makeRun(url, 'job');
      if (kind === 'file') {
        mutateFileLine(path.join(dir, 'source'), 'job', 'checkpoints.jsonl', (_line, index) => index === 1, flipByte);
      } else {
        const db = new Database(path.join(dir, 'source.db'));
        const line = db.prepare('SELECT line FROM cairn_checkpoints WHERE run_id = ? AND seq = 2').pluck().get('job') as string;
        db.prepare('UPDATE cairn_checkpoints SET line = ? WHERE run_id = ? AND seq = 2').run(flipByte(line), 'job');
        db.close();
      }
      const file = path.join(dir, 'job.cairn');
      const result = await cairn(['export', 'job', file, '--with-artifacts', '--store', url, '--json']);
      expect(result.code).toBe(0);
      const summary = json<ExportSummary>(result);
      expect(summary.warnings).toEqual([expect.stringContaining('1 problem (CHECKPOINT_CORRUPT at checkpoints #2)')]);
      const text = await cairn(['export', 'job', path.join(dir, 'plain.cairn'), '--store', url]);
      expect(text.stderr).toMatch(/^warning: run job has 1 problem/);
      const target = `file:${dir}/target`;
      expect((await cairn(['import', file, '--store', target])).code).toBe(0);
      const copy = await withStore(target, (store) => snapshotRun(store, 'job'));
      expect(copy.problems).toEqual([]);
      expect((copy.checkpoints as { seq: number }[]).map((c) => c.seq)).not.toContain(2);
    },
  );

  it('removes an imported run again when its artifact files cannot be written', async () => {
    const { dir, file } = await exported();
    const blocker = path.join(dir, 'a-file');
    fs.writeFileSync(blocker, 'not a folder');
    const memory = new MemoryStore();
    Object.defineProperty(memory, 'artifactDir', { value: (runId: string) => path.join(blocker, runId) });
    try {
      await expect(importExportFile(memory, file, { key: undefined })).rejects.toMatchObject({ code: 'ENOTDIR' });
      expect(await memory.listRunIds()).toEqual([]);
    } finally {
      await memory.close();
    }
  });

  it('leaves the existing run as it was when an --overwrite import fails', async () => {
    const { dir, file } = await exported();
    const target = `file:${dir}/target`;
    expect((await cairn(['import', file, '--store', target])).code).toBe(0);
    const before = await withStore(target, (store) => snapshotRun(store, 'job'));
    // the file changes between the verifying pass and the import: its artifact bytes, then a record
    const verified = await verifyExportFile(file, { key: undefined, overwrite: true });
    const lines = fs.readFileSync(file, 'utf8').split('\n');
    const chunk = lines.findIndex((l) => l.includes('"type":"chunk"'));
    const record = lines.findIndex((l) => l.includes('"type":"checkpoint"'));
    for (const index of [chunk, record]) {
      const copy = [...lines];
      copy[index] = flipByte(copy[index]!);
      fs.writeFileSync(file, copy.join('\n'));
      await withStore(target, async (store) => {
        await expect(importExportFile(store, file, { key: undefined, overwrite: true }, verified)).rejects.toMatchObject({
          code: 'IMPORT_INVALID',
        });
        expect(await snapshotRun(store, 'job')).toEqual(before);
      });
    }
    expect(fs.readdirSync(path.join(dir, 'target', 'job')).filter((name) => name.includes('.import'))).toEqual([]);
  });

  it('export: unknown runs, changed artifacts and missing folders fail without leaving a file', async () => {
    const dir = tempDir();
    const source = `file:${dir}/source`;
    await makeRun(source, 'job');
    fs.mkdirSync(path.join(dir, 'out'));
    const out = (name: string): string => path.join(dir, 'out', name);
    const unknown = await cairn(['export', 'nope', out('nope.cairn'), '--store', source]);
    expect([unknown.code, errorCode(unknown)]).toEqual([2, 'NOT_FOUND']);
    const noFolder = await cairn(['export', 'job', path.join(dir, 'missing', 'x.cairn'), '--store', source]);
    expect([noFolder.code, errorCode(noFolder)]).toEqual([2, 'INVALID_INPUT']);

    fs.appendFileSync(path.join(dir, 'source', 'job', 'artifacts', 'out', 'report.txt'), 'changed');
    const changed = await cairn(['export', 'job', out('job.cairn'), '--with-artifacts', '--store', source]);
    expect([changed.code, errorCode(changed)]).toEqual([1, 'ARTIFACT_MISMATCH']);
    expect(changed.stderr).toContain('cairn validate job');
    expect(fs.readdirSync(path.join(dir, 'out'))).toEqual([]); // no export, no temp file

    fs.writeFileSync(out('job.cairn'), 'an older export');
    const plain = await cairn(['export', 'job', out('job.cairn'), '--store', source]);
    expect(plain.code).toBe(0);
    expect(plain.stdout).toContain('2 artifact records, files not included');
    expect(fs.readdirSync(path.join(dir, 'out'))).toEqual(['job.cairn']);
    expect(readLines(out('job.cairn'))[0]).toContain('"withArtifacts":false');
  });

  it('refuses hostile run ids with INVALID_RUN_ID and creates nothing', async () => {
    const dir = tempDir();
    const store = path.join(dir, 'store');
    const ids = ['../../etc', '/abs/path', 'x'.repeat(200), '..', 'a/b', ''];
    const results = await Promise.all(ids.map((id) => cairn(['export', id, path.join(dir, 'x.cairn'), '--store', `file:${store}`])));
    for (const [i, result] of results.entries()) {
      expect({ id: ids[i], exit: result.code, code: errorCode(result) }).toEqual({ id: ids[i], exit: 2, code: 'INVALID_RUN_ID' });
    }
    expect(listTree(dir)).toEqual([]);
  });
});
