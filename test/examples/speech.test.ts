/**
 * examples/speech through the built `cairn` command, as its README runs it. An uninterrupted run
 * gives the reference transcript; a second run from scratch is SIGKILLed at random moments (armed
 * when transcription starts) and resumed until it completes: its transcript.json and .srt must be
 * byte-identical, no completed stage may start again, and the paid calls the stand-in provider
 * logged stay within segments + kills × (checkpointEvery + concurrency). Then: an untouched run is
 * returned from cache without a call; a truncated converted.wav reruns convert and everything after
 * it, saying ARTIFACT_MISMATCH; the replicate and identify paths write their files.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { TRANSCRIBE_ITEMS } from '../../examples/speech/provider.js';
import { Child, killAll, killLoop } from '../e2e/child.js';

const ROOT = path.resolve(import.meta.dirname, '..', '..');
const CLI = path.join(ROOT, 'dist', 'src', 'cli', 'main.js');
const MODULE = 'examples/speech/index.ts';
const TORTURE = process.env.CAIRN_TORTURE === '1';
const KILLS = TORTURE ? 50 : 6;
/** Longer recordings under torture: more segments, so that 50 kills land before transcription ends. */
const SECONDS = TORTURE ? 180 : 75;
/** Pretend latency of each transcription call in the killed runs, and how long after transcription starts a kill may land. */
const LATENCY_MS = 30;
const MAX_DELAY_MS = TORTURE ? 45 : 55;
const STAGES = ['convert', 'diarize', 'transcribe', 'merge', 'export'] as const;

const parent = fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-speech-'));
let failed = false;
afterEach((context) => {
  killAll();
  if (context.task.result?.state === 'fail') failed = true;
});
afterAll(() => {
  if (failed) console.error(`speech example test failed: kept ${parent}`);
  else fs.rmSync(parent, { recursive: true, force: true });
});

interface Place {
  readonly store: string;
  readonly outDir: string;
  readonly input: Record<string, unknown>;
}

function place(name: string, input: Record<string, unknown> = {}): Place {
  const dir = path.join(parent, name);
  const outDir = path.join(dir, 'out');
  return { store: `file:${path.join(dir, 'store')}`, outDir, input: { outDir, seconds: SECONDS, ...input } };
}

