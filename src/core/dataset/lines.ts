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

export async function* readLines(source: AsyncIterable<Buffer | string> | Iterable<Buffer | string>, maxLine = DEFAULT_MAX_LINE): AsyncGenerator<Line> {
  const decoder = new StringDecoder('utf8');
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
    const s = typeof chunk === 'string' ? chunk : decoder.write(chunk);
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
