/**
 * A block of lines redrawn in place at the bottom of a terminal, for the live progress of `cairn
 * run`/`resume`. Every change redraws the whole block: the cursor goes back to the block's first
 * row, everything below is erased and every line is written again. Diffing old and new lines (what
 * log-update 7 does) loses or repeats lines when the block grows or shrinks in the middle.
 *
 * The count of rows to go back up must be exact, so every line is cut to the terminal's width less
 * one column (a line that wraps takes two rows, and one that fills the last column leaves the cursor
 * in a state terminals disagree on), and the block to the terminal's height less one row (rows that
 * scrolled off the top cannot be reached again). Output that others write to the same terminal
 * (stdout, a warning, the engine's own lines on stderr) is let through above the block, which is
 * then drawn again below it; once {@link LiveFrame.keepOnOutput} is set it ends the block instead,
 * so that the last thing on screen is that text (the exit message of a second Ctrl-C).
 */

const CSI = '\u001B[';
/** Synchronized output (DEC mode 2026): the terminal shows the redraw at once, without flicker; others ignore it. */
const SYNC_START = '\u001B[?2026h';
const SYNC_END = '\u001B[?2026l';
/** After output from others, the block is drawn again at once, but not more often than this. */
const REDRAW_AFTER_OUTPUT_MS = 50;

type Write = (...args: unknown[]) => boolean;

export class LiveFrame {
  /** Lines as drawn (cut to fit), and the columns of each. */
  private drawn: readonly string[] = [];
  private drawnWidths: readonly number[] = [];
  /** The terminal's width when the block was drawn. */
  private drawnColumns: number;
  /** The lines last asked for (drawn again after output from others). */
  private wanted: readonly string[] = [];
  /** Erased to let output from others through; drawn again by the next {@link draw}. */
  private isHidden = false;
  /** Output from others ended without a newline: the block starts on the next line. */
  private isMidLine = false;
  private isWriting = false;
  private isDone = false;
  private lastOutputRedraw = 0;
  private redrawTimer: NodeJS.Timeout | undefined;
  private readonly write: Write;
  private readonly restore: (() => void)[] = [];
  /** Once true, output from others ends the block: it stays as it is and the text goes below it. */
  keepOnOutput = false;

  /**
   * @param stream the terminal to draw on (stderr)
   * @param others streams that write to the same terminal (stdout when it is one)
   */
  constructor(
    private readonly stream: NodeJS.WriteStream,
    others: readonly NodeJS.WriteStream[] = [],
  ) {
    this.write = this.intercept(stream);
    for (const other of others) if (other !== stream) this.intercept(other);
    this.drawnColumns = columnsOf(stream);
    const onResize = (): void => this.draw(this.wanted);
    const onExit = (): void => {
      // process.exit() while the block was erased for someone's output: put it back
      if (this.isHidden && !this.isDone) this.draw(this.wanted);
    };
    stream.on('resize', onResize);
    process.on('exit', onExit);
    this.restore.push(() => {
      stream.off('resize', onResize);
      process.off('exit', onExit);
    });
  }

  /** Shows `lines` (no newlines in them; ANSI colours allowed), redrawing the block if anything changed. */
  draw(lines: readonly string[]): void {
    this.wanted = lines;
    if (this.isDone) return;
    clearTimeout(this.redrawTimer);
    this.redrawTimer = undefined;
    const columns = columnsOf(this.stream);
    const fitted = fitHeight(lines, rowsOf(this.stream) - 1).map((line) => fitWidth(line, columns - 1));
    const texts = fitted.map((f) => f.text);
    if (!this.isHidden && columns === this.drawnColumns && sameLines(texts, this.drawn)) return;
    if (texts.length === 0 && this.drawn.length === 0) {
      // nothing was on screen and nothing is to be: write nothing (a run that returned its cached result)
      this.drawnColumns = columns;
      this.isHidden = false;
      return;
    }
    const text = texts.map((line) => `${line}${CSI}K\n`).join('');
    this.emit(`${SYNC_START}${this.eraseSequence(columns)}${this.isMidLine ? '\n' : ''}${text}${SYNC_END}`);
    this.drawn = texts;
    this.drawnWidths = fitted.map((f) => f.width);
    this.drawnColumns = columns;
    this.isHidden = false;
    this.isMidLine = false;
  }

