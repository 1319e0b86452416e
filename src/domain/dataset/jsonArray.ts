/**
 * JSON-array dataset files (`.json`: Alpaca's data, LLaMA-Factory's data/*.json, FastChat/ShareGPT exports): one
 * array of examples, often pretty-printed across many lines. Read as a stream: the array is split into its elements
 * without building the whole document, each element becomes one JSON line for the dataset audit (its line breaks,
 * which JSON allows only between tokens, become spaces), and the line and column where it starts are kept so that
 * findings land on the example. Memory is bounded by the largest example, and that by the line limit.
 */
import * as fs from 'node:fs';
import { StringDecoder } from 'node:string_decoder';
import { openRegularFile } from '../files';
import { detectFormat } from './formats';
import { DEFAULT_MAX_LINE } from './lines';

export const isJsonFile = (file: string) => /\.json$/i.test(file);

/** Where an example of the array starts (1-based). */
export interface Start {
  line: number;
  column: number;
}

/** A JSON-array file that cannot be read past a point: not an array, cut short, an example over the limit. */
export class JsonArrayReadError extends Error {
  constructor(
    readonly file: string,
    readonly line: number,
    readonly column: number,
    message: string,
  ) {
    super(`${file}:${line}:${column}: ${message}`);
    this.name = 'JsonArrayReadError';
  }
}

const WS = new Set([0x20, 0x09, 0x0a, 0x0d]);

/**
 * The state machine that splits a top-level JSON array into its elements' texts, fed text in pieces of any size.
 * It tracks strings (with escapes) and nesting only: the elements themselves are parsed by whoever reads them.
 */
class ArraySplitter {
  line = 1;
  column = 1;
  state = 'before' as 'before' | 'between' | 'inside' | 'after';
  private depth = 0;
  private inString = false;
  private escaped = false;
  private scalar = false;
  private parts: string[] = [];
  private size = 0;
  private first = true;

  constructor(
    private readonly file: string,
    private readonly maxElement: number,
    private readonly starts: Start[],
  ) {}

  fail(message: string): never {
    throw new JsonArrayReadError(this.file, this.line, this.column, message);
  }

  /** The elements that end in `text` (after what came before), each as one line of JSON. */
  push(text: string): string[] {
    const out: string[] = [];
    if (this.first && text.length) {
      this.first = false;
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    }
    let from = 0; // where the current element's text starts in this piece
    for (let i = 0; i < text.length; i++) {
      const c = text.charCodeAt(i);
      if (this.state === 'inside') {
        let ended = false;
        if (this.scalar) {
          // a number, true, false or null ends before the comma, bracket or space after it: read that again
          if (c === 0x2c || c === 0x5d || WS.has(c)) {
            this.parts.push(text.slice(from, i));
            i--;
            ended = true;
          }
        } else {
          if (this.inString) {
            if (this.escaped) this.escaped = false;
            else if (c === 0x5c) this.escaped = true;
            else if (c === 0x22) this.inString = false;
          } else if (c === 0x22) this.inString = true;
          else if (c === 0x7b || c === 0x5b) this.depth++;
          else if (c === 0x7d || c === 0x5d) this.depth--;
          if (this.depth === 0 && !this.inString) {
            this.parts.push(text.slice(from, i + 1));
            ended = true;
          }
        }
        if (ended) {
          // line breaks inside an element lie between tokens (a string cannot hold one): spaces keep it valid
          out.push(`${this.parts.join('').replace(/[\r\n]/g, ' ')}\n`);
          this.parts = [];
          this.size = 0;
          this.state = 'between';
          if (this.scalar) continue;
        }
      } else if (WS.has(c)) {
        // whitespace between tokens
      } else if (this.state === 'before') {
        if (c !== 0x5b)
          this.fail(
            'not a JSON array: a .json dataset holds a list of examples ([{...}, {...}]); a single object is a config file, and JSON Lines go in .jsonl',
          );
        this.state = 'between';
      } else if (this.state === 'between') {
        if (c === 0x5d) this.state = 'after';
        else if (c !== 0x2c) {
          this.state = 'inside';
          this.starts.push({ line: this.line, column: this.column });
          from = i;
          this.depth = c === 0x7b || c === 0x5b ? 1 : 0;
          this.inString = c === 0x22;
          this.escaped = false;
          this.scalar = this.depth === 0 && !this.inString;
        }
      } else this.fail('text after the end of the array');
      if (c === 0x0a) {
        this.line++;
        this.column = 1;
      } else this.column++;
    }
    if (this.state === 'inside') {
      this.parts.push(text.slice(from));
      this.size += text.length - from;
      if (this.size > this.maxElement)
        this.fail(`an example longer than ${this.maxElement} characters (the limit for one example): not read`);
    }
    return out;
  }

