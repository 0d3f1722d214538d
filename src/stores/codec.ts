/**
 * Encoding and decoding of the four record types every store keeps (run, checkpoint, item,
 * artifact) as sealed lines. Stores call these instead of writing JSON themselves, so that all
 * stores hold the same bytes and export/import between them keeps checksums intact.
 * Stored bytes are untrusted: every decoded body is checked against a schema.
 */
import { z } from 'zod';
import { CairnError, type ErrorContext, type SerializedError } from '../core/errors.js';
import { isValidRunId } from '../core/ids.js';
import { decodeParsed, stringifyJson } from '../core/serialize.js';
import {
  checkFormatVersion,
  openPayload,
  q,
  RECORD_FORMAT_VERSION,
  sealBody,
  scalarPayloadFragment,
  smallScalarJson,
  sealPayload,
  unsealLine,
  type PayloadLimits,
} from '../core/record.js';
import {
  RUN_STATUSES,
  type ArtifactEntry,
  type Checkpoint,
  type CheckpointEntry,
  type CheckpointRef,
  type ItemEntry,
  type ItemEntryExtras,
  type RunRecord,
  type StoreProblem,
} from './store.js';

const FV = `"fv":${RECORD_FORMAT_VERSION}`;

const idSchema = z.string().refine(isValidRunId, 'invalid id');
const isoSchema = z.string().min(1).max(64);
const metaSchema = z.record(z.string(), z.unknown());

const runHeader = z.object({
  t: z.literal('run'),
  id: idSchema,
  name: z.string().max(1024),
  status: z.enum(RUN_STATUSES),
  version: z.number().int().min(1),
  createdAt: isoSchema,
  updatedAt: isoSchema,
});

const checkpointHeader = z.object({
  t: z.literal('cp'),
  run: idSchema,
  seq: z.number().int().min(1),
  at: isoSchema,
  kind: z.string().min(1).max(64),
  stage: z.string().max(256).optional(),
  meta: metaSchema.optional(),
  bytes: z.number().int().min(0),
});

const artifactBody = z.object({
  t: z.literal('art'),
  path: z.string().min(1).max(4096),
  size: z.number().int().min(0),
  sha256: z.string().regex(/^[0-9a-f]{64}$/),
  stage: z.string().max(256).optional(),
  at: isoSchema,
});

/** A stored error (name, message, code, stack, context, cause), as `serializeError` writes it. */
export const serializedErrorSchema: z.ZodType<SerializedError> = z.lazy(() =>
  z.object({
    name: z.string(),
    message: z.string(),
    code: z.string().optional(),
    stack: z.string().optional(),
    context: z.record(z.string(), z.unknown()).optional(),
    cause: serializedErrorSchema.optional(),
  }),
);

/** Thrown by decoders: the record is damaged or not what it claims to be. */
export function corrupt(message: string, context: ErrorContext = {}, cause?: unknown): CairnError {
  return new CairnError('CHECKPOINT_CORRUPT', message, context, cause === undefined ? undefined : { cause });
}

function openLine(line: string, what: string, context: ErrorContext): { body: Record<string, unknown>; bodyText: string } {
  const result = unsealLine(line);
  if (!result.ok) throw corrupt(`Damaged ${what} record: ${result.reason}.`, context);
  checkFormatVersion(result.body, context);
  return { body: result.body, bodyText: result.bodyText };
}

function parseHeader<T>(schema: z.ZodType<T>, body: unknown, what: string, context: ErrorContext): T {
  const parsed = schema.safeParse(body);
  if (!parsed.success) throw corrupt(`Damaged ${what} record: ${parsed.error.issues[0]?.message ?? 'bad shape'}.`, context);
  return parsed.data;
}

function readPayload(body: Record<string, unknown>, bodyText: string, what: string, context: ErrorContext): unknown {
  try {
    return openPayload(body, bodyText);
  } catch (error) {
    throw corrupt(`Damaged ${what} record: payload unreadable (${(error as Error).message}).`, context, error);
  }
}

