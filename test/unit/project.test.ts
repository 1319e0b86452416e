// Consistency checks a user relies on without knowing it: core stays free of the editor API (the CLI runs it
// headless), every code has its docs section (diagnostics link there), every command in the manifest exists.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { CODES } from '../../src/core/findings';
import { ROOT } from '../helpers';

function filesUnder(dir: string): string[] {
  return fs
    .readdirSync(dir, { withFileTypes: true })
    .flatMap((e) => (e.isDirectory() ? filesUnder(path.join(dir, e.name)) : [path.join(dir, e.name)]));
}

describe('project structure', () => {
  it('src/core never imports vscode', () => {
    const offenders = filesUnder(path.join(ROOT, 'src', 'core')).filter((f) =>
      /(from\s+['"]vscode['"]|require\(['"]vscode['"]\))/.test(fs.readFileSync(f, 'utf8')),
    );
    assert.deepEqual(offenders, []);
  });

  it('src/host and src/cli do not import vscode either', () => {
    for (const dir of ['host', 'cli']) {
      const full = path.join(ROOT, 'src', dir);
      if (!fs.existsSync(full)) continue;
      const offenders = filesUnder(full).filter((f) => /from\s+['"]vscode['"]/.test(fs.readFileSync(f, 'utf8')));
      assert.deepEqual(offenders, [], dir);
    }
  });

  it('docs/diagnostics.md has a section for every code, and no section for a code that does not exist', () => {
    const doc = fs.readFileSync(path.join(ROOT, 'docs', 'diagnostics.md'), 'utf8');
    const sections = [...doc.matchAll(/^### ([A-Z]{2}\d{3})$/gm)].map((m) => m[1]).sort();
    assert.deepEqual(sections, Object.keys(CODES).sort());
  });

  it('every command the manifest contributes is registered by the extension, and vice versa', () => {
    const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8'));
    const contributed = pkg.contributes.commands.map((c: { command: string }) => c.command).sort();
    const source = filesUnder(path.join(ROOT, 'src', 'extension'))
      .map((f) => fs.readFileSync(f, 'utf8'))
      .join('\n');
    const registered = [...source.matchAll(/registerCommand\(\s*'([^']+)'/g)].map((m) => m[1]).sort();
    assert.deepEqual(registered, contributed);
  });
});
