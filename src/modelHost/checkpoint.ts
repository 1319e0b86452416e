/**
 * A decoder checkpoint exported to ONNX with the HF-optimum KV-cache interface, run with onnxruntime-node.
 * Folder layouts: transformers.js (onnx/model.onnx, onnx/model_quantized.onnx, ...), optimum (model.onnx,
 * decoder_model_merged.onnx, decoder_with_past_model.onnx), external data files beside the graph.
 * K/V are held per layer as Float32Array in [kv_heads, positions, head_dim] (batch 1).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import type { CheckpointInfo } from '../contracts/modelHost';
import { floatToHalf, halfToFloat, readInitializer } from './onnxInitializers';

import { checkpointFolder, NO_CHECKPOINT, onnxModelFile, onnxVariants } from '../domain/checkpoints';
import { CheckpointError, IncompatibleCheckpointError } from './errors';
import { BadRequestError } from './errors';
import { tokenizerDifference } from '../domain/tokenizerCompat';
import { ropeInvFreqOf } from '../domain/hfConfig';
import { onnxIdentity } from './identity';
import { type Device, type ResolvedSettings, resolveSettings, sessionOptions } from './runtime';

export { CheckpointError };

export interface LayerKV {
  k: Float32Array;
  v: Float32Array;
}

/** K/V of a run of positions for every layer. */
export class KV {
  constructor(
    readonly layers: LayerKV[],
    readonly length: number,
    readonly heads: number,
    readonly dim: number,
  ) {}

  static empty(layers: number, heads: number, dim: number): KV {
    return new KV(
      Array.from({ length: layers }, () => ({ k: new Float32Array(0), v: new Float32Array(0) })),
      0,
      heads,
      dim,
    );
  }

  /** Positions [start, end) of this cache. */
  slice(start: number, end: number): KV {
    const n = end - start;
    const cut = (a: Float32Array) => {
      const out = new Float32Array(this.heads * n * this.dim);
      for (let h = 0; h < this.heads; h++)
        out.set(a.subarray((h * this.length + start) * this.dim, (h * this.length + end) * this.dim), h * n * this.dim);
      return out;
    };
    return new KV(
      this.layers.map((l) => ({ k: cut(l.k), v: cut(l.v) })),
      n,
      this.heads,
      this.dim,
    );
  }

  concat(other: KV): KV {
    if (other.length === 0) return this;
    if (this.length === 0) return other;
    const n = this.length + other.length;
    const join = (a: Float32Array, b: Float32Array) => {
      const out = new Float32Array(this.heads * n * this.dim);
      for (let h = 0; h < this.heads; h++) {
        out.set(a.subarray(h * this.length * this.dim, (h + 1) * this.length * this.dim), h * n * this.dim);
        out.set(
          b.subarray(h * other.length * this.dim, (h + 1) * other.length * this.dim),
          (h * n + this.length) * this.dim,
        );
      }
      return out;
    };
    return new KV(
      this.layers.map((l, i) => ({ k: join(l.k, other.layers[i].k), v: join(l.v, other.layers[i].v) })),
      n,
      this.heads,
      this.dim,
    );
  }

  /** This cache with the layers in `from` taken from `other` (same positions): a patch of some layers only. */
  withLayersOf(other: KV, from: ReadonlySet<number>): KV {
    return new KV(
      this.layers.map((l, i) => (from.has(i) ? other.layers[i] : l)),
      this.length,
      this.heads,
      this.dim,
    );
  }

  /** The vector of one position (all heads) in one layer, for drift norms. */
  vector(layer: number, which: 'k' | 'v', pos: number): Float32Array {
    const src = this.layers[layer][which];
    const out = new Float32Array(this.heads * this.dim);
    for (let h = 0; h < this.heads; h++)
      out.set(src.subarray((h * this.length + pos) * this.dim, (h * this.length + pos + 1) * this.dim), h * this.dim);
    return out;
  }
}

export interface Forward {
  /** [rows, vocab] logits of the last `rows` fed tokens (all of them unless fewer were asked for). */
  logits: Float32Array;
  rows: number;
  vocab: number;
  /** K/V of the fed positions only (the past is not repeated). */
  kv: KV;
}

/**
 * The graph file of an ONNX export: the path itself when it is a file, else the variant `choice` names, else the
 * first known layout in the folder.
 */
