/**
 * Hugging Face checkpoint folders and PEFT adapters as host checkpoints: config.json read into a decoder spec,
 * the weights located (float32 in place, or converted once into the cache), the ONNX graph built, one
 * onnxruntime session created. A base and all adapters over it share that one session (and one copy of the
 * weights): each adapter checkpoint differs from the base only in the `adapter_scale.{j}` it feeds.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { adapterBaseFolder, checkpointKind, type CheckpointKind } from '../../domain/checkpoints';
import { Checkpoint, checkCompatible, createSession, findModelFile } from '../checkpoint';
import { type ResolvedSettings, resolveSettings } from '../runtime';
import { CheckpointError } from '../errors';
import { type DecoderSpec, readDecoderSpec } from '../../domain/hfConfig';
import { buildDecoderGraph, decoderTensors, type GraphOptions, weightDtype } from './graph';
import { type Adapter, readAdapter } from './peft';
import { QUANT_BLOCK } from './quantize';
import { combine, identityOf } from '../identity';
import { externalDataFiles } from '../onnxInitializers';
import {
  bytesIn,
  castWeights,
  dtypeWord,
  gb,
  quantBitsOf,
  readFloat32,
  scalesName,
  type WeightDtype,
  WeightIndex,
  type WeightRef,
} from './weights';

export interface HfLoadOptions {
  cacheDir: string;
  /** 'load': what a load costs and does, printed by the CLI; 'info': the editor's log only. */
  log: (message: string, level?: 'load' | 'info') => void;
  /** Threads and device; default: resolveSettings() (every core, CUDA when installed). */
  settings?: ResolvedSettings;
  /** Which graph of an ONNX export folder with several variants. */
  modelFile?: string;
  /** false: load even when the estimate exceeds the available memory. */
  memoryCheck?: boolean;
  /** Bytes of memory available (default: what the OS reports as available). */
  availableMemory?: number;
}

/** Linear modules of the base, as PEFT names them, with their [out, in]. */
function linearModules(spec: DecoderSpec, tensors: [string, number[]][]): Map<string, [number, number]> {
  const out = new Map<string, [number, number]>();
  for (const [name, shape] of tensors) {
    const m = /^(.*_proj)\.weight$/.exec(name);
    if (m) out.set(m[1], shape as [number, number]);
  }
  out.set('lm_head', [spec.vocab, spec.hidden]);
  return out;
}

/** Bytes of the weights in the graph: codes and scales for quantized matrices, 2 a parameter for float16 ones,
 * 4 otherwise. */
function weightBytes(tensors: [string, number[]][], options: GraphOptions): number {
  return tensors.reduce((s, [, shape]) => s + bytesIn(shape, weightDtype(shape, options)), 0);
}

/** What the load line says of the matrices' dtype in memory. */
function inMemoryWords(d: WeightDtype): string {
  if (d === 'F32') return 'as float32';
  if (d === 'F16') return 'with float16 matrices';
  return `with ${dtypeWord(d)} matrices (block-quantized by the host; norms, biases and LoRA branches float32)`;
}

const count = (n: number) =>
  n >= 1e9 ? `${(n / 1e9).toFixed(2)}B` : n >= 1e6 ? `${(n / 1e6).toFixed(1)}M` : `${(n / 1e3).toFixed(1)}k`;

/** An adapter's identity: its own files, and the base it is applied to (the same adapter over another base differs). */
function adapterIdentity(
  a: Adapter,
  baseHash: string,
  cacheDir: string,
): { hash: string; files: Record<string, string> } {
  const own = identityOf('adapter', a.folder, [a.configFile, a.weightsFile], cacheDir);
  return { hash: combine(own.hash, baseHash), files: own.files };
}

/**
 * Loads a Hugging Face base folder and the adapters over it (in order). Returns the base checkpoint and one
 * checkpoint per adapter, all on one session.
 */
