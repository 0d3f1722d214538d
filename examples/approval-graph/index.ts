/**
 * A graph workflow that pauses for a person's approval: a document is drafted, reviewed
 * and revised in a loop until its quality score passes (at most `maxRevisions` times), then waits
 * for a person's yes or no, and is published or archived accordingly.
 *
 *   draft → review ⇄ revise        loop: revise until the score reaches `threshold`, bounded
 *           review → confirm       ctx.waitFor('approval'): the run is saved as waiting, the process exits (code 3)
 *           confirm → publish | archive   conditional edge on the answer
 *
 * Run it with `npx cairn run examples/approval-graph/index.ts --input '{"topic":"Quarterly report"}'`
 * and answer, from any shell and any time later, with `npx cairn resume <run-id> --input approval=true`
 * (or `approval=false`). The document is written to `<out>/published/` or `<out>/archived/`.
 * Everything is deterministic: the same input always gives the same bytes.
 * `CAIRN_DEMO_STEP_MS` (default 300) is how long each node pretends to work.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { append, END, workflow } from 'cairnjs';

export interface ApprovalGraphInput {
  /** What the document is about. @defaultValue 'Quarterly report' */
  readonly topic?: string;
  /** Folder the final document goes to (`published/` or `archived/` under it). @defaultValue './data/approval-graph' */
  readonly out?: string;
  /** Score (0–100) a draft needs to pass review. @defaultValue 80 */
  readonly threshold?: number;
  /** Revisions at most; after that the draft goes to the approver as it is, flagged. @defaultValue 5 */
  readonly maxRevisions?: number;
}

/** Time each node pretends to work (an LLM call, a reviewer), so that progress is visible and kills land. Not fingerprinted. */
const STEP_MS = Number(process.env.CAIRN_DEMO_STEP_MS ?? 300);

/** The sections a reviewer looks for, in the order revisions add them; each is worth 20 points. */
const CHECKLIST = ['summary', 'figures', 'risks', 'next steps'] as const;
type Section = (typeof CHECKLIST)[number];
/** The last 20 points: a document of at least this many words. */
const MIN_WORDS = 60;

const settings = (input: ApprovalGraphInput) => ({
  topic: input.topic ?? 'Quarterly report',
  out: input.out ?? './data/approval-graph',
  threshold: input.threshold ?? 80,
  maxRevisions: input.maxRevisions ?? 5,
});

/** Stands in for real work; with `CAIRN_DEMO_LOG` set, also records which node ran at which step (the crash tests read it). */
async function work(node: string, step: number): Promise<void> {
  const log = process.env.CAIRN_DEMO_LOG;
  if (log) fs.appendFileSync(log, `${process.pid} ${step} ${node}\n`);
  await sleep(STEP_MS);
}

/** Figures derived from the topic, so that each topic reads differently and the same topic always reads the same. */
function figuresOf(topic: string): { revenue: number; growth: number; customers: number } {
  const h = createHash('sha256').update(topic).digest();
  return { revenue: 100 + (h.readUInt16BE(0) % 900), growth: (h.readUInt8(2) % 30) - 5, customers: 1000 + h.readUInt16BE(3) };
}

function sectionText(section: Section, topic: string): string {
  const f = figuresOf(topic);
  switch (section) {
    case 'summary':
      return `This document covers ${topic.toLowerCase()}. It states where things stand, what the numbers say, what could go wrong, and what happens next, so that one person can approve it or send it back.`;
    case 'figures':
      return `Revenue came to ${f.revenue} thousand, ${f.growth >= 0 ? 'up' : 'down'} ${Math.abs(f.growth)}% on the previous period, from ${f.customers.toLocaleString('en-US')} customers.`;
    case 'risks':
      return `The largest risk is concentration: a few customers account for much of the revenue. A second is delivery: two projects depend on one supplier.`;
    case 'next steps':
      return `Next, the team will widen the customer base, qualify a second supplier, and report again at the end of the next period.`;
  }
}

function render(topic: string, sections: readonly Section[]): string {
  const parts = [`# ${topic}`, ''];
  for (const s of sections) parts.push(`## ${s[0]!.toUpperCase()}${s.slice(1)}`, '', sectionText(s, topic), '');
  return parts.join('\n');
}

