/**
 * Parquet datasets (what most finetuning sets on the Hugging Face Hub are), read with hyparquet (pure JS, with
 * hyparquet-compressors for gzip, zstd, brotli and lz4; snappy is built in), one row group at a time so that memory
 * stays bounded by the largest row group, never the file. Each row becomes one JSON line (columnar.ts).
 */
import * as fs from 'node:fs';
import { type AsyncBuffer, parquetMetadataAsync, parquetReadObjects } from 'hyparquet';
import { compressors } from 'hyparquet-compressors';
import { openRegularFile } from '../files';
import { COLUMNAR_LIMITS, ColumnarReadError, RowBudget, rowJson, schemaTooDeep } from './columnar';

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

/** The rows of a Parquet file as JSON lines, one row group at a time. */
export async function* parquetLines(file: string, signal?: AbortSignal): AsyncGenerator<string> {
  const buffer = fileBuffer(file);
  try {
    let metadata: Awaited<ReturnType<typeof parquetMetadataAsync>>;
    try {
      metadata = await parquetMetadataAsync(buffer);
    } catch (e) {
      throw new ColumnarReadError(file, `not a readable Parquet file (${(e as Error).message})`);
    }
    const tooDeep = schemaTooDeep(file, parquetSchemaDepth(metadata.schema));
    if (tooDeep) throw tooDeep;
    // every column chunk must belong to a column of the schema: the library reads chunks it then never assembles
    // (their failures would surface later as unhandled rejections), so a damaged file is refused here
    const leaves = parquetLeafPaths(metadata.schema);
    for (const [g, group] of metadata.row_groups.entries())
      for (const c of group.columns) {
        const p = c.meta_data?.path_in_schema?.join('.');
        if (p === undefined || !leaves.has(p))
          throw new ColumnarReadError(
            file,
            `row group ${g + 1} holds a column chunk (${JSON.stringify(p ?? null)}) the schema does not have: a damaged file; no row is read`,
          );
      }
    const budget = new RowBudget(file, buffer.byteLength);
    let start = 0;
    for (const group of metadata.row_groups) {
      if (signal?.aborted) return;
      const n = Number(group.num_rows);
      // a row group is read whole: what it declares uncompressed is checked before any page is inflated
      const declared = group.columns.reduce((sum, c) => sum + Number(c.meta_data?.total_uncompressed_size ?? 0), 0);
      if (declared > COLUMNAR_LIMITS.rowGroupBytes)
        throw new ColumnarReadError(
          file,
          `rows ${start + 1} to ${start + n} (one row group) declare ${Math.round(declared / 2 ** 20).toLocaleString('en')} MB uncompressed, over the reader's ${COLUMNAR_LIMITS.rowGroupBytes / 2 ** 20} MB for one row group; not read`,
        );
      let rows: Record<string, unknown>[];
      try {
        rows = await parquetReadObjects({ file: buffer, metadata, rowStart: start, rowEnd: start + n, compressors });
      } catch (e) {
        throw new ColumnarReadError(file, `rows ${start + 1} to ${start + n} cannot be read (${(e as Error).message})`);
      }
      for (const [i, row] of rows.entries()) {
        const json = rowJson(row);
        budget.add(json, start + i + 1);
        yield `${json}\n`;
      }
      start += n;
    }
  } finally {
    buffer.close();
  }
}

/** How deep a Parquet schema nests: its elements in depth-first order, each group with num_children after it. */
export function parquetSchemaDepth(schema: { num_children?: number }[]): number {
  let max = 0;
  const open: number[] = []; // children still to come, per open group
  for (const element of schema) {
    while (open.length && open[open.length - 1] === 0) open.pop();
    if (open.length) open[open.length - 1]--;
    max = Math.max(max, open.length);
    if (element.num_children) open.push(element.num_children);
  }
  return max;
}

/** The dotted paths of a Parquet schema's leaf columns (elements in depth-first order, the root first). */
function parquetLeafPaths(schema: { name?: string; num_children?: number }[]): Set<string> {
  const leaves = new Set<string>();
  const open: { name: string; left: number }[] = [];
  for (const [i, element] of schema.entries()) {
    while (open.length && open[open.length - 1].left === 0) open.pop();
    if (open.length) open[open.length - 1].left--;
    const names = open.slice(1).map((o) => o.name);
    if (element.num_children) open.push({ name: String(element.name), left: element.num_children });
    else if (i > 0) leaves.add([...names, String(element.name)].join('.'));
  }
  return leaves;
}