export function findModelFile(folder: string, choice?: string): string {
  let stat: fs.Stats;
  try {
    stat = fs.statSync(folder);
  } catch {
    throw new CheckpointError('no such file or folder', folder);
  }
  if (stat.isFile()) return folder;
  let f: string | undefined;
  try {
    f = onnxModelFile(folder, choice);
  } catch (e) {
    throw new CheckpointError((e as Error).message, folder);
  }
  if (!f) throw new CheckpointError(NO_CHECKPOINT, folder);
  return f;
}

/** Inputs the host knows how to feed; any other input of a graph is named at load instead of failing later. */
const KNOWN_INPUT =
  /^(input_ids|attention_mask|position_ids|use_cache_branch|num_logits_to_keep|logits_to_keep|past_key_values\.\d+\.(key|value)|adapter_scale\.\d+)$/;

/**
 * An onnxruntime session for a graph file or bytes, and the device it runs on. Failures name `file` and keep
 * onnxruntime's first line; under `auto`, a CUDA session that cannot start (no GPU, no driver) runs on the CPU.
 */
export async function createSession(
  model: string | Uint8Array,
  settings: ResolvedSettings,
  config: Record<string, string>,
  file: string,
  log?: (m: string) => void,
): Promise<{ session: ort.InferenceSession; device: Device }> {
  const create = (s: ResolvedSettings) =>
    typeof model === 'string'
      ? ort.InferenceSession.create(model, sessionOptions(s, config))
      : ort.InferenceSession.create(model, sessionOptions(s, config));
  const first = (e: unknown) => String((e as Error).message).split('\n')[0];
  try {
    return { session: await create(settings), device: settings.device };
  } catch (e) {
    let failure = e;
    if (settings.device === 'cuda' && settings.auto) {
      log?.(`CUDA could not start (${first(e)}); running on the CPU with ${settings.threads} threads`);
      try {
        return { session: await create({ ...settings, device: 'cpu' }), device: 'cpu' };
      } catch (e2) {
        failure = e2;
      }
    }
    throw new CheckpointError(
      `onnxruntime cannot ${typeof model === 'string' ? 'load the model' : 'build the decoder'}${settings.device === 'cuda' ? ' on CUDA' : ''}: ${first(failure)}`,
      file,
    );
  }
}

/** What a checkpoint is built from, beyond its graph: extra feeds (adapter switches) and where its embeddings live. */
export interface CheckpointSource {
  /** Fed on every run, e.g. `adapter_scale.{j}` = 0 or 1 for a graph shared by a base and its adapters. */
  feeds?: Record<string, ort.Tensor>;
  /** The input embedding matrix (perturbation), when the graph file is not where it lives. */
  embeddings?: () => Embeddings;
  /** Overrides of what config.json and the graph say (HF checkpoints know these from config.json). */
  info?: Partial<CheckpointInfo>;
}

export interface Embeddings {
  rows: number;
  dim: number;
  data: Float32Array;
  source: string;
}

const released = new WeakSet<ort.InferenceSession>();

export class Checkpoint {
  private constructor(
    readonly info: CheckpointInfo,
    private readonly session: ort.InferenceSession,
    private readonly modelFile: string,
    private readonly source: CheckpointSource,
  ) {}

  /** An ONNX decoder export: a folder in one of the known layouts, or the graph file itself. */
  static async load(
    folder: string,
    settings: ResolvedSettings = resolveSettings(),
    opts: { modelFile?: string; cacheDir?: string; log?: (m: string) => void } = {},
  ): Promise<Checkpoint> {
    const modelFile = findModelFile(folder, opts.modelFile);
    const dir = checkpointFolder(modelFile);
    const others = fs.statSync(folder).isDirectory()
      ? onnxVariants(folder)
          .map((v) => path.join(folder, v))
          .filter((v) => v !== modelFile)
      : [];
    if (others.length && !opts.modelFile)
      opts.log?.(
        `${folder}: using ${path.relative(folder, modelFile)}; also here: ${others.map((v) => path.relative(folder, v)).join(', ')} (choose with --model-file or piggyback.host.onnxVariant)`,
      );
    const identity = onnxIdentity(modelFile, dir, opts.cacheDir);
    const { session, device } = await createSession(modelFile, settings, {}, modelFile, opts.log);
    try {
      const c = Checkpoint.fromSession(session, modelFile, dir, {
        info: { ...identity, device, threads: settings.threads },
      });
      await c.checkShapes();
      return c;
    } catch (e) {
      await session.release();
      throw e;
    }
  }

