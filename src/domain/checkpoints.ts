/**
 * What a checkpoint path holds, decided in one place for the model host and the editor's pickers: a PEFT LoRA
 * adapter, a Hugging Face folder (config.json + safetensors), or an ONNX decoder export (a folder in one of the
 * known layouts, or the graph file). Files only: nothing here loads a model.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { CheckpointError } from './checkpointError';
import { missingWeights, readAdapterConfig, readDecoderSpec } from './hfConfig';
import { FILE_LIMITS, readTextChecked } from './files';

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

/** The Hugging Face hub cache, where transformers and huggingface-cli keep downloaded models. */
export function hubCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.HF_HUB_CACHE) return env.HF_HUB_CACHE;
  if (env.HF_HOME) return path.join(env.HF_HOME, 'hub');
  return path.join(env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'), 'huggingface', 'hub');
}

/** A Hub id's snapshot in the hub cache: the revision refs/main names, else the only snapshot there. */
function hubSnapshot(id: string, env: NodeJS.ProcessEnv): string | undefined {
  if (!/^[\w.-]+\/[\w.-]+$/.test(id)) return undefined;
  const repo = path.join(hubCacheDir(env), `models--${id.replace('/', '--')}`);
  try {
    const main = readTextChecked(path.join(repo, 'refs', 'main'), 1024).trim();
    if (/^[0-9a-f]{40}$/.test(main)) return path.join(repo, 'snapshots', main);
  } catch {
    // no refs/main: a cache filled by revision
  }
  try {
    const snaps = fs.readdirSync(path.join(repo, 'snapshots'));
    return snaps.length === 1 ? path.join(repo, 'snapshots', snaps[0]) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The base model folder a LoRA adapter was trained over, from its adapter_config.json's `base_model_name_or_path`:
 * a folder (as given, from the working folder, or beside the adapter), else a Hub id's snapshot in the hub cache.
 * Lets an adapter stand in the base role (plain LoRA vs TReFT LoRA, seed 1 vs seed 2) over one copy of the base.
 */
export function adapterBaseFolder(
  adapter: string,
  env: NodeJS.ProcessEnv = process.env,
): { folder: string; named: string } | { error: string } {
  let named: unknown;
  try {
    named = JSON.parse(
      readTextChecked(path.join(adapter, 'adapter_config.json'), FILE_LIMITS.config),
    ).base_model_name_or_path;
  } catch (e) {
    return { error: `adapter_config.json cannot be read (${(e as Error).message})` };
  }
  if (typeof named !== 'string' || !named)
    return {
      error:
        'adapter_config.json names no base_model_name_or_path, so the base this adapter was trained over is unknown: give the base model folder as the base and this adapter as the finetuned checkpoint',
    };
  const candidates = path.isAbsolute(named)
    ? [named]
    : [path.resolve(named), path.resolve(adapter, named), path.resolve(path.dirname(adapter), named)];
  const snapshot = hubSnapshot(named, env);
  if (snapshot) candidates.push(snapshot);
  const folder = candidates.find((c) => isHfFolder(c) && !isAdapterFolder(c));
  if (folder) return { folder, named };
  return {
    error: `this adapter was trained over "${named}", which is neither a model folder here nor a download in the Hugging Face cache (${hubCacheDir(env)}): download it there (huggingface-cli download ${named}), or set base_model_name_or_path in adapter_config.json to the base model's folder`,
  };
}

/**
 * Why a checkpoint path cannot be loaded, found with the checks a load makes before it reads any weight (the kind
 * of folder, config.json's architecture and settings, adapter_config.json, safetensors rather than a pickle; an
 * adapter picked as the base needs its base model here): what the editor's pickers run before accepting a
 * folder. Undefined when those checks pass; the load may still refuse what only the tensors show.
 */
export function checkpointProblem(
  p: string,
  role: 'base' | 'finetuned',
): { message: string; file?: string } | undefined {
  const k = checkpointKind(p);
  if ('error' in k) return { message: `${p}: ${k.error}` };
  try {
    if (k.kind === 'hf') {
      readDecoderSpec(p);
      const missing = missingWeights(p, 'model.safetensors', 'model.safetensors.index.json');
      if (missing) throw missing;
    } else if (k.kind === 'adapter') {
      readAdapterConfig(p);
      if (role === 'base') {
        const under = adapterBaseFolder(p);
        if ('error' in under) return { message: `${p} is a LoRA adapter, and ${under.error}` };
        return checkpointProblem(under.folder, 'base');
      }
    }
  } catch (e) {
    if (e instanceof CheckpointError) return { message: e.message, file: e.file };
    // a config file that cannot be read (too large, not a regular file, not JSON): said as it is
    if (e instanceof Error) return { message: e.message };
    throw e;
  }
  return undefined;
}
