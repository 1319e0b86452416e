/**
 * A Hugging Face `config.json` read into the decoder this host can build, or refused with one line that names what
 * is not supported. Both config forms are read: older (top-level `rope_theta`, `rope_scaling`, `torch_dtype`) and
 * newer (`rope_parameters`, `dtype`). Conventions: transformers' configuration classes; each default below is the
 * one transformers' own config class uses when the key is absent.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { FILE_LIMITS, FileRefusedError, readTextChecked } from './files';
import { CheckpointError } from './checkpointError';

export const SUPPORTED_MODEL_TYPES = ['llama', 'mistral', 'qwen2', 'qwen3'] as const;
export type ModelType = (typeof SUPPORTED_MODEL_TYPES)[number];

/** What to say after every refusal: the supported list and the way around it. */
export const ONNX_ROUTE = `supported: ${SUPPORTED_MODEL_TYPES.join(', ')}; for other architectures export an ONNX decoder with the KV cache (optimum-cli export onnx --task text-generation-with-past) and open that folder`;

export interface DecoderSpec {
  modelType: ModelType;
  layers: number;
  hidden: number;
  intermediate: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  vocab: number;
  rmsNormEps: number;
  /** RoPE inverse frequencies [headDim / 2], after any scaling, as float32 (what transformers computes). */
  invFreq: Float32Array;
  /** How RoPE was configured, in words (for the load message). */
  rope: string;
  /** Per-head RMSNorm on q and k before RoPE (qwen3). */
  qkNorm: boolean;
  /** Which projections carry a bias. */
  bias: { q: boolean; k: boolean; v: boolean; o: boolean; mlp: boolean };
  tieWordEmbeddings: boolean;
  /** Keys further back than this many positions are masked (mistral's sliding window); undefined: none. */
  slidingWindow?: number;
  maxPositions?: number;
  eosTokenIds: number[];
  /** The dtype config.json declares (informational; the weight files decide). */
  declaredDtype?: string;
}

type Json = Record<string, unknown>;

/**
 * Sizes far beyond any released model (the largest have ~126 layers, hidden 16384-25600, head_dim <= 256, 262k
 * tokens): a config.json past them is refused before anything is built from it, since a RoPE table or a graph of
 * that size would take minutes and gigabytes before the memory estimate could say no.
 */
const PLAUSIBLE_MAX: Record<string, number> = {
  hidden_size: 1 << 17,
  intermediate_size: 1 << 20,
  num_hidden_layers: 1000,
  num_attention_heads: 1 << 12,
  num_key_value_heads: 1 << 12,
  head_dim: 1 << 13,
  vocab_size: 1 << 24,
};

function num(config: Json, key: string, file: string, fallback?: number): number {
  const v = config[key];
  if (v === undefined || v === null) {
    if (fallback !== undefined) return fallback;
    throw new CheckpointError(`"${key}" is missing`, file);
  }
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0)
    throw new CheckpointError(`"${key}" must be a positive number, got ${JSON.stringify(v)}`, file);
  const max = PLAUSIBLE_MAX[key];
  if (max !== undefined && (!Number.isInteger(v) || v > max))
    throw new CheckpointError(
      `"${key}" is ${v}: ${Number.isInteger(v) ? `beyond any real model (at most ${max} here)` : 'not a whole number'}; is this config.json right?`,
      file,
    );
  return v;
}

function ids(v: unknown): number[] {
  if (typeof v === 'number') return [v];
  if (Array.isArray(v)) return v.filter((x): x is number => typeof x === 'number');
  return [];
}

export function readJson(file: string): Json {
  let text: string;
  try {
    text = readTextChecked(file, FILE_LIMITS.config);
  } catch (e) {
    if (e instanceof FileRefusedError) throw new CheckpointError(e.reason, file);
    throw new CheckpointError(`cannot read (${(e as Error).message})`, file);
  }
  try {
    const v = JSON.parse(text);
    if (!v || typeof v !== 'object' || Array.isArray(v)) throw new Error('not a JSON object');
    return v as Json;
  } catch (e) {
    throw new CheckpointError(`not valid JSON (${(e as Error).message})`, file);
  }
}

