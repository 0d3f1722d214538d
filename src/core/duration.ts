import { CairnError } from './errors.js';

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 };

/**
 * Parses a duration: a number of milliseconds, or text such as `500ms`, `30s`, `15m`, `24h`, `7d`, `2w`
 * (parts may be combined: `1h30m`). Throws `INVALID_INPUT` otherwise.
 * @example parseDuration('7d') // 604800000
 */
export function parseDuration(value: string | number): number {
  if (typeof value === 'number') {
    if (Number.isFinite(value) && value >= 0) return value;
  } else if (typeof value === 'string' && /^(\d+(\.\d+)?(ms|s|m|h|d|w))+$/.test(value.trim())) {
    let total = 0;
    for (const match of value.trim().matchAll(/(\d+(?:\.\d+)?)(ms|s|m|h|d|w)/g)) total += Number(match[1]) * (UNITS[match[2] ?? 'ms'] ?? 1);
    return total;
  }
  if (typeof value === 'number')
    throw new CairnError('INVALID_INPUT', `Invalid duration ${value}: a number of milliseconds ≥ 0 is needed.`);
  throw new CairnError('INVALID_INPUT', `Invalid duration ${JSON.stringify(value)}: give a unit, as in 30s, 15m, 24h, 7d (or 500ms).`);
}
