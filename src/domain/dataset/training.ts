/**
 * The training view of a row: the sequence a trainer builds from it (the whole conversation rendered by the chat
 * template, tokenized without added special tokens), each token marked with its segment (prefix, query, postfix,
 * response, and what the template writes after the response) and whether it carries loss under the trainer's
 * masking, so that a user sees exactly what the finetune learns from:
 *
 * - `assistant-only` (TRL's assistant_only_loss, transformers' return_assistant_tokens_mask): the tokens inside the
 *   template's `{% generation %}` blocks; a template without them gives an all-zero mask (CT005);
 * - `completion-only` (TRL's completion-only collators): every token after the response template, which the trainer
 *   finds by searching the row's token ids for the ids of the assistant header tokenized alone; when tokenization in
 *   context differs, it is not found and the row trains on nothing (a problem, located);
 * - `all`: every token.
 *
 * And the length check: a row longer than the model's context (tokenizer_config.json's model_max_length, or
 * config.json's max_position_embeddings) is cut by the trainer, response first.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { type ChatMessage, ChatTemplate, type RenderOptions } from '../template/render';
import { hasGenerationTags, sentinelTemplate, splitSpans } from '../template/generation';
import { frameOf, rowRequest, type SegmentName, type Segmentation, segmentPrompt } from '../template/segments';
import type { LoadedTokenizer } from '../tokenizer';
import type { RowFormat } from './formats';
import { FILE_LIMITS, readTextChecked } from '../files';

export type LossMode = 'assistant-only' | 'completion-only' | 'completion' | 'all';
export const LOSS_MODES: readonly LossMode[] = ['assistant-only', 'completion-only', 'completion', 'all'];
/** What the user sets: a mode, or `auto`, the trainer's default for the row's format. */
export type LossSetting = LossMode | 'auto';
export const LOSS_SETTINGS: readonly LossSetting[] = ['auto', ...LOSS_MODES];

/**
 * TRL SFTTrainer's defaults (SFTConfig: assistant_only_loss=False, completion_only_loss=None): prompt/completion
 * data trains on the completion's tokens, every other format (messages, ShareGPT, Alpaca as LLaMA-Factory maps
 * it, text) on every token.
 */
export function trainerDefaultLoss(format: RowFormat | undefined): LossMode {
  return format === 'prompt-completion' || format === 'prompt-completion-messages' ? 'completion' : 'all';
}

/** The loss a whole-file audit is told (DS012 is a warning only under completion-only): `auto` is none in
 * particular, since the trainer's defaults never search for a response template. */
export function auditLoss(setting: LossSetting | undefined): LossMode | undefined {
  return setting === 'auto' ? undefined : setting;
}

/** The mode a row is viewed with, and in words why (the user's choice, or the trainer's default for its format). */
export function resolveLoss(
  setting: LossSetting | undefined,
  format: RowFormat | undefined,
): { mode: LossMode; why: string } {
  if (setting && setting !== 'auto') return { mode: setting, why: 'as set' };
  const mode = trainerDefaultLoss(format);
  return { mode, why: `TRL SFTTrainer's default for ${format ?? 'these'} rows` };
}

export interface TrainingToken {
  id: number;
  text: string;
  segment: SegmentName | 'tail';
  loss: boolean;
}

export interface TrainingView {
  mode: LossMode;
  tokens: TrainingToken[];
  /** Tokens that carry loss. */
  lossTokens: number;
  /** The model's context length when known, and how many tokens a trainer cuts from this row. */
  maxLength?: number;
  truncated: number;
  /** What a user should know: the mask is empty, the response template is not found, the row is cut. */
  problems: string[];
}

const sane = (x: unknown) => (typeof x === 'number' && Number.isInteger(x) && x > 0 && x < 1e8 ? x : undefined);

/** config.json's max_position_embeddings by file, kept while the file's modification time stays (row hovers ask often). */
const positions = new Map<string, { mtimeMs: number; value: number | undefined }>();

/** The context length a template's folder states: model_max_length (when sane), else max_position_embeddings. */
export function contextLength(folder: string | undefined, config: Record<string, unknown>): number | undefined {
  const fromTokenizer = sane(config.model_max_length);
  if (fromTokenizer) return fromTokenizer;
  if (!folder) return undefined;
  const file = path.join(folder, 'config.json');
  let mtimeMs: number;
  try {
    mtimeMs = fs.statSync(file).mtimeMs;
  } catch {
    return undefined;
  }
  const hit = positions.get(file);
  if (hit && hit.mtimeMs === mtimeMs) return hit.value;
  let value: number | undefined;
  try {
    value = sane(
      (JSON.parse(readTextChecked(file, FILE_LIMITS.config)) as Record<string, unknown>).max_position_embeddings,
    );
  } catch {
    value = undefined;
  }
  positions.set(file, { mtimeMs, value });
  return value;
}

