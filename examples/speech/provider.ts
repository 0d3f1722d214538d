/**
 * Transcription providers. A real one would send the segment's audio to a speech-to-text API and
 * pay per audio second; the default here is an OFFLINE STAND-IN that recognises nothing. It makes
 * up deterministic text from the segment's features (speaker, pitch, timing) so that outputs are
 * reproducible, and it keeps the books a paid API would: each call is appended to `paid-calls.log`
 * with its idempotency key and what it would have cost.
 */
import fs from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Segment } from './audio.js';

export interface TranscribeOptions {
  /** Stable across retries and resumes (`item.idempotencyKey`): a real API uses it to refuse to bill a call twice. */
  readonly idempotencyKey: string;
  readonly signal?: AbortSignal;
}

export interface SegmentText {
  readonly text: string;
  /** Audio seconds billed for this call. */
  readonly billedSeconds: number;
}

/** What the `transcribe` stage needs from a speech-to-text service. */
export interface TranscriptionProvider {
  /** Shown in transcript.json. */
  readonly name: string;
  /** USD per billed audio second. */
  readonly pricePerSecond: number;
  transcribe(segment: Segment, options: TranscribeOptions): Promise<SegmentText>;
}

/** How the `transcribe` stage runs its items; tests read these to bound the calls redone after a crash. */
export const TRANSCRIBE_ITEMS = { concurrency: 4, checkpointEvery: 2 } as const;

const WORDS = (
  'agenda budget quarter release schedule customer feedback design review launch metrics team roadmap ' +
  'deadline estimate risk option proposal draft version approval meeting summary action owner update ' +
  'next week today friday morning afternoon numbers chart slide figure question answer point issue ' +
  'fix test build deploy server client archive record transcript speaker pause segment sample signal'
).split(' ');
const FILLERS = ['so', 'well', 'right', 'okay', 'and', 'then', 'I think', 'we should', 'let us', 'maybe'];

/** FNV-1a, for picking words deterministically from a segment's features. */
function hash32(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193) >>> 0;
  return h;
}

export interface OfflineStandInOptions {
  /** The file each call is appended to, one line per call. */
  readonly log: string;
  /** Pretend network latency per call. @defaultValue 0 */
  readonly latencyMs?: number;
  /** @defaultValue 0.0001 USD per second (0.006 per minute, a common speech-API price) */
  readonly pricePerSecond?: number;
}

/**
 * NOT A SPEECH RECOGNISER: a stand-in for a paid speech API, so the example runs offline. The text
 * is made up from the segment's speaker, pitch and timing (about 2.5 words per second); every call
 * is counted in `paid-calls.log` as the API would bill it (whole seconds, rounded up).
 */
export class OfflineStandInProvider implements TranscriptionProvider {
  readonly name = 'offline stand-in for a speech API (made-up text, billed as if paid)';
  readonly pricePerSecond: number;

  constructor(private readonly options: OfflineStandInOptions) {
    this.pricePerSecond = options.pricePerSecond ?? 0.0001;
  }

  async transcribe(segment: Segment, { idempotencyKey }: TranscribeOptions): Promise<SegmentText> {
    const billedSeconds = Math.ceil(segment.end - segment.start);
    const cost = (billedSeconds * this.pricePerSecond).toFixed(4);
    // counted when the call is made, as an API bills a request even if the answer never arrives
    fs.appendFileSync(this.options.log, `${idempotencyKey}\t${billedSeconds}s\t$${cost}\n`);
    // not aborted on Ctrl-C: cairn lets calls in flight finish and saves them before it exits
    if (this.options.latencyMs) await sleep(this.options.latencyMs);
    let h = hash32(`${segment.speaker}|${segment.start}|${segment.pitchHz}`);
    const next = (n: number): number => {
      h = Math.imul(h ^ (h >>> 13), 0x5bd1e995) >>> 0;
      return h % n;
    };
    const count = Math.max(2, Math.round((segment.end - segment.start) * 2.5));
    const words = [FILLERS[next(FILLERS.length)]!];
    while (words.length < count) words.push(WORDS[next(WORDS.length)]!);
    const text = words.join(' ');
    return { text: `${text[0]!.toUpperCase()}${text.slice(1)}.`, billedSeconds };
  }
}
