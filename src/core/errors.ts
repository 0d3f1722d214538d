/**
 * Every error cairn throws on purpose is a {@link CairnError} with a stable string `code`.
 * Check errors by code (`isCairnError(e, 'RUN_LOCKED')`), never by `instanceof`: errors cross
 * process boundaries (stored error checkpoints, CLI output) and must survive a round trip.
 */
export const ERROR_CODES = [
  'INVALID_RUN_ID',
  'INVALID_INPUT',
  'INVALID_STORE_URL',
  'NOT_FOUND',
  'ALREADY_EXISTS',
  'LEFTOVER_RECORDS',
  'CONFLICT',
  'RUN_LOCKED',
  'LEASE_LOST',
  'CHECKPOINT_CORRUPT',
  'FORMAT_TOO_NEW',
  'SCHEMA_TOO_NEW',
  'PAYLOAD_TOO_LARGE',
  'UNSERIALIZABLE',
  'DRIVER_MISSING',
  'STORE_CLOSED',
  'STORE_BUSY',
  'STORE_UNAVAILABLE',
  'STORE_FULL',
  'FINGERPRINT_CHANGED',
  'ARTIFACT_MISMATCH',
  'IMPORT_INVALID',
  'INVALID_DEFINITION',
  'ITEM_FAILED',
  'STAGE_TIMEOUT',
  'ITEM_TIMEOUT',
  'MAX_STEPS_EXCEEDED',
  'RUN_INTERRUPTED',
  'RUN_CANCELLED',
  'STATE_TOO_NEW',
  'NOT_SUPPORTED',
  'UNSAFE_PATH',
] as const;

export type ErrorCode = (typeof ERROR_CODES)[number];

/** Readonly facts about where an error happened; every field optional. */
export interface ErrorContext {
  readonly runId?: string;
  readonly stage?: string;
  readonly seq?: number;
  readonly [key: string]: unknown;
}

export class CairnError extends Error {
  override readonly name = 'CairnError';
  readonly code: ErrorCode;
  readonly context: ErrorContext;

  constructor(code: ErrorCode, message: string, context: ErrorContext = {}, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.context = Object.freeze({ ...context });
  }

  /** A plain object that can be stored and revived with {@link reviveError}. */
  toJSON(): SerializedError {
    return serializeError(this);
  }
}

export interface SerializedError {
  name: string;
  message: string;
  code?: string;
  stack?: string;
  context?: Record<string, unknown>;
  cause?: SerializedError;
}

/** True when `error` is a CairnError (or a revived one) carrying `code`, if given. */
export function isCairnError(error: unknown, code?: ErrorCode): error is CairnError {
  if (typeof error !== 'object' || error === null) return false;
  const e = error as { name?: unknown; code?: unknown };
  if (e.name !== 'CairnError' || typeof e.code !== 'string') return false;
  return code === undefined || e.code === code;
}

/** Turns any thrown value into plain data: name, message, code, stack, context, cause (depth-limited). */
export function serializeError(error: unknown, depth = 0): SerializedError {
  if (error instanceof Error) {
    const out: SerializedError = { name: error.name, message: error.message };
    const code = (error as { code?: unknown }).code;
    if (typeof code === 'string') out.code = code;
    if (typeof error.stack === 'string') out.stack = error.stack;
    if (isCairnError(error)) out.context = { ...error.context };
    if (error.cause !== undefined && depth < 5) out.cause = serializeError(error.cause, depth + 1);
    return out;
  }
  return { name: 'NonError', message: safeString(error) };
}

/** Rebuilds an Error from {@link serializeError} output; CairnErrors keep their code and context. */
export function reviveError(data: SerializedError): Error {
  const cause = data.cause ? reviveError(data.cause) : undefined;
  const options = cause ? { cause } : undefined;
  let error: Error;
  if (data.name === 'CairnError' && isErrorCode(data.code)) {
    error = new CairnError(data.code, data.message, data.context ?? {}, options);
  } else {
    error = new Error(data.message, options);
    error.name = data.name;
    if (data.code !== undefined) (error as Error & { code?: string }).code = data.code;
  }
  if (data.stack !== undefined) error.stack = data.stack;
  return error;
}

/**
 * Codes of a store that could not take an operation for a reason outside the run: the disk is full
 * (`STORE_FULL`), another process held the lock past the retry bound (`STORE_BUSY`), the database
 * stayed unreachable past it (`STORE_UNAVAILABLE`). A run stopped by one is `interrupted`, not
 * failed: nothing about it is wrong, and it resumes once the store takes writes again.
 */
export const STORE_OUTAGE_CODES: ReadonlySet<ErrorCode> = new Set<ErrorCode>(['STORE_FULL', 'STORE_BUSY', 'STORE_UNAVAILABLE']);

/** True when `error` is a {@link STORE_OUTAGE_CODES} error. */
export function isStoreOutage(error: unknown): error is CairnError {
  return isCairnError(error) && STORE_OUTAGE_CODES.has(error.code);
}

export function isErrorCode(value: unknown): value is ErrorCode {
  return typeof value === 'string' && (ERROR_CODES as readonly string[]).includes(value);
}

function safeString(value: unknown): string {
  try {
    return typeof value === 'string' ? value : (JSON.stringify(value) ?? String(value));
  } catch {
    return String(value);
  }
}
