import zlib from 'node:zlib';
import { crc32Hex } from './checksum.js';
import { CairnError, type ErrorContext } from './errors.js';
import { decodeParsed, encodeValue, restateUnserializable, type Encoding } from './serialize.js';

/**
 * Every stored record is one line of text:
 *
 *     {"crc":"1a2b3c4d","rec":{"fv":1,"t":"cp",…}}
 *
 * `rec` is the record body (JSON), `crc` the CRC-32 of exactly the body's text, and `fv` the
 * body's format version. The line is valid JSON (jq works on the files), and verifying it needs no
 * re-serialization: the body is the text between a fixed-length prefix and the final `}`.
 * All stores keep these same lines, so export/import carries checksums end to end.
 */
export const RECORD_FORMAT_VERSION = 1;

const PREFIX = '{"crc":"';
const MIDDLE = '","rec":';
const BODY_START = PREFIX.length + 8 + MIDDLE.length;

export interface PayloadLimits {
  /** Largest serialized payload accepted, in bytes. @defaultValue 64 MiB */
  readonly maxPayloadBytes: number;
  /** Payloads larger than this are stored deflated (base64). `false` never compresses. @defaultValue 256 KiB */
  readonly compressAboveBytes: number | false;
}

export const DEFAULT_LIMITS: PayloadLimits = Object.freeze({
  maxPayloadBytes: 64 * 1024 * 1024,
  compressAboveBytes: 256 * 1024,
});

/** Wraps a body (JSON object text) into a checksummed line. */
export function sealBody(body: string): string {
  return `${PREFIX}${crc32Hex(body)}${MIDDLE}${body}}`;
}

export type UnsealResult = { ok: true; body: Record<string, unknown>; bodyText: string } | { ok: false; reason: string };

/** Verifies a line's framing and checksum, then parses its body. Never throws. */
export function unsealLine(line: string): UnsealResult {
  if (typeof line !== 'string') return { ok: false, reason: 'record is not text' };
  if (line.length < BODY_START + 2 || !line.startsWith(PREFIX) || !line.endsWith('}')) {
    return { ok: false, reason: 'malformed record framing' };
  }
  if (line.slice(PREFIX.length + 8, BODY_START) !== MIDDLE) return { ok: false, reason: 'malformed record framing' };
  const crc = line.slice(PREFIX.length, PREFIX.length + 8);
  const bodyText = line.slice(BODY_START, -1);
  if (crc32Hex(bodyText) !== crc) return { ok: false, reason: 'checksum mismatch' };
  let body: unknown;
  try {
    body = JSON.parse(bodyText);
  } catch {
    return { ok: false, reason: 'body is not JSON' };
  }
  if (typeof body !== 'object' || body === null || Array.isArray(body)) return { ok: false, reason: 'body is not an object' };
  return { ok: true, body: body as Record<string, unknown>, bodyText };
}

/** A payload as written into a body: `"enc":…,"zip":…,"data":…` (data is raw JSON or base64). */
export interface SealedPayload {
  /** The body fragment, without braces: `"enc":"json","zip":0,"data":{...}`. */
  fragment: string;
  /** Serialized size before compression. */
  bytes: number;
}

/**
 * Serializes a value into a body fragment, enforcing the size limit and compressing large
 * payloads. Throws `PAYLOAD_TOO_LARGE` or `UNSERIALIZABLE`.
 */
export function sealPayload(value: unknown, limits: PayloadLimits, context: ErrorContext = {}): SealedPayload {
  const scalar = scalarPayloadFragment(value, limits);
  if (scalar !== undefined) return scalar;
  let encoded;
  try {
    encoded = encodeValue(value);
  } catch (error) {
    throw typeof context.item === 'string' ? restateUnserializable(error, `The result of item ${context.item}`, '', context) : error;
  }
  const { enc, text } = encoded;
  const bytes = Buffer.byteLength(text, 'utf8');
  if (bytes > limits.maxPayloadBytes) {
    throw new CairnError(
      'PAYLOAD_TOO_LARGE',
      `Payload of ${bytes} bytes exceeds the limit of ${limits.maxPayloadBytes} bytes. ` +
        'Store large data as an artifact (a file) and keep its path in the state, or raise maxPayloadBytes.',
      { ...context, bytes, limit: limits.maxPayloadBytes },
    );
  }
  if (limits.compressAboveBytes !== false && bytes > limits.compressAboveBytes) {
    const zipped = zlib.deflateRawSync(text).toString('base64');
    return { fragment: `"enc":"${enc}","zip":"deflate","data":"${zipped}"`, bytes };
  }
  return { fragment: `"enc":"${enc}","zip":0,"data":${text}`, bytes };
}

