/**
 * Hugging Face checkpoint folders and PEFT adapters as host checkpoints: config.json read into a decoder spec,
 * the weights located (float32 in place, or converted once into the cache), the ONNX graph built, one
 * onnxruntime session created. A base and all adapters over it share that one session (and one copy of the
 * weights): each adapter checkpoint differs from the base only in the `adapter_scale.{j}` it feeds.
 */
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { Checkpoint, createSession } from '../checkpoint';
import type { ResolvedSettings } from '../runtime';
import { type DecoderSpec, readDecoderSpec } from '../../domain/hfConfig';
import { buildDecoderGraph, decoderTensors, type GraphOptions, weightDtype } from './graph';
import { type Adapter, readAdapter } from './peft';
import { combine, identityOf } from '../identity';
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
export function weightBytes(tensors: [string, number[]][], options: GraphOptions): number {
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