// Runs

/** Seals a run record; `INVALID_INPUT` (nothing written) if it could not be read back (bad status, name too long…). */
export function encodeRun(run: RunRecord, limits: PayloadLimits): string {
  const header = runHeader.safeParse({ ...run, t: 'run' });
  if (!header.success) {
    const issue = header.error.issues[0];
    throw new CairnError(
      'INVALID_INPUT',
      `Run ${run.id} cannot be stored: ${issue?.path.join('.') ?? 'record'} ${issue?.message ?? 'is invalid'}.`,
      {
        runId: run.id,
      },
    );
  }
  const payload = sealPayload(run.data, limits, { runId: run.id });
  return sealBody(
    `{${FV},"t":"run","id":${q(run.id)},"name":${q(run.name)},"status":${q(run.status)},"version":${run.version},` +
      `"createdAt":${q(run.createdAt)},"updatedAt":${q(run.updatedAt)},${payload.fragment}}`,
  );
}

export function decodeRun(line: string, context: ErrorContext = {}): RunRecord {
  const { body, bodyText } = openLine(line, 'run', context);
  const header = parseHeader(runHeader, body, 'run', context);
  const data = readPayload(body, bodyText, 'run', { ...context, runId: header.id });
  return {
    id: header.id,
    name: header.name,
    status: header.status,
    version: header.version,
    createdAt: header.createdAt,
    updatedAt: header.updatedAt,
    data,
  };
}

// Checkpoints

export interface EncodedCheckpoint {
  line: string;
  ref: CheckpointRef;
}

export function encodeCheckpoint(
  runId: string,
  seq: number,
  createdAt: string,
  input: { kind?: string; stage?: string; meta?: Readonly<Record<string, unknown>>; state: unknown },
  limits: PayloadLimits,
): EncodedCheckpoint {
  const kind = input.kind ?? 'state';
  if (kind.length === 0 || kind.length > 64)
    throw new CairnError('INVALID_INPUT', 'Checkpoint kind must be 1 to 64 characters.', { runId });
  if (input.stage !== undefined && input.stage.length > 256)
    throw new CairnError('INVALID_INPUT', 'Stage name is longer than 256 characters.', { runId });
  const payload = sealPayload(input.state, limits, { runId, seq });
  let metaText = '';
  if (input.meta !== undefined) {
    if (typeof input.meta !== 'object' || input.meta === null || Array.isArray(input.meta)) {
      throw new CairnError('INVALID_INPUT', 'Checkpoint meta must be a plain object.', { runId });
    }
    metaText = `,"meta":${stringifyJson(input.meta, 'The checkpoint meta', { runId, seq })}`;
  }
  const stageText = input.stage === undefined ? '' : `,"stage":${q(input.stage)}`;
  const line = sealBody(
    `{${FV},"t":"cp","run":${q(runId)},"seq":${seq},"at":${q(createdAt)},"kind":${q(kind)}${stageText}${metaText},"bytes":${payload.bytes},${payload.fragment}}`,
  );
  const ref: CheckpointRef = {
    runId,
    seq,
    createdAt,
    kind,
    ...(input.stage === undefined ? {} : { stage: input.stage }),
    ...(input.meta === undefined ? {} : { meta: JSON.parse(metaText.slice(8)) as Record<string, unknown> }),
    bytes: payload.bytes,
  };
  return { line, ref };
}

