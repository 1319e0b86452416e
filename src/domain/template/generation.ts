/**
 * `{% generation %}` markers: what transformers' `return_assistant_tokens_mask` (and TRL's `assistant_only_loss`)
 * read to know which rendered characters the assistant produced. Most chat templates ship without them, so
 * assistant-only training either fails or, with a hand-edited template, silently renders different text than the
 * model was trained on. Here a template gets the markers added by a small, local rewrite of its own source, and the
 * rewrite is proved before anyone uses it: over a fixed set of conversations (one and several turns, with and
 * without a system prompt, with and without the generation prompt) the marked template must render byte for byte
 * what the original renders, every assistant turn's content must be inside a marked span together with an end of
 * turn, and no span may hold the prompt (a user or system message, or the assistant header the generation prompt
 * adds). A rewrite that fails any of these is refused, and the proof says which render failed.
 *
 * The rewrite, per output tag of the message loop that prints a message's content:
 *   {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
 * becomes the header outside, then content and end-of-turn inside a span that only assistant messages get:
 *   {{- '<|im_start|>' + message.role + '\n' }}{% if message['role'] == 'assistant' %}{% generation %}{{ message.content +
 *   '<|im_end|>' }}{% endgeneration %}{% else %}{{ message.content + '<|im_end|>' }}{% endif %}{{ '\n' }}
 * When the end of turn is printed by a later tag (Gemma, Qwen3), that tag's end-of-turn text gets a span of its
 * own. When the content reaches the output through a variable that also holds the header (Llama 3:
 * `{% set content = header + message['content'] | trim + '<|eot_id|>' %}{{ content }}`), the span is the
 * variable's tail, cut by the length of the part from the content on.
 */
import { ChatTemplate, type ChatMessage, type RenderOptions, TemplateRaisedError } from './render';

/** What a generation tag prints in a sentinel template (private-use characters no conversation here holds). */
export const GENERATION_OPEN = '\ue000';
export const GENERATION_CLOSE = '\ue001';
const OPEN = GENERATION_OPEN;
const CLOSE = GENERATION_CLOSE;

interface Tag {
  kind: 'output' | 'block' | 'comment';
  start: number;
  end: number;
  /** The tag's expression or statement, without delimiters and whitespace-control marks. */
  inner: string;
  lctl: string;
  rctl: string;
  /** For a block tag: its keyword (for, if, elif, else, endif, set, ...). */
  keyword?: string;
}

/** The tags of a template, in source order (string literals inside tags are skipped over). */
function scanTags(text: string): Tag[] {
  const tags: Tag[] = [];
  let i = 0;
  for (;;) {
    const at = text.indexOf('{', i);
    if (at < 0 || at + 1 >= text.length) break;
    const c = text[at + 1];
    if (c !== '{' && c !== '%' && c !== '#') {
      i = at + 1;
      continue;
    }
    if (c === '#') {
      const end = text.indexOf('#}', at + 2);
      if (end < 0) break;
      tags.push({ kind: 'comment', start: at, end: end + 2, inner: '', lctl: '', rctl: '' });
      i = end + 2;
      continue;
    }
    const closer = c === '{' ? '}}' : '%}';
    let j = at + 2;
    let quote = '';
    for (; j < text.length; j++) {
      const ch = text[j];
      if (quote) {
        if (ch === '\\') j++;
        else if (ch === quote) quote = '';
      } else if (ch === "'" || ch === '"') quote = ch;
      else if (text.startsWith(closer, j)) break;
    }
    if (j >= text.length) break;
    let body = text.slice(at + 2, j);
    let lctl = '';
    let rctl = '';
    if (body.startsWith('-') || body.startsWith('+')) [lctl, body] = [body[0], body.slice(1)];
    if (body.endsWith('-') || body.endsWith('+')) [rctl, body] = [body[body.length - 1], body.slice(0, -1)];
    const inner = body.trim();
    const tag: Tag = { kind: c === '{' ? 'output' : 'block', start: at, end: j + 2, inner, lctl, rctl };
    if (tag.kind === 'block') tag.keyword = /^\w+/.exec(inner)?.[0];
    tags.push(tag);
    i = j + 2;
    if (tag.keyword === 'raw') {
      const end = /\{%-?\s*endraw\s*-?%\}/g;
      end.lastIndex = i;
      const m = end.exec(text);
      if (!m) break;
      i = m.index;
    }
  }
  return tags;
}

