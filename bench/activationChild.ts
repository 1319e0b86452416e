/**
 * One cold activation, in a fresh process (as each VS Code window's extension host is): requires an extension's
 * main module and calls activate() against a stand-in `vscode` module whose calls cost nothing, so that what is
 * timed is the extension's own loading and activation work. Prints one JSON line: loadMs, activateMs and the
 * modules that activation pulled in that an extension must not (onnxruntime).
 * Usage (from bench/activation.ts): node activationChild.js <extension main.js>
 */
import Module from 'node:module';
import * as path from 'node:path';

/** Any property is another stand-in; calling or constructing one returns a stand-in; iterating one yields nothing. */
function standIn(name: string): unknown {
  const target = (() => {}) as unknown as Record<string | symbol, unknown>;
  return new Proxy(target, {
    get(_t, key) {
      if (key === Symbol.iterator) return function* () {};
      if (key === Symbol.toPrimitive) return () => '';
      if (key === 'then') return undefined; // not a promise
      return standIn(`${name}.${String(key)}`);
    },
    set: () => true,
    apply: () => standIn(`${name}()`),
    construct: () => standIn(`new ${name}`) as object,
  });
}

// the bundle reads namespaces through esbuild's __toESM, which copies the module's own keys: name them
const NAMESPACES = [
  'window',
  'workspace',
  'languages',
  'commands',
  'env',
  'extensions',
  'Uri',
  'EventEmitter',
  'Disposable',
  'StatusBarAlignment',
  'DiagnosticSeverity',
  'Diagnostic',
  'DiagnosticRelatedInformation',
  'DiagnosticTag',
  'Range',
  'Position',
  'Location',
  'Selection',
  'ProgressLocation',
  'ViewColumn',
  'ConfigurationTarget',
  'CodeLens',
  'Hover',
  'MarkdownString',
  'ThemeColor',
  'ThemeIcon',
  'TextEditorRevealType',
  'RelativePattern',
  'CancellationTokenSource',
  'LogLevel',
  'ExtensionMode',
  'l10n',
];
const api: Record<string, unknown> = Object.fromEntries(NAMESPACES.map((n) => [n, standIn(`vscode.${n}`)]));
const vscodeStandIn = new Proxy(api, {
  get: (t, k) => (typeof k === 'string' && !(k in t) ? standIn(`vscode.${k}`) : t[k as string]),
});
const resolve = (Module as unknown as { _resolveFilename: (request: string, ...rest: unknown[]) => string })
  ._resolveFilename;
(Module as unknown as { _resolveFilename: (request: string, ...rest: unknown[]) => string })._resolveFilename =
  function (request: string, ...rest: unknown[]) {
    return request === 'vscode' ? 'vscode' : resolve.call(this, request, ...rest);
  };
require.cache.vscode = {
  id: 'vscode',
  filename: 'vscode',
  loaded: true,
  exports: vscodeStandIn,
} as unknown as NodeJS.Module;

async function main(): Promise<void> {
  const main = path.resolve(process.argv[2]);
  const state = new Map<string, unknown>();
  const context = {
    subscriptions: [] as unknown[],
    extensionUri: standIn('extensionUri'),
    extensionPath: path.dirname(path.dirname(main)),
    asAbsolutePath: (p: string) => path.join(path.dirname(path.dirname(main)), p),
    workspaceState: {
      get: (k: string) => state.get(k),
      update: async (k: string, v: unknown) => void state.set(k, v),
      keys: () => [...state.keys()],
    },
    globalState: { get: () => undefined, update: async () => undefined, keys: () => [] },
    secrets: {
      get: async () => undefined,
      store: async () => undefined,
      delete: async () => undefined,
      onDidChange: standIn('onDidChange'),
    },
  };
  const t0 = process.hrtime.bigint();
  const ext = require(main) as { activate: (c: unknown) => unknown };
  const t1 = process.hrtime.bigint();
  await ext.activate(context);
  const t2 = process.hrtime.bigint();
  const forbidden = Object.keys(require.cache).filter((m) => /onnxruntime|\.node$/.test(m));
  process.stdout.write(
    JSON.stringify({ loadMs: Number(t1 - t0) / 1e6, activateMs: Number(t2 - t1) / 1e6, forbidden }) + '\n',
  );
}

main().catch((e) => {
  process.stderr.write(`${(e as Error).stack ?? e}\n`);
  process.exit(1);
});
