import * as devalue from 'devalue';
import { CairnError } from './errors.js';

/**
 * How a value was written. `json`: plain JSON (the common case, human-readable, fastest).
 * `devalue`: the value needed rich types (Date, Map, Set, BigInt, typed arrays, undefined, NaN,
 * ±Infinity, -0, sparse arrays, repeated or circular references); devalue's format is positional,
 * so user data can never be mistaken for a tag, and its parser revives only its fixed built-in set:
 * stored bytes can never make the loader call a constructor or function they name.
 */
export type Encoding = 'json' | 'devalue';

export interface EncodedValue {
  enc: Encoding;
  /** JSON text (for `devalue`, devalue's JSON-compatible text). */
  text: string;
}

const PROTO_KEY = '__proto__';

/**
 * Serializes `value` for storage. Own `__proto__` keys are dropped (they could re-point a
 * prototype when the data is later merged with `Object.assign`); everything else round-trips.
 * Throws `UNSERIALIZABLE` for functions, symbols and class instances, naming where they are.
 */
export function encodeValue(value: unknown): EncodedValue {
  const shape = inspectShape(value);
  const clean = shape.hasProtoKey ? dropProtoKeys(value, new Map()) : value;
  if (shape.plainJson) return { enc: 'json', text: JSON.stringify(clean) ?? 'null' };
  try {
    return { enc: 'devalue', text: devalue.stringify(clean) };
  } catch (error) {
    const where = (error as { path?: unknown }).path;
    throw new CairnError(
      'UNSERIALIZABLE',
      `Cannot store this value${typeof where === 'string' && where ? ` at ${where}` : ''}: ${(error as Error).message}. ` +
        'Store plain data (objects, arrays, strings, numbers, booleans, null, Date, Map, Set, BigInt, Uint8Array).',
      { path: typeof where === 'string' ? where : undefined },
      { cause: error },
    );
  }
}

/** Inverse of {@link encodeValue} given already JSON-parsed text. Throws plain Errors on malformed data. */
export function decodeParsed(enc: Encoding, parsed: unknown, rawText?: string): unknown {
  if (enc === 'devalue') return devalue.unflatten(parsed as number | unknown[]);
  // JSON.parse defines `__proto__` as an own property (no pollution), but drop it so that later
  // merges by the user cannot be tricked either. Only pay for the walk when the key can be there.
  if (rawText === undefined || rawText.includes('"__proto__"')) return dropProtoKeys(parsed, new Map());
  return parsed;
}

/** Parses text written by {@link encodeValue}. */
export function decodeValue(encoded: EncodedValue): unknown {
  return decodeParsed(encoded.enc, JSON.parse(encoded.text), encoded.text);
}

interface Shape {
  plainJson: boolean;
  hasProtoKey: boolean;
}

/** One pass: is this plain JSON (tree of JSON types, no repeats), and does it hold `__proto__` keys? */
function inspectShape(root: unknown): Shape {
  const shape: Shape = { plainJson: true, hasProtoKey: false };
  const seen = new Set<object>();
  const stack: unknown[] = [root];
  while (stack.length > 0) {
    const value = stack.pop();
    switch (typeof value) {
      case 'string':
      case 'boolean':
        continue;
      case 'number':
        if (!Number.isFinite(value) || Object.is(value, -0)) shape.plainJson = false;
        continue;
      case 'object':
        break;
      default:
        shape.plainJson = false;
        continue;
    }
    if (value === null) continue;
    if (seen.has(value)) {
      shape.plainJson = false; // repeated or circular reference: keep identity with devalue
      continue;
    }
    seen.add(value);
    if (Array.isArray(value)) {
      for (let i = 0; i < value.length; i++) {
        if (!(i in value)) shape.plainJson = false;
        stack.push(value[i]);
      }
      continue;
    }
    const proto = Object.getPrototypeOf(value) as unknown;
    if (proto !== Object.prototype && proto !== null) {
      shape.plainJson = false; // Date, Map, Set, typed arrays… (devalue decides what it accepts)
      if (value instanceof Map) for (const [k, v] of value as Map<unknown, unknown>) stack.push(k, v);
      else if (value instanceof Set) for (const v of value as Set<unknown>) stack.push(v);
      continue;
    }
    for (const key of Object.keys(value)) {
      if (key === PROTO_KEY) {
        shape.hasProtoKey = true;
        continue;
      }
      const v = (value as Record<string, unknown>)[key];
      if (v === undefined) shape.plainJson = false;
      else stack.push(v);
    }
  }
  return shape;
}

/** Copies `value` without own `__proto__` keys, keeping shared and circular references shared. */
function dropProtoKeys(value: unknown, copies: Map<object, unknown>): unknown {
  if (typeof value !== 'object' || value === null) return value;
  const done = copies.get(value);
  if (done !== undefined) return done;
  if (Array.isArray(value)) {
    const out: unknown[] = new Array<unknown>(value.length);
    copies.set(value, out);
    for (let i = 0; i < value.length; i++) if (i in value) out[i] = dropProtoKeys(value[i], copies);
    return out;
  }
  if (value instanceof Map) {
    const out = new Map<unknown, unknown>();
    copies.set(value, out);
    for (const [k, v] of value as Map<unknown, unknown>) out.set(dropProtoKeys(k, copies), dropProtoKeys(v, copies));
    return out;
  }
  if (value instanceof Set) {
    const out = new Set<unknown>();
    copies.set(value, out);
    for (const v of value as Set<unknown>) out.add(dropProtoKeys(v, copies));
    return out;
  }
  const proto = Object.getPrototypeOf(value) as unknown;
  if (proto !== Object.prototype && proto !== null) return value;
  const out: Record<string, unknown> = proto === null ? (Object.create(null) as Record<string, unknown>) : {};
  copies.set(value, out);
  for (const key of Object.keys(value)) {
    if (key === PROTO_KEY) continue;
    out[key] = dropProtoKeys((value as Record<string, unknown>)[key], copies);
  }
  return out;
}