const OPENERS = new Set(['for', 'if', 'macro', 'call', 'filter', 'generation']);
/** A `{% set x %}...{% endset %}` block (no `=`), as against `{% set x = ... %}`. */
const opens = (t: Tag) =>
  t.kind === 'block' && (OPENERS.has(t.keyword ?? '') || (t.keyword === 'set' && !/=/.test(t.inner)));
const closes = (t: Tag) => t.kind === 'block' && /^end/.test(t.keyword ?? '');

/** For each tag, the index of the block tag that opened its block (-1 at the top), and each block's closer. */
function nesting(tags: Tag[]): { parent: number[]; closer: Map<number, number> } {
  const parent: number[] = [];
  const closer = new Map<number, number>();
  const stack: number[] = [];
  tags.forEach((t, i) => {
    if (closes(t)) {
      const open = stack.pop();
      if (open !== undefined) closer.set(open, i);
    }
    parent.push(stack.length ? stack[stack.length - 1] : -1);
    if (opens(t)) stack.push(i);
  });
  return { parent, closer };
}

/** Splits an expression at its top-level `+` (outside brackets and strings); undefined when it is not a plain sum. */
function operands(expr: string): string[] | undefined {
  const parts: string[] = [];
  let depth = 0;
  let quote = '';
  let cur = '';
  for (let i = 0; i < expr.length; i++) {
    const ch = expr[i];
    if (quote) {
      cur += ch;
      if (ch === '\\') cur += expr[++i] ?? '';
      else if (ch === quote) quote = '';
      continue;
    }
    if (ch === "'" || ch === '"') quote = ch;
    else if ('([{'.includes(ch)) depth++;
    else if (')]}'.includes(ch)) depth--;
    if (ch === '+' && depth === 0) {
      parts.push(cur.trim());
      cur = '';
    } else cur += ch;
  }
  parts.push(cur.trim());
  // a conditional expression or another operator at the top level: not a concatenation to cut
  const topLevel = parts.map((p) => p.replace(/'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|\([^()]*\)|\[[^\]]*\]/g, ''));
  if (parts.some((p) => p === '') || topLevel.some((p) => /\s(if|else|and|or)\s|~|\s-\s|\*/.test(p))) return undefined;
  return parts;
}

/** A string literal's value (undefined when the operand is not one literal). */
function literal(op: string): string | undefined {
  const m = /^'((?:[^'\\]|\\.)*)'$|^"((?:[^"\\]|\\.)*)"$/.exec(op);
  if (!m) return undefined;
  const raw = m[1] ?? m[2];
  return raw.replace(/\\(.)/g, (_, c: string) => ({ n: '\n', t: '\t', r: '\r' })[c as 'n'] ?? c);
}

/** An operand that closes a turn: a non-blank literal (`'<|im_end|>'`, `'<end_of_turn>\n'`) or the eos token. */
const endOfTurn = (op: string) => {
  const v = literal(op);
  return v !== undefined ? v.trim() !== '' : /^eos_token$/.test(op);
};

/** What an operand refers to: the message's content (`message.content`, `message['content'] | trim`), a variable. */
function contentRef(op: string, loopVar: string): 'message' | 'variable' | undefined {
  const v = loopVar.replace(/\W/g, '');
  if (new RegExp(`^\\(?\\s*${v}\\s*(\\.\\s*content\\b|\\[\\s*['"]content['"]\\s*\\])`).test(op)) return 'message';
  if (/^\(?\s*content\b(?!\s*\()/.test(op)) return 'variable';
  return undefined;
}

export interface MarkerEdit {
  /** The marked template. */
  text: string;
  /** What the rewrite did, in words (one line per edit). */
  edits: string[];
}

export class GenerationMarkerError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'GenerationMarkerError';
  }
}

/**
 * Adds `{% generation %}` markers around what an assistant message prints (its content and its end of turn),
 * leaving every other character of the template as it was. Throws GenerationMarkerError when the template has
 * markers already or the rewrite finds nothing it can mark; the result is unproven until proveGenerationMarkers.
 */
