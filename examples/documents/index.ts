/**
 * Chunked processing of large documents (chunk states, partial results, statistics and a
 * `resumeProcessing`, as a hand-written document processor keeps them) as a cairn pipeline:
 *
 *   load     writes the documents (generated, deterministic) into the run's artifact folder
 *   chunk    cuts each document into chunks of whole paragraphs (about `chunkWords` words)
 *   process  one durable item per chunk (`ctx.items`, `onItemError: 'collect'`): a chunk is
 *            completed, failed (its error is recorded) or still pending. The chunk states and the
 *            statistics go to status.json; if any chunk failed, the stage fails with every
 *            completed chunk saved, and resuming (`cairn resume <id>`, what a hand-written
 *            processor's `resumeProcessing` does) retries only the failed and pending chunks
 *   report   report.json: per-document statistics (an artifact, copied to outDir)
 *
 * Some chunks fail on their first try, as calls to a flaky service do: every chunk whose key hashes
 * to 0 modulo DOCUMENTS_FLAKY_EVERY (default 6; 0 turns this off). So the first run ends failed
 * (exit 1) with most chunks done, and the next one completes.
 *
 * Run: `npm run build && node dist/src/cli/main.js run examples/documents/index.ts`, then the same
 * command again (or `cairn resume <id>`).
 * Input (JSON, all optional; part of the run id): `documents` (1–5), `words` per document,
 * `chunkWords`, `concurrency`, `outDir`. Environment: DOCUMENTS_CHUNK_MS, how long one chunk
 * takes (default 30); DOCUMENTS_FLAKY_EVERY.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { pipeline } from 'cairnjs';
import { z } from 'zod';
import { DOCUMENTS, generateDocument } from './generate.js';

const DocumentsInput = z.object({
  /** How many of the five generated documents to process. */
  documents: z.number().int().min(1).max(DOCUMENTS.length).default(4),
  /** Words per document (about). */
  words: z.number().int().min(100).max(2_000_000).default(20_000),
  /** Words per chunk (about; chunks hold whole paragraphs). */
  chunkWords: z.number().int().min(20).default(500),
  /** Chunks processed at once. */
  concurrency: z.number().int().min(1).max(64).default(4),
  /** Where report.json, status.json, calls.log and job.log go. */
  outDir: z.string().min(1).default('./data/documents'),
});
export type DocumentsInput = z.infer<typeof DocumentsInput>;

export interface Chunk {
  /** `<document>#<nnn>`: the chunk's stable key. */
  readonly key: string;
  readonly document: string;
  readonly index: number;
  readonly text: string;
}

export interface ChunkResult {
  readonly document: string;
  readonly words: number;
  readonly sentences: number;
  readonly longestSentence: number;
  readonly counts: Record<string, number>;
  /** The try that succeeded (1 unless the chunk failed before). */
  readonly attempt: number;
}

const CHUNK_MS = Number(process.env.DOCUMENTS_CHUNK_MS ?? 30);
const FLAKY_EVERY = Number(process.env.DOCUMENTS_FLAKY_EVERY ?? 6);
const STOP_WORDS = new Set(['the', 'by', 'near', 'in', 'as', 'that', 'percent', 'during', 'of', 'and', 'later', 'month', 'spring']);

/** Whether this chunk's first try fails (a stand-in for a flaky extraction service). */
export function isFlaky(key: string): boolean {
  return FLAKY_EVERY > 0 && createHash('sha256').update(key).digest().readUInt32BE(0) % FLAKY_EVERY === 0;
}

function appendLine(input: DocumentsInput, file: string, line: string): void {
  fs.mkdirSync(path.resolve(input.outDir), { recursive: true });
  fs.appendFileSync(path.resolve(input.outDir, file), `${line}\n`);
}

/** Writes a file into outDir through a temp file and a rename, so that no reader ever sees half of it. */
function publish(outDir: string, name: string, text: string): string {
  const target = path.resolve(outDir, name);
  fs.mkdirSync(path.dirname(target), { recursive: true });
  fs.writeFileSync(`${target}.tmp`, text);
  fs.renameSync(`${target}.tmp`, target);
  return target;
}

/** Paragraphs grouped into chunks of about `chunkWords` words. */
function chunksOf(document: string, text: string, chunkWords: number): Chunk[] {
  const paragraphs = text.split(/\n\s*\n/).slice(1); // the first is the title
  const chunks: Chunk[] = [];
  let current: string[] = [];
  let words = 0;
  const flush = (): void => {
    if (current.length === 0) return;
    const index = chunks.length;
    chunks.push({ key: `${document}#${String(index + 1).padStart(3, '0')}`, document, index, text: current.join('\n\n') });
    current = [];
    words = 0;
  };
  for (const paragraph of paragraphs.map((p) => p.trim()).filter(Boolean)) {
    current.push(paragraph);
    words += paragraph.split(/\s+/).length;
    if (words >= chunkWords) flush();
  }
  flush();
  return chunks;
}

function analyze(chunk: Chunk, attempt: number): ChunkResult {
  const sentences = chunk.text.split(/(?<=\.)\s+/).filter(Boolean);
  const counts: Record<string, number> = {};
  let words = 0;
  let longestSentence = 0;
  for (const s of sentences) {
    const ws = s.toLowerCase().match(/[a-z]+/g) ?? [];
    words += ws.length;
    longestSentence = Math.max(longestSentence, ws.length);
    for (const w of ws) if (!STOP_WORDS.has(w)) counts[w] = (counts[w] ?? 0) + 1;
  }
  return { document: chunk.document, words, sentences: sentences.length, longestSentence, counts, attempt };
}

