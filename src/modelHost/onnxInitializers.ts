/**
 * Reads one initializer (a weight tensor) out of an ONNX file. onnxruntime does not expose weights, and the
 * perturbation needs the input embedding matrix. This is a minimal protobuf reader for the few ModelProto fields
 * involved (graph.initializer: name, dims, data_type, raw_data / float_data, external data locations).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CheckpointError } from './errors';
import { FILE_LIMITS, insideRoot, openRegularFile, readFileChecked } from '../domain/files';

export interface Initializer {
  name: string;
  dims: number[];
  data: Float32Array;
}

interface RawTensor {
  name: string;
  dims: number[];
  dataType: number;
  raw?: Uint8Array;
  floats?: number[];
  external?: Record<string, string>;
}

const FLOAT = 1;
const FLOAT16 = 10;

class Reader {
  pos = 0;
  constructor(
    readonly buf: Uint8Array,
    readonly end = buf.length,
  ) {}
  varint(): number {
    let result = 0;
    let shift = 0;
    while (true) {
      // a file cut inside a varint, or bytes that are not protobuf, end here rather than loop
      if (this.pos >= this.end) throw new OnnxParseError('cut inside a number');
      if (shift > 63) throw new OnnxParseError('a number longer than 64 bits');
      const b = this.buf[this.pos++];
      result += (b & 0x7f) * 2 ** shift;
      if (b < 0x80) return result;
      shift += 7;
    }
  }
  /** Returns [field, wireType] or undefined at the end. */
  tag(): [number, number] | undefined {
    if (this.pos >= this.end) return undefined;
    const t = this.varint();
    return [Math.floor(t / 8), t & 7];
  }
  bytes(): Uint8Array {
    const n = this.varint();
    if (n > this.end - this.pos) throw new OnnxParseError(`a field of ${n} bytes with ${this.end - this.pos} left`);
    const out = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }
  skip(wire: number): void {
    if (wire === 0) this.varint();
    else if (wire === 1) this.pos += 8;
    else if (wire === 2) {
      // read the length before moving: `this.pos += this.varint()` would add it to the position before the varint
      const n = this.varint();
      this.pos += n;
    } else if (wire === 5) this.pos += 4;
    else throw new OnnxParseError(`protobuf wire type ${wire}, which ONNX does not use`);
    if (this.pos > this.end) throw new OnnxParseError('a field past the end');
  }
}

/** Bytes that are not an ONNX model (cut short, damaged, another format): said with the file by the caller. */
class OnnxParseError extends Error {}

/** The file's bytes, read through the file gate (a regular file under the cap), parsed with `read`. */
function parseModel<T>(modelFile: string, read: (buf: Uint8Array) => T): T {
  const buf = new Uint8Array(readFileChecked(modelFile, FILE_LIMITS.onnx));
  try {
    return read(buf);
  } catch (e) {
    if (e instanceof OnnxParseError)
      throw new CheckpointError(`not a readable ONNX model (${e.message}): a damaged or cut-short file?`, modelFile);
    throw e;
  }
}

const text = new TextDecoder();

function readTensor(buf: Uint8Array): RawTensor {
  const r = new Reader(buf);
  const t: RawTensor = { name: '', dims: [], dataType: 0 };
  const externals: Uint8Array[] = [];
  for (let tag = r.tag(); tag; tag = r.tag()) {
    const [field, wire] = tag;
    if (field === 1 && wire === 0) t.dims.push(r.varint());
    else if (field === 1 && wire === 2) {
      const packed = new Reader(r.bytes());
      while (packed.pos < packed.end) t.dims.push(packed.varint());
    } else if (field === 2 && wire === 0) t.dataType = r.varint();
    else if (field === 8 && wire === 2) t.name = text.decode(r.bytes());
    else if (field === 9 && wire === 2) t.raw = r.bytes();
    else if (field === 4 && wire === 2) {
      const b = r.bytes();
      const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
      t.floats = Array.from({ length: b.byteLength / 4 }, (_, i) => dv.getFloat32(i * 4, true));
    } else if (field === 13 && wire === 2) externals.push(r.bytes());
    else r.skip(wire);
  }
  if (externals.length) {
    t.external = {};
    for (const e of externals) {
      const er = new Reader(e);
      let key = '';
      let value = '';
      for (let et = er.tag(); et; et = er.tag()) {
        if (et[0] === 1) key = text.decode(er.bytes());
        else if (et[0] === 2) value = text.decode(er.bytes());
        else er.skip(et[1]);
      }
      t.external[key] = value;
    }
  }
  return t;
}