  /** Checks that a session speaks the KV-cache interface and reads its shapes; `dir` holds config.json. */
  static fromSession(
    session: ort.InferenceSession,
    modelFile: string,
    dir: string,
    source: CheckpointSource,
  ): Checkpoint {
    const inputs = session.inputNames;
    const unknown = inputs.filter((n) => !KNOWN_INPUT.test(n));
    if (unknown.length)
      throw new CheckpointError(
        `the graph needs inputs the host does not know how to feed: ${unknown.join(', ')}`,
        modelFile,
      );
    for (const required of ['input_ids', 'attention_mask']) {
      if (!inputs.includes(required)) throw new CheckpointError(`the graph has no "${required}" input`, modelFile);
    }
    const pastKeys = inputs.filter((n) => /^past_key_values\.\d+\.key$/.test(n));
    if (pastKeys.length === 0) {
      throw new CheckpointError(
        'the graph has no past_key_values.{i}.key/value inputs: export it with the KV cache (optimum "text-generation-with-past")',
        modelFile,
      );
    }
    const layers = pastKeys.length;
    for (let i = 0; i < layers; i++) {
      for (const kind of ['key', 'value']) {
        if (!inputs.includes(`past_key_values.${i}.${kind}`))
          throw new CheckpointError(`missing input past_key_values.${i}.${kind}`, modelFile);
        if (!session.outputNames.includes(`present.${i}.${kind}`))
          throw new CheckpointError(`missing output present.${i}.${kind}`, modelFile);
      }
    }
    if (!session.outputNames.includes('logits'))
      throw new CheckpointError('the graph has no "logits" output', modelFile);
    const meta = (
      session as unknown as { inputMetadata?: { name: string; type?: string; shape?: (number | string)[] }[] }
    ).inputMetadata;
    const past0 = meta?.find((m) => m.name === 'past_key_values.0.key');
    const config = readConfig(dir);
    const kvHeads = numberOr(past0?.shape?.[1], config.num_key_value_heads ?? config.num_attention_heads);
    const hidden = config.hidden_size as number | undefined;
    const heads = config.num_attention_heads as number | undefined;
    const headDim = numberOr(past0?.shape?.[3], config.head_dim ?? (hidden && heads ? hidden / heads : undefined));
    if (!kvHeads || !headDim)
      throw new CheckpointError(
        'cannot tell the KV head count and head size: neither the graph nor config.json says',
        modelFile,
      );
    if (config.num_hidden_layers !== undefined && config.num_hidden_layers !== layers) {
      throw new CheckpointError(
        `config.json says ${config.num_hidden_layers} layers but the graph has ${layers}`,
        modelFile,
      );
    }
    const eos = config.eos_token_id;
    const info: CheckpointInfo = {
      folder: dir,
      modelFile,
      kind: 'onnx',
      layers,
      kvHeads,
      headDim,
      vocabSize: (config.vocab_size as number) ?? 0,
      kvType: past0?.type === 'float16' ? 'float16' : 'float32',
      hasPositionIds: inputs.includes('position_ids'),
      maxPositions: typeof config.max_position_embeddings === 'number' ? config.max_position_embeddings : undefined,
      ropeInvFreq: ropeInvFreqOf(config, headDim, path.join(dir, 'config.json')),
      headDimFrom:
        typeof past0?.shape?.[3] === 'number' && typeof past0?.shape?.[1] === 'number' ? 'graph' : 'config.json',
      eosTokenIds: Array.isArray(eos) ? (eos as number[]) : typeof eos === 'number' ? [eos] : [],
      hash: '',
      device: 'cpu',
      threads: 1,
      ...source.info,
    };
    return new Checkpoint(info, session, modelFile, source);
  }

