/**
 * The one typed protocol between the model host (src/modelHost, onnxruntime only) and its clients (the extension and
 * the CLI). Tokenization and segmentation happen on the client side (src/domain); the host sees token ids and
 * segment spans only, so it never needs a tokenizer or a template.
 */
import { NotificationType, ProgressType, RequestType } from 'vscode-jsonrpc';

/** A half-open range of token positions [start, end). */
export type Span = [number, number];

/** A rendered, tokenized prompt: the ids the model sees and where each segment lies. */
export interface PromptIds {
  ids: number[];
  prefix: Span;
  query: Span;
  postfix: Span;
}

export interface CheckpointInfo {
  folder: string;
  modelFile: string;
  /** onnx: a decoder export; hf: a Hugging Face folder (config.json + safetensors); adapter: PEFT LoRA over the base. */
  kind: 'onnx' | 'hf' | 'adapter';
  /** What was built, in words (architecture, dtype, adapter rank), for HF folders and adapters. */
  description?: string;
  /** An adapter that leaves the model as it is (every lora_B zero, a scale of 0): why, said before any measurement. */
  unchanged?: string;
  /** An adapter's `base_model_name_or_path` (often a Hub id), shown beside the base actually used. */
  baseModelNameOrPath?: string;
  /** Content hashes (first 16 hex chars) of each file the identity covers, by path relative to `folder`. */
  files?: Record<string, string>;
  /** Where the K/V head count and size came from (then checked against a forward pass). */
  headDimFrom?: 'graph' | 'config.json';
  /** RoPE inverse frequencies [head_dim / 2] from config.json, when the host can read them: postfix patching
   * rotates the base's keys to their real positions with them. */
  ropeInvFreq?: number[];
  /** The context length (config.json's max_position_embeddings), when known: generation stops there. */
  maxPositions?: number;
  /** Where it runs: the execution provider and the CPU threads onnxruntime uses. */
  device: 'cpu' | 'cuda';
  threads: number;
  layers: number;
  kvHeads: number;
  headDim: number;
  vocabSize: number;
  kvType: 'float32' | 'float16';
  hasPositionIds: boolean;
  eosTokenIds: number[];
  /** The dtype of the weight matrices as the host runs them (Hugging Face folders and adapters; an ONNX export runs
   * its graph as it is). int8 / int4 are block-quantized by the host: its numbers are not float32's. */
  weightsDtype?: WeightsDtype;
  /** SHA-256 (first 16 hex chars) of what the numbers come from: the ONNX file; for HF folders config.json and
   * every weight file; for an adapter, its base's identity and the adapter's files. */
  hash: string;
}

/** The dtypes of the weight matrices a graph built from a Hugging Face folder can take. */
export const WEIGHTS_DTYPES = ['float32', 'float16', 'int8', 'int4'] as const;
export type WeightsDtype = (typeof WEIGHTS_DTYPES)[number];
/** auto: float16 on CUDA; on the CPU float32 when the checkpoints fit in memory with a margin, else int8, else int4. */
export type WeightsDtypeSetting = 'auto' | WeightsDtype;

/** How the host runs models (CLI flags, piggyback.host.* settings). */
export interface HostSettings {
  /** onnxruntime intra-op threads; default: every core. */
  threads?: number;
  /** auto: CUDA when onnxruntime-node's CUDA provider is installed, else the CPU (and the load says why). */
  executionProvider?: 'auto' | 'cpu' | 'cuda';
  /** Hugging Face folders: the dtype of the weight matrices in the graph the host builds. auto: float16 on CUDA
   * (half the memory), float32 on the CPU. */
  weightsDtype?: WeightsDtypeSetting;
  /** Which graph of an ONNX export folder with several variants (e.g. onnx/model_q4.onnx, or "q4"). */
  modelFile?: string;
  /** false: load even when the estimated memory exceeds what is free. */
  memoryCheck?: boolean;
}

/**
 * Every request may carry a progress token (as LSP's WorkDoneProgressParams): the client sets it when it listens for
 * progress, the host reports through it.
 */
