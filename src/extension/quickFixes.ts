/**
 * Quick fixes for findings whose fix is mechanical. DS003 (unknown role): a role that is another spelling of a
 * known one ("human", "gpt", "bot", "model", "User", ...) is renamed to it, on this row or in the whole file.
 * CT005 (no generation markers): the markers added, when their proof holds.
 */
import * as path from 'node:path';
import * as vscode from 'vscode';
import { type GenerationMarkerFix, generationMarkerFix, generationProofMarkdown } from '../app/generationMarkers';
import { parseTemplateText, type TemplateSource, templateFileEdit } from '../domain/template/source';

/** Spellings of the roles chat templates know, as datasets in the wild write them. */
export const ROLE_SPELLINGS: Record<string, string> = {
  human: 'user',
  person: 'user',
  gpt: 'assistant',
  bot: 'assistant',
  ai: 'assistant',
  model: 'assistant',
  chatbot: 'assistant',
  sys: 'system',
};

export function canonicalRole(role: string): string | undefined {
  const lower = role.toLowerCase();
  if (['system', 'developer', 'user', 'assistant', 'tool'].includes(lower)) return lower === role ? undefined : lower;
  return ROLE_SPELLINGS[lower];
}

const codeOf = (d: vscode.Diagnostic) => (typeof d.code === 'object' ? String(d.code.value) : String(d.code));

export class PiggybackQuickFixes implements vscode.CodeActionProvider {
  static readonly kinds = [vscode.CodeActionKind.QuickFix];

  provideCodeActions(
    doc: vscode.TextDocument,
    _range: vscode.Range,
    context: vscode.CodeActionContext,
  ): vscode.CodeAction[] {
    const actions: vscode.CodeAction[] = [];
    for (const d of context.diagnostics) {
      if (d.source !== 'piggyback' || codeOf(d) !== 'DS003') continue;
      const role = /unknown role "([^"]+)"/.exec(d.message)?.[1];
      const to = role && canonicalRole(role);
      if (!role || !to) continue;
      const line = d.range.start.line;
      const one = this.renameRole(doc, role, to, [line]);
      if (one.size) {
        const fix = new vscode.CodeAction(
          `Change role "${role}" to "${to}" on this row`,
          vscode.CodeActionKind.QuickFix,
        );
        fix.edit = one;
        fix.diagnostics = [d];
        fix.isPreferred = true;
        actions.push(fix);
      }
      const all = this.renameRole(
        doc,
        role,
        to,
        Array.from({ length: doc.lineCount }, (_, i) => i),
      );
      if (all.size && all.get(doc.uri).length > 1) {
        const fix = new vscode.CodeAction(
          `Change role "${role}" to "${to}" in the whole file`,
          vscode.CodeActionKind.QuickFix,
        );
        fix.edit = all;
        fix.diagnostics = [d];
        actions.push(fix);
      }
    }
    return actions;
  }

  /** Edits `"role": "<from>"` (or ShareGPT's `"from"`) values on the given lines; other text is left alone. */
  private renameRole(doc: vscode.TextDocument, from: string, to: string, lines: number[]): vscode.WorkspaceEdit {
    const edit = new vscode.WorkspaceEdit();
    const escaped = from.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    const re = new RegExp(`("(?:role|from)"\\s*:\\s*")${escaped}(")`, 'g');
    for (const l of lines) {
      const text = doc.lineAt(l).text;
      for (const m of text.matchAll(re)) {
        const start = (m.index ?? 0) + m[1].length;
        edit.replace(doc.uri, new vscode.Range(l, start, l, start + from.length), to);
      }
    }
    return edit;
  }
}

/**
 * CT005 (a template without `{% generation %}` markers): a quick fix that adds them, offered only when the marked
 * template passes its proof (the same text as the original on every proof conversation; spans that hold each
 * assistant turn's content and end of turn, and no prompt). Applying it edits the template (the JSON string of a
 * tokenizer_config.json, or the Jinja file) and shows the proof; when the proof fails, the action shows why instead.
 */
export class GenerationMarkerFixes implements vscode.CodeActionProvider {
  static readonly kinds = [vscode.CodeActionKind.QuickFix];
  /** The fix of a document version: the proof renders the template a few dozen times, once per edit is enough. */
  private cache = new Map<string, { version: number; fix: GenerationMarkerFix; source: TemplateSource }>();

  provideCodeActions(
    doc: vscode.TextDocument,
    _range: vscode.Range,
    context: vscode.CodeActionContext,
  ): vscode.CodeAction[] {
    const d = context.diagnostics.find(
      (x) => x.source === 'piggyback' && codeOf(x) === 'CT005' && x.message.startsWith('No {% generation %} markers'),
    );
    if (!d) return [];
    const found = this.fixOf(doc);
    if (!found) return [];
    const { fix, source } = found;
    const proof = generationProofMarkdown(path.basename(doc.uri.fsPath), fix);
    const show: vscode.Command = {
      command: 'piggyback.showGenerationProof',
      title: 'Show the proof',
      arguments: [`${path.basename(doc.uri.fsPath)} generation markers proof`, proof],
    };
    if (!fix.marked) {
      const why = new vscode.CodeAction(
        'Why {% generation %} markers cannot be added here',
        vscode.CodeActionKind.QuickFix,
      );
      why.command = show;
      why.diagnostics = [d];
      return [why];
    }
    const e = templateFileEdit(source, fix.marked);
    const action = new vscode.CodeAction(
      `Add {% generation %} markers (proved on ${fix.proof!.results.length} conversations)`,
      vscode.CodeActionKind.QuickFix,
    );
    action.edit = new vscode.WorkspaceEdit();
    action.edit.replace(doc.uri, new vscode.Range(doc.positionAt(e.start), doc.positionAt(e.end)), e.text);
    action.diagnostics = [d];
    action.command = show;
    return [action];
  }

  private fixOf(doc: vscode.TextDocument): { fix: GenerationMarkerFix; source: TemplateSource } | undefined {
    const key = doc.uri.toString();
    const hit = this.cache.get(key);
    if (hit?.version === doc.version) return hit;
    let source: TemplateSource;
    try {
      source = parseTemplateText(doc.uri.fsPath, doc.getText());
    } catch {
      return undefined; // a file that does not load has its own diagnostic
    }
    const entry = { version: doc.version, fix: generationMarkerFix(source), source };
    this.cache.set(key, entry);
    if (this.cache.size > 20) this.cache.delete(this.cache.keys().next().value as string);
    return entry;
  }
}
