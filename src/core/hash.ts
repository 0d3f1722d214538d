import { createHash } from 'node:crypto';
import { CairnError } from './errors.js';

/**
 * A canonical text for a JSON-like value: object keys sorted, `undefined` object members omitted
 * (as JSON does), so that `{a:1,b:2}` and `{b:2,a:1}` give the same text. Dates, BigInts, NaN,
 * Infinity, Maps, Sets and byte arrays get tokens that no JSON value can produce, so two different
 * values never share a text. Functions, symbols, class instances and cycles are refused.
 */
export function canonicalJson(value: unknown): string {
  const parts: string[] = [];
  writeCanonical(value, parts, new Set());
  return parts.join('');
}

/** sha256 (hex) of {@link canonicalJson}: used for run ids and stage fingerprints. */
export function canonicalHash(value: unknown): string {
  return sha256Hex(canonicalJson(value));
}

export function sha256Hex(data: string | Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

function writeCanonical(value: unknown, out: string[], stack: Set<object>): void {
  switch (typeof value) {
    case 'string':
      out.push(JSON.stringify(value));
      return;
    case 'boolean':
      out.push(value ? 'true' : 'false');
      return;
    case 'number':
      if (Number.isFinite(value)) out.push(Object.is(value, -0) ? '0' : JSON.stringify(value));
      else out.push(Number.isNaN(value) ? 'NaN' : value > 0 ? 'Infinity' : '-Infinity');
      return;
    case 'bigint':
      out.push(`BigInt(${value.toString()})`);
      return;
    case 'undefined':
      out.push('undefined');
      return;
    case 'object':
      break;
    default:
      throw new CairnError('INVALID_INPUT', `Cannot hash a value of type ${typeof value}: use JSON-like data.`);
  }
  if (value === null) {
    out.push('null');
    return;
  }
  if (stack.has(value)) throw new CairnError('INVALID_INPUT', 'Cannot hash a value with a cycle.');
  stack.add(value);
  if (Array.isArray(value)) {
    out.push('[');
    value.forEach((item: unknown, i) => {
      if (i > 0) out.push(',');
      writeCanonical(item, out, stack);
    });
    out.push(']');
  } else if (value instanceof Date) {
    out.push(`Date(${Number.isNaN(value.getTime()) ? 'NaN' : JSON.stringify(value.toISOString())})`);
  } else if (value instanceof Map) {
    out.push('Map[');
    let first = true;
    for (const [k, v] of value as Map<unknown, unknown>) {
      if (!first) out.push(',');
      first = false;
      out.push('[');
      writeCanonical(k, out, stack);
      out.push(',');
      writeCanonical(v, out, stack);
      out.push(']');
    }
    out.push(']');
  } else if (value instanceof Set) {
    out.push('Set');
    writeCanonical([...(value as Set<unknown>)], out, stack);
  } else if (value instanceof Uint8Array) {
    out.push(`Bytes(${Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString('base64')})`);
  } else {
    const proto = Object.getPrototypeOf(value) as unknown;
    if (proto !== Object.prototype && proto !== null) {
      throw new CairnError('INVALID_INPUT', 'Cannot hash a class instance: use plain objects, arrays and primitives.');
    }
    const record = value as Record<string, unknown>;
    const keys = Object.keys(record)
      .filter((k) => record[k] !== undefined)
      .sort();
    out.push('{');
    keys.forEach((k, i) => {
      if (i > 0) out.push(',');
      out.push(JSON.stringify(k), ':');
      writeCanonical(record[k], out, stack);
    });
    out.push('}');
  }
  stack.delete(value);
}
