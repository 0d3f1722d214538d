/**
 * A claim-mining job over a podcast transcript, as a job orchestrator would run it, as one cairn
 * pipeline:
 *
 *   parse  cuts the episode's transcript into segments (20,000 by default; generated, deterministic)
 *   mine   one paid claim-mining call per segment: `ctx.items`, 8 at a time, results committed in
 *          batches of at most `checkpointEvery` (or one by one with `durability: 'item'`)
 *   store  aggregates the claims and writes claims.json (an artifact, copied to outDir)
 *
 * Run: `npm run build && node dist/src/cli/main.js run examples/mining-job/index.ts`. Ctrl-C (or
 * kill -9) it during `mine` and run the same command again: no segment already mined is paid for
 * again. Once complete, the same command returns the cached result at once.
 *
 * Every call reports what it cost (`item.spend`: dollars and tokens, from the stand-in's made-up
 * prices). With `--budget usd=0.25` the job stops starting calls once it has spent 25 cents, saves
 * what was in flight, and waits (exit 3); `cairn resume <id> --budget usd=1` raises it and goes on.
 *
 * Input (JSON, all optional; part of the run id): `segments`, `outDir`, `durability`,
 * `checkpointEvery`, `concurrency`, `episode`. Environment (not part of the run id):
 *   MINING_CALL_MS   how long one call to the stand-in provider takes (default 5)
 *   MINING_RPM       the provider's quota in requests per minute, shared by every process using the store
 *                    (default 6000; `off`: no limit)
 *   MINING_FAIL_AT   a segment index or id (`1234` or `seg-01234`) whose call fails: the run fails
 *                    with every result so far saved; run again without it to resume
 */
import fs from 'node:fs';
import path from 'node:path';
import { pipeline, type LimitSpec } from 'cairnjs';
import { z } from 'zod';
import { costUsd, OfflineClaimProvider, type Claim, type ClaimProvider } from './provider.js';
import { generateSegments } from './transcript.js';

const MiningInput = z.object({
  /** The episode whose transcript is mined (names the claims file; the generator's seed is fixed). */
  episode: z.string().min(1).default('episode-0042'),
  /** Segments in the transcript. */
  segments: z.number().int().min(1).max(1_000_000).default(20_000),
  /** Where claims.json, paid-calls.log and job.log go. */
  outDir: z.string().min(1).default('./data/mining-job'),
  /** `'batch'`: results committed in groups (at most `checkpointEvery` lost in a crash); `'item'`: each one durable before the next call. */
  durability: z.enum(['batch', 'item']).default('batch'),
  /**
   * At most this many mined segments are not yet durable: a fixed bound, where a checkpoint every
   * 10% of the segments could lose 2,000 of 20,000 to a crash.
   */
  checkpointEvery: z.number().int().min(1).default(250),
  /** Calls in flight at once. */
  concurrency: z.number().int().min(1).max(256).default(8),
});
export type MiningInput = z.infer<typeof MiningInput>;

/** A claim with the segment it was found in. */
export interface FoundClaim extends Claim {
  readonly segment: string;
}

/** How long the stand-in provider takes per call; not part of any fingerprint. */
const CALL_MS = Number(process.env.MINING_CALL_MS ?? 5);

/** `MINING_FAIL_AT=1234` or `seg-01234`: the segment whose call fails (failure injection). */
function failingSegment(): string | undefined {
  const raw = process.env.MINING_FAIL_AT?.trim();
  if (!raw) return undefined;
  return /^\d+$/.test(raw) ? `seg-${raw.padStart(5, '0')}` : raw;
}

/** One line per stage start, so that you (and the tests) can see which stages ran in which process. */
function logStage(input: MiningInput, stage: string): void {
  fs.mkdirSync(path.resolve(input.outDir), { recursive: true });
  fs.appendFileSync(path.resolve(input.outDir, 'job.log'), `start ${stage} pid=${process.pid}\n`);
}

/** Paid calls of this run in `paid-calls.log`, across every process that worked on it (repeats included). */
function paidCallsOfRun(outDir: string, runId: string): number {
  const file = path.resolve(outDir, 'paid-calls.log');
  if (!fs.existsSync(file)) return 0;
  return fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .filter((line) => line.startsWith(`${runId}/`)).length;
}

/** Calls and tokens paid by this process (the stand-in counts them; a real client would too). */
const thisProcess = { calls: 0 };

export interface MiningJobOptions {
  /** The claim-mining service. @defaultValue the offline stand-in, billing into `<outDir>/paid-calls.log` */
  readonly provider?: (input: MiningInput) => ClaimProvider;
}

