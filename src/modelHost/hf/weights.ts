/**
 * The weight files of a Hugging Face checkpoint (safetensors, one file or shards listed in
 * model.safetensors.index.json) as byte ranges the ONNX graph can point at. onnxruntime reads float32 external data
 * straight out of a safetensors file; float16 and bfloat16 weights are converted once into a float32 cache keyed by
 * the content hash of their source files (written under a temporary name, then renamed, its size announced first).
 * Quantized matrices (int8, int4: MatMulNBits codes and scales) are written into the same kind of cache file,
 * streamed a block of rows at a time, so that converting an 8B checkpoint never holds more than one block.
 */
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { WeightsDtype } from '../../contracts/modelHost';
import { readSafetensorsHeader, SafetensorsError } from '../../domain/safetensors';
import { CheckpointError } from '../errors';
import { fileHash } from '../identity';
import { halfToFloat } from '../onnxInitializers';
import { missingWeights, readJson } from '../../domain/hfConfig';
import { type QuantBits, quantBytes, quantizeRows, quantLayout } from './quantize';

export interface WeightRef {
  name: string;
  /** Real path (symlinks resolved: a Hugging Face cache snapshot links every file into blobs/). */
  file: string;
  dtype: string;
  shape: number[];
  begin: number;
  end: number;
}

/** The dtypes the host converts or reads as they are. Everything else (F8, integers, packed 4-bit) is refused. */
const FLOAT_DTYPES = new Set(['F32', 'F16', 'BF16']);

export class WeightIndex {
  private constructor(
    readonly folder: string,
    readonly files: string[],
    private readonly byName: Map<string, WeightRef>,
  ) {}

  /** The safetensors weights of `folder`: `model.safetensors`, or the shards its index names. */
  static open(folder: string, single = 'model.safetensors', indexName = 'model.safetensors.index.json'): WeightIndex {
    const indexFile = path.join(folder, indexName);
    const singleFile = path.join(folder, single);
    let files: string[];
    let expected: Map<string, string> | undefined;
    if (fs.existsSync(indexFile)) {
      const index = readJson(indexFile);
      const map = index.weight_map as Record<string, unknown> | undefined;
      if (!map || typeof map !== 'object') throw new CheckpointError('no "weight_map" object', indexFile);
      expected = new Map();
      for (const [tensor, f] of Object.entries(map)) {
        if (typeof f !== 'string' || f.includes('/') || f.includes('\\') || f.startsWith('.'))
          throw new CheckpointError(
            `tensor "${tensor}" maps to "${String(f)}", not a file name in this folder`,
            indexFile,
          );
        expected.set(tensor, f);
      }
      files = [...new Set(expected.values())].sort();
      for (const f of files) {
        if (!fs.existsSync(path.join(folder, f))) {
          const n = [...expected.values()].filter((x) => x === f).length;
          throw new CheckpointError(`names ${f} (${n} tensors), but that file is missing from ${folder}`, indexFile);
        }
      }
    } else if (fs.existsSync(singleFile)) {
      files = [single];
    } else {
      throw missingWeights(folder, single, indexName) ?? new CheckpointError(`no ${single} or ${indexName}`, folder);
    }
    const byName = new Map<string, WeightRef>();
    const real: string[] = [];
    for (const f of files) {
      const file = fs.realpathSync(path.join(folder, f));
      real.push(file);
      let header: ReturnType<typeof readSafetensorsHeader>;
      try {
        header = readSafetensorsHeader(file);
      } catch (e) {
        if (e instanceof SafetensorsError) throw new CheckpointError(e.reason, path.join(folder, f));
        throw e;
      }
      for (const [name, t] of header.tensors)
        byName.set(name, { name, file, dtype: t.dtype, shape: t.shape, begin: t.begin, end: t.end });
    }
    if (expected) {
      for (const [tensor, f] of expected) {
        const ref = byName.get(tensor);
        if (!ref)
          throw new CheckpointError(
            `the index places "${tensor}" in ${f}, but that file's header has no such tensor`,
            indexFile,
          );
      }
    }
    return new WeightIndex(folder, real, byName);
  }

  get(name: string): WeightRef | undefined {
    return this.byName.get(name);
  }

  names(): IterableIterator<string> {
    return this.byName.keys();
  }

  /** A tensor that must exist, with the shape it must have, in a dtype the host can use. */
  require(name: string, shape: number[], what = 'the model'): WeightRef {
    const ref = this.byName.get(name);
    if (!ref)
      throw new CheckpointError(
        `${what} needs tensor "${name}", which is not in the weights`,
        this.files.length === 1 ? this.files[0] : this.folder,
      );
    checkRef(ref, shape);
    return ref;
  }
}