  /**
   * Runs `ids` at `positions` after the cached `past`. Returns the logits of the last `keep` fed tokens (all by
   * default; a graph without logits_to_keep returns all anyway, see `rows`) and the fed tokens' K/V.
   */
  async forward(ids: number[], positions: number[], past: KV, keep = ids.length): Promise<Forward> {
    const { layers, kvHeads, headDim, maxPositions } = this.info;
    const t = ids.length;
    const total = past.length + t;
    // positions the model never saw in training, and K/V that grow without bound (a 21,000-token prompt on a
    // 512-position model took the host past 8 GB): refused before the graph runs
    if (maxPositions !== undefined && total > maxPositions)
      throw new BadRequestError(
        `${total} tokens is longer than the model's context of ${maxPositions} positions (max_position_embeddings): shorten the prompt`,
      );
    const out = await this.session.run(this.feeds(ids, positions, past, keep));
    const logitsT = out.logits;
    const vocab = logitsT.dims[logitsT.dims.length - 1];
    const rows = logitsT.dims.length === 3 ? logitsT.dims[1] : 1;
    const kvLayers: LayerKV[] = [];
    for (let i = 0; i < layers; i++) {
      const full = new KV(
        [{ k: toFloat32(out[`present.${i}.key`]), v: toFloat32(out[`present.${i}.value`]) }],
        total,
        kvHeads,
        headDim,
      );
      kvLayers.push(full.slice(past.length, total).layers[0]);
    }
    return { logits: toFloat32(logitsT), rows, vocab, kv: new KV(kvLayers, t, kvHeads, headDim) };
  }

  private feeds(ids: number[], positions: number[], past: KV, keep: number): Record<string, ort.Tensor> {
    const { layers, kvHeads, headDim, kvType, hasPositionIds } = this.info;
    const inputs = this.session.inputNames;
    const t = ids.length;
    const total = past.length + t;
    const feeds: Record<string, ort.Tensor> = {
      input_ids: new ort.Tensor('int64', BigInt64Array.from(ids.map(BigInt)), [1, t]),
      attention_mask: new ort.Tensor('int64', new BigInt64Array(total).fill(1n), [1, total]),
    };
    if (hasPositionIds) feeds.position_ids = new ort.Tensor('int64', BigInt64Array.from(positions.map(BigInt)), [1, t]);
    else if (positions.some((p, i) => p !== past.length + i)) {
      throw new CheckpointError(
        'this export has no position_ids input, so it cannot run tokens at shifted positions (postfix patching needs them)',
        this.modelFile,
      );
    }
    for (let i = 0; i < layers; i++) {
      for (const [kind, arr] of [
        ['key', past.layers[i].k],
        ['value', past.layers[i].v],
      ] as const) {
        const dims = [1, kvHeads, past.length, headDim];
        feeds[`past_key_values.${i}.${kind}`] =
          kvType === 'float16'
            ? new ort.Tensor('float16', Uint16Array.from(arr, floatToHalf), dims)
            : new ort.Tensor('float32', arr, dims);
      }
    }
    // optimum's merged decoder picks its branch by this flag; graphs with logits_to_keep materialise only the
    // logits asked for (a 1,000-token prompt over a 150k vocabulary is 600 MB of logits otherwise)
    if (inputs.includes('use_cache_branch'))
      feeds.use_cache_branch = new ort.Tensor('bool', Uint8Array.of(past.length > 0 ? 1 : 0), [1]);
    for (const name of ['num_logits_to_keep', 'logits_to_keep'])
      if (inputs.includes(name)) feeds[name] = new ort.Tensor('int64', BigInt64Array.of(BigInt(keep)), []);
    if (this.source.feeds) Object.assign(feeds, this.source.feeds);
    return feeds;
  }

  /**
   * Runs one token and compares the K/V the graph returns with the head count and size the host took from the
   * graph's declared shapes or config.json: a disagreement is an error naming both, never a wrong number.
   */
  async checkShapes(): Promise<void> {
    const { layers, kvHeads, headDim } = this.info;
    const from = this.info.headDimFrom === 'graph' ? 'its declared inputs' : 'config.json';
    let out: ort.InferenceSession.OnnxValueMapType;
    try {
      out = await this.session.run(this.feeds([0], [0], KV.empty(layers, kvHeads, headDim), 1));
    } catch (e) {
      const first = String((e as Error).message).split('\n')[0];
      throw new CheckpointError(
        `the graph does not run with ${kvHeads} KV heads of size ${headDim} (from ${from}): ${first}`,
        this.modelFile,
      );
    }
    const dims = out['present.0.key'].dims;
    if (dims[1] !== kvHeads || dims[3] !== headDim) {
      throw new CheckpointError(
        `the graph returns K/V of ${dims[1]} heads x ${dims[3]}, but ${from} says ${kvHeads} x ${headDim}: fix num_key_value_heads / head_dim in config.json`,
        this.modelFile,
      );
    }
  }

