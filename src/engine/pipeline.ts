/**
 * `pipeline(name)`: stages in order, or a DAG with `dependsOn`. Builders are immutable: every
 * `.stage()` returns a new pipeline, so a shared prefix can be reused by several pipelines.
 */
import { CairnError } from '../core/errors.js';
import { assertName } from '../core/ids.js';
import { resolveLimits, type LimitSpec } from './limits.js';
import type { RetryPolicy, StageContext } from './types.js';

/**
 * Definitions are recognised by a brand, not `instanceof`: a module loaded by the `cairn` command
 * may import another copy of cairnjs than the command's own.
 */
export const PIPELINE_BRAND = Symbol.for('cairnjs.pipeline');

export function isPipeline(value: unknown): value is Pipeline<unknown, Record<string, unknown>, unknown> {
  return typeof value === 'object' && value !== null && (value as { [PIPELINE_BRAND]?: unknown })[PIPELINE_BRAND] === true;
}

/** Checks input at run time; zod schemas (and anything with `parse`) fit. */
export interface InputSchema<I> {
  parse(value: unknown): I;
}

/** What to do when a completed stage's fingerprint no longer matches. */
export type OnChange = 'rerun' | 'refuse';

export interface PipelineOptions<I> {
  /** Part of every stage's fingerprint: bumping it reruns everything. @defaultValue '1' */
  readonly version?: string;
  /** Validates (and types) the input of `cairn.run`. */
  readonly input?: InputSchema<I>;
  /** @defaultValue 'rerun' */
  readonly onChange?: OnChange;
  /**
   * Rate limits this definition's `ctx.limit` and `ctx.items(…, { limit })` use, declared with it so
   * that `cairn run` (which makes its own `Cairn`) knows them: `{ llm: { requests: 60, per: '1m' } }`.
   * A limit of the same name in `new Cairn({ limits })` wins. Not part of any fingerprint: changing a
   * rate reruns nothing. See docs/rate-limits.md.
   */
  readonly limits?: Readonly<Record<string, LimitSpec>>;
}

export interface StageOptions<I, O> {
  /** Bump when the stage's code changes meaningfully: its result is then recomputed. @defaultValue '1' */
  readonly version?: string;
  /** Settings the result depends on (part of the fingerprint), available as `ctx.config`. */
  readonly config?: unknown;
  /** Stages whose outputs this one uses. @defaultValue the stage declared just before (none for the first) */
  readonly dependsOn?: readonly (keyof O & string)[];
  readonly retries?: RetryPolicy;
  /** A try running longer than this fails with `STAGE_TIMEOUT` (and may be retried). */
  readonly timeoutMs?: number;
  /** Files whose content is part of the fingerprint: paths, or a function of the input. */
  readonly inputs?: readonly string[] | ((input: I) => readonly string[]);
  /**
   * Run the stage only when this holds; otherwise it is skipped (alternative paths). Return a
   * string to skip with that reason, `true` to run.
   */
  readonly when?: (ctx: { readonly input: I; readonly config: unknown }) => boolean | string;
  /** @defaultValue the pipeline's `onChange` */
  readonly onChange?: OnChange;
  /**
   * The stage's former name, in runs that began before it was renamed: the stage keeps what it had
   * under that name (its completion, so it is skipped if nothing else changed; its item ledgers,
   * so an items call goes on where it stopped; its summary). No stage of the pipeline may have
   * that name. Keep it while such runs may still be resumed or run again.
   *
   * @example
   * pipeline('speech').stage('transcribe', fn, { renamedFrom: 'transcription' })
   */
  readonly renamedFrom?: string;
}

export type StageFn<I, O, R> = (ctx: StageContext<I, O>) => R | Promise<R>;

/** A stage as stored in a definition (types erased). */
export interface StageDef {
  readonly name: string;
  readonly fn: StageFn<unknown, Record<string, unknown>, unknown>;
  readonly options: StageOptions<unknown, Record<string, unknown>>;
  /** Resolved dependencies. */
  readonly dependsOn: readonly string[];
}

// eslint-disable-next-line @typescript-eslint/no-empty-object-type -- the empty start of the output map
type NoOutputs = {};

