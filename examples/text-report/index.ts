/**
 * The `npm start` demo: a real cairn pipeline over the public-domain texts in `texts/`.
 *
 *   load     reads every .txt file; the files are declared as `inputs`, so their content is fingerprinted
 *   split    cuts each text into chunks of a few sentences
 *   analyze  one durable item per chunk (`ctx.items`, two at a time): words, longest words, sentence lengths
 *   merge    totals per text and overall
 *   report   writes report.md as an artifact and returns its path with a few figures
 *
 * Run it with `npm start`, or `npx cairn run examples/text-report/index.ts`; press Ctrl-C during
 * `analyze` and run the same command again: finished chunks are not analyzed again.
 * `--input '{"texts":"./my-texts"}'` analyzes another folder of .txt files (first line: the title).
 * `CAIRN_DEMO_ITEM_MS` (default 100) is how long each chunk pretends to work.
 */
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { pipeline } from 'cairnjs';

export interface TextReportInput {
  /** Folder of .txt files; the first line of each is its title. @defaultValue the bundled `texts/` */
  readonly texts?: string;
}

interface Text {
  readonly file: string;
  readonly title: string;
  readonly body: string;
}

interface Chunk {
  readonly key: string;
  readonly file: string;
  readonly sentences: readonly string[];
}

interface ChunkStats {
  readonly file: string;
  readonly words: number;
  readonly counts: Record<string, number>;
  readonly sentenceWords: number[];
  readonly longestSentence: { readonly words: number; readonly text: string };
  readonly longestWords: string[];
}

/** Time each chunk pretends to work, so that progress is visible and there is time for Ctrl-C. Not fingerprinted. */
const ITEM_MS = Number(process.env.CAIRN_DEMO_ITEM_MS ?? 100);

/** The bundled texts, also when this file runs compiled from dist/. */
const BUNDLED = fileURLToPath(new URL('texts/', import.meta.url)).replace(
  `${path.sep}dist${path.sep}examples${path.sep}`,
  `${path.sep}examples${path.sep}`,
);

/** Very common words, left out of "most used words" so that the list says something about the texts. */
const COMMON = new Set(
  (
    'a an and are as at be but by for from had has have he her his i in is it its not of on or our shall ' +
    'so that the their them they this thou thy to us was we were which who will with all any been no nor ' +
    'such these those than then there my me him she what when may do his its one other own should would ' +
    'can could into upon more most every'
  ).split(' '),
);

const textsDir = (input: TextReportInput): string => (input.texts ? path.resolve(input.texts) : BUNDLED);

function listTexts(dir: string): string[] {
  if (!fs.existsSync(dir)) return [];
  return fs
    .readdirSync(dir)
    .filter((f) => f.endsWith('.txt'))
    .sort()
    .map((f) => path.join(dir, f));
}

/** Paragraphs, then sentences inside each (a heading without a full stop is a sentence of its own). */
function sentencesOf(body: string): string[] {
  return body
    .split(/\n\s*\n/)
    .map((p) => p.replace(/\s+/g, ' ').trim())
    .filter(Boolean)
    .flatMap((p) => p.split(/(?<=[.!?]["”’]?)\s+(?=["“‘]?[A-Z])/));
}

