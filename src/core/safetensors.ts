/**
 * The safetensors format (huggingface/safetensors): an 8-byte little-endian header length, a JSON header naming
 * each tensor's dtype, shape and byte range, then the raw little-endian data. Float32 only, which is all the
 * TReFT export writes; loadable with safetensors.torch.load_file / safetensors.numpy.load_file.
 */
import * as fs from 'node:fs';

export interface Tensor {
  shape: number[];
  data: Float32Array;
}

export function writeSafetensors(file: string, tensors: Record<string, Tensor>, metadata: Record<string, string> = {}): number {
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length) header.__metadata__ = metadata;
  let offset = 0;
  const names = Object.keys(tensors);
  for (const name of names) {
    const t = tensors[name];
    const n = t.shape.reduce((a, b) => a * b, 1);
    if (n !== t.data.length) throw new Error(`tensor ${name}: shape [${t.shape}] holds ${n} values, data has ${t.data.length}`);
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

export function readSafetensors(file: string): { tensors: Record<string, Tensor>; metadata: Record<string, string> } {
  const buf = fs.readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  const tensors: Record<string, Tensor> = {};
  let metadata: Record<string, string> = {};
  for (const [name, h] of Object.entries(header)) {
    if (name === '__metadata__') {
      metadata = h as unknown as Record<string, string>;
      continue;
    }
    if (h.dtype !== 'F32') throw new Error(`tensor ${name}: dtype ${h.dtype} is not supported (F32 only)`);
    const [s, e] = h.data_offsets;
    const data = new Float32Array((e - s) / 4);
    for (let i = 0; i < data.length; i++) data[i] = buf.readFloatLE(8 + n + s + 4 * i);
    tensors[name] = { shape: h.shape, data };
  }
  return { tensors, metadata };
}