export interface WorkDoneParams {
  workDoneToken?: string | number;
}

export interface LoadParams extends WorkDoneParams {
  base: string;
  /** A checkpoint, or a PEFT LoRA adapter over `base`; the base folder itself when only the base is needed (it is
   * then loaded once, under both names). */
  finetuned: string;
  /** Other checkpoints to load under a name (e.g. { treft: '/path' }), usable as a condition. */
  extra?: Record<string, string>;
  /** Where converted (float16/bfloat16 -> float32) weights are cached; default: PIGGYBACK_CACHE_DIR, else the
   * user's cache folder (~/.cache/piggyback-lens). */
  cacheDir?: string;
  settings?: HostSettings;
}

export interface LoadResult {
  base: CheckpointInfo;
  finetuned: CheckpointInfo;
  extra: Record<string, CheckpointInfo>;
}

/** Per-layer, per-token relative squared drift ||x - x_base||^2 / ||x_base||^2 and cosine distance. */
export interface SegmentDrift {
  /** Token positions of the segment (into PromptIds.ids). */
  positions: number[];
  key: number[][];
  value: number[][];
  keyCosine: number[][];
  valueCosine: number[][];
  /** TReFT value of the segment: mean over layers of (mean over tokens of K drift + mean over tokens of V drift). */
  mean: number;
  /** The same without position 0 (BOS behaves differently from later positions); null when nothing is left. */
  meanExcludingPosition0: number | null;
}

export interface DriftParams extends WorkDoneParams {
  prompt: PromptIds;
  /** Which loaded checkpoint to compare with base (default 'finetuned'). */
  against?: string;
}

export interface DriftResult {
  layers: number;
  segments: { prefix: SegmentDrift; query: SegmentDrift; postfix: SegmentDrift };
  /** Drift at position 0 per layer (K, V), reported apart. */
  position0: { key: number[]; value: number[] } | null;
  /** The TReFT regulariser value on the prefix: what training would penalise. */
  treft: number;
}

/** The three parts of a prompt: the template's text before the user's (prefix), the user's, the template's after. */
export type PromptSegment = 'prefix' | 'query' | 'postfix';

/** New tokens generated per answer unless asked otherwise (patch comparisons, eval runs, the host). */
export const DEFAULT_MAX_NEW_TOKENS = 48;

export type PatchSpan = 'prefix' | 'postfix' | 'both' | 'query';

export interface Condition {
  /** 'base', 'finetuned', or a name from LoadParams.extra. */
  model: string;
  /** Spans whose K/V come from the base model instead. */
  patch?: PatchSpan;
  /**
   * With `patch`: only these layers' K/V are replaced (0-based; default all). The layer sweep: the other layers keep
   * the model's own K/V at the patched positions, computed as usual from the (partly patched) cache before them.
   */
  layers?: number[];
}

export interface PatchParams extends WorkDoneParams {
  prompt: PromptIds;
  span: PatchSpan;
  /** Teacher-forced response for the distributions; default: the base model's greedy generation. */
  responseIds?: number[];
  maxNewTokens?: number;
  /** Checkpoint patched (default 'finetuned'). */
  target?: string;
}

export interface PatchResult {
  span: PatchSpan;
  /** Positions whose K/V were replaced. */
  patchedPositions: number[];
  responseIds: number[];
  /** Mean over response positions of KL(base || condition), in nats. */
  kl: { finetuned: number; patched: number };
  /** Per response position KL values, for plots. */
  klPerPosition: { finetuned: number[]; patched: number[] };
  generations: { base: number[]; finetuned: number[]; patched: number[] };
}

export interface ScoreParams extends WorkDoneParams {
  prompt: PromptIds;
  /** Continuations to score (e.g. an aligned and a misaligned reference answer), as token ids. */
  continuations: number[][];
  conditions: Condition[];
  /**
   * The prompt the base model reads for the KL reference (default: `prompt`). A perturbed prompt is scored
   * against the base model on the original one: KL(base on the real prompt || finetuned on the perturbed one).
   */
  basePrompt?: PromptIds;
}