/** Decodes a checkpoint line; with `withState: false` the payload is not parsed (listings). */
export function decodeCheckpoint(line: string, context: ErrorContext, withState: true): Checkpoint;
export function decodeCheckpoint(line: string, context: ErrorContext, withState: false): CheckpointRef;
export function decodeCheckpoint(line: string, context: ErrorContext, withState: boolean): Checkpoint | CheckpointRef {
  const { body, bodyText } = openLine(line, 'checkpoint', context);
  const h = parseHeader(checkpointHeader, body, 'checkpoint', context);
  const ref: CheckpointRef = {
    runId: h.run,
    seq: h.seq,
    createdAt: h.at,
    kind: h.kind,
    ...(h.stage === undefined ? {} : { stage: h.stage }),
    ...(h.meta === undefined ? {} : { meta: h.meta }),
    bytes: h.bytes,
  };
  if (!withState) return ref;
  return { ...ref, state: readPayload(body, bodyText, 'checkpoint', { ...context, seq: h.seq }) };
}

// Items

/** Batch framing used by append-only files: every line names its batch, the last one its size. */
export interface BatchMark {
  id: number;
  /** Set on the batch's last line: how many lines the batch has. */
  size?: number;
}

export function encodeItem(entry: ItemEntry, limits: PayloadLimits, context: ErrorContext, batch?: BatchMark): string {
  const batchText = batch === undefined ? '' : batch.size === undefined ? `,"b":${batch.id}` : `,"b":${batch.id},"n":${batch.size}`;
  return encodeItemWith(entry, limits, context, batchText);
}

/** {@link encodeItem} with the batch mark as body text (`,"b":…` or `,"b":…,"n":…`), for batch encoders. */
export function encodeItemWith(entry: ItemEntry, limits: PayloadLimits, context: ErrorContext, batchText: string): string {
  if (typeof entry.key !== 'string' || entry.key.length === 0 || entry.key.length > 1024) {
    throw new CairnError('INVALID_INPUT', 'Item key must be a string of 1 to 1024 characters.', context);
  }
  if (!Number.isInteger(entry.index) || entry.index < 0)
    throw new CairnError('INVALID_INPUT', 'Item index must be a non-negative integer.', context);
  const head = `{${FV},"t":"item","key":${q(entry.key)},"i":${entry.index},"a":${entry.attempt}${batchText}${extrasText(entry, context)}`;
  if (entry.status === 'done') {
    const payload = scalarPayloadFragment(entry.result, limits) ?? sealPayload(entry.result, limits, { ...context, item: entry.key });
    return sealBody(`${head},"s":"done",${payload.fragment}}`);
  }
  return sealBody(`${head},"s":"failed","err":${stringifyJson(entry.error, `The error of item ${entry.key}`, context)}}`);
}

export interface DecodedItem {
  entry: ItemEntry;
  batch?: BatchMark;
}

/** Decodes an item line. Hand-checked rather than schema-parsed: this is the hot path of resume. */
export function decodeItem(line: string, context: ErrorContext): DecodedItem {
  const { body, bodyText } = openLine(line, 'item', context);
  const { t, key, i, a, s, b, n } = body;
  if (t !== 'item' || typeof key !== 'string' || typeof i !== 'number' || !Number.isInteger(i) || i < 0 || typeof a !== 'number') {
    throw corrupt('Damaged item record: bad shape.', context);
  }
  let batch: BatchMark | undefined;
  if (typeof b === 'number') batch = typeof n === 'number' ? { id: b, size: n } : { id: b };
  if (s === 'done') {
    const result = readPayload(body, bodyText, 'item', context);
    return { entry: { key, index: i, attempt: a, status: 'done', result, ...extrasOf(body, context) }, ...(batch ? { batch } : {}) };
  }
  if (s === 'failed') {
    const error = serializedErrorSchema.safeParse(body.err);
    if (!error.success) throw corrupt('Damaged item record: bad error.', context);
    return {
      entry: { key, index: i, attempt: a, status: 'failed', error: error.data, ...extrasOf(body, context) },
      ...(batch ? { batch } : {}),
    };
  }
  throw corrupt('Damaged item record: unknown status.', context);
}

