/**
 * Splits a rendered prompt into prefix / query / postfix (/ response) by marker rendering, the reference method:
 * render the real template with a marker as the user's text; everything before it is the prefix, everything
 * after it (up to the response) the postfix. Then render the real query and check the frame is unchanged.
 * Tokens are assigned by their character offsets: prefix tokens end before the query starts and postfix tokens
 * start after it ends, so neither depends on the query (which is what makes one-extraction K/V patching valid).
 */
import { contentText } from '../dataset/formats';
import type { PromptSegment } from '../../contracts/modelHost';
import type { LoadedTokenizer, Token } from '../tokenizer';
import type { ChatMessage, ChatTemplate, RenderOptions } from './render';

export const QUERY_MARKER = '\u27e6PIGGYBACK_QUERY\u27e7';
export const RESPONSE_MARKER = '\u27e6PIGGYBACK_RESPONSE\u27e7';

export type SegmentName = PromptSegment | 'response';

export interface Segment {
  text: string;
  /** Character range in `rendered`. */
  start: number;
  end: number;
  tokens: Token[];
}

export interface Segmentation {
  rendered: string;
  prefix: Segment;
  query: Segment;
  postfix: Segment;
  response?: Segment;
  /** Everything rendered after the response (end-of-turn, EOS), when a response was given. */
  tail?: Segment;
  /** The template wrote the BOS token itself at the start of the text. */
  templateBos: boolean;
  /** Whether tokens were computed (a tokenizer was available). */
  tokenized: boolean;
}

export interface SegmentRequest extends RenderOptions {
  /** System message text; undefined or null renders no system turn (the template's default applies). */
  system?: string | null;
  /** Earlier turns before the final user query (multi-turn rows). */
  history?: ChatMessage[];
  query?: string;
  /** When given, the conversation is rendered as a training example (no generation prompt) with this response. */
  response?: string;
}

export class SegmentationError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SegmentationError';
  }
}

export function conversation(req: SegmentRequest, query: string, response?: string): ChatMessage[] {
  const messages: ChatMessage[] = [];
  if (req.system !== undefined && req.system !== null) messages.push({ role: 'system', content: req.system });
  if (req.history) messages.push(...req.history);
  messages.push({ role: 'user', content: query });
  if (response !== undefined) messages.push({ role: 'assistant', content: response });
  return messages;
}

/**
 * Which turn of a chat row plays which part, decided here once for the audit, hovers, code lenses and the TReFT
 * export: the QUERY is the last user turn (earlier user and assistant turns are context); the RESPONSE is the first
 * assistant turn after it; a leading system (or developer) message is the system turn. The template's prefix, the
 * query-independent text every row shares, ends where the FIRST user turn starts: on a single-turn row the two
 * coincide; on a multi-turn row the turns between are neither prefix nor query. Indices are -1 when absent.
 */
export interface RowTurns {
  /** Index of a leading system or developer message, or -1. */
  system: number;
  firstUser: number;
  query: number;
  response: number;
}

export function rowTurns(messages: readonly ChatMessage[]): RowTurns {
  const roles = messages.map((m) => m.role);
  const query = roles.lastIndexOf('user');
  return {
    system: roles[0] === 'system' || roles[0] === 'developer' ? 0 : -1,
    firstUser: roles.indexOf('user'),
    query,
    response: query < 0 ? -1 : roles.indexOf('assistant', query + 1),
  };
}

/**
 * The segment request for a row: its system text, the turns before the query as history, the query and (when the
 * row has one) the response. Undefined when the row has no user turn.
 */
export function rowRequest(
  messages: readonly ChatMessage[],
): Pick<SegmentRequest, 'system' | 'history' | 'query' | 'response'> | undefined {
  const t = rowTurns(messages);
  if (t.query < 0) return undefined;
  return {
    system: t.system === 0 ? contentText(messages[0].content) : undefined,
    history: messages.slice(t.system + 1, t.query),
    query: contentText(messages[t.query].content) ?? '',
    response: t.response >= 0 ? (contentText(messages[t.response].content) ?? '') : undefined,
  };
}

/** The prefix and postfix text around the user's query, found by marker rendering. */
export function frame(template: ChatTemplate, req: SegmentRequest): { prefix: string; postfix: string; tail?: string } {
  const training = req.response !== undefined;
  const rendered = template.render(conversation(req, QUERY_MARKER, training ? RESPONSE_MARKER : undefined), {
    ...req,
    addGenerationPrompt: training ? false : (req.addGenerationPrompt ?? true),
  });
  const at = rendered.indexOf(QUERY_MARKER);
  if (at < 0)
    throw new SegmentationError(
      'the template does not render the user message (the query marker is missing from its output)',
    );
  if (rendered.indexOf(QUERY_MARKER, at + 1) >= 0)
    throw new SegmentationError('the template renders the user message more than once');
  const prefix = rendered.slice(0, at);
  const after = rendered.slice(at + QUERY_MARKER.length);
  if (!training) return { prefix, postfix: after };
  const r = after.indexOf(RESPONSE_MARKER);
  if (r < 0) throw new SegmentationError('the template does not render the assistant message');
  return { prefix, postfix: after.slice(0, r), tail: after.slice(r + RESPONSE_MARKER.length) };
}

