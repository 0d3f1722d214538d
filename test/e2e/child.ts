/**
 * Real child processes for end-to-end tests: read their stdout line by line, wait for a line,
 * kill them, and run one again and again with SIGKILL at random moments until it completes.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { expect } from 'vitest';

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface ChildOptions {
  readonly stdin?: 'pipe';
  readonly cwd?: string;
  readonly env?: NodeJS.ProcessEnv;
  readonly onLine?: (line: string, child: Child) => void;
}

/** Every child still running; `killAll()` in an `afterEach` leaves none behind. */
const live = new Set<Child>();

export function killAll(): void {
  for (const child of live) child.kill('SIGKILL');
}

/** A node process running `script` (a .mjs/.js file, or the built CLI): its stdout lines as they arrive, its stderr, its exit. */
export class Child {
  readonly lines: string[] = [];
  readonly exit: Promise<Exit>;
  stderr = '';
  private readonly process: ChildProcess;
  private readonly watchers = new Set<(line: string) => void>();

  constructor(script: string, args: readonly string[], options: ChildOptions = {}) {
    this.process = spawn(process.execPath, [script, ...args], {
      stdio: [options.stdin ?? 'ignore', 'pipe', 'pipe'],
      ...(options.cwd ? { cwd: options.cwd } : {}),
      ...(options.env ? { env: options.env } : {}),
    });
    live.add(this);
    this.process.stderr!.on('data', (chunk: Buffer) => (this.stderr += chunk.toString()));
    createInterface({ input: this.process.stdout! }).on('line', (line) => {
      this.lines.push(line);
      options.onLine?.(line, this);
      for (const watch of this.watchers) watch(line);
    });
    // 'close' rather than 'exit': every stdout line has been read by then
    this.exit = new Promise((resolve, reject) => {
      this.process.on('error', reject);
      this.process.on('close', (code, signal) => {
        live.delete(this);
        resolve({ code, signal });
      });
    });
  }

  get pid(): number {
    return this.process.pid!;
  }

  get isRunning(): boolean {
    return this.process.exitCode === null && this.process.signalCode === null;
  }

  kill(signal: NodeJS.Signals): void {
    if (this.isRunning) this.process.kill(signal);
  }

  write(text: string): void {
    this.process.stdin!.write(text);
  }

  /** The first line (already read or still to come) that starts with `prefix`; rejects if the process exits first. */
  waitForLine(prefix: string): Promise<string> {
    const found = this.lines.find((l) => l.startsWith(prefix));
    if (found !== undefined) return Promise.resolve(found);
    return new Promise((resolve, reject) => {
      const watch = (line: string): void => {
        if (!line.startsWith(prefix)) return;
        this.watchers.delete(watch);
        resolve(line);
      };
      this.watchers.add(watch);
      void this.exit.then((e) => {
        if (!this.watchers.delete(watch)) return;
        reject(new Error(`exited (${e.code}/${e.signal}) before printing "${prefix}": ${this.lines.join(' | ')} ${this.stderr}`));
      });
    });
  }

  /** Stdout line `n` (0-based), already read or still to come; rejects if the process exits first. */
  line(n: number): Promise<string> {
    if (n < this.lines.length) return Promise.resolve(this.lines[n]!);
    return new Promise((resolve, reject) => {
      const watch = (): void => {
        if (n >= this.lines.length) return;
        this.watchers.delete(watch);
        resolve(this.lines[n]!);
      };
      this.watchers.add(watch);
      void this.exit.then((e) => {
        if (!this.watchers.delete(watch)) return;
        reject(new Error(`exited (${e.code}/${e.signal}) before line ${n + 1}: ${this.lines.join(' | ')} ${this.stderr}`));
      });
    });
  }

  /** The JSON after `prefix ` on the first such line. */
  async json(prefix: string): Promise<Record<string, unknown>> {
    return JSON.parse((await this.waitForLine(prefix)).slice(prefix.length + 1)) as Record<string, unknown>;
  }

  /** Waits for a clean exit with this code. */
  async expectExit(code: number): Promise<void> {
    const e = await this.exit;
    expect(e, `stdout: ${this.lines.filter((l) => !l.startsWith('committed items')).join(' | ')}\nstderr: ${this.stderr}`).toEqual({
      code,
      signal: null,
    });
  }
}

export interface KillLoopOptions extends Omit<ChildOptions, 'onLine'> {
  /** How many SIGKILLs to deliver before letting a run finish. */
  readonly kills: number;
  /** Arm the kill timer once a line starting with this prefix appears (default: at once). */
  readonly armOn?: string;
  /** The kill lands a random 0..maxDelayMs after arming. @defaultValue 300 */
  readonly maxDelayMs?: number;
  /** Safety bound on the number of processes started. @defaultValue kills × 4 + 10 */
  readonly maxProcesses?: number;
}

