/**
 * Columnar dataset files, read row by row as JSON lines so that they get the same formats and findings as JSONL,
 * located by row (row N is "line" N, column 1): Parquet (what most finetuning sets on the Hub are) and the Arrow
 * IPC streams `datasets` writes (`save_to_disk` folders, its cache). What both readers share lives here.
 */
import * as path from 'node:path';
import { FILE_LIMITS, readTextChecked } from '../files';

/** A columnar file that cannot be read (not that format, truncated, an unknown encoding): rows before it are kept. */
export class ColumnarReadError extends Error {
  constructor(
    readonly file: string,
    message: string,
  ) {
    super(`${file}: ${message}`);
    this.name = 'ColumnarReadError';
  }
}

/**
 * What a columnar reader may produce from a file: rows decompress (pages, dictionaries) to at most
 * `ratio` times the file's size or `minBytes`, whichever is larger (real text Parquet inflates 3-10x; a bomb
 * inflates thousands of times, and a dictionary entry referenced by every row without bound); a Parquet row group,
 * read whole, may declare at most `rowGroupBytes` uncompressed; a schema may nest `depth` levels.
 */
export const COLUMNAR_LIMITS = { ratio: 50, minBytes: 256 * 1024 * 1024, rowGroupBytes: 1024 * 1024 * 1024, depth: 64 };

/** Counts the row JSON a reader yields against the file's budget; throws ColumnarReadError past it. */
export class RowBudget {
  private used = 0;
  private readonly limit: number;
  constructor(
    private readonly file: string,
    fileBytes: number,
  ) {
    this.limit = Math.max(COLUMNAR_LIMITS.minBytes, COLUMNAR_LIMITS.ratio * fileBytes);
  }
  add(json: string, row: number): void {
    this.used += json.length;
    if (this.used > this.limit)
      throw new ColumnarReadError(
        this.file,
        `the rows decompress to more than ${mb(this.limit)} (row ${row.toLocaleString('en')}), over ${COLUMNAR_LIMITS.ratio} times the file's size: a compression or dictionary bomb, or a file to audit in parts; rows from there on are not read`,
      );
  }
}

/** A schema nested deeper than COLUMNAR_LIMITS.depth, as a refusal; undefined when it is not. */
export function schemaTooDeep(file: string, depth: number): ColumnarReadError | undefined {
  return depth > COLUMNAR_LIMITS.depth
    ? new ColumnarReadError(
        file,
        `the schema nests ${depth.toLocaleString('en')} levels deep (the reader's limit is ${COLUMNAR_LIMITS.depth}); no row is read`,
      )
    : undefined;
}

const mb = (bytes: number) => `${Math.round(bytes / (1024 * 1024)).toLocaleString('en')} MB`;

export const isParquet = (file: string) => /\.parquet$/i.test(file);
export const isArrow = (file: string) => /\.arrow$/i.test(file);
export const isColumnar = (file: string) => isParquet(file) || isArrow(file);

/** JSON for a row: 64-bit integers as numbers where exact, else as strings; binary as base64. */
export function rowJson(row: unknown): string {
  return JSON.stringify(row, (_k, v) => {
    if (typeof v === 'bigint') return Number.isSafeInteger(Number(v)) ? Number(v) : v.toString();
    if (v instanceof Uint8Array) return Buffer.from(v).toString('base64');
    return v;
  });
}

const KNOWN_SPLIT = /^(train|test|validation|valid|dev|eval)$/i;

/**
 * The split a file holds, as its name or folder says: a Hub file `train-00000-of-00002.parquet`,
 * `data/test-00000-of-00001.parquet`, `validation.jsonl`, a `train/` folder, or a `datasets.save_to_disk` shard
 * (`data-00000-of-00001.arrow`) whose state.json names its split; undefined when nothing says.
 */
export function splitOf(file: string): string | undefined {
  const base = path.basename(file).replace(/\.(parquet|jsonl|arrow)$/i, '');
  const named = /^([A-Za-z][\w.]*?)(?:-\d{5}-of-\d{5})?$/.exec(base)?.[1];
  if (named && KNOWN_SPLIT.test(named)) return named;
  if (isArrow(file)) {
    const saved = savedSplit(path.dirname(file));
    if (saved) return saved;
  }
  const folder = path.basename(path.dirname(file));
  return KNOWN_SPLIT.test(folder) ? folder : undefined;
}

/** `_split` of a save_to_disk folder's state.json (any name: a DatasetDict's splits are its subfolders). */
function savedSplit(folder: string): string | undefined {
  try {
    const state = JSON.parse(readTextChecked(path.join(folder, 'state.json'), FILE_LIMITS.config)) as {
      _split?: unknown;
    };
    return typeof state._split === 'string' && state._split ? state._split : undefined;
  } catch {
    return undefined;
  }
}
