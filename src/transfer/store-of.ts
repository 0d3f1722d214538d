/** The store argument of `exportRun` / `importRun`: an open store, or a URL opened for the call. */
import { openStore } from '../stores/open-store.js';
import type { Store } from '../stores/store.js';

/** Runs `fn` on `store`; a URL is opened first and closed after, an open store is left open. */
export async function withStoreOf<T>(store: Store | string, fn: (store: Store) => Promise<T>): Promise<T> {
  if (typeof store !== 'string') return fn(store);
  const opened = await openStore(store);
  try {
    return await fn(opened);
  } finally {
    await opened.close();
  }
}
