import * as vscode from 'vscode';
import { preparePromptTemplate, PromptTemplate, PromptTemplateError } from '../core/pipeline';

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

/**
 * The template and tokenizer that render model prompts for `source`, with the template settings applied;
 * `tokenizerFallback` is where to look for tokenizer.json when piggyback.tokenizer is unset. Throws an Error whose
 * message says what is missing and which setting fixes it.
 */
export function promptTemplateFromSettings(source: string, tokenizerFallback?: string, scope?: vscode.Uri): PromptTemplate {
  const s = readSettings(scope);
  try {
    return preparePromptTemplate(source, { tokenizer: s.tokenizer ?? tokenizerFallback, kwargs: s.templateKwargs, name: s.templateName });
  } catch (e) {
    if (e instanceof PromptTemplateError && e.missing === 'tokenizer') throw new Error(`${e.message} (set piggyback.tokenizer)`);
    throw e;
  }
}
