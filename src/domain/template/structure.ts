/**
 * Why a template does not parse, in words and at the place it goes wrong: the engine's parser reports token-type
 * names ("CloseCurlyBracket !== CloseExpression") and no position, or crashes on an unclosed block. This checks
 * the template's structure as Jinja2 reads it: delimiters (`{{ }}`, `{% %}`, `{# #}`, strings inside them) and
 * blocks (for, if, macro, call, filter, block set, generation, raw) opened and closed in order.
 */

export interface StructureProblem {
  /** Offsets in the template text of what is wrong (the opener that is never closed, the stray closer). */
  start: number;
  end: number;
  message: string;
}

const BLOCKS: Record<string, string> = {
  for: 'endfor',
  if: 'endif',
  macro: 'endmacro',
  call: 'endcall',
  filter: 'endfilter',
  set: 'endset',
  generation: 'endgeneration',
  raw: 'endraw',
  block: 'endblock',
};
const CLOSERS = new Map(Object.entries(BLOCKS).map(([open, close]) => [close, open]));
const CLOSE: Record<string, string> = { '{{': '}}', '{%': '%}', '{#': '#}' };

/** The first structural problem of `text`, or undefined when its delimiters and blocks are balanced. */
export function structureProblem(text: string): StructureProblem | undefined {
  const stack: { tag: string; start: number; end: number }[] = [];
  let i = 0;
  while (i < text.length) {
    const open = text.indexOf('{', i);
    if (open < 0) break;
    const kind = text.slice(open, open + 2);
    if (!(kind in CLOSE)) {
      i = open + 1;
      continue;
    }
    const close = CLOSE[kind];
    const end = findClose(text, open + 2, close, kind !== '{#');
    if (end < 0) {
      const nl = text.indexOf('\n', open);
      return {
        start: open,
        end: nl < 0 ? text.length : nl,
        message: `the ${kind} opened here is never closed with ${close}`,
      };
    }
    if (kind !== '{#') {
      const unbalanced = bracketProblem(text, open + 2, end);
      if (unbalanced) return unbalanced;
    }
    if (kind === '{%') {
      const body = text
        .slice(open + 2, end)
        .replace(/^[-+]/, '')
        .replace(/[-+]$/, '')
        .trim();
      const word = /^[A-Za-z_]\w*/.exec(body)?.[0] ?? '';
      const tag = { tag: word, start: open, end: end + 2 };
      if (word === 'raw') {
        // raw: everything up to {% endraw %} is text
        const m = /\{%-?\s*endraw\s*-?%\}/.exec(text.slice(end + 2));
        if (!m) return { ...span(tag), message: 'the {% raw %} opened here is never closed with {% endraw %}' };
        i = end + 2 + m.index + m[0].length;
        continue;
      }
      if (word === 'set' && body.includes('=')) {
        // {% set x = ... %} is a statement; only {% set x %}...{% endset %} is a block
      } else if (word in BLOCKS) stack.push(tag);
      else if (CLOSERS.has(word)) {
        const top = stack.pop();
        const want = CLOSERS.get(word)!;
        if (!top) return { ...span(tag), message: `{% ${word} %} here closes nothing: no {% ${want} %} is open` };
        if (top.tag !== want)
          return {
            ...span(top),
            message: `the {% ${top.tag} %} opened here is closed by {% ${word} %}: {% ${BLOCKS[top.tag]} %} expected first`,
          };
      } else if (word === 'elif' || word === 'else') {
        const top = stack[stack.length - 1];
        if (!top || (top.tag !== 'if' && !(word === 'else' && top.tag === 'for')))
          return { ...span(tag), message: `{% ${word} %} here is outside any {% if %}` };
        if (word === 'elif' && !/^elif\s+\S/.test(body))
          return { ...span(tag), message: '{% elif %} here has no condition' };
      }
      if ((word === 'if' || word === 'elif') && !new RegExp(`^${word}\\s+\\S`).test(body))
        return { ...span(tag), message: `{% ${word} %} here has no condition` };
      if (word === 'for' && !/^for\s+.+\s+in\s+\S/.test(body))
        return { ...span(tag), message: '{% for %} here is not of the form {% for x in items %}' };
    } else if (
      kind === '{{' &&
      !text
        .slice(open + 2, end)
        .replace(/^[-+]/, '')
        .replace(/[-+]$/, '')
        .trim()
    )
      return { start: open, end: end + 2, message: 'an empty {{ }} here' };
    i = end + close.length;
  }
  const open = stack.pop();
  if (open)
    return {
      ...span(open),
      message: `the {% ${open.tag} %} opened here is never closed with {% ${BLOCKS[open.tag]} %}`,
    };
  return undefined;
}

function span(t: { start: number; end: number }): { start: number; end: number } {
  return { start: t.start, end: t.end };
}

/**
 * Where `close` ends the tag opened before `from`: string literals are skipped in expressions and statements
 * (a "}}" inside quotes does not close it); another opener before the closer means this one was never closed.
 */
function findClose(text: string, from: number, close: string, code: boolean): number {
  let quote: string | undefined;
  for (let i = from; i < text.length; i++) {
    const c = text[i];
    if (quote) {
      if (c === '\\') i++;
      else if (c === quote) quote = undefined;
      continue;
    }
    if (code && (c === '"' || c === "'")) quote = c;
    else if (text.startsWith(close, i)) return i;
    else if (code && (text.startsWith('{{', i) || text.startsWith('{%', i))) return -1;
  }
  return -1;
}

const PAIRS: Record<string, string> = { '(': ')', '[': ']', '{': '}' };

/** A bracket inside a tag (outside its strings) that is not closed, or closed by the wrong one. */
function bracketProblem(text: string, from: number, to: number): StructureProblem | undefined {
  const open: { c: string; at: number }[] = [];
  let quote: string | undefined;
  for (let i = from; i < to; i++) {
    const c = text[i];
    if (quote) {
      if (c === '\\') i++;
      else if (c === quote) quote = undefined;
    } else if (c === '"' || c === "'") quote = c;
    else if (c in PAIRS) open.push({ c, at: i });
    else if (c === ')' || c === ']' || c === '}') {
      const top = open.pop();
      if (!top) return { start: i, end: i + 1, message: `the ${c} here closes nothing` };
      if (PAIRS[top.c] !== c)
        return {
          start: top.at,
          end: top.at + 1,
          message: `the ${top.c} here is closed by ${c}: ${PAIRS[top.c]} expected`,
        };
    }
  }
  const left = open.pop();
  return left
    ? { start: left.at, end: left.at + 1, message: `the ${left.c} here is never closed with ${PAIRS[left.c]}` }
    : undefined;
}
