/** The transcript the `merge` stage assembles, and its two export formats: JSON and SRT subtitles. */
import type { Segment } from './audio.js';

export interface TranscribedSegment extends Segment {
  readonly text: string;
  readonly billedSeconds: number;
}

/** Consecutive segments of one speaker, joined. */
export interface Turn {
  readonly speaker: string;
  readonly start: number;
  readonly end: number;
  readonly segments: readonly string[];
  readonly text: string;
}

export interface Transcript {
  readonly source: string;
  readonly durationSeconds: number;
  readonly provider: { readonly name: string; readonly billedSeconds: number; readonly costUsd: number };
  readonly speakers: readonly { readonly id: string; readonly pitchHz: number; readonly seconds: number; readonly segments: number }[];
  readonly turns: readonly Turn[];
  readonly segments: readonly TranscribedSegment[];
}

const round = (x: number, digits: number): number => Math.round(x * 10 ** digits) / 10 ** digits;

export function assembleTranscript(
  source: string,
  durationSeconds: number,
  provider: { readonly name: string; readonly pricePerSecond: number },
  segments: readonly TranscribedSegment[],
): Transcript {
  const turns: Turn[] = [];
  for (const seg of segments) {
    const last = turns.at(-1);
    if (last?.speaker === seg.speaker) {
      turns[turns.length - 1] = { ...last, end: seg.end, segments: [...last.segments, seg.id], text: `${last.text} ${seg.text}` };
    } else {
      turns.push({ speaker: seg.speaker, start: seg.start, end: seg.end, segments: [seg.id], text: seg.text });
    }
  }
  const speakers = [...new Set(segments.map((s) => s.speaker))].map((id) => {
    const own = segments.filter((s) => s.speaker === id);
    return {
      id,
      pitchHz: round(own.reduce((n, s) => n + s.pitchHz, 0) / own.length, 1),
      seconds: round(
        own.reduce((n, s) => n + s.end - s.start, 0),
        3,
      ),
      segments: own.length,
    };
  });
  const billedSeconds = segments.reduce((n, s) => n + s.billedSeconds, 0);
  return {
    source,
    durationSeconds,
    provider: { name: provider.name, billedSeconds, costUsd: round(billedSeconds * provider.pricePerSecond, 4) },
    speakers,
    turns,
    segments,
  };
}

/** `HH:MM:SS,mmm`, as SRT wants it. */
export function srtTime(seconds: number): string {
  const ms = Math.round(seconds * 1000);
  const pad = (n: number, width = 2): string => String(n).padStart(width, '0');
  return `${pad(Math.floor(ms / 3_600_000))}:${pad(Math.floor(ms / 60_000) % 60)}:${pad(Math.floor(ms / 1000) % 60)},${pad(ms % 1000, 3)}`;
}

/** One numbered cue per segment, prefixed with its speaker. */
export function toSrt(transcript: Transcript): string {
  return transcript.segments.map((s, i) => `${i + 1}\n${srtTime(s.start)} --> ${srtTime(s.end)}\n[${s.speaker}] ${s.text}\n`).join('\n');
}

export const toJson = (transcript: Transcript): string => `${JSON.stringify(transcript, null, 2)}\n`;
