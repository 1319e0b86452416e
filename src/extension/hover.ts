/**
 * Hovers that show the rendered prefix / query / postfix as tokens: on a chat template, for a one-turn example;
 * on a dataset row, for that row as the trainer renders it.
 */
import * as vscode from 'vscode';
import { editorConfig } from './config';
import { normaliseRow } from '../domain/dataset/formats';
import { AUDIT_CLOCK } from '../domain/template/audit';
import { rowRequest, segmentPrompt, type Segmentation } from '../domain/template/segments';
import { contextLength, resolveLoss, type TrainingView, trainingView } from '../domain/dataset/training';
import type { Token } from '../domain/tokenizer';
import { type DiagnosticsManager, isDataset, isTemplate } from './diagnostics';
import { datasetRowAt } from './rows';

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

  /** A dataset row as the trainer renders it, or why it cannot be rendered; undefined when it is no chat row. */
  rowSegments(
    doc: vscode.TextDocument,
    line: number,
  ):
    | { seg: Segmentation; template: string; training?: TrainingView; lossWhy?: string }
    | { error: string }
    | undefined {
    const text = datasetRowAt(doc, line)?.text;
    if (!text?.trim()) return undefined;
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
      const render = { specialTokens: p.source.specialTokens, kwargs: p.kwargs, now: AUDIT_CLOCK };
      const seg = segmentPrompt(p.template, { ...render, ...turns }, p.tokenizer);
      // the training view: which tokens carry loss under the trainer's masking, and the length check
      const loss = resolveLoss(editorConfig(doc.uri).lossMode, row.format);
      const mode = loss.mode;
      let training: TrainingView | undefined;
      if (p.tokenizer && turns.response !== undefined) {
        try {
          training = trainingView(
            p.template,
            p.tokenizer,
            row.messages,
            render,
            mode,
            contextLength(p.source.folder, p.source.config),
            seg,
          );
        } catch {
          training = undefined;
        }
      }
      return {
        seg,
        template: vscode.workspace.asRelativePath(p.source.file ?? 'the template'),
        training,
        lossWhy: loss.why,
      };
    } catch (e) {
      return { error: (e as Error).message };
    }
  }

  private rowHover(doc: vscode.TextDocument, pos: vscode.Position): vscode.Hover | undefined {
    const r = this.rowSegments(doc, pos.line);
    if (!r) return undefined;
    if ('error' in r) return new vscode.Hover(`Piggyback Lens cannot render this row: ${r.error}`);
    // what this row trains on first; the prefix every row shares, one line (the whole of it behind a link)
    const expand = `command:${SHOW_ROW_COMMAND}?${encodeURIComponent(JSON.stringify([doc.uri.toString(), pos.line]))}`;
    const row = datasetRowAt(doc, pos.line)!;
    const md = describe(r.seg, `row ${row.row} rendered with ${r.template}`, {
      collapsePrefix: expand,
      beforePrefix: r.training ? trainingLine(r.training, r.lossWhy) : undefined,
    });
    return new vscode.Hover(md, row.range);
  }
}

export const SHOW_ROW_COMMAND = 'piggyback.showRowTokens';

/** One line: how many tokens carry loss under the trainer's masking, and what is wrong with that. */
function trainingLine(v: TrainingView, why?: string): string {
  const context = v.maxLength ? `, ${v.tokens.length} of the model's ${v.maxLength}-token context` : '';
  return `**training view** (${v.mode} loss${why ? `, ${why}; setting \`piggyback.training.lossMode\`` : ''}): ${v.lossTokens} of ${v.tokens.length} tokens carry loss${context}${v.problems.length ? `. ${v.problems.join('. ')}` : ''}\n\n`;
}

/**
 * The full segmentation of a row (every token of every segment) as Markdown, for the hover's "show all" link, with
 * the training view: each token's segment and whether it carries loss.
 */
export function rowTokensMarkdown(seg: Segmentation, title: string, training?: TrainingView): string {
  let text = describe(seg, title, { all: true }).value;
  if (training) {
    text += `\n${trainingLine(training)}| # | id | segment | loss | token |\n|---|---|---|---|---|\n`;
    text += training.tokens
      .map(
        (t, i) =>
          `| ${i} | ${t.id} | ${t.segment} | ${t.loss ? 'yes' : ''} | ${codeSpan(t.text).replace(/\|/g, '\\|')} |`,
      )
      .join('\n');
    text += '\n';
  }
  return text;
}

function describe(
  seg: Segmentation,
  title: string,
  options: { collapsePrefix?: string; all?: boolean; beforePrefix?: string } = {},
): vscode.MarkdownString {
  const md = new vscode.MarkdownString(undefined, true);
  if (options.collapsePrefix) md.isTrusted = { enabledCommands: [SHOW_ROW_COMMAND] };
  md.appendMarkdown(`**Piggyback segments**: ${title}\n\n`);
  const rows: [string, { text: string; tokens: Token[] } | undefined][] = options.collapsePrefix
    ? [
        ['query', seg.query],
        ['postfix', seg.postfix],
        ['response', seg.response],
      ]
    : [
        ['prefix', seg.prefix],
        ['query', seg.query],
        ['postfix', seg.postfix],
        ['response', seg.response],
      ];
  const count = (s: { text: string; tokens: Token[] }) =>
    seg.tokenized ? `${s.tokens.length} tokens` : `${s.text.length} chars, no tokenizer`;
  for (const [name, s] of rows) {
    if (!s) continue;
    md.appendMarkdown(`**${name}** (${count(s)})\n\n`);
    if (seg.tokenized && (options.all || (name !== 'query' && name !== 'response'))) {
      const limit = options.all ? s.tokens.length : MAX_TOKENS_SHOWN;
      const shown = s.tokens.slice(0, limit).map((t) => `${codeSpan(t.text)}\u2009#${t.id}`);
      md.appendMarkdown(shown.join('  ') + (s.tokens.length > limit ? ' \u2026' : '') + '\n\n');
    } else {
      md.appendCodeblock(s.text.length > 400 ? s.text.slice(0, 400) + '\u2026' : s.text, 'text');
    }
  }
  if (options.beforePrefix) md.appendMarkdown(options.beforePrefix);
  if (options.collapsePrefix) {
    const preview = seg.prefix.text.length > 60 ? `${seg.prefix.text.slice(0, 60)}\u2026` : seg.prefix.text;
    md.appendMarkdown(
      `**prefix** (${count(seg.prefix)}, the template text before the query): ${codeSpan(preview)} [show every token](${options.collapsePrefix})\n\n`,
    );
  }
  return md;
}

/** A token's text as a code span: newline and tab escaped, a space shown as \u2423 (never the separator). */
function codeSpan(text: string): string {
  const visible = text.replace(/\n/g, '\\n').replace(/\t/g, '\\t').replace(/ /g, '\u2423');
  return '`' + visible.replace(/`/g, '\u02cb') + '`';
}