export interface KillLoopResult {
  /** Kills that landed (the process died of SIGKILL). */
  readonly kills: number;
  /** Processes started, the last one the run that completed. */
  readonly processes: number;
  /** The process that ran to the end. */
  readonly last: Child;
  /** Every child, in order (their stdout lines stay readable). */
  readonly children: readonly Child[];
}

/**
 * Starts `script args` again and again, SIGKILLing each at a random moment until `kills` kills
 * landed, then lets the next run finish and returns it (its exit code is left to the caller). The
 * command must resume what the killed ones left. A run that completes before its kill lands ends
 * the loop early: callers that need N kills check `kills` (or slow the command down).
 */
export async function killLoop(script: string, args: readonly string[], options: KillLoopOptions): Promise<KillLoopResult> {
  const children: Child[] = [];
  const maxProcesses = options.maxProcesses ?? options.kills * 4 + 10;
  let kills = 0;
  for (;;) {
    if (children.length >= maxProcesses) throw new Error(`killLoop: ${children.length} processes started, only ${kills} kills landed`);
    const armed = kills < options.kills;
    let timer: NodeJS.Timeout | undefined;
    const arm = (child: Child): void => {
      if (timer || !armed) return;
      timer = setTimeout(() => child.kill('SIGKILL'), Math.floor(Math.random() * (options.maxDelayMs ?? 300)));
    };
    const child = new Child(script, args, {
      ...options,
      ...(armed && options.armOn ? { onLine: (line, c) => line.startsWith(options.armOn!) && arm(c) } : {}),
    });
    children.push(child);
    if (armed && !options.armOn) arm(child);
    const exit = await child.exit;
    clearTimeout(timer);
    if (exit.signal === 'SIGKILL') {
      kills++;
      continue;
    }
    // finished: every kill landed, or the run completed before the next one could (the caller checks `kills`)
    return { kills, processes: children.length, last: child, children };
  }
}

export interface KillByProgressOptions {
  /** How many SIGKILLs to deliver before letting a run finish. */
  readonly kills: number;
  /** Starts the next process of the job. */
  start(): Child;
  /** Work done so far, counted from the job's own log (paid calls, chunk calls): kills are aimed at it. */
  done(): number;
  /** Work left, so that the kills spread over it. */
  left(): number;
  /** Called before each process; what it returns is called once that process exited (per-process checks). */
  watch?(): Promise<(exit: Exit) => void> | ((exit: Exit) => void);
  /** Whether a process that exited by itself (not killed) leaves work for another one (a failed pass). @defaultValue false */
  again?(exit: Exit, child: Child): boolean;
}

export interface KillByProgressResult {
  readonly kills: number;
  /** Kills that landed after the process had done some work. */
  readonly killsAfterWork: number;
  /** Processes that exited by themselves and asked for another (`again`). */
  readonly passes: number;
  readonly processes: number;
  /** The process that ran to the end. */
  readonly last: Child;
}

/**
 * Like {@link killLoop}, for jobs whose progress is in their own log rather than on stdout: each
 * process is SIGKILLed either at a random moment of its first 900 ms (15 %: start-up, parsing, the
 * first calls) or once it did a random share of the work left, so the kills spread over the job.
 */
export async function killByProgress(options: KillByProgressOptions): Promise<KillByProgressResult> {
  let kills = 0;
  let killsAfterWork = 0;
  let passes = 0;
  let processes = 0;
  for (;;) {
    if (processes > options.kills * 4 + 10) throw new Error(`${processes} processes, only ${kills} kills landed`);
    const check = await options.watch?.();
    const before = options.done();
    const armed = kills < options.kills;
    const child = options.start();
    processes++;
    let timer: NodeJS.Timeout | undefined;
    if (armed && Math.random() < 0.15) {
      timer = setTimeout(() => child.kill('SIGKILL'), Math.floor(Math.random() * 900));
    } else if (armed) {
      const target = 1 + Math.floor(Math.random() * Math.max(1, Math.floor(options.left() / (options.kills - kills + 1))));
      timer = setInterval(() => {
        if (options.done() - before >= target) child.kill('SIGKILL');
      }, 4);
    }
    const exit = await child.exit;
    clearTimeout(timer);
    clearInterval(timer);
    check?.(exit);
    if (exit.signal === 'SIGKILL') {
      kills++;
      if (options.done() > before) killsAfterWork++;
      continue;
    }
    if (options.again?.(exit, child)) {
      passes++;
      continue;
    }
    return { kills, killsAfterWork, passes, processes, last: child };
  }
}
