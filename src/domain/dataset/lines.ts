/**
 * Streaming line reader for JSONL of any size: memory is bounded by the longest line (and that by a limit),
 * never by the file. Works on any async source of chunks (a file stream, or one string for an editor buffer).
 */
import * as fs from 'node:fs';
import { openRegularFile } from '../files';
import { StringDecoder } from 'node:string_decoder';

export interface Line {
  /** 1-based line number. */
  line: number;
  text: string;
  /** Set when the line exceeded the limit: text is then empty and `length` tells how long it was. */
  tooLong?: boolean;
  length: number;
}

/** 64 MiB of text on one line is far past any chat row; past it we skip rather than buffer. */
export const DEFAULT_MAX_LINE = 64 * 1024 * 1024;

/** What the first bytes say about the encoding: a UTF-8 byte order mark (stripped), or UTF-16 (not read). */
export type EncodingNote = 'utf8-bom' | 'utf16le' | 'utf16be';

/**
 * The lines of a UTF-8 source. A leading UTF-8 byte order mark is dropped (so row 1 parses) and reported through
 * `onEncoding`; a UTF-16 file (its byte order mark, or NULs between ASCII bytes) is reported and not read, rather
 * than turned into a line of garbage per row.
 */
export async function* readLines(
  source: AsyncIterable<Buffer | string> | Iterable<Buffer | string>,
  maxLine = DEFAULT_MAX_LINE,
  onEncoding?: (e: EncodingNote) => void,
): AsyncGenerator<Line> {
  const decoder = new StringDecoder('utf8');
  let first = true;
  let pending: string[] = [];
  let pendingLength = 0;
  let overflow = false;
  let lineNo = 0;
  const finish = (tail: string): Line => {
    lineNo++;
    const length = pendingLength + tail.length;
    let text = overflow ? '' : pending.length ? pending.join('') + tail : tail;
    if (text.endsWith('\r')) text = text.slice(0, -1);
    const out: Line = overflow ? { line: lineNo, text: '', tooLong: true, length } : { line: lineNo, text, length };
    pending = [];
    pendingLength = 0;
    overflow = false;
    return out;
  };
  for await (const chunk of source) {
    if (first && (typeof chunk === 'string' ? chunk.length : chunk.byteLength) > 0) {
      first = false;
      const utf16 = typeof chunk === 'string' ? undefined : utf16Of(chunk);
      if (utf16) {
        onEncoding?.(utf16);
        return;
      }
    }
    let s = typeof chunk === 'string' ? chunk : decoder.write(chunk);
    if (lineNo === 0 && pendingLength === 0 && s.charCodeAt(0) === 0xfeff) {
      s = s.slice(1);
      onEncoding?.('utf8-bom');
    }
    let from = 0;
    while (true) {
      const nl = s.indexOf('\n', from);
      if (nl < 0) {
        const rest = s.length - from;
        if (rest > 0) {
          pendingLength += rest;
          if (pendingLength > maxLine) {
            overflow = true;
            pending = [];
          } else if (!overflow) pending.push(from === 0 ? s : s.slice(from));
        }
        break;
      }
      const piece = s.slice(from, nl);
      if (!overflow && pendingLength + piece.length > maxLine) overflow = true;
      yield finish(overflow ? '' : piece);
      from = nl + 1;
    }
  }
  const last = decoder.end();
  if (last) {
    pending.push(last);
    pendingLength += last.length;
  }
  if (pendingLength > 0 || pending.length > 0) yield finish('');
}

/** A file's bytes in chunks; a FIFO, a device or a folder is refused (FileRefusedError) instead of read forever. */
export function fileChunks(file: string, highWaterMark = 1 << 20): AsyncIterable<Buffer> {
  const { fd } = openRegularFile(file);
  return fs.createReadStream(file, { fd, highWaterMark });
}

function utf16Of(b: Uint8Array): 'utf16le' | 'utf16be' | undefined {
  if (b[0] === 0xff && b[1] === 0xfe) return 'utf16le';
  if (b[0] === 0xfe && b[1] === 0xff) return 'utf16be';
  // no byte order mark: ASCII text in UTF-16 has a NUL in every other byte
  if (b.length >= 4 && b[1] === 0 && b[3] === 0 && b[0] !== 0) return 'utf16le';
  if (b.length >= 4 && b[0] === 0 && b[2] === 0 && b[1] !== 0) return 'utf16be';
  return undefined;
}
