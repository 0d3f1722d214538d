/**
 * Plain-text tables and short human values (times ago, sizes, colours by status) for the
 * inspection commands. Widths are measured on the plain text and colour is applied after padding,
 * so columns line up whether or not the terminal gets colour.
 */
import pc from 'picocolors';
import type { RunStatus } from '../stores/store.js';
import { printable, shellQuote } from './cli-context.js';

export { shellQuote };

/** A table cell: its text, and optionally how to colour it. */
export type Cell = string | { readonly text: string; readonly color?: (text: string) => string };

const textOf = (cell: Cell): string => (typeof cell === 'string' ? cell : cell.text);

/** Columns separated by two spaces; the last column is not padded. */
export function renderTable(headers: readonly string[], rows: readonly (readonly Cell[])[], indent = ''): string[] {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] === undefined ? 0 : textOf(r[i]).length))));
  const line = (cells: readonly Cell[], head: boolean): string =>
    indent +
    cells
      .map((cell, i) => {
        const text = textOf(cell);
        const padded = i === cells.length - 1 ? text : text.padEnd(widths[i] ?? 0);
        if (head) return pc.bold(padded);
        return typeof cell === 'string' || !cell.color ? padded : cell.color(padded);
      })
      .join('  ')
      .trimEnd();
  return [line(headers, true), ...rows.map((r) => line(r, false))];
}

/** How a status is coloured in every listing. */
export function statusCell(status: string): Cell {
  const color: Partial<Record<RunStatus | 'skipped', (text: string) => string>> = {
    completed: pc.green,
    failed: pc.red,
    waiting: pc.blue,
    interrupted: pc.yellow,
    running: pc.cyan,
    cancelled: pc.dim,
    pending: pc.dim,
    skipped: pc.dim,
  };
  const fn = color[status as RunStatus];
  return fn ? { text: status, color: fn } : status;
}

/** `12s ago`, `5m ago`, `3h ago`, `4d ago`. */
export function formatAgo(iso: string | undefined, now = Date.now()): string {
  if (iso === undefined) return '-';
  const at = Date.parse(iso);
  if (!Number.isFinite(at)) return '?';
  const s = Math.max(0, Math.round((now - at) / 1000));
  if (s < 60) return `${s}s ago`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ago`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h ago`;
  return `${Math.floor(h / 24)}d ago`;
}

/** Local time as `2024-05-01 14:03:09`. */
export function formatTime(iso: string | undefined): string {
  if (iso === undefined) return '-';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  const p = (n: number): string => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

/** `512 B`, `1.2 KiB`, `3.4 MiB`. */
export function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value < 10 ? value.toFixed(1) : Math.round(value)} ${units[unit]}`;
}

/** A value as one line of JSON, cut to `max` characters. */
export function shortJson(value: unknown, max: number): string {
  const text = JSON.stringify(printable(value)) ?? String(value);
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}