/**
 * A pipeline definition. `I` is the input type, `O` maps stage names to their outputs, `R` is the
 * result (the last stage's output; with `when`, the output of the last stage that ran).
 *
 * @example
 * const p = pipeline<{ file: string }>('speech', { version: '1' })
 *   .stage('convert', async (ctx) => ({ wav: await convert(ctx.input.file) }))
 *   .stage('transcribe', async (ctx) => transcribe(ctx.output('convert').wav));
 */
export class Pipeline<I = unknown, O extends Record<string, unknown> = NoOutputs, R = undefined> {
  readonly kind = 'pipeline' as const;
  readonly [PIPELINE_BRAND] = true;
  /** Type-level only: the input and the result. */
  declare readonly __types?: { input: I; outputs: O; result: R };

  constructor(
    readonly name: string,
    readonly options: PipelineOptions<I>,
    readonly stages: readonly StageDef[],
  ) {}

  /** Adds a stage; its return value becomes its output, read by later stages with `ctx.output(name)`. */
  stage<N extends string, S>(
    name: N,
    fn: StageFn<I, O, S>,
    options: StageOptions<I, O> = {},
  ): Pipeline<I, O & { [K in N]: Awaited<S> }, Awaited<S>> {
    assertName(name, 'stage name');
    if (this.stages.some((s) => s.name === name)) {
      throw new CairnError('INVALID_DEFINITION', `Pipeline ${this.name} already has a stage named ${name}.`, { stage: name });
    }
    if (typeof fn !== 'function') throw new CairnError('INVALID_DEFINITION', `Stage ${name} needs a function.`, { stage: name });
    const previous = this.stages.at(-1);
    const dependsOn = options.dependsOn ?? (previous ? [previous.name] : []);
    for (const dep of dependsOn) {
      if (!this.stages.some((s) => s.name === dep)) {
        throw new CairnError(
          'INVALID_DEFINITION',
          `Stage ${name} depends on ${String(dep)}, which is not a stage declared before it in pipeline ${this.name}.`,
          { stage: name },
        );
      }
    }
    if (options.timeoutMs !== undefined && !(options.timeoutMs > 0)) {
      throw new CairnError('INVALID_DEFINITION', `Stage ${name}: timeoutMs must be positive.`, { stage: name });
    }
    this.checkRename(name, options.renamedFrom);
    const def: StageDef = { name, fn: fn as StageDef['fn'], options: options as StageDef['options'], dependsOn: [...dependsOn] };
    return new Pipeline(this.name, this.options, [...this.stages, def]);
  }

  /** A stage's name and former name each name one stage: a name is never both a stage and another's former name. */
  private checkRename(name: string, renamedFrom: string | undefined): void {
    const formerOf = this.stages.find((s) => s.options.renamedFrom === name);
    if (formerOf) {
      throw new CairnError(
        'INVALID_DEFINITION',
        `Pipeline ${this.name}: stage ${formerOf.name} was renamed from ${name}, so no stage may be named ${name}.`,
        { stage: name },
      );
    }
    if (renamedFrom === undefined) return;
    assertName(renamedFrom, 'renamedFrom');
    let clash: string | undefined;
    if (renamedFrom === name) clash = 'its own name';
    else if (this.stages.some((s) => s.name === renamedFrom)) clash = 'the name of another stage';
    else {
      const other = this.stages.find((s) => s.options.renamedFrom === renamedFrom);
      if (other) clash = `the former name of stage ${other.name} too`;
    }
    if (clash !== undefined) {
      throw new CairnError('INVALID_DEFINITION', `Stage ${name}: renamedFrom ${renamedFrom} is ${clash}.`, { stage: name });
    }
  }

  /** The stage's definition, or undefined. */
  getStage(name: string): StageDef | undefined {
    return this.stages.find((s) => s.name === name);
  }
}

/**
 * Starts a pipeline definition. Give the input type as a type argument or through `options.input`
 * (a zod schema or anything with `parse`).
 */
export function pipeline<I = unknown>(name: string, options: PipelineOptions<I> = {}): Pipeline<I> {
  assertName(name, 'pipeline name');
  if (options.limits !== undefined) resolveLimits(options.limits); // INVALID_INPUT naming the limit and field, at once
  return new Pipeline<I>(name, options, []);
}