export function checkRef(ref: WeightRef, shape: number[]): void {
  if (!FLOAT_DTYPES.has(ref.dtype)) {
    throw new CheckpointError(
      `tensor "${ref.name}" is ${ref.dtype}; only F32, F16 and BF16 weights are supported (quantized or 8-bit weights are not: use the unquantized checkpoint or an ONNX export)`,
      ref.file,
    );
  }
  if (ref.shape.length !== shape.length || ref.shape.some((d, i) => d !== shape[i])) {
    throw new CheckpointError(
      `tensor "${ref.name}" has shape [${ref.shape}], config.json implies [${shape}]`,
      ref.file,
    );
  }
}

// ------------------------------------------------------------------------------------------------ float32 data

/** Where the graph finds a tensor's bytes: a file name inside `dir`, and the byte range. */
export interface ExternalLocation {
  location: string;
  offset: number;
  length: number;
}

/** The dtypes the graph takes weights in: float32, float16, or block-quantized codes (MatMulNBits) of 8 or 4 bits. */
export type WeightDtype = 'F32' | 'F16' | 'Q8' | 'Q4';

export const quantBitsOf = (d: WeightDtype): QuantBits | undefined => (d === 'Q8' ? 8 : d === 'Q4' ? 4 : undefined);

/** The cache-file name of a quantized matrix's scales (its codes keep the tensor's own name). */
export const scalesName = (tensor: string) => `${tensor}.scales`;

/** Bytes a tensor of this shape takes in the graph in `d` (codes and scales for quantized matrices). */
export function bytesIn(shape: number[], d: WeightDtype): number {
  const bits = quantBitsOf(d);
  if (bits) {
    const q = quantBytes(quantLayout(shape[0], shape[1], bits));
    return q.codes + q.scales;
  }
  return shape.reduce((a, b) => a * b, 1) * (d === 'F32' ? 4 : 2);
}

const DTYPE_WORDS = { F32: 'float32', F16: 'float16', Q8: 'int8', Q4: 'int4' } as const satisfies Record<
  WeightDtype,
  WeightsDtype
>;
export const dtypeWord = (d: WeightDtype): WeightsDtype => DTYPE_WORDS[d];

export interface CastWeights {
  /** The one folder all locations are relative to (onnxruntime's external-initializer folder). */
  dir: string;
  locate(name: string): ExternalLocation;
  /** Bytes converted into the cache by this load (0 when reused or when the weights are usable as they are). */
  convertedBytes: number;
  /** The cache file, when one is used. */
  cacheFile?: string;
}

const CONVERTER_VERSION = 'cast-v2';

/**
 * The bytes of every tensor in `refs` in the dtype `target` gives it (float32, or float16 for the matrices of a
 * GPU graph). Where every tensor already has its target dtype and all live in one folder, the source files serve as
 * they are; otherwise all are written into one safetensors file in `cacheDir/weights/`, named by the content hash of
 * what it was converted from and to, and reused by later loads.
 */
export function castWeights(
  refs: WeightRef[],
  target: (r: WeightRef) => WeightDtype,
  cacheDir: string,
  log: (message: string) => void,
): CastWeights {
  const dirs = new Set(refs.map((r) => path.dirname(r.file)));
  if (refs.every((r) => r.dtype === target(r)) && dirs.size === 1) {
    const byName = new Map(refs.map((r) => [r.name, r]));
    return {
      dir: [...dirs][0],
      convertedBytes: 0,
      locate: (name) => {
        const r = byName.get(name)!;
        return { location: path.basename(r.file), offset: r.begin, length: r.end - r.begin };
      },
    };
  }
  const sorted = [...refs].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const sourceHashes = new Map<string, string>();
  for (const f of new Set(sorted.map((r) => r.file))) sourceHashes.set(f, fileHash(f, cacheDir));
  const key = createHash('sha256')
    .update(CONVERTER_VERSION)
    .update(
      JSON.stringify(
        sorted.map((r) => [r.name, sourceHashes.get(r.file), r.dtype, target(r), r.shape, r.begin, r.end]),
      ),
    )
    .digest('hex')
    .slice(0, 32);
  const dir = path.join(cacheDir, 'weights');
  const file = path.join(dir, `${key}.safetensors`);
  const layout = new Map<string, { begin: number; end: number }>();
  const header: Record<string, unknown> = {
    __metadata__: { format: 'pt', converted_by: `piggyback-lens ${CONVERTER_VERSION}` },
  };
  let offset = 0;
  const place = (name: string, dtype: string, shape: number[], n: number) => {
    header[name] = { dtype, shape, data_offsets: [offset, offset + n] };
    layout.set(name, { begin: offset, end: offset + n });
    offset += n;
  };
  for (const r of sorted) {
    const bits = quantBitsOf(target(r));
    if (bits) {
      const l = quantLayout(r.shape[0], r.shape[1], bits);
      const q = quantBytes(l);
      place(r.name, 'U8', [l.rows, l.kBlocks, l.blob], q.codes);
      place(scalesName(r.name), 'F32', [l.rows * l.kBlocks], q.scales);
    } else place(r.name, target(r), r.shape, bytesIn(r.shape, target(r)));
  }
  let json = Buffer.from(JSON.stringify(header), 'utf8');
  const pad = (8 - (json.length % 8)) % 8;
  if (pad) json = Buffer.concat([json, Buffer.alloc(pad, 0x20)]);
  const dataStart = 8 + json.length;
  const total = dataStart + offset;
  let convertedBytes = 0;
  if (!isComplete(file, total) || !verified(file, cacheDir, log)) {
    fs.mkdirSync(dir, { recursive: true });
    const from = [...new Set(sorted.map((r) => r.dtype))].join('/');
    const to = [...new Set(sorted.map(target))].map(dtypeWord).join(' and ');
    const free = freeBytes(dir);
    if (free !== undefined && free < total)
      throw new CheckpointError(
        `converting the ${from} weights to ${to} needs ${gb(total)} in the cache, but only ${gb(free)} is free (set PIGGYBACK_CACHE_DIR or --cache-dir to another disk)`,
        dir,
      );
    log(`converting ${sorted.length} ${from} tensors to ${to} once: writing ${gb(total)} to ${file}`);
    writeConverted(file, json, sorted, target, (name) => dataStart + layout.get(name)!.begin);
    fs.writeFileSync(`${file}.sha256`, `${fileHash(file, cacheDir)}\n`);
    convertedBytes = total;
  }
  return {
    dir,
    cacheFile: file,
    convertedBytes,
    locate: (name) => {
      const l = layout.get(name)!;
      return { location: path.basename(file), offset: dataStart + l.begin, length: l.end - l.begin };
    },
  };
}

