/**
 * The stores every engine test runs on: memory, files and SQLite, each in a fresh location, and
 * (`ALL_STORES`) Postgres too when a server is reachable, each URL in a schema of its own.
 * `describe.each(ENGINE_STORES)` runs one suite per store; `freshUrl()` gives an empty store URL
 * under a temp folder (and schema) that is removed after the test file.
 */
import { mkdtempSync } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll } from 'vitest';
import { POSTGRES, dropSchema, freshSchema, postgresUrl } from '../postgres.js';

export interface EngineStoreKind {
  readonly name: 'memory' | 'file' | 'sqlite' | 'postgres';
  /** A URL for an empty store of this kind. */
  freshUrl(): Promise<string>;
}

// one private parent per test file, removed after it
const parent = mkdtempSync(path.join(os.tmpdir(), 'cairn-engine-'));
const schemas: string[] = [];
afterAll(async () => {
  for (const schema of schemas) await dropSchema(schema);
  await fs.rm(parent, { recursive: true, force: true });
});
let counter = 0;

const tempRoot = (): Promise<string> => Promise.resolve(parent);

export const ENGINE_STORES: readonly EngineStoreKind[] = [
  { name: 'memory', freshUrl: () => Promise.resolve(`memory:engine-${process.pid}-${++counter}`) },
  { name: 'file', freshUrl: async () => `file:${await fs.mkdtemp(path.join(await tempRoot(), 'file-'))}` },
  { name: 'sqlite', freshUrl: async () => `sqlite:${path.join(await fs.mkdtemp(path.join(await tempRoot(), 'sqlite-')), 'cairn.db')}` },
];

/** ENGINE_STORES and, when a server is reachable, Postgres (artifacts under the temp folder). */
export const ALL_STORES: readonly EngineStoreKind[] = [
  ...ENGINE_STORES,
  ...(POSTGRES.reachable
    ? [
        {
          name: 'postgres' as const,
          freshUrl: async () => {
            const schema = freshSchema('cairn_engine');
            schemas.push(schema);
            return postgresUrl(schema, { artifacts: path.join(await fs.mkdtemp(path.join(parent, 'pg-')), 'artifacts') });
          },
        },
      ]
    : []),
];
