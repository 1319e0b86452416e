// Consistency checks a user relies on without knowing it: the layers import only downward (the CLI runs the
// domain and application headless), every code has its docs section (diagnostics link there), every command in the manifest exists.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { describe, it } from 'node:test';
import { CODES, docSection } from '../../src/domain/findings';
import { ROOT } from '../helpers';

function filesUnder(dir: string): string[] {
  return fs
    .readdirSync(dir, { withFileTypes: true })
    .flatMap((e) => (e.isDirectory() ? filesUnder(path.join(dir, e.name)) : [path.join(dir, e.name)]));
}

describe('project structure', () => {
  // which way imports go (README, Development): contracts <- domain <- app <- cli / extension; the model host
  // reads contracts and domain only; the webview reads contracts only; only the extension imports vscode
  const LAYERS: Record<string, string[]> = {
    contracts: ['contracts'],
    domain: ['contracts', 'domain'],
    app: ['contracts', 'domain', 'app'],
    modelHost: ['contracts', 'domain', 'modelHost'],
    cli: ['contracts', 'domain', 'app', 'cli'],
    extension: ['contracts', 'domain', 'app', 'extension'],
  };
  const layerOf = (file: string) => path.relative(path.join(ROOT, 'src'), file).split(path.sep)[0];
  const imports = (file: string) =>
    [...fs.readFileSync(file, 'utf8').matchAll(/(?:from|import)\s*\(?\s*['"]([^'"]+)['"]/g)].map((m) => m[1]);

  it('every folder of src is a known layer, and each imports only the layers below it', () => {
    assert.deepEqual(fs.readdirSync(path.join(ROOT, 'src')).sort(), Object.keys(LAYERS).sort());
    const wrong: string[] = [];
    for (const file of filesUnder(path.join(ROOT, 'src'))) {
      const layer = layerOf(file);
      for (const spec of imports(file)) {
        if (spec === 'vscode' && layer !== 'extension') wrong.push(`${file} imports vscode`);
        if (!spec.startsWith('.')) continue;
        const target = layerOf(path.resolve(path.dirname(file), spec));
        if (!LAYERS[layer].includes(target)) wrong.push(`${file} (${layer}) imports ${spec} (${target})`);
      }
    }
    assert.deepEqual(wrong, []);
  });

  it('no module of src imports itself through others: the import graph has no cycle', () => {
    // type-only imports count too: a cycle of types is a cycle of meaning, and the next change makes it a runtime one
    const resolve = (from: string, spec: string) => {
      const base = path.resolve(path.dirname(from), spec);
      return [`${base}.ts`, path.join(base, 'index.ts')].find((f) => fs.existsSync(f));
    };
    const files = filesUnder(path.join(ROOT, 'src')).filter((f) => f.endsWith('.ts'));
    const edges = new Map(
      files.map((f) => [
        f,
        imports(f)
          .filter((s) => s.startsWith('.'))
          .map((s) => resolve(f, s))
          .filter((x): x is string => !!x),
      ]),
    );
    const cycles: string[] = [];
    const state = new Map<string, 'open' | 'done'>();
    const visit = (f: string, trail: string[]) => {
      if (state.get(f) === 'done') return;
      if (state.get(f) === 'open') {
        const loop = trail.slice(trail.indexOf(f)).concat(f);
        cycles.push(loop.map((x) => path.relative(path.join(ROOT, 'src'), x)).join(' -> '));
        return;
      }
      state.set(f, 'open');
      for (const g of edges.get(f) ?? []) visit(g, [...trail, f]);
      state.set(f, 'done');
    };
    for (const f of files) visit(f, []);
    assert.deepEqual(cycles, []);
  });

  it('settings are read in one place: src/extension/config.ts is the only caller of getConfiguration', () => {
    const callers = filesUnder(path.join(ROOT, 'src'))
      .filter((f) => /getConfiguration\(/.test(fs.readFileSync(f, 'utf8')))
      .map((f) => path.relative(ROOT, f));
    assert.deepEqual(callers, [path.join('src', 'extension', 'config.ts')]);
  });

  it('the webview reads the dashboard contract only', () => {
    const wrong = filesUnder(path.join(ROOT, 'webview'))
      .filter((f) => f.endsWith('.ts'))
      .flatMap((f) =>
        imports(f)
          .filter((s) => s.startsWith('.') && !s.includes('/src/contracts/'))
          .map((s) => `${f}: ${s}`),
      );
    assert.deepEqual(wrong, []);
  });

  it('docs/diagnostics.md has a section for every code, and no section for a code that does not exist', () => {
    const doc = fs.readFileSync(path.join(ROOT, 'docs', 'diagnostics.md'), 'utf8');
    const sections = [...doc.matchAll(/^### ([A-Z]{2}\d{3})$/gm)].map((m) => m[1]).sort();
    assert.deepEqual(sections, Object.keys(CODES).sort());
    // the docs tab shows each code's own section: its title in bold, nothing of the next code
    for (const code of Object.keys(CODES)) {
      const section = docSection(doc, code)!;
      assert.match(section, new RegExp(`^### ${code}\\n\\*\\*`), code);
      assert.equal(section.match(/^### /gm)?.length, 1, code);
    }
  });

  it('diagnostics link to documentation that opens rendered: a read-only scheme with a custom editor over it', () => {
    const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8'));
    const source = fs.readFileSync(path.join(ROOT, 'src', 'extension', 'diagnosticDocs.ts'), 'utf8');
    const scheme = /DOCS_SCHEME = '([^']+)'/.exec(source)![1];
    const viewType = /DOCS_VIEW_TYPE = '([^']+)'/.exec(source)![1];
    const editor = pkg.contributes.customEditors.find((e: { viewType: string }) => e.viewType === viewType);
    assert.deepEqual(editor.selector, [{ filenamePattern: `${scheme}:/*.md` }]);
    assert.equal(editor.priority, 'default');
    for (const event of [`onFileSystem:${scheme}`, `onCustomEditor:${viewType}`])
      assert.ok(pkg.activationEvents.includes(event), event);
  });

  it('every command the manifest contributes is registered by the extension, and vice versa', () => {
    const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8'));
    const contributed = pkg.contributes.commands.map((c: { command: string }) => c.command).sort();
    const source = filesUnder(path.join(ROOT, 'src', 'extension'))
      .map((f) => fs.readFileSync(f, 'utf8'))
      .join('\n');
    // the command table in extension.ts (createCommands)
    const registered = [...source.matchAll(/^\s*'(piggyback\.[A-Za-z]+)': /gm)].map((m) => m[1]).sort();
    assert.deepEqual(registered, contributed);
  });

  it('the $piggyback problem matcher reads every finding line the CLI prints', () => {
    const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8'));
    const matcher = pkg.contributes.problemMatchers.find((m: { name: string }) => m.name === 'piggyback');
    const re = new RegExp(matcher.pattern.regexp);
    const r = spawnSync(process.execPath, [path.join(ROOT, 'dist', 'cli.js'), 'audit', path.join(ROOT, 'examples')], {
      encoding: 'utf8',
      env: { ...process.env, NO_COLOR: '1' },
    });
    const lines = r.stdout.split('\n').filter((l) => /: (error|warning|info) [A-Z]{2}\d{3}: /.test(l));
    assert.ok(lines.length >= 10);
    for (const l of lines) {
      const m = re.exec(l);
      assert.ok(m, l);
      assert.ok(fs.existsSync(m[matcher.pattern.file]), m[matcher.pattern.file]);
      assert.match(m[matcher.pattern.code], /^(CT|DS|WS)\d{3}$/);
    }
  });

  it('every walkthrough step completes on a real event: a contributed command or a context key the extension sets', () => {
    const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8'));
    const commands = new Set(pkg.contributes.commands.map((c: { command: string }) => c.command));
    const source = filesUnder(path.join(ROOT, 'src', 'extension'))
      .map((f) => fs.readFileSync(f, 'utf8'))
      .join('\n');
    const keys = new Set([
      ...[...source.matchAll(/'setContext',\s*'([\w.]+)'/g)].map((m) => m[1]),
      ...[...source.matchAll(/done\('([\w.]+)'\)/g)].map((m) => m[1]),
    ]);
    for (const w of pkg.contributes.walkthroughs)
      for (const step of w.steps) {
        assert.ok(step.completionEvents?.length, `${step.id} has completion events`);
        for (const e of step.completionEvents as string[]) {
          const [kind, what] = e.split(/:(.*)/s);
          if (kind === 'onCommand') assert.ok(commands.has(what), `${step.id}: ${e}`);
          else if (kind === 'onContext') assert.ok(keys.has(what), `${step.id}: ${e} is never set`);
          else assert.fail(`${step.id}: ${e}`);
        }
      }
  });
});
