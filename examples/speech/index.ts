/**
 * A speech-processing pipeline (transcription, replication, speaker identification), on real audio,
 * as one cairn definition with three paths:
 *
 *   full (default)  convert → diarize → transcribe → merge → export
 *   replicate       convert → replicate → export
 *   identify        convert → identify → export
 *
 *   convert     reads the recording (a fingerprinted input file), downmixes it to mono and resamples it to 16 kHz: converted.wav
 *   diarize     cuts the converted audio into speaker turns by energy, tells speakers apart by pitch: segments.json
 *   transcribe  one durable item per segment, 4 at a time, through a TranscriptionProvider (default: an offline stand-in that bills)
 *   merge       assembles the transcript: speakers, turns, segments, what the calls cost
 *   replicate   a verified copy of the converted audio (replica.wav, sha256 checked)
 *   identify    a speaker identification summary (speakers.json)
 *   export      writes the chosen path's files into outDir, and keeps them as artifacts
 *
 * Run: `npm run build && node dist/src/cli/main.js run examples/speech/index.ts [--input '{"path":"identify"}']`.
 * Without `file`, a 45-second, three-speaker recording is generated (deterministically) into outDir.
 * Environment (not part of any fingerprint): CAIRN_SPEECH_LATENCY_MS, pretend latency of each
 * transcription call (default 300); CAIRN_SPEECH_TRACE=1 prints `trace <stage> started` on stdout.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { pipeline } from 'cairnjs';
import { z } from 'zod';
import { diarize, downmix, resample, type DiarizeConfig, type Segment } from './audio.js';
import { ensureRecording } from './generate.js';
import { OfflineStandInProvider, TRANSCRIBE_ITEMS, type TranscriptionProvider } from './provider.js';
import { assembleTranscript, toJson, toSrt, type TranscribedSegment } from './transcript.js';
import { readWav, writeWav } from './wav.js';

const SpeechInput = z.object({
  /** A 16-bit PCM WAV to process. Default: a generated recording, `<outDir>/recording.wav`. */
  file: z.string().min(1).optional(),
  /** Which path to take. */
  path: z.enum(['full', 'replicate', 'identify']).default('full'),
  /** Where export writes its files (and the provider its paid-calls.log). */
  outDir: z.string().min(1).default('./speech-out'),
  /** Length and seed of the generated recording (ignored with `file`). */
  seconds: z.number().min(5).max(3600).default(45),
  seed: z.number().int().default(1),
});
export type SpeechInput = z.infer<typeof SpeechInput>;

const LATENCY_MS = Number(process.env.CAIRN_SPEECH_LATENCY_MS ?? 300);
const trace = (stage: string): void => {
  if (process.env.CAIRN_SPEECH_TRACE === '1') console.log(`trace ${stage} started`);
};

const CONVERT = { sampleRate: 16_000 };
const DIARIZE: DiarizeConfig = { frameMs: 20, thresholdDb: -30, minSilenceMs: 250, minSegmentMs: 200, speakerTolerance: 0.15 };

/**
 * The recording to process. Called by `inputs`, before any stage runs, because the file's content
 * is part of convert's fingerprint: so the sample is generated here when it is missing.
 */
function recordingOf(input: SpeechInput): string {
  if (input.file) return path.resolve(input.file);
  return ensureRecording(path.resolve(input.outDir, 'recording.wav'), { seconds: input.seconds, seed: input.seed });
}

/** The provider transcribe uses: replace it with a client of a real speech API. */
function providerFor(input: SpeechInput): TranscriptionProvider {
  fs.mkdirSync(path.resolve(input.outDir), { recursive: true });
  return new OfflineStandInProvider({ log: path.resolve(input.outDir, 'paid-calls.log'), latencyMs: LATENCY_MS });
}

const sha256 = (file: string): string => crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');

/** Writes a file into outDir through a temp file and a rename, so that no reader ever sees half of it. */
function publish(outDir: string, name: string, from: string): string {
  const target = path.resolve(outDir, name);
  fs.mkdirSync(path.dirname(target), { recursive: true });
  fs.copyFileSync(from, `${target}.tmp`);
  fs.renameSync(`${target}.tmp`, target);
  return target;
}

const onPath =
  (wanted: SpeechInput['path']) =>
  ({ input }: { input: SpeechInput }): true | string =>
    input.path === wanted || `path is ${input.path}, not ${wanted}`;