/** Every tensor as float32 (the CPU graph). */
export function float32Weights(refs: WeightRef[], cacheDir: string, log: (message: string) => void): CastWeights {
  return castWeights(refs, () => 'F32', cacheDir, log);
}

/**
 * Whether a cache file still holds what was written: its SHA-256 against the one recorded beside it when it was
 * written (the hash memo makes this free while size and mtime are unchanged; a file overwritten in place is
 * hashed again and fails). A file without a record is not trusted.
 */
function verified(file: string, cacheDir: string, log: (message: string) => void): boolean {
  let recorded: string;
  try {
    recorded = fs.readFileSync(`${file}.sha256`, 'utf8').trim();
  } catch {
    log(
      `${file} has no record of its content hash (written by an older version, or the record is gone): converting again`,
    );
    return false;
  }
  if (fileHash(file, cacheDir) === recorded) return true;
  log(`${file} no longer holds what was written (its SHA-256 differs from the one recorded then): converting again`);
  return false;
}

function isComplete(file: string, size: number): boolean {
  try {
    return fs.statSync(file).size === size;
  } catch {
    return false;
  }
}

function freeBytes(dir: string): number | undefined {
  try {
    const s = fs.statfsSync(dir);
    return s.bavail * s.bsize;
  } catch {
    return undefined;
  }
}

export function gb(bytes: number): string {
  return bytes >= 1e9 ? `${(bytes / 1e9).toFixed(2)} GB` : `${(bytes / 1e6).toFixed(1)} MB`;
}

const CHUNK = 1 << 22; // elements per conversion step