export function addGenerationMarkers(text: string): MarkerEdit {
  const tags = scanTags(text);
  if (tags.some((t) => t.keyword === 'generation'))
    throw new GenerationMarkerError('the template has {% generation %} markers already');
  const { parent, closer } = nesting(tags);
  const replacements = new Map<number, string>();
  const edits: string[] = [];
  const cond = (v: string) => `${v}['role'] == 'assistant'`;
  const line = (offset: number) => text.slice(0, offset).split('\n').length;

  tags.forEach((t, i) => {
    if (t.kind !== 'block' || t.keyword !== 'for') return;
    const m = /^for\s+(\w+)\s+in\s+(.+)$/.exec(t.inner);
    if (!m || !/messages/.test(m[2])) return;
    const loopVar = m[1];
    const end = closer.get(i) ?? tags.length;
    const inLoop = (k: number) => k > i && k < end;
    for (let k = i + 1; k < end; k++) {
      const out = tags[k];
      if (out.kind !== 'output' || replacements.has(k)) continue;
      const ops = operands(out.inner);
      if (!ops) continue;
      const at = ops.findIndex((op) => contentRef(op, loopVar));
      if (at < 0 || otherRoleBranch(tags, parent, k, loopVar)) continue;
      // the content through a variable that also holds a header: {% set content = header + message.content + eot %}
      if (contentRef(ops[at], loopVar) === 'variable' && ops.length === 1 && /^\w+$/.test(ops[0])) {
        const tail = headedVariable(tags, i + 1, k, ops[0], loopVar);
        if (tail) {
          const v = ops[0];
          const cut = `(${v} | length) - ((${tail}) | length)`;
          replacements.set(
            k,
            `{%${out.lctl} if ${cond(loopVar)} %}{{ ${v}[:${cut}] }}{% generation %}{{ ${v}[${cut}:] }}{% endgeneration %}{% else %}{{ ${v} }}{% endif ${out.rctl}%}${keepNewline(text, out)}`,
          );
          edits.push(`line ${line(out.start)}: {{ ${v} }} marked from the message content on (${oneLine(tail)})`);
          continue;
        }
      }
      let last = at;
      while (last + 1 < ops.length && endOfTurn(ops[last + 1])) last++;
      replacements.set(k, wrap(text, out, ops, at, last, cond(loopVar)));
      edits.push(`line ${line(out.start)}: ${oneLine(ops.slice(at, last + 1).join(' + '))}`);
      if (last > at) continue;
      // the end of turn comes from a later tag: the next one that always runs after this one, in the same turn
      const u = nextOutput(tags, parent, closer, k, inLoop);
      if (u === undefined || replacements.has(u)) continue;
      const uOps = operands(tags[u].inner);
      if (!uOps || !endOfTurn(uOps[0])) continue;
      let uLast = 0;
      while (uLast + 1 < uOps.length && endOfTurn(uOps[uLast + 1])) uLast++;
      replacements.set(u, wrap(text, tags[u], uOps, 0, uLast, cond(loopVar)));
      edits.push(`line ${line(tags[u].start)}: ${oneLine(uOps.slice(0, uLast + 1).join(' + '))} (the end of turn)`);
    }
  });
  if (!replacements.size)
    throw new GenerationMarkerError(
      "no tag of the message loop prints a message's content as a plain concatenation: add the markers by hand",
    );
  let marked = text;
  for (const k of [...replacements.keys()].sort((a, b) => b - a)) {
    const t = tags[k];
    marked = marked.slice(0, t.start) + replacements.get(k)! + marked.slice(t.end);
  }
  return { text: marked, edits };
}

/**
 * Whether tag `k` sits in a branch only another role takes (`{% elif message.role == "tool" %}`): nothing there
 * is the assistant's to mark.
 */
function otherRoleBranch(tags: Tag[], parent: number[], k: number, loopVar: string): boolean {
  const role = new RegExp(
    `^(?:el)?if\\s+\\(?\\s*${loopVar}\\s*(?:\\.\\s*role|\\[\\s*['"]role['"]\\s*\\])\\s*==\\s*['"](\\w+)['"]\\s*\\)?$`,
  );
  for (let a = parent[k]; a >= 0; a = parent[a]) {
    if (tags[a].keyword !== 'if') continue;
    // the branch of block `a` that holds k: the last if/elif/else of that block before k
    let branch = a;
    for (let i = a + 1; i < k; i++) if (parent[i] === a && /^(elif|else)$/.test(tags[i].keyword ?? '')) branch = i;
    const m = role.exec(tags[branch].inner);
    if (m && m[1] !== 'assistant') return true;
  }
  return false;
}