/**
 * The sealed form of a scalar (string, finite number, boolean, null), without the shape walk and
 * checks of {@link sealPayload}: the common result of an item. Undefined for anything else.
 */
export function scalarPayloadFragment(value: unknown, limits: PayloadLimits): SealedPayload | undefined {
  const text = smallScalarJson(value, limits);
  if (text === undefined) return undefined;
  return {
    fragment: `"enc":"json","zip":0,"data":${text}`,
    bytes: typeof value === 'string' ? Buffer.byteLength(text, 'utf8') : text.length,
  };
}

/**
 * The JSON text of a scalar (see scalarText) that is stored as is: within the payload limit and
 * below the compression threshold. Undefined for anything else (it is sealed as a payload).
 */
export function smallScalarJson(value: unknown, limits: PayloadLimits): string | undefined {
  const text = scalarText(value);
  if (text === undefined) return undefined;
  const bytes = typeof value === 'string' ? Buffer.byteLength(text, 'utf8') : text.length;
  if (bytes > limits.maxPayloadBytes || (limits.compressAboveBytes !== false && bytes > limits.compressAboveBytes)) return undefined;
  return text;
}

/** JSON text of a string, a finite number (not -0), a boolean or null; undefined for anything else. */
function scalarText(value: unknown): string | undefined {
  switch (typeof value) {
    case 'string':
      return JSON.stringify(value);
    case 'number':
      return Number.isFinite(value) && !Object.is(value, -0) ? String(value) : undefined; // String(n) is JSON for finite n
    case 'boolean':
      return value ? 'true' : 'false';
    case 'object':
      return value === null ? 'null' : undefined;
    default:
      return undefined;
  }
}

/** Reads the payload back out of a parsed body. Throws plain Errors on malformed data. */
export function openPayload(body: Record<string, unknown>, bodyText?: string): unknown {
  const enc = body.enc;
  if (enc !== 'json' && enc !== 'devalue') throw new Error(`unknown encoding ${String(enc)}`);
  const encoding: Encoding = enc;
  if (body.zip === 'deflate') {
    if (typeof body.data !== 'string') throw new Error('compressed data is not a string');
    const text = zlib.inflateRawSync(Buffer.from(body.data, 'base64')).toString('utf8');
    return decodeParsed(encoding, JSON.parse(text), text);
  }
  if (body.zip !== 0) throw new Error(`unknown compression ${String(body.zip)}`);
  return decodeParsed(encoding, body.data, bodyText);
}

/** Checks `fv` and throws `FORMAT_TOO_NEW` for records written by a newer cairn. */
export function checkFormatVersion(body: Record<string, unknown>, context: ErrorContext = {}): void {
  const fv = body.fv;
  if (typeof fv !== 'number' || !Number.isInteger(fv) || fv < 1) {
    throw new CairnError('CHECKPOINT_CORRUPT', 'Record has no valid format version.', context);
  }
  if (fv > RECORD_FORMAT_VERSION) {
    throw new CairnError(
      'FORMAT_TOO_NEW',
      `Record format ${fv} was written by a newer cairn (this one reads up to ${RECORD_FORMAT_VERSION}). Upgrade cairnjs to read it; nothing was changed.`,
      { ...context, formatVersion: fv },
    );
  }
}

/** JSON-quotes a string for hand-built bodies. */
export const q = (s: string): string => JSON.stringify(s);
