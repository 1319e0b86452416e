/**
 * What a checkpoint path holds, decided in one place for the model host and the editor's pickers: a PEFT LoRA
 * adapter, a Hugging Face folder (config.json + safetensors), or an ONNX decoder export (a folder in one of the
 * known layouts, or the graph file). Files only: nothing here loads a model.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

export type CheckpointKind = 'onnx' | 'hf' | 'adapter';

/** transformers.js names a graph's variants by suffix: model_fp16.onnx, model_q4.onnx, ... (the plain name is fp32). */
export const ONNX_VARIANT_SUFFIXES = ['', '_fp16', '_q4', '_q4f16', '_int8', '_uint8', '_bnb4', '_quantized'];

/** ONNX decoder layouts, in the order they are preferred: transformers.js (onnx/, each variant), then optimum (root). */
export const ONNX_MODEL_FILES = [
  ...ONNX_VARIANT_SUFFIXES.map((v) => `onnx/model${v}.onnx`),
  ...ONNX_VARIANT_SUFFIXES.map((v) => `onnx/decoder_model_merged${v}.onnx`),
  ...ONNX_VARIANT_SUFFIXES.map((v) => `model${v}.onnx`),
  ...ONNX_VARIANT_SUFFIXES.map((v) => `decoder_model_merged${v}.onnx`),
  'decoder_with_past_model.onnx',
];

const HF_WEIGHTS = [
  'model.safetensors',
  'model.safetensors.index.json',
  'pytorch_model.bin',
  'pytorch_model.bin.index.json',
];

export function isAdapterFolder(folder: string): boolean {
  return fs.existsSync(path.join(folder, 'adapter_config.json'));
}

export function isHfFolder(folder: string): boolean {
  return fs.existsSync(path.join(folder, 'config.json')) && HF_WEIGHTS.some((f) => fs.existsSync(path.join(folder, f)));
}

/** Every ONNX decoder graph of an export folder, as paths relative to it, in the order they are preferred. */
export function onnxVariants(folder: string): string[] {
  return ONNX_MODEL_FILES.filter((c) => fs.existsSync(path.join(folder, c)));
}

/**
 * The ONNX graph of an export folder: the one `choice` names (a relative path, a file name, or a variant suffix
 * such as "q4" or "fp16"), else the first in preference order. Undefined when the folder has none; an Error when
 * `choice` names none of those present.
 */
export function onnxModelFile(folder: string, choice?: string): string | undefined {
  const variants = onnxVariants(folder);
  if (!choice) return variants.length ? path.join(folder, variants[0]) : undefined;
  const wanted = choice.replace(/^_/, '');
  const hit = variants.find(
    (v) =>
      v === choice ||
      path.basename(v) === choice ||
      path.basename(v, '.onnx').endsWith(`_${wanted}`) ||
      (wanted === 'fp32' && /(^|\/)(model|decoder_model_merged)\.onnx$/.test(v)),
  );
  if (!hit)
    throw new Error(
      `no ONNX graph "${choice}" here (${variants.length ? `found ${variants.join(', ')}` : 'no ONNX graphs'})`,
    );
  return path.join(folder, hit);
}

/**
 * The folder holding a checkpoint's config.json and tokenizer files: the folder itself, or for an ONNX graph given
 * as a file (or an onnx/ folder), the graph's folder when it has config.json, else its parent (transformers.js).
 */
export function checkpointFolder(p: string): string {
  let isDir = false;
  try {
    isDir = fs.statSync(p).isDirectory();
  } catch {
    return p;
  }
  if (isDir && (fs.existsSync(path.join(p, 'config.json')) || isAdapterFolder(p))) return p;
  const dir = isDir ? p : path.dirname(p);
  return [dir, path.dirname(dir)].find((d) => fs.existsSync(path.join(d, 'config.json'))) ?? dir;
}

export const NO_CHECKPOINT =
  'no checkpoint found: expected a Hugging Face folder (config.json + model.safetensors or its shards), a PEFT adapter (adapter_config.json + adapter_model.safetensors), or an ONNX decoder export (' +
  ONNX_MODEL_FILES.join(', ') +
  ')';

/** The kind of checkpoint at `p`, or why it is none. An adapter wins over other files in the same folder. */
export function checkpointKind(p: string): { kind: CheckpointKind } | { error: string } {
  let st: fs.Stats;
  try {
    st = fs.statSync(p);
  } catch {
    return { error: 'no such file or folder' };
  }
  if (st.isFile()) {
    if (p.endsWith('.onnx')) return { kind: 'onnx' };
    if (p.endsWith('.safetensors'))
      return {
        error:
          'a weights file alone is not a checkpoint: give the folder that holds it with config.json (or adapter_config.json)',
      };
    return { error: 'not a checkpoint: give a model folder, an adapter folder or an .onnx file' };
  }
  if (isAdapterFolder(p)) return { kind: 'adapter' };
  if (isHfFolder(p)) return { kind: 'hf' };
  if (onnxModelFile(p)) return { kind: 'onnx' };
  return { error: NO_CHECKPOINT };
}
