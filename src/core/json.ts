/**
 * A small JSON parser that keeps source positions. JSON.parse is used for speed on the hot path; this parser runs
 * only where a position is needed: to locate a syntax error (V8's messages often carry none), to point a diagnostic
 * at the key or value it is about, and to map a JSON-escaped chat template back to file offsets.
 */

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

const MAX_DEPTH = 512;

export function parseJsonWithPositions(text: string): JsonNode {
  let pos = 0;
  let depth = 0;

  const fail = (message: string, at = pos): never => {
    throw new JsonSyntaxError(message, Math.min(at, text.length));
  };
  const describe = (at: number): string => (at >= text.length ? 'end of input' : `'${text[at]}'`);

  const skipWs = (): void => {
    while (pos < text.length) {
      const c = text.charCodeAt(pos);
      if (c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) pos++;
      else break;
    }
  };

  const parseString = (): { value: string; start: number; end: number } => {
    const start = pos;
    pos++; // opening quote
    let value = '';
    let chunkStart = pos;
    while (true) {
      if (pos >= text.length) fail('unterminated string', start);
      const c = text.charCodeAt(pos);
      if (c === 0x22) {
        value += text.slice(chunkStart, pos);
        pos++;
        return { value, start, end: pos };
      }
      if (c < 0x20) fail('control character in string (escape it as \\n, \\t, ...)');
      if (c === 0x5c) {
        value += text.slice(chunkStart, pos);
        const e = text[pos + 1];
        const simple: Record<string, string> = {
          '"': '"',
          '\\': '\\',
          '/': '/',
          b: '\b',
          f: '\f',
          n: '\n',
          r: '\r',
          t: '\t',
        };
        if (e !== undefined && e in simple) {
          value += simple[e];
          pos += 2;
        } else if (e === 'u') {
          const hex = text.slice(pos + 2, pos + 6);
          if (!/^[0-9a-fA-F]{4}$/.test(hex)) fail('invalid \\u escape');
          value += String.fromCharCode(parseInt(hex, 16));
          pos += 6;
        } else {
          fail(`invalid escape '\\${e ?? ''}'`);
        }
        chunkStart = pos;
        continue;
      }
      pos++;
    }
  };

  const parseValue = (): JsonNode => {
    skipWs();
    if (pos >= text.length) fail('unexpected end of input, expected a value');
    const c = text[pos];
    const start = pos;
    if (c === '{') {
      if (++depth > MAX_DEPTH) fail('nesting too deep');
      pos++;
      const entries: JsonEntry[] = [];
      skipWs();
      if (text[pos] === '}') {
        pos++;
        depth--;
        return { kind: 'object', start, end: pos, entries };
      }
      while (true) {
        skipWs();
        if (text[pos] !== '"') fail(`expected a property name in double quotes, found ${describe(pos)}`);
        const key = parseString();
        skipWs();
        if (text[pos] !== ':') fail(`expected ':' after property name, found ${describe(pos)}`);
        pos++;
        const value = parseValue();
        entries.push({ key: key.value, keyStart: key.start, keyEnd: key.end, value });
        skipWs();
        if (text[pos] === ',') {
          pos++;
          continue;
        }
        if (text[pos] === '}') {
          pos++;
          depth--;
          return { kind: 'object', start, end: pos, entries };
        }
        fail(`expected ',' or '}' after property value, found ${describe(pos)}`);
      }
    }
    if (c === '[') {
      if (++depth > MAX_DEPTH) fail('nesting too deep');
      pos++;
      const items: JsonNode[] = [];
      skipWs();
      if (text[pos] === ']') {
        pos++;
        depth--;
        return { kind: 'array', start, end: pos, items };
      }
      while (true) {
        items.push(parseValue());
        skipWs();
        if (text[pos] === ',') {
          pos++;
          continue;
        }
        if (text[pos] === ']') {
          pos++;
          depth--;
          return { kind: 'array', start, end: pos, items };
        }
        fail(`expected ',' or ']' after array element, found ${describe(pos)}`);
      }
    }
    if (c === '"') {
      const s = parseString();
      return { kind: 'string', start: s.start, end: s.end, value: s.value };
    }
    const num = /^-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/.exec(text.slice(pos, pos + 64));
    if (num && num[0].length > 0 && (c === '-' || (c >= '0' && c <= '9'))) {
      pos += num[0].length;
      return { kind: 'number', start, end: pos, value: Number(num[0]) };
    }
    for (const [word, value] of [
      ['true', true],
      ['false', false],
      ['null', null],
    ] as const) {
      if (text.startsWith(word, pos)) {
        pos += word.length;
        return { kind: 'literal', start, end: pos, value };
      }
    }
    return fail(`unexpected ${describe(pos)}, expected a value`);
  };

  const root = parseValue();
  skipWs();
  if (pos < text.length) fail(`unexpected ${describe(pos)} after the end of the JSON value`);
  return root;
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
