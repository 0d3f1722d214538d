/**
 * A deterministic "meeting" recording for the speech example: three synthetic speakers taking
 * turns, 44.1 kHz stereo 16-bit, with pauses between turns. Each speaker is a voiced tone with its
 * own pitch (fundamental plus two weaker harmonics), a slow intonation contour, syllable-shaped
 * loudness and its own place in the stereo field; a faint noise floor fills the silences. The same
 * seed and length always give the same bytes, so the file's fingerprint is stable across runs.
 */
import fs from 'node:fs';
import path from 'node:path';
import { encodeWav } from './wav.js';
import { prng as random } from '../shared/random.js';

export interface RecordingOptions {
  /** Length of the recording. @defaultValue 45 */
  readonly seconds?: number;
  /** Seed of the turn-taking script and the noise. @defaultValue 1 */
  readonly seed?: number;
  /** @defaultValue 44_100 */
  readonly sampleRate?: number;
}

interface Voice {
  /** Fundamental frequency in Hz: what the diarizer tells speakers apart by. */
  readonly pitch: number;
  /** Gains of the fundamental and the 2nd and 3rd harmonics: a crude timbre. */
  readonly harmonics: readonly [number, number, number];
  /** Left/right gains. */
  readonly pan: readonly [number, number];
}

/** Three clearly different voices: low, middle, high. */
export const VOICES: readonly Voice[] = [
  { pitch: 118, harmonics: [1, 0.3, 0.12], pan: [0.9, 0.55] },
  { pitch: 196, harmonics: [1, 0.25, 0.1], pan: [0.55, 0.9] },
  { pitch: 305, harmonics: [1, 0.2, 0.08], pan: [0.75, 0.75] },
];

interface Turn {
  readonly voice: number;
  readonly start: number;
  /** Syllables as [start, end] in seconds. */
  readonly syllables: readonly (readonly [number, number])[];
}

/** Who speaks when: turns of 0.6–2 s with pauses of 0.45–0.9 s, never the same speaker twice in a row. */
function script(seconds: number, rnd: () => number): Turn[] {
  const turns: Turn[] = [];
  let t = 0.5;
  let voice = -1;
  while (t < seconds - 1.2) {
    voice = (voice + 1 + Math.floor(rnd() * (VOICES.length - 1))) % VOICES.length;
    const length = Math.min(0.6 + rnd() * 1.4, seconds - 0.5 - t);
    const syllables: [number, number][] = [];
    let s = t;
    while (s < t + length - 0.1) {
      const end = Math.min(s + 0.12 + rnd() * 0.14, t + length);
      syllables.push([s, end]);
      s = end + 0.02 + rnd() * 0.06; // short gaps inside a turn, well under the diarizer's minimum silence
    }
    turns.push({ voice, start: t, syllables });
    t += length + 0.45 + rnd() * 0.45;
  }
  return turns;
}

/** Renders the recording as 16-bit PCM WAV bytes. */
export function generateRecording(options: RecordingOptions = {}): Buffer {
  const seconds = options.seconds ?? 45;
  const rate = options.sampleRate ?? 44_100;
  const rnd = random(options.seed ?? 1);
  const frames = Math.round(seconds * rate);
  const left = new Float32Array(frames);
  const right = new Float32Array(frames);
  for (const turn of script(seconds, rnd)) {
    const voice = VOICES[turn.voice]!;
    const contour = 0.05 * (rnd() * 2 - 1); // each turn's intonation drifts a little up or down
    let phase = 0;
    for (const [from, to] of turn.syllables) {
      const loudness = 0.35 + rnd() * 0.15;
      const a = Math.floor(from * rate);
      const b = Math.floor(to * rate);
      const ramp = Math.floor(0.015 * rate);
      for (let i = a; i < b && i < frames; i++) {
        const progress = (i - turn.start * rate) / (2 * rate);
        const f = voice.pitch * (1 + contour * progress);
        phase += (2 * Math.PI * f) / rate;
        const [h1, h2, h3] = voice.harmonics;
        const edge = Math.min(1, (i - a) / ramp, (b - i) / ramp);
        const v = loudness * edge * (h1 * Math.sin(phase) + h2 * Math.sin(2 * phase) + h3 * Math.sin(3 * phase));
        left[i]! += v * voice.pan[0];
        right[i]! += v * voice.pan[1];
      }
    }
  }
  // the noise floor: a plain LCG seeded from the script's generator (millions of draws, so the cheapest one)
  let n = Math.floor(rnd() * 2 ** 32);
  const noise = (): number => {
    n = (Math.imul(n, 1664525) + 1013904223) >>> 0;
    const a = n;
    n = (Math.imul(n, 1664525) + 1013904223) >>> 0;
    return ((a + n) / 2 ** 32 - 1) * 0.002;
  };
  for (let i = 0; i < frames; i++) {
    left[i]! += noise();
    right[i]! += noise();
  }
  return encodeWav({ sampleRate: rate, channels: [left, right] });
}

/**
 * Writes the recording to `file` unless it is already there. Written to a temp file and renamed, so
 * a crash never leaves half a file, and two processes racing write the same bytes.
 */
export function ensureRecording(file: string, options: RecordingOptions = {}): string {
  if (fs.existsSync(file)) return file;
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, generateRecording(options));
  fs.renameSync(tmp, file);
  return file;
}
