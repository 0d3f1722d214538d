/** A typed event emitter whose listeners can never break a run. */
import { EventEmitter } from 'node:events';
import type { CairnEventName, CairnEvents } from './types.js';

export class TypedEmitter {
  private readonly emitter = new EventEmitter();

  constructor() {
    this.emitter.setMaxListeners(100);
  }

  /** Listens to an event. @example cairn.on('items:progress', (p) => console.log(p.done, '/', p.total)) */
  on<K extends CairnEventName>(event: K, listener: (payload: CairnEvents[K]) => void): this {
    this.emitter.on(event, listener);
    return this;
  }

  once<K extends CairnEventName>(event: K, listener: (payload: CairnEvents[K]) => void): this {
    this.emitter.once(event, listener);
    return this;
  }

  off<K extends CairnEventName>(event: K, listener: (payload: CairnEvents[K]) => void): this {
    this.emitter.off(event, listener);
    return this;
  }

  /** True when someone listens: lets hot paths skip building payloads. */
  hasListeners(event: CairnEventName): boolean {
    return this.emitter.listenerCount(event) > 0;
  }

  emit<K extends CairnEventName>(event: K, payload: CairnEvents[K]): void {
    // each listener on its own: one listener's bug must fail neither the run nor the other listeners
    // (rawListeners keeps `once` wrappers, which remove themselves when called)
    for (const listener of this.emitter.rawListeners(event) as ((payload: CairnEvents[K]) => void)[]) {
      try {
        listener(payload);
      } catch (error) {
        process.emitWarning(`cairn: a listener of ${event} threw: ${error instanceof Error ? error.message : String(error)}`);
      }
    }
  }
}
