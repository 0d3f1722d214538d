/**
 * What makes a completed stage run again, on every store: a changed fingerprint (version, config,
 * input file content, an upstream change in a DAG), a missing or altered artifact, a damaged
 * checkpoint. Upstream stages never rerun; `onChange: 'refuse'` stops before any stage runs.
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { pipeline, type StageOptions } from '../../src/engine/pipeline.js';
import type { ArtifactRef } from '../../src/engine/types.js';
import { Counter, damageCheckpoint, record, useCairns, withStore } from './engine-helpers.js';
import { ENGINE_STORES } from './store-matrix.js';

const inputDir = fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-engine-inputs-'));
afterAll(() => fsp.rm(inputDir, { recursive: true, force: true }));
let inputCounter = 0;

type Options = StageOptions<unknown, Record<string, unknown>>;

/** Stages a → b → c counting their calls; `bOptions` vary between "deploys" of the same pipeline. */
function abc(calls: Counter, bOptions: Options = {}, pipelineOptions: { onChange?: 'rerun' | 'refuse' } = {}) {
  return pipeline('fp', pipelineOptions)
    .stage('a', () => {
      calls.hit('a');
      return 1;
    })
    .stage(
      'b',
      (ctx) => {
        calls.hit('b');
        return { a: ctx.output('a'), config: ctx.config };
      },
      bOptions,
    )
    .stage('c', (ctx) => {
      calls.hit('c');
      return { b: ctx.output('b') };
    });
}

const callsOf = (calls: Counter, names: readonly string[]): number[] => names.map((n) => calls.of(n));