/** The RoPE settings from either config form: `rope_parameters` (newer) or `rope_theta` + `rope_scaling` (older). */
function ropeSettings(config: Json, file: string): { theta: number; scaling: Json | null } {
  let params = config.rope_parameters as Json | null | undefined;
  if (params && typeof params === 'object') {
    // one object per layer type (e.g. {"full_attention": {...}, "sliding_attention": {...}}): these architectures
    // have one layer type, so exactly one such object is expected
    const nested = Object.values(params).filter((v) => v && typeof v === 'object');
    if (nested.length > 0 && params.rope_theta === undefined && params.rope_type === undefined) {
      const distinct = new Set(nested.map((v) => JSON.stringify(v)));
      if (distinct.size > 1)
        throw new CheckpointError(
          `rope_parameters differ between layer types (${Object.keys(params).join(', ')}): per-layer RoPE is not supported; ${ONNX_ROUTE}`,
          file,
        );
      params = nested[0] as Json;
    }
    const theta = params.rope_theta ?? config.rope_theta;
    if (typeof theta !== 'number') throw new CheckpointError('rope_parameters has no rope_theta', file);
    const type = (params.rope_type ?? params.type ?? 'default') as string;
    return { theta, scaling: type === 'default' ? null : params };
  }
  // transformers' config classes for these model types default rope_theta to 10000.0
  const theta = num(config, 'rope_theta', file, 10000);
  const scaling = config.rope_scaling as Json | null | undefined;
  return { theta, scaling: scaling && typeof scaling === 'object' ? scaling : null };
}

/** inv_freq as transformers computes it in float32: 1 / theta^(2j/d), j < d/2, then the rope type's rescaling. */
export function ropeInvFreq(
  theta: number,
  headDim: number,
  scaling: Json | null,
  file: string,
): { invFreq: Float32Array; description: string } {
  const half = headDim / 2;
  const base = new Float32Array(half);
  for (let j = 0; j < half; j++) base[j] = 1 / theta ** Math.fround((2 * j) / headDim);
  if (!scaling) return { invFreq: base, description: `default, theta ${theta}` };
  const type = (scaling.rope_type ?? scaling.type) as string | undefined;
  if (type === 'default') return { invFreq: base, description: `default, theta ${theta}` };
  if (type === 'linear') {
    const factor = scaling.factor as number;
    if (typeof factor !== 'number' || factor <= 0)
      throw new CheckpointError('rope_scaling "linear" needs a positive factor', file);
    return { invFreq: base.map((f) => f / factor), description: `linear x${factor}, theta ${theta}` };
  }
  if (type === 'llama3') {
    const {
      factor,
      low_freq_factor: low,
      high_freq_factor: high,
      original_max_position_embeddings: orig,
    } = scaling as Record<string, number>;
    for (const [k, v] of Object.entries({
      factor,
      low_freq_factor: low,
      high_freq_factor: high,
      original_max_position_embeddings: orig,
    })) {
      if (typeof v !== 'number' || !(v > 0))
        throw new CheckpointError(`rope_scaling "llama3" needs a positive ${k}`, file);
    }
    if (!(high > low))
      throw new CheckpointError('rope_scaling "llama3" needs high_freq_factor > low_freq_factor', file);
    const lowWavelen = orig / low;
    const highWavelen = orig / high;
    const out = base.map((f) => {
      const wavelen = (2 * Math.PI) / f;
      if (wavelen < highWavelen) return f;
      if (wavelen > lowWavelen) return f / factor;
      const s = (orig / wavelen - low) / (high - low);
      return (1 - s) * (f / factor) + s * f;
    });
    return {
      invFreq: out,
      description: `llama3 x${factor} (low ${low}, high ${high}, original ${orig}), theta ${theta}`,
    };
  }
  throw new CheckpointError(
    `rope scaling type "${type}" is not supported (default, linear and llama3 are); ${ONNX_ROUTE}`,
    file,
  );
}

/**
 * RoPE frequencies from an export's config.json, when it says enough to be sure: a RoPE model type this host knows
 * or an explicit rope_theta / rope_parameters, full rotary, and a supported scaling. Undefined otherwise.
 */