/** Writes the cache file under a temporary name, then renames it: a crash or a full disk leaves nothing half-written. */
function writeConverted(
  file: string,
  header: Buffer,
  refs: WeightRef[],
  target: (r: WeightRef) => WeightDtype,
  position: (name: string) => number,
): void {
  const tmp = `${file}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  const out = fs.openSync(tmp, 'w');
  try {
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(header.length));
    fs.writeSync(out, len);
    fs.writeSync(out, header);
    const half = new Uint16Array(CHUNK);
    // every write names its position: quantized matrices write codes and scales at two places at once
    for (const r of refs) {
      let at = position(r.name);
      const write = (bytes: Uint8Array) => {
        fs.writeSync(out, bytes, 0, bytes.byteLength, at);
        at += bytes.byteLength;
      };
      const bits = quantBitsOf(target(r));
      if (bits) writeQuantized(out, r, bits, at, position(scalesName(r.name)));
      else if (target(r) === 'F16' && r.dtype === 'F16') forEachRawChunk(r, write);
      else if (target(r) === 'F16') {
        forEachFloat32Chunk(r, (bytes) => {
          const f = new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
          for (let i = 0; i < f.length; i++) half[i] = f32BitsToF16(f[i]);
          write(new Uint8Array(half.buffer, 0, 2 * f.length));
        });
      } else forEachFloat32Chunk(r, write);
    }
    fs.closeSync(out);
    fs.renameSync(tmp, file);
  } catch (e) {
    try {
      fs.closeSync(out);
    } catch {
      // already closed
    }
    throw e;
  } finally {
    fs.rmSync(tmp, { force: true });
  }
}

/** A matrix's codes and scales, quantized a block of whole rows at a time and written at their places in the file. */
function writeQuantized(out: number, r: WeightRef, bits: QuantBits, codesAt: number, scalesAt: number): void {
  const l = quantLayout(r.shape[0], r.shape[1], bits);
  const rowsPerChunk = Math.max(1, Math.floor(CHUNK / l.cols));
  const codes = new Uint8Array(rowsPerChunk * l.kBlocks * l.blob);
  const scales = new Float32Array(rowsPerChunk * l.kBlocks);
  let row = 0;
  forEachFloat32Chunk(
    r,
    (bytes) => {
      const rows = bytes.byteLength / 4 / l.cols;
      quantizeRows(new Float32Array(bytes.buffer, bytes.byteOffset, rows * l.cols), rows, l, codes, scales);
      const c = rows * l.kBlocks * l.blob;
      fs.writeSync(out, codes, 0, c, codesAt + row * l.kBlocks * l.blob);
      fs.writeSync(
        out,
        new Uint8Array(scales.buffer, 0, rows * l.kBlocks * 4),
        0,
        rows * l.kBlocks * 4,
        scalesAt + row * l.kBlocks * 4,
      );
      row += rows;
    },
    rowsPerChunk * l.cols,
  );
}

/** IEEE float32 bits to float16 bits, rounding to nearest even (as torch's .half() does). */
export function f32BitsToF16(b: number): number {
  const sign = (b >>> 16) & 0x8000;
  const e8 = (b >>> 23) & 0xff;
  const mant = b & 0x7fffff;
  if (e8 === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const exp = e8 - 112;
  if (exp >= 31) return sign | 0x7c00;
  if (exp <= 0) {
    if (exp < -10) return sign;
    const m = mant | 0x800000;
    const shift = 14 - exp;
    let h = m >>> shift;
    const rem = m & ((1 << shift) - 1);
    const halfway = 1 << (shift - 1);
    if (rem > halfway || (rem === halfway && h & 1)) h++;
    return sign | h;
  }
  let h = (exp << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && h & 1)) h++;
  return sign | h;
}

/** A tensor's bytes as they are, in chunks of at most `chunkBytes` (a whole number of elements). */
function forEachRawChunk(r: WeightRef, sink: (bytes: Uint8Array) => void, chunkBytes = CHUNK * 4): void {
  const fd = fs.openSync(r.file, 'r');
  try {
    const buf = new Uint8Array(chunkBytes);
    for (let at = r.begin; at < r.end; ) {
      const n = Math.min(buf.length, r.end - at);
      const got = fs.readSync(fd, buf, 0, n, at);
      if (got !== n) throw new CheckpointError(`tensor "${r.name}": the file ended early`, r.file);
      sink(buf.subarray(0, n));
      at += n;
    }
  } finally {
    fs.closeSync(fd);
  }
}

let halfTable: Float32Array | undefined;

/** Streams a tensor as float32 bytes, converting F16/BF16 chunk by chunk, `elements` at a time (the last may be fewer). */
function forEachFloat32Chunk(r: WeightRef, sink: (bytes: Uint8Array) => void, elements = CHUNK): void {
  if (r.dtype === 'F32') {
    forEachRawChunk(r, sink, elements * 4);
    return;
  }
  const dst = new Float32Array(elements);
  forEachRawChunk(
    r,
    (bytes) => {
      const n = bytes.byteLength / 2;
      const u16 = new Uint16Array(bytes.buffer, bytes.byteOffset, n);
      if (r.dtype === 'BF16') {
        const u32 = new Uint32Array(dst.buffer, 0, n);
        for (let i = 0; i < n; i++) u32[i] = u16[i] << 16;
      } else {
        halfTable ??= Float32Array.from({ length: 65536 }, (_, i) => halfToFloat(i));
        for (let i = 0; i < n; i++) dst[i] = halfTable[u16[i]];
      }
      sink(new Uint8Array(dst.buffer, 0, n * 4));
    },
    elements * 2,
  );
}

/** A whole tensor as float32 in memory (small tensors: adapters, the embedding matrix for perturbation). */
export function readFloat32(r: WeightRef): Float32Array {
  const out = new Float32Array((r.end - r.begin) / (r.dtype === 'F32' ? 4 : 2));
  let at = 0;
  forEachFloat32Chunk(r, (bytes) => {
    out.set(new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4), at);
    at += bytes.byteLength / 4;
  });
  return out;
}