export function trainingView(
  template: ChatTemplate,
  tokenizer: LoadedTokenizer,
  messages: readonly ChatMessage[],
  render: RenderOptions,
  mode: LossMode,
  maxLength?: number,
  /** The row's segmentation when the caller already made it (the same request: rowRequest and `render`). */
  segmented?: Segmentation,
): TrainingView {
  const req = rowRequest(messages);
  if (!req) throw new Error('the row has no user turn');
  if (req.response === undefined)
    throw new Error('the row has no assistant turn after its last user turn: nothing to train on');
  const seg = segmented ?? segmentPrompt(template, { ...render, ...req }, tokenizer);
  const frame = frameOf(seg);
  const spans = Object.entries(frame.spans) as [SegmentName | 'tail', [number, number]][];
  const segmentAt = (i: number) => spans.find(([, [a, b]]) => i >= a && i < b)![0];
  const tokens = frame.tokens.map((t, i) => ({ ...t, segment: segmentAt(i), loss: false }));
  const problems: string[] = [];
  if (mode === 'all') for (const t of tokens) t.loss = true;
  // the completion of a prompt/completion row: TRL masks the prompt by construction (no search), end of turn included
  else if (mode === 'completion') for (const t of tokens) t.loss = t.segment === 'response' || t.segment === 'tail';
  else if (mode === 'assistant-only') {
    const inside = generationRanges(template, messages, render, seg.rendered);
    if (inside === undefined)
      problems.push(
        'the template has no {% generation %} blocks: assistant-only loss gets an all-zero mask, so this row trains on nothing (CT005)',
      );
    else for (const t of tokens) t.loss = inside.some(([a, b]) => t.start < b && t.end > a);
  } else {
    // TRL searches the row's ids for the response template's ids (tokenized alone); the last match wins
    const marker = tokenizer.ids(seg.postfix.text);
    const at = marker.length
      ? lastIndexOfSequence(
          tokens.map((t) => t.id),
          marker,
        )
      : -1;
    if (at < 0)
      problems.push(
        `the response template ${JSON.stringify(seg.postfix.text)} (ids ${JSON.stringify(marker)} tokenized alone) is not among this row's token ids, which tokenize it in context: a completion-only collator finds no response and trains on nothing`,
      );
    else for (let i = at + marker.length; i < tokens.length; i++) tokens[i].loss = true;
  }
  const truncated = maxLength && tokens.length > maxLength ? tokens.length - maxLength : 0;
  if (truncated)
    problems.push(
      `${tokens.length} tokens, over the model's context of ${maxLength}: a trainer cuts the last ${truncated}${tokens.slice(maxLength).some((t) => t.segment === 'response') ? ', response tokens among them' : ''}`,
    );
  return {
    mode,
    tokens: tokens.map(({ id, text, segment, loss }) => ({ id, text, segment, loss })),
    lossTokens: tokens.filter((t) => t.loss).length,
    maxLength,
    truncated,
    problems,
  };
}

/**
 * Character ranges of `rendered` inside the template's {% generation %} blocks, or undefined when it has none:
 * the same conversation rendered with the blocks turned into markers, the markers then taken out again.
 */
function generationRanges(
  template: ChatTemplate,
  messages: readonly ChatMessage[],
  render: RenderOptions,
  rendered: string,
): [number, number][] | undefined {
  if (!hasGenerationTags(template.text)) return undefined;
  const marked = new ChatTemplate(sentinelTemplate(template.text));
  const { text, spans } = splitSpans(marked.render(messages, { ...render, addGenerationPrompt: false }));
  // the sentinels must not change anything else (a render that differs would misplace the spans)
  return text === rendered ? spans : [];
}

function lastIndexOfSequence(haystack: number[], needle: number[]): number {
  for (let i = haystack.length - needle.length; i >= 0; i--) {
    let ok = true;
    for (let j = 0; j < needle.length && ok; j++) ok = haystack[i + j] === needle[j];
    if (ok) return i;
  }
  return -1;
}
