/**
 * The `cairn export` file, format version 1: one JSON document per line (so `jq` and `head` work on
 * it), written and read as a stream.
 *
 *     {"format":"cairn-export","version":1,"type":"header","runId":…,"createdAt":…,"cairnVersion":…,"sourceStore":"file","withArtifacts":true}
 *     {"type":"run","line":"<sealed run record>"}
 *     {"type":"checkpoint","line":"<sealed checkpoint record>"}          one per checkpoint, seq order
 *     {"type":"items","stage":"s","lines":["<sealed item record>",…]}   ledgers, at most 1,000 lines each
 *     {"type":"artifact","line":"<sealed artifact manifest record>"}
 *     {"type":"file","path":"out/x.bin","size":4096,"sha256":"…"}         only with --with-artifacts:
 *     {"type":"chunk","path":"out/x.bin","offset":0,"data":"<base64>"}    the file's bytes, in order
 *     {"type":"end","runId":…,"lines":N,"bytes":B,"sha256":"…","hmacSha256":"…"}
 *
 * Records are the store's sealed lines, unchanged: each keeps its own CRC and format version, so a
 * run moves between store kinds byte for byte. The trailer's `sha256` covers every byte before the
 * trailer line (newlines included); `lines` and `bytes` count them. With `CAIRN_EXPORT_KEY` set,
 * `hmacSha256` is HMAC-SHA256 over the same bytes, keyed with the variable's UTF-8 text.
 */
import { createHash, createHmac, type Hash, type Hmac } from 'node:crypto';
import { createReadStream, readFileSync } from 'node:fs';
import { z } from 'zod';
import { CairnError, type ErrorContext } from '../core/errors.js';
import { assertRunId } from '../core/ids.js';
import type { ExportRecord } from '../stores/store.js';

export const EXPORT_FORMAT = 'cairn-export';
export const EXPORT_VERSION = 1;
/** The environment variable holding the signing key. */
export const KEY_ENV = 'CAIRN_EXPORT_KEY';
/** Raw bytes per `chunk` line (base64 makes them 256 KiB of text). */
export const CHUNK_BYTES = 192 * 1024;
/** Ledger lines per `items` line, and (roughly) their text size. */
export const ITEMS_PER_LINE = 1000;
export const ITEMS_CHARS_PER_LINE = 4 * 1024 * 1024;
/** Longest line accepted on import: a record holds at most a 64 MiB payload, escaped in a string. */
const MAX_LINE_BYTES = 256 * 1024 * 1024;
const NEWLINE = Buffer.from('\n');

/** The signing key from `CAIRN_EXPORT_KEY` (an empty value counts as unset). */
export function exportKey(): string | undefined {
  const key = process.env[KEY_ENV];
  return key ? key : undefined;
}

/** This package's version, for export headers (works from the sources and from dist). */
export function cairnVersion(): string {
  for (const rel of ['../../../package.json', '../../package.json']) {
    try {
      const pkg = JSON.parse(readFileSync(new URL(rel, import.meta.url), 'utf8')) as { name?: unknown; version?: unknown };
      if (pkg.name === 'cairnjs' && typeof pkg.version === 'string') return pkg.version;
    } catch {
      // try the next location
    }
  }
  return 'unknown';
}

const sha256Hex = z.string().regex(/^[0-9a-f]{64}$/);
const count = z.number().int().min(0);
const artifactPath = z.string().min(1).max(4096);

export const headerSchema = z.object({
  format: z.literal(EXPORT_FORMAT),
  version: z.literal(EXPORT_VERSION),
  type: z.literal('header'),
  runId: z.string(),
  createdAt: z.string().max(64),
  cairnVersion: z.string().max(64),
  sourceStore: z.string().max(32),
  withArtifacts: z.boolean(),
});
export type ExportHeader = z.infer<typeof headerSchema>;

export const trailerSchema = z.object({
  type: z.literal('end'),
  runId: z.string(),
  lines: count,
  bytes: count,
  sha256: sha256Hex,
  hmacSha256: sha256Hex.optional(),
});
export type ExportTrailer = z.infer<typeof trailerSchema>;

const bodySchema = z.discriminatedUnion('type', [
  z.object({ type: z.literal('run'), line: z.string() }),
  z.object({ type: z.literal('checkpoint'), line: z.string() }),
  z.object({ type: z.literal('items'), stage: z.string(), lines: z.array(z.string()) }),
  z.object({ type: z.literal('artifact'), line: z.string() }),
  z.object({ type: z.literal('file'), path: artifactPath, size: count, sha256: sha256Hex }),
  z.object({
    type: z.literal('chunk'),
    path: artifactPath,
    offset: count,
    data: z.string().regex(/^[A-Za-z0-9+/]*={0,2}$/),
  }),
]);

export type FileLine = { readonly type: 'file'; readonly path: string; readonly size: number; readonly sha256: string };
export type ChunkLine = { readonly type: 'chunk'; readonly path: string; readonly offset: number; readonly data: string };
/** A body line as read: a store record, or part of an artifact file. `lineNo` counts from 1. */
export type BodyLine = ({ readonly type: 'record'; readonly record: ExportRecord } | FileLine | ChunkLine) & { readonly lineNo: number };

/** `IMPORT_INVALID`: the file cannot be imported; nothing was written. */
export function invalidExport(message: string, context: ErrorContext = {}, cause?: unknown): CairnError {
  return new CairnError(
    'IMPORT_INVALID',
    `Import refused: ${message}. Nothing was written.`,
    context,
    cause === undefined ? undefined : { cause },
  );
}

export interface DigestState {
  readonly bytes: number;
  readonly lines: number;
  readonly sha256: string;
  /** Only from {@link ExportDigest.finish}, with a key. */
  readonly hmacSha256: string | undefined;
}

