/**
 * `cairn submit` and `cairn worker` through the built binary on Postgres: exit codes, `--json`
 * lines, a waiting run continued by a resubmit with its input, and SIGTERM handing a held run back
 * with nothing redone. Stores without a queue refuse with `NOT_SUPPORTED` (exit 2).
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { Child, killAll } from '../e2e/child.js';
import { POSTGRES, dropSchema, freshSchema, postgresUrl } from '../postgres.js';
import { CLI, cairn, errorCode, json, useTempDirs } from './store-ops-helpers.js';

const FIXTURES = path.join(import.meta.dirname, 'fixtures');
const fixture = (name: string): string => path.join(FIXTURES, name);

interface Summary {
  readonly id: string;
  readonly status: string;
  readonly result?: unknown;
}

describe('cairn submit and worker on a store without a queue', () => {
  const tempDir = useTempDirs();
  it('refuse with NOT_SUPPORTED and exit 2', async () => {
    const store = `file:${path.join(tempDir(), 'store')}`;
    const submitted = await cairn(['submit', fixture('hello.mjs'), '--store', store]);
    expect(submitted.code).toBe(2);
    expect(errorCode(submitted)).toBe('NOT_SUPPORTED');
    const worker = await cairn(['worker', fixture('hello.mjs'), '--store', store, '--exit-when-idle']);
    expect(worker.code).toBe(2);
    expect(errorCode(worker)).toBe('NOT_SUPPORTED');
    expect(errorCode(await cairn(['worker', fixture('hello.mjs'), '--store', store, '--concurrency', '0']))).toBe('INVALID_INPUT');
  });
});

describe.skipIf(!POSTGRES.reachable)('cairn submit and worker on Postgres', () => {
  const tempDir = useTempDirs();
  const schemas: string[] = [];
  const freshStore = (): string => {
    const schema = freshSchema('cairn_cliw');
    schemas.push(schema);
    return postgresUrl(schema, { artifacts: path.join(tempDir(), 'artifacts') });
  };
  afterEach(killAll);
  afterAll(async () => {
    for (const schema of schemas) await dropSchema(schema);
  });

  it('queues a waiting workflow, and continues it once resubmitted with its input', async () => {
    const store = freshStore();
    const approval = fixture('approval.mjs');
    const queued = await cairn(['submit', approval, '--input', '{"ticket":"T-9"}', '--store', store, '--json']);
    expect(queued.code, queued.stderr).toBe(0);
    const { id, status } = json<Summary>(queued);
    expect(status).toBe('pending');
    const plain = await cairn(['submit', approval, '--input', '{"ticket":"T-9"}', '--store', store]);
    expect(plain.stdout).toContain(`queued ${id} (pending); a worker runs it: cairn worker ${approval} --store`);

    const first = await cairn(['worker', approval, '--store', store, '--json', '--exit-when-idle', '--poll-ms', '20']);
    expect(first.code, first.stderr).toBe(0);
    const lines = first.stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines[0]).toMatchObject({ event: 'claimed', runId: id, reason: 'queued', epoch: 1 });
    expect(lines).toContainEqual(expect.objectContaining({ event: 'ended', runId: id, status: 'waiting' }));
    expect(lines.at(-1)).toMatchObject({ event: 'report', claimed: 1, waiting: 1, completed: 0 });

    const resubmitted = await cairn([
      'submit',
      approval,
      '--input',
      '{"ticket":"T-9"}',
      '--set',
      'approval=true',
      '--store',
      store,
      '--json',
    ]);
    expect(json<Summary>(resubmitted).status).toBe('pending');
    const second = await cairn(['worker', approval, '--store', store, '--exit-when-idle', '--poll-ms', '20']);
    expect(second.code, second.stderr).toBe(0);
    expect(second.stdout).toContain(`completed ${id}`);
    expect(second.stdout).toContain('worker done: 1 claimed, 1 completed');
    const shown = json<Summary & { result: { outcome: string } }>(await cairn(['show', id, '--store', store, '--json']));
    expect(shown).toMatchObject({ status: 'completed', result: { outcome: 'approved T-9' } });
  });

  it('hands a run back on SIGTERM with nothing redone, and another worker finishes it', async () => {
    const store = freshStore();
    const dir = tempDir();
    const log = path.join(dir, 'effects.log');
    const env = { ...process.env, CAIRN_STORE: '', CAIRN_TEST_LOG: log, CAIRN_TEST_ITEM_MS: '60', NO_COLOR: '1' };
    const slow = fixture('slow-items.mjs');
    const { id } = json<Summary>(await cairn(['submit', slow, '--store', store, '--json']));

    const leaving = new Child(CLI, ['worker', slow, '--store', store, '--json', '--poll-ms', '20'], { env, cwd: dir });
    await leaving.waitForLine('{"event":"claimed"');
    while (!fs.existsSync(log) || fs.readFileSync(log, 'utf8').split('\n').length < 8) await new Promise((r) => setTimeout(r, 20));
    leaving.kill('SIGTERM');
    await leaving.expectExit(0);
    const ended = leaving.lines.map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(ended).toContainEqual(expect.objectContaining({ event: 'ended', runId: id, status: 'interrupted' }));
    expect(ended.at(-1)).toMatchObject({ event: 'report', claimed: 1, interrupted: 1 });

    const next = new Child(CLI, ['worker', slow, '--store', store, '--json', '--exit-when-idle', '--poll-ms', '20'], { env, cwd: dir });
    await next.expectExit(0);
    const events = next.lines.map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(events[0]).toMatchObject({ event: 'claimed', runId: id, reason: 'handed-back', epoch: 2 });
    expect(events.at(-1)).toMatchObject({ event: 'report', claimed: 1, completed: 1 });
    // every item ran exactly once across the two workers: SIGTERM let in-flight items finish and saved them
    const items = fs
      .readFileSync(log, 'utf8')
      .split('\n')
      .filter((l) => l.startsWith('item '));
    expect(items).toHaveLength(40);
    expect(new Set(items).size).toBe(40);
  });
});
