/**
 * Artifacts: files a stage writes under the run's artifact folder, recorded with size and sha256
 * when the stage completes, and verified before the stage is ever skipped.
 */
import fs from 'node:fs';
import path from 'node:path';
import { CairnError } from '../core/errors.js';
import { resolveInside } from '../core/ids.js';
import { checkFolders, hashFdSync, openRegularFile, prepareArtifactPath, unsafePathError } from '../core/no-follow.js';
import { checkArtifactFiles } from '../stores/common.js';
import type { ArtifactEntry, Store } from '../stores/store.js';
import type { ArtifactRef } from './types.js';

/**
 * The path for artifact `name` (relative, `/`-separated) under the run's artifact folder, ready
 * for the stage to write: its folders are created as real folders (`UNSAFE_PATH` where one is a
 * link), and a link or other non-regular file left at the path is removed (never its target), so
 * that the stage's write creates a regular file inside the folder.
 */
export function artifactPath(store: Store, runId: string, name: string): string {
  checkArtifactName(name);
  const dir = store.artifactDir(runId);
  const file = resolveInside(dir, ...name.split('/'));
  prepareArtifactPath(path.resolve(dir), file);
  return file;
}

/**
 * Hashes a file under the run's artifact folder and returns its reference. It must be a regular
 * file reached through real folders: a link (or a folder on the way that is one) is `UNSAFE_PATH`.
 */
export function describeArtifact(store: Store, runId: string, file: string): ArtifactRef {
  const root = path.resolve(store.artifactDir(runId));
  const abs = path.resolve(file);
  const rel = path.relative(root, abs);
  if (rel === '' || rel.startsWith('..') || path.isAbsolute(rel)) {
    throw new CairnError(
      'INVALID_INPUT',
      `ctx.artifact(${JSON.stringify(file)}): artifacts must live in the run's artifact folder (${root}); get a path there with ctx.artifactPath(name).`,
      { runId },
    );
  }
  if (!checkFolders(root, path.dirname(abs)))
    throw new CairnError('NOT_FOUND', `Artifact file ${abs} does not exist.`, { runId, file: abs });
  const opened = openRegularFile(abs);
  if (opened.fd === undefined) {
    if (opened.problem === 'missing') throw new CairnError('NOT_FOUND', `Artifact file ${abs} does not exist.`, { runId, file: abs });
    throw unsafePathError(abs, `it is ${opened.problem}`);
  }
  let hashed: { size: number; sha256: string };
  try {
    hashed = hashFdSync(opened.fd);
  } finally {
    fs.closeSync(opened.fd);
  }
  const { size, sha256 } = hashed;
  return { path: abs, name: rel.split(path.sep).join('/'), size, sha256 };
}

function checkArtifactName(name: string): void {
  const segments = typeof name === 'string' ? name.split('/') : [];
  if (
    typeof name !== 'string' ||
    name.length === 0 ||
    name.length > 512 ||
    name.startsWith('/') ||
    name.includes('\\') ||
    name.includes('\0') ||
    segments.some((s) => s === '' || s === '.' || s === '..')
  ) {
    throw new CairnError(
      'INVALID_INPUT',
      `Invalid artifact name ${JSON.stringify(name)}: use a relative path such as 'audio/converted.wav'.`,
    );
  }
}

export function toEntries(refs: Iterable<ArtifactRef>, stage: string): ArtifactEntry[] {
  const createdAt = new Date().toISOString();
  return [...refs].map((r) => ({ path: r.name, size: r.size, sha256: r.sha256, stage, createdAt }));
}

/** Checks a stage's recorded artifacts; returns the problems (missing, size or content changed). */
export async function verifyStageArtifacts(
  store: Store,
  runId: string,
  manifest: readonly ArtifactEntry[],
  names: readonly string[],
): Promise<string[]> {
  const wanted = new Set(names);
  const entries = manifest.filter((e) => wanted.has(e.path));
  const problems = (await checkArtifactFiles(runId, store.artifactDir(runId), entries)).map((p) => p.message);
  for (const name of wanted)
    if (!entries.some((e) => e.path === name)) problems.push(`Artifact ${name} is not in the manifest of run ${runId}.`);
  return problems;
}