  /** Leaves the last block on screen (the cursor below it) and lets the streams go. */
  done(): void {
    if (this.isDone) return;
    if (this.isHidden) this.draw(this.wanted);
    this.isDone = true;
    clearTimeout(this.redrawTimer);
    for (const undo of this.restore.splice(0).reverse()) undo();
  }

  /**
   * Moves the cursor to the block's first row and erases from there down. After a resize to fewer
   * columns, terminals that reflow (xterm.js, tmux, VTE, iTerm2, kitty) have wrapped each old line
   * into ⌈width / columns⌉ rows; those that do not (xterm) cut it, and going up by the reflowed count
   * erases a few rows above the block there, which is the lesser harm than leaving copies behind.
   */
  private eraseSequence(columns: number): string {
    if (this.isHidden || this.drawn.length === 0) return '\r';
    const rows =
      columns >= this.drawnColumns
        ? this.drawn.length
        : this.drawnWidths.reduce((sum, width) => sum + Math.max(1, Math.ceil(width / Math.max(1, columns))), 0);
    return `\r${CSI}${rows}A${CSI}J`;
  }

  private emit(text: string): void {
    this.isWriting = true;
    try {
      this.write.call(this.stream, text);
    } finally {
      this.isWriting = false;
    }
  }

  /** Routes `stream.write` through the block while it is live; returns the original write. */
  private intercept(stream: NodeJS.WriteStream): Write {
    const hadOwn = Object.prototype.hasOwnProperty.call(stream, 'write');
    // eslint-disable-next-line @typescript-eslint/unbound-method -- called with the stream as `this` below
    const original = stream.write as unknown as Write;
    const patched: Write = (...args: unknown[]): boolean => {
      if (this.isWriting || this.isDone) return original.apply(stream, args);
      this.beforeOutput();
      const result = original.apply(stream, args);
      this.afterOutput(endsWithNewline(args[0]));
      return result;
    };
    (stream as unknown as { write: Write }).write = patched;
    this.restore.push(() => {
      if ((stream as unknown as { write: Write }).write !== patched) return; // someone patched it after us: leave theirs
      if (hadOwn) (stream as unknown as { write: Write }).write = original;
      else delete (stream as unknown as { write?: Write }).write;
    });
    return original;
  }

  private beforeOutput(): void {
    if (this.keepOnOutput) {
      // the block stays as it is, above the text: it is not drawn again
      this.isDone = true;
      clearTimeout(this.redrawTimer);
      return;
    }
    if (!this.isHidden && this.drawn.length > 0) {
      this.emit(this.eraseSequence(columnsOf(this.stream)));
      this.isHidden = true;
    }
  }

  private afterOutput(isLineEnd: boolean): void {
    if (this.isDone) return;
    this.isMidLine = !isLineEnd;
    if (this.drawn.length === 0 && this.wanted.length === 0) return; // no block to put back
    this.isHidden = true;
    const now = Date.now();
    if (now - this.lastOutputRedraw >= REDRAW_AFTER_OUTPUT_MS) {
      this.lastOutputRedraw = now;
      this.draw(this.wanted);
    } else if (this.redrawTimer === undefined) {
      // a stream of lines from someone: draw the block again once it pauses
      this.redrawTimer = setTimeout(() => {
        this.redrawTimer = undefined;
        this.lastOutputRedraw = Date.now();
        this.draw(this.wanted);
      }, REDRAW_AFTER_OUTPUT_MS);
      this.redrawTimer.unref();
    }
  }
}

/** The terminal's width; a terminal that reports none (0 columns: some pseudo-terminals) gets $COLUMNS or 80. */
export function columnsOf(stream: NodeJS.WriteStream): number {
  return stream.columns > 0 ? stream.columns : Number(process.env.COLUMNS) > 0 ? Number(process.env.COLUMNS) : 80;
}