export async function loadHf(
  folder: string,
  adapterFolders: string[],
  opts: HfLoadOptions & { settings: ResolvedSettings },
): Promise<{ base: Checkpoint; adapters: Checkpoint[] }> {
  const spec = readDecoderSpec(folder);
  const index = WeightIndex.open(folder);
  const tensors = decoderTensors(spec);
  const refs: WeightRef[] = tensors.map(([name, shape]) =>
    index.require(name, shape, `${spec.modelType} with this config.json`),
  );
  const modules = linearModules(spec, tensors);
  const adapters: Adapter[] = adapterFolders.map((a) => readAdapter(a, (m) => modules.get(m), [...modules.keys()]));
  const params = refs.reduce((s, r) => s + r.shape.reduce((a, b) => a * b, 1), 0);
  const dtype: WeightDtype = opts.settings.weightDtype ?? 'F32';
  const bytes = weightBytes(tensors, { weightDtype: dtype });
  const inMemory = inMemoryWords(dtype);
  const adapterBytes = adapters.map((a) =>
    [...a.modules.values()].reduce((s, m) => s + 4 * (m.a.length + m.b.length), 0),
  );
  const dtypes = [...new Set(refs.map((r) => r.dtype))].join('/');
  opts.log(
    `${folder}: ${spec.modelType}, ${count(params)} parameters (${dtypes}), about ${gb(bytes)} ${inMemory} in memory` +
      (adapters.length
        ? `; ${adapters.length} adapter(s) share these weights and add ${gb(adapterBytes.reduce((a, b) => a + b, 0))}`
        : ''),
  );
  for (const a of adapters)
    opts.log(
      `${a.folder}: ${a.description}${a.baseModelNameOrPath ? ` (trained over "${a.baseModelNameOrPath}"; applied to ${folder})` : ''}`,
    );
  const weights = castWeights(refs, (r) => weightDtype(r.shape, { weightDtype: dtype }), opts.cacheDir, opts.log);
  const graph = buildDecoderGraph(
    spec,
    (name) => weights.locate(name),
    adapters.map((a) => a.modules),
    spec.modelType,
    { weightDtype: dtype, locateScales: (name) => weights.locate(scalesName(name)) },
  );
  // float weights stay shared file mappings (no pre-packed private copy): the memory a pair needs is one copy.
  // Quantized matrices must be pre-packed: MatMulNBits without its packed layout runs 15-30x slower; the packed
  // copy replaces the file's bytes (measured: 1.13x the int8 bytes, 1.23x the int4 bytes, no transient peak).
  const { session, device } = await createSession(
    graph.model,
    opts.settings,
    {
      model_external_initializers_file_folder_path: weights.dir,
      ...(quantBitsOf(dtype) ? {} : { disable_prepacking: '1' }),
    },
    folder,
    opts.log,
  );
  const baseId = identityOf('hf', folder, [path.join(folder, 'config.json'), ...index.files], opts.cacheDir);
  const embedRef = refs.find((r) => r.name === 'model.embed_tokens.weight')!;
  const embeddings = () => ({
    rows: spec.vocab,
    dim: spec.hidden,
    data: readFloat32(embedRef),
    source: `${path.basename(embedRef.file)}:${embedRef.name}`,
  });
  const scales = (active: number) =>
    Object.fromEntries(
      graph.adapterInputs.map((n, j) => [n, new ort.Tensor('float32', Float32Array.of(j === active ? 1 : 0), [1])]),
    );
  const common = {
    kind: 'hf' as const,
    vocabSize: spec.vocab,
    eosTokenIds: spec.eosTokenIds,
    maxPositions: spec.maxPositions,
    ropeInvFreq: Array.from(spec.invFreq),
    device,
    threads: opts.settings.threads,
    weightsDtype: dtypeWord(dtype),
  };
  const where = weights.cacheFile ? ` (cache ${weights.cacheFile})` : '';
  const base = Checkpoint.fromSession(session, index.files[0], folder, {
    feeds: scales(-1),
    embeddings,
    info: {
      ...common,
      hash: baseId.hash,
      files: baseId.files,
      description: `${spec.modelType} ${spec.layers} layers, hidden ${spec.hidden}, ${dtypes} weights${dtype === 'F32' ? '' : ` run as ${dtypeWord(dtype)} matrices`}${where}, RoPE ${spec.rope}`,
    },
  });
  const adapterCheckpoints = adapters.map((a, j) =>
    Checkpoint.fromSession(session, a.weightsFile, a.folder, {
      feeds: scales(j),
      embeddings,
      info: {
        ...common,
        kind: 'adapter',
        folder: a.folder,
        ...adapterIdentity(a, baseId.hash, opts.cacheDir),
        description: `${a.description} (float32) over ${folder}${dtype === 'F32' ? '' : ` (${dtypeWord(dtype)} matrices)`}`,
        baseModelNameOrPath: a.baseModelNameOrPath,
        ...(a.unchanged ? { unchanged: a.unchanged } : {}),
      },
    }),
  );
  return { base, adapters: adapterCheckpoints };
}

