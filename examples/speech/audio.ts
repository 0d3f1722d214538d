/**
 * The signal processing of the speech example, in plain TypeScript: downmix, a windowed-sinc
 * resampler, and an energy-based diarizer that tells speakers apart by pitch (from the zero-crossing
 * rate). Small and real, not state of the art.
 */
import type { Pcm } from './wav.js';

/** Averages the channels into one. */
export function downmix(pcm: Pcm): Float32Array {
  const [first, ...rest] = pcm.channels;
  if (!first) return new Float32Array(0);
  const out = Float32Array.from(first);
  for (const channel of rest) for (let i = 0; i < out.length; i++) out[i]! += channel[i]!;
  if (rest.length > 0) for (let i = 0; i < out.length; i++) out[i]! /= pcm.channels.length;
  return out;
}

const gcd = (a: number, b: number): number => (b === 0 ? a : gcd(b, a % b));

/**
 * Resamples with a Hann-windowed sinc low-pass (cut-off just under the lower Nyquist frequency,
 * `zeroCrossings` lobes each side), so that downsampling does not alias. The filter of each output
 * phase is computed once: 44.1 → 16 kHz has only 160 phases.
 */
export function resample(samples: Float32Array, from: number, to: number, zeroCrossings = 8): Float32Array {
  if (from === to) return Float32Array.from(samples);
  const length = Math.floor((samples.length * to) / from);
  const out = new Float32Array(length);
  const cutoff = 0.95 * Math.min(1, to / from); // in units of the input's Nyquist frequency
  const half = Math.ceil(zeroCrossings / cutoff); // filter half-width in input samples
  const g = gcd(from, to);
  const phases = to / g; // output positions repeat their fractional input offset every `phases` samples
  const cache = new Map<number, Float32Array>();
  const filterFor = (frac: number, phase: number): Float32Array => {
    let taps = phases <= 4096 ? cache.get(phase) : undefined;
    if (taps) return taps;
    taps = new Float32Array(2 * half);
    let sum = 0;
    for (let k = 0; k < 2 * half; k++) {
      const x = k - half + 1 - frac; // distance from the output position, in input samples
      const arg = Math.PI * cutoff * x;
      const sinc = x === 0 ? 1 : Math.sin(arg) / arg;
      const window = 0.5 + 0.5 * Math.cos((Math.PI * x) / half);
      taps[k] = Math.abs(x) < half ? sinc * window : 0;
      sum += taps[k]!;
    }
    for (let k = 0; k < taps.length; k++) taps[k]! /= sum; // unity gain at DC
    if (phases <= 4096) cache.set(phase, taps);
    return taps;
  };
  for (let i = 0; i < length; i++) {
    const pos = (i * from) / to;
    const base = Math.floor(pos);
    const taps = filterFor(pos - base, i % phases);
    let acc = 0;
    const start = base - half + 1;
    for (let k = 0; k < taps.length; k++) {
      const j = start + k;
      if (j >= 0 && j < samples.length) acc += taps[k]! * samples[j]!;
    }
    out[i] = acc;
  }
  return out;
}

export interface DiarizeConfig {
  /** Analysis frame length. */
  readonly frameMs: number;
  /** A frame is speech when its RMS level is above this (dBFS). */
  readonly thresholdDb: number;
  /** A quieter stretch at least this long ends a turn; shorter ones (between syllables) do not. */
  readonly minSilenceMs: number;
  /** Shorter bursts are dropped as noise. */
  readonly minSegmentMs: number;
  /** Pitches within this ratio of each other belong to the same speaker. */
  readonly speakerTolerance: number;
}

/** A speaker turn. Times in seconds, rounded to the millisecond. */
export interface Segment {
  readonly id: string;
  readonly speaker: string;
  readonly start: number;
  readonly end: number;
  /** Mean level of the speech frames, dBFS. */
  readonly levelDb: number;
  /** Estimated pitch from the zero-crossing rate of the speech frames, Hz. */
  readonly pitchHz: number;
}

const round = (x: number, digits: number): number => Math.round(x * 10 ** digits) / 10 ** digits;

/**
 * Splits mono audio into speech segments by frame energy, estimates each segment's pitch from its
 * zero-crossing rate (a voiced tone crosses zero twice per period), and groups segments whose
 * pitches agree within `speakerTolerance` into speakers S1, S2, … in order of first appearance.
 */
export function diarize(samples: Float32Array, rate: number, config: DiarizeConfig): Segment[] {
  const frame = Math.round((rate * config.frameMs) / 1000);
  const frames = Math.floor(samples.length / frame);
  const threshold = 10 ** (config.thresholdDb / 20);
  const voiced: boolean[] = [];
  const levels: number[] = [];
  const crossings: number[] = [];
  // zero crossings with hysteresis: the signal must swing past ±h, so the noise floor adds none
  const h = threshold / 2;
  let side = 0;
  for (let f = 0; f < frames; f++) {
    let energy = 0;
    let zc = 0;
    for (let i = f * frame; i < (f + 1) * frame; i++) {
      const s = samples[i]!;
      energy += s * s;
      if (s > h) {
        if (side < 0) zc++;
        side = 1;
      } else if (s < -h) {
        if (side > 0) zc++;
        side = -1;
      }
    }
    const rms = Math.sqrt(energy / frame);
    levels.push(rms);
    crossings.push(zc);
    voiced.push(rms >= threshold);
  }

  // runs of speech frames, joined across gaps shorter than the minimum silence
  const minGap = Math.ceil(config.minSilenceMs / config.frameMs);
  const runs: [number, number][] = [];
  for (let f = 0; f < frames; f++) {
    if (!voiced[f]) continue;
    const last = runs.at(-1);
    if (last && f - last[1] < minGap) last[1] = f + 1;
    else runs.push([f, f + 1]);
  }
  const minFrames = Math.ceil(config.minSegmentMs / config.frameMs);
  const raw = runs
    .filter(([a, b]) => b - a >= minFrames)
    .map(([a, b]) => {
      let zc = 0;
      let level = 0;
      let n = 0;
      for (let f = a; f < b; f++) {
        if (!voiced[f]) continue;
        zc += crossings[f]!;
        level += levels[f]!;
        n++;
      }
      return {
        start: round((a * frame) / rate, 3),
        end: round((b * frame) / rate, 3),
        levelDb: round(20 * Math.log10(level / n), 1),
        pitchHz: round(zc / 2 / ((n * frame) / rate), 1),
      };
    });

  // speakers: sort the pitches, start a new group where the gap to the previous is beyond the tolerance
  const byPitch = [...raw].sort((a, b) => a.pitchHz - b.pitchHz);
  const group = new Map<(typeof raw)[number], number>();
  let current = -1;
  let previous = -Infinity;
  for (const seg of byPitch) {
    if (seg.pitchHz > previous * (1 + config.speakerTolerance)) current++;
    group.set(seg, current);
    previous = seg.pitchHz;
  }
  const names = new Map<number, string>();
  return raw.map((seg, i) => {
    const g = group.get(seg)!;
    if (!names.has(g)) names.set(g, `S${names.size + 1}`);
    return { id: `seg-${String(i + 1).padStart(3, '0')}`, speaker: names.get(g)!, ...seg };
  });
}
