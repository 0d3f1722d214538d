/**
 * Every relative link in the project's Markdown files points at a file or folder that exists (and,
 * with a `#anchor` into a Markdown file, at a heading it has). External links are not followed:
 * tests never leave 127.0.0.1. The README and `docs/` ship in the npm package, so their links must
 * also point only at files the package ships (package.json `files`): a link into `examples/`,
 * `src/`, `test/` or `bench/` works on GitHub but is dead in the installed package.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

const root = path.resolve(import.meta.dirname, '..', '..');
const markdown = execFileSync('git', ['ls-files', '*.md'], { cwd: root, encoding: 'utf8' }).split('\n').filter(Boolean);

/** Markdown files that ship in the package: README.md and docs/ (new pages included, tracked or not). */
const docsDir = path.join(root, 'docs');
const shippedMarkdown = [
  'README.md',
  ...fs
    .readdirSync(docsDir)
    .filter((f) => f.endsWith('.md'))
    .map((f) => `docs/${f}`),
];

/** What the package ships besides package.json: package.json `files`, each a file or a folder, relative to the root. */
const packageFiles = (JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')) as { files: string[] }).files.map((f) =>
  path.join(root, f.replace(/\/+$/, '')),
);

/** True when `file` (absolute) is in the npm package. */
function isShipped(file: string): boolean {
  if (file === path.join(root, 'package.json')) return true;
  return packageFiles.some((entry) => file === entry || file.startsWith(`${entry}${path.sep}`));
}

/** GitHub's anchor for a heading: lower case, punctuation dropped, spaces as dashes. */
function anchorOf(heading: string): string {
  return heading
    .trim()
    .toLowerCase()
    .replace(/[^\p{L}\p{N}\s_-]/gu, '')
    .replace(/\s/g, '-');
}

/** `[text](target)` links outside code blocks and inline code. */
function linksOf(text: string): string[] {
  const prose = text.replace(/```[\s\S]*?```/g, '').replace(/`[^`\n]*`/g, '');
  return [...prose.matchAll(/\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)/g)].map((m) => m[1]!);
}

/** The relative links of `file` (relative to the root), each with the absolute path it resolves to. */
function relativeLinksOf(file: string): { link: string; target: string; anchor: string | undefined }[] {
  const text = fs.readFileSync(path.join(root, file), 'utf8');
  return linksOf(text)
    .filter((link) => !/^[a-z][a-z0-9+.-]*:/i.test(link)) // https:, mailto:
    .map((link) => {
      const [target = '', anchor] = link.split('#');
      const resolved = target === '' ? path.join(root, file) : path.resolve(path.dirname(path.join(root, file)), decodeURI(target));
      return { link, target: resolved, anchor };
    });
}

describe('relative links in Markdown', () => {
  it.each([...new Set([...markdown, ...shippedMarkdown])])('%s', (file) => {
    const broken: string[] = [];
    for (const { link, target, anchor } of relativeLinksOf(file)) {
      if (!fs.existsSync(target)) {
        broken.push(`${link} (no ${path.relative(root, target)})`);
        continue;
      }
      if (anchor && target.endsWith('.md')) {
        const headings = [...fs.readFileSync(target, 'utf8').matchAll(/^#{1,6}\s+(.+)$/gm)].map((m) => anchorOf(m[1]!));
        if (!headings.includes(anchor)) broken.push(`${link} (no heading #${anchor})`);
      }
    }
    expect(broken).toEqual([]);
  });
});

describe('links in the Markdown the package ships', () => {
  it('the package ships README.md and docs/', () => {
    for (const file of shippedMarkdown) expect(isShipped(path.join(root, file)), file).toBe(true);
  });

  it.each(shippedMarkdown)('%s links only to files in the package', (file) => {
    const outside = relativeLinksOf(file)
      .filter(({ target }) => !isShipped(target))
      .map(({ link, target }) => `${link} (${path.relative(root, target)} is not in the package)`);
    expect(outside).toEqual([]);
  });
});