/** The terminal's height; $LINES or 24 when it reports none. */
export function rowsOf(stream: NodeJS.WriteStream): number {
  return stream.rows > 0 ? stream.rows : Number(process.env.LINES) > 0 ? Number(process.env.LINES) : 24;
}

function sameLines(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((line, i) => line === b[i]);
}

function endsWithNewline(chunk: unknown): boolean {
  if (typeof chunk === 'string') return chunk.endsWith('\n');
  if (chunk instanceof Uint8Array) return chunk.length > 0 && chunk[chunk.length - 1] === 0x0a;
  return true;
}

/** At most `max` lines (at least 1): the last one says how many were left out. */
function fitHeight(lines: readonly string[], max: number): readonly string[] {
  const limit = Math.max(1, max);
  if (lines.length <= limit) return lines;
  return [...lines.slice(0, limit - 1), `… ${lines.length - limit + 1} more line(s)`];
}

// eslint-disable-next-line no-control-regex -- ANSI escape sequences are what it matches
const ANSI = /^\u001B\[[0-9;?]*[ -/]*[@-~]/;

/** Cuts `line` to `max` columns (ending with `…` when cut), keeping its ANSI colours; returns its width. */
export function fitWidth(line: string, max: number): { readonly text: string; readonly width: number } {
  let width = 0;
  let out = '';
  let hasAnsi = false;
  for (let i = 0; i < line.length;) {
    if (line.charCodeAt(i) === 0x1b) {
      const escape = ANSI.exec(line.slice(i))?.[0];
      if (escape !== undefined) {
        out += escape;
        hasAnsi = true;
        i += escape.length;
        continue;
      }
    }
    const codePoint = line.codePointAt(i) ?? 0;
    const char = String.fromCodePoint(codePoint);
    const w = charWidth(codePoint);
    if (width + w > max) {
      // replace what does not fit, and the last column, with an ellipsis
      let cut = out;
      let cutWidth = width;
      while (cutWidth > Math.max(0, max - 1)) {
        const last = lastChar(cut);
        cut = cut.slice(0, cut.length - last.length);
        cutWidth -= charWidth(last.codePointAt(0) ?? 0);
      }
      const ellipsis = max > 0 ? '…' : '';
      return { text: `${cut}${ellipsis}${hasAnsi ? `${CSI}0m` : ''}`, width: cutWidth + ellipsis.length };
    }
    out += char;
    width += w;
    i += char.length;
  }
  return { text: out, width };
}

/** The last character of `text` (escape sequences are never cut: only characters follow them here). */
function lastChar(text: string): string {
  const code = text.charCodeAt(text.length - 1);
  return code >= 0xdc00 && code <= 0xdfff && text.length > 1 ? text.slice(-2) : text.slice(-1);
}

/** East Asian wide and fullwidth ranges (CJK, Hangul, fullwidth forms, most emoji) take two columns. */
const WIDE: readonly (readonly [number, number])[] = [
  [0x1100, 0x115f],
  [0x2e80, 0x303e],
  [0x3041, 0x33ff],
  [0x3400, 0x4dbf],
  [0x4e00, 0x9fff],
  [0xa000, 0xa4cf],
  [0xac00, 0xd7a3],
  [0xf900, 0xfaff],
  [0xfe30, 0xfe4f],
  [0xff00, 0xff60],
  [0xffe0, 0xffe6],
  [0x1f300, 0x1f64f],
  [0x1f900, 0x1f9ff],
  [0x20000, 0x3fffd],
];

function charWidth(codePoint: number): number {
  if (codePoint < 0x20 || (codePoint >= 0x7f && codePoint < 0xa0)) return 0;
  if ((codePoint >= 0x300 && codePoint <= 0x36f) || codePoint === 0x200d || (codePoint >= 0xfe00 && codePoint <= 0xfe0f)) return 0;
  return WIDE.some(([from, to]) => codePoint >= from && codePoint <= to) ? 2 : 1;
}
