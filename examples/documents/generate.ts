/**
 * Deterministic "large-ish" documents: a seeded generator writes the same paragraphs on every
 * machine, so that reruns, resumes and tests process the same text.
 */
import { pick, prng } from '../shared/random.js';

export interface DocumentSpec {
  readonly name: string;
  readonly title: string;
  /** Words the subject matter is drawn from. */
  readonly nouns: readonly string[];
}

export const DOCUMENTS: readonly DocumentSpec[] = [
  {
    name: 'annual-report',
    title: 'Annual Report of the Harbour Authority',
    nouns: ['revenue', 'tonnage', 'berth', 'crane', 'dredging', 'tariff', 'vessel', 'warehouse', 'container', 'pilotage'],
  },
  {
    name: 'field-notes',
    title: 'Field Notes from the Upper Valley Survey',
    nouns: ['meadow', 'heron', 'sediment', 'willow', 'transect', 'beetle', 'spring', 'lichen', 'terrace', 'otter'],
  },
  {
    name: 'meeting-minutes',
    title: 'Minutes of the Library Board, Full Year',
    nouns: ['budget', 'catalogue', 'volunteer', 'roof', 'loan', 'archive', 'reading', 'grant', 'branch', 'shelving'],
  },
  {
    name: 'research-log',
    title: 'Research Log: Low-Temperature Battery Trials',
    nouns: ['anode', 'electrolyte', 'cycle', 'capacity', 'cathode', 'separator', 'impedance', 'sample', 'chamber', 'voltage'],
  },
  {
    name: 'court-transcript',
    title: 'Transcript of the Water Rights Hearing',
    nouns: ['witness', 'easement', 'ditch', 'exhibit', 'counsel', 'allocation', 'meter', 'appeal', 'headgate', 'season'],
  },
];

const VERBS = ['improved', 'reduced', 'exceeded', 'delayed', 'matched', 'replaced', 'doubled', 'affected', 'limited', 'supported'];
const ADJECTIVES = ['northern', 'seasonal', 'unexpected', 'gradual', 'annual', 'revised', 'minor', 'significant', 'temporary', 'early'];
const OPENERS = ['In the spring,', 'As noted earlier,', 'By contrast,', 'During the review,', 'Later that month,', 'In practice,'];

function sentence(rand: () => number, nouns: readonly string[]): string {
  const a = pick(rand, nouns);
  const b = pick(rand, nouns);
  const parts = [
    rand() < 0.3 ? pick(rand, OPENERS) : '',
    `the ${pick(rand, ADJECTIVES)} ${a}`,
    pick(rand, VERBS),
    `the ${b}`,
    rand() < 0.4 ? `by ${1 + Math.floor(rand() * 90)} percent` : '',
    rand() < 0.3 ? `near the ${pick(rand, ADJECTIVES)} ${pick(rand, nouns)}` : '',
  ].filter(Boolean);
  const text = parts.join(' ');
  return `${text.charAt(0).toUpperCase()}${text.slice(1)}.`;
}

/** The text of one document: a title line, then paragraphs of 3–8 sentences, about `words` words. */
export function generateDocument(spec: DocumentSpec, words: number, seed: number): string {
  const rand = prng(seed);
  const paragraphs: string[] = [];
  let count = 0;
  while (count < words) {
    const n = 3 + Math.floor(rand() * 6);
    const paragraph = Array.from({ length: n }, () => sentence(rand, spec.nouns)).join(' ');
    count += paragraph.split(' ').length;
    paragraphs.push(paragraph);
  }
  return `${spec.title}\n\n${paragraphs.join('\n\n')}\n`;
}
