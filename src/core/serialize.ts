import * as devalue from 'devalue';
import { CairnError, isCairnError, type ErrorContext } from './errors.js';

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
 * Throws `UNSERIALIZABLE` for anything it cannot store (functions, symbols, class instances,
 * promises, values nested too deeply to walk), saying what and where in cairn's words.
 */
export function encodeValue(value: unknown): EncodedValue {
  try {
    const shape = inspectShape(value);
    const clean = shape.hasProtoKey ? dropProtoKeys(value, new Map()) : value;
    if (shape.plainJson) return { enc: 'json', text: JSON.stringify(clean) ?? 'null' };
    return { enc: 'devalue', text: devalue.stringify(clean) };
  } catch (error) {
    throw unserializableError(error);
  }
}

/**
 * `JSON.stringify` of a value cairn writes as JSON itself (checkpoint meta, a stored error), with
 * what it throws (a cycle, a BigInt, nesting too deep) turned into `UNSERIALIZABLE` about `subject`.
 */
export function stringifyJson(value: unknown, subject: string, context: ErrorContext = {}): string {
  try {
    return JSON.stringify(value) ?? 'null';
  } catch (error) {
    const { path, reason } = describeFailure(error);
    throw unserializable(subject, path, reason, context, error);
  }
}

/** What the serializer threw, as `UNSERIALIZABLE` (a CairnError is returned as it is). */
function unserializableError(error: unknown): unknown {
  if (isCairnError(error)) return error;
  if (error instanceof RangeError && /string length/i.test(error.message)) {
    return new CairnError(
      'PAYLOAD_TOO_LARGE',
      'The value is too large to be written as one text (JavaScript strings end near 512 MiB). ' +
        'Store large data as an artifact (a file) and keep its path instead.',
      {},
      { cause: error },
    );
  }
  const { path, reason } = describeFailure(error);
  return unserializable('The value', path, reason, {}, error);
}

/**
 * `UNSERIALIZABLE` about `subject` ("The output of stage s"): the message says what cannot be
 * stored, where (`path` inside it, as devalue names it: `.a[2].b`) and what to do. The path and the
 * reason are kept in the context, so that a caller that knows more can restate it
 * ({@link restateUnserializable}).
 */
export function unserializable(
  subject: string,
  path: string | undefined,
  reason: string,
  context: ErrorContext,
  cause?: unknown,
): CairnError {
  const where = path ? ` (at ${path})` : '';
  return new CairnError(
    'UNSERIALIZABLE',
    `${subject} cannot be stored${where}: ${reason}${/[.?!]$/.test(reason) ? '' : '.'}`,
    { ...context, ...(path ? { path } : {}), reason },
    cause === undefined ? undefined : { cause },
  );
}

/**
 * An `UNSERIALIZABLE` error about a value stored under `under` inside a record (`.output` of a
 * stage's checkpoint), restated about `subject` with the path inside that value; any other error
 * is returned as it is.
 */
export function restateUnserializable(error: unknown, subject: string, under: string, context: ErrorContext): unknown {
  if (!isCairnError(error, 'UNSERIALIZABLE')) return error;
  const { reason, path } = error.context;
  if (typeof reason !== 'string') return error;
  let inner = typeof path === 'string' && path.length > 0 ? path : undefined;
  if (inner !== undefined && (inner === under || inner.startsWith(`${under}.`) || inner.startsWith(`${under}[`)))
    inner = inner.slice(under.length) || undefined;
  return unserializable(subject, inner, reason, { ...error.context, ...context }, error.cause ?? error);
}

const STORABLE = 'store plain data: objects, arrays, strings, numbers, booleans, null, Date, Map, Set, BigInt, Uint8Array';

/** What a serializer's error means, in cairn's words (devalue's hints name its own API, not ours). */
function describeFailure(error: unknown): { path: string | undefined; reason: string } {
  const rawPath = (error as { path?: unknown } | null)?.path;
  const path = typeof rawPath === 'string' && rawPath.length > 0 ? rawPath : undefined;
  if (error instanceof RangeError) {
    return {
      path,
      reason:
        'it is nested too deeply to be written (thousands of levels, such as a long linked list or a tree built by recursion); ' +
        'store it flatter, for instance as a list of nodes that name their parent',
    };
  }
  const message = error instanceof Error ? error.message : String(error);
  if (/Promise|thenable/.test(message)) return { path, reason: 'it holds a Promise: did you forget an `await`?' };
  if (/a function/.test(message)) return { path, reason: `it holds a function; ${STORABLE}` };
  if (/Symbol primitive/.test(message)) return { path, reason: `it holds a Symbol; ${STORABLE}` };
  if (/symbolic keys/.test(message)) return { path, reason: `it has Symbol keys; ${STORABLE}` };
  if (/non-POJO/.test(message)) {
    const name = className((error as { value?: unknown }).value);
    return { path, reason: `it holds an instance of ${name ?? 'a class'}; store its data as a plain object instead (${STORABLE})` };
  }
  if (/circular/i.test(message)) return { path, reason: 'it holds a circular reference' };
  if (/BigInt/.test(message)) return { path, reason: 'it holds a BigInt' };
  if (error instanceof Error && !(error instanceof TypeError) && error.name !== 'DevalueError') {
    // thrown by the value itself while it was read (a getter, a proxy)
    return { path, reason: `reading it threw ${error.name}: ${message}` };
  }
  return { path, reason: `${message.replace(/\.$/, '')}; ${STORABLE}` };
}

function className(value: unknown): string | undefined {
  try {
    const ctor = (Object.getPrototypeOf(value) as { constructor?: { name?: unknown } } | null)?.constructor;
    return typeof ctor?.name === 'string' && ctor.name.length > 0 ? ctor.name : undefined;
  } catch {
    return undefined;
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
