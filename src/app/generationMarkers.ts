/**
 * The generation-marker fix as the CLI and the editor offer it: the marked template, the proof that it renders what
 * the original renders and marks what an assistant produces, and that proof in words (Markdown). A rewrite whose
 * proof fails is never offered as a fix; the proof still says why.
 */
import {
  addGenerationMarkers,
  type GenerationProof,
  GenerationMarkerError,
  proveGenerationMarkers,
} from '../domain/template/generation';
import { AUDIT_CLOCK } from '../domain/template/audit';
import type { TemplateSource } from '../domain/template/source';

export interface GenerationMarkerFix {
  /** The marked template (only when the proof holds). */
  marked?: string;
  /** What the rewrite changed, one line per tag. */
  edits: string[];
  proof?: GenerationProof;
  /** Why there is no fix: markers there already, nothing to mark, or the proof failed. */
  refused?: string;
}

/** Adds `{% generation %}` markers to a template and proves the result on its own special tokens and kwargs. */
export function generationMarkerFix(source: TemplateSource, kwargs: Record<string, unknown> = {}): GenerationMarkerFix {
  let edit: { text: string; edits: string[] };
  try {
    edit = addGenerationMarkers(source.text);
  } catch (e) {
    if (e instanceof GenerationMarkerError) return { edits: [], refused: e.message };
    throw e;
  }
  const proof = proveGenerationMarkers(source.text, edit.text, {
    specialTokens: source.specialTokens,
    kwargs,
    now: AUDIT_CLOCK,
  });
  if (!proof.ok) {
    const failed = proof.results.filter((r) => !r.identical || r.problems.length).length;
    return {
      edits: edit.edits,
      proof,
      refused: `the marked template failed its proof on ${failed} of ${proof.results.length} conversations: add the markers by hand`,
    };
  }
  return { marked: edit.text, edits: edit.edits, proof };
}

const show = (s: string) => JSON.stringify(s);

/** The fix and its proof in Markdown: per conversation, identical or where the renders part, and the marked spans. */
export function generationProofMarkdown(name: string, fix: GenerationMarkerFix): string {
  const lines = [`# {% generation %} markers for ${name}`, ''];
  lines.push(
    fix.marked
      ? `Proved: the marked template renders byte for byte what the original renders on all ${fix.proof!.results.length} conversations below, and its spans hold each assistant turn's content and end of turn, and nothing of the prompt. Trainers that read the markers (transformers' \`return_assistant_tokens_mask\`, TRL's \`assistant_only_loss\`) train on exactly the spans.`
      : `Not offered: ${fix.refused}.`,
    '',
  );
  if (fix.edits.length) lines.push('## What changed', '', ...fix.edits.map((e) => `- ${e}`), '');
  if (fix.proof) {
    lines.push('## Proof', '', '| Conversation | Renders | Marked spans | Problems |', '|---|---|---|---|');
    for (const r of fix.proof.results) {
      const renders = r.refused
        ? `both refuse (${r.refused})`
        : r.identical
          ? 'identical'
          : `differ at character ${r.difference?.at}: ${show(r.difference?.original ?? '')} vs ${show(r.difference?.marked ?? '')}`;
      const cell = (s: string) => s.replace(/\|/g, '\\|').replace(/\n/g, '\\n');
      lines.push(
        `| ${r.case} | ${cell(renders)} | ${cell(r.spans.map(show).join(', ') || '(none)')} | ${cell(r.problems.join('; ') || 'none')} |`,
      );
    }
    lines.push('');
  }
  return lines.join('\n');
}
