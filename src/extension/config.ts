import * as vscode from 'vscode';

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

export function readSettings(scope?: vscode.Uri): Settings {
  const c = vscode.workspace.getConfiguration('piggyback', scope);
  const str = (k: string) => {
    const v = c.get<string>(k);
    return v && v.trim() ? v.trim() : undefined;
  };
  return {
    template: str('template'),
    tokenizer: str('tokenizer'),
    templateName: str('templateName'),
    templateKwargs: c.get<Record<string, unknown>>('templateKwargs') ?? {},
    specialTokens: c.get<Record<string, string>>('specialTokens') ?? {},
    debounceMs: c.get<number>('diagnostics.debounceMs') ?? 400,
    maxDatasetLines: c.get<number>('diagnostics.maxDatasetLines') ?? 200000,
  };
}