/** What a path holds (domain/checkpoints), as a CheckpointError when it is no checkpoint. */
export function kindOf(p: string): CheckpointKind {
  const k = checkpointKind(p);
  if ('error' in k) throw new CheckpointError(k.error, p);
  return k.kind;
}

/** Pre-packed quantized matrices against their file bytes (measured 1.13x at int8, 1.23x at int4: 4096x14336). */
const PREPACKED = 1.25;

/** Tokens of K/V and rows of logits the memory estimate allows for (a long prompt, a few caches alive at once). */
const ESTIMATE_TOKENS = 4096;
const ESTIMATE_LOGIT_ROWS = 64;

/**
 * What loading will hold in memory, before anything is loaded: each distinct model's weights in the compute dtype
 * (float32 for Hugging Face folders; an export's files as they are), its K/V for ESTIMATE_TOKENS tokens in a few
 * caches, logits, and a tenth for activations. Adapters add their own size only.
 */
export function estimateMemory(
  paths: [string, CheckpointKind][],
  modelFile?: string,
  options: GraphOptions = {},
): { total: number; parts: string[] } {
  const parts: string[] = [];
  let total = 0;
  const seen = new Set<string>();
  for (const [p, kind] of paths) {
    const real = fs.realpathSync(p);
    if (seen.has(real)) continue;
    seen.add(real);
    let weights = 0;
    let kv = 0;
    let logits = 0;
    if (kind === 'adapter') {
      const f = path.join(p, 'adapter_model.safetensors');
      weights = fs.existsSync(f) ? 2 * fs.statSync(f).size : 0;
    } else if (kind === 'hf') {
      const spec = readDecoderSpec(p);
      weights =
        weightBytes(decoderTensors(spec), options) * (quantBitsOf(options.weightDtype ?? 'F32') ? PREPACKED : 1);
      kv = 3 * 2 * spec.layers * spec.kvHeads * spec.headDim * 4 * ESTIMATE_TOKENS;
      logits = spec.vocab * 4 * ESTIMATE_LOGIT_ROWS;
    } else {
      const graph = findModelFile(p, modelFile);
      weights = [graph, ...externalDataFiles(graph)].reduce(
        (s, f) => s + (fs.existsSync(f) ? fs.statSync(f).size : 0),
        0,
      );
    }
    const bytes = weights * 1.1 + kv + logits;
    total += bytes;
    parts.push(`${path.basename(p)} ${gb(bytes)}`);
  }
  return { total, parts };
}

/**
 * The base and the named others (finetuned, extras): ONNX exports one session each, Hugging Face folders one
 * session each, adapters on the base's session. An adapter needs a Hugging Face base.
 */
