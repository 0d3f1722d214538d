/**
 * `ctx.items(…, { limit })`: each try of an item waits for a grant of the named limit; tokens an item
 * reports with `item.spend` are charged to its grant; an error asking to wait (a 429) slows the whole
 * limit. Times are checked from below only (a loaded machine can only make the waits longer).
 */
import { describe, expect, it } from 'vitest';
import { pipeline } from '../../src/engine/pipeline.js';
import { useCairns } from './engine-helpers.js';

describe('items under a rate limit', () => {
  const open = useCairns();

  it('starts no more than `requests` items per window, whatever the concurrency', async () => {
    const cairn = open('memory:items-limit-requests', { limits: { api: { requests: 3, per: 300 } } });
    const starts: number[] = [];
    const def = pipeline('limited').stage('call', (ctx) =>
      ctx.items(
        'calls',
        Array.from({ length: 9 }, (_, i) => i),
        (n) => {
          starts.push(Date.now());
          return n * 2;
        },
        { limit: 'api', concurrency: 9 },
      ),
    );
    const run = await cairn.run(def, {});
    expect(run.status).toBe('completed');
    expect(run.result).toEqual([0, 2, 4, 6, 8, 10, 12, 14, 16]);
    // 9 requests at 3 per 300 ms: the 4th waits for the 1st to leave the window, the 7th for the 4th
    starts.sort((a, b) => a - b);
    expect(starts[3]! - starts[0]!).toBeGreaterThanOrEqual(300 - 5);
    expect(starts[6]! - starts[0]!).toBeGreaterThanOrEqual(600 - 10);
  });

  it('charges the tokens an item reports to its grant: the next request waits until they leave the window', async () => {
    const cairn = open('memory:items-limit-tokens', { limits: { llm: { tokens: 100, per: 400 } } });
    const starts: number[] = [];
    const def = pipeline('tokens').stage('call', (ctx) =>
      ctx.items(
        'calls',
        ['a', 'b'],
        async (word, item) => {
          starts.push(Date.now());
          item.spend({ tokens: 150 }); // the window's 100 tokens are used up (and more)
          await new Promise((resolve) => setTimeout(resolve, 20)); // the charge reaches the limiter
          return word;
        },
        { limit: 'llm' },
      ),
    );
    const run = await cairn.run(def, {});
    expect(run.status).toBe('completed');
    expect(starts[1]! - starts[0]!).toBeGreaterThanOrEqual(400 - 5);
  });

  it('a 429 with retryAfterMs slows the whole limit, not only the item that got it', async () => {
    const cairn = open('memory:items-limit-429', { limits: { api: { requests: 100, per: '1s' } } });
    const starts = new Map<string, number[]>();
    let throttled = false;
    const def = pipeline('throttled').stage('call', (ctx) =>
      ctx.items(
        'calls',
        ['first', 'slow', 'second'],
        async (word) => {
          const list = starts.get(word) ?? [];
          list.push(Date.now());
          starts.set(word, list);
          if (word === 'first' && !throttled) {
            throttled = true;
            throw Object.assign(new Error('429 Too Many Requests'), { retryAfterMs: 400 });
          }
          // 'slow' holds the other worker for a moment: it asks for 'second' well within the slow-down
          await new Promise((resolve) => setTimeout(resolve, word === 'slow' ? 50 : 1));
          return word;
        },
        { limit: 'api', concurrency: 2, retries: { max: 1, backoffMs: 0 } },
      ),
    );
    const run = await cairn.run(def, {});
    expect(run.status).toBe('completed');
    const hit = starts.get('first')![0]!;
    // the other items (not only the retry of the first) started no sooner than the slow-down allowed
    expect(starts.get('second')![0]! - hit).toBeGreaterThanOrEqual(400 - 5);
    expect(starts.get('first')![1]! - hit).toBeGreaterThanOrEqual(400 - 5);
  });

  it('an undeclared limit fails the stage with INVALID_DEFINITION naming the declared ones', async () => {
    const cairn = open('memory:items-limit-unknown', { limits: { llm: { requests: 1, per: '1s' } } });
    const def = pipeline('unknown-limit').stage('call', (ctx) => ctx.items('calls', [1], (n) => n, { limit: 'lm' }));
    const run = await cairn.run(def, {});
    expect(run.status).toBe('failed');
    expect(run.error).toMatchObject({ code: 'INVALID_DEFINITION' });
    expect(run.error?.message).toContain('the limits are llm');
  });
});
