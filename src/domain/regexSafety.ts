/**
 * Regular expressions that come from files (a tokenizer.json's pre-tokenizer and normalizer, an adapter's module
 * patterns) are workspace input. Two defences:
 * - module patterns are matched with re2js, a linear-time engine (RE2's semantics: no backtracking), so that no
 *   pattern can take exponential time; a pattern RE2 cannot run (lookaround, backreferences) is refused by name;
 * - tokenizer patterns run inside @huggingface/tokenizers on JavaScript's backtracking engine, so a pattern whose
 *   repetition nests unbounded repetition (`(a+)+`, `(\s*\w+)*`: the shape of catastrophic backtracking) is
 *   refused before the tokenizer is built. Real pre-tokenizers (GPT-2, Llama 3, Qwen, Gemma) have none.
 */
import { RE2JS } from 're2js';

/** Compiled module patterns, by source (an adapter matches the same few patterns against hundreds of modules). */
const compiled = new Map<string, RE2JS>();

/**
 * Whether `pattern` matches the whole of `text`, in linear time. Throws RegexRefusedError when the pattern uses
 * what a linear-time engine cannot run.
 */
export function fullMatchLinear(pattern: string, text: string): boolean {
  let re = compiled.get(pattern);
  if (!re) {
    try {
      re = RE2JS.compile(pattern);
    } catch (e) {
      throw new RegexRefusedError(pattern, `it cannot be run in linear time (${(e as Error).message})`);
    }
    if (compiled.size > 1000) compiled.clear();
    compiled.set(pattern, re);
  }
  return re.matcher(text).matches();
}

export class RegexRefusedError extends Error {
  constructor(
    readonly pattern: string,
    reason: string,
  ) {
    super(
      `the pattern ${JSON.stringify(pattern.length > 80 ? `${pattern.slice(0, 80)}...` : pattern)} is refused: ${reason}`,
    );
    this.name = 'RegexRefusedError';
  }
}

/**
 * The part of a JavaScript pattern where unbounded repetition is nested in unbounded repetition (`(a+)+`), or
 * undefined when there is none. Character classes, escapes (`\p{L}`), group prefixes (`(?:`, `(?i:`, `(?<n>`,
 * lookarounds) and bounded counts (`{1,3}`) are read as such.
 */
export function nestedRepetition(pattern: string): string | undefined {
  const groups: { start: number; unbounded: boolean }[] = [{ start: 0, unbounded: false }];
  const quantifierAt = (i: number): { unbounded: boolean; length: number } | undefined => {
    const c = pattern[i];
    if (c === '*' || c === '+') return { unbounded: true, length: pattern[i + 1] === '?' ? 2 : 1 };
    if (c === '?') return { unbounded: false, length: 1 };
    if (c === '{') {
      const m = /^\{(\d*)(,?)(\d*)\}\??/.exec(pattern.slice(i));
      if (!m) return undefined;
      const max = m[2] ? (m[3] ? Number(m[3]) : Number.POSITIVE_INFINITY) : Number(m[1]);
      return { unbounded: max > 64, length: m[0].length };
    }
    return undefined;
  };
  let i = 0;
  while (i < pattern.length) {
    const c = pattern[i];
    const top = groups[groups.length - 1];
    if (c === '\\') {
      // an escape; \p{...} and \u{...} as one atom
      const close = /[pPu]/.test(pattern[i + 1] ?? '') && pattern[i + 2] === '{' ? pattern.indexOf('}', i) : -1;
      i = close >= 0 ? close + 1 : i + 2;
    } else if (c === '[') {
      // a character class: up to its closing bracket (a leading ] or ^] is a member), escapes inside
      let j = i + 1;
      if (pattern[j] === '^') j++;
      if (pattern[j] === ']') j++;
      while (j < pattern.length && pattern[j] !== ']') j += pattern[j] === '\\' ? 2 : 1;
      i = j + 1;
    } else if (c === '(') {
      groups.push({ start: i, unbounded: false });
      i++;
      // (?:  (?i:  (?<name>  (?=  (?!  (?<=  (?<!  are not quantifiers
      if (pattern[i] === '?') {
        const m = /^\?(?:<[=!]|<[A-Za-z_][\w]*>|[=!:]|[a-zA-Z-]+:)/.exec(pattern.slice(i));
        i += m ? m[0].length : 1;
      }
      continue;
    } else if (c === ')') {
      const group = groups.length > 1 ? groups.pop()! : top;
      const q = quantifierAt(i + 1);
      if (q?.unbounded && group.unbounded) return pattern.slice(group.start, i + 1 + q.length);
      const parent = groups[groups.length - 1];
      parent.unbounded ||= group.unbounded || !!q?.unbounded;
      i += 1 + (q?.length ?? 0);
      continue;
    } else {
      i++;
    }
    // a quantifier after an atom
    const q = quantifierAt(i);
    if (q) {
      if (q.unbounded) groups[groups.length - 1].unbounded = true;
      i += q.length;
    }
  }
  return undefined;
}
