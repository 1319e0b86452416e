/**
 * Parquet datasets (what most finetuning sets on the Hugging Face Hub are), read with hyparquet (pure JS, with
 * hyparquet-compressors for gzip, zstd, brotli and lz4; snappy is built in), one row group at a time so that memory
 * stays bounded by the largest row group, never the file. Each row becomes one JSON line for the dataset audit, so
 * Parquet gets the same formats and findings as JSONL, located by row (row N is "line" N, column 1).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { type AsyncBuffer, parquetMetadataAsync, parquetReadObjects } from 'hyparquet';
import { compressors } from 'hyparquet-compressors';
import { openRegularFile } from '../files';

export class ParquetReadError extends Error {
  constructor(
    readonly file: string,
    message: string,
  ) {
    super(`${file}: ${message}`);
    this.name = 'ParquetReadError';
  }
}

export const isParquet = (file: string) => /\.parquet$/i.test(file);

/**
 * The split a Hub-style file name says it holds: `train-00000-of-00002.parquet`, `data/test-00000-of-00001.parquet`,
 * `validation.jsonl`, or a `train/` folder; undefined when the name says none.
 */
export function splitOf(file: string): string | undefined {
  const base = path.basename(file).replace(/\.(parquet|jsonl)$/i, '');
  const named = /^([A-Za-z][\w.]*?)(?:-\d{5}-of-\d{5})?$/.exec(base)?.[1];
  const KNOWN = /^(train|test|validation|valid|dev|eval)$/i;
  if (named && KNOWN.test(named)) return named;
  const folder = path.basename(path.dirname(file));
  return KNOWN.test(folder) ? folder : undefined;
}

/** An AsyncBuffer over a regular file (checked first: a FIFO or device is refused, never read). */
function fileBuffer(file: string): AsyncBuffer & { close(): void } {
  const { fd, size } = openRegularFile(file);
  return {
    byteLength: size,
    slice(start: number, end = size) {
      const buf = Buffer.allocUnsafe(Math.max(0, end - start));
      let at = 0;
      while (at < buf.length) {
        const n = fs.readSync(fd, buf, at, buf.length - at, start + at);
        if (n === 0) break;
        at += n;
      }
      return buf.buffer.slice(buf.byteOffset, buf.byteOffset + at) as ArrayBuffer;
    },
    close: () => fs.closeSync(fd),
  };
}

/** JSON for a Parquet row: 64-bit integers as numbers where exact, else as strings; binary as base64. */
function rowJson(row: Record<string, unknown>): string {
  return JSON.stringify(row, (_k, v) => {
    if (typeof v === 'bigint') return Number.isSafeInteger(Number(v)) ? Number(v) : v.toString();
    if (v instanceof Uint8Array) return Buffer.from(v).toString('base64');
    return v;
  });
}

/** The rows of a Parquet file as JSON lines, one row group at a time. */
export async function* parquetLines(file: string, signal?: AbortSignal): AsyncGenerator<string> {
  const buffer = fileBuffer(file);
  try {
    let metadata: Awaited<ReturnType<typeof parquetMetadataAsync>>;
    try {
      metadata = await parquetMetadataAsync(buffer);
    } catch (e) {
      throw new ParquetReadError(file, `not a readable Parquet file (${(e as Error).message})`);
    }
    let start = 0;
    for (const group of metadata.row_groups) {
      if (signal?.aborted) return;
      const n = Number(group.num_rows);
      let rows: Record<string, unknown>[];
      try {
        rows = await parquetReadObjects({ file: buffer, metadata, rowStart: start, rowEnd: start + n, compressors });
      } catch (e) {
        throw new ParquetReadError(file, `rows ${start + 1} to ${start + n} cannot be read (${(e as Error).message})`);
      }
      for (const row of rows) yield `${rowJson(row)}\n`;
      start += n;
    }
  } finally {
    buffer.close();
  }
}
