/**
 * Arrow IPC files as `datasets` writes them: `save_to_disk` folders (`data-00000-of-00001.arrow` beside state.json
 * and dataset_info.json; a DatasetDict has one such folder per split) and the library's cache files. They are Arrow
 * IPC streams (the file format is read too), read with apache-arrow one record batch at a time, so memory stays
 * bounded by the largest batch; each row becomes one JSON line for the dataset audit.
 */
import * as fs from 'node:fs';
import { RecordBatchReader } from 'apache-arrow';
import { openRegularFile } from '../files';
import { ColumnarReadError, RowBudget, rowJson, schemaTooDeep } from './columnar';

/** The rows of an Arrow IPC stream or file as JSON lines, one record batch at a time. */
export async function* arrowLines(file: string, signal?: AbortSignal): AsyncGenerator<string> {
  const { fd, size } = openRegularFile(file);
  const stream = fs.createReadStream(file, { fd, highWaterMark: 1 << 20 });
  try {
    let reader: Awaited<ReturnType<typeof RecordBatchReader.from>>;
    try {
      reader = await RecordBatchReader.from(stream);
      await reader.open();
    } catch (e) {
      throw new ColumnarReadError(file, `not a readable Arrow IPC file (${(e as Error).message})`);
    }
    // (an empty dataset is a schema and no batches; no schema at all is not Arrow)
    if (!reader.schema) throw new ColumnarReadError(file, 'not a readable Arrow IPC file (no schema)');
    const tooDeep = schemaTooDeep(file, Math.max(0, ...reader.schema.fields.map((f) => typeDepth(f.type))));
    if (tooDeep) throw tooDeep;
    const budget = new RowBudget(file, size);
    let start = 0;
    const batches = reader[Symbol.asyncIterator]();
    for (;;) {
      if (signal?.aborted) return;
      let next: IteratorResult<Awaited<ReturnType<typeof batches.next>>['value']>;
      try {
        next = await batches.next();
      } catch (e) {
        throw new ColumnarReadError(file, `rows after row ${start} cannot be read (${(e as Error).message})`);
      }
      if (next.done) break;
      const batch = next.value;
      for (let i = 0; i < batch.numRows; i++) {
        const json = rowJson(batch.get(i));
        budget.add(json, start + i + 1);
        yield `${json}\n`;
      }
      start += batch.numRows;
    }
  } finally {
    stream.destroy();
  }
}

/** How deep an Arrow type nests (a struct of lists of structs...), counted without recursion. */
function typeDepth(type: { children?: { type: unknown }[] | null }): number {
  let max = 1;
  const stack: [{ children?: { type: unknown }[] | null }, number][] = [[type, 1]];
  while (stack.length) {
    const [t, d] = stack.pop()!;
    max = Math.max(max, d);
    if (d > 1000) break;
    for (const c of t.children ?? []) stack.push([c.type as { children?: { type: unknown }[] | null }, d + 1]);
  }
  return max;
}