const wordCount = (text: string): number => text.match(/[A-Za-z0-9]+/g)?.length ?? 0;

/** The reviewer: 20 points per checklist section present, 20 for length. Deterministic, like every node here. */
function score(topic: string, sections: readonly Section[]): { score: number; missing: string[] } {
  const missing: string[] = CHECKLIST.filter((s) => !sections.includes(s));
  const long = wordCount(render(topic, sections)) >= MIN_WORDS;
  if (!long) missing.push(`at least ${MIN_WORDS} words`);
  return { score: 100 - 20 * missing.length, missing };
}

/** Writes the final document atomically: a crash mid-write never leaves half a document behind. */
function writeDocument(dir: string, name: string, text: string): string {
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, name);
  fs.writeFileSync(`${file}.tmp`, text);
  fs.renameSync(`${file}.tmp`, file);
  return file;
}

/** The document as published or archived: the text, then the verdict and the reviews. */
function finalDocument(
  state: { readonly topic: string; readonly sections: readonly Section[]; readonly reviews: readonly string[] },
  verdict: string,
  dir: string,
): string {
  const text = [
    render(state.topic, state.sections),
    '---',
    '',
    verdict,
    '',
    'Reviews:',
    '',
    ...state.reviews.map((r) => `- ${r}`),
    '',
  ].join('\n');
  return writeDocument(dir, `${slug(state.topic)}.md`, text);
}

const slug = (topic: string): string =>
  topic
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-|-$/g, '') || 'document';

export default workflow('approval-graph', {
  // the settings the edges need live in the state: an edge sees only the state
  initial: (input: ApprovalGraphInput) => ({
    topic: settings(input).topic,
    threshold: settings(input).threshold,
    maxRevisions: settings(input).maxRevisions,
    sections: [] as Section[],
    revision: 0,
    score: 0,
    reviews: [] as string[],
  }),
  reducers: { reviews: append },
  maxSteps: 100,
})
  .node('draft', async (_state, ctx) => {
    await work(ctx.node, ctx.step);
    return { sections: ['summary'] as Section[] };
  })
  .node('review', async (state, ctx) => {
    await work(ctx.node, ctx.step);
    const result = score(state.topic, state.sections);
    const verdict = result.missing.length === 0 ? 'nothing missing' : `missing: ${result.missing.join(', ')}`;
    return { score: result.score, reviews: `revision ${state.revision}: ${result.score}/100, ${verdict}` };
  })
  .node('revise', async (state, ctx) => {
    await work(ctx.node, ctx.step);
    const next = CHECKLIST.find((s) => !state.sections.includes(s));
    return { sections: next ? [...state.sections, next] : state.sections, revision: state.revision + 1 };
  })
  .node('confirm', async (_state, ctx) => {
    await work(ctx.node, ctx.step);
    // a value that is not a boolean is refused: `cairn resume` fails (exit 2) and the run keeps waiting
    const approved = await ctx.waitFor('approval', {
      validate: (answer): boolean => {
        if (typeof answer !== 'boolean') throw new Error(`approval must be true or false, not ${JSON.stringify(answer)}`);
        return answer;
      },
    });
    return { approved };
  })
  .node('publish', async (state, ctx) => {
    await work(ctx.node, ctx.step);
    const verdict = `Published after approval. Review score ${state.score}/100 (pass: ${state.threshold}).`;
    return { output: finalDocument(state, verdict, path.resolve(settings(ctx.input).out, 'published')) };
  })
  .node('archive', async (state, ctx) => {
    await work(ctx.node, ctx.step);
    const verdict = 'Archived: the approver said no. Not published.';
    return { output: finalDocument(state, verdict, path.resolve(settings(ctx.input).out, 'archived')) };
  })
  .edge('draft', 'review')
  .edge('review', (s) => (s.score >= s.threshold || s.revision >= s.maxRevisions ? 'confirm' : 'revise'))
  .edge('revise', 'review')
  .edge('confirm', (s) => (s.approved ? 'publish' : 'archive'))
  .edge('publish', END)
  .edge('archive', END)
  .entry('draft');