export async function loadCheckpoints(
  base: string,
  others: [string, string][],
  options: HfLoadOptions,
): Promise<{ base: Checkpoint; others: Map<string, Checkpoint> }> {
  const opts = { ...options, settings: options.settings ?? resolveSettings() };
  if (opts.settings.note) opts.log(opts.settings.note, 'info');
  const baseKind = kindOf(base);
  // an adapter as the base (plain LoRA vs TReFT LoRA, seed 1 vs seed 2): every adapter over the folder it was
  // trained on, in one session with one copy of that base's weights
  let under: string | undefined;
  if (baseKind === 'adapter') {
    const found = adapterBaseFolder(base);
    if ('error' in found) throw new CheckpointError(found.error, path.join(base, 'adapter_config.json'));
    under = found.folder;
    opts.log(`${base} is a LoRA adapter: it and the other adapters run over ${under} ("${found.named}")`);
  }
  const kinds = others.map(([name, p]) => [name, p, kindOf(p)] as const);
  const adapterEntries = kinds.filter(([, , k]) => k === 'adapter');
  if (opts.settings.device === 'cpu') {
    const paths: [string, CheckpointKind][] = [
      ...(under ? [[under, 'hf'] as [string, CheckpointKind]] : []),
      [base, baseKind],
      ...kinds.map(([, p, k]) => [p, k] as [string, CheckpointKind]),
    ];
    opts.settings = chooseWeightsDtype(paths, opts, base);
  }
  const out = new Map<string, Checkpoint>();
  let baseCheckpoint: Checkpoint;
  let underCheckpoint: Checkpoint | undefined;
  if (under) {
    const loaded = await loadHf(under, [base, ...adapterEntries.map(([, p]) => p)], opts);
    baseCheckpoint = loaded.adapters[0];
    underCheckpoint = loaded.base;
    for (const [j, [name]] of adapterEntries.entries()) out.set(name, loaded.adapters[j + 1]);
  } else if (baseKind === 'hf') {
    const loaded = await loadHf(
      base,
      adapterEntries.map(([, p]) => p),
      opts,
    );
    baseCheckpoint = loaded.base;
    for (const [j, [name]] of adapterEntries.entries()) out.set(name, loaded.adapters[j]);
  } else {
    // a broken base is the first thing to say; then whether adapters can apply to it
    baseCheckpoint = await Checkpoint.load(base, opts.settings, opts);
    if (adapterEntries.length) {
      await baseCheckpoint.release();
      throw new CheckpointError(
        `a LoRA adapter applies to a Hugging Face base folder (config.json + safetensors), and the base ${base} is an ONNX export: give the base model's folder`,
        adapterEntries[0][1],
      );
    }
  }
  const loadedSoFar: Checkpoint[] = [baseCheckpoint];
  try {
    const sameAsBase = (p: string) => fs.realpathSync(p) === fs.realpathSync(base);
    for (const [name, p, kind] of kinds) {
      if (kind === 'adapter') continue;
      // the base named again (a TReFT export runs the base alone): one session, not two copies of the weights
      if (sameAsBase(p)) {
        out.set(name, baseCheckpoint);
        continue;
      }
      // the folder under an adapter base, named as a checkpoint of its own: the session already holds it
      if (under && underCheckpoint && fs.realpathSync(p) === fs.realpathSync(under)) {
        out.set(name, underCheckpoint);
        continue;
      }
      const c = kind === 'hf' ? (await loadHf(p, [], opts)).base : await Checkpoint.load(p, opts.settings, opts);
      loadedSoFar.push(c);
      out.set(name, c);
    }
    // every other checkpoint must share the base's K/V shapes and tokenizer, or patching means nothing
    for (const c of out.values()) {
      const note = checkCompatible(baseCheckpoint, c);
      if (note) opts.log(note, 'info');
    }
  } catch (e) {
    for (const c of new Set([...loadedSoFar, ...out.values()])) await c.release();
    throw e;
  }
  return { base: baseCheckpoint, others: new Map(others.map(([name]) => [name, out.get(name)!])) };
}

/** The dtypes `auto` tries on the CPU, in order: the first that fits with a margin is taken. */
const AUTO_ORDER: WeightDtype[] = ['F32', 'Q8', 'Q4'];
/** `auto` takes a dtype when its estimate is at most this share of the available memory. */
const AUTO_MARGIN = 0.85;
const DTYPE_FLAG = (d: WeightDtype) =>
  `--weights-dtype ${dtypeWord(d)} (piggyback.host.weightsDtype: "${dtypeWord(d)}")`;

