/**
 * The safetensors format (huggingface/safetensors): an 8-byte little-endian header length, a JSON header naming
 * each tensor's dtype, shape and byte range, then the raw little-endian data. Float32 only, which is all the
 * TReFT export writes; loadable with safetensors.torch.load_file / safetensors.numpy.load_file.
 */
import * as fs from 'node:fs';
import { FileRefusedError, openRegularFile } from './files';

export interface Tensor {
  shape: number[];
  data: Float32Array;
}

export function writeSafetensors(
  file: string,
  tensors: Record<string, Tensor>,
  metadata: Record<string, string> = {},
): number {
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length) header.__metadata__ = metadata;
  let offset = 0;
  const names = Object.keys(tensors);
  for (const name of names) {
    const t = tensors[name];
    const n = t.shape.reduce((a, b) => a * b, 1);
    if (n !== t.data.length)
      throw new Error(`tensor ${name}: shape [${t.shape}] holds ${n} values, data has ${t.data.length}`);
    header[name] = { dtype: 'F32', shape: t.shape, data_offsets: [offset, offset + 4 * n] };
    offset += 4 * n;
  }
  let json = Buffer.from(JSON.stringify(header), 'utf8');
  // pad the header with spaces so that the data starts 8-byte aligned
  const pad = (8 - (json.length % 8)) % 8;
  if (pad) json = Buffer.concat([json, Buffer.alloc(pad, 0x20)]);
  const out = Buffer.alloc(8 + json.length + offset);
  out.writeBigUInt64LE(BigInt(json.length), 0);
  json.copy(out, 8);
  let at = 8 + json.length;
  for (const name of names) {
    const d = tensors[name].data;
    for (let i = 0; i < d.length; i++) out.writeFloatLE(d[i], at + 4 * i);
    at += 4 * d.length;
  }
  fs.writeFileSync(file, out);
  return out.length;
}

/** A tensor's entry in a safetensors header; `begin`/`end` are absolute byte offsets into the file. */
export interface SafetensorsEntry {
  dtype: string;
  shape: number[];
  begin: number;
  end: number;
}

export interface SafetensorsHeader {
  file: string;
  /** Byte size of the whole file. */
  size: number;
  tensors: Map<string, SafetensorsEntry>;
  metadata: Record<string, string>;
}

/** Bad or truncated safetensors: the file and what is wrong with it. */
export class SafetensorsError extends Error {
  constructor(
    readonly file: string,
    readonly reason: string,
  ) {
    super(`${file}: ${reason}`);
    this.name = 'SafetensorsError';
  }
}

/** Bytes per element of the dtypes safetensors names (packed sub-byte types are absent: they have no fixed size). */
export const DTYPE_BYTES: Record<string, number> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U64: 8,
  U32: 4,
  U16: 2,
  U8: 1,
  BOOL: 1,
  F8_E4M3: 1,
  F8_E5M2: 1,
};

/** A header larger than this is not a real checkpoint (the format's own readers cap it at 100 MB). */
const MAX_HEADER = 100_000_000;

/**
 * Reads and checks the header only (the data stays on disk): the length prefix against the file size, the JSON,
 * and each tensor's byte range against its dtype, shape and the data section.
 */