/** Template source shown on one line (a literal newline in a string shown as \\n). */
const oneLine = (s: string) => s.replace(/\n/g, '\\n');

/**
 * An output tag whose own right side did not strip the newline after it: the `{% endif %}` that now ends it would
 * (trim_blocks), so one more newline is written for it to take.
 */
function keepNewline(text: string, t: Tag): string {
  return t.rctl === '' && text[t.end] === '\n' ? '\n' : '';
}

/**
 * The tag `t` rewritten: operands [from, to] inside a span that `cond` messages get, the rest around it as before,
 * whitespace control kept on the outermost tags.
 */
function wrap(text: string, t: Tag, ops: string[], from: number, to: number, cond: string): string {
  const head = ops.slice(0, from).join(' + ');
  const body = ops.slice(from, to + 1).join(' + ');
  const tail = ops.slice(to + 1).join(' + ');
  const lineStart = text.lastIndexOf('\n', t.start - 1) + 1;
  // a block tag alone at the start of its line takes the line's indentation with it (lstrip_blocks); the output
  // tag it replaces did not, so an empty output goes first
  const guard = !head && !t.lctl && /^[ \t]*$/.test(text.slice(lineStart, t.start)) ? "{{ '' }}" : '';
  return [
    guard,
    head ? `{{${t.lctl} ${head} }}` : '',
    `{%${head ? '' : t.lctl} if ${cond} %}{% generation %}{{ ${body} }}{% endgeneration %}{% else %}{{ ${body} }}{% endif ${tail ? '' : t.rctl}%}`,
    tail ? `{{ ${tail} ${t.rctl}}}` : keepNewline(text, t),
  ].join('');
}

/**
 * The suffix, from the message content on, of the expression a loop variable was set to before tag `k` (Llama 3's
 * `{% set content = header + message['content'] | trim + '<|eot_id|>' %}`), when that expression has a header.
 */
function headedVariable(tags: Tag[], from: number, k: number, v: string, loopVar: string): string | undefined {
  for (let s = from; s < k; s++) {
    const m = new RegExp(`^set\\s+${v}\\s*=\\s*(.+)$`, 's').exec(tags[s].kind === 'block' ? tags[s].inner : '');
    if (!m) continue;
    const ops = operands(m[1]);
    const at = ops?.findIndex((op) => contentRef(op, loopVar) === 'message') ?? -1;
    if (ops && at > 0) return ops.slice(at).join(' + ');
  }
  return undefined;
}

/**
 * The next output tag after tag `k` that runs whenever `k` did: later branches of the blocks `k` sits in are
 * passed over, and so are blocks that start after it (they may not run); undefined when the loop body ends first.
 */
function nextOutput(
  tags: Tag[],
  parent: number[],
  closer: Map<number, number>,
  k: number,
  inLoop: (i: number) => boolean,
): number | undefined {
  const ancestors = new Set<number>();
  for (let p = parent[k]; p >= 0; p = parent[p]) ancestors.add(p);
  for (let i = k + 1; inLoop(i); i++) {
    const t = tags[i];
    // elif/else of a block k is in: the rest of that block does not run after k
    if (t.kind === 'block' && (t.keyword === 'elif' || t.keyword === 'else') && ancestors.has(parent[i])) {
      i = (closer.get(parent[i]) ?? i) - 1;
      continue;
    }
    if (opens(t) && !ancestors.has(i)) {
      i = closer.get(i) ?? i;
      continue;
    }
    if (t.kind === 'output') return i;
  }
  return undefined;
}

/** The conversations a marked template is proved on. */
export interface ProofCase {
  name: string;
  messages: ChatMessage[];
  addGenerationPrompt: boolean;
}

const Q1 = 'What is the capital of France?';
const A1 = 'The capital of France is Paris.';
const Q2 = 'And of Italy?';
const A2 = 'Rome is the capital of Italy.';
const SYS = 'You are a careful assistant.';

