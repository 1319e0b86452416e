/**
 * JSON with source positions, from jsonc-parser (VS Code's own) in strict JSON mode. JSON.parse is used for speed on
 * the hot path; this runs only where a position is needed: to locate a syntax error (V8's messages often carry
 * none), to point a diagnostic at the key or value it is about, and to map a JSON-escaped chat template back to
 * file offsets. Duplicate keys are all kept; lookups take the last, as JSON.parse does.
 */
import { type Node, type ParseError, ParseErrorCode, parseTree } from 'jsonc-parser';

export type JsonNode =
  | { kind: 'object'; start: number; end: number; entries: JsonEntry[] }
  | { kind: 'array'; start: number; end: number; items: JsonNode[] }
  | { kind: 'string'; start: number; end: number; value: string }
  | { kind: 'number'; start: number; end: number; value: number }
  | { kind: 'literal'; start: number; end: number; value: boolean | null };

export interface JsonEntry {
  key: string;
  keyStart: number;
  keyEnd: number;
  value: JsonNode;
}

export class JsonSyntaxError extends Error {
  constructor(
    message: string,
    readonly offset: number,
  ) {
    super(message);
    this.name = 'JsonSyntaxError';
  }
}

/** Deeper nesting is refused before parsing (the parser recurses per level). */
const MAX_DEPTH = 512;

export function parseJsonWithPositions(text: string): JsonNode {
  checkDepth(text);
  const errors: ParseError[] = [];
  const root = parseTree(text, errors, { disallowComments: true, allowTrailingComma: false, allowEmptyContent: false });
  if (errors.length) throw syntaxError(text, errors[0]);
  if (!root) throw new JsonSyntaxError('unexpected end of input, expected a value', text.length);
  return convert(root);
}

function convert(n: Node): JsonNode {
  const [start, end] = [n.offset, n.offset + n.length];
  switch (n.type) {
    case 'object':
      return {
        kind: 'object',
        start,
        end,
        entries: (n.children ?? []).map((p) => {
          const [key, value] = p.children!;
          return {
            key: key.value as string,
            keyStart: key.offset,
            keyEnd: key.offset + key.length,
            value: convert(value),
          };
        }),
      };
    case 'array':
      return { kind: 'array', start, end, items: (n.children ?? []).map(convert) };
    case 'string':
      return { kind: 'string', start, end, value: n.value as string };
    case 'number':
      return { kind: 'number', start, end, value: n.value as number };
    default:
      return { kind: 'literal', start, end, value: n.value as boolean | null };
  }
}

const WHAT: Partial<Record<ParseErrorCode, string>> = {
  [ParseErrorCode.InvalidSymbol]: 'unexpected {found}, expected a value',
  [ParseErrorCode.InvalidNumberFormat]: 'invalid number',
  [ParseErrorCode.PropertyNameExpected]: 'expected a property name in double quotes, found {found}',
  [ParseErrorCode.ValueExpected]: 'unexpected {found}, expected a value',
  [ParseErrorCode.ColonExpected]: "expected ':' after property name, found {found}",
  [ParseErrorCode.CommaExpected]: "expected ',' between values, found {found}",
  [ParseErrorCode.CloseBraceExpected]: "expected ',' or '}' after property value, found {found}",
  [ParseErrorCode.CloseBracketExpected]: "expected ',' or ']' after array element, found {found}",
  [ParseErrorCode.EndOfFileExpected]: 'unexpected {found} after the end of the JSON value',
  [ParseErrorCode.InvalidCommentToken]: 'comments are not allowed in JSON',
  [ParseErrorCode.UnexpectedEndOfComment]: 'unterminated comment',
  [ParseErrorCode.UnexpectedEndOfString]: 'unterminated string',
  [ParseErrorCode.UnexpectedEndOfNumber]: 'invalid number',
  [ParseErrorCode.InvalidUnicode]: 'invalid \\u escape',
  [ParseErrorCode.InvalidEscapeCharacter]: 'invalid escape',
  [ParseErrorCode.InvalidCharacter]: 'control character in string (escape it as \\n, \\t, ...)',
};

