/**
 * What a checkpoint path holds, decided in one place for the model host and the editor's pickers: a PEFT LoRA
 * adapter, a Hugging Face folder (config.json + safetensors), or an ONNX decoder export (a folder in one of the
 * known layouts, or the graph file). Files only: nothing here loads a model.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

export type CheckpointKind = 'onnx' | 'hf' | 'adapter';

/** ONNX decoder layouts, in the order they are preferred: transformers.js (onnx/), then optimum (root). */
export const ONNX_MODEL_FILES = [
  'onnx/model.onnx',
  'onnx/decoder_model_merged.onnx',
  'onnx/model_fp16.onnx',
  'onnx/model_quantized.onnx',
  'model.onnx',
  'decoder_model_merged.onnx',
  'decoder_with_past_model.onnx',
];

const HF_WEIGHTS = ['model.safetensors', 'model.safetensors.index.json', 'pytorch_model.bin', 'pytorch_model.bin.index.json'];

export function isAdapterFolder(folder: string): boolean {
  return fs.existsSync(path.join(folder, 'adapter_config.json'));
}

export function isHfFolder(folder: string): boolean {
  return fs.existsSync(path.join(folder, 'config.json')) && HF_WEIGHTS.some((f) => fs.existsSync(path.join(folder, f)));
}

/** The ONNX graph of an export folder, or undefined. */
export function onnxModelFile(folder: string): string | undefined {
  for (const c of ONNX_MODEL_FILES) {
    const f = path.join(folder, c);
    if (fs.existsSync(f)) return f;
  }
  return undefined;
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
    if (p.endsWith('.safetensors')) return { error: 'a weights file alone is not a checkpoint: give the folder that holds it with config.json (or adapter_config.json)' };
    return { error: 'not a checkpoint: give a model folder, an adapter folder or an .onnx file' };
  }
  if (isAdapterFolder(p)) return { kind: 'adapter' };
  if (isHfFolder(p)) return { kind: 'hf' };
  if (onnxModelFile(p)) return { kind: 'onnx' };
  return { error: NO_CHECKPOINT };
}