export function ropeInvFreqOf(config: Json, headDim: number, file: string): number[] | undefined {
  const explicit =
    config.rope_theta !== undefined || (config.rope_parameters !== undefined && config.rope_parameters !== null);
  const known = (SUPPORTED_MODEL_TYPES as readonly string[]).includes(String(config.model_type));
  if (
    !(explicit || known) ||
    (config.partial_rotary_factor !== undefined && config.partial_rotary_factor !== 1) ||
    !(headDim > 0) ||
    headDim % 2
  )
    return undefined;
  try {
    const { theta, scaling } = ropeSettings(config, file);
    return Array.from(ropeInvFreq(theta, headDim, scaling, file).invFreq);
  } catch {
    return undefined;
  }
}

/** Reads config.json (and generation_config.json beside it) of a Hugging Face checkpoint folder. */
export function readDecoderSpec(folder: string): DecoderSpec {
  const file = path.join(folder, 'config.json');
  const config = readJson(file);
  const modelType = config.model_type as string | undefined;
  if (!modelType) throw new CheckpointError(`no "model_type"; ${ONNX_ROUTE}`, file);
  if (!(SUPPORTED_MODEL_TYPES as readonly string[]).includes(modelType))
    throw new CheckpointError(`model_type "${modelType}" is not supported; ${ONNX_ROUTE}`, file);
  const type = modelType as ModelType;
  if (config.quantization_config) {
    const q = config.quantization_config as Json;
    throw new CheckpointError(
      `quantized weights (${String(q.quant_method ?? 'quantization_config')}) are not supported: use the unquantized checkpoint, or an ONNX export`,
      file,
    );
  }
  const act = (config.hidden_act ?? config.hidden_activation ?? 'silu') as string;
  if (act !== 'silu' && act !== 'swish')
    throw new CheckpointError(`hidden_act "${act}" is not supported (silu only); ${ONNX_ROUTE}`, file);
  const hidden = num(config, 'hidden_size', file);
  const heads = num(config, 'num_attention_heads', file);
  const kvHeads = num(config, 'num_key_value_heads', file, heads);
  const headDim = num(config, 'head_dim', file, hidden / heads);
  if (!Number.isInteger(headDim) || headDim % 2 !== 0)
    throw new CheckpointError(`head size ${headDim} must be an even integer (set "head_dim")`, file);
  if (heads % kvHeads !== 0)
    throw new CheckpointError(`num_attention_heads ${heads} is not a multiple of num_key_value_heads ${kvHeads}`, file);
  if (config.partial_rotary_factor !== undefined && config.partial_rotary_factor !== 1)
    throw new CheckpointError(
      `partial_rotary_factor ${String(config.partial_rotary_factor)} is not supported; ${ONNX_ROUTE}`,
      file,
    );
  const { theta, scaling } = ropeSettings(config, file);
  const { invFreq, description } = ropeInvFreq(theta, headDim, scaling, file);

  // sliding window: mistral applies it to every layer when set; qwen2/qwen3 only when use_sliding_window is true,
  // and then only to some layers (max_window_layers), which is not built here
  let slidingWindow: number | undefined;
  const window = config.sliding_window;
  if (type === 'mistral' && typeof window === 'number' && window > 0) slidingWindow = window;
  if ((type === 'qwen2' || type === 'qwen3') && config.use_sliding_window === true) {
    throw new CheckpointError(
      `use_sliding_window is true (sliding-window layers from max_window_layers on) and that is not supported; ${ONNX_ROUTE}`,
      file,
    );
  }
  const attentionBias = config.attention_bias === true;
  const bias = {
    q: type === 'qwen2' || attentionBias,
    k: type === 'qwen2' || attentionBias,
    v: type === 'qwen2' || attentionBias,
    o: type !== 'qwen2' && type !== 'mistral' && attentionBias,
    mlp: type === 'llama' && config.mlp_bias === true,
  };
  let eos = ids(config.eos_token_id);
  const genFile = path.join(folder, 'generation_config.json');
  if (fs.existsSync(genFile)) {
    const gen = readJson(genFile);
    if (gen.eos_token_id !== undefined && gen.eos_token_id !== null) eos = ids(gen.eos_token_id);
  }
  return {
    modelType: type,
    layers: num(config, 'num_hidden_layers', file),
    hidden,
    intermediate: num(config, 'intermediate_size', file),
    heads,
    kvHeads,
    headDim,
    vocab: num(config, 'vocab_size', file),
    rmsNormEps: num(config, 'rms_norm_eps', file, 1e-6),
    invFreq,
    rope: description,
    qkNorm: type === 'qwen3',
    bias,
    tieWordEmbeddings: config.tie_word_embeddings === true,
    slidingWindow,
    maxPositions: typeof config.max_position_embeddings === 'number' ? config.max_position_embeddings : undefined,
    eosTokenIds: eos,
    declaredDtype: (config.dtype ?? config.torch_dtype) as string | undefined,
  };
}