export interface ScoreResult {
  /** [condition][continuation]: summed log-probability of the continuation, teacher-forced, in nats. */
  logprob: number[][];
  /** [condition]: mean over continuation-0 positions of KL(base || condition). */
  klToBase: number[];
}

export interface PerturbParams extends WorkDoneParams {
  prompt: PromptIds;
  segment: PromptSegment;
  /** Positions changed per trial (the paper: 10), neighbours considered (5), trials (10). */
  positions?: number;
  neighbours?: number;
  trials?: number;
  seed?: number;
  /** Optional reference answers: each trial reports logprob(aligned) - logprob(misaligned). */
  aligned?: number[];
  misaligned?: number[];
  model?: string;
}

export interface PerturbTrial {
  ids: number[];
  changed: number[];
  /** logprob(aligned) - logprob(misaligned) under the perturbed prompt (when references were given). */
  margin: number | null;
}

export interface PerturbResult {
  baselineMargin: number | null;
  trials: PerturbTrial[];
  best: number | null;
  avg: number | null;
  embedding: { source: string; rows: number; dim: number };
}

export interface GenerateParams extends WorkDoneParams {
  prompt: PromptIds;
  condition: Condition;
  maxNewTokens?: number;
  /** 0 (default) = greedy. */
  temperature?: number;
  seed?: number;
}

export interface GenerateResult {
  ids: number[];
}

export interface ExportKVParams extends WorkDoneParams {
  /** Token ids of each prefix (from position 0); one tensor group per entry. */
  prefixes: number[][];
  /** The safetensors file the host writes (see src/app/treft.ts for the layout). */
  file: string;
  /** Checkpoint whose K/V are exported (default 'base'). */
  model?: string;
  metadata?: Record<string, string>;
}

export interface ExportKVResult {
  file: string;
  bytes: number;
  layers: number;
  kvHeads: number;
  headDim: number;
}

export interface ParityParams extends WorkDoneParams {
  prompt: PromptIds;
}

/** Max absolute logit differences of the parity checks; all should be ~0. */
export interface ParityResult {
  prefixThenRestVsFull: Record<string, number>;
  selfPatch: number;
  baseIntoBase: number;
}

export namespace Load {
  export const type = new RequestType<LoadParams, LoadResult, void>('piggyback/load');
}
export namespace Drift {
  export const type = new RequestType<DriftParams, DriftResult, void>('piggyback/drift');
}
export namespace Patch {
  export const type = new RequestType<PatchParams, PatchResult, void>('piggyback/patch');
}
export namespace Score {
  export const type = new RequestType<ScoreParams, ScoreResult, void>('piggyback/score');
}
export namespace Perturb {
  export const type = new RequestType<PerturbParams, PerturbResult, void>('piggyback/perturb');
}
export namespace Generate {
  export const type = new RequestType<GenerateParams, GenerateResult, void>('piggyback/generate');
}
export namespace ExportKV {
  export const type = new RequestType<ExportKVParams, ExportKVResult, void>('piggyback/exportKV');
}
export namespace Parity {
  export const type = new RequestType<ParityParams, ParityResult, void>('piggyback/parity');
}
/** Test hook: makes the host exit abruptly (as a native crash would) after `afterMs`. */
export namespace Crash {
  export const type = new NotificationType<{ afterMs: number }>('piggyback/crash');
}
/** Host messages. `load`: what loading a checkpoint costs and does (memory, a conversion into the cache), which
 * the CLI prints and the editor logs before the numbers arrive. */
export namespace Log {
  export const type = new NotificationType<{ level: 'info' | 'load' | 'warn' | 'error'; message: string }>(
    'piggyback/log',
  );
}

/** Progress reported through $/progress with the request's progress token. */
export interface HostProgress {
  done: number;
  total: number;
  message?: string;
}
export const progressType = new ProgressType<HostProgress>();

/** Error codes the host answers with (JSON-RPC application range). */
export const HostErrors = {
  NotLoaded: -32001,
  BadCheckpoint: -32002,
  Incompatible: -32003,
  BadRequest: -32004,
  Cancelled: -32800,
} as const;