export const PROOF_CASES: readonly ProofCase[] = [
  { name: 'one user turn, generation prompt', messages: [{ role: 'user', content: Q1 }], addGenerationPrompt: true },
  {
    name: 'one user turn, no generation prompt',
    messages: [{ role: 'user', content: Q1 }],
    addGenerationPrompt: false,
  },
  {
    name: 'one exchange',
    messages: [
      { role: 'user', content: Q1 },
      { role: 'assistant', content: A1 },
    ],
    addGenerationPrompt: false,
  },
  {
    name: 'system and one exchange',
    messages: [
      { role: 'system', content: SYS },
      { role: 'user', content: Q1 },
      { role: 'assistant', content: A1 },
    ],
    addGenerationPrompt: false,
  },
  {
    name: 'two exchanges',
    messages: [
      { role: 'user', content: Q1 },
      { role: 'assistant', content: A1 },
      { role: 'user', content: Q2 },
      { role: 'assistant', content: A2 },
    ],
    addGenerationPrompt: false,
  },
  {
    name: 'system and two exchanges',
    messages: [
      { role: 'system', content: SYS },
      { role: 'user', content: Q1 },
      { role: 'assistant', content: A1 },
      { role: 'user', content: Q2 },
      { role: 'assistant', content: A2 },
    ],
    addGenerationPrompt: false,
  },
  {
    name: 'system, one exchange, next question, generation prompt',
    messages: [
      { role: 'system', content: SYS },
      { role: 'user', content: Q1 },
      { role: 'assistant', content: A1 },
      { role: 'user', content: Q2 },
    ],
    addGenerationPrompt: true,
  },
  {
    name: 'one exchange, next question, generation prompt',
    messages: [
      { role: 'user', content: Q1 },
      { role: 'assistant', content: A1 },
      { role: 'user', content: Q2 },
    ],
    addGenerationPrompt: true,
  },
];

export interface ProofResult {
  case: string;
  /** The conversation rendered (so that another renderer can check the same cases). */
  messages: ChatMessage[];
  addGenerationPrompt: boolean;
  /** Both renders refused the conversation with the same message (a template that takes no system prompt). */
  refused?: string;
  identical: boolean;
  /** The first character where the renders differ, with a little of each around it. */
  difference?: { at: number; original: string; marked: string };
  /** The marked spans' text, in order. */
  spans: string[];
  /** What is wrong with the spans (empty when every assistant turn is marked, and nothing of the prompt). */
  problems: string[];
}

export interface GenerationProof {
  ok: boolean;
  results: ProofResult[];
}

/** Whether a template has `{% generation %}` tags. */
export const hasGenerationTags = (text: string) => /\{%-?\s*generation\s*-?%\}/.test(text);

/**
 * The template with each `{% generation %}`/`{% endgeneration %}` tag turned into a sentinel character it prints
 * (GENERATION_OPEN, GENERATION_CLOSE), whitespace control kept: `{%- generation %}` strips before it as the tag did,
 * and trim_blocks/lstrip_blocks act on the block tags around the sentinel as on the tag. Rendered, the sentinels
 * stand where transformers' generation extension records a span's start and end.
 */
export function sentinelTemplate(text: string): string {
  return text.replace(
    /\{%(-?)\s*(end)?generation\s*(-?)%\}/g,
    (_, l: string, end: string | undefined, r: string) =>
      `{%${l} if true %}{{ '${end ? CLOSE : OPEN}' }}{% endif ${r}%}`,
  );
}

/** A render of a sentinel template split into its text and its spans ([start, end) in that text). */
export function splitSpans(rendered: string): { text: string; spans: [number, number][]; problems: string[] } {
  const spans: [number, number][] = [];
  const problems: string[] = [];
  let text = '';
  let open = -1;
  for (const ch of rendered) {
    if (ch === OPEN) {
      if (open >= 0) problems.push('a span opens inside another');
      open = text.length;
    } else if (ch === CLOSE) {
      if (open < 0) problems.push('a span closes that never opened');
      else spans.push([open, text.length]);
      open = -1;
    } else text += ch;
  }
  if (open >= 0) problems.push('a span never closes');
  return { text, spans, problems };
}