  /** The input embedding matrix, from the ONNX initializer feeding the token lookup (or where the source says). */
  embeddings(): Embeddings {
    if (this.source.embeddings) return this.source.embeddings();
    const vocab = this.info.vocabSize;
    const init =
      readInitializer(
        this.modelFile,
        (name, dims) => dims.length === 2 && /embed_tokens|wte|word_embeddings|tok_embeddings|embed\.weight/.test(name),
      ) ??
      readInitializer(
        this.modelFile,
        (_name, dims) => dims.length === 2 && vocab > 0 && dims[0] === vocab && dims[1] !== vocab,
      );
    if (!init) {
      throw new CheckpointError(
        'no input embedding matrix among the initializers (looked for *embed_tokens*, *wte*, or a [vocab, hidden] tensor); perturbation needs it',
        this.modelFile,
      );
    }
    return {
      rows: init.dims[0],
      dim: init.dims[1],
      data: init.data,
      source: `${path.basename(this.modelFile)}:${init.name}`,
    };
  }

  /** Releases the session (once, though a base and its adapters share it). */
  async release(): Promise<void> {
    if (released.has(this.session)) return;
    released.add(this.session);
    await this.session.release();
  }
}

function toFloat32(t: ort.Tensor): Float32Array {
  if (t.type === 'float32') return t.data as Float32Array;
  if (t.type === 'float16') return Float32Array.from(t.data as Uint16Array, halfToFloat);
  throw new Error(`unexpected tensor type ${t.type}`);
}

function numberOr(a: number | string | undefined, b: unknown): number {
  if (typeof a === 'number' && a > 0) return a;
  return typeof b === 'number' ? b : 0;
}

function readConfig(dir: string): Record<string, unknown> & {
  num_hidden_layers?: number;
  num_key_value_heads?: number;
  num_attention_heads?: number;
  head_dim?: number;
  eos_token_id?: unknown;
} {
  const file = path.join(dir, 'config.json');
  if (!fs.existsSync(file)) return {};
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw new CheckpointError(`config.json is not valid JSON: ${(e as Error).message}`, file);
  }
}

/**
 * Base and finetuned must share the tokenizer and the K/V shapes, or patching is meaningless. Tokenizers are
 * compared by content (domain/tokenizerCompat): a re-saved tokenizer.json with a truncation block is the same one.
 * Returns a note when the files differ in a way no tried text shows.
 */
export function checkCompatible(base: Checkpoint, other: Checkpoint): string | undefined {
  const a = base.info;
  const b = other.info;
  const diffs: string[] = [];
  if (a.layers !== b.layers) diffs.push(`layers ${a.layers} vs ${b.layers}`);
  if (a.kvHeads !== b.kvHeads) diffs.push(`KV heads ${a.kvHeads} vs ${b.kvHeads}`);
  if (a.headDim !== b.headDim) diffs.push(`head size ${a.headDim} vs ${b.headDim}`);
  if (a.vocabSize && b.vocabSize && a.vocabSize !== b.vocabSize)
    diffs.push(`vocabulary ${a.vocabSize} vs ${b.vocabSize}`);
  const fa = path.join(a.folder, 'tokenizer.json');
  const fb = path.join(b.folder, 'tokenizer.json');
  let note: string | undefined;
  if (fs.existsSync(fa) && fs.existsSync(fb)) {
    const d = tokenizerDifference(fa, fb);
    if (d?.example)
      diffs.push(
        `different tokenizer.json (${d.parts.join(', ')}): ${JSON.stringify(d.example.text)} is [${d.example.a.join(', ')}] for the base and [${d.example.b.join(', ')}] here`,
      );
    else if (d)
      note = `${fb}: tokenizer.json differs from the base's in ${d.parts.join(', ')}, but no tried text tokenizes differently`;
  }
  if (diffs.length)
    throw new IncompatibleCheckpointError(`not compatible with the base checkpoint (${diffs.join('; ')})`, b.folder);
  return note;
}
