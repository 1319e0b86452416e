// One build for every bundle: the extension, the CLI, and (for `npm test` / `npm run bench`) the tests and
// benchmarks. `vscode` is provided by the editor and `onnxruntime-node` ships native binaries: both stay external.
import * as esbuild from 'esbuild';
import { copyFileSync, mkdirSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';

const production = process.argv.includes('--production');
const watch = process.argv.includes('--watch');

const common = {
  bundle: true,
  platform: 'node',
  target: 'node20',
  format: 'cjs',
  sourcemap: !production,
  minify: production,
  logLevel: 'warning',
  external: ['vscode', 'onnxruntime-node'],
  // jsonc-parser's main entry is a UMD build whose inner requires a bundler cannot follow: take its ES modules
  alias: { 'jsonc-parser': 'jsonc-parser/lib/esm/main.js' },
};

function files(dir, pattern) {
  const out = [];
  for (const name of readdirSync(dir)) {
    const full = join(dir, name);
    if (statSync(full).isDirectory()) out.push(...files(full, pattern));
    else if (pattern.test(name)) out.push(full);
  }
  return out;
}

const builds = [
  { ...common, entryPoints: { extension: 'src/extension/extension.ts' }, outdir: 'dist' },
  { ...common, entryPoints: { cli: 'src/cli/main.ts' }, outdir: 'dist', banner: { js: '#!/usr/bin/env node' } },
  { ...common, entryPoints: { host: 'src/modelHost/main.ts' }, outdir: 'dist' },
  // template audits for diagnostics and hovers run in a worker thread of the extension host
  { ...common, entryPoints: { templateAuditWorker: 'src/extension/templateAuditWorker.ts' }, outdir: 'dist' },
  // the CLI and the workspace audit scan dataset rows in a worker thread while the tokenizer loads
  { ...common, entryPoints: { datasetScanWorker: 'src/app/datasetScanWorker.ts' }, outdir: 'dist' },
  // the dashboard runs in the webview: a browser bundle, no Node built-ins
  {
    ...common,
    platform: 'browser',
    format: 'iife',
    target: 'chrome120',
    external: [],
    entryPoints: { webview: 'webview/main.ts' },
    outdir: 'dist',
  },
  {
    ...common,
    // tests and benchmarks load dependencies from node_modules, as the CLI's users do
    packages: 'external',
    alias: {},
    entryPoints: [
      ...files('test', /\.test\.ts$/),
      ...files('test/vscode', /\.ts$/),
      'test/runVscodeTests.ts',
      'scripts/organisms/table.ts',
      'scripts/organisms/contrast.ts',
      ...files('bench', /\.ts$/),
    ],
    outdir: 'dist',
    outbase: '.',
  },
];

// @vscode-elements/elements ships one self-contained module; the webview loads it by nonce from dist/
mkdirSync('dist', { recursive: true });
copyFileSync('node_modules/@vscode-elements/elements/dist/bundled.js', 'dist/vscode-elements.js');

if (watch) {
  for (const b of builds) await (await esbuild.context(b)).watch();
} else {
  await Promise.all(builds.map((b) => esbuild.build(b)));
}