/**
 * An item line of the file store's ledger format 2: short JSON, no checksum of its own (its batch
 * has one). `k` is left out when the key is the index as text, `a` when the attempt is 1; a plain
 * JSON result is `v`, anything else the payload fields (`enc`, `zip`, `data`).
 */
export function encodeItemV2(entry: ItemEntry, limits: PayloadLimits, context: ErrorContext): string {
  if (typeof entry.key !== 'string' || entry.key.length === 0 || entry.key.length > 1024) {
    throw new CairnError('INVALID_INPUT', 'Item key must be a string of 1 to 1024 characters.', context);
  }
  if (!Number.isInteger(entry.index) || entry.index < 0)
    throw new CairnError('INVALID_INPUT', 'Item index must be a non-negative integer.', context);
  const keyText = entry.key === String(entry.index) ? '' : `"k":${q(entry.key)},`;
  const head = `{${keyText}"i":${entry.index}${entry.attempt === 1 ? '' : `,"a":${entry.attempt}`}${extrasText(entry, context)}`;
  if (entry.status === 'failed') return `${head},"err":${stringifyJson(entry.error, `The error of item ${entry.key}`, context)}}`;
  const scalar = smallScalarJson(entry.result, limits);
  if (scalar !== undefined) return `${head},"v":${scalar}}`;
  const { fragment } = sealPayload(entry.result, limits, { ...context, item: entry.key });
  return `${head},${fragment.startsWith(PLAIN_JSON) ? `"v":${fragment.slice(PLAIN_JSON.length)}` : fragment}}`;
}

const PLAIN_JSON = '"enc":"json","zip":0,"data":';

/**
 * Decodes the item lines of ledger format 2 given as one text (lines joined by `\n`, its batch
 * verified), parsed as one JSON array: half the cost of a parse per line. `CHECKPOINT_CORRUPT` on
 * a bad shape.
 */
export function decodeItemsV2(text: string, context: ErrorContext): ItemEntry[] {
  let bodies: unknown;
  try {
    bodies = JSON.parse(`[${text.replaceAll('\n', ',')}]`); // JSON text holds no raw newline: each one ends a line
  } catch {
    throw corrupt('Damaged item record: not JSON.', context);
  }
  if (!Array.isArray(bodies)) throw corrupt('Damaged item record: bad shape.', context);
  const entries = new Array<ItemEntry>(bodies.length);
  const rawText = text.includes('"__proto__"') ? text : undefined; // the walk that drops such keys only when one is there
  for (let n = 0; n < bodies.length; n++) entries[n] = itemOfBody(bodies[n], rawText, context);
  return entries;
}

function itemOfBody(value: unknown, rawText: string | undefined, context: ErrorContext): ItemEntry {
  if (typeof value !== 'object' || value === null) throw corrupt('Damaged item record: bad shape.', context);
  const body = value as Record<string, unknown>;
  const { k, i, a } = body;
  if (typeof i !== 'number' || !Number.isInteger(i) || i < 0) throw corrupt('Damaged item record: bad shape.', context);
  const key = k === undefined ? String(i) : k;
  const attempt = a === undefined ? 1 : a;
  if (typeof key !== 'string' || typeof attempt !== 'number') throw corrupt('Damaged item record: bad shape.', context);
  const extras = body.$ === undefined && body.h === undefined && body.ru === undefined ? undefined : extrasOf(body, context);
  if (body.err !== undefined) {
    const error = serializedErrorSchema.safeParse(body.err);
    if (!error.success) throw corrupt('Damaged item record: bad error.', context);
    return { key, index: i, attempt, status: 'failed', error: error.data, ...extras };
  }
  const result = 'v' in body ? decodeParsed('json', body.v, rawText ?? '') : readPayload(body, rawText ?? '', 'item', context);
  return extras ? { key, index: i, attempt, status: 'done', result, ...extras } : { key, index: i, attempt, status: 'done', result };
}

