/**
 * Quick fixes for findings whose fix is mechanical. DS003 (unknown role): a role that is another spelling of a
 * known one ("human", "gpt", "bot", "model", "User", ...) is renamed to it, on this row or in the whole file.
 */
import * as vscode from 'vscode';

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