/**
 * The dtype the CPU load runs with. Explicit: checked against the available memory (unless the check is off), and
 * a refusal names the dtype that would fit. `auto`: float32 when it fits with a margin, else int8, else int4, else
 * a refusal that says what would (a GPU, or more memory). The choice is logged with the numbers behind it.
 */
function chooseWeightsDtype(
  paths: [string, CheckpointKind][],
  opts: HfLoadOptions & { settings: ResolvedSettings },
  base: string,
): ResolvedSettings {
  const settings = opts.settings;
  // the dtype applies to graphs built from Hugging Face folders; ONNX exports run as exported (still estimated)
  const hasHf = paths.some(([, k]) => k !== 'onnx');
  const available = opts.availableMemory ?? os.freemem();
  const need = (d: WeightDtype) => estimateMemory(paths, opts.modelFile, { weightDtype: d });
  const words = (d: WeightDtype, e: { total: number; parts: string[] }) =>
    `${gb(e.total)} as ${dtypeWord(d)} (${e.parts.join(' + ')}: weights, K/V for ${ESTIMATE_TOKENS} tokens, logits, activations)`;
  if (settings.chooseDtype && hasHf) {
    const tried: string[] = [];
    for (const d of AUTO_ORDER) {
      const e = need(d);
      if (e.total <= AUTO_MARGIN * available || opts.memoryCheck === false) {
        // a quantized choice changes the numbers, so the CLI prints it; float32 is said in the editor's log
        opts.log(
          `weights: ${dtypeWord(d)}${tried.length ? ` (${tried.join('; ')}; ${gb(available)} available)` : ` (needs about ${gb(e.total)}; ${gb(available)} available)`}`,
          d === 'F32' ? 'info' : 'load',
        );
        return { ...settings, weightDtype: d, chooseDtype: false };
      }
      tried.push(`${dtypeWord(d)} would need ${gb(e.total)}`);
    }
    throw new CheckpointError(
      `no weights dtype fits in memory: ${tried.join(', ')}, and only ${gb(available)} is available. Run on a GPU (--execution-provider cuda; float16 there), free memory, or load anyway with --no-memory-check (piggyback.host.memoryCheck: false)`,
      base,
    );
  }
  const d = settings.weightDtype ?? 'F32';
  if (opts.memoryCheck === false) return settings;
  const e = need(d);
  if (e.total <= available) return settings;
  if (!hasHf)
    throw new CheckpointError(
      `loading needs about ${gb(e.total)} (${e.parts.join(' + ')}: the exports' files, K/V for ${ESTIMATE_TOKENS} tokens, logits, activations), but only ${gb(available)} of memory is available: choose a smaller variant (--model-file q4), run on a GPU (--execution-provider cuda), or load anyway with --no-memory-check (piggyback.host.memoryCheck: false)`,
      base,
    );
  // the smaller dtypes, each with its estimate, the first that fits offered
  const fits = AUTO_ORDER.filter((x) => bytesRank(x) < bytesRank(d))
    .map((x) => ({ d: x, total: need(x).total }))
    .find((x) => x.total <= available);
  throw new CheckpointError(
    `loading needs about ${words(d, e)}, but only ${gb(available)} of memory is available; ${fits ? `${dtypeWord(fits.d)} would fit (about ${gb(fits.total)}): ${DTYPE_FLAG(fits.d)}` : 'no smaller dtype fits either: run on a GPU (--execution-provider cuda)'}, or load anyway with --no-memory-check (piggyback.host.memoryCheck: false)`,
    base,
  );
}

/** Bytes a block of weights takes in a dtype (scales included): what orders the dtypes by size. */
const bytesRank = (d: WeightDtype) => bytesIn([1, QUANT_BLOCK], d);