/**
 * Why a folder has no safetensors weights the host can read (only a pickle, shards without their index, nothing),
 * or undefined when `single` or `indexName` is there. The load and the editor's pickers say the same.
 */
export function missingWeights(folder: string, single: string, indexName: string): CheckpointError | undefined {
  if (fs.existsSync(path.join(folder, indexName)) || fs.existsSync(path.join(folder, single))) return undefined;
  const bin = ['pytorch_model.bin', 'pytorch_model.bin.index.json', 'adapter_model.bin'].find((f) =>
    fs.existsSync(path.join(folder, f)),
  );
  if (bin)
    return new CheckpointError(
      `only ${bin} here: that is a Python pickle, which is never unpickled. Re-save with safetensors (save_pretrained(..., safe_serialization=True), the default since transformers 4.35)`,
      path.join(folder, bin),
    );
  const shards = fs.readdirSync(folder).filter((f) => /^model-\d+-of-\d+\.safetensors$/.test(f));
  if (shards.length)
    return new CheckpointError(`sharded weights (${shards[0]}, ...) without ${indexName}, which lists them`, folder);
  return new CheckpointError(`no ${single} or ${indexName}`, folder);
}

/** An adapter that changes the model in a way the host does not build, refused by name at its config file. */
export function refuseAdapter(configFile: string, what: string): never {
  throw new CheckpointError(
    `${what} is not supported (plain LoRA on Linear modules only): merge the adapter into the base (merge_and_unload) and open the merged folder`,
    configFile,
  );
}

/**
 * A PEFT adapter's adapter_config.json, refused with one line when it is not plain LoRA on Linear modules (what
 * the host builds), and its weights when they are not safetensors. Files only: no tensor is read.
 */
export function readAdapterConfig(folder: string): Json {
  const configFile = path.join(folder, 'adapter_config.json');
  const config = readJson(configFile);
  const refuse = (what: string) => refuseAdapter(configFile, what);
  const type = String(config.peft_type ?? '');
  if (type !== 'LORA') refuse(`peft_type "${type || '(missing)'}"`);
  if (config.use_dora === true) refuse('DoRA (use_dora)');
  if (Array.isArray(config.modules_to_save) && config.modules_to_save.length)
    refuse(`modules_to_save (${config.modules_to_save.join(', ')})`);
  if (config.bias !== undefined && config.bias !== null && config.bias !== 'none')
    refuse(`bias "${String(config.bias)}"`);
  if (config.lora_bias === true) refuse('lora_bias');
  if (Array.isArray(config.target_parameters) && config.target_parameters.length) refuse('target_parameters');
  if (config.layer_replication) refuse('layer_replication');
  if (config.trainable_token_indices) refuse('trainable_token_indices (trained embedding rows)');
  const targets = config.target_modules;
  if (typeof targets !== 'string' && !Array.isArray(targets))
    throw new CheckpointError('"target_modules" must be a list of module names or a regex string', configFile);
  const weightsFile = path.join(folder, 'adapter_model.safetensors');
  if (!fs.existsSync(weightsFile) && fs.existsSync(path.join(folder, 'adapter_model.bin'))) {
    throw new CheckpointError(
      'adapter_model.bin is a Python pickle, which is never unpickled: save the adapter with safetensors (save_pretrained(..., safe_serialization=True))',
      path.join(folder, 'adapter_model.bin'),
    );
  }
  const missing = missingWeights(folder, 'adapter_model.safetensors', 'adapter_model.safetensors.index.json');
  if (missing) throw missing;
  return config;
}
