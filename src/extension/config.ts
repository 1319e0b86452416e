import * as vscode from 'vscode';
import { insideRoot } from '../domain/files';
import { preparePromptTemplate, type PromptTemplate, PromptTemplateError } from '../app/audits';

/** Settings, read fresh each time (they can change while the extension runs). */
export interface Settings {
  /** Template source for datasets: a model folder, tokenizer_config.json or .jinja (workspace-relative). */
  template?: string;
  tokenizer?: string;
  templateName?: string;
  templateKwargs: Record<string, unknown>;
  specialTokens: Record<string, string>;
  debounceMs: number;
  maxDatasetLines: number;
}

const warned = new Set<string>();

/**
 * A path setting, unless a workspace set it to a place outside the workspace folder (.., absolute, a symlink out):
 * a workspace is not trusted to make the product read files elsewhere (WS001). The user's own settings are.
 */
function containedPath(c: vscode.WorkspaceConfiguration, key: string, scope?: vscode.Uri): string | undefined {
  const v = c.get<string>(key)?.trim();
  if (!v) return undefined;
  const i = c.inspect<string>(key);
  const fromWorkspace = (i?.workspaceFolderValue ?? i?.workspaceValue)?.trim() === v;
  const folder = scope ? vscode.workspace.getWorkspaceFolder(scope) : vscode.workspace.workspaceFolders?.[0];
  if (!fromWorkspace || !folder || insideRoot(folder.uri.fsPath, v)) return v;
  const message = `Piggyback Lens: WS001 the workspace setting piggyback.${key} (${v}) points outside the workspace folder; it is ignored. Set it in your user settings to use a path elsewhere.`;
  if (!warned.has(message)) {
    warned.add(message);
    void vscode.window.showWarningMessage(message);
  }
  return undefined;
}

export function readSettings(scope?: vscode.Uri): Settings {
  const c = vscode.workspace.getConfiguration('piggyback', scope);
  const str = (k: string) => {
    const v = c.get<string>(k);
    return v?.trim() ? v.trim() : undefined;
  };
  return {
    template: containedPath(c, 'template', scope),
    tokenizer: containedPath(c, 'tokenizer', scope),
    templateName: str('templateName'),
    templateKwargs: c.get<Record<string, unknown>>('templateKwargs') ?? {},
    specialTokens: c.get<Record<string, string>>('specialTokens') ?? {},
    debounceMs: c.get<number>('diagnostics.debounceMs') ?? 400,
    maxDatasetLines: c.get<number>('diagnostics.maxDatasetLines') ?? 200000,
  };
}

/**
 * The template and tokenizer that render model prompts for `source`, with the template settings applied;
 * `tokenizerFallback` is where to look for tokenizer.json when piggyback.tokenizer is unset. Throws an Error whose
 * message says what is missing and which setting fixes it.
 */
export function promptTemplateFromSettings(
  source: string,
  tokenizerFallback?: string,
  scope?: vscode.Uri,
): PromptTemplate {
  const s = readSettings(scope);
  try {
    return preparePromptTemplate(source, {
      tokenizer: s.tokenizer ?? tokenizerFallback,
      kwargs: s.templateKwargs,
      name: s.templateName,
    });
  } catch (e) {
    if (e instanceof PromptTemplateError && e.missing === 'tokenizer')
      throw new Error(`${e.message} (set piggyback.tokenizer)`);
    throw e;
  }
}