/** Most units one spend record may name. */
export const MAX_SPEND_UNITS = 32;
const SPEND_UNIT = /^(?!__)[A-Za-z_][\w.-]{0,63}$/; // never `__proto__` and the like

/**
 * Checks a spend record (`{ usd: 0.01, tokens: 900 }`): at most {@link MAX_SPEND_UNITS} units named
 * like identifiers, each a finite number ≥ 0. Returns the problem, or undefined when it is fine.
 */
export function spendProblem(spend: unknown): string | undefined {
  if (typeof spend !== 'object' || spend === null || Array.isArray(spend)) return 'spend must be an object of numbers by unit';
  const units = Object.keys(spend);
  if (units.length > MAX_SPEND_UNITS) return `spend names ${units.length} units; at most ${MAX_SPEND_UNITS}`;
  for (const unit of units) {
    if (!SPEND_UNIT.test(unit)) return `spend unit ${JSON.stringify(unit.slice(0, 70))} is not a name (letters, digits, _ . -; up to 64)`;
    const value = (spend as Record<string, unknown>)[unit];
    if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) return `spend of ${unit} must be a finite number ≥ 0`;
  }
  return undefined;
}

/** The optional fields of an item line (`$` spend, `h` content hash, `ru` reused from), as body text. */
function extrasText(entry: ItemEntry, context: ErrorContext): string {
  let text = '';
  if (entry.spend !== undefined && Object.keys(entry.spend).length > 0) {
    const problem = spendProblem(entry.spend);
    if (problem) throw new CairnError('INVALID_INPUT', `Item ${entry.key}: ${problem}.`, context);
    text += `,"$":${JSON.stringify(entry.spend)}`;
  }
  if (entry.hash !== undefined) text += `,"h":${q(entry.hash)}`;
  if (entry.reusedFrom !== undefined) text += `,"ru":${q(entry.reusedFrom)}`;
  return text;
}

function extrasOf(body: Record<string, unknown>, context: ErrorContext): ItemEntryExtras {
  const { $: spend, h: hash, ru: reusedFrom } = body;
  if (spend !== undefined && spendProblem(spend) !== undefined) throw corrupt('Damaged item record: bad spend.', context);
  if (hash !== undefined && typeof hash !== 'string') throw corrupt('Damaged item record: bad hash.', context);
  if (reusedFrom !== undefined && typeof reusedFrom !== 'string') throw corrupt('Damaged item record: bad reuse mark.', context);
  return {
    ...(spend === undefined ? {} : { spend: spend as Record<string, number> }),
    ...(hash === undefined ? {} : { hash }),
    ...(reusedFrom === undefined ? {} : { reusedFrom }),
  };
}

// Artifacts

export function encodeArtifact(entry: ArtifactEntry): string {
  const stageText = entry.stage === undefined ? '' : `,"stage":${q(entry.stage)}`;
  return sealBody(
    `{${FV},"t":"art","path":${q(entry.path)},"size":${entry.size},"sha256":${q(entry.sha256)}${stageText},"at":${q(entry.createdAt)}}`,
  );
}

export function decodeArtifact(line: string, context: ErrorContext): ArtifactEntry {
  const { body } = openLine(line, 'artifact', context);
  const a = parseHeader(artifactBody, body, 'artifact', context);
  return { path: a.path, size: a.size, sha256: a.sha256, ...(a.stage === undefined ? {} : { stage: a.stage }), createdAt: a.at };
}

/** Validates an artifact entry given by a caller (relative path without `..`, sizes, hash). */
export function checkArtifactEntry(entry: ArtifactEntry, runId: string): void {
  const parsed = artifactBody.safeParse({
    t: 'art',
    path: entry.path,
    size: entry.size,
    sha256: entry.sha256,
    stage: entry.stage,
    at: entry.createdAt,
  });
  const segments = entry.path.split('/');
  if (
    !parsed.success ||
    entry.path.startsWith('/') ||
    entry.path.includes('\\') ||
    entry.path.includes('\0') ||
    segments.some((s) => s === '..' || s === '' || s === '.')
  ) {
    throw new CairnError(
      'INVALID_INPUT',
      `Invalid artifact entry ${JSON.stringify(entry.path)}: use a relative path inside the run's artifact folder, its size and sha256.`,
      { runId },
    );
  }
}