describe.each(ENGINE_STORES)('fingerprints and artifacts on $name', (kind) => {
  const open = useCairns();

  describe('fingerprints', () => {
    it('reruns a stage whose version changed, and its downstream, not upstream; history and events say why', async () => {
      const cairn = open(await kind.freshUrl());
      const calls = new Counter();
      const first = await cairn.run(abc(calls, { version: '1' }), {});
      expect(first.status).toBe('completed');
      calls.reset();
      const starts = record(cairn, 'stage:start');
      const skips = record(cairn, 'stage:skip');
      const second = await cairn.run(abc(calls, { version: '2' }), {});
      expect(second.id).toBe(first.id);
      expect(second.status).toBe('completed');
      expect(callsOf(calls, ['a', 'b', 'c'])).toEqual([0, 1, 1]);
      expect(skips.map((s) => s.stage)).toEqual(['a']);
      expect(starts.map((s) => s.stage)).toEqual(['b', 'c']);
      expect(starts[0]?.reason).toContain('version 1 → 2');
      expect(starts[1]?.reason).toContain('upstream');
      const rerunB = second.history.find((h) => h.event === 'stage:rerun' && h.stage === 'b');
      expect(rerunB?.message).toContain('version');
      expect(second.history.some((h) => h.event === 'stage:rerun' && h.stage === 'a')).toBe(false);
      expect(second.stages.map((s) => s.runs)).toEqual([1, 2, 2]);
      expect(second.attempts).toHaveLength(2);

      // and the new version is now the completed one: cached again
      calls.reset();
      const third = await cairn.run(abc(calls, { version: '2' }), {});
      expect(callsOf(calls, ['a', 'b', 'c'])).toEqual([0, 0, 0]);
      expect(third.attempts).toHaveLength(2);
    });

    it('reruns a stage whose config changed, with its downstream', async () => {
      const cairn = open(await kind.freshUrl());
      const calls = new Counter();
      await cairn.run(abc(calls, { config: { model: 'small', beams: 2 } }), {});
      calls.reset();
      const same = await cairn.run(abc(calls, { config: { beams: 2, model: 'small' } }), {});
      expect(callsOf(calls, ['a', 'b', 'c'])).toEqual([0, 0, 0]); // key order does not matter
      expect(same.status).toBe('completed');

      const starts = record(cairn, 'stage:start');
      const changed = await cairn.run(abc(calls, { config: { model: 'large', beams: 2 } }), {});
      expect(changed.status).toBe('completed');
      expect(callsOf(calls, ['a', 'b', 'c'])).toEqual([0, 1, 1]);
      expect(starts[0]).toMatchObject({ stage: 'b' });
      expect(starts[0]?.reason).toContain('config');
      expect(changed.result).toEqual({ b: { a: 1, config: { model: 'large', beams: 2 } } });
    });

    it("refuses a changed stage with onChange: 'refuse' before calling any stage", async () => {
      const cairn = open(await kind.freshUrl());
      const calls = new Counter();
      await cairn.run(abc(calls, { version: '1', onChange: 'refuse' }), {});
      calls.reset();
      const refused = await cairn.run(abc(calls, { version: '2', onChange: 'refuse' }), {});
      expect(refused.status).toBe('failed');
      expect(refused.error).toMatchObject({ code: 'FINGERPRINT_CHANGED', stage: 'b' });
      expect(callsOf(calls, ['a', 'b', 'c'])).toEqual([0, 0, 0]);

      // the pipeline-wide setting works the same way
      const url = await kind.freshUrl();
      const other = open(url);
      await other.run(abc(calls, { version: '1' }, { onChange: 'refuse' }), {});
      calls.reset();
      const refusedToo = await other.run(abc(calls, { version: '2' }, { onChange: 'refuse' }), {});
      expect(refusedToo.error?.code).toBe('FINGERPRINT_CHANGED');
      expect(callsOf(calls, ['a', 'b', 'c'])).toEqual([0, 0, 0]);
    });

    it('reruns a stage when the content of one of its input files changes', async () => {
      const cairn = open(await kind.freshUrl());
      const file = path.join(inputDir, `glossary-${++inputCounter}.txt`);
      await fsp.writeFile(file, 'alpha');
      const calls = new Counter();
      const def = () =>
        pipeline('files')
          .stage('load', () => {
            calls.hit('load');
            return 'loaded';
          })
          .stage(
            'use',
            () => {
              calls.hit('use');
              return fs.readFileSync(file, 'utf8');
            },
            { inputs: [file] },
          )
          .stage('report', (ctx) => {
            calls.hit('report');
            return `report of ${ctx.output('use')}`;
          });
      expect((await cairn.run(def(), {})).result).toBe('report of alpha');
      calls.reset();
      await cairn.run(def(), {});
      expect(callsOf(calls, ['load', 'use', 'report'])).toEqual([0, 0, 0]);

      await fsp.writeFile(file, 'alpha, beta');
      const starts = record(cairn, 'stage:start');
      const changed = await cairn.run(def(), {});
      expect(changed.result).toBe('report of alpha, beta');
      expect(callsOf(calls, ['load', 'use', 'report'])).toEqual([0, 1, 1]);
      expect(starts[0]?.reason).toContain('input file');
    });

    it('reruns only the dependents of a changed stage in a dependsOn DAG', async () => {
      const cairn = open(await kind.freshUrl());
      const calls = new Counter();
      const dag = (leftVersion: string) =>
        pipeline('dag')
          .stage('source', () => {
            calls.hit('source');
            return 2;
          })
          .stage(
            'left',
            (ctx) => {
              calls.hit('left');
              return ctx.output('source') * (leftVersion === '1' ? 10 : 100);
            },
            { dependsOn: ['source'], version: leftVersion },
          )
          .stage(
            'right',
            (ctx) => {
              calls.hit('right');
              return ctx.output('source') + 1;
            },
            { dependsOn: ['source'] },
          )
          .stage(
            'leftOnly',
            (ctx) => {
              calls.hit('leftOnly');
              return ctx.output('left') + 1;
            },
            { dependsOn: ['left'] },
          )
          .stage(
            'join',
            (ctx) => {
              calls.hit('join');
              return [ctx.output('leftOnly'), ctx.output('right')];
            },
            { dependsOn: ['leftOnly', 'right'] },
          );
      expect((await cairn.run(dag('1'), {})).result).toEqual([21, 3]);
      calls.reset();
      const changed = await cairn.run(dag('2'), {});
      expect(changed.result).toEqual([201, 3]);
      expect(callsOf(calls, ['source', 'left', 'right', 'leftOnly', 'join'])).toEqual([0, 1, 0, 1, 1]);
    });
  });

  describe('artifacts', () => {
    const bytes = Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 7) % 256));
    const sha256 = createHash('sha256').update(bytes).digest('hex');

    function producer(calls: Counter, refs: ArtifactRef[] = []) {
      return pipeline('artifacts')
        .stage('fetch', () => {
          calls.hit('fetch');
          return 'fetched';
        })
        .stage('render', (ctx) => {
          calls.hit('render');
          const file = ctx.artifactPath('out/x.bin');
          fs.writeFileSync(file, bytes);
          const ref = ctx.artifact(file);
          refs.push(ref);
          return { file: ref };
        })
        .stage('publish', (ctx) => {
          calls.hit('publish');
          return { published: ctx.output('render').file.name };
        });
    }

    it('records an artifact with its name, size and sha256', async () => {
      const url = await kind.freshUrl();
      const cairn = open(url);
      const refs: ArtifactRef[] = [];
      const run = await cairn.run(producer(new Counter(), refs), {});
      expect(run.status).toBe('completed');
      expect(refs).toHaveLength(1);
      const ref = refs[0]!;
      expect(ref).toMatchObject({ name: 'out/x.bin', size: 4096, sha256 });
      expect(fs.readFileSync(ref.path)).toEqual(bytes);
      const manifest = await withStore(url, async (store) => {
        expect(ref.path).toBe(path.join(store.artifactDir(run.id), 'out', 'x.bin'));
        return store.listArtifacts(run.id);
      });
      expect(manifest).toEqual([expect.objectContaining({ path: 'out/x.bin', size: 4096, sha256, stage: 'render' })]);
    });

    it.each([
      ['deleted', (file: string) => fs.rmSync(file)],
      ['truncated', (file: string) => fs.truncateSync(file, 100)],
      ['overwritten with the same size', (file: string) => fs.writeFileSync(file, Buffer.alloc(4096, 1))],
    ])('reruns the producing stage and its downstream when the artifact is %s', async (_, damage) => {
      const cairn = open(await kind.freshUrl());
      const calls = new Counter();
      const refs: ArtifactRef[] = [];
      await cairn.run(producer(calls, refs), {});
      calls.reset();
      const cached = await cairn.run(producer(calls, refs), {});
      expect(cached.status).toBe('completed');
      expect(callsOf(calls, ['fetch', 'render', 'publish'])).toEqual([0, 0, 0]);

      damage(refs[0]!.path);
      const warnings = record(cairn, 'warning');
      const rerun = await cairn.run(producer(calls, refs), {});
      expect(rerun.status).toBe('completed');
      expect(callsOf(calls, ['fetch', 'render', 'publish'])).toEqual([0, 1, 1]);
      const why = rerun.history.find((h) => h.event === 'stage:rerun' && h.stage === 'render');
      expect(why?.message).toContain('ARTIFACT_MISMATCH');
      expect(warnings.map((w) => [w.code, w.stage])).toEqual([['ARTIFACT_MISMATCH', 'render']]);
      expect(fs.readFileSync(refs[0]!.path)).toEqual(bytes);

      calls.reset();
      await cairn.run(producer(calls, refs), {});
      expect(callsOf(calls, ['fetch', 'render', 'publish'])).toEqual([0, 0, 0]);
    });

    /** An "outside" folder (an /etc/hostname stand-in in it) and a hash of all it holds. */
    function outsideFolder(): { dir: string; hostname: string; hash: () => string } {
      const dir = fs.mkdtempSync(path.join(inputDir, 'outside-'));
      const hostname = path.join(dir, 'hostname');
      fs.writeFileSync(hostname, 'a-precious-host\n');
      const hash = (): string => {
        const h = createHash('sha256');
        for (const name of (fs.readdirSync(dir, { recursive: true }) as string[]).sort()) {
          const file = path.join(dir, name);
          h.update(`${name}\0`)
            .update(fs.lstatSync(file).isFile() ? fs.readFileSync(file) : 'folder')
            .update('\0');
        }
        return h.digest('hex');
      };
      return { dir, hostname, hash };
    }

    it.each([
      ['replaced by a link to an outside file', (file: string, target: string) => fs.symlinkSync(target, file), 'is a link at'],
      ['replaced by a hard link to an outside file', (file: string, target: string) => fs.linkSync(target, file), 'bytes'],
      ['replaced by a FIFO', (file: string) => spawnSync('mkfifo', [file]), 'is not a regular file at'],
    ])('an artifact %s is a mismatch, and the rerun writes a regular file in the run folder, never the target', async (_, plant, says) => {
      const cairn = open(await kind.freshUrl());
      const calls = new Counter();
      const refs: ArtifactRef[] = [];
      await cairn.run(producer(calls, refs), {});
      const file = refs[0]!.path;
      const outside = outsideFolder();
      const before = outside.hash();
      fs.rmSync(file);
      plant(file, outside.hostname);
      calls.reset();
      const warnings = record(cairn, 'warning');
      const rerun = await cairn.run(producer(calls, refs), {});
      expect(rerun.status).toBe('completed');
      expect(callsOf(calls, ['fetch', 'render', 'publish'])).toEqual([0, 1, 1]);
      expect(warnings.map((w) => [w.code, w.stage])).toEqual([['ARTIFACT_MISMATCH', 'render']]);
      const why = rerun.history.find((h) => h.event === 'stage:rerun' && h.stage === 'render')?.message ?? '';
      expect(why).toContain(says);
      if (says !== 'bytes') expect(why).toContain(file);
      expect(outside.hash()).toBe(before);
      const stat = fs.lstatSync(file);
      expect([stat.isFile(), stat.nlink]).toEqual([true, 1]);
      expect(fs.readFileSync(file)).toEqual(bytes);
      calls.reset();
      await cairn.run(producer(calls, refs), {});
      expect(callsOf(calls, ['fetch', 'render', 'publish'])).toEqual([0, 0, 0]);
    });

    it('refuses an artifact folder (or a folder in it) that is a link with UNSAFE_PATH, writing nothing through it', async () => {
      const url = await kind.freshUrl();
      const cairn = open(url);
      const refs: ArtifactRef[] = [];
      const first = await cairn.run(producer(new Counter(), refs), {});
      const artifactDir = await withStore(url, (store) => Promise.resolve(store.artifactDir(first.id)));
      for (const folder of [path.join(artifactDir, 'out'), artifactDir]) {
        const outside = outsideFolder();
        fs.cpSync(folder, outside.dir, { recursive: true });
        fs.writeFileSync(path.join(outside.dir, 'x.bin'), 'not what was recorded');
        const before = outside.hash();
        fs.rmSync(folder, { recursive: true });
        fs.symlinkSync(outside.dir, folder);
        const calls = new Counter();
        const outcome = await cairn.run(producer(calls, refs), {}).then(
          (summary) => summary.error,
          (error: unknown) => error,
        );
        expect(outcome).toMatchObject({ code: 'UNSAFE_PATH', message: expect.stringContaining(folder) as unknown });
        expect(calls.of('render')).toBe(0);
        expect(outside.hash()).toBe(before);
        fs.rmSync(folder);
        fs.cpSync(outside.dir, folder, { recursive: true });
        fs.rmSync(path.join(folder, 'hostname'));
      }
    });

    it('ctx.artifact refuses a link in the artifact folder with UNSAFE_PATH', async () => {
      const cairn = open(await kind.freshUrl());
      const outside = outsideFolder();
      const run = await cairn.run(
        pipeline('link-artifact').stage('s', (ctx) => {
          const file = ctx.artifactPath('x');
          fs.symlinkSync(outside.hostname, file);
          return ctx.artifact(file);
        }),
        {},
      );
      expect(run.status).toBe('failed');
      expect(run.error).toMatchObject({ code: 'UNSAFE_PATH', stage: 's' });
      expect(run.error?.message).toContain('it is a link');
    });

    it('refuses artifacts outside the run folder and artifact names that escape it', async () => {
      const cairn = open(await kind.freshUrl());
      const outside = await cairn.run(
        pipeline('outside').stage('s', (ctx) => ctx.artifact('/etc/passwd')),
        {},
      );
      expect(outside.status).toBe('failed');
      expect(outside.error).toMatchObject({ code: 'INVALID_INPUT', stage: 's' });

      const sneaky = path.join(os.tmpdir(), 'not-an-artifact.bin');
      const elsewhere = await cairn.run(
        pipeline('elsewhere').stage('s', (ctx) => ctx.artifact(path.join(ctx.artifactPath('x'), '..', '..', '..', sneaky))),
        {},
      );
      expect(elsewhere.error?.code).toBe('INVALID_INPUT');

      for (const name of ['../x', '/abs', 'a/../../b', '', 'a\\b']) {
        const run = await cairn.run(
          pipeline('bad-name').stage('s', (ctx) => ctx.artifactPath(name)),
          {},
          { forceRestart: true },
        );
        expect([name, run.status, run.error?.code]).toEqual([name, 'failed', 'INVALID_INPUT']);
      }
    });
  });

  describe('damaged checkpoints', () => {
    it('reruns the stage whose checkpoint is damaged and its downstream, with a CHECKPOINT_CORRUPT warning', async () => {
      const url = await kind.freshUrl();
      const calls = new Counter();
      const cairn = open(url);
      const done = await cairn.run(abc(calls), {});
      expect(done.status).toBe('completed');
      await open.close(cairn);

      const refs = await withStore(url, (store) => store.listCheckpoints(done.id));
      const stageB = refs.find((e) => e.valid && e.ref.kind === 'stage' && e.ref.stage === 'b');
      expect(stageB?.valid).toBe(true);
      const seq = stageB?.valid ? stageB.ref.seq : -1;
      expect(seq).toBe(2);
      await damageCheckpoint(kind.name, url, done.id, seq);
      const listed = await withStore(url, (store) => store.listCheckpoints(done.id));
      expect(listed.map((e) => e.valid)).toEqual([true, false, true]);

      calls.reset();
      const again = open(url);
      const warnings = record(again, 'warning');
      const rerun = await again.run(abc(calls), {});
      expect(rerun.status).toBe('completed');
      expect(rerun.result).toEqual(done.result);
      expect(callsOf(calls, ['a', 'b', 'c'])).toEqual([0, 1, 1]);
      expect(warnings.map((w) => w.code)).toContain('CHECKPOINT_CORRUPT');
      expect(rerun.history.some((h) => h.event === 'checkpoint:damaged')).toBe(true);

      // the damaged record is superseded: nothing runs on the next visit
      calls.reset();
      const third = await again.run(abc(calls), {});
      expect(third.status).toBe('completed');
      expect(third.attempts).toHaveLength(rerun.attempts.length);
      expect(callsOf(calls, ['a', 'b', 'c'])).toEqual([0, 0, 0]);
    });
  });
});
