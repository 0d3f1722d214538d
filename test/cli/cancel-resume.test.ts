/**
 * `cairn cancel <run-id>` through the built binary: a waiting run is cancelled at once and
 * `resume` then refuses it; a completed run stays completed; an unknown run is exit 2; a run held
 * by a live process is asked to stop, and that process stops it as `cancelled`. And `cairn resume
 * --module`, which finds the run's definition by its name.
 */
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { Cairn, pipeline } from '../../src/index.js';
import { Child } from '../e2e/child.js';
import { cairn, errorCode, json, useTempDirs } from './store-ops-helpers.js';

const ROOT = path.resolve(import.meta.dirname, '..', '..');

describe('cairn cancel', () => {
  const tempDir = useTempDirs();

  it('cancels a waiting run; a completed one stays completed; an unknown one is exit 2', async () => {
    const url = `file:${path.join(tempDir(), 'store')}`;
    const app = new Cairn({ store: url, handleSignals: false });
    const waiting = await app.run(
      pipeline('ask').stage('ask', async (ctx) => ctx.waitFor('approval')),
      {},
    );
    const done = await app.run(
      pipeline('done').stage('one', () => 1),
      {},
    );
    await app.close();
    expect(waiting.status).toBe('waiting');

    const cancelled = await cairn(['cancel', waiting.id, '--store', url]);
    expect(cancelled.code, cancelled.stderr).toBe(0);
    expect(cancelled.stdout).toBe(`Cancelled run ${waiting.id}.\n`);
    const shown = await cairn(['show', waiting.id, '--json', '--store', url]);
    expect(json<{ status: string }>(shown).status).toBe('cancelled');
    const resumed = await cairn(['resume', waiting.id, '--input', 'approval=true', '--store', url]);
    expect(resumed.code).toBe(2);
    expect(resumed.stderr).toMatch(/was cancelled/);

    const completed = await cairn(['cancel', done.id, '--store', url, '--json']);
    expect(completed.code, completed.stderr).toBe(0);
    expect(json<{ status: string }>(completed).status).toBe('completed');

    const unknown = await cairn(['cancel', 'no-such-run', '--store', url]);
    expect(unknown.code).toBe(2);
    expect(errorCode(unknown)).toBe('NOT_FOUND');
  });

  it('asks the live process holding a run to stop; it stops the run as cancelled', { timeout: 60_000 }, async () => {
    const dir = tempDir();
    const url = `file:${path.join(dir, 'store')}`;
    const script = path.join(dir, 'hold.mjs');
    // a run whose items wait until cancelled (each item ends when its signal aborts), with a short lease
    fs.writeFileSync(
      script,
      `import { Cairn, pipeline } from ${JSON.stringify(path.join(ROOT, 'dist', 'src', 'index.js'))};
const job = pipeline('held').stage('wait', (ctx) =>
  ctx.items('forever', [1, 2], (x, item) => new Promise((resolve) => {
    console.log('started ' + x);
    item.signal.addEventListener('abort', () => resolve(x));
  })),
);
const app = new Cairn({ store: ${JSON.stringify(url)}, lockTtlMs: 60_000, gracePeriodMs: 200, handleSignals: false });
const alive = setInterval(() => {}, 1000); // as a real call's socket would: the waiting items hold no handle of their own
const run = await app.run(job, {});
clearInterval(alive);
await app.close();
console.log('summary ' + JSON.stringify(run));
`,
    );
    const holder = new Child(script, []);
    await holder.waitForLine('started');
    const id = new Cairn({ store: 'memory:' }).runIdFor(pipeline('held'), {});
    // a 60 s lease is renewed every 20 s; the holder looks for a cancel request every second, and
    // the command waits for it to stop (well within 10 s, however loaded the machine)
    const asked = await cairn(['cancel', id, '--store', url, '--timeout', '10']);
    expect(asked.code, asked.stderr).toBe(0);
    expect(asked.stderr).toContain(`Asked the process holding run ${id} to stop; waiting for it`);
    expect(asked.stdout).toBe(`Cancelled run ${id}.\n`);
    await holder.expectExit(0);
    expect(await holder.json('summary')).toMatchObject({ status: 'cancelled' });
    const shown = await cairn(['show', id, '--json', '--store', url]);
    expect(json<{ status: string }>(shown).status).toBe('cancelled');
  });
});