export function readSafetensorsHeader(file: string): SafetensorsHeader {
  let fd: number;
  let st: { size: number };
  try {
    const opened = openRegularFile(file);
    fd = opened.fd;
    st = opened;
  } catch (e) {
    if (e instanceof FileRefusedError) throw new SafetensorsError(file, e.reason);
    throw new SafetensorsError(
      file,
      (e as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : `cannot open (${(e as Error).message})`,
    );
  }
  try {
    if (st.size < 8)
      throw new SafetensorsError(file, `truncated: ${st.size} bytes, shorter than the 8-byte header length`);
    const lenBuf = Buffer.alloc(8);
    fs.readSync(fd, lenBuf, 0, 8, 0);
    const n = Number(lenBuf.readBigUInt64LE(0));
    if (n > st.size - 8)
      throw new SafetensorsError(
        file,
        `truncated: the header says it is ${n} bytes long, but the file has ${st.size - 8} bytes after the length`,
      );
    if (n > MAX_HEADER)
      throw new SafetensorsError(
        file,
        `header of ${n} bytes is larger than any real checkpoint's (limit ${MAX_HEADER})`,
      );
    const json = Buffer.alloc(n);
    fs.readSync(fd, json, 0, n, 8);
    let raw: unknown;
    try {
      raw = JSON.parse(json.toString('utf8'));
    } catch (e) {
      throw new SafetensorsError(file, `the header is not valid JSON (${(e as Error).message})`);
    }
    if (!raw || typeof raw !== 'object' || Array.isArray(raw))
      throw new SafetensorsError(file, 'the header is not a JSON object');
    const dataStart = 8 + n;
    const dataSize = st.size - dataStart;
    const tensors = new Map<string, SafetensorsEntry>();
    let metadata: Record<string, string> = {};
    for (const [name, h] of Object.entries(raw as Record<string, unknown>)) {
      if (name === '__metadata__') {
        metadata = (h ?? {}) as Record<string, string>;
        continue;
      }
      const e = h as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
      const offsets = e?.data_offsets;
      if (
        typeof e?.dtype !== 'string' ||
        !Array.isArray(e.shape) ||
        !e.shape.every((d) => Number.isInteger(d) && d >= 0) ||
        !Array.isArray(offsets) ||
        offsets.length !== 2 ||
        !offsets.every((o) => Number.isInteger(o) && o >= 0)
      ) {
        throw new SafetensorsError(
          file,
          `tensor "${name}": the header entry needs dtype, shape and data_offsets [begin, end]`,
        );
      }
      const [b, end] = offsets as [number, number];
      if (end < b || end > dataSize)
        throw new SafetensorsError(
          file,
          `tensor "${name}": bytes [${b}, ${end}) lie outside the ${dataSize}-byte data section (truncated file?)`,
        );
      const size = DTYPE_BYTES[e.dtype];
      const count = (e.shape as number[]).reduce((a, x) => a * x, 1);
      if (size !== undefined && count * size !== end - b)
        throw new SafetensorsError(
          file,
          `tensor "${name}": ${e.dtype} [${e.shape}] needs ${count * size} bytes, the header gives ${end - b}`,
        );
      tensors.set(name, { dtype: e.dtype, shape: e.shape as number[], begin: dataStart + b, end: dataStart + end });
    }
    // the format's readers refuse tensors that share bytes: two names over one range would measure another model
    const byStart = [...tensors.entries()].filter(([, t]) => t.end > t.begin).sort((x, y) => x[1].begin - y[1].begin);
    for (let i = 1; i < byStart.length; i++) {
      const [prevName, prev] = byStart[i - 1];
      const [name, t] = byStart[i];
      if (t.begin < prev.end)
        throw new SafetensorsError(
          file,
          `tensors "${prevName}" and "${name}" overlap (bytes ${prev.begin - dataStart}-${prev.end - dataStart} and ${t.begin - dataStart}-${t.end - dataStart}): the format forbids it`,
        );
    }
    return { file, size: st.size, tensors, metadata };
  } finally {
    fs.closeSync(fd);
  }
}

/** Reads a whole float32 safetensors file (the TReFT export's own files). */
export function readSafetensors(file: string): { tensors: Record<string, Tensor>; metadata: Record<string, string> } {
  const header = readSafetensorsHeader(file);
  const buf = fs.readFileSync(file);
  const tensors: Record<string, Tensor> = {};
  for (const [name, h] of header.tensors) {
    if (h.dtype !== 'F32') throw new Error(`tensor ${name}: dtype ${h.dtype} is not supported (F32 only)`);
    const data = new Float32Array((h.end - h.begin) / 4);
    for (let i = 0; i < data.length; i++) data[i] = buf.readFloatLE(h.begin + 4 * i);
    tensors[name] = { shape: h.shape, data };
  }
  return { tensors, metadata: header.metadata };
}