/** The mining job, with the provider of your choice (a real LLM client in production). */
export function miningJob(options: MiningJobOptions = {}) {
  const providerFor =
    options.provider ?? ((input: MiningInput) => new OfflineClaimProvider({ outDir: path.resolve(input.outDir), delayMs: CALL_MS }));

  // the provider's quota, shared by every process and worker on a SQLite or Postgres store (by the
  // processes of one machine on the file store): MINING_RPM requests per minute, `off` for none
  const rpm = process.env.MINING_RPM ?? '6000';
  const limits: Record<string, LimitSpec> = rpm === 'off' ? {} : { llm: { requests: Number(rpm), per: '1m' } };
  return pipeline('mining-job', { version: '1', input: MiningInput, limits })
    .stage('parse', (ctx) => {
      logStage(ctx.input, 'parse');
      return { episode: ctx.input.episode, segments: generateSegments(ctx.input.segments) };
    })
    .stage(
      'mine',
      async (ctx) => {
        logStage(ctx.input, 'mine');
        const { segments } = ctx.output('parse');
        const provider = providerFor(ctx.input);
        const failAt = failingSegment();
        const mined = await ctx.items(
          'segments',
          segments,
          async (segment, item) => {
            if (segment.id === failAt) {
              throw new Error(`Injected failure (MINING_FAIL_AT): the claim-mining API answered 503 for ${segment.id}`);
            }
            const { claims, usage } = await provider.mine(segment, { idempotencyKey: item.idempotencyKey, signal: item.signal });
            // what the call cost: saved with its result, summed per stage and run, checked against the budget (--budget usd=…)
            item.spend({ usd: costUsd(usage), tokens: usage.inputTokens + usage.outputTokens });
            thisProcess.calls++;
            return { claims, inputTokens: usage.inputTokens, outputTokens: usage.outputTokens };
          },
          {
            key: (segment) => segment.id,
            concurrency: ctx.input.concurrency,
            checkpointEvery: ctx.input.checkpointEvery,
            durability: ctx.input.durability,
            ...(rpm === 'off' ? {} : { limit: 'llm' }), // each call waits for the provider's quota
          },
        );
        const claims: FoundClaim[] = mined.flatMap((r, i) => r.claims.map((c) => ({ ...c, segment: segments[i]!.id })));
        return {
          provider: provider.name,
          claims,
          segmentsWithClaims: mined.filter((r) => r.claims.length > 0).length,
          inputTokens: mined.reduce((n, r) => n + r.inputTokens, 0),
          outputTokens: mined.reduce((n, r) => n + r.outputTokens, 0),
        };
      },
      { version: '1' },
    )
    .stage('store', (ctx) => {
      logStage(ctx.input, 'store');
      const { episode, segments } = ctx.output('parse');
      const mined = ctx.output('mine');
      const summary = summarize(episode, segments.length, mined);
      const file = ctx.artifactPath('claims.json');
      fs.writeFileSync(file, `${JSON.stringify(summary, null, 2)}\n`);
      const artifact = ctx.artifact(file);
      const published = publish(ctx.input.outDir, 'claims.json', file);
      const paidCalls = paidCallsOfRun(ctx.input.outDir, ctx.runId);
      return {
        claimsFile: published,
        artifact: artifact.name,
        segments: segments.length,
        claims: mined.claims.length,
        tokens: { input: mined.inputTokens, output: mined.outputTokens },
        // a segment paid for twice (a crash between the call and the commit of its result) shows here
        paidCalls: { run: paidCalls, repeated: paidCalls - segments.length, lastProcess: thisProcess.calls },
      };
    });
}

/** claims.json: deterministic (no times, no paths), so that a resumed job writes the same bytes as an uninterrupted one. */
function summarize(
  episode: string,
  segments: number,
  mined: { claims: FoundClaim[]; segmentsWithClaims: number; inputTokens: number; outputTokens: number },
) {
  const byStatement = new Map<string, FoundClaim[]>();
  const byRelation: Record<string, number> = {};
  for (const claim of mined.claims) {
    const statement = `${claim.subject} ${claim.relation} ${claim.object}`;
    const found = byStatement.get(statement);
    if (found) found.push(claim);
    else byStatement.set(statement, [claim]);
    byRelation[claim.relation] = (byRelation[claim.relation] ?? 0) + 1;
  }
  const top = [...byStatement]
    .sort((a, b) => b[1].length - a[1].length || a[0].localeCompare(b[0]))
    .slice(0, 25)
    .map(([statement, found]) => {
      const percents = found.flatMap((c) => (c.percent === undefined ? [] : [c.percent]));
      return {
        statement,
        mentions: found.length,
        confidence: Math.round((found.reduce((n, c) => n + c.confidence, 0) / found.length) * 1000) / 1000,
        ...(percents.length > 0 ? { percent: { min: Math.min(...percents), max: Math.max(...percents) } } : {}),
        firstSegments: found.slice(0, 5).map((c) => c.segment),
      };
    });
  return {
    episode,
    segments,
    segmentsWithClaims: mined.segmentsWithClaims,
    claims: mined.claims.length,
    distinctStatements: byStatement.size,
    tokens: { input: mined.inputTokens, output: mined.outputTokens },
    byRelation: Object.fromEntries(Object.entries(byRelation).sort((a, b) => a[0].localeCompare(b[0]))),
    topStatements: top,
  };
}

/** Writes a file into outDir through a temp file and a rename, so that no reader ever sees half of it. */
function publish(outDir: string, name: string, from: string): string {
  const target = path.resolve(outDir, name);
  fs.mkdirSync(path.dirname(target), { recursive: true });
  fs.copyFileSync(from, `${target}.tmp`);
  fs.renameSync(`${target}.tmp`, target);
  return target;
}

export default miningJob();
