/**
 * Loading a store's driver package (better-sqlite3, pg) only when that store opens: both are
 * optional peers, so users of the other stores never install them. A missing package is
 * `DRIVER_MISSING` naming what to install; a failed load is forgotten, so that installing the
 * package and opening the store again works without a restart.
 */
import { CairnError } from '../core/errors.js';

export interface OptionalDriver<T> {
  /** How users name the store in messages (`sqlite:`, `postgres://`). */
  readonly store: string;
  /** The npm package to install. */
  readonly packageName: string;
  /** What the store needs from the module (`a Database class`), for the error when it is not there. */
  readonly needs: string;
  /** Picks it from the imported module, or undefined when the module does not have it. */
  pick(mod: unknown): T | undefined;
}

/** A loader of `driver`, once per module name (`moduleName` exists for tests). */
export function optionalDriverLoader<T>(driver: OptionalDriver<T>): (moduleName?: string) => Promise<T> {
  const loaded = new Map<string, Promise<T>>();
  const missing = (moduleName: string, cause: unknown): CairnError =>
    new CairnError(
      'DRIVER_MISSING',
      `The ${driver.store} store needs the ${driver.packageName} package: npm install ${driver.packageName}`,
      { driver: moduleName },
      { cause },
    );
  const load = async (moduleName: string): Promise<T> => {
    let mod: unknown;
    try {
      mod = await import(moduleName);
    } catch (error) {
      throw missing(moduleName, error);
    }
    const picked = driver.pick(mod);
    if (picked === undefined) throw missing(moduleName, new TypeError(`${moduleName} does not export ${driver.needs}`));
    return picked;
  };
  return (moduleName = driver.packageName) => {
    let promise = loaded.get(moduleName);
    if (!promise) {
      promise = load(moduleName);
      loaded.set(moduleName, promise);
      promise.catch(() => loaded.delete(moduleName));
    }
    return promise;
  };
}