/** Initializers of the main graph, one at a time (raw bytes are views into `buf`, not copies). */
function* initializers(buf: Uint8Array): Generator<RawTensor> {
  const model = new Reader(buf);
  for (let tag = model.tag(); tag; tag = model.tag()) {
    if (tag[0] !== 7 || tag[1] !== 2) {
      model.skip(tag[1]);
      continue;
    }
    const graph = new Reader(model.bytes());
    for (let g = graph.tag(); g; g = graph.tag()) {
      if (g[0] !== 5 || g[1] !== 2) {
        graph.skip(g[1]);
        continue;
      }
      yield readTensor(graph.bytes());
    }
  }
}

const externalCache = new Map<string, { size: number; mtimeMs: number; files: string[] }>();

/**
 * The external data files a graph's initializers name (absolute paths, each once, in first-use order). Remembered
 * by path, size and mtime: a load asks twice (memory estimate, identity), and a graph can be large.
 */
export function externalDataFiles(modelFile: string): string[] {
  const st = fs.statSync(modelFile);
  const hit = externalCache.get(modelFile);
  if (hit && hit.size === st.size && hit.mtimeMs === st.mtimeMs) return hit.files;
  const files = new Set<string>();
  parseModel(modelFile, (buf) => {
    for (const t of initializers(buf))
      if (t.external?.location) files.add(path.resolve(path.dirname(modelFile), t.external.location));
  });
  externalCache.set(modelFile, { size: st.size, mtimeMs: st.mtimeMs, files: [...files] });
  return [...files];
}

/** Finds the first initializer for which `match(name, dims)` holds. */
export function readInitializer(
  modelFile: string,
  match: (name: string, dims: number[]) => boolean,
): Initializer | undefined {
  return parseModel(modelFile, (buf) => {
    for (const t of initializers(buf))
      if (match(t.name, t.dims)) return { name: t.name, dims: t.dims, data: tensorData(t, modelFile) };
    return undefined;
  });
}

function tensorData(t: RawTensor, modelFile: string): Float32Array {
  const count = t.dims.reduce((a, b) => a * b, 1);
  let raw = t.raw;
  const need = count * (t.dataType === FLOAT16 ? 2 : 4);
  if (t.external?.location) {
    // external data: a regular file inside the model's folder, the range inside it, as long as the tensor needs
    const dir = path.dirname(modelFile);
    const file = path.join(dir, t.external.location);
    if (!insideRoot(dir, file))
      throw new CheckpointError(
        `initializer ${t.name} names external data outside the model's folder (${t.external.location})`,
        modelFile,
      );
    const offset = Number(t.external.offset ?? 0);
    const length = Number(t.external.length ?? need);
    const { fd, size } = openRegularFile(file);
    try {
      if (
        !Number.isSafeInteger(offset) ||
        !Number.isSafeInteger(length) ||
        offset < 0 ||
        length < need ||
        offset + length > size
      )
        throw new CheckpointError(
          `initializer ${t.name}: bytes ${offset} to ${offset + length} of a ${size}-byte file, for a tensor of ${need} bytes`,
          file,
        );
      raw = new Uint8Array(need);
      fs.readSync(fd, raw, 0, need, offset);
    } finally {
      fs.closeSync(fd);
    }
  }
  if (t.floats) return Float32Array.from(t.floats);
  if (!raw) throw new CheckpointError(`initializer ${t.name} has no data`, modelFile);
  if (raw.byteLength < need)
    throw new CheckpointError(`initializer ${t.name} holds ${raw.byteLength} bytes for a tensor of ${need}`, modelFile);
  const dv = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  const out = new Float32Array(count);
  if (t.dataType === FLOAT) for (let i = 0; i < count; i++) out[i] = dv.getFloat32(i * 4, true);
  else if (t.dataType === FLOAT16) for (let i = 0; i < count; i++) out[i] = halfToFloat(dv.getUint16(i * 2, true));
  else throw new Error(`initializer ${t.name} has data type ${t.dataType}; float32 or float16 expected`);
  return out;
}

export function halfToFloat(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const f = h & 0x3ff;
  if (e === 0) return s * 2 ** -14 * (f / 1024);
  if (e === 31) return f ? NaN : s * Infinity;
  return s * 2 ** (e - 15) * (1 + f / 1024);
}

export function floatToHalf(x: number): number {
  const buf = new DataView(new ArrayBuffer(4));
  buf.setFloat32(0, x);
  const bits = buf.getUint32(0);
  const sign = (bits >>> 16) & 0x8000;
  const exp = ((bits >>> 23) & 0xff) - 127 + 15;
  let mant = bits & 0x7fffff;
  if (exp >= 31) return sign | 0x7c00 | (((bits >>> 23) & 0xff) === 0xff && mant ? 0x200 : 0);
  if (exp <= 0) {
    if (exp < -10) return sign;
    mant = (mant | 0x800000) >> (1 - exp);
    return sign | ((mant + 0x1000) >> 13);
  }
  const half = sign | (exp << 10) | (mant >> 13);
  return mant & 0x1000 ? half + 1 : half;
}
