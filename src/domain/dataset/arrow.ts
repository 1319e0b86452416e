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
    const tooDeep = schemaTooDeep(file, Math.max(0, ...(reader.schema.fields ?? []).map((f) => typeDepth(f?.type))));
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
      // offsets are read as they are by the library: a damaged one makes a row of billions of items
      const broken = dataProblem(batch.data as unknown as ArrowData);
      if (broken)
        throw new ColumnarReadError(file, `rows ${start + 1} to ${start + batch.numRows}: ${broken}; not read`);
      for (let i = 0; i < batch.numRows; i++) {
        let json: string;
        try {
          json = rowJson(batch.get(i));
        } catch (e) {
          // buffers the checks above did not catch: the library's own error, said at the row
          throw new ColumnarReadError(file, `row ${start + i + 1} cannot be read (${(e as Error).message})`);
        }
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
function typeDepth(type: { children?: ({ type: unknown } | undefined)[] | null } | undefined): number {
  if (!type) return 1;
  let max = 1;
  const stack: [{ children?: ({ type: unknown } | undefined)[] | null }, number][] = [[type, 1]];
  while (stack.length) {
    const [t, d] = stack.pop()!;
    max = Math.max(max, d);
    if (d > 1000) break;
    // (a damaged schema can hold holes: a missing child type counts as a leaf)
    for (const c of t.children ?? [])
      if (c?.type) stack.push([c.type as { children?: { type: unknown }[] | null }, d + 1]);
  }
  return max;
}

/** The parts of apache-arrow's Data the checks read. */
interface ArrowData {
  length: number;
  offset: number;
  valueOffsets?: ArrayLike<number | bigint>;
  values?: { length: number };
  children?: ArrowData[];
  dictionary?: { data: ArrowData[] };
  type: { typeId: number; listSize?: number };
}

/**
 * Why a record batch's buffers do not hold what its metadata says, or undefined: value offsets that are negative,
 * decrease or point past the values or the child list, children shorter than their parent. Checked iteratively
 * (the schema depth is bounded before any batch is read).
 */
function dataProblem(root: ArrowData): string | undefined {
  const stack: [ArrowData, string][] = [[root, 'the batch']];
  while (stack.length) {
    const [d, where] = stack.pop()!;
    const end = d.offset + d.length;
    if (!Number.isSafeInteger(end) || end < 0) return `${where} has an impossible length`;
    const o = d.valueOffsets;
    if (o) {
      if (o.length < end + 1) return `${where}: ${o.length} offsets for ${end} values`;
      let prev = Number(o[d.offset]);
      if (!(prev >= 0)) return `${where}: a negative offset`;
      for (let i = d.offset + 1; i <= end; i++) {
        const cur = Number(o[i]);
        if (!(cur >= prev)) return `${where}: offsets decrease at value ${i}`;
        prev = cur;
      }
      const limit = d.children?.[0]?.length ?? d.values?.length;
      if (limit !== undefined && prev > limit)
        return `${where}: an offset (${prev}) past the ${limit} values it indexes`;
    }
    for (const [i, c] of (d.children ?? []).entries()) {
      const need = o ? 0 : d.type.listSize ? end * d.type.listSize : end;
      if (c.offset + c.length < need) return `${where}: child ${i} holds ${c.length} values, ${need} needed`;
      stack.push([c, `${where}, child ${i}`]);
    }
    for (const dd of d.dictionary?.data ?? []) stack.push([dd, `${where}'s dictionary`]);
  }
  return undefined;
}
