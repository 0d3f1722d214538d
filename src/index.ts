/**
 * cairn — durable checkpoints, item-level resume and one store interface for memory, files,
 * SQLite and Postgres. Everything public is listed here by name.
 */
export { CheckpointManager, parseCheckpointId } from './engine/checkpoint-manager.js';
export type {
  CheckpointManagerOptions,
  CheckpointRef,
  CleanupOptions,
  CleanupResult,
  LoadedCheckpoint,
} from './engine/checkpoint-manager.js';
export { openStore, DEFAULT_STORE_URL } from './stores/open-store.js';
export type { OpenStoreOptions } from './stores/open-store.js';
export type { StoreOptions } from './stores/common.js';
export type { PostgresStoreOptions } from './stores/postgres/postgres-store.js';
export { RUN_STATUSES } from './stores/store.js';
export type {
  ArtifactEntry,
  Checkpoint,
  CheckpointEntry,
  Claim,
  ClaimOptions,
  CheckpointInput,
  CheckpointRef as StoreCheckpointRef,
  ExportRecord,
  ImportOptions,
  ItemEntry,
  Lease,
  LimitBackend,
  LimitRule,
  LimitTry,
  LockOptions,
  NewRun,
  RunFilter,
  RunPatch,
  RunQueue,
  RunRebuild,
  RunRecord,
  RunStatus,
  Store,
  StoreCapabilities,
  StoreKind,
  StoreProblem,
  WriteOptions,
} from './stores/store.js';
export { CairnError, ERROR_CODES, isCairnError, serializeError, reviveError } from './core/errors.js';
export type { ErrorCode, ErrorContext, SerializedError } from './core/errors.js';
export { canonicalHash, canonicalJson } from './core/hash.js';
export { parseDuration } from './core/duration.js';
export { isValidRunId } from './core/ids.js';
export { exportRun } from './transfer/export-run.js';
export type { ExportRunOptions, ExportSummary } from './transfer/export-run.js';
export { importRun } from './transfer/import-run.js';
export type { ImportRunOptions, ImportSummary, SignatureCheck } from './transfer/import-run.js';
export { Cairn } from './engine/cairn.js';
export type { CairnOptions, Definition, InputOf, ResultOf, ResumeOptions, RunOptions, SubmitOptions } from './engine/cairn.js';
export type { WorkOptions, WorkReport } from './engine/worker.js';
export type { LimitAcquireOptions, LimitGrant, LimitOptions, LimitSpec, Limiter } from './engine/limits.js';
export type { Spend } from './engine/spend.js';
export type { RunSource } from './engine/run-data.js';
export type { ForkOptions } from './engine/fork.js';
export { pipeline, Pipeline } from './engine/pipeline.js';
export type { InputSchema, OnChange, PipelineOptions, StageFn, StageOptions } from './engine/pipeline.js';
export { workflow, Workflow, END, append } from './engine/workflow.js';
export type { End, NodeFn, NodeOptions, Reducer, StateUpdate, WorkflowOptions } from './engine/workflow.js';
export type {
  ArtifactRef,
  AttemptSummary,
  BaseContext,
  CairnEventName,
  CairnEvents,
  CollectedItems,
  CommitPoint,
  Durability,
  EngineHooks,
  HistoryEntry,
  ItemCounts,
  ItemFailure,
  ItemInfo,
  ItemsFn,
  ItemsOptions,
  ItemsProgress,
  NodeContext,
  RetryPolicy,
  RunProblem,
  RunSummary,
  StageContext,
  StageStatus,
  StageSummary,
  WaitForOptions,
} from './engine/types.js';