  end(): void {
    if (this.state === 'before') this.fail('an empty file: a .json dataset holds a list of examples');
    if (this.state !== 'after') this.fail('the file ends inside the array (cut short?)');
  }
}

/**
 * The elements of a file's top-level JSON array as JSON lines; `starts[i]` receives where element i + 1 begins.
 * Throws JsonArrayReadError where the file stops being an array (the elements before it have been yielded).
 * Elements are split, not validated: each one is parsed by the audit, which reports a broken one at its start.
 */
export async function* jsonArrayLines(
  file: string,
  starts: Start[],
  maxElement = DEFAULT_MAX_LINE,
): AsyncGenerator<string> {
  const { fd } = openRegularFile(file);
  const decoder = new StringDecoder('utf8');
  const splitter = new ArraySplitter(file, maxElement, starts);
  for await (const chunk of fs.createReadStream(file, { fd, highWaterMark: 1 << 20 }) as AsyncIterable<Buffer>)
    yield* splitter.push(decoder.write(chunk));
  yield* splitter.push(decoder.end());
  splitter.end();
}

/** The same for the text of a JSON-array file (an editor buffer); `file` names it in errors. */
export function* jsonArrayTextLines(file: string, text: string, starts: Start[]): Generator<string> {
  const splitter = new ArraySplitter(file, DEFAULT_MAX_LINE, starts);
  yield* splitter.push(text);
  splitter.end();
}

/** Bytes of a .json file read to tell a dataset from a config file. */
const PROBE_BYTES = 1 << 20;

/**
 * Whether a `.json` file is a dataset: a top-level array whose first element is a row of a known format. Reads
 * at most the first MiB, so a large dataset and a config file cost the same to tell apart.
 */
export function isJsonDataset(file: string): boolean {
  let head: string;
  try {
    const { fd } = openRegularFile(file);
    try {
      const buf = Buffer.alloc(PROBE_BYTES);
      head = new StringDecoder('utf8').write(buf.subarray(0, fs.readSync(fd, buf, 0, PROBE_BYTES, 0)));
    } finally {
      fs.closeSync(fd);
    }
    return isJsonDatasetText(file, head);
  } catch {
    return false;
  }
}

/** The same, from the start of the file's text (an editor buffer): its first MiB is what is looked at. */
export function isJsonDatasetText(file: string, text: string): boolean {
  try {
    const [first] = new ArraySplitter(file, PROBE_BYTES, []).push(text.slice(0, PROBE_BYTES));
    if (first === undefined) return false;
    const row = JSON.parse(first);
    return !!row && typeof row === 'object' && !Array.isArray(row) && detectFormat(row) !== undefined;
  } catch {
    return false;
  }
}

/**
 * The example of a JSON-array text that holds line `line` (1-based), and its number (1-based): for the editor's
 * row hover and code lens on a pretty-printed file, where an example spans many lines. `starts` are where each
 * example starts (as jsonArrayTextLines records them); undefined outside the examples.
 */
export function exampleAt(
  text: string,
  starts: Start[],
  line: number,
  offsetAt: (s: Start) => number,
): { row: number; text: string; start: Start } | undefined {
  let i = -1;
  for (let lo = 0, hi = starts.length - 1; lo <= hi; ) {
    const mid = (lo + hi) >> 1;
    if (starts[mid].line <= line) {
      i = mid;
      lo = mid + 1;
    } else hi = mid - 1;
  }
  if (i < 0) return undefined;
  const from = offsetAt(starts[i]);
  const to = i + 1 < starts.length ? offsetAt(starts[i + 1]) : text.lastIndexOf(']');
  // the element's text without the comma and white space that follow it (the last one ends before the bracket)
  const body = text.slice(from, Math.max(from, to)).replace(/[\s,]*$/, '');
  const endLine = starts[i].line + (body.match(/\n/g)?.length ?? 0);
  if (line > endLine) return undefined;
  return { row: i + 1, text: body, start: starts[i] };
}