/** Latest entry per path, in first-seen order. */
/** The manifest from stored artifact lines: the latest intact entry per path (damaged lines are for validateRun). */
export function manifestOf(lines: Iterable<string>, runId: string): ArtifactEntry[] {
  const entries: ArtifactEntry[] = [];
  for (const line of lines) {
    if (line.length === 0) continue;
    try {
      entries.push(decodeArtifact(line, { runId }));
    } catch {
      // reported by validateRun
    }
  }
  return latestArtifacts(entries);
}

/**
 * Decodes a stage's ledger lines in append order, page by page: a damaged or newer-format entry is
 * reported to `onProblem` (with its 1-based position) and skipped; anything else that fails throws.
 */
export async function* decodeLedger(
  pages: AsyncIterable<readonly string[]> | Iterable<readonly string[]>,
  runId: string,
  stage: string,
  onProblem: ((problem: StoreProblem) => void) | undefined,
): AsyncGenerator<ItemEntry> {
  const context = { runId, stage };
  let position = 0;
  for await (const lines of pages) {
    for (const line of lines) {
      position++;
      let entry: ItemEntry;
      try {
        entry = decodeItem(line, context).entry;
      } catch (error) {
        const e = error as CairnError;
        if (e.code !== 'CHECKPOINT_CORRUPT' && e.code !== 'FORMAT_TOO_NEW') throw error;
        onProblem?.({ code: e.code, runId, where: `items/${stage}`, position, message: e.message });
        continue;
      }
      yield entry;
    }
  }
}

export function latestArtifacts(entries: Iterable<ArtifactEntry>): ArtifactEntry[] {
  const byPath = new Map<string, ArtifactEntry>();
  for (const entry of entries) {
    byPath.delete(entry.path);
    byPath.set(entry.path, entry);
  }
  return [...byPath.values()];
}

// Rows of database stores: a record is checked against the row it sits in

/** Decodes the run row of `runId`; a valid record of another run in that row is damage too. */
export function decodeRunRow(line: string, runId: string): RunRecord {
  const run = decodeRun(line, { runId });
  if (run.id !== runId) throw corrupt(`The record of run ${runId} holds run ${run.id}.`, { runId });
  return run;
}

/** Why a record could not be decoded, without the decoder's `Damaged … record:` prefix. */
export function damageReason(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  return message.replace(/^Damaged \w+ record: /, '').replace(/\.$/, '');
}

/**
 * `CHECKPOINT_CORRUPT` for a run record nothing intact is left to read back from: it names the
 * run, the file or row, and what to do.
 */
export function unreadableRunError(runId: string, where: string, reason: string, cause?: unknown): CairnError {
  return new CairnError(
    'CHECKPOINT_CORRUPT',
    `The run record of run ${runId} is damaged (${where}: ${reason}) and no intact copy of it is left to read it back from. ` +
      `Its checkpoints, item ledgers and artifacts are kept (cairn validate ${runId} lists what is intact); ` +
      `cairn delete ${runId} removes the run.`,
    { runId, where },
    cause === undefined ? undefined : { cause },
  );
}

/** A run row's columns: copies of the record's header, written in the same statement as its line. */
export interface RunRowColumns {
  readonly id: string;
  readonly name: string;
  readonly status: string;
  readonly version: number;
  readonly createdAt: string;
  readonly updatedAt: string;
  readonly line: string;
}

/**
 * Decodes a run row; a damaged record is read back from the row's columns, header only (its
 * summary is lost: `rebuilt.dataLost`). `FORMAT_TOO_NEW` is not damage and is thrown; so is a
 * row whose columns do not make a header either.
 */