type Rendered = { text: string } | { refused: string };
function render(t: ChatTemplate, messages: ChatMessage[], options: RenderOptions): Rendered {
  try {
    return { text: t.render(messages, options) };
  } catch (e) {
    if (e instanceof TemplateRaisedError) return { refused: e.message };
    throw e;
  }
}

/**
 * Proves `marked` against `original`: on every proof conversation, the same text (rendered as transformers
 * renders a template with generation tags: the tags print nothing), and spans that hold each assistant turn's
 * content with its end of turn, and no prompt.
 */
export function proveGenerationMarkers(
  original: string,
  marked: string,
  options: Omit<RenderOptions, 'addGenerationPrompt'> = {},
): GenerationProof {
  const before = new ChatTemplate(original);
  const after = new ChatTemplate(marked);
  const sentinel = new ChatTemplate(sentinelTemplate(marked));
  const results: ProofResult[] = [];
  for (const c of PROOF_CASES) {
    const opts = { ...options, addGenerationPrompt: c.addGenerationPrompt };
    const a = render(before, c.messages, opts);
    const b = render(after, c.messages, opts);
    const s = render(sentinel, c.messages, opts);
    if ('refused' in a || 'refused' in b || 'refused' in s) {
      const same = 'refused' in a && 'refused' in b && a.refused === b.refused;
      results.push({
        case: c.name,
        messages: c.messages,
        addGenerationPrompt: c.addGenerationPrompt,
        ...(same ? { refused: a.refused } : {}),
        identical: same,
        spans: [],
        problems: same ? [] : ['one template refused the conversation and the other did not'],
      });
      continue;
    }
    const { text: stripped, spans, problems } = splitSpans(s.text);
    const identical = a.text === b.text && a.text === stripped;
    const result: ProofResult = {
      case: c.name,
      messages: c.messages,
      addGenerationPrompt: c.addGenerationPrompt,
      identical,
      spans: spans.map(([x, y]) => stripped.slice(x, y)),
      problems,
    };
    if (!identical) {
      const other = a.text === b.text ? stripped : b.text;
      let at = 0;
      while (at < a.text.length && a.text[at] === other[at]) at++;
      result.difference = {
        at,
        original: a.text.slice(Math.max(0, at - 20), at + 20),
        marked: other.slice(Math.max(0, at - 20), at + 20),
      };
    }
    checkSpans(c, stripped, spans, (m) => render(before, m, { ...options, addGenerationPrompt: true }), result);
    results.push(result);
  }
  return { ok: results.every((r) => r.identical && !r.problems.length), results };
}

function checkSpans(
  c: ProofCase,
  text: string,
  spans: [number, number][],
  promptOf: (messages: ChatMessage[]) => Rendered,
  result: ProofResult,
): void {
  const inSpan = (from: number, to: number) => spans.find(([x, y]) => x <= from && to <= y);
  let searchFrom = 0;
  c.messages.forEach((m, i) => {
    const content = String(m.content);
    const at = text.indexOf(content, searchFrom);
    if (at < 0) return; // a template that drops a message (no system prompt): nothing to mark
    searchFrom = at + content.length;
    const span = inSpan(at, at + content.length);
    if (m.role !== 'assistant') {
      if (spans.some(([x, y]) => x < at + content.length && at < y))
        result.problems.push(`the ${m.role} message is inside a span: it would be trained on`);
      return;
    }
    if (!span) {
      result.problems.push(`assistant turn ${i + 1} is not inside a span: it would not be trained on`);
      return;
    }
    // the end of turn: something after the content, inside this span or in one right after it
    const after = spans.filter(([x, y]) => x >= at + content.length && y > x);
    const endMarked =
      span[1] > at + content.length ||
      after.some(([x]) => text.slice(at + content.length, x).trim() === '' || x === span[1]);
    if (!endMarked)
      result.problems.push(`assistant turn ${i + 1}'s end of turn is outside the spans: it would never learn to stop`);
    // the header the generation prompt writes is the prompt, not the answer
    const prompt = promptOf(c.messages.slice(0, i));
    if ('text' in prompt && text.startsWith(prompt.text) && span[0] < prompt.text.length)
      result.problems.push(`assistant turn ${i + 1}'s span starts inside its header (the generation prompt)`);
  });
  if (!c.messages.some((m) => m.role === 'assistant') && spans.length)
    result.problems.push('a span in a conversation with no assistant turn');
}