describe('hints on a store given by --store', () => {
  const tempDir = useTempDirs();

  it("name that store and the run's input: a cancelled run's restart, a fork of a missing checkpoint, an unknown run", async () => {
    const dir = tempDir();
    const url = `sqlite:${path.join(dir, 'other.db')}`;
    const job = writeWaitingJob(dir, 'ask.mjs', 'ask');
    const started = await cairn(['run', job, '--input', '{"batch":"b2"}', '--store', url, '--json']);
    expect(started.code, started.stderr).toBe(3);
    const { id } = json<{ id: string }>(started);
    expect((await cairn(['cancel', id, '--store', url])).code).toBe(0);

    const restart = `cairn run ${job} --input '{"batch":"b2"}' --force-restart --store ${url}`;
    const resumed = await cairn(['resume', id, '--store', url]);
    expect(resumed.code).toBe(2);
    expect(resumed.stderr).toContain(`start it over with ${restart}.`);
    const shown = await cairn(['show', id, '--store', url, '--json']);
    expect(json<{ next: { message: string } }>(shown).next.message).toContain(`To start it over: ${restart}`);
    // the printed command does what it says: the same run, started over
    const again = await cairn(
      restart
        .split(' ')
        .slice(1)
        .map((a) => a.replace(/^'(.*)'$/, '$1')),
      { cwd: dir },
    );
    expect(again.code, again.stderr).toBe(3);
    expect(again.stdout).toContain(id);

    const fork = await cairn(['fork', id, '--from', '99', '--store', url]);
    expect(fork.code).toBe(2);
    // the checkpoints it has are named in the error itself: no command to copy onto the wrong store
    expect(fork.stderr).toContain(`Checkpoint 99 is not a checkpoint of run ${id} (it has none).\n`);
    const unknown = await cairn(['cancel', 'no-such-run', '--store', url]);
    expect(unknown.stderr).toContain(`Run no-such-run not found in ${url}`);
  });
});

describe('cairn resume --module', () => {
  const tempDir = useTempDirs();

  it("finds the run's definition by its name in a module without a default export; another name is a clear error", async () => {
    const url = `file:${path.join(tempDir(), 'store')}`;
    const fixture = path.join(import.meta.dirname, 'fixtures', 'no-default.mjs');
    // started through the API: the run records no module, so resume needs --module
    const app = new Cairn({ store: url, handleSignals: false });
    const failing = pipeline('first-pipeline').stage('a', () => {
      throw new Error('not yet');
    });
    const failed = await app.run(failing, {});
    await app.close();
    expect(failed.status).toBe('failed');

    const bare = await cairn(['resume', failed.id, '--store', url]);
    expect(bare.code).toBe(2);
    expect(bare.stderr).toMatch(/--module <file>/);
    const resumed = await cairn(['resume', failed.id, '--module', fixture, '--store', url, '--json']);
    expect(resumed.code, resumed.stderr).toBe(0);
    expect(json<{ status: string; result: unknown }>(resumed)).toMatchObject({ status: 'completed', result: 1 });

    const other = await app2Run(
      url,
      pipeline('third').stage('a', () => {
        throw new Error('not yet');
      }),
    );
    const wrong = await cairn(['resume', other, '--module', fixture, '--store', url]);
    expect(wrong.code).toBe(2);
    expect(wrong.stderr).toMatch(
      /exports no definition named third, the definition of run third-[0-9a-f]+; it exports first-pipeline, second-workflow/,
    );
  });

  it('a run whose module moved away: resume says so and names --module; with it, the run goes on', async () => {
    const dir = tempDir();
    const url = `file:${path.join(dir, 'store')}`;
    const job = writeWaitingJob(dir, 'job.mjs', 'moving');
    const started = await cairn(['run', job, '--store', url, '--json']);
    expect(started.code, started.stderr).toBe(3);
    const { id } = json<{ id: string }>(started);
    const moved = path.join(dir, 'moved.mjs');
    fs.renameSync(job, moved);
    const lost = await cairn(['resume', id, '--input', 'ok=true', '--store', url]);
    expect(lost.code).toBe(2);
    expect(lost.stderr).toContain(`was started from ${job}, which does not exist any more`);
    expect(lost.stderr).toContain(`cairn resume ${id} --module <file>`);
    const found = await cairn(['resume', id, '--input', 'ok=true', '--module', moved, '--store', url, '--json']);
    expect(found.code, found.stderr).toBe(0);
    expect(json<{ status: string; result: unknown }>(found)).toMatchObject({ status: 'completed', result: true });
  });
});

async function app2Run(url: string, def: Parameters<Cairn['run']>[0]): Promise<string> {
  const app = new Cairn({ store: url, handleSignals: false });
  try {
    return (await app.run(def, {})).id;
  } finally {
    await app.close();
  }
}

/** Writes `<dir>/<file>`: a pipeline named `name` whose one stage waits for input `ok`; returns its path. */
function writeWaitingJob(dir: string, file: string, name: string): string {
  const job = path.join(dir, file);
  fs.writeFileSync(
    job,
    `import { pipeline } from ${JSON.stringify(path.join(ROOT, 'dist', 'src', 'index.js'))};\n` +
      `export default pipeline(${JSON.stringify(name)}).stage('ask', (ctx) => ctx.waitFor('ok'));\n`,
  );
  return job;
}