/** Running sha256 (and HMAC, with a key) over the bytes before the trailer. */
export class ExportDigest {
  private readonly hash: Hash = createHash('sha256');
  private readonly hmac: Hmac | undefined;
  bytes = 0;
  lines = 0;

  constructor(key: string | undefined) {
    this.hmac = key === undefined ? undefined : createHmac('sha256', key);
  }

  update(line: Buffer): void {
    this.hash.update(line);
    this.hmac?.update(line);
    this.bytes += line.length;
    this.lines += 1;
  }

  /** The sha256 so far; the running hash stays usable. */
  snapshot(): DigestState {
    return { bytes: this.bytes, lines: this.lines, sha256: this.hash.copy().digest('hex'), hmacSha256: undefined };
  }

  /** The final sha256 and HMAC (an HMAC cannot be copied: call this once, at the end). */
  finish(): DigestState {
    return { bytes: this.bytes, lines: this.lines, sha256: this.hash.digest('hex'), hmacSha256: this.hmac?.digest('hex') };
  }
}

/** Splits a file into lines (without the `\n`); a last line without `\n` means a truncated file. */
async function* splitLines(file: string): AsyncGenerator<Buffer> {
  let parts: Buffer[] = [];
  let partBytes = 0;
  let no = 0;
  for await (const chunk of createReadStream(file, { highWaterMark: 1024 * 1024 }) as AsyncIterable<Buffer>) {
    let start = 0;
    for (let nl = chunk.indexOf(10, start); nl >= 0; nl = chunk.indexOf(10, start)) {
      const piece = chunk.subarray(start, nl);
      no += 1;
      if (parts.length === 0) yield piece;
      else {
        yield Buffer.concat([...parts, piece], partBytes + piece.length);
        parts = [];
        partBytes = 0;
      }
      start = nl + 1;
    }
    if (start < chunk.length) {
      parts.push(chunk.subarray(start));
      partBytes += chunk.length - start;
      if (partBytes > MAX_LINE_BYTES) throw invalidExport(`line ${no + 1} is longer than ${MAX_LINE_BYTES} bytes`);
    }
  }
  if (partBytes > 0) throw invalidExport(`the file is truncated (line ${no + 1} has no end)`);
}

function parseLine(buffer: Buffer, lineNo: number): unknown {
  try {
    return JSON.parse(buffer.toString('utf8')) as unknown;
  } catch {
    throw invalidExport(`line ${lineNo} is not JSON (the file is damaged or not a cairn export)`);
  }
}

/** Checks the first line: a cairn export, of a version this cairn reads, for a valid run id. */
function readHeader(value: unknown): ExportHeader {
  const v = (typeof value === 'object' && value !== null ? value : {}) as Record<string, unknown>;
  if (v.format !== EXPORT_FORMAT) throw invalidExport('this is not a cairn export file (its first line has no "format":"cairn-export")');
  if (typeof v.version === 'number' && Number.isInteger(v.version) && v.version > EXPORT_VERSION) {
    throw new CairnError(
      'FORMAT_TOO_NEW',
      `Export format ${v.version} was written by a newer cairn (this one reads up to ${EXPORT_VERSION}). Upgrade cairnjs to import it; nothing was written.`,
      { formatVersion: v.version },
    );
  }
  const parsed = headerSchema.safeParse(value);
  if (!parsed.success) throw invalidExport(`the header is malformed (${parsed.error.issues[0]?.message ?? 'bad shape'})`);
  assertRunId(parsed.data.runId);
  return parsed.data;
}

/**
 * Reads an export file line by line. {@link body} yields the lines between header and trailer;
 * `header` is set before the first one, `trailer` and `computed` (digest of every byte before the
 * trailer) when it completes, and `recordsEnd` (digest up to the last store record) once the first
 * artifact line or the trailer is reached. Only the shape of lines is checked here.
 */
export class ExportFileReader {
  header: ExportHeader | undefined;
  trailer: ExportTrailer | undefined;
  recordsEnd: DigestState | undefined;
  computed: DigestState | undefined;

  constructor(
    readonly file: string,
    private readonly key: string | undefined,
  ) {}

  async *body(): AsyncGenerator<BodyLine> {
    const digest = new ExportDigest(this.key);
    let lineNo = 0;
    for await (const buffer of splitLines(this.file)) {
      lineNo += 1;
      if (this.trailer) throw invalidExport(`line ${lineNo} follows the trailer (the file was altered)`);
      const value = parseLine(buffer, lineNo);
      if (lineNo === 1) {
        this.header = readHeader(value);
        digest.update(Buffer.concat([buffer, NEWLINE]));
        continue;
      }
      if ((value as { type?: unknown } | null)?.type === 'end') {
        const trailer = trailerSchema.safeParse(value);
        if (!trailer.success) throw invalidExport(`the trailer is malformed (${trailer.error.issues[0]?.message ?? 'bad shape'})`);
        this.trailer = trailer.data;
        this.computed = digest.finish();
        this.recordsEnd ??= this.computed;
        continue;
      }
      const parsed = bodySchema.safeParse(value);
      if (!parsed.success) throw invalidExport(`line ${lineNo} is malformed (${parsed.error.issues[0]?.message ?? 'bad shape'})`);
      const line = parsed.data;
      if (line.type === 'file' || line.type === 'chunk') this.recordsEnd ??= digest.snapshot();
      digest.update(Buffer.concat([buffer, NEWLINE]));
      if (line.type === 'file' || line.type === 'chunk') yield { ...line, lineNo };
      else yield { type: 'record', record: line, lineNo };
    }
    if (lineNo === 0) throw invalidExport('the file is empty');
    if (!this.trailer) throw invalidExport(`the file is truncated (no trailer after line ${lineNo})`);
  }
}