export default pipeline('speech', { version: '1', input: SpeechInput })
  .stage(
    'convert',
    (ctx) => {
      trace('convert');
      const file = recordingOf(ctx.input);
      const source = readWav(file);
      const mono = resample(downmix(source), source.sampleRate, CONVERT.sampleRate);
      const out = ctx.artifactPath('converted.wav');
      writeWav(out, { sampleRate: CONVERT.sampleRate, channels: [mono] });
      return {
        wav: ctx.artifact(out),
        source: { name: path.basename(file), sampleRate: source.sampleRate, channels: source.channels.length },
        sampleRate: CONVERT.sampleRate,
        seconds: Math.round((mono.length / CONVERT.sampleRate) * 1000) / 1000,
      };
    },
    { inputs: (input) => [recordingOf(input)], config: CONVERT },
  )
  .stage(
    'diarize',
    (ctx) => {
      trace('diarize');
      const { wav, sampleRate } = ctx.output('convert');
      const segments = diarize(readWav(wav.path).channels[0]!, sampleRate, DIARIZE);
      const file = ctx.artifactPath('segments.json');
      fs.writeFileSync(file, `${JSON.stringify(segments, null, 2)}\n`);
      return { segments, file: ctx.artifact(file) };
    },
    { config: DIARIZE, when: onPath('full') },
  )
  .stage(
    'transcribe',
    async (ctx) => {
      trace('transcribe');
      const provider = providerFor(ctx.input);
      const { segments } = ctx.output('diarize');
      const texts = await ctx.items(
        'segments',
        segments,
        async (segment: Segment, item): Promise<TranscribedSegment> => ({
          ...segment,
          ...(await provider.transcribe(segment, { idempotencyKey: item.idempotencyKey, signal: item.signal })),
        }),
        { key: (segment) => segment.id, ...TRANSCRIBE_ITEMS },
      );
      return { provider: { name: provider.name, pricePerSecond: provider.pricePerSecond }, segments: texts };
    },
    { when: onPath('full') },
  )
  .stage(
    'merge',
    (ctx) => {
      trace('merge');
      const { source, seconds } = ctx.output('convert');
      const { provider, segments } = ctx.output('transcribe');
      return assembleTranscript(source.name, seconds, provider, segments);
    },
    { dependsOn: ['convert', 'transcribe'], when: onPath('full') },
  )
  .stage(
    'replicate',
    (ctx) => {
      trace('replicate');
      const { wav } = ctx.output('convert');
      const out = ctx.artifactPath('replica.wav');
      fs.copyFileSync(wav.path, out);
      const copy = sha256(out);
      if (copy !== wav.sha256) throw new Error(`replica.wav does not match converted.wav (sha256 ${copy} ≠ ${wav.sha256}).`);
      return { replica: ctx.artifact(out), sha256: copy, bytes: wav.size, verified: true };
    },
    { dependsOn: ['convert'], when: onPath('replicate') },
  )
  .stage(
    'identify',
    (ctx) => {
      trace('identify');
      const { wav, sampleRate, source, seconds } = ctx.output('convert');
      const segments = diarize(readWav(wav.path).channels[0]!, sampleRate, DIARIZE);
      const speakers = [...new Set(segments.map((s) => s.speaker))].map((id) => {
        const own = segments.filter((s) => s.speaker === id);
        const pitchHz = Math.round((own.reduce((n, s) => n + s.pitchHz, 0) / own.length) * 10) / 10;
        return {
          id,
          voice: pitchHz < 165 ? 'low' : pitchHz < 255 ? 'middle' : 'high',
          pitchHz,
          turns: own.length,
          seconds: Math.round(own.reduce((n, s) => n + s.end - s.start, 0) * 1000) / 1000,
          firstHeardAt: own[0]!.start,
        };
      });
      const summary = { source: source.name, durationSeconds: seconds, speakers };
      const file = ctx.artifactPath('speakers.json');
      fs.writeFileSync(file, `${JSON.stringify(summary, null, 2)}\n`);
      return { summary, file: ctx.artifact(file) };
    },
    { dependsOn: ['convert'], when: onPath('identify') },
  )
  .stage(
    'export',
    (ctx) => {
      trace('export');
      const { outDir } = ctx.input;
      const files: string[] = [];
      const transcript = ctx.maybeOutput('merge');
      if (transcript) {
        for (const [name, text] of [
          ['transcript.json', toJson(transcript)],
          ['transcript.srt', toSrt(transcript)],
        ] as const) {
          const file = ctx.artifactPath(name);
          fs.writeFileSync(file, text);
          files.push(publish(outDir, name, ctx.artifact(file).path));
        }
      }
      const replica = ctx.maybeOutput('replicate');
      if (replica) {
        files.push(publish(outDir, 'replica.wav', replica.replica.path));
        const file = ctx.artifactPath('replica.json');
        fs.writeFileSync(file, `${JSON.stringify({ file: 'replica.wav', sha256: replica.sha256, bytes: replica.bytes }, null, 2)}\n`);
        files.push(publish(outDir, 'replica.json', ctx.artifact(file).path));
      }
      const identified = ctx.maybeOutput('identify');
      if (identified) files.push(publish(outDir, 'speakers.json', identified.file.path));
      return {
        path: ctx.input.path,
        outDir: path.resolve(outDir),
        files,
        ...(transcript
          ? { segments: transcript.segments.length, speakers: transcript.speakers.length, costUsd: transcript.provider.costUsd }
          : {}),
        ...(identified ? { speakers: identified.summary.speakers.length } : {}),
      };
    },
    { dependsOn: ['merge', 'replicate', 'identify'] },
  );
