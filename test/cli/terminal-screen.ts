/**
 * A terminal emulator (xterm.js, headless) that the bytes a program writes to its terminal are fed
 * into, so that tests assert on what a user sees: the visible lines, not the escape sequences that
 * drew them. Rows that the terminal wrapped are joined back into one line, so a wrapped line is
 * visible as such (`wrappedRows`).
 */
import xtermHeadless from '@xterm/headless';

const { Terminal } = xtermHeadless;

export interface ScreenOptions {
  readonly cols: number;
  readonly rows: number;
  /** Treat `\n` as `\r\n`, as a terminal's line discipline does (for output not written through a pty). */
  readonly convertEol?: boolean;
}

export class Screen {
  private readonly term: InstanceType<typeof Terminal>;
  private pending = 0;
  private readonly waiters: (() => void)[] = [];
  /** Every screen seen, after each chunk of output: for checks that must hold at every moment. */
  readonly history: string[][] = [];
  /** Every byte written, for failure messages. */
  readonly raw: Buffer[] = [];

  constructor(options: ScreenOptions) {
    this.term = new Terminal({ cols: options.cols, rows: options.rows, allowProposedApi: true, convertEol: options.convertEol ?? false });
  }

  write(data: string | Uint8Array): void {
    this.raw.push(Buffer.from(data));
    this.pending++;
    this.term.write(data, () => {
      this.pending--;
      this.history.push(this.lines());
      if (this.pending === 0) for (const resolve of this.waiters.splice(0)) resolve();
    });
  }

  /** Resolves once everything written so far is on screen. */
  settled(): Promise<void> {
    return this.pending === 0 ? Promise.resolve() : new Promise((resolve) => this.waiters.push(resolve));
  }

  resize(cols: number, rows: number): void {
    this.term.resize(cols, rows);
  }

  /** The visible lines, wrapped rows joined, trailing blank lines dropped (trailing spaces trimmed). */
  lines(): string[] {
    const buffer = this.term.buffer.active;
    const out: string[] = [];
    for (let y = 0; y < this.term.rows; y++) {
      const line = buffer.getLine(buffer.viewportY + y);
      if (!line) continue;
      const text = line.translateToString(true);
      if (line.isWrapped && out.length > 0) out[out.length - 1] += text;
      else out.push(text);
    }
    while (out.length > 0 && out.at(-1) === '') out.pop();
    return out;
  }

  /** How many visible rows continue the row before them (a line longer than the width). */
  wrappedRows(): number {
    const buffer = this.term.buffer.active;
    let count = 0;
    for (let y = 0; y < this.term.rows; y++) if (buffer.getLine(buffer.viewportY + y)?.isWrapped) count++;
    return count;
  }

  /** The cursor's row and column on screen. */
  cursor(): { readonly row: number; readonly col: number } {
    const buffer = this.term.buffer.active;
    return { row: buffer.cursorY, col: buffer.cursorX };
  }

  /**
   * Waits until `check` holds for a screen seen after the one the previous `until` returned (every
   * screen after each chunk of output counts, so a moment that lasted a short while is found even
   * if the test looked late), and returns that screen; fails after `timeoutMs` naming `what`.
   */
  async until(what: string, check: (lines: string[]) => boolean, timeoutMs = 20_000): Promise<string[]> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      await this.settled();
      for (; this.examined < this.history.length; this.examined++) {
        const seen = this.history[this.examined]!;
        if (check(seen)) {
          this.examined++;
          return seen;
        }
      }
      if (Date.now() > deadline) {
        throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; the screen:\n${this.lines().join('\n')}`);
      }
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }

  /** How many screens of `history` the `until` calls have looked at. */
  private examined = 0;

  /** The screen once everything written so far is on it; a later `until` looks only at screens after it. */
  async current(): Promise<string[]> {
    await this.settled();
    this.examined = this.history.length;
    return this.lines();
  }

  dispose(): void {
    this.term.dispose();
  }
}

/**
 * Checks `lines` against `expected`, one entry per line: a string is compared as it is, a RegExp
 * must match the whole line. Throws with both listings when they differ.
 */
export function expectLines(lines: readonly string[], expected: readonly (string | RegExp)[], label = 'screen'): void {
  const matches =
    lines.length === expected.length &&
    expected.every((want, i) => {
      const line = lines[i] ?? '';
      return typeof want === 'string' ? line === want : new RegExp(`^(?:${want.source})$`, want.flags).test(line);
    });
  if (!matches) {
    const show = (list: readonly (string | RegExp)[]): string => list.map((l, i) => `  ${String(i).padStart(2)} ${String(l)}`).join('\n');
    throw new Error(`${label} differs.\nexpected:\n${show(expected)}\nactual:\n${show(lines)}`);
  }
}
