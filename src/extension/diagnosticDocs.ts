/**
 * A diagnostic's documentation, rendered: every diagnostic's code links to `piggyback-docs:/CT001.md`, a read-only
 * file (this module's file system provider) holding that code's section of docs/diagnostics.md, which opens in a
 * custom editor rendering it with markdown-it (a webview without scripts). A file URI opens through every surface
 * that shows a code link (the Problems view, hovers, the peek view) in desktop and browser-hosted VS Code alike;
 * the docs Markdown file itself would open as raw text, and a `vscode://` link leaves the browser-hosted workbench.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as vscode from 'vscode';
import { renderMarkdown } from '../app/eval/evalReport';
import { CODES, docSection } from '../domain/findings';

export const DOCS_SCHEME = 'piggyback-docs';
export const DOCS_VIEW_TYPE = 'piggyback.diagnosticDocs';

/** Where a code's documentation opens. */
export function diagnosticDocsUri(code: string): vscode.Uri {
  return vscode.Uri.from({ scheme: DOCS_SCHEME, path: `/${code}.md` });
}

/**
 * Pages the extension generates (a dataset row's every token), served read-only beside the docs and rendered by
 * the same custom editor: a page, not an untitled buffer that asks to be saved. The latest few are kept.
 */
const pages = new Map<string, string>();
const PAGES_KEPT = 20;

/** Opens `markdown` as a read-only rendered page titled `title`, beside the active editor. */
export async function showPage(title: string, markdown: string): Promise<vscode.Uri> {
  // a file name: no path separators, no characters file systems or tab titles refuse
  const name =
    [...title]
      .map((c) => (c.charCodeAt(0) < 32 || '\\/:*?"<>|'.includes(c) ? ' ' : c))
      .join('')
      .replace(/\s+/g, ' ')
      .trim() || 'page';
  const uri = vscode.Uri.from({ scheme: DOCS_SCHEME, path: `/${name}.md` });
  pages.delete(uri.path);
  pages.set(uri.path, markdown);
  while (pages.size > PAGES_KEPT) pages.delete(pages.keys().next().value as string);
  await vscode.commands.executeCommand('vscode.openWith', uri, DOCS_VIEW_TYPE, {
    viewColumn: vscode.ViewColumn.Beside,
    preview: true,
  });
  return uri;
}

const STYLE =
  'body{font-family:var(--vscode-font-family);font-size:var(--vscode-font-size);color:var(--vscode-foreground);max-width:960px;line-height:1.5;padding:0 16px}code{font-family:var(--vscode-editor-font-family)}.why{color:var(--vscode-descriptionForeground)}table{border-collapse:collapse}td,th{border:1px solid var(--vscode-panel-border);padding:1px 6px}';
const STYLE_HASH = `sha256-${createHash('sha256').update(STYLE).digest('base64')}`;

/** The file system provider and custom editor behind the code links. */
export function registerDiagnosticDocs(extensionUri: vscode.Uri): vscode.Disposable {
  // the docs ship with the extension and do not change while it runs: read once, when a link is first opened
  let docs: string | undefined;
  const docsText = () => {
    docs ??= fs.readFileSync(vscode.Uri.joinPath(extensionUri, 'docs', 'diagnostics.md').fsPath, 'utf8');
    return docs;
  };
  const sectionOf = (uri: vscode.Uri): string => {
    const page = pages.get(uri.path);
    if (page !== undefined) return page;
    const code = /^\/([A-Z]{2}\d{3})\.md$/.exec(uri.path)?.[1];
    const section = code && CODES[code] ? docSection(docsText(), code) : undefined;
    if (!section) throw vscode.FileSystemError.FileNotFound(uri);
    return section;
  };
  const files: vscode.FileSystemProvider = {
    onDidChangeFile: new vscode.EventEmitter<vscode.FileChangeEvent[]>().event,
    watch: () => new vscode.Disposable(() => undefined),
    stat: (uri) => ({
      type: vscode.FileType.File,
      ctime: 0,
      mtime: 0,
      size: Buffer.byteLength(sectionOf(uri)),
      permissions: vscode.FilePermission.Readonly,
    }),
    readFile: (uri) => Buffer.from(sectionOf(uri)),
    readDirectory: () => [],
    createDirectory: () => {
      throw vscode.FileSystemError.NoPermissions('the diagnostics documentation is read-only');
    },
    writeFile: () => {
      throw vscode.FileSystemError.NoPermissions('the diagnostics documentation is read-only');
    },
    delete: () => {
      throw vscode.FileSystemError.NoPermissions('the diagnostics documentation is read-only');
    },
    rename: () => {
      throw vscode.FileSystemError.NoPermissions('the diagnostics documentation is read-only');
    },
  };
  const editor: vscode.CustomReadonlyEditorProvider = {
    openCustomDocument: (uri) => ({ uri, dispose: () => undefined }),
    resolveCustomEditor: (doc, panel) => {
      panel.webview.options = { enableScripts: false, localResourceRoots: [] };
      panel.webview.html = `<!DOCTYPE html>
<html lang="en"><head><meta charset="UTF-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src '${STYLE_HASH}'">
<style>${STYLE}</style></head><body>
${renderMarkdown(sectionOf(doc.uri))}
${pages.has(doc.uri.path) ? '' : `<p class="why">Every code: docs/diagnostics.md in the extension's folder, or Piggyback: Explain a Diagnostic Code.</p>`}
</body></html>`;
    },
  };
  return vscode.Disposable.from(
    vscode.workspace.registerFileSystemProvider(DOCS_SCHEME, files, { isCaseSensitive: true, isReadonly: true }),
    vscode.window.registerCustomEditorProvider(DOCS_VIEW_TYPE, editor, {
      supportsMultipleEditorsPerDocument: true,
    }),
  );
}