export function decodeRunRowOrRebuild(row: RunRowColumns, where: string): RunRecord {
  try {
    return decodeRunRow(row.line, row.id);
  } catch (error) {
    if ((error as CairnError).code !== 'CHECKPOINT_CORRUPT') throw error;
    const reason = damageReason(error);
    const header = runHeader.safeParse({ ...row, version: Number(row.version), t: 'run' });
    if (!header.success || header.data.id !== row.id) throw unreadableRunError(row.id, where, reason, error);
    const h = header.data;
    return {
      id: h.id,
      name: h.name,
      status: h.status,
      version: h.version,
      createdAt: h.createdAt,
      updatedAt: h.updatedAt,
      data: undefined,
      rebuilt: { where, reason, from: "the row's columns (name, status, version, times)", dataLost: true },
    };
  }
}

/**
 * `CHECKPOINT_CORRUPT` for what cannot be done with a run whose record was read back without its
 * summary (`what`: "an update must give the summary whole", "it cannot be exported"…).
 */
export function summaryLostError(runId: string, damage: { readonly where: string; readonly reason: string }, what: string): CairnError {
  return new CairnError(
    'CHECKPOINT_CORRUPT',
    `The run record of run ${runId} is damaged (${damage.where}: ${damage.reason}) and its summary is lost: ${what}. ` +
      'Run its definition again with the same input to rebuild it from the intact checkpoints and item results ' +
      `(cairn run <module> --input <json> --run-id ${runId}), or remove the run with cairn delete ${runId}.`,
    { runId, where: damage.where },
  );
}

/** {@link summaryLostError} for an update of such a record that gives no summary. */
export function summaryRequiredError(run: RunRecord): CairnError {
  return summaryLostError(run.id, run.rebuilt ?? { where: 'run record', reason: 'unreadable' }, 'an update must give the summary whole');
}

/** The run record problem `validateRun` reports for a record read back from what is intact. */
export function rebuiltRunProblem(run: RunRecord): StoreProblem | undefined {
  const rebuilt = run.rebuilt;
  if (!rebuilt) return undefined;
  const how = rebuilt.dataLost
    ? `its header is read back from ${rebuilt.from}; its summary is lost`
    : `it is read back from ${rebuilt.from} until the next update writes it whole again`;
  return {
    code: 'CHECKPOINT_CORRUPT',
    runId: run.id,
    where: 'run',
    message: `The run record of run ${run.id} is damaged (${rebuilt.where}: ${rebuilt.reason}); ${how}.`,
  };
}

/** Decodes checkpoint row (`runId`, `seq`); with `withState: false` the payload is not parsed. */
export function decodeCheckpointRow(line: string, runId: string, seq: number, withState: true): Checkpoint;
export function decodeCheckpointRow(line: string, runId: string, seq: number, withState: false): CheckpointRef;
export function decodeCheckpointRow(line: string, runId: string, seq: number, withState: boolean): CheckpointRef {
  const cp = withState ? decodeCheckpoint(line, { runId, seq }, true) : decodeCheckpoint(line, { runId, seq }, false);
  if (cp.seq !== seq || cp.runId !== runId)
    throw corrupt(`Checkpoint ${seq} of run ${runId} holds another record (run ${cp.runId}, seq ${cp.seq}).`, { runId, seq });
  return cp;
}

/** A listing entry: the ref, or why the row cannot be used. */
export function checkpointEntry(line: string, runId: string, seq: number): CheckpointEntry {
  try {
    return { valid: true, ref: decodeCheckpointRow(line, runId, seq, false) };
  } catch (error) {
    const e = error as CairnError;
    return { valid: false, seq, reason: e.message, code: e.code === 'FORMAT_TOO_NEW' ? 'FORMAT_TOO_NEW' : 'CHECKPOINT_CORRUPT' };
  }
}