const wordsOf = (text: string): string[] => text.match(/[A-Za-z]+(?:['’-][A-Za-z]+)*/g) ?? [];

function top<T>(entries: readonly [T, number][], n: number): [T, number][] {
  return [...entries].sort((a, b) => b[1] - a[1] || String(a[0]).localeCompare(String(b[0]))).slice(0, n);
}

function longestWords(words: Iterable<string>, n: number): string[] {
  return [...new Set([...words].map((w) => w.toLowerCase()))].sort((a, b) => b.length - a.length || a.localeCompare(b)).slice(0, n);
}

const fmt = (n: number): string => n.toLocaleString('en-US');

export default pipeline<TextReportInput>('text-report', { version: '1' })
  .stage(
    'load',
    (ctx): Text[] => {
      const files = listTexts(textsDir(ctx.input));
      if (files.length === 0) throw new Error(`No .txt files in ${textsDir(ctx.input)}.`);
      return files.map((file) => {
        const [title = '', ...rest] = fs.readFileSync(file, 'utf8').split('\n');
        return { file: path.basename(file), title: title.trim(), body: rest.join('\n').trim() };
      });
    },
    { inputs: (input) => listTexts(textsDir(input)) },
  )
  .stage(
    'split',
    (ctx): Chunk[] => {
      const { sentencesPerChunk } = ctx.config as { sentencesPerChunk: number };
      return ctx.output('load').flatMap((text) => {
        const sentences = sentencesOf(text.body);
        const chunks: Chunk[] = [];
        for (let i = 0; i < sentences.length; i += sentencesPerChunk) {
          const n = String(chunks.length + 1).padStart(3, '0');
          chunks.push({ key: `${text.file}#${n}`, file: text.file, sentences: sentences.slice(i, i + sentencesPerChunk) });
        }
        return chunks;
      });
    },
    { config: { sentencesPerChunk: 2 } },
  )
  .stage(
    'analyze',
    async (ctx) => {
      const chunks = ctx.output('split');
      const stats = await ctx.items(
        'chunks',
        chunks,
        async (chunk): Promise<ChunkStats> => {
          await sleep(ITEM_MS); // stands in for real work per chunk (an API call, a model)
          const counts: Record<string, number> = {};
          const sentenceWords: number[] = [];
          let longestSentence = { words: 0, text: '' };
          for (const sentence of chunk.sentences) {
            const words = wordsOf(sentence);
            sentenceWords.push(words.length);
            if (words.length > longestSentence.words) longestSentence = { words: words.length, text: sentence };
            for (const w of words) counts[w.toLowerCase()] = (counts[w.toLowerCase()] ?? 0) + 1;
          }
          const words = sentenceWords.reduce((a, b) => a + b, 0);
          return { file: chunk.file, words, counts, sentenceWords, longestSentence, longestWords: longestWords(Object.keys(counts), 5) };
        },
        { key: (chunk) => chunk.key, concurrency: 2 },
      );
      return { chunks: stats };
    },
    { version: '1' },
  )
  .stage('merge', (ctx) => {
    const titles = new Map(ctx.output('load').map((t) => [t.file, t.title]));
    const { chunks } = ctx.output('analyze');
    const all: Record<string, number> = {};
    const perText = new Map<string, { counts: Record<string, number>; sentences: number[]; longest: ChunkStats['longestSentence'] }>();
    for (const chunk of chunks) {
      const text = perText.get(chunk.file) ?? { counts: {}, sentences: [], longest: { words: 0, text: '' } };
      perText.set(chunk.file, text);
      text.sentences.push(...chunk.sentenceWords);
      if (chunk.longestSentence.words > text.longest.words) text.longest = chunk.longestSentence;
      for (const [w, n] of Object.entries(chunk.counts)) {
        text.counts[w] = (text.counts[w] ?? 0) + n;
        all[w] = (all[w] ?? 0) + n;
      }
    }
    const meaningful = (counts: Record<string, number>): [string, number][] =>
      Object.entries(counts).filter(([w]) => !COMMON.has(w) && w.length > 2);
    const texts = [...perText].map(([file, t]) => {
      const words = t.sentences.reduce((a, b) => a + b, 0);
      return {
        file,
        title: titles.get(file) ?? file,
        words,
        distinct: Object.keys(t.counts).length,
        sentences: t.sentences.length,
        wordsPerSentence: Math.round((words / Math.max(1, t.sentences.length)) * 10) / 10,
        longestSentence: t.longest,
        topWords: top(meaningful(t.counts), 5),
      };
    });
    const words = texts.reduce((n, t) => n + t.words, 0);
    const sentences = texts.reduce((n, t) => n + t.sentences, 0);
    return {
      texts,
      chunks: chunks.length,
      words,
      distinct: Object.keys(all).length,
      sentences,
      wordsPerSentence: Math.round((words / Math.max(1, sentences)) * 10) / 10,
      topWords: top(meaningful(all), 12),
      longestWords: longestWords(Object.keys(all), 8),
    };
  })
  .stage('report', (ctx) => {
    const m = ctx.output('merge');
    const lines = [
      '# Text report',
      '',
      `${m.texts.length} texts, ${fmt(m.chunks)} chunks, ${fmt(m.words)} words (${fmt(m.distinct)} distinct), ` +
        `${fmt(m.sentences)} sentences, ${m.wordsPerSentence} words per sentence on average.`,
      '',
      '## Most used words',
      '',
      '(leaving out the most common English words)',
      '',
      '| word | count |',
      '| --- | ---: |',
      ...m.topWords.map(([w, n]) => `| ${w} | ${n} |`),
      '',
      '## Longest words',
      '',
      m.longestWords.map((w) => `${w} (${w.length})`).join(', '),
      '',
      '## Per text',
      '',
      '| text | words | distinct | sentences | words per sentence | most used |',
      '| --- | ---: | ---: | ---: | ---: | --- |',
      ...m.texts.map(
        (t) =>
          `| ${t.title} | ${fmt(t.words)} | ${fmt(t.distinct)} | ${t.sentences} | ${t.wordsPerSentence} | ` +
          `${t.topWords.map(([w, n]) => `${w} ×${n}`).join(', ')} |`,
      ),
      '',
      '## The longest sentence of each text',
      '',
      ...m.texts.flatMap((t) => [`**${t.title}**, ${t.longestSentence.words} words:`, '', `> ${t.longestSentence.text}`, '']),
    ];
    const file = ctx.artifactPath('report.md');
    fs.writeFileSync(file, `${lines.join('\n').trimEnd()}\n`);
    const report = ctx.artifact(file);
    return {
      report: report.path,
      texts: m.texts.length,
      chunks: m.chunks,
      words: m.words,
      distinctWords: m.distinct,
      topWords: Object.fromEntries(m.topWords.slice(0, 5)),
    };
  });