/** The `n` most used words, most used first: `{ word: count }`. */
const top = (counts: Record<string, number>, n: number): Record<string, number> =>
  Object.fromEntries(
    Object.entries(counts)
      .sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))
      .slice(0, n),
  );

export default pipeline('documents', { version: '1', input: DocumentsInput })
  .stage('load', (ctx) => {
    appendLine(ctx.input, 'job.log', `start load pid=${process.pid}`);
    return DOCUMENTS.slice(0, ctx.input.documents).map((spec, i) => {
      const file = ctx.artifactPath(`documents/${spec.name}.txt`);
      fs.writeFileSync(file, generateDocument(spec, ctx.input.words, 1000 + i));
      return { name: spec.name, title: spec.title, file: ctx.artifact(file).name };
    });
  })
  .stage('chunk', (ctx) => {
    appendLine(ctx.input, 'job.log', `start chunk pid=${process.pid}`);
    return ctx
      .output('load')
      .flatMap((doc) => chunksOf(doc.name, fs.readFileSync(ctx.artifactPath(doc.file), 'utf8'), ctx.input.chunkWords));
  })
  .stage('process', async (ctx) => {
    appendLine(ctx.input, 'job.log', `start process pid=${process.pid}`);
    const chunks = ctx.output('chunk');
    const started = Date.now();
    let processedNow = 0;
    const outcome = await ctx.items(
      'chunks',
      chunks,
      async (chunk, item): Promise<ChunkResult> => {
        appendLine(ctx.input, 'calls.log', `${chunk.key} try=${item.attempt}`);
        if (CHUNK_MS > 0) await sleep(CHUNK_MS, undefined, { signal: item.signal });
        if (item.attempt === 1 && isFlaky(chunk.key)) {
          throw new Error(`the extraction service timed out on ${chunk.key} (a transient failure: the next try succeeds)`);
        }
        processedNow++;
        return analyze(chunk, item.attempt);
      },
      { key: (chunk) => chunk.key, concurrency: ctx.input.concurrency, onItemError: 'collect' },
    );
    const seconds = (Date.now() - started) / 1000;

    // what a hand-written processor keeps in its checkpoint, as a file to look at: chunk states, partial results, statistics
    const failedKeys = new Set(outcome.failures.map((f) => f.key));
    const perDocument = ctx.output('load').map(({ name }) => ({ document: name, chunks: 0, completed: 0, failed: 0, pending: 0 }));
    chunks.forEach((chunk, i) => {
      const doc = perDocument.find((d) => d.document === chunk.document)!;
      doc.chunks++;
      if (outcome.results[i] !== undefined) doc.completed++;
      else if (failedKeys.has(chunk.key)) doc.failed++;
      else doc.pending++;
    });
    const status = {
      run: ctx.runId,
      state: outcome.failed > 0 ? 'partial' : 'completed',
      chunks: {
        total: chunks.length,
        completed: outcome.done,
        failed: outcome.failed,
        pending: chunks.length - outcome.done - outcome.failed,
      },
      perDocument,
      failures: outcome.failures.map((f) => ({ key: f.key, try: f.attempt, error: f.error.message })),
      thisAttempt: { processed: processedNow, seconds, chunksPerSecond: seconds > 0 ? Math.round((processedNow / seconds) * 10) / 10 : 0 },
    };
    publish(ctx.input.outDir, 'status.json', `${JSON.stringify(status, null, 2)}\n`);

    if (outcome.failed > 0) {
      throw new Error(
        `${outcome.failed} of ${chunks.length} chunks failed (${outcome.failures
          .slice(0, 3)
          .map((f) => f.key)
          .join(
            ', ',
          )}${outcome.failed > 3 ? ', …' : ''}); the ${outcome.done} completed are saved and resuming retries only the failed ones`,
      );
    }
    return { results: outcome.results as ChunkResult[], seconds };
  })
  .stage('report', (ctx) => {
    appendLine(ctx.input, 'job.log', `start report pid=${process.pid}`);
    const { results } = ctx.output('process');
    const documents = ctx.output('load').map(({ name, title }) => {
      const mine = results.filter((r) => r.document === name);
      const counts: Record<string, number> = {};
      for (const r of mine) for (const [w, n] of Object.entries(r.counts)) counts[w] = (counts[w] ?? 0) + n;
      const words = mine.reduce((n, r) => n + r.words, 0);
      const sentences = mine.reduce((n, r) => n + r.sentences, 0);
      return {
        name,
        title,
        chunks: mine.length,
        retriedChunks: mine.filter((r) => r.attempt > 1).length,
        words,
        sentences,
        wordsPerSentence: Math.round((words / Math.max(1, sentences)) * 10) / 10,
        longestSentence: Math.max(0, ...mine.map((r) => r.longestSentence)),
        keywords: top(counts, 8),
      };
    });
    const report = {
      documents,
      totals: {
        documents: documents.length,
        chunks: results.length,
        completed: results.length,
        failed: 0,
        pending: 0,
        retriedChunks: documents.reduce((n, d) => n + d.retriedChunks, 0),
        words: documents.reduce((n, d) => n + d.words, 0),
      },
    };
    const file = ctx.artifactPath('report.json');
    fs.writeFileSync(file, `${JSON.stringify(report, null, 2)}\n`);
    ctx.artifact(file);
    const published = publish(ctx.input.outDir, 'report.json', fs.readFileSync(file, 'utf8'));
    return { report: published, ...report.totals, processSeconds: Math.round(ctx.output('process').seconds * 1000) / 1000 };
  });
