/**
 * The claim-mining call, behind an interface so that a real LLM client can replace the stand-in.
 *
 * `OfflineClaimProvider` is a STAND-IN FOR AN LLM API. It makes no network call: it waits a little
 * (as a request would), parses claims out of the segment's text with a regular expression, and
 * bills itself as a paid API would: every call is counted, with made-up token figures, and
 * appended to `paid-calls.log` as one line `<idempotency key>\t<input tokens>\t<output tokens>`.
 * That file is how you (and the tests) see what a crash cost: a key that appears twice was paid
 * twice.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { CLAIM_PATTERN, type Segment } from './transcript.js';

export interface Claim {
  readonly subject: string;
  readonly relation: string;
  readonly object: string;
  /** The percentage in "raises X by 12 percent", when the speaker gave one. */
  readonly percent?: number;
  /** 0..1, as a model would report it. */
  readonly confidence: number;
}

export interface MiningResult {
  readonly claims: Claim[];
  readonly usage: { readonly inputTokens: number; readonly outputTokens: number };
}

export interface MineOptions {
  /** Stable across retries and resumes (`item.idempotencyKey`): a real API deduplicates on it. */
  readonly idempotencyKey: string;
  /** Aborted when the run stops (Ctrl-C, timeout): cancel the request. */
  readonly signal: AbortSignal;
}

/** A claim-mining service: one paid call per segment. */
export interface ClaimProvider {
  readonly name: string;
  mine(segment: Segment, options: MineOptions): Promise<MiningResult>;
}

export interface OfflineClaimProviderOptions {
  /** The folder of `paid-calls.log`. */
  readonly outDir: string;
  /** How long one call takes. @defaultValue 5 */
  readonly delayMs?: number;
}

/** Made-up prices of the stand-in, in US dollars per million tokens (the order of a small hosted model's). */
export const PRICE_PER_MILLION = { input: 0.15, output: 0.6 } as const;

/** What a call with this usage costs, in US dollars. */
export function costUsd(usage: MiningResult['usage']): number {
  return (usage.inputTokens * PRICE_PER_MILLION.input + usage.outputTokens * PRICE_PER_MILLION.output) / 1_000_000;
}

/** Tokens of a prompt around one segment: the instructions plus about 4 characters a token. */
const PROMPT_TOKENS = 120;

/**
 * STAND-IN FOR AN LLM API (offline, deterministic, free): answers like a claim-mining model would
 * and counts what a paid one would have charged.
 */
export class OfflineClaimProvider implements ClaimProvider {
  readonly name = 'offline stand-in for an LLM API';
  /** Calls this process paid for, and their tokens. */
  calls = 0;
  inputTokens = 0;
  outputTokens = 0;
  private readonly log: string;
  private readonly delayMs: number;

  constructor(options: OfflineClaimProviderOptions) {
    fs.mkdirSync(options.outDir, { recursive: true });
    this.log = path.join(options.outDir, 'paid-calls.log');
    this.delayMs = options.delayMs ?? 5;
  }

  async mine(segment: Segment, { idempotencyKey, signal }: MineOptions): Promise<MiningResult> {
    if (this.delayMs > 0) await sleep(this.delayMs, undefined, { signal });
    const claims: Claim[] = [];
    for (const m of segment.text.matchAll(CLAIM_PATTERN)) {
      const [sentence, subject = '', relation = '', object = '', percent] = m;
      const digest = createHash('sha256').update(sentence).digest();
      claims.push({
        subject,
        relation,
        object,
        ...(percent === undefined ? {} : { percent: Number(percent) }),
        confidence: 0.5 + (digest[0]! % 50) / 100,
      });
    }
    const usage = { inputTokens: PROMPT_TOKENS + Math.ceil(segment.text.length / 4), outputTokens: 8 + claims.length * 24 };
    // the bill: one line per paid call, written before the answer is handed back
    fs.appendFileSync(this.log, `${idempotencyKey}\t${usage.inputTokens}\t${usage.outputTokens}\n`);
    this.calls++;
    this.inputTokens += usage.inputTokens;
    this.outputTokens += usage.outputTokens;
    return { claims, usage };
  }
}

/** Lines of a `paid-calls.log` (0 when there is none yet). */
export function countPaidCalls(outDir: string): number {
  const file = path.join(outDir, 'paid-calls.log');
  if (!fs.existsSync(file)) return 0;
  return fs.readFileSync(file, 'utf8').split('\n').length - 1;
}