export function segmentPrompt(template: ChatTemplate, req: SegmentRequest, tokenizer?: LoadedTokenizer): Segmentation {
  const query = req.query ?? '';
  const f = frame(template, req);
  const training = req.response !== undefined;
  const rendered = template.render(conversation(req, query, req.response), {
    ...req,
    addGenerationPrompt: training ? false : (req.addGenerationPrompt ?? true),
  });
  const tail = f.tail ?? '';
  if (!rendered.startsWith(f.prefix))
    throw new SegmentationError(
      'the prefix changes with the query text (the template reads the query before the user turn)',
    );
  if (
    !rendered.endsWith(training ? tail : f.postfix) ||
    rendered.length - (training ? tail : f.postfix).length < f.prefix.length
  ) {
    throw new SegmentationError(
      training ? 'the text after the response changes with the response' : 'the postfix changes with the query text',
    );
  }
  const prefixEnd = f.prefix.length;
  let queryEnd: number;
  let responseEnd: number;
  if (!training) {
    queryEnd = rendered.length - f.postfix.length;
    responseEnd = rendered.length;
  } else {
    // rendered = prefix + query' + postfix + response' + tail, where the template may have trimmed query and response
    responseEnd = rendered.length - tail.length;
    const middle = rendered.slice(prefixEnd, responseEnd);
    const asRendered = [query, query.trim()].find((q) => middle.startsWith(q + f.postfix));
    const at = asRendered !== undefined ? asRendered.length : middle.indexOf(f.postfix);
    if (at < 0) throw new SegmentationError('cannot find the assistant header after the query in the rendered text');
    queryEnd = prefixEnd + at;
  }
  const postfixEnd = queryEnd + f.postfix.length;
  const tokens = tokenizer ? tokenizer.encode(rendered, false) : [];
  const buckets: Record<SegmentName | 'tail', Token[]> = { prefix: [], query: [], postfix: [], response: [], tail: [] };
  for (const t of tokens) {
    // a token lies in the segment that holds it whole; one straddling a boundary holds user or response text
    // (a postfix token glued to the response's first word counts with the response, so buckets stay in order)
    if (t.end <= prefixEnd) buckets.prefix.push(t);
    else if (t.start < queryEnd) buckets.query.push(t);
    else if (t.end <= postfixEnd) buckets.postfix.push(t);
    else if (t.start < responseEnd) buckets.response.push(t);
    else buckets.tail.push(t);
  }
  const seg = (name: SegmentName | 'tail', start: number, end: number): Segment => ({
    text: rendered.slice(start, end),
    start,
    end,
    tokens: buckets[name],
  });
  const result: Segmentation = {
    rendered,
    prefix: seg('prefix', 0, prefixEnd),
    query: seg('query', prefixEnd, queryEnd),
    postfix: seg('postfix', queryEnd, postfixEnd),
    templateBos: req.specialTokens?.bos_token ? rendered.startsWith(req.specialTokens.bos_token) : false,
    tokenized: tokenizer !== undefined,
  };
  if (training) {
    result.response = seg('response', postfixEnd, responseEnd);
    result.tail = seg('tail', responseEnd, rendered.length);
  }
  return result;
}

/** A tokenized segmentation as spans by token index: [start, end) of each segment in the row's token ids. */
export interface Frame {
  ids: number[];
  tokens: Token[];
  spans: Partial<Record<SegmentName | 'tail', [number, number]>>;
}

/**
 * The frame of a segmentation by token index: the one place token spans come from (the host's prompts, the training
 * view, hovers). Segments follow each other in order, so the spans tile the token ids.
 */
export function frameOf(seg: Segmentation): Frame {
  const parts: [SegmentName | 'tail', Segment | undefined][] = [
    ['prefix', seg.prefix],
    ['query', seg.query],
    ['postfix', seg.postfix],
    ['response', seg.response],
    ['tail', seg.tail],
  ];
  const tokens: Token[] = [];
  const spans: Frame['spans'] = {};
  for (const [name, s] of parts) {
    if (!s) continue;
    spans[name] = [tokens.length, tokens.length + s.tokens.length];
    tokens.push(...s.tokens);
  }
  return { ids: tokens.map((t) => t.id), tokens, spans };
}

export const SYSTEM_MARKER = '\u27e6PIGGYBACK_SYSTEM\u27e7';

export type SystemFate = 'kept' | 'merged' | 'dropped' | 'rejected';

/**
 * What the template does with a leading system message: keeps it in a block of its own, merges it into the first
 * user turn (the whole no-system prefix, user header included, comes before it), drops it, or raises.
 */
export function systemFate(template: ChatTemplate, options: RenderOptions): { fate: SystemFate; message?: string } {
  let withSystem: { prefix: string };
  let without: { prefix: string };
  try {
    without = frame(template, options);
  } catch (e) {
    return { fate: 'rejected', message: (e as Error).message };
  }
  try {
    withSystem = frame(template, { ...options, system: SYSTEM_MARKER });
  } catch (e) {
    return { fate: 'rejected', message: (e as Error).message };
  }
  const at = withSystem.prefix.indexOf(SYSTEM_MARKER);
  if (at < 0) return { fate: 'dropped' };
  const p0 = without.prefix;
  return { fate: p0.length > 0 && withSystem.prefix.slice(0, at).startsWith(p0) ? 'merged' : 'kept' };
}
