/**
 * A deterministic podcast transcript: `segments(n)` returns the same n segments on every machine
 * and every run (a seeded generator, no randomness from the clock), so that reruns, resumes and
 * tests all mine the same text. Some sentences state a claim ("X raises Y by 12 percent"), the
 * rest is conversation.
 */
import { pick, prng } from '../shared/random.js';

export interface Segment {
  /** `seg-00042`: the stable key of the segment (its item key and the idempotency key's tail). */
  readonly id: string;
  readonly speaker: string;
  /** Seconds from the start of the episode. */
  readonly start: number;
  readonly end: number;
  readonly text: string;
}

const SPEAKERS = ['Host', 'Dr. Okafor', 'Prof. Lindqvist', 'Maya Chen'];

const TOPICS = [
  'the interest rate',
  'remote work',
  'the new battery chemistry',
  'coral reef recovery',
  'the city budget',
  'solar capacity',
  'sleep quality',
  'open-source funding',
  'housing supply',
  'antibiotic resistance',
  'rail freight',
  'crop yield',
  'carbon pricing',
  'youth unemployment',
  'heat pump adoption',
  'screen time',
];

const RELATIONS = ['raises', 'reduces', 'doubles', 'has little effect on', 'predicts', 'depends on'];

const HEDGES = ['I think', 'The data says', 'Honestly,', 'Our study found that', 'It is clear that', 'We keep seeing that'];

const CHATTER = [
  'Yeah, that is a fair point.',
  'Let me push back on that a little.',
  'We should come back to this after the break.',
  'I mean, you know, it is complicated.',
  'That surprised a lot of our listeners.',
  'Right, right.',
  'Can you say more about the methodology?',
  'Good question.',
  'So where does that leave policy makers?',
  'I was not expecting that answer.',
];

/** The first `count` segments of the episode generated from `seed`. */
export function generateSegments(count: number, seed = 2025): Segment[] {
  const rand = prng(seed);
  const segments: Segment[] = [];
  let clock = 0;
  for (let i = 0; i < count; i++) {
    const sentences: string[] = [];
    const n = 1 + Math.floor(rand() * 3);
    for (let s = 0; s < n; s++) {
      if (rand() < 0.45) {
        const subject = pick(rand, TOPICS);
        let object = pick(rand, TOPICS);
        if (object === subject) object = TOPICS[(TOPICS.indexOf(subject) + 1) % TOPICS.length]!;
        const relation = pick(rand, RELATIONS);
        const amount = relation === 'raises' || relation === 'reduces' ? ` by ${5 + Math.floor(rand() * 30)} percent` : '';
        sentences.push(`${pick(rand, HEDGES)} ${subject} ${relation} ${object}${amount}.`);
      } else {
        sentences.push(pick(rand, CHATTER));
      }
    }
    const text = sentences.join(' ');
    const duration = Math.round((text.split(' ').length / 2.5) * 10) / 10; // about 150 words a minute
    segments.push({
      id: `seg-${String(i).padStart(5, '0')}`,
      speaker: SPEAKERS[i % SPEAKERS.length]!,
      start: Math.round(clock * 10) / 10,
      end: Math.round((clock + duration) * 10) / 10,
      text,
    });
    clock += duration;
  }
  return segments;
}

/** The words a claim sentence is built from, for the stand-in provider's parser. */
export const CLAIM_PATTERN = new RegExp(
  `(${TOPICS.join('|')}) (${RELATIONS.join('|')}) (${TOPICS.join('|')})(?: by (\\d+) percent)?\\.`,
  'g',
);
