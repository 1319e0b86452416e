/**
 * From a query to the ids and segment spans the model host works on: render with the real template, segment by
 * marker rendering, tokenize with the real tokenizer.
 */
import type { PromptIds } from '../contracts/modelHost';
import type { ChatTemplate } from './template/render';
import { frameOf, segmentPrompt, type SegmentRequest } from './template/segments';
import type { LoadedTokenizer } from './tokenizer';

export function promptIds(
  template: ChatTemplate,
  tokenizer: LoadedTokenizer,
  req: SegmentRequest,
): PromptIds & { text: string } {
  const seg = segmentPrompt(template, { ...req, response: undefined }, tokenizer);
  const f = frameOf(seg);
  return { ids: f.ids, prefix: f.spans.prefix!, query: f.spans.query!, postfix: f.spans.postfix!, text: seg.rendered };
}

/** A generated answer as a reader (or a judge) sees it: decoded, without the end-of-turn tokens that stopped it. */
export function answerText(tokenizer: LoadedTokenizer, ids: number[], eosIds: Iterable<number>): string {
  const eos = new Set(eosIds);
  let end = ids.length;
  while (end > 0 && eos.has(ids[end - 1])) end--;
  return tokenizer.decode(ids.slice(0, end));
}

/**
 * Whether a prompt's query is long enough for the query control: the paper's control patches as many query tokens
 * as the prefix has, so a query shorter than the prefix has none (such probes are left out of it and counted).
 */
export function queryControlFits(p: PromptIds): boolean {
  return p.query[1] - p.query[0] >= p.prefix[1];
}