function syntaxError(text: string, e: ParseError): JsonSyntaxError {
  let at = e.offset;
  // a control character is reported on its whole string: point at the character itself
  if (e.error === ParseErrorCode.InvalidCharacter) {
    for (let i = e.offset; i < e.offset + e.length; i++) {
      if (text.charCodeAt(i) < 0x20) {
        at = i;
        break;
      }
    }
  }
  if (e.error === ParseErrorCode.UnexpectedEndOfString) at = e.offset;
  const found = at >= text.length ? 'end of input' : `'${text[at]}'`;
  return new JsonSyntaxError((WHAT[e.error] ?? 'malformed JSON').replace('{found}', found), Math.min(at, text.length));
}

function checkDepth(text: string): void {
  let depth = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 0x5c) i++;
      else if (c === 0x22) inString = false;
    } else if (c === 0x22) inString = true;
    else if (c === 0x7b || c === 0x5b) {
      if (++depth > MAX_DEPTH) throw new JsonSyntaxError('nesting too deep', i);
    } else if (c === 0x7d || c === 0x5d) depth--;
  }
}

/** Finds the node at a path of keys and indices, or undefined. */
export function nodeAt(root: JsonNode, path: readonly (string | number)[]): JsonNode | undefined {
  let node: JsonNode | undefined = root;
  for (const step of path) {
    if (!node) return undefined;
    if (typeof step === 'number') node = node.kind === 'array' ? node.items[step] : undefined;
    else node = node.kind === 'object' ? findLast(node.entries, (e) => e.key === step)?.value : undefined;
  }
  return node;
}

/** Like nodeAt but returns the key's range for the last step when it names an object property. */
export function keyAt(root: JsonNode, path: readonly (string | number)[]): { start: number; end: number } | undefined {
  if (path.length === 0) return undefined;
  const parent = nodeAt(root, path.slice(0, -1));
  const last = path[path.length - 1];
  if (parent?.kind === 'object' && typeof last === 'string') {
    const entry = findLast(parent.entries, (e) => e.key === last);
    return entry ? { start: entry.keyStart, end: entry.keyEnd } : undefined;
  }
  const node = nodeAt(root, path);
  return node ? { start: node.start, end: node.end } : undefined;
}

function findLast<T>(items: readonly T[], pred: (item: T) => boolean): T | undefined {
  for (let i = items.length - 1; i >= 0; i--) if (pred(items[i])) return items[i];
  return undefined;
}

/**
 * Maps each character of a JSON string literal's decoded value to its offset in the source text.
 * `map[i]` is the source offset of decoded char i; `map[value.length]` is the offset of the closing quote.
 */
export function jsonStringOffsets(text: string, node: { start: number; end: number }): number[] {
  const map: number[] = [];
  let pos = node.start + 1;
  const end = node.end - 1;
  while (pos < end) {
    if (text[pos] === '\\') {
      const width = text[pos + 1] === 'u' ? 6 : 2;
      map.push(pos);
      pos += width;
    } else {
      map.push(pos);
      pos++;
    }
  }
  map.push(end);
  return map;
}

/** Line and column (both 1-based, column in UTF-16 code units) of an offset. */
export class LineIndex {
  private readonly starts: number[] = [0];
  constructor(readonly text: string) {
    for (let i = 0; i < text.length; i++) if (text.charCodeAt(i) === 0x0a) this.starts.push(i + 1);
  }
  position(offset: number): { line: number; column: number } {
    let lo = 0;
    let hi = this.starts.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.starts[mid] <= offset) lo = mid;
      else hi = mid - 1;
    }
    return { line: lo + 1, column: offset - this.starts[lo] + 1 };
  }
}
