/**
 * Hovers that show the rendered prefix / query / postfix as tokens: on a chat template, for a one-turn example;
 * on a dataset row, for that row as the trainer renders it.
 */
import * as vscode from 'vscode';
import { normaliseRow } from '../domain/dataset/formats';
import { AUDIT_CLOCK } from '../domain/template/audit';
import { rowRequest, segmentPrompt, type Segmentation } from '../domain/template/segments';
import type { Token } from '../domain/tokenizer';
import { type DiagnosticsManager, isDataset, isTemplate } from './diagnostics';

const MAX_TOKENS_SHOWN = 80;

export class SegmentHover implements vscode.HoverProvider {
  constructor(private readonly diagnostics: DiagnosticsManager) {}

  provideHover(doc: vscode.TextDocument, pos: vscode.Position): vscode.Hover | undefined {
    if (isTemplate(doc)) return this.templateHover(doc, pos);
    if (isDataset(doc)) return this.rowHover(doc, pos);
    return undefined;
  }

  private templateHover(doc: vscode.TextDocument, pos: vscode.Position): vscode.Hover | undefined {
    const p = this.diagnostics.templateDocs.get(doc.fileName);
    const seg = p?.segments;
    if (!p || !seg) return undefined;
    // in a JSON file, only over the chat_template string itself
    const offsets = p.offsets;
    if (offsets) {
      const at = doc.offsetAt(pos);
      if (at < offsets[0] || at > offsets[offsets.length - 1]) return undefined;
    }
    return new vscode.Hover(describe(seg, 'A one-turn conversation with no system message, as the trainer renders it'));
  }

  private rowHover(doc: vscode.TextDocument, pos: vscode.Position): vscode.Hover | undefined {
    const text = doc.lineAt(pos.line).text;
    if (!text.trim()) return undefined;
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch {
      return undefined;
    }
    const row = normaliseRow(value);
    const p = this.diagnostics.templateFor(doc.uri);
    if (!p?.template || !p.source || row.messages.length === 0) return undefined;
    const turns = rowRequest(row.messages);
    if (!turns) return undefined;
    try {
      const seg = segmentPrompt(
        p.template,
        { specialTokens: p.source.specialTokens, kwargs: p.kwargs, now: AUDIT_CLOCK, ...turns },
        p.tokenizer,
      );
      return new vscode.Hover(
        describe(seg, `This row rendered with ${p.source.file ?? 'the template'}`),
        doc.lineAt(pos.line).range,
      );
    } catch (e) {
      return new vscode.Hover(`Piggyback Lens cannot render this row: ${(e as Error).message}`);
    }
  }
}

function describe(seg: Segmentation, title: string): vscode.MarkdownString {
  const md = new vscode.MarkdownString(undefined, true);
  md.appendMarkdown(`**Piggyback segments** — ${title}\n\n`);
  const rows: [string, { text: string; tokens: Token[] } | undefined][] = [
    ['prefix', seg.prefix],
    ['query', seg.query],
    ['postfix', seg.postfix],
    ['response', seg.response],
  ];
  for (const [name, s] of rows) {
    if (!s) continue;
    const count = seg.tokenized ? `${s.tokens.length} tokens` : `${s.text.length} chars, no tokenizer`;
    md.appendMarkdown(`**${name}** (${count})\n\n`);
    if (seg.tokenized && name !== 'query' && name !== 'response') {
      const shown = s.tokens.slice(0, MAX_TOKENS_SHOWN).map((t) => `\`${t.id}\`\u00a0${codeSpan(t.text)}`);
      md.appendMarkdown(shown.join(' · ') + (s.tokens.length > MAX_TOKENS_SHOWN ? ' …' : '') + '\n\n');
    } else {
      md.appendCodeblock(s.text.length > 400 ? s.text.slice(0, 400) + '…' : s.text, 'text');
    }
  }
  return md;
}

function codeSpan(text: string): string {
  const visible = text.replace(/\n/g, '\\n').replace(/\t/g, '\\t').replace(/ /g, '\u00b7');
  return '`' + visible.replace(/`/g, '\u02cb') + '`';
}
