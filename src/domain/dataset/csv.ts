/**
 * CSV datasets with a header row (prompt/completion columns, instruction/output, a `messages` column of JSON, ...),
 * read with csv-parse as a stream: each record becomes one JSON object line for the dataset audit, with the file
 * line it starts on, so findings land on the record (a cell may span lines). Cells are strings; a `messages`,
 * `conversations`, `prompt` or `completion` cell holding a JSON list of messages is read as that list (a prompt
 * that merely looks like a list, "[1, 2, 3]", stays text).
 */
import * as fs from 'node:fs';
import { type CsvError, parse } from 'csv-parse';
import { openRegularFile } from '../files';
import { detectFormat } from './formats';
import { DEFAULT_MAX_LINE } from './lines';

export const isCsv = (file: string) => /\.csv$/i.test(file);

/** A CSV file that cannot be parsed past a point (an unclosed quote, a record with the wrong number of cells). */
export class CsvReadError extends Error {
  constructor(
    readonly file: string,
    readonly line: number,
    message: string,
  ) {
    super(`${file}:${line}: ${message}`);
    this.name = 'CsvReadError';
  }
}

const LIST_COLUMNS = new Set(['messages', 'conversations', 'conversation', 'prompt', 'completion']);

/**
 * The records of a CSV file as JSON lines; `lines[i]` receives the file line record i + 1 starts on. Throws
 * CsvReadError at the first record that cannot be parsed (the records before it have been yielded).
 */
export async function* csvLines(file: string, lines: number[]): AsyncGenerator<string> {
  const { fd } = openRegularFile(file);
  const parser = fs
    .createReadStream(file, { fd, highWaterMark: 1 << 20 })
    // a record is held whole: one over the JSONL reader's line limit is refused (DS010), not read into memory
    .pipe(
      parse({
        bom: true,
        columns: true,
        skip_empty_lines: true,
        info: true,
        raw: true,
        max_record_size: DEFAULT_MAX_LINE,
        // a fault is reported through 'skip' instead of failing the stream: a failed stream drops the records it
        // had parsed but not yet handed over (tens of thousands in a large file), and every record before the fault
        // is to be audited; reading stops at the first record after it
        skip_records_with_error: true,
      }),
    );
  let fault: (CsvError & { lines?: number }) | undefined;
  parser.on('skip', (e: CsvError & { lines?: number }) => {
    fault ??= e;
  });
  try {
    for await (const { record, info, raw } of parser as AsyncIterable<{
      record: Record<string, string>;
      info: { lines: number };
      raw: string;
    }>) {
      if (fault && info.lines > (fault.lines ?? 0)) break;
      // info.lines is where the record ends; a quoted cell with newlines moves its start up
      const inner = raw.replace(/\r?\n$/, '').split('\n').length - 1;
      lines.push(info.lines - inner);
      const row: Record<string, unknown> = {};
      for (const [k, v] of Object.entries(record)) row[k] = LIST_COLUMNS.has(k) ? listCell(v) : v;
      yield `${JSON.stringify(row)}\n`;
    }
    if (fault) throw fault;
  } catch (e) {
    const err = e as CsvError & { lines?: number };
    throw new CsvReadError(file, err.lines ?? lines.length + 1, err.message);
  } finally {
    parser.destroy();
  }
}

/** A JSON list of objects in a cell (a message list stored in CSV) as that list; any other text as it is. */
function listCell(v: string): unknown {
  if (!/^\s*\[/.test(v)) return v;
  try {
    const parsed = JSON.parse(v) as unknown;
    return Array.isArray(parsed) && parsed.length > 0 && parsed.every((m) => m && typeof m === 'object') ? parsed : v;
  } catch {
    return v;
  }
}

/** Whether a CSV file's header names a chat dataset's columns (what a folder audit takes a .csv for). */
export function csvHasChatColumns(file: string): boolean {
  let head: string;
  try {
    const fd = fs.openSync(file, 'r');
    try {
      const buf = Buffer.alloc(64 * 1024);
      head = buf.subarray(0, fs.readSync(fd, buf, 0, buf.length, 0)).toString('utf8');
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    return false;
  }
  const header = head.replace(/^\uFEFF/, '').split(/\r?\n/)[0];
  const columns = header.split(',').map((c) => c.trim().replace(/^"(.*)"$/, '$1'));
  const probe: Record<string, unknown> = {};
  for (const c of columns) probe[c] = LIST_COLUMNS.has(c) && c !== 'prompt' && c !== 'completion' ? [] : '';
  const format = detectFormat(probe);
  return format !== undefined && format !== 'text';
}