const runArgs = (p: Place): string[] => ['run', MODULE, '--store', p.store, '--input', JSON.stringify(p.input)];
const env = (latencyMs: number, extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv => ({
  ...process.env,
  CAIRN_SPEECH_LATENCY_MS: String(latencyMs),
  NO_COLOR: '1',
  FORCE_COLOR: '',
  ...extra,
});

async function run(p: Place, latencyMs = 0): Promise<Child> {
  const child = new Child(CLI, runArgs(p), { cwd: ROOT, env: env(latencyMs) });
  await child.expectExit(0);
  return child;
}

/** `cairn show <id> --json`. */
async function show(p: Place, runId: string): Promise<ShowDoc> {
  const child = new Child(CLI, ['show', runId, '--store', p.store, '--json'], { cwd: ROOT, env: env(0) });
  await child.expectExit(0);
  return JSON.parse(child.lines.join('\n')) as ShowDoc;
}

interface ShowDoc {
  status: string;
  stages: { name: string; status: string; runs: number }[];
  history: { event: string; stage?: string; message: string }[];
  checkpoints: { seq: number; valid: boolean; kind: string; stage?: string }[];
  artifacts: { path: string; sha256: string; stage?: string }[];
}

const runIdOf = (child: Child): string => /Run (speech-[0-9a-f]{16}) /.exec(child.lines.join('\n'))?.[1] ?? '';
const read = (p: Place, name: string): Buffer => fs.readFileSync(path.join(p.outDir, name));
const paidCalls = (p: Place): string[] => fs.readFileSync(path.join(p.outDir, 'paid-calls.log'), 'utf8').split('\n').slice(0, -1);
const sha256 = (bytes: Buffer): string => crypto.createHash('sha256').update(bytes).digest('hex');
const stderrLines = (child: Child): string[] => child.stderr.split('\n');

const reference = place('reference');
let segments = 0;

beforeAll(async () => {
  const first = await run(reference);
  expect(first.lines[0]).toMatch(/^Run speech-[0-9a-f]{16} completed/);
  const transcript = JSON.parse(read(reference, 'transcript.json').toString()) as { segments: unknown[]; speakers: unknown[] };
  segments = transcript.segments.length;
  expect(transcript.speakers).toHaveLength(3);
  expect(paidCalls(reference)).toHaveLength(segments);
}, 60_000);

describe('speech example', () => {
  const killed = place('killed');
  let kills = 0;

  it(`survives ${KILLS} SIGKILLs during transcription: same files, no stage twice, paid calls bounded`, { timeout: 120_000 }, async () => {
    // enough segments that transcription outlasts the kills (each attempt gets through a few at most)
    expect(segments).toBeGreaterThanOrEqual(Math.ceil(SECONDS / 2.5));
    const started = Date.now();
    const loop = await killLoop(CLI, runArgs(killed), {
      kills: KILLS,
      cwd: ROOT,
      env: env(LATENCY_MS, { CAIRN_SPEECH_TRACE: '1' }),
      armOn: 'trace transcribe started',
      maxDelayMs: MAX_DELAY_MS,
    });
    await loop.last.expectExit(0);
    kills = loop.kills;
    expect(kills).toBe(KILLS);

    expect(read(killed, 'transcript.json').equals(read(reference, 'transcript.json'))).toBe(true);
    expect(read(killed, 'transcript.srt').equals(read(reference, 'transcript.srt'))).toBe(true);

    // no completed stage started again: one completion checkpoint per stage…
    const doc = await show(killed, runIdOf(loop.last));
    expect(doc.status).toBe('completed');
    const completions = doc.checkpoints.filter((c) => c.valid && c.kind === 'stage').map((c) => c.stage);
    expect(completions.sort()).toEqual([...STAGES].sort());
    // …and no process printed "started" for a stage an earlier one had printed "completed" for
    const done = new Set<string>();
    for (const child of loop.children) {
      for (const stage of STAGES) if (done.has(stage)) expect(stderrLines(child)).not.toContain(`▸ ${stage}: started`);
      for (const line of stderrLines(child)) {
        const m = /^✓ (\w+): completed/.exec(line);
        if (m) done.add(m[1]!);
      }
    }

    const calls = paidCalls(killed);
    const bound = segments + kills * (TRANSCRIBE_ITEMS.checkpointEvery + TRANSCRIBE_ITEMS.concurrency);
    expect(new Set(calls.map((l) => l.split('\t')[0])).size).toBe(segments);
    expect(calls.length).toBeLessThanOrEqual(bound);
    console.log(
      `speech: ${kills} kills, ${loop.processes} processes, ${calls.length} paid calls for ${segments} segments ` +
        `(bound ${bound}), ${Date.now() - started} ms`,
    );
  });

  it('returns an untouched run from cache without a paid call', { timeout: 30_000 }, async () => {
    const before = paidCalls(killed).length;
    const cached = await run(killed);
    expect(cached.lines[0]).toMatch(/was already complete/);
    expect(cached.stderr).not.toContain('▸');
    expect(paidCalls(killed)).toHaveLength(before);
  });

  it('reruns convert and everything after it when converted.wav is truncated, and says why', { timeout: 30_000 }, async () => {
    const runId = runIdOf(await run(killed));
    const wav = path.join(killed.store.slice('file:'.length), runId, 'artifacts', 'converted.wav');
    fs.truncateSync(wav, 1000);
    const before = paidCalls(killed).length;

    const again = await run(killed);
    expect(again.lines[0]).toMatch(/completed/);
    const err = stderrLines(again);
    expect(err.find((l) => l.startsWith('▸ convert: started'))).toMatch(/ARTIFACT_MISMATCH: Artifact converted\.wav .* has 1000 bytes/);
    for (const stage of STAGES) expect(err.some((l) => l.startsWith(`▸ ${stage}: started`))).toBe(true);

    const doc = await show(killed, runId);
    const reruns = doc.history.filter((h) => h.event === 'stage:rerun');
    expect(reruns.find((h) => h.stage === 'convert')?.message).toContain('ARTIFACT_MISMATCH');
    expect(reruns.map((h) => h.stage)).toEqual([...STAGES]);
    expect(fs.statSync(wav).size).toBeGreaterThan(1000);
    // the rebuilt audio is the same, so diarize gives the same segments: transcription runs again,
    // but its finished segments are kept (their ledger's basis, the upstream output, is unchanged),
    // so no segment is paid for twice, and the transcript is the same
    expect(read(killed, 'transcript.json').equals(read(reference, 'transcript.json'))).toBe(true);
    expect(paidCalls(killed)).toHaveLength(before);
  });

  it('takes the replicate path: a verified copy of the converted audio', { timeout: 30_000 }, async () => {
    const p = place('reference', { path: 'replicate' });
    const child = await run(p);
    expect(child.stderr).toContain('↷ diarize: skipped (path is replicate, not full)');
    expect(child.stderr).toContain('↷ transcribe: skipped');
    expect(child.stderr).toContain('✓ replicate: completed');
    const manifest = JSON.parse(read(p, 'replica.json').toString()) as { sha256: string; bytes: number };
    const replica = read(p, 'replica.wav');
    expect(sha256(replica)).toBe(manifest.sha256);
    expect(replica.length).toBe(manifest.bytes);
    const doc = await show(p, runIdOf(child));
    expect(doc.artifacts.find((a) => a.path === 'converted.wav')?.sha256).toBe(manifest.sha256);
    expect(replica.toString('ascii', 0, 4)).toBe('RIFF');
    expect(replica.readUInt16LE(22)).toBe(1); // mono
    expect(replica.readUInt32LE(24)).toBe(16_000);
  });

  it('takes the identify path: one entry per speaker', { timeout: 30_000 }, async () => {
    const p = place('reference', { path: 'identify' });
    const child = await run(p);
    expect(child.stderr).toContain('✓ identify: completed');
    expect(child.stderr).toContain('↷ replicate: skipped');
    const summary = JSON.parse(read(p, 'speakers.json').toString()) as { speakers: { id: string; voice: string; turns: number }[] };
    expect(summary.speakers.map((s) => s.id)).toEqual(['S1', 'S2', 'S3']);
    expect(summary.speakers.map((s) => s.voice).sort()).toEqual(['high', 'low', 'middle']);
    expect(summary.speakers.reduce((n, s) => n + s.turns, 0)).toBe(segments);
  });
});
